//! PDF: `pdf-extract` panics, loops or exhausts memory on hostile input, so it runs in the
//! [`sandbox`](super::sandbox) child process, with a `catch_unwind` per page inside. Chunks are
//! located by page and heading path: the headings come from the PDF outline (bookmarks) when it
//! has one, else from layout (numbered titles). Running headers and footers (lines that repeat
//! on most pages, page numbers aside) are dropped, so they neither look like headings nor match
//! every question.

use chatq_common::domain::DocumentErrorCode;

use super::{ExtractError, Extracted, Format, Section};

/// Page numbers (from 1) with their text, the page numbers that failed, and the outline
/// (`(page, level, title)` in document order; empty without one).
type Pages = (Vec<(u32, String)>, Vec<u32>, Vec<(u32, usize, String)>);

/// Extracts every page's text.
fn extract_pages(bytes: &[u8]) -> Result<Pages, ExtractError> {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    let err = |code: DocumentErrorCode, message: String| Err(ExtractError::new(code, message));
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
    // The outline is optional and its parser can fail or panic on odd files: no outline then.
    let outline = match catch_unwind(AssertUnwindSafe(|| doc.get_toc())) {
        Ok(Ok(toc)) => toc.toc.into_iter().map(|t| (t.page as u32, t.level, t.title)).collect(),
        _ => Vec::new(),
    };
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
    Ok((pages, failed_pages, outline))
}

/// A PDF's text, one section per page; in the extractor child only.
pub fn extract(bytes: &[u8]) -> Result<Extracted, ExtractError> {
    let (pages, failed_pages, outline) = extract_pages(bytes)?;
    let total = pages.len() + failed_pages.len();
    let texts: Vec<String> = pages.iter().map(|(_, t)| clean_pdf_text(t)).collect();
    let running = running_lines(&texts);
    let sections: Vec<Section> = pages
        .iter()
        .zip(texts)
        .map(|((n, _), text)| Section {
            location: Some(format!("page {n}")),
            text: drop_lines(&text, &running),
            format: Format::Plain,
            outline: (!outline.is_empty())
                .then(|| outline.iter().filter(|(p, _, _)| p == n).map(|(_, l, t)| (*l, t.clone())).collect()),
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

/// A line with its digits blanked, so "Page 3 / 73" and "Page 4 / 73" compare equal.
fn line_key(line: &str) -> String {
    line.trim().chars().map(|c| if c.is_ascii_digit() { '#' } else { c }).collect()
}

/// The lines (as [`line_key`]s) that appear on more than half the pages of a document of at
/// least four pages: running headers and footers.
fn running_lines(pages: &[String]) -> std::collections::HashSet<String> {
    let mut counts: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for page in pages {
        let keys: std::collections::HashSet<String> = page.lines().map(line_key).filter(|k| !k.is_empty()).collect();
        for k in keys {
            *counts.entry(k).or_default() += 1;
        }
    }
    if pages.len() < 4 {
        return Default::default();
    }
    counts.into_iter().filter(|(_, n)| n * 2 > pages.len()).map(|(k, _)| k).collect()
}

/// `text` without the lines in `running`.
fn drop_lines(text: &str, running: &std::collections::HashSet<String>) -> String {
    if running.is_empty() {
        return text.to_string();
    }
    text.lines().filter(|l| !running.contains(&line_key(l))).map(|l| format!("{l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_headers_and_page_numbers_are_dropped_but_body_lines_stay() {
        let words = ["apt", "dpkg", "kernel", "mirror", "release"];
        let pages: Vec<String> =
            (1..=5).map(|n| format!("The Debian FAQ\n\nA page about {}.\n\n{n} / 73\n", words[n - 1])).collect();
        let running = running_lines(&pages);
        let cleaned = drop_lines(&pages[2], &running);
        assert_eq!(cleaned, "\nA page about kernel.\n\n");
        assert!(running_lines(&pages[..3]).is_empty(), "too few pages to tell");
    }
}
