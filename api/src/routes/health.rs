//! Liveness, readiness, Prometheus metrics and the OpenAPI document.

use axum::{
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
};
use chatq_common::redis_formats::breaker::{self, BreakerState};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::state::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(readyz)).routes(routes!(metrics))
}

/// Readiness of the process and its dependencies.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready`, `degraded` or `unavailable`.
    pub status: &'static str,
    /// `ok` or the problem, per dependency.
    pub postgres: String,
    /// `ok` or the problem.
    pub redis: String,
    /// The provider circuit breaker as the workers report it: `closed`, `half_open` or `open`
    /// (`unknown` for a state this version cannot read).
    pub provider: String,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health", security(()), responses((status = 200, description = "alive")))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: Postgres and Redis answer (`ready`); the provider's circuit breaker is open or
/// probing (`degraded`: runs are accepted but wait); a dependency is down (`unavailable`, 503).
#[utoipa::path(get, path = "/readyz", tag = "health", security(()),
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let postgres = match chatq_common::db::ping(&state.pool).await {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("error: {e}"),
    };
    let mut conn = state.redis.clone();
    let redis = match redis::cmd("PING").query_async::<String>(&mut conn).await {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("error: {e}"),
    };
    // Redis being down already makes the process unavailable; the breaker then reads as closed.
    let breaker = breaker::read(&state.redis, state.queues.prefix()).await.unwrap_or(Some(BreakerState::Closed));
    let ready = postgres == "ok" && redis == "ok";
    let (code, status) = match (ready, breaker) {
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        (true, Some(BreakerState::Closed)) => (StatusCode::OK, "ready"),
        (true, _) => (StatusCode::OK, "degraded"),
    };
    let provider = breaker.map_or("unknown", BreakerState::as_str).to_string();
    (code, axum::Json(Readiness { status, postgres, redis, provider }))
}

/// Prometheus metrics in the text format.
#[utoipa::path(get, path = "/metrics", tag = "health", security(()), responses((status = 200, description = "Prometheus text")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], chatq_common::metrics::encode(&state.metrics.registry))
}
