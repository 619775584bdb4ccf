//! The error responses of the OpenAPI document: one shared response per status, each with the
//! `{"error": {code, message, details}}` envelope, and on every operation every status it can
//! answer with. Routes declare the errors particular to them (404, 409, ...); [`document`]
//! turns those into references to the shared responses and adds the ones every operation of a
//! kind can give (401 with credentials, 400 with parameters, 413/415/422 with a JSON body,
//! 500 and 503 always), so generated clients parse every error and fuzzers check them. An
//! error status a route documents with a body of its own keeps it.

use utoipa::openapi::{
    ContentBuilder, OpenApi, Ref, RefOr,
    header::HeaderBuilder,
    path::{Operation, ParameterIn},
    response::{Response, ResponseBuilder},
    schema::{ObjectBuilder, Type},
};

/// `(status, component name, what it means)` of every error status the API answers with.
const ERRORS: &[(u16, &str, &str)] = &[
    (
        400,
        "BadRequest",
        "Malformed request: invalid_json, invalid_body, invalid_path, invalid_query (with `details.problems`), invalid_header or invalid_multipart",
    ),
    (401, "Unauthorized", "Missing, malformed or unknown credentials"),
    (403, "Forbidden", "The credentials may not do this"),
    (404, "NotFound", "No such resource, or it belongs to another key or end user"),
    (
        409,
        "Conflict",
        "The request conflicts with the current state (thread_busy, idempotency_key_reused, cleanup_running)",
    ),
    (413, "PayloadTooLarge", "The body, a message, a field or a file is too large (payload_too_large)"),
    (415, "UnsupportedMediaType", "Wrong content type, or an unsupported document type"),
    (422, "InvalidRequest", "Well-formed but invalid values (invalid_request); `details.problems` names each field"),
    (
        429,
        "TooManyRequests",
        "A rate limit (rate_limited, with Retry-After and RateLimit-* headers), the monthly budget (budget_exhausted) or a quota (quota_exceeded)",
    ),
    (500, "InternalError", "An unexpected failure; logged, never described"),
    (503, "ServiceUnavailable", "Postgres or Redis is unavailable; retry shortly (Retry-After)"),
];

/// Adds the shared error responses and makes every operation's errors reference them.
pub fn document(openapi: &mut OpenApi) {
    let components = openapi.components.get_or_insert_with(Default::default);
    for &(status, name, description) in ERRORS {
        components.responses.insert(name.to_string(), RefOr::T(error_response(status, description)));
    }
    for item in openapi.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            complete(operation);
        }
    }
}

/// The statuses `operation` can answer with beyond those it declares.
fn implied_statuses(operation: &Operation) -> Vec<u16> {
    let mut statuses = vec![500, 503];
    // `security(())` (an empty requirement) marks the public routes; the rest need a key.
    let public = operation.security.as_ref().is_some_and(|requirements| {
        requirements.iter().all(|r| serde_json::to_value(r).is_ok_and(|v| v.as_object().is_some_and(|o| o.is_empty())))
    });
    if !public {
        statuses.push(401);
    }
    let params = operation.parameters.as_deref().unwrap_or_default();
    if params.iter().any(|p| matches!(p.parameter_in, ParameterIn::Path | ParameterIn::Query | ParameterIn::Header)) {
        statuses.push(400);
    }
    if let Some(body) = &operation.request_body {
        statuses.extend([400, 413, 415]);
        if body.content.contains_key("application/json") {
            statuses.push(422);
        }
    }
    statuses
}

fn complete(operation: &mut Operation) {
    let implied = implied_statuses(operation);
    let responses = &mut operation.responses.responses;
    for status in implied {
        responses.entry(status.to_string()).or_insert_with(|| RefOr::T(Response::new("")));
    }
    for (status, response) in responses.iter_mut() {
        let Some(&(_, name, shared)) = ERRORS.iter().find(|(s, _, _)| s.to_string() == *status) else {
            continue;
        };
        // A route's own description of the error (which codes, when) is kept on the reference.
        let description = match response {
            // A route's own body for an error status (the readiness report of a 503) stays.
            RefOr::T(r) if !r.content.is_empty() => continue,
            RefOr::T(r) if !r.description.is_empty() => r.description.clone(),
            RefOr::Ref(r) => r.description.clone(),
            _ => shared.to_string(),
        };
        let mut reference = Ref::new(format!("#/components/responses/{name}"));
        reference.description = description;
        *response = RefOr::Ref(reference);
    }
}

fn error_response(status: u16, description: &str) -> Response {
    let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorResponse"))).build();
    let mut response = ResponseBuilder::new().description(description).content("application/json", content);
    let integer = || ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0)).build();
    if status == 429 {
        for (name, about) in [
            ("Retry-After", "Seconds until the limit resets (rate limits and budgets)"),
            ("RateLimit-Limit", "The limit"),
            ("RateLimit-Remaining", "What is left of it"),
            ("RateLimit-Reset", "Seconds until it resets"),
        ] {
            response = response.header(name, HeaderBuilder::new().schema(integer()).description(Some(about)).build());
        }
    }
    if status == 503 {
        let header = HeaderBuilder::new().schema(integer()).description(Some("Seconds to wait")).build();
        response = response.header("Retry-After", header);
    }
    response.build()
}
