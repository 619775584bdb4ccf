//! Run events: the durable per-run log (`run_events`) and its live copy in a Redis stream.
//! `seq` is gapless per run and is the SSE `id:`.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

/// The type of a run event (the SSE `event:` name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// The run was accepted and waits for a worker.
    #[serde(rename = "run.queued")]
    Queued,
    /// A worker started an attempt: `{attempt}`.
    #[serde(rename = "run.started")]
    Started,
    /// More answer text: `{text}`.
    #[serde(rename = "message.delta")]
    Delta,
    /// A retry discards the partial text shown so far: `{attempt, reason}`.
    #[serde(rename = "run.reset")]
    Reset,
    /// A cited source: `{index, document_id, chunk_id, filename, location, quote}`.
    #[serde(rename = "citation")]
    Citation,
    /// Terminal: `{usage, cost_usd, finish_reason}`.
    #[serde(rename = "run.completed")]
    Completed,
    /// Terminal: `{error: {code, message}}`.
    #[serde(rename = "run.failed")]
    Failed,
    /// Terminal: the run was stopped on request.
    #[serde(rename = "run.cancelled")]
    Cancelled,
}

impl EventKind {
    /// The wire name, e.g. `message.delta`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Queued => "run.queued",
            EventKind::Started => "run.started",
            EventKind::Delta => "message.delta",
            EventKind::Reset => "run.reset",
            EventKind::Citation => "citation",
            EventKind::Completed => "run.completed",
            EventKind::Failed => "run.failed",
            EventKind::Cancelled => "run.cancelled",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(Value::String(s.to_string())).ok()
    }

    /// Whether the stream ends after this event.
    pub fn is_terminal(self) -> bool {
        matches!(self, EventKind::Completed | EventKind::Failed | EventKind::Cancelled)
    }
}

/// One event of one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunEvent {
    /// The run.
    pub run_id: Uuid,
    /// Position in the run's log, from 1, gapless.
    pub seq: i64,
    /// The attempt that produced it.
    pub attempt: i32,
    /// Its type.
    pub kind: EventKind,
    /// Its payload.
    pub data: Value,
}

impl RunEvent {
    /// The `run.queued` event written with the run at submit time.
    pub fn queued(run_id: Uuid) -> Self {
        Self { run_id, seq: 1, attempt: 0, kind: EventKind::Queued, data: json!({ "run_id": run_id }) }
    }
}

/// Events kept per run stream in Redis (approximate trim); older ones replay from Postgres.
pub const STREAM_MAXLEN: usize = 10_000;

/// Appends `event` to its run's Redis stream `{prefix}:run:{id}` with entry id `{seq}-0` (so
/// readers resume by seq) and fields `kind`, `attempt`, `data`, and refreshes the stream's TTL.
/// The one writer of that format: the worker's pipeline and the API (cancels) both call it.
/// Failures are logged, not returned: Postgres stays the source of truth.
pub async fn publish(
    redis: &redis::aio::ConnectionManager,
    queues: &crate::jobs::Queues,
    event: &RunEvent,
    ttl: std::time::Duration,
) {
    let key = queues.run_stream(event.run_id);
    let mut conn = redis.clone();
    let result: redis::RedisResult<()> = redis::pipe()
        .cmd("XADD")
        .arg(&key)
        .arg("MAXLEN")
        .arg("~")
        .arg(STREAM_MAXLEN)
        .arg(format!("{}-0", event.seq))
        .arg("kind")
        .arg(event.kind.as_str())
        .arg("attempt")
        .arg(event.attempt)
        .arg("data")
        .arg(event.data.to_string())
        .ignore()
        .expire(&key, ttl.as_secs() as i64)
        .ignore()
        .query_async(&mut conn)
        .await;
    if let Err(e) = result {
        tracing::warn!(run.id = %event.run_id, seq = event.seq, error = %e, "cannot publish run event to Redis");
    }
}
