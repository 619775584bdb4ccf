//! Text extraction from uploaded documents, and chunking.
//!
//! PDFs are parsed by `pdf-extract`, which panics, loops or exhausts memory on hostile input,
//! so it runs in a child process (this binary re-invoked as `chatq-worker extract-pdf`, bytes
//! on stdin, JSON on stdout) with a wall-clock timeout and an address-space limit, and with a
//! `catch_unwind` per page inside. HTML is converted with `html2text` in a thread with a large
//! stack after a nesting-depth check; Markdown and text are used as they are.

use std::{
    io::{Read, Write},
    process::Stdio,
    time::Duration,
};

use chatq_common::domain::DocumentErrorCode;
use serde::{Deserialize, Serialize};
use text_splitter::{ChunkConfig, MarkdownSplitter, TextSplitter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// HTML nested deeper than this is refused (html2text recurses per level).
pub const MAX_HTML_DEPTH: usize = 512;

/// A document that cannot be ingested: a stable code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ExtractError {
    /// Why.
    pub code: DocumentErrorCode,
    /// What went wrong.
    pub message: String,
}

impl ExtractError {
    fn new(code: DocumentErrorCode, message: impl Into<String>) -> Self {
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

/// Settings of the PDF child process.
#[derive(Debug, Clone)]
pub struct ChildLimits {
    /// The binary to run as `<bin> extract-pdf`.
    pub bin: std::path::PathBuf,
    /// Wall-clock limit.
    pub timeout: Duration,
    /// Address-space limit in MiB.
    pub memory_mb: u64,
}

/// Extracts the text of a document of `media_type`.
pub async fn extract(media_type: &str, bytes: Vec<u8>, limits: &ChildLimits) -> Result<Extracted, ExtractError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ExtractError::new(DocumentErrorCode::EmptyDocument, "the file is empty"));
    }
    let extracted = match media_type {
        "application/pdf" => pdf_in_child(bytes, limits).await?,
        "text/markdown" => {
            let text = utf8(bytes)?;
            Extracted { sections: vec![Section { location: None, text, format: Format::Markdown }], pages: 1 }
        }
        "text/plain" => {
            let text = utf8(bytes)?;
            Extracted { sections: vec![Section { location: None, text, format: Format::Plain }], pages: 1 }
        }
        "text/html" => {
            let text = html(bytes).await?;
            Extracted { sections: vec![Section { location: None, text, format: Format::Markdown }], pages: 1 }
        }
        other => {
            return Err(ExtractError::new(DocumentErrorCode::UnsupportedMediaType, format!("cannot ingest {other}")));
        }
    };
    if extracted.sections.iter().all(|s| s.text.trim().is_empty()) {
        return Err(ExtractError::new(DocumentErrorCode::EmptyDocument, "the document contains no text"));
    }
    Ok(extracted)
}

fn utf8(bytes: Vec<u8>) -> Result<String, ExtractError> {
    let text = String::from_utf8(bytes).map_err(|e| {
        ExtractError::new(
            DocumentErrorCode::InvalidUtf8,
            format!("the file is not valid UTF-8 (first bad byte at offset {})", e.utf8_error().valid_up_to()),
        )
    })?;
    Ok(text.replace("\r\n", "\n"))
}

/// The deepest element nesting of an HTML document, by a cheap tag scan.
pub fn html_depth(html: &str) -> usize {
    const VOID: [&str; 16] = [
        "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source", "track", "wbr",
        "!doctype", "!--",
    ];
    let (mut depth, mut max) = (0usize, 0usize);
    let mut rest = html;
    while let Some(i) = rest.find('<') {
        rest = &rest[i + 1..];
        let end = rest.find('>').unwrap_or(rest.len());
        let tag = &rest[..end];
        if let Some(closing) = tag.strip_prefix('/') {
            if !closing.is_empty() {
                depth = depth.saturating_sub(1);
            }
        } else {
            let name: String =
                tag.chars().take_while(|c| !c.is_whitespace() && *c != '/').collect::<String>().to_ascii_lowercase();
            if !name.is_empty() && !tag.ends_with('/') && !VOID.iter().any(|v| name.starts_with(v)) {
                depth += 1;
                max = max.max(depth);
            }
        }
        rest = &rest[end.min(rest.len())..];
    }
    max
}

