//! Layers every `/v1` request passes through: bearer-token check and OpenAI's response headers.

use std::time::Instant;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::OpenAiError;
use crate::util::random_hex;

/// Rejects requests without `Authorization: Bearer <anything>` the way OpenAI does.
pub(crate) async fn require_bearer(request: Request, next: Next) -> Response {
    let authorised = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|key| !key.trim().is_empty());
    if authorised { next.run(request).await } else { OpenAiError::missing_api_key().into_response() }
}

/// Adds the headers OpenAI sends on every API response, unless the handler set them
/// (a rate-limit 429 sets its own `x-ratelimit-*`). An HTML body stands for a proxy in
/// front of the API, which would not add them.
pub(crate) async fn openai_headers(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let mut response = next.run(request).await;
    let is_html = response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
    if is_html {
        return response;
    }
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let headers = response.headers_mut();
    set_if_absent(headers, "x-request-id", format!("req_{}", random_hex(32)));
    set_if_absent(headers, "openai-processing-ms", elapsed_ms.to_string());
    set_if_absent(headers, "openai-version", "2020-10-01");
    set_if_absent(headers, "openai-organization", "user-chatq-fake");
    set_if_absent(headers, "openai-project", "proj_chatqfake");
    set_if_absent(headers, "x-ratelimit-limit-requests", "5000");
    set_if_absent(headers, "x-ratelimit-limit-tokens", "160000");
    set_if_absent(headers, "x-ratelimit-remaining-requests", "4999");
    set_if_absent(headers, "x-ratelimit-remaining-tokens", "159976");
    set_if_absent(headers, "x-ratelimit-reset-requests", "12ms");
    set_if_absent(headers, "x-ratelimit-reset-tokens", "6m0s");
    response
}

fn set_if_absent(headers: &mut HeaderMap, name: &'static str, value: impl Into<String>) {
    let name = HeaderName::from_static(name);
    if !headers.contains_key(&name)
        && let Ok(value) = HeaderValue::try_from(value.into())
    {
        headers.insert(name, value);
    }
}
