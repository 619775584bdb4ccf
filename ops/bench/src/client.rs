//! The chatq HTTP calls the scenarios make, with errors classified for the result's `errors` map.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// A thin client for the chatq API, cheap to clone (one shared connection pool).
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    /// API root without a trailing slash, e.g. `http://127.0.0.1:8080`.
    base: String,
    /// `Authorization` header value (`Bearer <key>`), built once.
    auth: String,
}

/// Why a call failed, in a form that can be counted: see [`CallError::kind`].
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The server answered with a non-success status.
    #[error("HTTP {status}{}: {message}", code.as_deref().map(|c| format!(" {c}")).unwrap_or_default())]
    Status {
        /// The HTTP status.
        status: StatusCode,
        /// `error.code` from chatq's error envelope, when the body had one.
        code: Option<String>,
        /// `error.message`, or the start of the body.
        message: String,
        /// `Retry-After` in seconds, when the server sent one (rate limits).
        retry_after: Option<Duration>,
    },
    /// The request did not get an answer: connection refused or reset, timeout.
    #[error("transport error: {0}")]
    Transport(#[source] reqwest::Error),
    /// The answer was not the JSON shape we expected.
    #[error("unexpected response body: {0}")]
    Decode(String),
}

impl CallError {
    /// A short, low-cardinality label for counting: `http_429_rate_limited`, `http_500`,
    /// `timeout`, `connect`, `transport`, `decode`.
    pub fn kind(&self) -> String {
        match self {
            CallError::Status { status, code: Some(code), .. } => {
                format!("http_{}_{code}", status.as_u16())
            }
            CallError::Status { status, code: None, .. } => format!("http_{}", status.as_u16()),
            CallError::Transport(e) if e.is_timeout() => "timeout".to_owned(),
            CallError::Transport(e) if e.is_connect() => "connect".to_owned(),
            CallError::Transport(_) => "transport".to_owned(),
            CallError::Decode(_) => "decode".to_owned(),
        }
    }

    /// How long the server asked us to wait before retrying, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CallError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The fields of a run object the benchmarks read; the server sends more.
#[derive(Debug, Clone, Deserialize)]
pub struct Run {
    /// Run id.
    pub id: String,
    /// `queued`, `in_progress`, `completed`, `failed` or `cancelled`.
    pub status: String,
    /// When the API accepted the run.
    pub created_at: DateTime<Utc>,
    /// When a worker started it.
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    /// When the first output token was written.
    #[serde(default)]
    pub first_token_at: Option<DateTime<Utc>>,
    /// When it reached a terminal status.
    #[serde(default)]
    pub completed_at: Option<DateTime<Utc>>,
    /// The answer so far.
    #[serde(default)]
    pub output_text: Option<String>,
    /// Why it failed, for `failed` runs.
    #[serde(default)]
    pub error: Option<RunError>,
}

impl Run {
    /// Whether the run can no longer change status.
    pub fn is_terminal(&self) -> bool {
        matches!(self.status.as_str(), "completed" | "failed" | "cancelled")
    }
}

/// `error` of a failed run.
#[derive(Debug, Clone, Deserialize)]
pub struct RunError {
    /// Machine-readable failure code, e.g. `provider_error`.
    pub code: String,
    /// Human-readable explanation.
    #[serde(default)]
    pub message: String,
}

#[derive(Deserialize)]
struct IdOnly {
    id: String,
}

impl ApiClient {
    /// A client for the API at `base` authenticating with `key`. `max_connections` sizes the
    /// idle pool so that N concurrent bench clients keep N warm connections instead of
    /// reconnecting.
    pub fn new(base: &str, key: &str, max_connections: usize) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(max_connections)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self { http, base: base.trim_end_matches('/').to_owned(), auth: format!("Bearer {key}") })
    }

    /// `POST /v1/assistants` (admin key): returns the new assistant's id.
    pub async fn create_assistant(&self, name: &str, model: &str, instructions: &str) -> Result<String, CallError> {
        let body = json!({ "name": name, "model": model, "instructions": instructions });
        let created: IdOnly = self.send(self.http.post(self.url("/v1/assistants")).json(&body)).await?;
        Ok(created.id)
    }

    /// `POST /v1/threads`: returns the new thread's id.
    pub async fn create_thread(&self, assistant_id: &str, user: &str) -> Result<String, CallError> {
        let body = json!({ "assistant_id": assistant_id, "user": user });
        let created: IdOnly = self.send(self.http.post(self.url("/v1/threads")).json(&body)).await?;
        Ok(created.id)
    }

    /// `POST /v1/threads/{id}/runs` without streaming: returns the queued run.
    pub async fn create_run(&self, thread_id: &str, input: &str) -> Result<Run, CallError> {
        let body = json!({ "input": input });
        let url = self.url(&format!("/v1/threads/{thread_id}/runs"));
        self.send(self.http.post(url).json(&body)).await
    }

    /// `GET /v1/runs/{id}`.
    pub async fn get_run(&self, run_id: &str) -> Result<Run, CallError> {
        self.send(self.http.get(self.url(&format!("/v1/runs/{run_id}")))).await
    }

    /// `GET /readyz`: whether the API says it can serve.
    pub async fn ready(&self) -> Result<(), CallError> {
        let _: Value = self.send(self.http.get(self.url("/readyz"))).await?;
        Ok(())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T, CallError> {
        let resp = req.header(reqwest::header::AUTHORIZATION, &self.auth).send().await.map_err(CallError::Transport)?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = resp.bytes().await.map_err(CallError::Transport)?;
        if !status.is_success() {
            return Err(status_error(status, &bytes, retry_after));
        }
        serde_json::from_slice(&bytes).map_err(|e| CallError::Decode(format!("{e}: {}", snippet(&bytes))))
    }
}

