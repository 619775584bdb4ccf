//! The API's Prometheus metrics, registered once.

use std::time::Instant;

use axum::{
    extract::{MatchedPath, Request, State},
    middleware::Next,
    response::Response,
};
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::state::AppState;

/// Handles of every API metric.
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// `chatq_http_requests_total{route, method, status}`.
    pub http_requests: IntCounterVec,
    /// `chatq_http_request_duration_seconds{route, method}`.
    pub http_duration: HistogramVec,
    /// `chatq_runs_submitted_total{outcome}`: accepted, duplicate, busy, enqueue_failed.
    pub runs_submitted: IntCounterVec,
    /// `chatq_sse_connections`: open event streams (the hub's subscriptions). Moves with
    /// `sse_subscribers` (both are exported; the dashboard reads this one): change them through
    /// [`Metrics::sse_opened`] and [`Metrics::sse_closed`].
    pub sse_connections: IntGauge,
    /// `chatq_cleanup_requests_total{outcome}`: `POST /v1/admin/cleanup` calls, `new` or
    /// `existing` (a cleanup was already queued or running).
    pub cleanup_requests: IntCounterVec,
    /// `chatq_sse_subscribers`: live subscriptions of this process's event hub.
    pub sse_subscribers: IntGauge,
    /// `chatq_sse_dropped_total`: subscribers dropped for falling behind (they resume).
    pub sse_dropped: IntCounter,
    /// `chatq_runs_cancel_requested_total`: cancel requests that changed a run.
    pub runs_cancel_requested: IntCounter,
    /// Every family name registered, for the dashboard check.
    pub names: Vec<String>,
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn new() -> Self {
        let mut r = chatq_common::metrics::Registrar::new();
        let http_requests = r.add(IntCounterVec::new(
            Opts::new("chatq_http_requests_total", "HTTP requests by route template, method and status code"),
            &["route", "method", "status"],
        ));
        let http_duration = r.add(HistogramVec::new(
            HistogramOpts::new("chatq_http_request_duration_seconds", "HTTP request latency until the response head")
                .buckets(chatq_common::metrics::LATENCY_BUCKETS.to_vec()),
            &["route", "method"],
        ));
        let runs_submitted = r.add(IntCounterVec::new(
            Opts::new(
                "chatq_runs_submitted_total",
                "Run submissions by outcome (accepted, duplicate, busy, rate_limited, enqueue_failed)",
            ),
            &["outcome"],
        ));
        let sse_connections = r.add(IntGauge::new("chatq_sse_connections", "Open SSE event streams"));
        let cleanup_requests = r.add(IntCounterVec::new(
            Opts::new("chatq_cleanup_requests_total", "Cleanup triggers by outcome (new, existing)"),
            &["outcome"],
        ));
        let sse_subscribers =
            r.add(IntGauge::new("chatq_sse_subscribers", "Live event subscriptions of this API process"));
        let sse_dropped = r.add(IntCounter::new(
            "chatq_sse_dropped_total",
            "Event subscribers dropped for falling too far behind (they resume from their last seq)",
        ));
        let runs_cancel_requested = r.add(IntCounter::new(
            "chatq_runs_cancel_requested_total",
            "Cancel requests that changed a queued or running run",
        ));
        // Every known outcome exists at zero from start-up, so panels and alerts have a series
        // before the first event. HTTP series start with the first request (the health check).
        for outcome in ["accepted", "duplicate", "busy", "rate_limited", "enqueue_failed"] {
            runs_submitted.with_label_values(&[outcome]);
        }
        for outcome in ["new", "existing"] {
            cleanup_requests.with_label_values(&[outcome]);
        }
        let (registry, names) = r.finish();
        Self {
            registry,
            http_requests,
            http_duration,
            runs_submitted,
            sse_connections,
            cleanup_requests,
            sse_subscribers,
            sse_dropped,
            runs_cancel_requested,
            names,
        }
    }
}

impl Metrics {
    /// A hub subscription started.
    pub fn sse_opened(&self) {
        self.sse_subscribers.inc();
        self.sse_connections.inc();
    }

    /// A hub subscription ended.
    pub fn sse_closed(&self) {
        self.sse_subscribers.dec();
        self.sse_connections.dec();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Middleware recording every request by its route template (never the raw path: ids would
/// explode the label set).
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route =
        request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "unmatched".into());
    let method = request.method().as_str().to_owned();
    let start = Instant::now();
    let response = next.run(request).await;
    let m = &state.metrics;
    m.http_duration.with_label_values(&[&route, &method]).observe(start.elapsed().as_secs_f64());
    m.http_requests.with_label_values(&[&route, &method, response.status().as_str()]).inc();
    response
}
