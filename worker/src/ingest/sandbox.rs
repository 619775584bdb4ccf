//! The extractor child process. Parsers that can panic, loop, recurse without bound or exhaust
//! memory on hostile input (PDF, HTML) run in this binary re-invoked as `<bin> extract-pdf` or
//! `<bin> extract-html`: the document's bytes on stdin, [`ChildOutput`] JSON on stdout, under a
//! wall-clock timeout, address-space and CPU limits, and a cap on the bytes read from its
//! stdout. A child that overruns any of them is killed (`SIGKILL`), so an abandoned extraction
//! leaves no thread or memory behind in the worker.

use std::{
    io::{Read, Write},
    process::{ExitCode, ExitStatus, Stdio},
    time::Duration,
};

use chatq_common::domain::DocumentErrorCode;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{ExtractError, html, pdf};

/// The subcommand that extracts a PDF's pages.
pub const PDF_COMMAND: &str = "extract-pdf";
/// The subcommand that converts HTML to Markdown-like text.
pub const HTML_COMMAND: &str = "extract-html";

/// Settings of the extractor child process.
#[derive(Debug, Clone)]
pub struct ChildLimits {
    /// The binary run as `<bin> extract-pdf` or `<bin> extract-html`.
    pub bin: std::path::PathBuf,
    /// Wall-clock limit.
    pub timeout: Duration,
    /// Address-space limit in MiB.
    pub memory_mb: u64,
    /// Most bytes read from the child's stdout; more fails the document.
    pub max_output_bytes: u64,
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
    /// The text of the whole document.
    Text {
        /// Markdown-like text.
        text: String,
    },
    /// The whole document failed.
    Error {
        /// Stable code.
        code: DocumentErrorCode,
        /// Message.
        message: String,
    },
}

impl From<ExtractError> for ChildOutput {
    fn from(e: ExtractError) -> Self {
        ChildOutput::Error { code: e.code, message: e.message }
    }
}

/// The hidden extractor subcommands (`extract-pdf`, `extract-html`): bytes on stdin,
/// [`ChildOutput`] JSON on stdout. `None` if `command` is not one of them.
pub fn child_main(command: &str) -> Option<ExitCode> {
    let extract: fn(&[u8]) -> ChildOutput = match command {
        PDF_COMMAND => pdf::extract_pdf_pages,
        HTML_COMMAND => html::convert,
        _ => return None,
    };
    // Panics are expected on bad input and handled inside: keep stderr quiet.
    std::panic::set_hook(Box::new(|_| {}));
    let mut bytes = Vec::new();
    if std::io::stdin().read_to_end(&mut bytes).is_err() {
        return Some(ExitCode::from(2));
    }
    let json = serde_json::to_vec(&extract(&bytes)).unwrap_or_default();
    let mut stdout = std::io::stdout().lock();
    if stdout.write_all(&json).and_then(|_| stdout.flush()).is_err() {
        return Some(ExitCode::from(2));
    }
    Some(ExitCode::SUCCESS)
}

/// Why a child gave no usable output.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// It ran past the wall-clock limit and was killed.
    #[error("timed out")]
    TimedOut,
    /// It printed more than the output cap and was killed.
    #[error("output too large")]
    OutputTooLarge,
    /// It could not be started or talked to.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// It exited with an error or was killed by a limit (memory, CPU, crash).
    #[error("stopped ({0})")]
    Stopped(ExitStatus),
    /// It printed something that is not [`ChildOutput`].
    #[error("bad output: {0}")]
    BadOutput(#[from] serde_json::Error),
}

impl ChildError {
    /// The document's failure: `crashed` is the code of a child that died on `what` (a format's
    /// name for people, e.g. `PDF`).
    pub fn into_extract_error(self, what: &str, crashed: DocumentErrorCode, limits: &ChildLimits) -> ExtractError {
        match self {
            ChildError::TimedOut => ExtractError::new(
                DocumentErrorCode::ExtractionTimeout,
                format!("the {what} took longer than {}s to extract", limits.timeout.as_secs()),
            ),
            ChildError::OutputTooLarge => ExtractError::new(
                DocumentErrorCode::ExtractionOutputTooLarge,
                format!(
                    "the text extracted from the {what} is larger than {} bytes (CHATQ_EXTRACT_MAX_OUTPUT_BYTES)",
                    limits.max_output_bytes
                ),
            ),
            ChildError::Stopped(status) => ExtractError::new(
                crashed,
                format!(
                    "the {what} extractor stopped ({status}); the file is probably malformed or too large to parse"
                ),
            ),
            ChildError::Io(e) => ExtractError::new(crashed, format!("cannot run the {what} extractor: {e}")),
            ChildError::BadOutput(e) => {
                ExtractError::new(crashed, format!("the {what} extractor sent bad output: {e}"))
            }
        }
    }
}

/// Runs `<bin> <command>` on `input` under `limits` and parses what it prints.
pub async fn run(command: &str, input: Vec<u8>, limits: &ChildLimits) -> Result<ChildOutput, ChildError> {
    let mut cmd = tokio::process::Command::new(&limits.bin);
    cmd.arg(command).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null()).kill_on_drop(true);
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
    let mut child = cmd.spawn()?;
    let no_pipe = || ChildError::Io(std::io::Error::other("no pipe to the child"));
    let mut stdin = child.stdin.take().ok_or_else(no_pipe)?;
    let stdout = child.stdout.take().ok_or_else(no_pipe)?;
    let max = limits.max_output_bytes;
    let work = async move {
        // Write and read concurrently: a large document does not fit the pipe buffer.
        let writer = async move {
            let _ = stdin.write_all(&input).await;
            drop(stdin);
        };
        let mut out = Vec::new();
        // One byte over the cap tells an oversized output from one of exactly the cap.
        let mut bounded = stdout.take(max.saturating_add(1));
        let reader = bounded.read_to_end(&mut out);
        let ((), read) = tokio::join!(writer, reader);
        read?;
        if out.len() as u64 > max {
            let _ = child.kill().await;
            return Err(ChildError::OutputTooLarge);
        }
        let status = child.wait().await?;
        if !status.success() {
            return Err(ChildError::Stopped(status));
        }
        Ok(serde_json::from_slice(&out)?)
    };
    // On timeout `work` is dropped with the child, which `kill_on_drop` kills.
    tokio::time::timeout(limits.timeout, work).await.map_err(|_| ChildError::TimedOut)?
}