/// Builds a [`CallError::Status`] from chatq's `{"error": {code, message}}` envelope, falling back
/// to the raw body for servers (or proxies) that answer something else.
fn status_error(status: StatusCode, body: &[u8], retry_after: Option<Duration>) -> CallError {
    let envelope: Option<Value> = serde_json::from_slice(body).ok();
    let error = envelope.as_ref().and_then(|v| v.get("error"));
    let code = error.and_then(|e| e.get("code")).and_then(Value::as_str).map(str::to_owned);
    let message = error
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| snippet(body));
    CallError::Status { status, code, message, retry_after }
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    text.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kind_includes_the_envelope_code_when_there_is_one() {
        let body = br#"{"error":{"code":"thread_busy","message":"a run is active","details":null}}"#;
        let err = status_error(StatusCode::CONFLICT, body, None);
        assert_eq!(err.kind(), "http_409_thread_busy");
        assert!(err.to_string().contains("a run is active"));
    }

    #[test]
    fn error_kind_falls_back_to_the_status_for_non_envelope_bodies() {
        let err = status_error(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>", None);
        assert_eq!(err.kind(), "http_502");
        assert!(err.to_string().contains("bad gateway"));
    }

    #[test]
    fn run_parses_the_documented_shape_with_nulls() {
        let run: Run = serde_json::from_value(json!({
            "id": "r1", "object": "run", "status": "queued", "output_text": "",
            "usage": null, "cost_usd": null, "error": null,
            "created_at": "2026-01-01T00:00:00.000Z", "started_at": null,
            "first_token_at": null, "completed_at": null
        }))
        .unwrap();
        assert!(!run.is_terminal());
        assert!(run.started_at.is_none());
        let failed: Run = serde_json::from_value(json!({
            "id": "r2", "status": "failed", "created_at": "2026-01-01T00:00:00Z",
            "error": {"code": "provider_error", "message": "boom"}
        }))
        .unwrap();
        assert!(failed.is_terminal());
        assert_eq!(failed.error.unwrap().code, "provider_error");
    }
}
