//! Token counting with tiktoken, so `usage` grows with the request like OpenAI's does.

use tiktoken_rs::{cl100k_base_singleton, o200k_base_singleton};

/// Tokens of `text` in `o200k_base`, the encoding of the gpt-4o / 4.1 / 5 families.
pub(crate) fn chat_tokens(text: &str) -> u32 {
    saturate(o200k_base_singleton().encode_ordinary(text).len())
}

/// Tokens of `text` in `cl100k_base`, the encoding of the text-embedding-3 models.
pub(crate) fn embedding_tokens(text: &str) -> u32 {
    saturate(cl100k_base_singleton().encode_ordinary(text).len())
}

/// Prompt tokens of a chat request by OpenAI's published formula: the content's tokens
/// plus 3 per message, plus 3 priming the reply.
pub(crate) fn prompt_tokens<'a>(contents: impl IntoIterator<Item = &'a str>) -> u32 {
    contents.into_iter().fold(3u32, |acc, c| acc.saturating_add(chat_tokens(c)).saturating_add(3))
}

/// Loads both encodings (a few hundred milliseconds) so the first request does not pay it.
pub(crate) fn warm_up() {
    let started = std::time::Instant::now();
    let _ = o200k_base_singleton();
    let _ = cl100k_base_singleton();
    tracing::debug!(elapsed_ms = started.elapsed().as_millis(), "tokenizers loaded");
}

fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
