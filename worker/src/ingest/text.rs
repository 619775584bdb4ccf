//! Plain text: UTF-8, used as it is (chunks are located by line).

use super::{ExtractError, Extracted, Format, whole};
use chatq_common::domain::DocumentErrorCode;

/// A plain-text document.
pub fn extract(bytes: Vec<u8>) -> Result<Extracted, ExtractError> {
    Ok(whole(utf8(bytes)?, Format::Plain))
}

/// The bytes as UTF-8 with `\r\n` line ends made `\n`.
pub(crate) fn utf8(bytes: Vec<u8>) -> Result<String, ExtractError> {
    let text = String::from_utf8(bytes).map_err(|e| {
        ExtractError::new(
            DocumentErrorCode::InvalidUtf8,
            format!("the file is not valid UTF-8 (first bad byte at offset {})", e.utf8_error().valid_up_to()),
        )
    })?;
    Ok(text.replace("\r\n", "\n"))
}
