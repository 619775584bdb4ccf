//! PDF: `pdf-extract` panics, loops or exhausts memory on hostile input, so it runs in the
//! [`sandbox`] child process (`chatq-worker extract-pdf`), with a `catch_unwind` per page
//! inside. Chunks are located by page.

use chatq_common::domain::DocumentErrorCode;

use super::{
    ExtractError, Extracted, Format, Section,
    sandbox::{self, ChildLimits, ChildOutput},
};

/// Extracts every page's text; used inside the child process only.
pub fn extract_pdf_pages(bytes: &[u8]) -> ChildOutput {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    let err = |code: DocumentErrorCode, message: String| ChildOutput::Error { code, message };
    let loaded = catch_unwind(|| pdf_extract::Document::load_mem(bytes));
    let mut doc = match loaded {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => return err(DocumentErrorCode::PdfUnreadable, format!("the PDF cannot be parsed: {e}")),
        Err(_) => return err(DocumentErrorCode::PdfUnreadable, "the PDF cannot be parsed (parser crashed)".into()),
    };
    if doc.is_encrypted() {
        // Many PDFs are "encrypted" with an empty user password; those can be read.
        let opened = catch_unwind(AssertUnwindSafe(|| doc.decrypt(""))).map(|r| r.is_ok()).unwrap_or(false);
        if !opened || doc.is_encrypted() {
            return err(DocumentErrorCode::PdfEncrypted, "the PDF is encrypted with a password".into());
        }
    }
    let numbers: Vec<u32> = match catch_unwind(AssertUnwindSafe(|| doc.get_pages().into_keys().collect())) {
        Ok(n) => n,
        Err(_) => return err(DocumentErrorCode::PdfUnreadable, "the PDF page tree cannot be read".into()),
    };
    if numbers.is_empty() {
        return err(DocumentErrorCode::PdfNoPages, "the PDF has no pages".into());
    }
    let mut pages = Vec::new();
    let mut failed_pages = Vec::new();
    for n in numbers {
        let page = catch_unwind(AssertUnwindSafe(|| {
            let mut s = String::new();
            let mut out = pdf_extract::PlainTextOutput::new(&mut s);
            pdf_extract::output_doc_page(&doc, &mut out, n).map(|_| s)
        }));
        match page {
            Ok(Ok(text)) => pages.push((n, text)),
            _ => failed_pages.push(n),
        }
    }
    ChildOutput::Pages { pages, failed_pages }
}

/// Extracts a PDF in a sandboxed child process.
pub async fn extract(bytes: Vec<u8>, limits: &ChildLimits) -> Result<Extracted, ExtractError> {
    let parsed = sandbox::run(sandbox::PDF_COMMAND, bytes, limits)
        .await
        .map_err(|e| e.into_extract_error("PDF", DocumentErrorCode::PdfExtractionCrashed, limits))?;
    match parsed {
        ChildOutput::Error { code, message } => Err(ExtractError { code, message }),
        ChildOutput::Text { .. } => {
            Err(ExtractError::new(DocumentErrorCode::PdfExtractionCrashed, "the PDF extractor sent text, not pages"))
        }
        ChildOutput::Pages { pages, failed_pages } => {
            let total = pages.len() + failed_pages.len();
            let sections: Vec<Section> = pages
                .into_iter()
                .map(|(n, text)| Section {
                    location: Some(format!("page {n}")),
                    text: clean_pdf_text(&text),
                    format: Format::Plain,
                })
                .collect();
            let chars: usize = sections.iter().map(|s| s.text.trim().chars().count()).sum();
            if sections.is_empty() {
                return Err(ExtractError::new(DocumentErrorCode::PdfUnreadable, "no page of the PDF could be read"));
            }
            if chars < 20 * total.max(1) / 2 {
                return Err(ExtractError::new(
                    DocumentErrorCode::PdfNoText,
                    "the PDF has (almost) no text layer; scanned documents need OCR, which chatq does not do",
                ));
            }
            Ok(Extracted { sections, pages: total })
        }
    }
}

/// Joins words hyphenated across lines and collapses runs of blank lines.
fn clean_pdf_text(text: &str) -> String {
    let joined = text.replace("-\n", "");
    let mut out = String::with_capacity(joined.len());
    let mut blank = 0;
    for line in joined.lines() {
        if line.trim().is_empty() {
            blank += 1;
            if blank > 1 {
                continue;
            }
        } else {
            blank = 0;
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
