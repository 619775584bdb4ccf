//! The OpenAI-compatible provider: one HTTP client without built-in retries (chatq owns
//! retries), streaming chat with usage, and the classification of provider errors.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use async_openai::{
    Client,
    config::OpenAIConfig,
    error::OpenAIError,
    middleware::HttpRequestFactory,
    types::chat::{
        ChatCompletionRequestAssistantMessageArgs, ChatCompletionRequestMessage,
        ChatCompletionRequestSystemMessageArgs, ChatCompletionRequestUserMessageArgs, ChatCompletionResponseStream,
        ChatCompletionStreamOptions, CreateChatCompletionRequestArgs,
    },
    types::moderations::{CreateModerationRequest, ModerationInput},
};

use crate::config::Config;

/// Who wrote a message sent to the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromptRole {
    /// Instructions.
    System,
    /// The end user.
    User,
    /// An earlier answer.
    Assistant,
}

/// One message of a prompt.
#[derive(Clone, Debug)]
pub struct PromptMessage {
    /// Author.
    pub role: PromptRole,
    /// Text.
    pub content: String,
}

/// A streaming chat request.
#[derive(Clone, Debug)]
pub struct ChatRequest {
    /// Model name.
    pub model: String,
    /// The conversation, oldest first.
    pub messages: Vec<PromptMessage>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Cap on the answer length.
    pub max_output_tokens: Option<u32>,
}

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
    /// Stable chatq error code (`provider_rate_limited`, `provider_rejected`, ...).
    pub code: &'static str,
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
    fn new(class: ErrorClass, code: &'static str, message: &str, detail: String) -> Self {
        Self { class, code, message: message.to_string(), detail, status: None, retry_after: None }
    }

    /// The stream ended without `finish_reason` or usage: the answer is incomplete.
    pub fn truncated(detail: impl Into<String>) -> Self {
        Self::new(
            ErrorClass::Retryable,
            "provider_unavailable",
            "The model's answer was interrupted. Please try again.",
            detail.into(),
        )
    }

    /// No chunk arrived within the idle timeout.
    pub fn timeout(after: Duration) -> Self {
        Self::new(
            ErrorClass::Retryable,
            "timeout",
            "The model took too long to answer. Please try again.",
            format!("no data from the provider for {}s", after.as_secs()),
        )
    }

    /// Classifies an async-openai error; `retry_after` is what the transport saw in headers.
    pub fn classify(err: &OpenAIError, retry_after: Option<Duration>) -> Self {
        let mut e = match err {
            OpenAIError::ApiError(api) => {
                let status = api.status_code.as_u16();
                let kind = api.api_error.r#type.as_deref().unwrap_or("");
                let code = api.api_error.code.as_deref().unwrap_or("");
                let detail = format!("HTTP {status} type={kind} code={code}");
                let mut e = if status == 429 && (kind == "insufficient_quota" || code == "insufficient_quota") {
                    Self::new(
                        ErrorClass::Permanent,
                        "provider_rejected",
                        "The assistant is unavailable: the provider account has no quota left.",
                        detail,
                    )
                } else if status == 429 {
                    Self::new(
                        ErrorClass::Retryable,
                        "provider_rate_limited",
                        "The assistant is busy right now. Please try again in a moment.",
                        detail,
                    )
                } else if status == 400 && code == "context_length_exceeded" {
                    Self::new(
                        ErrorClass::Permanent,
                        "context_too_long",
                        "The conversation is too long for this model.",
                        detail,
                    )
                } else if matches!(status, 408 | 409) || status >= 500 {
                    Self::new(
                        ErrorClass::Retryable,
                        "provider_unavailable",
                        "The assistant is temporarily unavailable. Please try again.",
                        detail,
                    )
                } else {
                    Self::new(
                        ErrorClass::Permanent,
                        "provider_rejected",
                        "The assistant could not answer this request.",
                        detail,
                    )
                };
                e.status = Some(status);
                e
            }
            OpenAIError::Reqwest(r) if r.is_timeout() => Self::new(
                ErrorClass::Retryable,
                "timeout",
                "The model took too long to answer. Please try again.",
                format!("transport timeout: {r}"),
            ),
            OpenAIError::Reqwest(r) => Self::new(
                ErrorClass::Retryable,
                "provider_unavailable",
                "The assistant is temporarily unavailable. Please try again.",
                format!("transport error: {r}"),
            ),
            OpenAIError::StreamError(s) => Self::new(
                ErrorClass::Retryable,
                "provider_unavailable",
                "The model's answer was interrupted. Please try again.",
                format!("stream error: {s}"),
            ),
            OpenAIError::JSONDeserialize(_, raw) if raw.contains("\"error\"") => Self::new(
                ErrorClass::Retryable,
                "provider_unavailable",
                "The model's answer was interrupted. Please try again.",
                "the provider sent an error inside the stream".to_string(),
            ),
            OpenAIError::JSONDeserialize(e, _) => Self::new(
                ErrorClass::Retryable,
                "provider_unavailable",
                "The assistant sent a malformed answer. Please try again.",
                format!("malformed chunk: {e}"),
            ),
            OpenAIError::Boxed(b) => Self::new(
                ErrorClass::Retryable,
                "provider_unavailable",
                "The assistant is temporarily unavailable. Please try again.",
                format!("transport error: {b}"),
            ),
            other => Self::new(
                ErrorClass::Permanent,
                "internal",
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

/// The provider client shared by every job of a process.
#[derive(Clone, Debug)]
pub struct Provider {
    http: reqwest::Client,
    config: OpenAIConfig,
    /// Idle timeout between two stream chunks.
    pub idle_timeout: Duration,
}

/// An open chat stream plus the `Retry-After` the transport saw, if any.
pub struct OpenStream {
    /// The chunks.
    pub stream: ChatCompletionResponseStream,
}

impl Provider {
    /// A client for `OPENAI_BASE_URL` with connect and read timeouts and no retries.
    pub fn new(config: &Config) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.provider.connect_timeout)
            // Per read, reset by every chunk: safe for long streams (a total timeout is not).
            .read_timeout(config.provider.idle_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()?;
        let openai = OpenAIConfig::new().with_api_base(&config.provider.base_url).with_api_key(config.provider.key());
        Ok(Self { http, config: openai, idle_timeout: config.provider.idle_timeout })
    }

    /// A client for one call whose transport records `Retry-After` of an error response into
    /// `slot` (async-openai's errors do not carry headers). The service has no retry layer.
    fn client(&self, slot: Arc<Mutex<Option<Duration>>>) -> Client<OpenAIConfig> {
        let http = self.http.clone();
        let service = tower::service_fn(move |factory: HttpRequestFactory| {
            let http = http.clone();
            let slot = slot.clone();
            async move {
                let request = factory.build().await?;
                let response = http.execute(request).await.map_err(OpenAIError::Reqwest)?;
                if !response.status().is_success()
                    && let Some(after) = parse_retry_after(response.headers())
                {
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(after);
                }
                Ok::<_, OpenAIError>(response)
            }
        });
        Client::build(self.http.clone(), self.config.clone()).with_http_service(service)
    }

    /// Opens a streaming chat completion with `include_usage`.
    pub async fn stream_chat(&self, req: &ChatRequest) -> Result<OpenStream, ProviderError> {
        let slot = Arc::new(Mutex::new(None));
        let client = self.client(slot.clone());
        let request = build_request(req).map_err(|e| ProviderError::classify(&e, None))?;
        match client.chat().create_stream(request).await {
            Ok(stream) => Ok(OpenStream { stream }),
            Err(e) => {
                let after = *slot.lock().unwrap_or_else(|p| p.into_inner());
                Err(ProviderError::classify(&e, after))
            }
        }
    }
}

/// The verdict of the moderation endpoint on one text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Moderation {
    /// Whether any category was flagged.
    pub flagged: bool,
    /// The flagged categories, e.g. `violence`.
    pub categories: Vec<String>,
}

/// The moderation model chatq asks.
pub const MODERATION_MODEL: &str = "omni-moderation-latest";

impl Provider {
    /// Classifies `text` with the provider's moderation endpoint (10 s timeout).
    pub async fn moderate(&self, text: &str) -> Result<Moderation, ProviderError> {
        let slot = Arc::new(Mutex::new(None));
        let client = self.client(slot.clone());
        let request = CreateModerationRequest {
            input: ModerationInput::String(text.to_string()),
            model: Some(MODERATION_MODEL.to_string()),
        };
        let response = match tokio::time::timeout(Duration::from_secs(10), client.moderations().create(request)).await {
            Err(_) => return Err(ProviderError::timeout(Duration::from_secs(10))),
            Ok(Err(e)) => {
                let after = *slot.lock().unwrap_or_else(|p| p.into_inner());
                return Err(ProviderError::classify(&e, after));
            }
            Ok(Ok(r)) => r,
        };
        let mut verdict = Moderation { flagged: false, categories: Vec::new() };
        for result in response.results {
            verdict.flagged |= result.flagged;
            if let Ok(serde_json::Value::Object(map)) = serde_json::to_value(&result.categories) {
                for (name, on) in map {
                    if on == serde_json::Value::Bool(true) && !verdict.categories.contains(&name) {
                        verdict.categories.push(name);
                    }
                }
            }
        }
        verdict.categories.sort();
        Ok(verdict)
    }
}

/// Vectors for a batch of texts plus the tokens billed.
#[derive(Clone, Debug)]
pub struct Embeddings {
    /// One vector per input, in input order.
    pub vectors: Vec<Vec<f32>>,
    /// Input tokens the provider billed.
    pub tokens: u64,
}

impl Provider {
    /// One embeddings request (no retries; see [`Provider::embed_with_retries`]).
    pub async fn embed(&self, model: &str, dims: usize, inputs: &[String]) -> Result<Embeddings, ProviderError> {
        use async_openai::types::embeddings::{CreateEmbeddingRequest, EmbeddingInput};
        let slot = Arc::new(Mutex::new(None));
        let client = self.client(slot.clone());
        let request = CreateEmbeddingRequest {
            model: model.to_string(),
            input: EmbeddingInput::StringArray(inputs.to_vec()),
            // Only text-embedding-3 and later accept `dimensions`.
            dimensions: (!model.contains("ada")).then_some(dims as u32),
            ..Default::default()
        };
        let response = match client.embeddings().create(request).await {
            Ok(r) => r,
            Err(e) => {
                let after = *slot.lock().unwrap_or_else(|p| p.into_inner());
                return Err(ProviderError::classify(&e, after));
            }
        };
        let mut data = response.data;
        data.sort_by_key(|e| e.index);
        if data.len() != inputs.len() {
            return Err(ProviderError::new(
                ErrorClass::Retryable,
                "provider_unavailable",
                "The embeddings provider sent an incomplete answer.",
                format!("{} vectors for {} inputs", data.len(), inputs.len()),
            ));
        }
        Ok(Embeddings {
            vectors: data.into_iter().map(|e| e.embedding).collect(),
            tokens: response.usage.prompt_tokens as u64,
        })
    }

    /// [`Provider::embed`], retried on 429 and 5xx (and transport errors) with exponential
    /// backoff honouring `Retry-After`, up to `attempts` calls.
    pub async fn embed_with_retries(
        &self,
        model: &str,
        dims: usize,
        inputs: &[String],
        attempts: u32,
    ) -> Result<Embeddings, ProviderError> {
        let mut delay = Duration::from_millis(200);
        let mut n = 1;
        loop {
            match self.embed(model, dims, inputs).await {
                Ok(e) => return Ok(e),
                Err(e) if e.class == ErrorClass::Retryable && n < attempts => {
                    let wait = e.retry_after.unwrap_or(delay).min(Duration::from_secs(30));
                    tracing::warn!(code = e.code, detail = %e.detail, attempt = n, "embeddings request failed; retrying");
                    tokio::time::sleep(wait).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                    n += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn build_request(req: &ChatRequest) -> Result<async_openai::types::chat::CreateChatCompletionRequest, OpenAIError> {
    let mut messages: Vec<ChatCompletionRequestMessage> = Vec::with_capacity(req.messages.len());
    for m in &req.messages {
        let msg = match m.role {
            PromptRole::System => {
                ChatCompletionRequestSystemMessageArgs::default().content(m.content.as_str()).build()?.into()
            }
            PromptRole::User => {
                ChatCompletionRequestUserMessageArgs::default().content(m.content.as_str()).build()?.into()
            }
            PromptRole::Assistant => {
                ChatCompletionRequestAssistantMessageArgs::default().content(m.content.as_str()).build()?.into()
            }
        };
        messages.push(msg);
    }
    let mut args = CreateChatCompletionRequestArgs::default();
    args.model(req.model.as_str())
        .messages(messages)
        .stream_options(ChatCompletionStreamOptions { include_usage: Some(true), include_obfuscation: Some(false) });
    if let Some(t) = req.temperature {
        args.temperature(t);
    }
    if let Some(n) = req.max_output_tokens {
        args.max_completion_tokens(n);
    }
    args.build()
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
