//! `chatq-test-extractor extract MEDIA_TYPE CHUNK_TOKENS OVERLAP_TOKENS`: the worker's sandboxed
//! extractor, as the in-process worker of the system tests runs it (`CHATQ_EXTRACTOR_BIN`).

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    chatq_worker::ingest::child_main(&args).unwrap_or_else(|| {
        eprintln!("usage: chatq-test-extractor extract MEDIA_TYPE CHUNK_TOKENS OVERLAP_TOKENS < file");
        std::process::ExitCode::from(2)
    })
}
