//! The worker's Prometheus metrics, registered once. Gauges of shared state (queue depth,
//! documents by status) are read at scrape time by [`crate::scrape`].

use std::{
    collections::HashSet,
    sync::{Mutex, PoisonError},
};

use chatq_common::domain::{DocumentStatus, RunErrorCode, RunStatus};
use prometheus::{
    CounterVec, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry,
};

use chatq_common::metrics::Registrar;
use uuid::Uuid;

/// The default of `CHATQ_METRICS_MAX_ASSISTANTS`.
pub const DEFAULT_MAX_ASSISTANTS: usize = 50;

/// The `assistant` label value shared by assistants past the bound.
pub const OTHER_ASSISTANT: &str = "other";

/// The `assistant` label value of usage that belongs to no assistant (embeddings).
pub const NO_ASSISTANT: &str = "none";

/// What the cleanup counts in `chatq_cleanup_deleted_total{kind}`.
pub const CLEANUP_KINDS: &[&str] = &[
    "threads",
    "messages",
    "runs",
    "run_events",
    "old_run_events",
    "document_chunks",
    "document_blobs",
    "webhook_deliveries",
    "redis_tasks",
    "redis_set_entries",
    "redis_worker_metadata",
];

/// The outcomes of `chatq_webhook_deliveries_total{outcome}`.
pub const WEBHOOK_OUTCOMES: &[&str] = &["succeeded", "retrying", "failed"];

/// Gives each assistant its `assistant` label value: its id (stable, and never text a user
/// wrote) for the first `max` assistants this process counts, `other` for every later one, so
/// the series stay bounded however many assistants exist. The choice is per process and lasts
/// until it restarts.
pub struct AssistantLabels {
    max: usize,
    seen: Mutex<HashSet<Uuid>>,
}

impl AssistantLabels {
    /// Labels for at most `max` distinct assistants.
    pub fn new(max: usize) -> Self {
        Self { max, seen: Mutex::new(HashSet::new()) }
    }

    /// The label value of `assistant` (`none` when the usage has no assistant).
    pub fn label(&self, assistant: Option<Uuid>) -> String {
        let Some(id) = assistant else { return NO_ASSISTANT.into() };
        // A panic elsewhere cannot corrupt a set of ids; keep counting.
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.contains(&id) || (seen.len() < self.max && seen.insert(id)) {
            id.to_string()
        } else {
            OTHER_ASSISTANT.into()
        }
    }
}

/// Handles of every worker metric.
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Bounds the `assistant` label of `runs_finished`, `tokens` and `cost_usd`.
    pub assistants: AssistantLabels,
    /// `chatq_runs_finished_total{status, error_code, assistant}`.
    pub runs_finished: IntCounterVec,
    /// `chatq_run_time_to_first_token_seconds`: claim to first answer text.
    pub ttft: Histogram,
    /// `chatq_run_duration_seconds{status}`: claim to finish.
    pub run_duration: HistogramVec,
    /// `chatq_tokens_total{model, kind, assistant}`: input, cached_input, output.
    pub tokens: IntCounterVec,
    /// `chatq_provider_requests_total{upstream, outcome}`: chat calls by upstream, `ok` or the
    /// error code.
    pub provider_requests: IntCounterVec,
    /// `chatq_provider_request_duration_seconds{upstream}`: a chat call from request to its
    /// last chunk (or its error).
    pub provider_latency: HistogramVec,
    /// `chatq_runs_in_progress`.
    pub runs_in_progress: IntGauge,
    /// `chatq_event_flush_rows`: events per batched Postgres write.
    pub flush_rows: Histogram,
    // --- Recovery, jobs and maintenance.
    /// `chatq_reconciler_recoveries_total{action}`: runs, documents and webhook deliveries
    /// `requeued` (pushed again) or `failed` (attempt limit reached).
    pub reconciler_recoveries: IntCounterVec,
    /// `chatq_jobs_total{queue, outcome}`: jobs handled, `ok` or `error` (redelivered).
    pub jobs: IntCounterVec,
    /// `chatq_job_queue_wait_seconds{queue}`: request (run submit, cleanup trigger) to start.
    pub queue_wait: HistogramVec,
    /// `chatq_cost_usd_total{model, assistant}`: cost of priced provider calls.
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
    /// `chatq_provider_breaker_state{upstream}`: 0 closed, 1 half-open, 2 open (set by each
    /// upstream's breaker).
    pub breaker_state: IntGaugeVec,
    /// `chatq_run_retries_total{error_code}`: attempts put back in the queue after a
    /// retryable provider error.
    pub run_retries: IntCounterVec,
    /// `chatq_run_fallbacks_total{from, to}`: runs moved from one upstream to the next of their
    /// routes (its breaker open, or its retries used up); `from` is empty for a run that had
    /// not started on any.
    pub run_fallbacks: IntCounterVec,
    /// `chatq_moderation_checks_total{outcome}`: passed, flagged, unavailable_open (answered
    /// unchecked because the endpoint was down), unavailable_closed.
    pub moderation_checks: IntCounterVec,
    /// `chatq_documents_ingested_total{status}`: documents ingested, by final status.
    pub documents_ingested: IntCounterVec,
    /// `chatq_chunks_indexed_total`: chunks written to knowledge bases.
    pub chunks_indexed: IntCounter,
    /// `chatq_pages_extracted_total`: document pages extracted (1 per non-PDF document).
    pub pages_extracted: IntCounter,
    /// `chatq_webhook_deliveries_total{outcome}`: webhook delivery attempts by outcome:
    /// `succeeded`, `retrying` (failed, another attempt is scheduled) or `failed` (gave up).
    pub webhook_deliveries: IntCounterVec,
    /// `chatq_webhook_backlog`: webhook deliveries still pending (read from Postgres).
    pub webhook_backlog: IntGauge,
    /// Every family name registered, for the dashboard check.
    pub names: Vec<String>,
}

