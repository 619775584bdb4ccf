//! The OpenAPI document: every route and the allowed values of typed fields.

use reqwest::{Method, StatusCode};
use sqlx::PgPool;

use crate::harness::Stack;

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn the_openapi_document_covers_every_route(pool: PgPool) {
    let s = Stack::start(pool).await;
    let (status, doc) = s.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let expected = [
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/v1/assistants", "post"),
        ("/v1/assistants", "get"),
        ("/v1/assistants/{id}", "get"),
        ("/v1/assistants/{id}", "patch"),
        ("/v1/assistants/{id}", "delete"),
        ("/v1/threads", "post"),
        ("/v1/threads", "get"),
        ("/v1/threads/{id}", "get"),
        ("/v1/threads/{id}", "delete"),
        ("/v1/threads/{id}/events", "get"),
        ("/v1/threads/{id}/messages", "get"),
        ("/v1/threads/{id}/runs", "post"),
        ("/v1/threads/{id}/runs", "get"),
        ("/v1/runs/{id}", "get"),
        ("/v1/usage", "get"),
        ("/v1/admin/cleanup", "post"),
        ("/v1/admin/jobs/{id}", "get"),
        ("/v1/knowledge-bases", "post"),
        ("/v1/knowledge-bases", "get"),
        ("/v1/knowledge-bases/{id}", "get"),
        ("/v1/knowledge-bases/{id}", "delete"),
        ("/v1/knowledge-bases/{id}/documents", "post"),
        ("/v1/knowledge-bases/{id}/documents", "get"),
        ("/v1/knowledge-bases/{id}/search", "post"),
        ("/v1/documents/{id}", "get"),
        ("/v1/documents/{id}", "delete"),
        ("/v1/documents/{id}/retry", "post"),
        ("/v1/documents/{id}/chunks", "get"),
        ("/v1/ingestion-batches/{id}", "get"),
        ("/v1/runs/{id}/events", "get"),
        ("/v1/runs/{id}/cancel", "post"),
        ("/v1/user-tokens", "post"),
        ("/v1/user-tokens/revoke", "post"),
        ("/v1/webhooks", "post"),
        ("/v1/webhooks", "get"),
        ("/v1/webhooks/{id}", "get"),
        ("/v1/webhooks/{id}", "delete"),
        ("/v1/webhooks/{id}/deliveries", "get"),
        ("/v1/webhooks/{id}/deliveries/{delivery_id}/retry", "post"),
    ];
    for (path, method) in expected {
        assert!(doc["paths"][path][method].is_object(), "{method} {path} missing from /openapi.json");
    }
    let documented: usize = doc["paths"].as_object().unwrap().values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(documented, expected.len(), "a route is documented but not listed in this test");
    let run_statuses = &doc["components"]["schemas"]["RunStatus"]["enum"];
    assert_eq!(run_statuses, &serde_json::json!(["queued", "in_progress", "completed", "failed", "cancelled"]));
    assert!(doc["components"]["schemas"]["RunErrorCode"]["enum"].as_array().is_some_and(|codes| !codes.is_empty()));
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn the_openapi_document_states_the_rules_the_api_enforces(pool: PgPool) {
    use serde_json::{Value, json};
    let s = Stack::start(pool).await;
    let (_, doc) = s.call(Method::GET, "/openapi.json", None, None).await;
    let schemas = &doc["components"]["schemas"];

    // Lengths, ranges, enums and required fields of request bodies.
    let thread_in = &schemas["ThreadIn"]["properties"];
    assert_eq!(thread_in["user"]["maxLength"], 200, "{thread_in}");
    assert_eq!(thread_in["user"]["minLength"], 1);
    let assistant_in = &schemas["AssistantIn"];
    assert_eq!(assistant_in["properties"]["temperature"]["maximum"], 2.0, "{assistant_in}");
    assert_eq!(assistant_in["properties"]["retention_days"]["maximum"], 36500);
    assert_eq!(assistant_in["properties"]["name"]["maxLength"], 200);
    assert_eq!(assistant_in["required"], json!(["name", "model"]));
    assert_eq!(assistant_in["properties"]["fallback_models"]["maxItems"], 8, "{assistant_in}");
    assert_eq!(schemas["AssistantPatch"]["properties"]["fallback_models"]["maxItems"], 8);
    assert!(schemas["AssistantOut"]["required"].as_array().unwrap().contains(&json!("fallback_models")));
    assert!(schemas["RunOut"]["properties"]["upstream"].is_object(), "the run says which upstream answered");
    assert!(schemas["Readiness"]["properties"]["upstreams"].is_object(), "/readyz lists the upstreams");
    assert!(schemas["ApiErrorCode"]["enum"].as_array().unwrap().contains(&json!("model_not_served")));
    assert_eq!(schemas["UserTokenIn"]["properties"]["ttl_seconds"]["maximum"], 86400);
    assert_eq!(schemas["SearchIn"]["properties"]["k"]["maximum"], 50);
    assert_eq!(schemas["RunIn"]["required"], json!(["input"]));
    assert_eq!(schemas["ModerationMode"]["enum"], json!(["off", "input", "output", "both"]));
    let limit = doc["paths"]["/v1/threads/{id}/messages"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "limit")
        .cloned()
        .unwrap();
    assert_eq!((limit["schema"]["minimum"].clone(), limit["schema"]["maximum"].clone()), (json!(1), json!(100)));

    // The upload has a request schema: parts named `files`, binary.
    let upload = &doc["paths"]["/v1/knowledge-bases/{id}/documents"]["post"]["requestBody"]["content"];
    assert_eq!(upload["multipart/form-data"]["schema"]["$ref"], "#/components/schemas/UploadForm", "{upload}");
    assert_eq!(schemas["UploadForm"]["required"], json!(["files"]));
    assert_eq!(schemas["UploadForm"]["properties"]["files"]["items"]["format"], "binary", "{}", schemas["UploadForm"]);

    // Every error response of every operation is the error envelope; every operation
    // documents 500, those with credentials 401, those with a JSON body 422.
    let envelope = |response: &Value| -> Value {
        let name = response["$ref"].as_str().unwrap_or_default().trim_start_matches("#/components/responses/");
        doc["components"]["responses"][name]["content"]["application/json"]["schema"]["$ref"].clone()
    };
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            for (status, response) in responses {
                // `/readyz` answers 503 with its readiness report, not an error.
                if (status.starts_with('4') || status.starts_with('5')) && path != "/readyz" {
                    assert_eq!(envelope(response), "#/components/schemas/ErrorResponse", "{method} {path} {status}");
                }
            }
            assert!(responses.contains_key("500"), "{method} {path} documents no 500");
            if op["security"] != json!([{}]) {
                assert!(responses.contains_key("401"), "{method} {path} documents no 401");
            }
            if op["requestBody"]["content"]["application/json"].is_object() {
                assert!(responses.contains_key("422"), "{method} {path} documents no 422");
            }
        }
    }
    assert!(schemas["Problem"]["properties"]["field"].is_object());
    s.shutdown().await;
}
