//! Embeddings, for ingestion and retrieval queries.

use std::time::Duration;

use async_openai::types::embeddings::{CreateEmbeddingRequest, EmbeddingInput};
use backon::{ExponentialBuilder, Retryable};

use super::{ErrorClass, Provider, ProviderError};
use crate::domain::RunErrorCode;

/// Vectors for a batch of texts plus the tokens billed.
#[derive(Clone, Debug)]
pub struct Embeddings {
    /// One vector per input, in input order.
    pub vectors: Vec<Vec<f32>>,
    /// Input tokens the provider billed.
    pub tokens: u64,
}

/// The longest wait between two embeddings attempts, even when `Retry-After` asks for more.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

impl Provider {
    /// One embeddings request (no retries; see [`Provider::embed_with_retries`]).
    pub async fn embed(&self, model: &str, dims: usize, inputs: &[String]) -> Result<Embeddings, ProviderError> {
        let request = CreateEmbeddingRequest {
            model: model.to_string(),
            input: EmbeddingInput::StringArray(inputs.to_vec()),
            // Only text-embedding-3 and later accept `dimensions`.
            dimensions: (!model.contains("ada")).then_some(dims as u32),
            ..Default::default()
        };
        let response = self.call(|client| async move { client.embeddings().create(request).await }).await?;
        let mut data = response.data;
        data.sort_by_key(|e| e.index);
        if data.len() != inputs.len() {
            return Err(ProviderError::new(
                ErrorClass::Retryable,
                RunErrorCode::ProviderUnavailable,
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
    /// backoff (200 ms doubling up to 10 s) honouring `Retry-After` (up to 30 s), up to
    /// `attempts` calls.
    pub async fn embed_with_retries(
        &self,
        model: &str,
        dims: usize,
        inputs: &[String],
        attempts: u32,
    ) -> Result<Embeddings, ProviderError> {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(10))
            .with_factor(2.0)
            .with_max_times(attempts.saturating_sub(1) as usize);
        let mut attempt = 0u32;
        (|| self.embed(model, dims, inputs))
            .retry(backoff)
            .when(|e: &ProviderError| e.class == ErrorClass::Retryable)
            .adjust(|e: &ProviderError, delay| delay.map(|d| e.retry_after.unwrap_or(d).min(MAX_RETRY_AFTER)))
            .notify(|e: &ProviderError, _| {
                attempt += 1;
                tracing::warn!(code = %e.code, detail = %e.detail, attempt, "embeddings request failed; retrying");
            })
            .await
    }
}
