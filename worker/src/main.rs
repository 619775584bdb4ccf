//! `chatq-worker`: runs jobs until SIGTERM or Ctrl-C.

use chatq_common::config::Config;

fn main() -> anyhow::Result<std::process::ExitCode> {
    // Hidden subcommands: the sandboxed extractors the worker runs as child processes.
    if let Some(command) = std::env::args().nth(1)
        && let Some(code) = chatq_worker::ingest::child_main(&command)
    {
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
