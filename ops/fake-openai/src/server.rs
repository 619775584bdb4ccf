//! Starting the server and the handle tests use to control and inspect it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::serve::ListenerExt;
use serde_json::Value;
use tokio::sync::watch;

use crate::config::FakeConfig;
use crate::routes::router;
use crate::state::{FakeStats, Shared};
use crate::tokens::warm_up;

/// Control over a running fake. Cheap to clone. Dropping every handle does not stop the
/// server: call [`FakeHandle::shutdown`], or let the Tokio runtime end.
#[derive(Debug, Clone)]
pub struct FakeHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Arc<watch::Sender<bool>>,
    stopped: watch::Receiver<bool>,
}

impl FakeHandle {
    /// Starts a graceful shutdown: no new connections; in-flight responses finish.
    /// Returns at once; await [`FakeHandle::stopped`] to wait for the end.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Resolves once the server has stopped serving after [`FakeHandle::shutdown`].
    pub async fn stopped(&self) {
        let mut stopped = self.stopped.clone();
        // An error means the server task is gone, which is stopped too.
        let _ = stopped.wait_for(|s| *s).await;
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR/v1`, ready for `OpenAIConfig::with_api_base`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Every chat completion request body received so far (that parsed as JSON), in
    /// arrival order. Empty when [`FakeConfig::record_requests`] is off.
    pub fn chat_requests(&self) -> Vec<Value> {
        self.shared.recorded_requests()
    }

    /// Number of embedding requests received so far.
    pub fn embedding_request_count(&self) -> u64 {
        self.shared.embeddings.load(Ordering::Relaxed)
    }

    /// Makes `/v1/moderations` fail with `status` (e.g. 503) until called with `None`.
    pub fn set_moderation_outage(&self, status: Option<u16>) {
        self.shared.moderation_fail_status.store(status.unwrap_or(0), Ordering::Relaxed);
    }

    /// Replaces the server-wide default directive (`"key=value ..."`, `""` clears it).
    /// Its `fail=...xN` count starts again from zero.
    pub fn set_default_directive(&self, directive: &str) {
        self.shared.set_default_directive(directive);
    }

    /// All request counters, as `GET /_fake/stats` reports them.
    pub fn stats(&self) -> FakeStats {
        self.shared.stats()
    }
}

/// Binds `config.listen` and serves in a background task until
/// [`FakeHandle::shutdown`]. Returns the bound address (useful with port 0).
pub async fn spawn(config: FakeConfig) -> std::io::Result<(SocketAddr, FakeHandle)> {
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    // Small SSE chunks must leave at once, not wait for Nagle's algorithm.
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "failed to set TCP_NODELAY");
        }
    });
    // Loading the tokenizers takes a moment; do it off the request path.
    drop(tokio::task::spawn_blocking(warm_up));

    let shared = Arc::new(Shared::new(config));
    let (shutdown_tx, mut shutdown_rx) = watch::channel(false);
    let (stopped_tx, stopped_rx) = watch::channel(false);
    let app = router(Arc::clone(&shared));
    tokio::spawn(async move {
        let signal = async move {
            if shutdown_rx.wait_for(|s| *s).await.is_err() {
                // Unreachable while a handle holds the sender, but never stop by accident.
                std::future::pending::<()>().await;
            }
        };
        if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(signal).await {
            tracing::error!(%error, "fake OpenAI server failed");
        }
        stopped_tx.send_replace(true);
    });
    tracing::debug!(%addr, "fake OpenAI server listening");

    let handle = FakeHandle { addr, shared, shutdown: Arc::new(shutdown_tx), stopped: stopped_rx };
    Ok((addr, handle))
}
