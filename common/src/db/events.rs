//! `run_events`: the durable, gapless event log of each run.

use sqlx::{PgExecutor, PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::events::{EventKind, RunEvent};

struct Row {
    run_id: Uuid,
    seq: i64,
    attempt: i32,
    kind: String,
    data: serde_json::Value,
}

impl Row {
    fn into_event(self) -> Option<RunEvent> {
        Some(RunEvent {
            run_id: self.run_id,
            seq: self.seq,
            attempt: self.attempt,
            kind: EventKind::parse(&self.kind)?,
            data: self.data,
        })
    }
}

/// Inserts one event unconditionally (submit and finish transactions).
pub async fn insert<'e>(exec: impl PgExecutor<'e>, e: &RunEvent) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO run_events (run_id, seq, attempt, kind, data) VALUES ($1, $2, $3, $4, $5)",
        e.run_id,
        e.seq,
        e.attempt,
        e.kind.as_str(),
        e.data,
    )
    .execute(exec)
    .await?;
    Ok(())
}

/// Inserts a batch of events from many runs in one statement, fenced: only events of an
/// attempt that still owns its run (`in_progress` with that attempt) are written, so a zombie
/// worker cannot take sequence numbers from the live attempt.
pub async fn insert_batch_fenced(tx: &mut Transaction<'_, Postgres>, events: &[RunEvent]) -> Result<u64, sqlx::Error> {
    if events.is_empty() {
        return Ok(0);
    }
    let run_ids: Vec<Uuid> = events.iter().map(|e| e.run_id).collect();
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    let attempts: Vec<i32> = events.iter().map(|e| e.attempt).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    let data: Vec<serde_json::Value> = events.iter().map(|e| e.data.clone()).collect();
    let n = sqlx::query!(
        "INSERT INTO run_events (run_id, seq, attempt, kind, data)
         SELECT u.run_id, u.seq, u.attempt, u.kind, u.data
         FROM UNNEST($1::uuid[], $2::bigint[], $3::int[], $4::text[], $5::jsonb[]) AS u(run_id, seq, attempt, kind, data)
         JOIN runs r ON r.id = u.run_id AND r.attempt = u.attempt AND r.status = 'in_progress'
         ON CONFLICT (run_id, seq) DO NOTHING",
        &run_ids,
        &seqs,
        &attempts,
        &kinds as _,
        &data,
    )
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(n)
}

/// Blanks the text of the run's `message.delta` events before its last `run.reset` with reason
/// `moderation` (an answer withdrawn by moderation), keeping their `seq`s so the log stays
/// gapless: a client replaying the run sees empty deltas, the reset, then the refusal.
pub async fn blank_withdrawn_deltas<'e>(exec: impl PgExecutor<'e>, run_id: Uuid) -> Result<u64, sqlx::Error> {
    let n = sqlx::query!(
        r#"UPDATE run_events SET data = '{"text": "", "withdrawn": true}'::jsonb
           WHERE run_id = $1 AND kind = 'message.delta'
             AND seq < (SELECT max(seq) FROM run_events
                        WHERE run_id = $1 AND kind = 'run.reset' AND data->>'reason' = 'moderation')"#,
        run_id,
    )
    .execute(exec)
    .await?
    .rows_affected();
    Ok(n)
}

/// Events of a run after `after_seq`, in order, at most `limit`.
pub async fn list_after(pool: &PgPool, run_id: Uuid, after_seq: i64, limit: i64) -> Result<Vec<RunEvent>, sqlx::Error> {
    let rows = sqlx::query_as!(
        Row,
        "SELECT run_id, seq, attempt, kind, data FROM run_events WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        run_id,
        after_seq,
        limit,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().filter_map(Row::into_event).collect())
}
