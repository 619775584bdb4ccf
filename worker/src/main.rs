//! `chatq-worker`: runs jobs until SIGTERM or Ctrl-C.

use chatq_common::config::Config;

fn main() -> anyhow::Result<std::process::ExitCode> {
    // Hidden subcommand: the sandboxed PDF text extractor the worker runs as a child process.
    if std::env::args().nth(1).as_deref() == Some("extract-pdf") {
        return Ok(chatq_worker::ingest::child_main());
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(serve())?;
    Ok(std::process::ExitCode::SUCCESS)
}

async fn serve() -> anyhow::Result<()> {
    chatq_common::telemetry::init("chatq-worker");
    let config = Config::from_env()?;
    chatq_worker::run(config, chatq_common::signal::shutdown()).await
}
