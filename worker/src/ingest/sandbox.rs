//! The extractor child process. Every document, whatever its format, is extracted and chunked
//! in this binary re-invoked as `<bin> extract MEDIA_TYPE CHUNK_TOKENS OVERLAP_TOKENS`: the
//! document's bytes on stdin, [`ChildOutput`] JSON on stdout, under a wall-clock timeout,
//! address-space and CPU limits, and a cap on the bytes read from its stdout. Parsers can panic,
//! loop, recurse without bound or exhaust memory on hostile input, and splitting a huge text into
//! small chunks can take minutes; a child that overruns any limit is killed (`SIGKILL`), so an
//! abandoned extraction leaves no thread or memory behind in the worker.

use std::{
    io::{Read, Write},
    process::{ExitCode, ExitStatus, Stdio},
    time::Duration,
};

use chatq_common::domain::DocumentErrorCode;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{ExtractError, Kind, chunk::Span};

/// The subcommand that extracts and chunks a document.
pub const COMMAND: &str = "extract";

/// Settings of the extractor child process.
#[derive(Debug, Clone)]
pub struct ChildLimits {
    /// The binary run as `<bin> extract …`.
    pub bin: std::path::PathBuf,
    /// Wall-clock limit of extraction and chunking together.
    pub timeout: Duration,
    /// Address-space limit in MiB.
    pub memory_mb: u64,
    /// Most bytes read from the child's stdout; more fails the document.
    pub max_output_bytes: u64,
}

/// How the child splits the text: the chunk size and overlap in tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunking {
    /// Target chunk size in tokens.
    pub max_tokens: usize,
    /// Tokens shared by neighbouring chunks; less than `max_tokens`.
    pub overlap_tokens: usize,
}

/// What the child prints on stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildOutput {
    /// The document's sections and where their chunks lie.
    Chunks {
        /// Pages (1 for non-PDF documents).
        pages: usize,
        /// Sections in order.
        sections: Vec<ChildSection>,
    },
    /// The whole document failed.
    Error {
        /// Stable code.
        code: DocumentErrorCode,
        /// Message.
        message: String,
    },
}

/// One extracted section and its chunks.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChildSection {
    /// The section's text; `None` when it is the upload itself decoded as UTF-8 (text and
    /// Markdown), which the worker already holds, so it is not sent back.
    pub text: Option<String>,
    /// Where each chunk lies in the text.
    pub spans: Vec<Span>,
}

impl From<ExtractError> for ChildOutput {
    fn from(e: ExtractError) -> Self {
        ChildOutput::Error { code: e.code, message: e.message }
    }
}

/// The hidden extractor subcommand (`extract MEDIA_TYPE CHUNK_TOKENS OVERLAP_TOKENS`, `args`
/// without the program name): bytes on stdin, [`ChildOutput`] JSON on stdout. `None` if `args`
/// is not that subcommand.
pub fn child_main(args: &[String]) -> Option<ExitCode> {
    if args.first().map(String::as_str) != Some(COMMAND) {
        return None;
    }
    let parsed = match args {
        [_, media_type, max, overlap] => {
            Kind::from_media_type(media_type).zip(max.parse().ok()).zip(overlap.parse().ok())
        }
        _ => None,
    };
    let Some(((kind, max_tokens), overlap_tokens)) = parsed.filter(|((_, max), overlap)| overlap < max) else {
        eprintln!("usage: {COMMAND} MEDIA_TYPE CHUNK_TOKENS OVERLAP_TOKENS < file (overlap below the chunk size)");
        return Some(ExitCode::from(2));
    };
    // Panics are expected on bad input and handled inside: keep stderr quiet.
    std::panic::set_hook(Box::new(|_| {}));
    let mut bytes = Vec::new();
    if std::io::stdin().read_to_end(&mut bytes).is_err() {
        return Some(ExitCode::from(2));
    }
    let output = super::extract_and_chunk(kind, bytes, Chunking { max_tokens, overlap_tokens });
    let json = serde_json::to_vec(&output).unwrap_or_default();
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
    /// The failure of a document of `kind`.
    pub fn into_extract_error(self, kind: Kind, limits: &ChildLimits) -> ExtractError {
        let what = kind.name();
        match self {
            ChildError::TimedOut => ExtractError::new(
                DocumentErrorCode::ExtractionTimeout,
                format!(
                    "the {what} took longer than {}s to extract and split into chunks (CHATQ_EXTRACT_TIMEOUT_SECS)",
                    limits.timeout.as_secs()
                ),
            ),
            ChildError::OutputTooLarge => ExtractError::new(
                DocumentErrorCode::ExtractionOutputTooLarge,
                format!(
                    "the text and chunks extracted from the {what} are larger than {} bytes (CHATQ_EXTRACT_MAX_OUTPUT_BYTES)",
                    limits.max_output_bytes
                ),
            ),
            ChildError::Stopped(status) => ExtractError::new(
                kind.crashed(),
                format!(
                    "the {what} extractor stopped ({status}); the file is probably malformed or too large to parse"
                ),
            ),
            ChildError::Io(e) => ExtractError::new(kind.crashed(), format!("cannot run the {what} extractor: {e}")),
            ChildError::BadOutput(e) => {
                ExtractError::new(kind.crashed(), format!("the {what} extractor sent bad output: {e}"))
            }
        }
    }
}

/// Runs `<bin> extract` on `input`, a document of `kind`, under `limits` and parses what it prints.
pub async fn run(
    kind: Kind,
    chunking: Chunking,
    input: &[u8],
    limits: &ChildLimits,
) -> Result<ChildOutput, ChildError> {
    let mut cmd = tokio::process::Command::new(&limits.bin);
    cmd.arg(COMMAND)
        .arg(kind.media_type())
        .arg(chunking.max_tokens.to_string())
        .arg(chunking.overlap_tokens.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
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
            let _ = stdin.write_all(input).await;
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
