//! `chatq-worker`: runs jobs until SIGTERM or Ctrl-C.

use chatq_common::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    chatq_common::telemetry::init("chatq-worker");
    let config = Config::from_env()?;
    chatq_worker::run(config, shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}
