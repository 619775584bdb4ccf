#![doc = include_str!("../README.md")]

pub mod auth;
pub mod error;
pub mod extract;
pub mod http;
pub mod hub;
pub mod ingest_cli;
pub mod keys_cli;
pub mod metrics;
pub mod ratelimit;
pub mod routes;
pub mod state;
pub mod stream_limits;
pub mod user_token;
pub mod validate;

use std::future::Future;

use anyhow::Context as _;
use axum::{Router, extract::DefaultBodyLimit, middleware, routing::get};
use chatq_common::config::Config;
use tokio::net::TcpListener;
use tower_http::{timeout::RequestBodyTimeoutLayer, trace::TraceLayer};

pub use state::AppState;

/// The complete router: every route, the OpenAPI document at `/openapi.json`, the error
/// envelope for unknown routes, body limits and timeouts, metrics and request tracing.
pub fn app(state: AppState) -> Router {
    let (router, openapi) = routes::api();
    let openapi = std::sync::Arc::new(openapi);
    let request_timeout = state.config.http.request_timeout;
    router
        .route("/openapi.json", get(move || async move { axum::Json(openapi.as_ref().clone()) }))
        .fallback(error::no_route)
        .layer(middleware::from_fn(move |req, next| http::request_timeout(request_timeout, req, next)))
        .layer(middleware::from_fn_with_state(state.clone(), metrics::track))
        .layer(DefaultBodyLimit::max(state.config.limits.max_body_bytes))
        .layer(RequestBodyTimeoutLayer::new(state.config.http.body_timeout))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
            // The path only: query strings may carry tokens.
            tracing::info_span!("http", method = %req.method(), path = %req.uri().path())
        }))
        .layer(cors(&state.config.api.cors_origins))
        .with_state(state)
}

/// CORS for browser widgets on other origins (`CHATQ_CORS_ORIGINS`); no headers when empty.
fn cors(origins: &[String]) -> tower_http::cors::CorsLayer {
    use axum::http::{HeaderName, HeaderValue, Method, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return CorsLayer::new();
    }
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::ACCEPT,
            HeaderName::from_static("last-event-id"),
            HeaderName::from_static("idempotency-key"),
        ])
        // A page on another origin reads only the headers exposed here: the wait of a 429 and
        // the rate-limit budget are what a widget shows its visitor.
        .expose_headers([
            header::RETRY_AFTER,
            HeaderName::from_static("ratelimit-limit"),
            HeaderName::from_static("ratelimit-remaining"),
            HeaderName::from_static("ratelimit-reset"),
        ])
        .max_age(std::time::Duration::from_secs(600))
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let config = state.config.http.clone();
    http::serve(listener, app(state), &config, shutdown).await.context("HTTP server failed")
}

/// The metrics listener's router: `GET /metrics` (Prometheus text) and nothing else. It is
/// kept off the API port because the numbers (costs per model, failure codes, traffic) are
/// for operators, not for whoever can reach the API.
pub fn metrics_app(state: AppState) -> Router {
    Router::new().route("/metrics", get(routes::health::metrics)).with_state(state)
}

/// Serves [`metrics_app`] on `listener` until `shutdown` resolves.
pub async fn serve_metrics(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(listener, metrics_app(state)).with_graceful_shutdown(shutdown).await.context("metrics server failed")
}

/// Connects, binds `CHATQ_LISTEN` and `CHATQ_METRICS_LISTEN` and serves both until `shutdown`
/// resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    if config.auth.token_secret.is_none() {
        anyhow::bail!("CHATQ_TOKEN_SECRET must be set for the API (at least 32 characters; it signs user tokens)");
    }
    let (listen, metrics_listen) = (config.api.listen, config.api.metrics_listen);
    let state = AppState::new(config).await?;
    let listener =
        TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen} (CHATQ_LISTEN)"))?;
    let metrics_listener = TcpListener::bind(metrics_listen)
        .await
        .with_context(|| format!("cannot listen on {metrics_listen} (CHATQ_METRICS_LISTEN)"))?;
    tracing::info!(addr = %listener.local_addr()?, metrics.addr = %metrics_listener.local_addr()?, "chatq API listening");
    // One shutdown for both servers: the metrics server stops once the API has drained.
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics = tokio::spawn(serve_metrics(metrics_listener, state.clone(), async move {
        let _ = metrics_stopped.await;
    }));
    let result = serve(listener, state, shutdown).await;
    let _ = stop_metrics.send(());
    metrics.await.context("metrics server panicked")??;
    result
}
