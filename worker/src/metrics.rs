//! The worker's Prometheus metrics, registered once.

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

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
    /// `chatq_reconciler_requeued_total`.
    pub reconciler_requeued: prometheus::IntCounter,
    /// Issue 4: documents ingested, by final status (`ready`, `failed`).
    pub documents_ingested: IntCounterVec,
    /// Issue 4: chunks written to knowledge bases.
    pub chunks_indexed: prometheus::IntCounter,
    /// Issue 4: pages extracted (1 per non-PDF document).
    pub pages_extracted: prometheus::IntCounter,
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn new() -> Self {
        let registry = Registry::new();
        let runs_finished = IntCounterVec::new(
            Opts::new("chatq_runs_finished_total", "Runs that reached a final status, by status and error code"),
            &["status", "error_code"],
        )
        .expect("valid metric");
        let ttft = Histogram::with_opts(
            HistogramOpts::new("chatq_run_time_to_first_token_seconds", "Time from claim to the first answer text")
                .buckets(chatq_common::metrics::RUN_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let run_duration = HistogramVec::new(
            HistogramOpts::new("chatq_run_duration_seconds", "Time from claim to the final status")
                .buckets(chatq_common::metrics::RUN_BUCKETS.to_vec()),
            &["status"],
        )
        .expect("valid metric");
        let tokens = IntCounterVec::new(
            Opts::new("chatq_tokens_total", "Tokens by model and kind (input, cached_input, output)"),
            &["model", "kind"],
        )
        .expect("valid metric");
        let provider_requests = IntCounterVec::new(
            Opts::new("chatq_provider_requests_total", "Chat requests to the provider by outcome (ok or error code)"),
            &["outcome"],
        )
        .expect("valid metric");
        let runs_in_progress =
            IntGauge::new("chatq_runs_in_progress", "Runs this worker is executing").expect("valid metric");
        let flush_rows = Histogram::with_opts(
            HistogramOpts::new("chatq_event_flush_rows", "Events written per batched Postgres flush")
                .buckets(vec![1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0]),
        )
        .expect("valid metric");
        let reconciler_requeued =
            prometheus::IntCounter::new("chatq_reconciler_requeued_total", "Runs the reconciler pushed again")
                .expect("valid metric");
        registry.register(Box::new(runs_finished.clone())).expect("registered once");
        registry.register(Box::new(ttft.clone())).expect("registered once");
        registry.register(Box::new(run_duration.clone())).expect("registered once");
        registry.register(Box::new(tokens.clone())).expect("registered once");
        registry.register(Box::new(provider_requests.clone())).expect("registered once");
        registry.register(Box::new(runs_in_progress.clone())).expect("registered once");
        registry.register(Box::new(flush_rows.clone())).expect("registered once");
        registry.register(Box::new(reconciler_requeued.clone())).expect("registered once");
        let documents_ingested = IntCounterVec::new(
            Opts::new("chatq_documents_ingested_total", "Documents ingested, by final status"),
            &["status"],
        )
        .expect("valid metric");
        let chunks_indexed =
            prometheus::IntCounter::new("chatq_chunks_indexed_total", "Chunks written to knowledge bases")
                .expect("valid metric");
        let pages_extracted =
            prometheus::IntCounter::new("chatq_pages_extracted_total", "Document pages extracted (1 per non-PDF)")
                .expect("valid metric");
        registry.register(Box::new(documents_ingested.clone())).expect("registered once");
        registry.register(Box::new(chunks_indexed.clone())).expect("registered once");
        registry.register(Box::new(pages_extracted.clone())).expect("registered once");
        Self {
            registry,
            runs_finished,
            ttft,
            run_duration,
            tokens,
            provider_requests,
            runs_in_progress,
            flush_rows,
            reconciler_requeued,
            documents_ingested,
            chunks_indexed,
            pages_extracted,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