impl Metrics {
    /// Creates and registers the metrics, with the default assistant bound.
    pub fn new() -> Self {
        Self::with_max_assistants(DEFAULT_MAX_ASSISTANTS)
    }

    /// Creates and registers the metrics; `max_assistants` get their own `assistant` label.
    pub fn with_max_assistants(max_assistants: usize) -> Self {
        let mut r = Registrar::new();
        let runs_finished = r.add(IntCounterVec::new(
            Opts::new(
                "chatq_runs_finished_total",
                "Runs that reached a final status, by status, error code and assistant",
            ),
            &["status", "error_code", "assistant"],
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
            Opts::new("chatq_tokens_total", "Tokens by model, kind (input, cached_input, output) and assistant"),
            &["model", "kind", "assistant"],
        ));
        let provider_requests = r.add(IntCounterVec::new(
            Opts::new(
                "chatq_provider_requests_total",
                "Chat requests to the provider by upstream and outcome (ok or error code)",
            ),
            &["upstream", "outcome"],
        ));
        let provider_latency = r.add(HistogramVec::new(
            HistogramOpts::new(
                "chatq_provider_request_duration_seconds",
                "Chat requests to the provider from request to last chunk or error, by upstream",
            )
            .buckets(chatq_common::metrics::RUN_BUCKETS.to_vec()),
            &["upstream"],
        ));
        let runs_in_progress = r.add(IntGauge::new("chatq_runs_in_progress", "Runs this worker is executing"));
        let flush_rows = r.add(Histogram::with_opts(
            HistogramOpts::new("chatq_event_flush_rows", "Events written per batched Postgres flush")
                .buckets(vec![1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0]),
        ));
        let reconciler_recoveries = r.add(IntCounterVec::new(
            Opts::new(
                "chatq_reconciler_recoveries_total",
                "Runs, documents and webhook deliveries the reconciler recovered: requeued (job lost or worker died) or failed (attempt limit)",
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
            Opts::new("chatq_cost_usd_total", "Provider cost in USD by model and assistant (priced calls only)"),
            &["model", "assistant"],
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
        let breaker_state = r.add(IntGaugeVec::new(
            Opts::new(
                "chatq_provider_breaker_state",
                "Circuit breaker of each upstream: 0 closed, 1 half-open, 2 open",
            ),
            &["upstream"],
        ));
        let run_retries = r.add(IntCounterVec::new(
            Opts::new("chatq_run_retries_total", "Attempts re-queued after a retryable provider error, by error code"),
            &["error_code"],
        ));
        let run_fallbacks = r.add(IntCounterVec::new(
            Opts::new(
                "chatq_run_fallbacks_total",
                "Runs moved to their next fallback route, by upstream left and taken",
            ),
            &["from", "to"],
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
        let webhook_deliveries = r.add(IntCounterVec::new(
            Opts::new(
                "chatq_webhook_deliveries_total",
                "Webhook delivery attempts by outcome (succeeded, retrying, failed)",
            ),
            &["outcome"],
        ));
        let webhook_backlog = r
            .add(IntGauge::new("chatq_webhook_backlog", "Webhook deliveries pending (not yet delivered nor given up)"));
        let (registry, names) = r.finish();
        Self {
            registry,
            assistants: AssistantLabels::new(max_assistants),
            runs_finished,
            ttft,
            run_duration,
            tokens,
            provider_requests,
            provider_latency,
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
            run_fallbacks,
            moderation_checks,
            documents_ingested,
            chunks_indexed,
            pages_extracted,
            webhook_deliveries,
            webhook_backlog,
            names,
        }
    }
}

impl Metrics {
    /// Creates every series of a known label combination at zero, so that dashboards and
    /// alerts see each counter from start-up instead of "No data" until its first event:
    /// `queues` are the queue names, `models` the priced models, `upstreams` the chat upstreams.
    /// Series with an `assistant` label start as `other`, the only assistant value known before
    /// a run.
    pub fn init_known_series(&self, queues: &[String], models: &[&str], upstreams: &[&str]) {
        let other = OTHER_ASSISTANT;
        for status in [RunStatus::Completed, RunStatus::Cancelled] {
            self.runs_finished.with_label_values(&[status.as_str(), "", other]);
        }
        for code in RunErrorCode::ALL {
            self.runs_finished.with_label_values(&[RunStatus::Failed.as_str(), code.as_str(), other]);
            self.run_retries.with_label_values(&[code.as_str()]);
        }
        for status in [RunStatus::Completed, RunStatus::Failed, RunStatus::Cancelled] {
            self.run_duration.with_label_values(&[status.as_str()]);
        }
        for upstream in upstreams {
            self.provider_requests.with_label_values(&[*upstream, "ok"]);
            for code in RunErrorCode::ALL {
                self.provider_requests.with_label_values(&[*upstream, code.as_str()]);
            }
            self.provider_latency.with_label_values(&[*upstream]);
            self.breaker_state.with_label_values(&[*upstream]);
        }
        for model in models {
            self.cost_usd.with_label_values(&[*model, other]);
            self.unpriced_requests.with_label_values(&[*model]);
            for kind in ["input", "cached_input", "output"] {
                self.tokens.with_label_values(&[*model, kind, other]);
            }
        }
        for queue in queues {
            for outcome in ["ok", "error"] {
                self.jobs.with_label_values(&[queue.as_str(), outcome]);
            }
            self.queue_wait.with_label_values(&[queue.as_str()]);
        }
        for action in ["requeued", "failed"] {
            self.reconciler_recoveries.with_label_values(&[action]);
        }
        for kind in CLEANUP_KINDS {
            self.cleanup_deleted.with_label_values(&[*kind]);
        }
        for outcome in ["passed", "flagged", "unavailable_open", "unavailable_closed"] {
            self.moderation_checks.with_label_values(&[outcome]);
        }
        for status in [DocumentStatus::Ready, DocumentStatus::Failed] {
            self.documents_ingested.with_label_values(&[status.as_str()]);
        }
        for outcome in WEBHOOK_OUTCOMES {
            self.webhook_deliveries.with_label_values(&[*outcome]);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assistants_past_the_bound_share_other_and_earlier_ones_keep_their_id() {
        let labels = AssistantLabels::new(2);
        let [a, b, c] = [Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()];
        assert_eq!(labels.label(Some(a)), a.to_string());
        assert_eq!(labels.label(Some(b)), b.to_string());
        assert_eq!(labels.label(Some(c)), OTHER_ASSISTANT);
        assert_eq!(labels.label(Some(a)), a.to_string(), "a counted assistant keeps its label");
        assert_eq!(labels.label(Some(c)), OTHER_ASSISTANT);
        assert_eq!(labels.label(None), NO_ASSISTANT);
    }
}
