#![doc = include_str!("../README.md")]

pub mod auth;
pub mod error;
pub mod extract;
pub mod hub;
pub mod ingest_cli;
pub mod metrics;
pub mod ratelimit;
pub mod routes;
pub mod state;
pub mod user_token;
pub mod validate;

use std::future::Future;

use anyhow::Context as _;
use axum::{Router, extract::DefaultBodyLimit, middleware, routing::get};
use chatq_common::config::Config;
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

pub use state::AppState;

/// The complete router: every route, the OpenAPI document at `/openapi.json`, the error
/// envelope for unknown routes, body limits, metrics and request tracing.
pub fn app(state: AppState) -> Router {
    let (router, openapi) = routes::api();
    let openapi = std::sync::Arc::new(openapi);
    router
        .route("/openapi.json", get(move || async move { axum::Json(openapi.as_ref().clone()) }))
        .fallback(error::no_route)
        .layer(middleware::from_fn_with_state(state.clone(), metrics::track))
        .layer(DefaultBodyLimit::max(state.config.limits.max_body_bytes))
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
    axum::serve(listener, app(state)).with_graceful_shutdown(shutdown).await.context("HTTP server failed")
}

/// Connects, binds `CHATQ_LISTEN` and serves until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    if config.auth.token_secret.is_none() {
        anyhow::bail!("CHATQ_TOKEN_SECRET must be set for the API (at least 32 characters; it signs user tokens)");
    }
    let listen = config.api.listen;
    let state = AppState::new(config).await?;
    let listener =
        TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen} (CHATQ_LISTEN)"))?;
    tracing::info!(addr = %listener.local_addr()?, "chatq API listening");
    serve(listener, state, shutdown).await
}
