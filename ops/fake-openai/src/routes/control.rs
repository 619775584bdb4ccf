//! `/_fake/*`: runtime control for chaos scripts (default directive, statistics).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::error::OpenAiError;
use crate::state::{FakeStats, Shared};

/// `PUT /_fake/directive` with `{"directive": "fail=500 cut_after=3"}`; `""` clears it.
pub(crate) async fn set_directive(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return OpenAiError::malformed_json().into_response(),
    };
    let Some(text) = request.get("directive").and_then(Value::as_str) else {
        return OpenAiError::invalid_request(
            "Expected {\"directive\": \"key=value ...\"}.",
            Some("directive"),
            Some("missing_required_parameter"),
        )
        .into_response();
    };
    shared.set_default_directive(text);
    tracing::info!(directive = text, "default directive replaced");
    Json(json!({"directive": shared.default_directive().text})).into_response()
}

/// `GET /_fake/directive`: the current server-wide default directive.
pub(crate) async fn get_directive(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(json!({"directive": shared.default_directive().text}))
}

/// `GET /_fake/stats`: request counters.
pub(crate) async fn stats(State(shared): State<Arc<Shared>>) -> Json<FakeStats> {
    Json(shared.stats())
}

/// `PUT /_fake/moderation-outage` with `{"status": 503}` makes moderations fail; `{"status": null}`
/// ends the outage.
pub(crate) async fn set_moderation_outage(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return OpenAiError::malformed_json().into_response(),
    };
    let status = request.get("status").and_then(Value::as_u64).filter(|s| (400..600).contains(s)).unwrap_or(0) as u16;
    shared.moderation_fail_status.store(status, std::sync::atomic::Ordering::Relaxed);
    Json(json!({"status": (status != 0).then_some(status)})).into_response()
}
