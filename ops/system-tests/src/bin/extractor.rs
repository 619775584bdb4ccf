//! `chatq-test-extractor extract-pdf|extract-html`: the worker's sandboxed text extractors, as
//! the in-process worker of the system tests runs them (`CHATQ_EXTRACTOR_BIN`).

fn main() -> std::process::ExitCode {
    let command = std::env::args().nth(1).unwrap_or_default();
    chatq_worker::ingest::child_main(&command).unwrap_or_else(|| {
        eprintln!("usage: chatq-test-extractor extract-pdf|extract-html < file");
        std::process::ExitCode::from(2)
    })
}
