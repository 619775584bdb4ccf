//! Gauges of shared state, refreshed when `/metrics` is scraped: queue depth and oldest-job age
//! per queue from Redis (apalis keys `{queue}:active`, `:scheduled`, `:inflight:<worker>`,
//! `:dead`), documents by status and the webhook backlog from Postgres (cached a few seconds, since every replica
//! is scraped).

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use chatq_common::{db, domain::DocumentStatus};
use redis::AsyncCommands;
use uuid::Uuid;

use crate::{WorkerCtx, jobs};

/// How long the documents gauge is reused between scrapes.
pub const DOCUMENTS_TTL: Duration = Duration::from_secs(5);

/// When the documents gauge was last read.
#[derive(Default)]
pub struct ScrapeCache {
    documents_read_at: Mutex<Option<Instant>>,
}

/// Refreshes the gauges; failures are logged and leave the previous values.
pub async fn refresh(ctx: &WorkerCtx) {
    for queue in jobs::QUEUES.iter().map(|q| q.name(&ctx.queues)) {
        if let Err(e) = refresh_queue(ctx, &queue).await {
            tracing::warn!(job.queue = %queue, error = %e, "cannot read queue depth from Redis");
        }
    }
    let due = {
        let mut at = ctx.scrape.documents_read_at.lock().unwrap_or_else(|p| p.into_inner());
        let due = at.is_none_or(|t| t.elapsed() >= DOCUMENTS_TTL);
        if due {
            *at = Some(Instant::now());
        }
        due
    };
    if due {
        match db::maintenance::documents_by_status(&ctx.pool).await {
            Ok(rows) => {
                for status in DocumentStatus::ALL {
                    let n = rows.iter().find(|(s, _)| s == status).map_or(0, |r| r.1);
                    ctx.metrics.documents.with_label_values(&[status]).set(n);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot count documents by status"),
        }
        match db::webhooks::backlog(&ctx.pool).await {
            Ok(n) => ctx.metrics.webhook_backlog.set(n),
            Err(e) => tracing::warn!(error = %e, "cannot count pending webhook deliveries"),
        }
    }
}

/// LLEN active, ZCARD scheduled, SCARD dead, the workers, the head of active, the first scheduled.
type QueueSample = (i64, i64, i64, Vec<String>, Option<String>, Vec<(String, f64)>);

async fn refresh_queue(ctx: &WorkerCtx, queue: &str) -> redis::RedisResult<()> {
    let mut conn = ctx.redis.clone();
    let (active, scheduled, dead, workers, head, first_scheduled): QueueSample = redis::pipe()
        .llen(format!("{queue}:active"))
        .zcard(format!("{queue}:scheduled"))
        .scard(format!("{queue}:dead"))
        .zrange(format!("{queue}:workers"), 0, -1)
        .lindex(format!("{queue}:active"), 0)
        .zrange_withscores(format!("{queue}:scheduled"), 0, 0)
        .query_async(&mut conn)
        .await?;
    let mut inflight = 0i64;
    for worker in &workers {
        inflight += conn.scard::<_, i64>(format!("{queue}:inflight:{worker}")).await?;
    }
    let m = &ctx.metrics;
    m.queue_depth.with_label_values(&[queue, "active"]).set(active);
    m.queue_depth.with_label_values(&[queue, "scheduled"]).set(scheduled);
    m.queue_depth.with_label_values(&[queue, "inflight"]).set(inflight);
    m.queue_depth.with_label_values(&[queue, "dead"]).set(dead);

    // The oldest waiting job: the head of the active list (its push time is in its task id),
    // or a scheduled job that is already due (score = due time in unix seconds).
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut oldest_ms: Option<i64> = head.as_deref().and_then(task_id_time_ms);
    if let Some((_, score)) = first_scheduled.first() {
        let due_ms = (*score * 1000.0) as i64;
        if due_ms <= now_ms {
            oldest_ms = Some(oldest_ms.map_or(due_ms, |o| o.min(due_ms)));
        }
    }
    let age = oldest_ms.map_or(0.0, |t| ((now_ms - t).max(0) as f64) / 1000.0);
    m.queue_oldest_age.with_label_values(&[queue]).set(age);
    Ok(())
}

/// The push time encoded in chatq's task ids: `{run_id}` (UUIDv7, first push),
/// `{run_id}-{unix_ms}` (re-push), `cleanup-{unix_s}` (cron tick), `cleanup-{job_id}` (trigger).
pub fn task_id_time_ms(id: &str) -> Option<i64> {
    if let Some(rest) = id.strip_prefix("cleanup-") {
        if let Ok(secs) = rest.parse::<i64>() {
            return Some(secs * 1000);
        }
        return uuid_time_ms(rest);
    }
    if id.len() > 37
        && id.as_bytes()[36] == b'-'
        && let Ok(ms) = id[37..].parse::<i64>()
    {
        return Some(ms);
    }
    uuid_time_ms(id)
}

fn uuid_time_ms(s: &str) -> Option<i64> {
    let ts = Uuid::parse_str(s).ok()?.get_timestamp()?;
    let (secs, nanos) = ts.to_unix();
    Some(secs as i64 * 1000 + (nanos / 1_000_000) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_times_are_read_from_every_task_id_shape() {
        let id = Uuid::now_v7();
        let now = chrono::Utc::now().timestamp_millis();
        assert!((task_id_time_ms(&id.to_string()).unwrap() - now).abs() < 1000);
        assert_eq!(task_id_time_ms(&format!("{id}-1700000000123")), Some(1_700_000_000_123));
        assert_eq!(task_id_time_ms("cleanup-1700000000"), Some(1_700_000_000_000));
        assert!(task_id_time_ms(&format!("cleanup-{id}")).is_some());
        assert_eq!(task_id_time_ms("something-else"), None);
    }
}
