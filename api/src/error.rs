//! The one API error type and its JSON envelope `{"error": {code, message, details}}`.

use axum::{
    extract::rejection::{JsonRejection, PathRejection, QueryRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// The stable `code` of an error response; clients branch on it, so a name never changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApiErrorCode {
    /// 401: missing, malformed or unknown credentials.
    Unauthorized,
    /// 403: the credentials may not do this.
    Forbidden,
    /// 404: no such resource (or route).
    NotFound,
    /// 422: a well-formed request with invalid values; `details` may say which.
    InvalidRequest,
    /// 400: the body is not valid JSON.
    InvalidJson,
    /// 400: the body cannot be read.
    InvalidBody,
    /// 400: a path parameter is malformed.
    InvalidPath,
    /// 400: a query parameter is malformed or out of range.
    InvalidQuery,
    /// 400: a header is malformed.
    InvalidHeader,
    /// 400: a multipart upload is malformed.
    InvalidMultipart,
    /// 422: an assistant's `model` or one of its `fallback_models` is served by no upstream of
    /// the providers file; `details` has the `field` and the `model`.
    ModelNotServed,
    /// 409: the thread already has a run in progress.
    ThreadBusy,
    /// 409: an `Idempotency-Key` was reused with a different request.
    IdempotencyKeyReused,
    /// 409: a cleanup is already queued or running.
    CleanupRunning,
    /// 409: only a document in status `failed` can be retried.
    DocumentNotFailed,
    /// 413: the body or a message is too large.
    PayloadTooLarge,
    /// 415: wrong content type.
    UnsupportedMediaType,
    /// 429: a rate limit or quota was reached.
    RateLimited,
    /// 429: the key's monthly budget is used up.
    BudgetExhausted,
    /// 429: too many event streams (SSE or long-polls) open at once, for the end user, the
    /// key or the server; close one or retry after `Retry-After`.
    TooManyStreams,
    /// 429: a quota (threads of a user or key, documents or bytes of a knowledge base) is used
    /// up; waiting does not help, deleting does.
    QuotaExceeded,
    /// 503: a dependency is unavailable; retry shortly.
    ServiceUnavailable,
    /// 503: the request took longer than the server's request timeout; retry shortly. 408: the
    /// request body paused for longer than the body timeout.
    RequestTimeout,
    /// 500: an unexpected failure (logged, never described).
    Internal,
}

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorResponse {
    /// What went wrong.
    pub error: ErrorBody,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable code to branch on.
    pub code: ApiErrorCode,
    /// Human-readable explanation; may change.
    pub message: String,
    /// Structured details, or `null`: `problems: [{field, message}]` (see `Problem`) for
    /// `invalid_request` and `invalid_query`, the limit of a 429 or of a field's 413, the active
    /// run of a 409.
    pub details: Value,
}

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
    BadRequest { code: ApiErrorCode, message: String },
    /// The request is malformed (400) with a specific code and details (the problems found).
    #[error("{message}")]
    BadRequestWithDetails { code: ApiErrorCode, message: String, details: Value },
    /// The request is well-formed but invalid (422).
    #[error("{message}")]
    Invalid { message: String, details: Value },
    /// An assistant names a model no upstream serves (422 `model_not_served`).
    #[error("{field} names the model {model:?}, which no provider serves (see CHATQ_PROVIDERS_FILE)")]
    ModelNotServed { field: String, model: String },
    /// The request conflicts with the current state (409).
    #[error("{message}")]
    Conflict { code: ApiErrorCode, message: String, details: Value },
    /// Body or message too large (413).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// A field over its configured size (413 `payload_too_large`); `field` and `limit` go into
    /// the details.
    #[error("{message}")]
    FieldTooLarge { field: &'static str, message: String, limit: u64 },
    /// Wrong content type (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A rate limit or quota was reached (429), with the limit's state for the headers.
    #[error("{message}")]
    RateLimited { code: ApiErrorCode, message: String, limit: u64, remaining: u64, reset_secs: u64 },
    /// A quota is used up (429 `quota_exceeded`); `limit` goes into the details.
    #[error("{message}")]
    QuotaExceeded { message: String, limit: u64 },
    /// A dependency (Postgres, Redis) is unavailable (503).
    #[error("{0}")]
    Unavailable(&'static str),
    /// The request did not produce a response within the request timeout (503).
    #[error("the request took too long; try again shortly")]
    Timeout,
    /// The request body paused for longer than the body timeout (408).
    #[error("the request body arrived too slowly")]
    BodyTimeout,
    /// A bug or unexpected failure (500); the cause is logged, never returned.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    /// A 422 with a message and no details.
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::Invalid { message: message.into(), details: Value::Null }
    }

    fn parts(&self) -> (StatusCode, ApiErrorCode, Value) {
        match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, ApiErrorCode::Unauthorized, Value::Null),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, ApiErrorCode::Forbidden, Value::Null),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, ApiErrorCode::NotFound, Value::Null),
            ApiError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, *code, Value::Null),
            ApiError::BadRequestWithDetails { code, details, .. } => (StatusCode::BAD_REQUEST, *code, details.clone()),
            ApiError::Invalid { details, .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, ApiErrorCode::InvalidRequest, details.clone())
            }
            ApiError::ModelNotServed { field, model } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                ApiErrorCode::ModelNotServed,
                serde_json::json!({ "field": field, "model": model }),
            ),
            ApiError::Conflict { code, details, .. } => (StatusCode::CONFLICT, *code, details.clone()),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, ApiErrorCode::PayloadTooLarge, Value::Null),
            ApiError::FieldTooLarge { field, limit, .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                ApiErrorCode::PayloadTooLarge,
                serde_json::json!({ "field": field, "limit": limit }),
            ),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, ApiErrorCode::UnsupportedMediaType, Value::Null)
            }
            ApiError::RateLimited { code, limit, reset_secs, .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                *code,
                serde_json::json!({ "limit": limit, "retry_after_seconds": reset_secs }),
            ),
            ApiError::QuotaExceeded { limit, .. } => {
                (StatusCode::TOO_MANY_REQUESTS, ApiErrorCode::QuotaExceeded, serde_json::json!({ "limit": limit }))
            }
            ApiError::Unavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, ApiErrorCode::ServiceUnavailable, Value::Null)
            }
            ApiError::Timeout => (StatusCode::SERVICE_UNAVAILABLE, ApiErrorCode::RequestTimeout, Value::Null),
            ApiError::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, ApiErrorCode::RequestTimeout, Value::Null),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, ApiErrorCode::Internal, Value::Null),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, details) = self.parts();
        if let ApiError::Internal(cause) = &self {
            tracing::error!(error = format!("{cause:#}"), "request failed");
        }
        let body = ErrorResponse { error: ErrorBody { code, message: self.to_string(), details } };
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
            JsonRejection::JsonDataError(e) => ApiError::invalid_fields(vec![crate::extract::json_data_problem(&e)]),
            JsonRejection::JsonSyntaxError(e) => {
                ApiError::BadRequest { code: ApiErrorCode::InvalidJson, message: e.body_text() }
            }
            JsonRejection::MissingJsonContentType(_) => {
                ApiError::UnsupportedMediaType("expected a request with `Content-Type: application/json`".into())
            }
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge("the request body is too large".into())
            }
            JsonRejection::BytesRejection(e) if is_body_timeout(&e) => ApiError::BodyTimeout,
            other => ApiError::BadRequest { code: ApiErrorCode::InvalidBody, message: other.body_text() },
        }
    }
}

