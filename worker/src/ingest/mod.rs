//! Turning an uploaded document into chunks: one module per format, dispatched on the media type
//! here, then [`chunk`]ed at its headings into token-sized pieces that know where they come from. All of it,
//! whatever the format, runs in the [`sandbox`] child process under its wall-clock, memory and
//! output limits; the worker only rebuilds the pieces from what the child sends back.
//! `jobs::ingest` embeds and stores them.

use chatq_common::domain::DocumentErrorCode;

pub mod chunk;
pub mod html;
pub mod markdown;
pub mod pdf;
pub mod sandbox;
pub mod text;

use self::sandbox::{ChildOutput, ChildSection};
pub use self::{
    chunk::{Piece, Span},
    sandbox::{ChildLimits, Chunking, child_main},
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

/// The formats chatq ingests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `application/pdf`.
    Pdf,
    /// `text/html`.
    Html,
    /// `text/markdown`.
    Markdown,
    /// `text/plain`.
    Text,
}

impl Kind {
    /// The format of `media_type`; `None` for one chatq does not ingest.
    pub fn from_media_type(media_type: &str) -> Option<Self> {
        match media_type {
            "application/pdf" => Some(Kind::Pdf),
            "text/html" => Some(Kind::Html),
            "text/markdown" => Some(Kind::Markdown),
            "text/plain" => Some(Kind::Text),
            _ => None,
        }
    }

    /// The media type, as [`from_media_type`](Self::from_media_type) reads it.
    pub fn media_type(self) -> &'static str {
        match self {
            Kind::Pdf => "application/pdf",
            Kind::Html => "text/html",
            Kind::Markdown => "text/markdown",
            Kind::Text => "text/plain",
        }
    }

    /// The format's name in messages for people.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Pdf => "PDF",
            Kind::Html => "HTML",
            Kind::Markdown => "Markdown file",
            Kind::Text => "text file",
        }
    }

    /// The code of a document whose extractor child died (memory limit, crash).
    pub fn crashed(self) -> DocumentErrorCode {
        match self {
            Kind::Pdf => DocumentErrorCode::PdfExtractionCrashed,
            Kind::Html => DocumentErrorCode::HtmlUnreadable,
            Kind::Markdown | Kind::Text => DocumentErrorCode::ExtractionCrashed,
        }
    }

    /// Whether the extracted text is the upload itself decoded as UTF-8 ([`text::utf8`]).
    fn text_is_the_upload(self) -> bool {
        matches!(self, Kind::Markdown | Kind::Text)
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

/// A unit of extracted text: a whole document, or one PDF page. Chunks never cross sections.
#[derive(Debug, Clone)]
pub struct Section {
    /// `page N` for PDF pages; `None` otherwise.
    pub location: Option<String>,
    /// The text.
    pub text: String,
    /// How to locate chunks inside it.
    pub format: Format,
    /// `(level, title)` of the headings a PDF's outline puts in this section (page), in order;
    /// `None` when the document has no outline (headings are then found by layout).
    pub outline: Option<Vec<(usize, String)>>,
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
    Extracted { sections: vec![Section { location: None, text, format, outline: None }], pages: 1 }
}

/// A document's chunks, ready to embed, and the pages it had.
#[derive(Debug, Clone)]
pub struct Chunked {
    /// Chunks in document order.
    pub pieces: Vec<Piece>,
    /// Pages (1 for non-PDF documents).
    pub pages: usize,
}

/// Extracts the text of a document of `kind`; in the child process only.
pub fn extract_text(kind: Kind, bytes: Vec<u8>) -> Result<Extracted, ExtractError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ExtractError::new(DocumentErrorCode::EmptyDocument, "the file is empty"));
    }
    let extracted = match kind {
        Kind::Pdf => pdf::extract(&bytes)?,
        Kind::Html => html::extract(&bytes)?,
        Kind::Markdown => markdown::extract(bytes)?,
        Kind::Text => text::extract(bytes)?,
    };
    if extracted.sections.iter().all(|s| s.text.trim().is_empty()) {
        return Err(ExtractError::new(DocumentErrorCode::EmptyDocument, "the document contains no text"));
    }
    Ok(extracted)
}

/// The child's work: extracts a document of `kind` and chunks it.
fn extract_and_chunk(kind: Kind, bytes: Vec<u8>, chunking: Chunking) -> ChildOutput {
    let extracted = match extract_text(kind, bytes) {
        Ok(e) => e,
        Err(e) => return e.into(),
    };
    let spans = chunk::spans(&extracted.sections, chunking);
    let sections = extracted
        .sections
        .into_iter()
        .zip(spans)
        .map(|(s, spans)| ChildSection { text: (!kind.text_is_the_upload()).then_some(s.text), spans })
        .collect();
    ChildOutput::Chunks { pages: extracted.pages, sections }
}

/// Extracts and chunks a document of `media_type` in the sandboxed child process: a document
/// that takes longer than `limits.timeout` to extract and chunk fails with
/// `extraction_timeout`, whatever its format.
pub async fn extract(
    media_type: &str,
    bytes: Vec<u8>,
    chunking: Chunking,
    limits: &ChildLimits,
) -> Result<Chunked, ExtractError> {
    let Some(kind) = Kind::from_media_type(media_type) else {
        let message = format!("cannot ingest {media_type}");
        return Err(ExtractError::new(DocumentErrorCode::UnsupportedMediaType, message));
    };
    let output = sandbox::run(kind, chunking, &bytes, limits).await.map_err(|e| e.into_extract_error(kind, limits))?;
    let (pages, sections) = match output {
        ChildOutput::Error { code, message } => return Err(ExtractError { code, message }),
        ChildOutput::Chunks { pages, sections } => (pages, sections),
    };
    // The child decoded the same bytes the same way, so the spans fit this text.
    let upload = match kind.text_is_the_upload() {
        true => Some(text::utf8(bytes)?),
        false => None,
    };
    let mut pieces = Vec::new();
    for section in sections {
        let Some(text) = section.text.as_deref().or(upload.as_deref()) else {
            let message = format!("the {} extractor sent a section without its text", kind.name());
            return Err(ExtractError::new(kind.crashed(), message));
        };
        for span in section.spans {
            let Some(piece) = span.piece(text) else {
                let message = format!("the {} extractor sent a chunk outside its text", kind.name());
                return Err(ExtractError::new(kind.crashed(), message));
            };
            pieces.push(piece);
        }
    }
    if pieces.is_empty() {
        return Err(ExtractError::new(DocumentErrorCode::EmptyDocument, "the document contains no text"));
    }
    Ok(Chunked { pieces, pages })
}
