//! Provider failures: what went wrong, whether trying again can help, and the [`RunErrorCode`]
//! clients see.

use std::time::Duration;

use async_openai::error::OpenAIError;

use crate::domain::RunErrorCode;

/// Whether trying again can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Connection problems, timeouts, 408, 409, 429 (not quota), 5xx, truncated streams.
    Retryable,
    /// Other 4xx, exhausted quota, content filter, malformed responses.
    Permanent,
}

/// A classified provider failure.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct ProviderError {
    /// Retry or not.
    pub class: ErrorClass,
    /// Stable chatq error code.
    pub code: RunErrorCode,
    /// A message fit for an end user.
    pub message: String,
    /// What happened, for logs (never contains the prompt).
    pub detail: String,
    /// HTTP status from the provider, when there was one.
    pub status: Option<u16>,
    /// The provider's `Retry-After` / `retry-after-ms`, when given.
    pub retry_after: Option<Duration>,
}

impl ProviderError {
    /// A failure without HTTP status or `Retry-After`.
    pub fn new(class: ErrorClass, code: RunErrorCode, message: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { class, code, message: message.into(), detail: detail.into(), status: None, retry_after: None }
    }

    /// The stream ended without `finish_reason` or `[DONE]`: the answer is incomplete.
    pub fn truncated(detail: impl Into<String>) -> Self {
        Self::new(
            ErrorClass::Retryable,
            RunErrorCode::ProviderUnavailable,
            "The model's answer was interrupted. Please try again.",
            detail,
        )
    }

    /// No chunk arrived within the idle timeout.
    pub fn timeout(after: Duration) -> Self {
        Self::new(
            ErrorClass::Retryable,
            RunErrorCode::Timeout,
            "The model took too long to answer. Please try again.",
            format!("no data from the provider for {}s", after.as_secs()),
        )
    }

    /// The circuit breaker stayed open for the whole time a run may wait for the provider.
    pub fn breaker_open(max_wait: Duration) -> Self {
        Self::new(
            ErrorClass::Permanent,
            RunErrorCode::ProviderUnavailable,
            "The assistant is unavailable right now. Please try again later.",
            format!("circuit breaker open for the whole wait of {}s", max_wait.as_secs()),
        )
    }

    /// No configured upstream serves `model` (the providers file changed since the run was
    /// submitted).
    pub fn not_served(model: &str) -> Self {
        Self::new(
            ErrorClass::Permanent,
            RunErrorCode::ProviderRejected,
            "The assistant's model is not available. Please contact the site's operator.",
            format!("no upstream serves the model {model:?}"),
        )
    }

    /// Input moderation flagged the user's message in `categories`.
    pub fn moderation_flagged(categories: &[String]) -> Self {
        Self::new(
            ErrorClass::Permanent,
            RunErrorCode::ModerationFlagged,
            format!("This message can't be answered: content moderation flagged it ({}).", categories.join(", ")),
            format!("flagged categories: {}", categories.join(",")),
        )
    }

    /// Output moderation flagged the answer in `categories`: the answer is withdrawn.
    pub fn answer_flagged(categories: &[String]) -> Self {
        Self::new(
            ErrorClass::Permanent,
            RunErrorCode::ModerationFlagged,
            format!("The answer was withdrawn: content moderation flagged it ({}).", categories.join(", ")),
            format!("answer flagged, categories: {}", categories.join(",")),
        )
    }

    /// The moderation endpoint failed with `self` and the assistant must not answer unchecked:
    /// a retryable outage, keeping the cause's detail, status and `Retry-After`.
    pub fn moderation_unavailable(self) -> Self {
        Self {
            class: ErrorClass::Retryable,
            code: RunErrorCode::ProviderUnavailable,
            message: "The assistant can't check this message right now. Please try again.".into(),
            ..self
        }
    }

    /// As [`moderation_unavailable`](Self::moderation_unavailable), for an answer that could
    /// not be checked.
    pub fn answer_unchecked(self) -> Self {
        Self {
            message: "The assistant can't check its answer right now. Please try again.".into(),
            ..self.moderation_unavailable()
        }
    }

