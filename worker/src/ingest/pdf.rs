//! PDF: `pdf-extract` panics, loops or exhausts memory on hostile input, so it runs in a child
//! process (this binary re-invoked as `chatq-worker extract-pdf`, bytes on stdin, JSON on
//! stdout) with a wall-clock timeout and address-space and CPU limits, and with a
//! `catch_unwind` per page inside. Chunks are located by page.

use chatq_common::domain::DocumentErrorCode;
use std::{
    io::{Read, Write},
    process::Stdio,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{ExtractError, Extracted, Format, Section};

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

/// Extracts a PDF in a sandboxed child process.
pub async fn extract(bytes: Vec<u8>, limits: &ChildLimits) -> Result<Extracted, ExtractError> {
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
