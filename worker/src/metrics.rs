//! The worker's Prometheus metrics, registered once. Gauges of shared state (queue depth,
//! documents by status) are read at scrape time by [`crate::scrape`].

use prometheus::{
    CounterVec, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry,
};

use chatq_common::metrics::Registrar;

/// Handles of every worker metric.
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// `chatq_runs_finished_total{status, error_code}`.
    pub runs_finished: IntCounterVec,
    /// `chatq_run_time_to_first_token_seconds`: claim to first answer text.
    pub ttft: Histogram,
    /// `chatq_run_duration_seconds{status}`: claim to finish.
    pub run_duration: HistogramVec,
    /// `chatq_tokens_total{model, kind}`: input, cached_input, output.
    pub tokens: IntCounterVec,
    /// `chatq_provider_requests_total{outcome}`.
    pub provider_requests: IntCounterVec,
    /// `chatq_runs_in_progress`.
    pub runs_in_progress: IntGauge,
    /// `chatq_event_flush_rows`: events per batched Postgres write.
    pub flush_rows: Histogram,
    // --- Recovery, jobs and maintenance.
    /// `chatq_reconciler_recoveries_total{action}`: `requeued` (pushed again) or `failed`
    /// (attempt limit reached).
    pub reconciler_recoveries: IntCounterVec,
    /// `chatq_jobs_total{queue, outcome}`: jobs handled, `ok` or `error` (redelivered).
    pub jobs: IntCounterVec,
    /// `chatq_job_queue_wait_seconds{queue}`: request (run submit, cleanup trigger) to start.
    pub queue_wait: HistogramVec,
    /// `chatq_cost_usd_total{model}`: cost of priced provider calls.
    pub cost_usd: CounterVec,
    /// `chatq_unpriced_requests_total{model}`: successful calls of models with no price.
    pub unpriced_requests: IntCounterVec,
    /// `chatq_queue_depth{queue, state}`: active, scheduled, inflight, dead (read from Redis).
    pub queue_depth: IntGaugeVec,
    /// `chatq_queue_oldest_job_age_seconds{queue}`: age of the oldest job waiting to start.
    pub queue_oldest_age: GaugeVec,
    /// `chatq_documents{status}`: documents by ingestion status (read from Postgres).
    pub documents: IntGaugeVec,
    /// `chatq_cleanup_deleted_total{kind}`: rows and Redis entries the cleanup removed.
    pub cleanup_deleted: IntCounterVec,
    /// `chatq_provider_breaker_state`: 0 closed, 1 half-open, 2 open (set by the breaker).
    pub breaker_state: IntGauge,
    /// `chatq_run_retries_total{error_code}`: attempts put back in the queue after a
    /// retryable provider error.
    pub run_retries: IntCounterVec,
    /// `chatq_moderation_checks_total{outcome}`: passed, flagged, unavailable_open (answered
    /// unchecked because the endpoint was down), unavailable_closed.
    pub moderation_checks: IntCounterVec,
    /// `chatq_documents_ingested_total{status}`: documents ingested, by final status.
    pub documents_ingested: IntCounterVec,
    /// `chatq_chunks_indexed_total`: chunks written to knowledge bases.
    pub chunks_indexed: IntCounter,
    /// `chatq_pages_extracted_total`: document pages extracted (1 per non-PDF document).
    pub pages_extracted: IntCounter,
    /// Every family name registered, for the dashboard check.
    pub names: Vec<String>,
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn new() -> Self {
        let mut r = Registrar::new();
        let runs_finished = r.add(IntCounterVec::new(
            Opts::new("chatq_runs_finished_total", "Runs that reached a final status, by status and error code"),
            &["status", "error_code"],
        ));
        let ttft = r.add(Histogram::with_opts(
            HistogramOpts::new("chatq_run_time_to_first_token_seconds", "Time from claim to the first answer text")
                .buckets(chatq_common::metrics::RUN_BUCKETS.to_vec()),
        ));
        let run_duration = r.add(HistogramVec::new(
            HistogramOpts::new("chatq_run_duration_seconds", "Time from claim to the final status")
                .buckets(chatq_common::metrics::RUN_BUCKETS.to_vec()),
            &["status"],
        ));
        let tokens = r.add(IntCounterVec::new(
            Opts::new("chatq_tokens_total", "Tokens by model and kind (input, cached_input, output)"),
            &["model", "kind"],
        ));
        let provider_requests = r.add(IntCounterVec::new(
            Opts::new("chatq_provider_requests_total", "Chat requests to the provider by outcome (ok or error code)"),
            &["outcome"],
        ));
        let runs_in_progress = r.add(IntGauge::new("chatq_runs_in_progress", "Runs this worker is executing"));
        let flush_rows = r.add(Histogram::with_opts(
            HistogramOpts::new("chatq_event_flush_rows", "Events written per batched Postgres flush")
                .buckets(vec![1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0]),
        ));
        let reconciler_recoveries = r.add(IntCounterVec::new(
            Opts::new(
                "chatq_reconciler_recoveries_total",
                "Runs the reconciler recovered: requeued (job lost or worker died) or failed (attempt limit)",
            ),
            &["action"],
        ));
        let jobs = r.add(IntCounterVec::new(
            Opts::new("chatq_jobs_total", "Queue jobs handled, by queue and outcome (ok, error)"),
            &["queue", "outcome"],
        ));
        let queue_wait = r.add(HistogramVec::new(
            HistogramOpts::new("chatq_job_queue_wait_seconds", "Time from request to the job's first start")
                .buckets(chatq_common::metrics::LATENCY_BUCKETS.to_vec()),
            &["queue"],
        ));
        let cost_usd = r.add(CounterVec::new(
            Opts::new("chatq_cost_usd_total", "Provider cost in USD by model (priced calls only)"),
            &["model"],
        ));
        let unpriced_requests = r.add(IntCounterVec::new(
            Opts::new("chatq_unpriced_requests_total", "Successful provider calls of a model with no price"),
            &["model"],
        ));
        let queue_depth = r.add(IntGaugeVec::new(
            Opts::new("chatq_queue_depth", "Jobs in a queue by state (active, scheduled, inflight, dead), from Redis"),
            &["queue", "state"],
        ));
        let queue_oldest_age = r.add(GaugeVec::new(
            Opts::new("chatq_queue_oldest_job_age_seconds", "Age of the oldest job waiting to start, from Redis"),
            &["queue"],
        ));
        let documents = r.add(IntGaugeVec::new(
            Opts::new("chatq_documents", "Documents by ingestion status (queued, processing, ready, failed)"),
            &["status"],
        ));
        let cleanup_deleted = r.add(IntCounterVec::new(
            Opts::new("chatq_cleanup_deleted_total", "Rows and Redis entries deleted by the cleanup, by kind"),
            &["kind"],
        ));
        let breaker_state = r.add(IntGauge::new(
            "chatq_provider_breaker_state",
            "Provider circuit breaker: 0 closed, 1 half-open, 2 open",
        ));
        let run_retries = r.add(IntCounterVec::new(
            Opts::new("chatq_run_retries_total", "Attempts re-queued after a retryable provider error, by error code"),
            &["error_code"],
        ));
        let moderation_checks = r.add(IntCounterVec::new(
            Opts::new(
                "chatq_moderation_checks_total",
                "Input moderation checks by outcome (passed, flagged, unavailable_open, unavailable_closed)",
            ),
            &["outcome"],
        ));
        let documents_ingested = r.add(IntCounterVec::new(
            Opts::new("chatq_documents_ingested_total", "Documents ingested, by final status"),
            &["status"],
        ));
        let chunks_indexed = r.add(IntCounter::new("chatq_chunks_indexed_total", "Chunks written to knowledge bases"));
        let pages_extracted =
            r.add(IntCounter::new("chatq_pages_extracted_total", "Document pages extracted (1 per non-PDF document)"));
        let (registry, names) = r.finish();
        Self {
            registry,
            runs_finished,
            ttft,
            run_duration,
            tokens,
            provider_requests,
            runs_in_progress,
            flush_rows,
            reconciler_recoveries,
            jobs,
            queue_wait,
            cost_usd,
            unpriced_requests,
            queue_depth,
            queue_oldest_age,
            documents,
            cleanup_deleted,
            breaker_state,
            run_retries,
            moderation_checks,
            documents_ingested,
            chunks_indexed,
            pages_extracted,
            names,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