    /// The run's assistant row is gone.
    pub fn assistant_missing() -> Self {
        Self::new(
            ErrorClass::Permanent,
            RunErrorCode::Internal,
            "The assistant of this run no longer exists.",
            "assistant missing",
        )
    }

    /// Classifies an async-openai error; `retry_after` is what the transport saw in headers.
    pub fn classify(err: &OpenAIError, retry_after: Option<Duration>) -> Self {
        use ErrorClass::{Permanent, Retryable};
        use RunErrorCode::{ContextTooLong, Internal, ProviderRateLimited, ProviderRejected, ProviderUnavailable};
        let mut e = match err {
            OpenAIError::ApiError(api) => {
                let status = api.status_code.as_u16();
                let kind = api.api_error.r#type.as_deref().unwrap_or("");
                let code = api.api_error.code.as_deref().unwrap_or("");
                let detail = format!("HTTP {status} type={kind} code={code}");
                let mut e = if status == 429 && (kind == "insufficient_quota" || code == "insufficient_quota") {
                    Self::new(
                        Permanent,
                        ProviderRejected,
                        "The assistant is unavailable: the provider account has no quota left.",
                        detail,
                    )
                } else if status == 429 {
                    Self::new(
                        Retryable,
                        ProviderRateLimited,
                        "The assistant is busy right now. Please try again in a moment.",
                        detail,
                    )
                } else if status == 400 && code == "context_length_exceeded" {
                    Self::new(Permanent, ContextTooLong, "The conversation is too long for this model.", detail)
                } else if matches!(status, 408 | 409) || status >= 500 {
                    Self::new(
                        Retryable,
                        ProviderUnavailable,
                        "The assistant is temporarily unavailable. Please try again.",
                        detail,
                    )
                } else {
                    Self::new(Permanent, ProviderRejected, "The assistant could not answer this request.", detail)
                };
                e.status = Some(status);
                e
            }
            OpenAIError::Reqwest(r) if r.is_timeout() => Self::new(
                Retryable,
                RunErrorCode::Timeout,
                "The model took too long to answer. Please try again.",
                format!("transport timeout: {r}"),
            ),
            OpenAIError::Reqwest(r) => Self::new(
                Retryable,
                ProviderUnavailable,
                "The assistant is temporarily unavailable. Please try again.",
                format!("transport error: {r}"),
            ),
            OpenAIError::StreamError(s) => Self::new(
                Retryable,
                ProviderUnavailable,
                "The model's answer was interrupted. Please try again.",
                format!("stream error: {s}"),
            ),
            OpenAIError::JSONDeserialize(_, raw) if raw.contains("\"error\"") => Self::new(
                Retryable,
                ProviderUnavailable,
                "The model's answer was interrupted. Please try again.",
                "the provider sent an error inside the stream",
            ),
            OpenAIError::JSONDeserialize(e, _) => Self::new(
                Retryable,
                ProviderUnavailable,
                "The assistant sent a malformed answer. Please try again.",
                format!("malformed chunk: {e}"),
            ),
            OpenAIError::Boxed(b) => Self::new(
                Retryable,
                ProviderUnavailable,
                "The assistant is temporarily unavailable. Please try again.",
                format!("transport error: {b}"),
            ),
            other => Self::new(
                Permanent,
                Internal,
                "Something went wrong while answering.",
                format!("client error: {other}"),
            ),
        };
        if e.class == ErrorClass::Retryable {
            e.retry_after = retry_after;
        }
        e
    }
}

/// Parses `retry-after-ms` (preferred) or `retry-after` (seconds, possibly fractional).
pub fn parse_retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    get("retry-after").and_then(|v| v.parse::<f64>().ok()).filter(|s| *s >= 0.0).map(Duration::from_secs_f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    #[test]
    fn retry_after_ms_wins_over_seconds() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        h.insert("retry-after-ms", HeaderValue::from_static("1500"));
        assert_eq!(parse_retry_after(&h), Some(Duration::from_millis(1500)));
        h.remove("retry-after-ms");
        assert_eq!(parse_retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after", HeaderValue::from_static("0.25"));
        assert_eq!(parse_retry_after(&h), Some(Duration::from_millis(250)));
    }
}
