//! The one API error type and its JSON envelope `{"error": {code, message, details}}`.

use axum::{
    extract::rejection::{JsonRejection, PathRejection, QueryRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

/// Every way a request can fail, each with a status and a stable code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Missing, malformed or unknown credentials.
    #[error("missing or invalid credentials")]
    Unauthorized,
    /// The credentials may not do this.
    #[error("{0}")]
    Forbidden(&'static str),
    /// The resource does not exist or belongs to someone else.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The request is malformed (400) with a specific code.
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// The request is well-formed but invalid (422).
    #[error("{message}")]
    Invalid { message: String, details: Value },
    /// The request conflicts with the current state (409).
    #[error("{message}")]
    Conflict { code: &'static str, message: String, details: Value },
    /// Body or message too large (413).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// Wrong content type (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A rate limit or quota was reached (429), with the limit's state for the headers.
    #[error("{message}")]
    RateLimited { code: &'static str, message: String, limit: u64, remaining: u64, reset_secs: u64 },
    /// A dependency (Postgres, Redis) is unavailable (503).
    #[error("{0}")]
    Unavailable(&'static str),
    /// A bug or unexpected failure (500); the cause is logged, never returned.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    /// A 422 with a message and no details.
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::Invalid { message: message.into(), details: Value::Null }
    }

    fn parts(&self) -> (StatusCode, &'static str, Value) {
        match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", Value::Null),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", Value::Null),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", Value::Null),
            ApiError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code, Value::Null),
            ApiError::Invalid { details, .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", details.clone()),
            ApiError::Conflict { code, details, .. } => (StatusCode::CONFLICT, code, details.clone()),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", Value::Null),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", Value::Null)
            }
            ApiError::RateLimited { code, limit, reset_secs, .. } => {
                (StatusCode::TOO_MANY_REQUESTS, code, json!({ "limit": limit, "retry_after_seconds": reset_secs }))
            }
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", Value::Null),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", Value::Null),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, details) = self.parts();
        if let ApiError::Internal(cause) = &self {
            tracing::error!(error = format!("{cause:#}"), "request failed");
        }
        let body = json!({ "error": { "code": code, "message": self.to_string(), "details": details } });
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let ApiError::RateLimited { limit, remaining, reset_secs, .. } = &self {
            let headers = response.headers_mut();
            for (name, value) in [
                ("retry-after", reset_secs),
                ("ratelimit-limit", limit),
                ("ratelimit-remaining", remaining),
                ("ratelimit-reset", reset_secs),
            ] {
                headers.insert(name, HeaderValue::from(*value));
            }
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        if chatq_common::db::is_unavailable(&err) {
            tracing::warn!(error = %err, "database unavailable");
            ApiError::Unavailable("the database is unavailable, try again shortly")
        } else {
            ApiError::Internal(err.into())
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(e) => ApiError::invalid(e.body_text()),
            JsonRejection::JsonSyntaxError(e) => ApiError::BadRequest { code: "invalid_json", message: e.body_text() },
            JsonRejection::MissingJsonContentType(_) => {
                ApiError::UnsupportedMediaType("expected a request with `Content-Type: application/json`".into())
            }
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge("the request body is too large".into())
            }
            other => ApiError::BadRequest { code: "invalid_body", message: other.body_text() },
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::BadRequest { code: "invalid_path", message: rejection.body_text() }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::BadRequest { code: "invalid_query", message: rejection.body_text() }
    }
}

/// 404 for routes that do not exist, in the same envelope.
pub async fn no_route() -> ApiError {
    ApiError::NotFound("route")
}
