//! The moderation endpoint, for input and output moderation.

use std::time::Duration;

use async_openai::types::moderations::{CreateModerationRequest, ModerationInput};

use super::{Provider, ProviderError};

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

/// How long a moderation check may take.
const TIMEOUT: Duration = Duration::from_secs(10);

impl Provider {
    /// Classifies `text` with the provider's moderation endpoint (10 s timeout).
    pub async fn moderate(&self, text: &str) -> Result<Moderation, ProviderError> {
        let request = CreateModerationRequest {
            input: ModerationInput::String(text.to_string()),
            model: Some(MODERATION_MODEL.to_string()),
        };
        let call = self.call(|client| async move { client.moderations().create(request).await });
        let response = tokio::time::timeout(TIMEOUT, call).await.map_err(|_| ProviderError::timeout(TIMEOUT))??;
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
