//! The HTTP surface: OpenAI's `/v1` routes, the `/_fake` control routes and the 404 fallback.

mod chat;
mod control;
mod embeddings;
mod models;
mod moderations;

pub use embeddings::embed;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware::from_fn;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::error::OpenAiError;
use crate::middleware::{openai_headers, require_bearer};
use crate::state::Shared;

/// Largest request body accepted; long chat histories and 2048-input embedding batches fit.
const BODY_LIMIT: usize = 64 * 1024 * 1024;

/// Builds the whole application.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let v1 = Router::new()
        .route("/chat/completions", post(chat::create))
        .route("/embeddings", post(embeddings::create))
        .route("/moderations", post(moderations::create))
        .route("/models", get(models::list))
        .route("/models/{id}", get(models::retrieve))
        .route_layer(from_fn(require_bearer));
    Router::new()
        .nest("/v1", v1)
        .route("/_fake/directive", get(control::get_directive).put(control::set_directive))
        .route("/_fake/moderation-outage", axum::routing::put(control::set_moderation_outage))
        .route("/_fake/stats", get(control::stats))
        .fallback(invalid_url)
        .method_not_allowed_fallback(invalid_url)
        .layer(from_fn(openai_headers))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(shared)
}

/// OpenAI's answer to an unknown route or method.
async fn invalid_url(request: Request) -> Response {
    OpenAiError::invalid_url(request.method().as_str(), request.uri().path()).into_response()
}
