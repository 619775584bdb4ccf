//! OpenAI-shaped error responses: `{"error":{"message","type","param","code"}}` with the
//! status codes, types, codes and headers the real API uses.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::directive::{Fail, FailKind};

/// Body of a 502 from a reverse proxy in front of the API: HTML, not JSON.
const PROXY_502_HTML: &str = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n\
<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n";

/// An OpenAI error response ready to be sent.
#[derive(Debug, Clone)]
pub(crate) struct OpenAiError {
    pub status: StatusCode,
    pub message: String,
    pub r#type: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Set on rate-limit 429s: the `retry-after-ms` value.
    pub retry_after_ms: Option<u64>,
}

impl OpenAiError {
    /// A 400 `invalid_request_error`.
    pub fn invalid_request(message: impl Into<String>, param: Option<&str>, code: Option<&'static str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            r#type: "invalid_request_error",
            param: param.map(str::to_owned),
            code,
            retry_after_ms: None,
        }
    }

    /// The 400 OpenAI sends for a body that is not JSON.
    pub fn malformed_json() -> Self {
        Self::invalid_request(
            "We could not parse the JSON body of your request. (HINT: This likely means you \
             aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, \
             but what was sent was not valid JSON. If you have trouble figuring out how to fix \
             this, please contact us through our help center at help.openai.com.)",
            None,
            None,
        )
    }

    /// The 400 for a request without a `model`.
    pub fn missing_model() -> Self {
        Self::invalid_request("you must provide a model parameter", None, None)
    }

    /// The 401 for a missing or malformed `Authorization` header.
    pub fn missing_api_key() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            message: "You didn't provide an API key. You need to provide your API key in an \
                      Authorization header using Bearer auth (i.e. Authorization: Bearer \
                      YOUR_KEY), or as the password field (with blank username) if you're \
                      accessing the API from your browser and are prompted for a username and \
                      password. You can obtain an API key from \
                      https://platform.openai.com/account/api-keys."
                .to_owned(),
            r#type: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key"),
            retry_after_ms: None,
        }
    }

    /// The 404 for an unknown model id.
    pub fn model_not_found(model: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: format!("The model `{model}` does not exist or you do not have access to it."),
            r#type: "invalid_request_error",
            param: None,
            code: Some("model_not_found"),
            retry_after_ms: None,
        }
    }

    /// The 404 OpenAI sends for a route it does not have.
    pub fn invalid_url(method: &str, path: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: format!("Invalid URL ({method} {path})"),
            r#type: "invalid_request_error",
            param: None,
            code: None,
            retry_after_ms: None,
        }
    }

    /// The error a `status` failure injected by a directive answers with.
    pub fn for_status(status: u16, model: &str, prompt_tokens: u32, retry_after_ms: u64) -> Self {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let (message, r#type, param, code) = match status.as_u16() {
            400 => (
                "Invalid value for 'temperature': expected a number between 0 and 2.".to_owned(),
                "invalid_request_error",
                Some("temperature"),
                Some("invalid_value"),
            ),
            401 => (
                "Incorrect API key provided: sk-test. You can find your API key at \
                 https://platform.openai.com/account/api-keys."
                    .to_owned(),
                "invalid_request_error",
                None,
                Some("invalid_api_key"),
            ),
            403 => (
                "Country, region, or territory not supported".to_owned(),
                "request_forbidden",
                None,
                Some("unsupported_country_region_territory"),
            ),
            404 => return Self::model_not_found(model),
            429 => (
                format!(
                    "Rate limit reached for {model} in organization org-fake on tokens per min \
                     (TPM): Limit 30000, Used 29937, Requested {prompt_tokens}. Please try again \
                     in {retry_after_ms}ms. Visit https://platform.openai.com/account/rate-limits \
                     to learn more."
                ),
                "tokens",
                None,
                Some("rate_limit_exceeded"),
            ),
            503 => (
                "The engine is currently overloaded, please try again later".to_owned(),
                "server_error",
                None,
                Some("server_is_overloaded"),
            ),
            500..=599 => (
                "The server had an error while processing your request. Sorry about that!".to_owned(),
                "server_error",
                None,
                None,
            ),
            _ => (
                format!("Request failed with status {status} (injected by chatq-fake-openai)."),
                "invalid_request_error",
                None,
                None,
            ),
        };
        Self {
            status,
            message,
            r#type,
            param: param.map(str::to_owned),
            code,
            retry_after_ms: (status == StatusCode::TOO_MANY_REQUESTS).then_some(retry_after_ms),
        }
    }

    /// The 400 for a prompt longer than the model's context window.
    pub fn context_length(prompt_tokens: u32) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: format!(
                "This model's maximum context length is 128000 tokens. However, your messages resulted in \
                 {prompt_tokens} tokens. Please reduce the length of the messages."
            ),
            r#type: "invalid_request_error",
            param: Some("messages".to_owned()),
            code: Some("context_length_exceeded"),
            retry_after_ms: None,
        }
    }

    /// The 429 for an exhausted quota: permanent, so no `retry-after`.
    pub fn insufficient_quota() -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: "You exceeded your current quota, please check your plan and billing \
                      details. For more information on this error, read the docs: \
                      https://platform.openai.com/docs/guides/error-codes/api-errors."
                .to_owned(),
            r#type: "insufficient_quota",
            param: None,
            code: Some("insufficient_quota"),
            retry_after_ms: None,
        }
    }

    /// The JSON body, also used for in-band stream errors.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.r#type,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        let headers = response.headers_mut();
        if let Some(ms) = self.retry_after_ms {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(ms.div_ceil(1000)));
            headers.insert("retry-after-ms", HeaderValue::from(ms));
            headers.insert("x-ratelimit-remaining-tokens", HeaderValue::from_static("0"));
            if let Ok(reset) = HeaderValue::try_from(format_go_ms(ms)) {
                headers.insert("x-ratelimit-reset-tokens", reset);
            }
        }
        response
    }
}

/// The response a `fail=` directive answers with.
pub(crate) fn fail_response(fail: Fail, model: &str, prompt_tokens: u32, retry_after_ms: u64) -> Response {
    match fail.kind {
        FailKind::Status(status) => {
            OpenAiError::for_status(status, model, prompt_tokens, retry_after_ms).into_response()
        }
        FailKind::InsufficientQuota => OpenAiError::insufficient_quota().into_response(),
        FailKind::ContextLength => OpenAiError::context_length(prompt_tokens).into_response(),
        FailKind::Html502 => {
            (StatusCode::BAD_GATEWAY, [(header::CONTENT_TYPE, "text/html")], PROXY_502_HTML).into_response()
        }
    }
}

/// Formats milliseconds as the Go-style duration OpenAI uses in `x-ratelimit-reset-*`.
fn format_go_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.3}s", ms as f64 / 1000.0)
    }
}