/// Whether reading the body failed because it paused for longer than the body timeout.
fn is_body_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if e.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cause = e.source();
    }
    false
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::BadRequest { code: ApiErrorCode::InvalidPath, message: rejection.body_text() }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::BadRequest { code: ApiErrorCode::InvalidQuery, message: rejection.body_text() }
    }
}

/// 404 for routes that do not exist, in the same envelope.
pub async fn no_route() -> ApiError {
    ApiError::NotFound("route")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_keep_their_wire_names() {
        let names = [
            (ApiErrorCode::Unauthorized, "unauthorized"),
            (ApiErrorCode::NotFound, "not_found"),
            (ApiErrorCode::InvalidRequest, "invalid_request"),
            (ApiErrorCode::ModelNotServed, "model_not_served"),
            (ApiErrorCode::IdempotencyKeyReused, "idempotency_key_reused"),
            (ApiErrorCode::UnsupportedMediaType, "unsupported_media_type"),
            (ApiErrorCode::ServiceUnavailable, "service_unavailable"),
            (ApiErrorCode::BudgetExhausted, "budget_exhausted"),
            (ApiErrorCode::QuotaExceeded, "quota_exceeded"),
        ];
        for (code, name) in names {
            assert_eq!(serde_json::to_value(code).unwrap(), name);
        }
    }
}
