//! The OpenAI-compatible provider: one HTTP client without built-in retries (chatq owns
//! retries), with a file per resource (chat, embeddings, moderation) and the classification
//! of provider errors.

mod chat;
mod done;
mod embeddings;
mod error;
mod moderation;

use std::{
    future::Future,
    sync::{Arc, Mutex, atomic::AtomicBool},
    time::Duration,
};

use async_openai::{Client, config::OpenAIConfig, error::OpenAIError, middleware::HttpRequestFactory};

pub use chat::{ChatRequest, ChatStream, PromptMessage, PromptRole};
pub use embeddings::Embeddings;
pub use error::{ErrorClass, ProviderError, parse_retry_after};
pub use moderation::{MODERATION_MODEL, Moderation};

use crate::{config::Config, upstreams::Upstream};

/// The provider client shared by every job of a process.
#[derive(Clone, Debug)]
pub struct Provider {
    http: reqwest::Client,
    config: OpenAIConfig,
    /// Idle timeout between two stream chunks.
    pub idle_timeout: Duration,
}

impl Provider {
    /// A client for `OPENAI_BASE_URL` with connect and read timeouts and no retries
    /// (embeddings, moderation, and chat without a providers file).
    pub fn new(config: &Config) -> Result<Self, reqwest::Error> {
        let p = &config.provider;
        Self::build(&p.base_url, p.key(), p.connect_timeout, p.idle_timeout)
    }

    /// A client for one chat upstream, with its own timeouts and no retries.
    pub fn for_upstream(upstream: &Upstream) -> Result<Self, reqwest::Error> {
        Self::build(&upstream.base_url, upstream.key(), upstream.connect_timeout, upstream.idle_timeout)
    }

    fn build(base_url: &str, key: &str, connect: Duration, idle: Duration) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(connect)
            // Per read, reset by every chunk: safe for long streams (a total timeout is not).
            .read_timeout(idle)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()?;
        let openai = OpenAIConfig::new().with_api_base(base_url).with_api_key(key);
        Ok(Self { http, config: openai, idle_timeout: idle })
    }

    /// Runs one provider call on its own client and classifies its failure.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, ProviderError>
    where
        F: FnOnce(Client<OpenAIConfig>) -> Fut,
        Fut: Future<Output = Result<T, OpenAIError>>,
    {
        self.call_seen(Arc::default(), call).await
    }

    /// Runs one provider call on its own client whose transport records into `seen` what
    /// async-openai does not report, and classifies its failure with the `Retry-After` of the
    /// error response.
    async fn call_seen<T, F, Fut>(&self, seen: Arc<Seen>, call: F) -> Result<T, ProviderError>
    where
        F: FnOnce(Client<OpenAIConfig>) -> Fut,
        Fut: Future<Output = Result<T, OpenAIError>>,
    {
        call(self.client(seen.clone())).await.map_err(|e| {
            let retry_after = *seen.retry_after.lock().unwrap_or_else(|p| p.into_inner());
            ProviderError::classify(&e, retry_after)
        })
    }

    /// A client whose transport records into `seen` the `Retry-After` of an error response and,
    /// when asked to, whether an event stream ended with `[DONE]`. The service has no retry
    /// layer.
    fn client(&self, seen: Arc<Seen>) -> Client<OpenAIConfig> {
        let http = self.http.clone();
        let service = tower::service_fn(move |factory: HttpRequestFactory| {
            let http = http.clone();
            let seen = seen.clone();
            async move {
                let request = factory.build().await?;
                let response = http.execute(request).await.map_err(OpenAIError::Reqwest)?;
                if !response.status().is_success() {
                    if let Some(after) = parse_retry_after(response.headers()) {
                        *seen.retry_after.lock().unwrap_or_else(|p| p.into_inner()) = Some(after);
                    }
                    return Ok(response);
                }
                // Whatever its content type says: some servers label their event streams oddly.
                if seen.watch_done {
                    return Ok(done::watch(response, seen.clone()));
                }
                Ok::<_, OpenAIError>(response)
            }
        });
        Client::build(self.http.clone(), self.config.clone()).with_http_service(service)
    }
}

/// What the transport of one call saw that async-openai's results do not carry.
#[derive(Debug, Default)]
struct Seen {
    /// Whether to watch a successful response's body for `[DONE]` (streaming calls).
    watch_done: bool,
    /// The `Retry-After` of an error response (async-openai's errors have no headers).
    retry_after: Mutex<Option<Duration>>,
    /// An event stream's body carried OpenAI's `data: [DONE]` terminator. async-openai ends its
    /// stream the same way whether `[DONE]` came or the connection was closed cleanly before it.
    done: AtomicBool,
}