/// HTML → Markdown-like text (headings kept as `#`), the `<title>` as a top heading.
async fn html(bytes: Vec<u8>) -> Result<String, ExtractError> {
    let text = utf8(bytes)?;
    let depth = html_depth(&text);
    if depth > MAX_HTML_DEPTH {
        return Err(ExtractError::new(
            DocumentErrorCode::HtmlTooDeeplyNested,
            format!("the HTML nests elements {depth} levels deep (limit {MAX_HTML_DEPTH})"),
        ));
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new().name("html2text".into()).stack_size(256 << 20).spawn(move || {
        let result = std::panic::catch_unwind(|| {
            let title = html_title(&text);
            let text = strip_boilerplate(&text);
            html2text::config::plain().string_from_read(text.as_bytes(), 10_000).map(|body| match title {
                Some(t) if !body.contains(&t) => format!("# {t}\n\n{body}"),
                _ => body,
            })
        });
        let _ = tx.send(result);
    });
    if spawned.is_err() {
        return Err(ExtractError::new(DocumentErrorCode::HtmlUnreadable, "cannot start the HTML converter"));
    }
    match rx.await {
        Ok(Ok(Ok(body))) => Ok(body),
        Ok(Ok(Err(e))) => {
            Err(ExtractError::new(DocumentErrorCode::HtmlUnreadable, format!("the HTML cannot be read: {e}")))
        }
        _ => Err(ExtractError::new(DocumentErrorCode::HtmlUnreadable, "the HTML converter crashed on this file")),
    }
}

/// Drops page furniture before conversion: `<nav>`, `<header>`, `<footer>`, `<script>`,
/// `<style>`, and elements whose class names a navigation bar or table of contents (they list
/// every section title and would match every question).
pub fn strip_boilerplate(html: &str) -> String {
    let lower = html.to_ascii_lowercase();
    let mut out = String::with_capacity(html.len());
    let mut pos = 0;
    let mut search = 0;
    while let Some(rel) = lower[search..].find('<') {
        let start = search + rel;
        let Some(end_rel) = lower[start..].find('>') else { break };
        let tag = &lower[start + 1..start + end_rel];
        let name: String = tag.chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
        let class = tag
            .split("class=")
            .nth(1)
            .map(|c| c.trim_start_matches(['"', '\'']).split(['"', '\'']).next().unwrap_or(""));
        let furniture = matches!(name.as_str(), "nav" | "header" | "footer" | "script" | "style")
            || class.is_some_and(|c| c.split_whitespace().any(|w| w.starts_with("nav") || w == "toc"));
        if !name.is_empty() && furniture && !tag.ends_with('/') {
            // Skip to the matching close tag, counting nested elements of the same name.
            let (open, close) = (format!("<{name}"), format!("</{name}"));
            let mut depth = 0usize;
            let mut i = start;
            let mut skip_to = None;
            while i < lower.len() {
                let next_open = lower[i..].find(&open).map(|r| i + r);
                let next_close = lower[i..].find(&close).map(|r| i + r);
                match (next_open, next_close) {
                    (Some(o), Some(c)) if o < c => {
                        depth += 1;
                        i = o + open.len();
                    }
                    (_, Some(c)) => {
                        depth = depth.saturating_sub(1);
                        i = c + close.len();
                        if depth == 0 {
                            skip_to = lower[i..].find('>').map(|r| i + r + 1);
                            break;
                        }
                    }
                    _ => break,
                }
            }
            if let Some(to) = skip_to {
                out.push_str(&html[pos..start]);
                pos = to;
                search = to;
                continue;
            }
        }
        search = start + end_rel + 1;
    }
    out.push_str(&html[pos..]);
    out
}

fn html_title(html: &str) -> Option<String> {
    let lower = html.to_ascii_lowercase();
    let start = lower.find("<title")?;
    let open_end = start + lower[start..].find('>')? + 1;
    let close = open_end + lower[open_end..].find("</title")?;
    let title = html[open_end..close].split_whitespace().collect::<Vec<_>>().join(" ");
    (!title.is_empty()).then_some(title)
}

/// What the child prints on stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildOutput {
    /// Text per page (page numbers from 1) and pages that failed.
    Pages {
        /// `(page number, text)`.
        pages: Vec<(u32, String)>,
        /// Page numbers whose extraction panicked or errored.
        failed_pages: Vec<u32>,
    },
    /// The whole document failed.
    Error {
        /// Stable code.
        code: DocumentErrorCode,
        /// Message.
        message: String,
    },
}

