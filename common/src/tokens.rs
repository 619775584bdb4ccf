//! Token counting with the model's tokenizer (tiktoken), for history budgets.

use std::sync::OnceLock;

use tiktoken_rs::CoreBPE;

fn bpe() -> &'static CoreBPE {
    static BPE: OnceLock<&'static CoreBPE> = OnceLock::new();
    BPE.get_or_init(tiktoken_rs::o200k_base_singleton)
}

/// Tokens in `text` with `o200k_base`, the tokenizer of current OpenAI chat models.
pub fn count(text: &str) -> usize {
    bpe().encode_ordinary(text).len()
}

/// Tokens one chat message costs: its content plus OpenAI's per-message overhead.
pub fn message_tokens(content: &str) -> usize {
    count(content) + 4
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_grow_with_text() {
        assert!(super::count("hello world, how are you today?") > super::count("hello"));
        assert_eq!(super::count(""), 0);
    }
}
