//! A run's live events in the Redis stream `{prefix}:run:{id}`. Each entry has the id `{seq}-0`
//! (so readers resume by seq with plain stream ids) and the fields `kind` (the SSE event name),
//! `attempt` and `data` (the JSON payload). Postgres stays the source of truth; the stream is a
//! fast, trimmed copy that expires once the run has been quiet for the stream TTL.

use redis::{aio::ConnectionManager, streams::StreamId};
use serde_json::Value;
use uuid::Uuid;

use crate::events::{EventKind, RunEvent};

/// Events kept per run stream in Redis (approximate trim); older ones replay from Postgres.
pub const STREAM_MAXLEN: usize = 10_000;

/// The stream carrying a run's live events: `{prefix}:run:{id}`.
pub fn key(prefix: &str, run_id: Uuid) -> String {
    format!("{prefix}:run:{run_id}")
}

/// The run a stream key belongs to (the inverse of [`key`]).
pub fn run_id_of(key: &str) -> Option<Uuid> {
    key.rsplit_once(":run:").and_then(|(_, id)| id.parse().ok())
}

/// The stream entry id of the event with this `seq`.
pub fn entry_id(seq: i64) -> String {
    format!("{seq}-0")
}

/// The seq an entry id stands for (the inverse of [`entry_id`]).
pub fn seq_of(entry_id: &str) -> Option<i64> {
    entry_id.split_once('-')?.0.parse().ok()
}

/// The fields of `event`'s stream entry.
pub fn fields(event: &RunEvent) -> [(&'static str, String); 3] {
    [
        ("kind", event.kind.as_str().to_string()),
        ("attempt", event.attempt.to_string()),
        ("data", event.data.to_string()),
    ]
}

/// Reads one entry of `run_id`'s stream; `None` for an entry that is not a run event.
pub fn parse_entry(run_id: Uuid, entry: &StreamId) -> Option<RunEvent> {
    let seq = seq_of(&entry.id)?;
    let kind: String = entry.get("kind")?;
    let attempt: i32 = entry.get("attempt").unwrap_or(0);
    let data: String = entry.get("data").unwrap_or_default();
    Some(RunEvent {
        run_id,
        seq,
        attempt,
        kind: EventKind::parse(&kind)?,
        data: serde_json::from_str(&data).unwrap_or(Value::Null),
    })
}

/// Appends `event` to its run's stream and refreshes the stream's TTL. The one writer of the
/// format: the worker's pipeline and the API (cancels of queued runs) both call it. Failures are
/// logged, not returned: Postgres stays the source of truth and readers fall back to it.
pub async fn publish(redis: &ConnectionManager, prefix: &str, event: &RunEvent, ttl: std::time::Duration) {
    let key = key(prefix, event.run_id);
    let mut conn = redis.clone();
    let mut xadd = redis::cmd("XADD");
    xadd.arg(&key).arg("MAXLEN").arg("~").arg(STREAM_MAXLEN).arg(entry_id(event.seq));
    for (field, value) in fields(event) {
        xadd.arg(field).arg(value);
    }
    let result: redis::RedisResult<()> = redis::pipe()
        .add_command(xadd)
        .ignore()
        .expire(&key, ttl.as_secs() as i64)
        .ignore()
        .query_async(&mut conn)
        .await;
    if let Err(e) = result {
        tracing::warn!(run.id = %event.run_id, seq = event.seq, error = %e, "cannot publish run event to Redis");
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_event_reads_back_as_written() {
        let run_id = Uuid::now_v7();
        let event = RunEvent { run_id, seq: 42, attempt: 2, kind: EventKind::Delta, data: json!({"text": "héllo"}) };
        let entry = StreamId {
            id: entry_id(event.seq),
            map: fields(&event)
                .into_iter()
                .map(|(f, v)| (f.to_string(), redis::Value::BulkString(v.into_bytes())))
                .collect(),
            ..StreamId::default()
        };
        assert_eq!(parse_entry(run_id, &entry), Some(event));
    }

    #[test]
    fn the_key_names_its_run_and_the_entry_id_its_seq() {
        let run_id = Uuid::now_v7();
        assert_eq!(key("chatq", run_id), format!("chatq:run:{run_id}"));
        assert_eq!(run_id_of(&key("a:b", run_id)), Some(run_id));
        assert_eq!(seq_of(&entry_id(7)), Some(7));
    }

    #[test]
    fn an_entry_of_an_unknown_kind_is_skipped() {
        let entry = StreamId {
            id: entry_id(1),
            map: [("kind".to_string(), redis::Value::BulkString(b"run.exploded".to_vec()))].into(),
            ..StreamId::default()
        };
        assert_eq!(parse_entry(Uuid::now_v7(), &entry), None);
    }
}
