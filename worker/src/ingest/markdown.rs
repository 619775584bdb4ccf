//! Markdown: used as it is (chunks are located by their heading path).

use super::{ExtractError, Extracted, Format, text::utf8, whole};

/// A Markdown document.
pub fn extract(bytes: Vec<u8>) -> Result<Extracted, ExtractError> {
    Ok(whole(utf8(bytes)?, Format::Markdown))
}
