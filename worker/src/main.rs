//! `chatq-worker`: runs jobs until SIGTERM or Ctrl-C.

use chatq_common::config::Config;

fn main() -> anyhow::Result<std::process::ExitCode> {
    // A hidden subcommand: the sandboxed extractor the worker runs as a child process.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(code) = chatq_worker::ingest::child_main(&args) {
        return Ok(code);
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(serve())?;
    Ok(std::process::ExitCode::SUCCESS)
}

async fn serve() -> anyhow::Result<()> {
    chatq_common::telemetry::init("chatq-worker");
    let config = Config::from_env()?;
    chatq_worker::run(config, chatq_common::signal::shutdown()).await
}
