//! `chatq-test-extractor extract-pdf`: the worker's sandboxed PDF text extractor, as the
//! in-process worker of the system tests runs it (`CHATQ_EXTRACTOR_BIN`).

fn main() -> std::process::ExitCode {
    if std::env::args().nth(1).as_deref() == Some("extract-pdf") {
        chatq_worker::ingest::child_main()
    } else {
        eprintln!("usage: chatq-test-extractor extract-pdf < file.pdf");
        std::process::ExitCode::from(2)
    }
}
