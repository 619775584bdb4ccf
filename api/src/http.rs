//! The API's HTTP server: hyper's HTTP/1 connection driver with a timer, so a request head
//! (and the idle wait for the next request on a kept-alive connection) has a deadline, a
//! request body may not pause for longer than the body timeout, a request must start its
//! response within the request timeout, and at most `CHATQ_HTTP_MAX_CONNECTIONS` connections
//! are served at once. `axum::serve` sets no timer, which leaves hyper's header timeout off
//! and lets a slowloris hold connections forever.

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context as _;
use axum::{
    Router,
    extract::{MatchedPath, Request},
    http::Method,
    middleware::Next,
    response::{IntoResponse, Response},
};
use chatq_common::config::HttpConfig;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore};

use crate::error::ApiError;

/// Routes whose handler reads a large body before it answers: bounded by the body timeout
/// (no pause longer than it), not by the request timeout.
const UPLOAD_ROUTE: &str = "/v1/knowledge-bases/{id}/documents";

/// Ends a request that has not produced its response head within `timeout` with 503
/// `request_timeout`. A streaming response (SSE) has its head at once, so only the work before
/// the stream starts is timed.
pub async fn request_timeout(timeout: Duration, req: Request, next: Next) -> Response {
    let is_upload = req.method() == Method::POST
        && req.extensions().get::<MatchedPath>().is_some_and(|p| p.as_str() == UPLOAD_ROUTE);
    if is_upload {
        return next.run(req).await;
    }
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(timeout_secs = timeout.as_secs(), "request timed out");
            ApiError::Timeout.into_response()
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then waits for open connections to
/// finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: &HttpConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(config.header_timeout).keep_alive(true);
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        // Take a slot before accepting: beyond the limit, connections wait in the kernel's
        // backlog instead of holding a file descriptor each.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.context("connection limit closed")?,
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // pause briefly instead of spinning.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
