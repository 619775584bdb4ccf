//! Run events: the durable per-run log (`run_events`) and its live copy in a Redis stream.
//! `seq` is gapless per run and is the SSE `id:`.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

/// The type of a run event: its SSE `event:` name, also its name in Postgres, the Redis stream
/// and JSON. The `strum` names are the only name mapping; serde goes through them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr, strum::EnumString)]
#[serde(into = "&'static str", try_from = "String")]
pub enum EventKind {
    /// The run was accepted and waits for a worker.
    #[strum(serialize = "run.queued")]
    Queued,
    /// A worker started an attempt: `{attempt, model, upstream}` (the model and upstream it asks).
    #[strum(serialize = "run.started")]
    Started,
    /// More answer text: `{text}`.
    #[strum(serialize = "message.delta")]
    Delta,
    /// The text shown so far is void, `{attempt, reason}`: a retry starts over (`retry`,
    /// `worker_lost`), the run moved to its next fallback model or upstream (`fallback`, with
    /// the `model` and `upstream` answering now), or moderation withdrew the answer
    /// (`moderation`; the refusal follows as a delta). Clients treat an unknown reason as a
    /// reset.
    #[strum(serialize = "run.reset")]
    Reset,
    /// The answer so far, `{text}`, replacing the text shown until then. Never stored: a replay
    /// sends it in place of events that retention deleted, so it still ends with the full text.
    #[strum(serialize = "run.snapshot")]
    Snapshot,
    /// A cited source: `{index, document_id, chunk_id, filename, location, quote}`.
    #[strum(serialize = "citation")]
    Citation,
    /// Terminal: `{usage, cost_usd, finish_reason}`.
    #[strum(serialize = "run.completed")]
    Completed,
    /// Terminal: `{error: {code, message}}`.
    #[strum(serialize = "run.failed")]
    Failed,
    /// Terminal: the run was stopped on request.
    #[strum(serialize = "run.cancelled")]
    Cancelled,
}

impl TryFrom<String> for EventKind {
    type Error = strum::ParseError;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        name.parse()
    }
}

impl EventKind {
    /// The wire name, e.g. `message.delta`.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        s.parse().ok()
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

pub use crate::redis_formats::run_stream::STREAM_MAXLEN;

/// Appends `event` to its run's Redis stream; see [`crate::redis_formats::run_stream`].
pub async fn publish(
    redis: &redis::aio::ConnectionManager,
    queues: &crate::jobs::Queues,
    event: &RunEvent,
    ttl: std::time::Duration,
) {
    crate::redis_formats::run_stream::publish(redis, queues.prefix(), event, ttl).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_one_name_in_serde_and_on_the_wire() {
        for kind in [
            EventKind::Queued,
            EventKind::Started,
            EventKind::Delta,
            EventKind::Reset,
            EventKind::Snapshot,
            EventKind::Citation,
            EventKind::Completed,
            EventKind::Failed,
            EventKind::Cancelled,
        ] {
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json, Value::String(kind.as_str().to_string()));
            assert_eq!(serde_json::from_value::<EventKind>(json).unwrap(), kind);
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(EventKind::Delta.as_str(), "message.delta");
        assert!(serde_json::from_str::<EventKind>("\"run.exploded\"").is_err());
    }
}