/// The hidden `extract-pdf` subcommand: PDF bytes on stdin, [`ChildOutput`] JSON on stdout.
pub fn child_main() -> std::process::ExitCode {
    // Panics are expected on bad input and handled per page: keep stderr quiet.
    std::panic::set_hook(Box::new(|_| {}));
    let mut bytes = Vec::new();
    if std::io::stdin().read_to_end(&mut bytes).is_err() {
        return std::process::ExitCode::from(2);
    }
    let out = extract_pdf_pages(&bytes);
    let json = serde_json::to_vec(&out).unwrap_or_default();
    let mut stdout = std::io::stdout().lock();
    if stdout.write_all(&json).and_then(|_| stdout.flush()).is_err() {
        return std::process::ExitCode::from(2);
    }
    std::process::ExitCode::SUCCESS
}

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

async fn pdf_in_child(bytes: Vec<u8>, limits: &ChildLimits) -> Result<Extracted, ExtractError> {
    let crashed = |why: String| ExtractError::new(DocumentErrorCode::PdfExtractionCrashed, why);
    let mut cmd = tokio::process::Command::new(&limits.bin);
    cmd.arg("extract-pdf").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null()).kill_on_drop(true);
    let memory = limits.memory_mb.saturating_mul(1 << 20);
    let cpu = limits.timeout.as_secs().max(1) + 1;
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the forked child before exec and only calls setrlimit, a
    // raw async-signal-safe system call: no allocation, no locks, no shared state.
    unsafe {
        cmd.pre_exec(move || {
            use rustix::process::{Resource, Rlimit, setrlimit};
            setrlimit(Resource::As, Rlimit { current: Some(memory), maximum: Some(memory) })?;
            setrlimit(Resource::Cpu, Rlimit { current: Some(cpu), maximum: Some(cpu) })?;
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| crashed(format!("cannot start the PDF extractor: {e}")))?;
    let mut stdin = child.stdin.take().ok_or_else(|| crashed("no stdin".into()))?;
    let mut stdout = child.stdout.take().ok_or_else(|| crashed("no stdout".into()))?;
    let work = async move {
        // Write and read concurrently: a large PDF does not fit the pipe buffer.
        let writer = async move {
            let _ = stdin.write_all(&bytes).await;
            drop(stdin);
        };
        let mut out = Vec::new();
        let reader = stdout.read_to_end(&mut out);
        let ((), read) = tokio::join!(writer, reader);
        let status = child.wait().await;
        (read.map(|_| out), status)
    };
    let (out, status) = tokio::time::timeout(limits.timeout, work).await.map_err(|_| {
        ExtractError::new(
            DocumentErrorCode::ExtractionTimeout,
            format!("the PDF took longer than {}s to extract", limits.timeout.as_secs()),
        )
    })?;
    let status = status.map_err(|e| crashed(format!("the PDF extractor failed: {e}")))?;
    let out = out.map_err(|e| crashed(format!("cannot read the PDF extractor: {e}")))?;
    if !status.success() {
        return Err(crashed(format!(
            "the PDF extractor stopped ({status}); the file is probably malformed or too large to parse"
        )));
    }
    let parsed: ChildOutput =
        serde_json::from_slice(&out).map_err(|e| crashed(format!("the PDF extractor sent bad output: {e}")))?;
    match parsed {
        ChildOutput::Error { code, message } => Err(ExtractError { code, message }),
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

/// A chunk before embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    /// Text.
    pub content: String,
    /// Tokens (cl100k, the tokenizer of the embedding models).
    pub tokens: usize,
    /// Character range in its section.
    pub char_start: usize,
    /// End of that range.
    pub char_end: usize,
    /// Page, heading path or line.
    pub location: Option<String>,
}

fn bpe() -> &'static tiktoken_rs::CoreBPE {
    tiktoken_rs::cl100k_base_singleton()
}

/// Splits sections into token-sized chunks with overlap, each with a location: the page, the
/// Markdown heading path in effect where it starts (`A > B`), or `line N` for plain text.
pub fn chunk(sections: &[Section], max_tokens: usize, overlap: usize) -> Vec<Piece> {
    let bpe = bpe();
    let config = || ChunkConfig::new(max_tokens).with_sizer(bpe).with_overlap(overlap).expect("overlap < size");
    let md = MarkdownSplitter::new(config());
    let plain = TextSplitter::new(config());
    let mut out = Vec::new();
    for s in sections {
        let headings = if s.format == Format::Markdown { headings(&s.text) } else { Vec::new() };
        let pieces: Vec<_> = match s.format {
            Format::Markdown => md.chunk_char_indices(&s.text).collect(),
            Format::Plain => plain.chunk_char_indices(&s.text).collect(),
        };
        for p in pieces {
            if p.chunk.trim().is_empty() {
                continue;
            }
            let location = match (&s.location, s.format) {
                (Some(l), _) => Some(l.clone()),
                (None, Format::Markdown) => heading_path(&headings, p.byte_offset + 1).or(None),
                (None, Format::Plain) => Some(format!("line {}", s.text[..p.byte_offset].matches('\n').count() + 1)),
            };
            out.push(Piece {
                content: p.chunk.to_string(),
                tokens: bpe.encode_ordinary(p.chunk).len(),
                char_start: p.char_offset,
                char_end: p.char_offset + p.chunk.chars().count(),
                location,
            });
        }
    }
    out
}

/// `(byte offset, level, title)` of every Markdown heading.
fn headings(md: &str) -> Vec<(usize, usize, String)> {
    use pulldown_cmark::{Event, Parser, Tag, TagEnd};
    let mut out = Vec::new();
    let mut current: Option<(usize, usize, String)> = None;
    for (event, range) in Parser::new(md).into_offset_iter() {
        match event {
            Event::Start(Tag::Heading { level, .. }) => current = Some((range.start, level as usize, String::new())),
            Event::Text(t) | Event::Code(t) => {
                if let Some(c) = current.as_mut() {
                    c.2.push_str(&t);
                }
            }
            Event::End(TagEnd::Heading(_)) => {
                if let Some(c) = current.take() {
                    out.push((c.0, c.1, c.2.trim().to_string()));
                }
            }
            _ => {}
        }
    }
    out
}

/// The heading path in effect before byte `at`.
fn heading_path(headings: &[(usize, usize, String)], at: usize) -> Option<String> {
    let mut stack: Vec<(usize, &str)> = Vec::new();
    for (offset, level, title) in headings {
        if *offset >= at {
            break;
        }
        while stack.last().is_some_and(|(l, _)| l >= level) {
            stack.pop();
        }
        stack.push((*level, title));
    }
    (!stack.is_empty()).then(|| stack.iter().map(|(_, t)| *t).collect::<Vec<_>>().join(" > "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_chunks_carry_their_heading_path() {
        let md = "# Guide\n\nIntro text.\n\n## Install\n\nRun the installer from the CD.\n\n### Network\n\nUse the netinst image.\n\n## Remove\n\nDelete it.\n";
        let pieces = chunk(&[Section { location: None, text: md.into(), format: Format::Markdown }], 12, 0);
        let find = |needle: &str| pieces.iter().find(|p| p.content.contains(needle)).unwrap().location.clone();
        assert_eq!(find("netinst").as_deref(), Some("Guide > Install > Network"));
        assert_eq!(find("Delete it").as_deref(), Some("Guide > Remove"));
        for p in &pieces {
            let text: String = md.chars().skip(p.char_start).take(p.char_end - p.char_start).collect();
            assert_eq!(text, p.content);
        }
    }

    #[test]
    fn plain_chunks_know_their_line() {
        let text = "first line\nsecond line\n\nthird paragraph here with words\n".repeat(20);
        let pieces = chunk(&[Section { location: None, text, format: Format::Plain }], 30, 5);
        assert!(pieces.len() > 2);
        assert_eq!(pieces[0].location.as_deref(), Some("line 1"));
        assert!(pieces.iter().all(|p| p.tokens <= 30));
    }

    #[test]
    fn navigation_and_tables_of_contents_are_dropped_from_html() {
        let html = "<body><div class=\"navheader\"><table><tr><td>Prev</td></tr></table></div>\
            <div class=\"toc\"><div><a>1.1 All titles</a></div></div><h1>Real</h1><p>Body text.</p>\
            <nav>menu</nav><footer>foot</footer></body>";
        assert_eq!(strip_boilerplate(html), "<body><h1>Real</h1><p>Body text.</p></body>");
        assert_eq!(strip_boilerplate("<p>plain</p>"), "<p>plain</p>");
    }

    #[test]
    fn html_depth_counts_open_elements() {
        assert_eq!(html_depth("<html><body><p>a<br>b</p><img src=x/></body></html>"), 3);
        assert_eq!(html_depth(&"<div>".repeat(1000)), 1000);
    }
}
