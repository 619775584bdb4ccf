//! Liveness, readiness, Prometheus metrics and the OpenAPI document.

use axum::{
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
};
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
    /// The provider circuit breaker as the workers report it: `closed`, `half_open` or `open`.
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
    let postgres = match sqlx::query("SELECT 1").execute(&state.pool).await {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("error: {e}"),
    };
    let mut conn = state.redis.clone();
    let redis = match redis::cmd("PING").query_async::<String>(&mut conn).await {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("error: {e}"),
    };
    let breaker: Option<String> =
        redis::cmd("GET").arg(state.queues.breaker_key()).query_async(&mut conn).await.unwrap_or(None);
    let provider = breaker.unwrap_or_else(|| "closed".into());
    let ready = postgres == "ok" && redis == "ok";
    let (code, status) = match (ready, provider.as_str()) {
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        (true, "closed") => (StatusCode::OK, "ready"),
        (true, _) => (StatusCode::OK, "degraded"),
    };
    (code, axum::Json(Readiness { status, postgres, redis, provider }))
}

/// Prometheus metrics in the text format.
#[utoipa::path(get, path = "/metrics", tag = "health", security(()), responses((status = 200, description = "Prometheus text")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], chatq_common::metrics::encode(&state.metrics.registry))
}
