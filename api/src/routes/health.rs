//! Liveness and readiness on the API port; Prometheus metrics, served on their own listener
//! (`CHATQ_METRICS_LISTEN`, see [`crate::serve_metrics`]).

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
    OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(readyz))
}

/// Readiness of the process and its dependencies.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready`, `degraded` or `unavailable`.
    pub status: &'static str,
    /// `ok` or `error`; the cause is logged, never answered, since anyone may ask.
    pub postgres: String,
    /// `ok` or `error`; the cause is logged.
    pub redis: String,
    /// The worst circuit breaker of the chat upstreams as the workers report them: `closed`,
    /// `half_open` or `open` (`unknown` for a state this version cannot read).
    pub provider: String,
    /// Each chat upstream (the providers of `CHATQ_PROVIDERS_FILE`, or `default`), in the
    /// order runs try them.
    pub upstreams: Vec<UpstreamReadiness>,
}

/// One chat upstream as the workers report it.
#[derive(Debug, Serialize, ToSchema)]
pub struct UpstreamReadiness {
    /// The provider's name.
    pub name: String,
    /// Its circuit breaker: `closed`, `half_open`, `open` or `unknown`.
    pub breaker: &'static str,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health", security(()), responses((status = 200, description = "alive")))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: Postgres and Redis answer (`ready`); a chat upstream's circuit breaker is open or
/// probing (`degraded`: runs are accepted, and fall back or wait); a dependency is down
/// (`unavailable`, 503). `upstreams` lists every chat upstream's breaker.
#[utoipa::path(get, path = "/readyz", tag = "health", security(()),
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let postgres = match chatq_common::db::ping(&state.pool).await {
        Ok(_) => "ok".to_string(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: Postgres does not answer");
            "error".to_string()
        }
    };
    let mut conn = state.redis.clone();
    let redis = match redis::cmd("PING").query_async::<String>(&mut conn).await {
        Ok(_) => "ok".to_string(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: Redis does not answer");
            "error".to_string()
        }
    };
    // One MGET for every upstream keeps this cheap. Redis being down already makes the process
    // unavailable; the breakers then read as closed.
    let names: Vec<&str> = state.config.provider.upstreams.all().iter().map(|u| u.name.as_str()).collect();
    let states = breaker::read_all(&state.redis, state.queues.prefix(), &names)
        .await
        .unwrap_or_else(|_| vec![Some(BreakerState::Closed); names.len()]);
    // The worst state: unknown above open above half-open above closed.
    let rank = |s: &Option<BreakerState>| s.map_or(3, |s| s.as_gauge());
    let worst = states.iter().max_by_key(|s| rank(s)).copied().unwrap_or(Some(BreakerState::Closed));
    let upstreams = names
        .iter()
        .zip(&states)
        .map(|(name, s)| UpstreamReadiness {
            name: name.to_string(),
            breaker: s.map_or("unknown", BreakerState::as_str),
        })
        .collect();
    let ready = postgres == "ok" && redis == "ok";
    let (code, status) = match (ready, worst) {
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        (true, Some(BreakerState::Closed)) => (StatusCode::OK, "ready"),
        (true, _) => (StatusCode::OK, "degraded"),
    };
    let provider = worst.map_or("unknown", BreakerState::as_str).to_string();
    (code, axum::Json(Readiness { status, postgres, redis, provider, upstreams }))
}

/// Prometheus metrics in the text format; not part of the public API (own listener).
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], chatq_common::metrics::encode(&state.metrics.registry))
}
