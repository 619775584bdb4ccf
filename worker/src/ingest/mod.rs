//! Turning an uploaded document into text: one module per format (PDF and HTML run their
//! parsers in the [`sandbox`] child process), dispatched on the media type here, then [`chunk`]ed into
//! token-sized pieces that know where they come from. `jobs::ingest` embeds and stores them.

use chatq_common::domain::DocumentErrorCode;

pub mod chunk;
pub mod html;
pub mod markdown;
pub mod pdf;
pub mod sandbox;
pub mod text;

pub use self::{
    chunk::{Piece, chunk},
    sandbox::{ChildLimits, child_main},
};

/// A document that cannot be ingested: a stable code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ExtractError {
    /// Why, stable for clients.
    pub code: DocumentErrorCode,
    /// What went wrong.
    pub message: String,
}

impl ExtractError {
    pub(crate) fn new(code: DocumentErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

/// Whether a section's text is Markdown (heading paths) or plain (line numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Markdown, or HTML converted to Markdown.
    Markdown,
    /// Plain text or PDF text.
    Plain,
}

/// A unit of extracted text: a whole document, or one PDF page.
#[derive(Debug, Clone)]
pub struct Section {
    /// `page N` for PDF pages; `None` otherwise.
    pub location: Option<String>,
    /// The text.
    pub text: String,
    /// How to locate chunks inside it.
    pub format: Format,
}

/// The extracted text of a document, and the pages it had (PDF) or 1.
#[derive(Debug, Clone)]
pub struct Extracted {
    /// Sections in order.
    pub sections: Vec<Section>,
    /// Pages (1 for non-PDF documents).
    pub pages: usize,
}

/// The whole document as one section of `format`.
fn whole(text: String, format: Format) -> Extracted {
    Extracted { sections: vec![Section { location: None, text, format }], pages: 1 }
}

/// Extracts the text of a document of `media_type`.
pub async fn extract(media_type: &str, bytes: Vec<u8>, limits: &ChildLimits) -> Result<Extracted, ExtractError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ExtractError::new(DocumentErrorCode::EmptyDocument, "the file is empty"));
    }
    let extracted = match media_type {
        "application/pdf" => pdf::extract(bytes, limits).await?,
        "text/markdown" => markdown::extract(bytes)?,
        "text/plain" => text::extract(bytes)?,
        "text/html" => html::extract(bytes, limits).await?,
        other => {
            return Err(ExtractError::new(DocumentErrorCode::UnsupportedMediaType, format!("cannot ingest {other}")));
        }
    };
    if extracted.sections.iter().all(|s| s.text.trim().is_empty()) {
        return Err(ExtractError::new(DocumentErrorCode::EmptyDocument, "the document contains no text"));
    }
    Ok(extracted)
}
