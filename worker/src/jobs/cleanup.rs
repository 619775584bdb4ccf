//! `Cleanup` (maintenance queue) and the cron tick that pushes it. One cleanup at a time:
//! a `maintenance_jobs` row per run (at most one active, by a partial unique index) and a
//! transaction-scoped advisory lock while it works, so duplicate deliveries, every replica's
//! tick and concurrent admin triggers do the work once. Deletes go in batches of
//! `CHATQ_CLEANUP_BATCH` rows; a dry run counts with the same predicates and deletes nothing.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use apalis::prelude::{BoxDynError, Data};
use apalis_cron::Tick;
use chatq_common::{
    db::{self, maintenance::ThreadCounts},
    domain::{MaintenanceKind, MaintenanceStatus},
    jobs::{self, Cleanup},
};
use redis::AsyncCommands;
use serde_json::{Value, json};

use crate::{
    WorkerCtx,
    jobs::{Job, QUEUES},
    metrics::CLEANUP_KINDS,
};

/// Advisory lock key of the cleanup ("chatqcln").
const LOCK_KEY: i64 = 0x6368_6174_7163_6c6e;
/// The kind in `maintenance_jobs`.
pub const KIND: MaintenanceKind = MaintenanceKind::Cleanup;

impl Job for Cleanup {
    fn concurrency(_: &chatq_common::config::Config) -> usize {
        1
    }

    fn poll_interval(_: &chatq_common::config::Config) -> Duration {
        Duration::from_millis(200)
    }
}

/// apalis entry point.
#[tracing::instrument(skip_all, fields(job.queue = %ctx.queues.maintenance()))]
pub async fn handle(job: Cleanup, ctx: Data<WorkerCtx>) -> Result<(), BoxDynError> {
    let queue = ctx.queues.maintenance();
    match run(&ctx, &job).await {
        Ok(_) => {
            ctx.metrics.jobs.with_label_values(&[&queue, "ok"]).inc();
            Ok(())
        }
        Err(e) => {
            ctx.metrics.jobs.with_label_values(&[&queue, "error"]).inc();
            tracing::warn!(error = format!("{e:#}"), "cleanup interrupted; apalis will deliver it again");
            Err(e.into())
        }
    }
}

/// The cron tick of every replica: push one cleanup under a task id derived from the tick
/// time, so the replicas' pushes collapse into one job.
pub async fn on_tick(tick: Tick, ctx: Data<WorkerCtx>) -> Result<(), BoxDynError> {
    let storage = jobs::storage::<Cleanup>(ctx.redis.clone(), &ctx.queues);
    let task_id = format!("cleanup-{}", tick.get_timestamp());
    jobs::push(&storage, Cleanup::default(), task_id.clone()).await?;
    tracing::info!(task.id = %task_id, "scheduled cleanup pushed");
    Ok(())
}

/// Runs the job; returns its stats, or `None` when there was nothing to do (finished already,
/// or another process holds the cleanup).
pub async fn run(ctx: &WorkerCtx, job: &Cleanup) -> anyhow::Result<Option<Value>> {
    let row = match job.job_id {
        Some(id) => match db::maintenance::get(&ctx.pool, id).await? {
            Some(row) => row,
            None => {
                tracing::warn!(job.id = %id, "cleanup job not found; skipping");
                return Ok(None);
            }
        },
        None => db::maintenance::request(&ctx.pool, KIND, job.dry_run, None).await?.job().clone(),
    };
    if !row.status.is_active() {
        return Ok(None);
    }
    // Held until this function returns (rolled back on drop, also on a panic or crash).
    let mut lock = ctx.pool.begin().await?;
    if !db::maintenance::try_lock(&mut lock, LOCK_KEY).await? {
        tracing::info!(job.id = %row.id, "another cleanup is running; skipping");
        return Ok(None);
    }
    let Some(row) = db::maintenance::start(&ctx.pool, row.id).await? else {
        return Ok(None);
    };
    let wait = (chrono::Utc::now() - row.created_at).num_milliseconds().max(0) as f64 / 1000.0;
    ctx.metrics.queue_wait.with_label_values(&[&ctx.queues.maintenance()]).observe(wait);
    tracing::info!(job.id = %row.id, dry_run = row.dry_run, "cleanup started");
    let started = Instant::now();
    match execute(ctx, row.dry_run).await {
        Ok(mut stats) => {
            stats["duration_ms"] = json!(started.elapsed().as_millis() as u64);
            db::maintenance::finish(&ctx.pool, row.id, MaintenanceStatus::Completed, &stats).await?;
            tracing::info!(job.id = %row.id, stats = %stats, "cleanup completed");
            lock.rollback().await?;
            Ok(Some(stats))
        }
        Err(e) => {
            let stats = json!({"error": format!("{e:#}"), "duration_ms": started.elapsed().as_millis() as u64});
            db::maintenance::finish(&ctx.pool, row.id, MaintenanceStatus::Failed, &stats).await?;
            Err(e)
        }
    }
}

/// Does (or counts) the work and returns the stats.
async fn execute(ctx: &WorkerCtx, dry_run: bool) -> anyhow::Result<Value> {
    let cfg = &ctx.config;
    let global = i32::try_from(cfg.retention.thread_days).unwrap_or(i32::MAX);
    let min = db::maintenance::min_retention_days(&ctx.pool, global).await?;
    let event_secs = cfg.retention.events.as_secs_f64();
    // A delivery's body holds the run's answer: it goes with the events, or with the shortest
    // thread retention when that comes first.
    let delivery_secs = event_secs.min(f64::from(min.max(0)) * 86_400.0);
    let batch = cfg.retention.cleanup_batch;
    let mut stats = json!({
        "dry_run": dry_run,
        "retention_days": global,
        "event_retention_secs": cfg.retention.events.as_secs(),
    });
    if dry_run {
        let t = db::maintenance::count_expired_threads(&ctx.pool, global, min).await?;
        let events = db::maintenance::count_old_events(&ctx.pool, event_secs, global, min).await?;
        let (chunks, blobs) = db::maintenance::count_deleted_document_data(&ctx.pool).await?;
        put_counts(&mut stats, t, events, chunks, blobs);
        stats["webhook_deliveries"] =
            json!(db::maintenance::count_old_webhook_deliveries(&ctx.pool, delivery_secs).await?);
        return Ok(stats);
    }

    let mut threads = ThreadCounts::default();
    let mut batches = 0u64;
    loop {
        let t = db::maintenance::delete_expired_threads(&ctx.pool, global, min, batch).await?;
        batches += 1;
        threads += t;
        count(ctx, "threads", t.threads);
        count(ctx, "messages", t.messages);
        count(ctx, "runs", t.runs);
        count(ctx, "run_events", t.run_events);
        if t.threads < batch {
            break;
        }
    }
    let mut events = 0;
    loop {
        let n = db::maintenance::delete_old_events(&ctx.pool, event_secs, batch).await?;
        batches += 1;
        events += n;
        count(ctx, "old_run_events", n);
        if n < batch {
            break;
        }
    }
    let (mut chunks, mut blobs) = (0, 0);
    loop {
        let (c, b) = db::maintenance::delete_deleted_document_data(&ctx.pool, batch).await?;
        batches += 1;
        chunks += c;
        blobs += b;
        count(ctx, "document_chunks", c);
        count(ctx, "document_blobs", b);
        if c < batch && b < batch {
            break;
        }
    }
    let mut deliveries = 0;
    loop {
        let n = db::maintenance::delete_old_webhook_deliveries(&ctx.pool, delivery_secs, batch).await?;
        batches += 1;
        deliveries += n;
        count(ctx, "webhook_deliveries", n);
        if n < batch {
            break;
        }
    }
    put_counts(&mut stats, threads, events, chunks, blobs);
    stats["webhook_deliveries"] = json!(deliveries);
    stats["batches"] = json!(batches);
    stats["redis"] = redis_housekeeping(ctx).await.context("Redis housekeeping failed")?;
    Ok(stats)
}

fn put_counts(stats: &mut Value, t: ThreadCounts, events: i64, chunks: i64, blobs: i64) {
    stats["threads"] = json!(t.threads);
    stats["messages"] = json!(t.messages);
    stats["runs"] = json!(t.runs);
    stats["run_events"] = json!(t.run_events);
    stats["old_run_events"] = json!(events);
    stats["document_chunks"] = json!(chunks);
    stats["document_blobs"] = json!(blobs);
}

/// Counts `n` deletions of `kind`, one of [`CLEANUP_KINDS`] (whose series start at zero).
fn count(ctx: &WorkerCtx, kind: &str, n: i64) {
    debug_assert!(CLEANUP_KINDS.contains(&kind), "{kind} is not in CLEANUP_KINDS");
    if n > 0 {
        ctx.metrics.cleanup_deleted.with_label_values(&[kind]).inc_by(n as u64);
    }
}

/// apalis data in Redis, for every queue in [`QUEUES`]: finished tasks older than `CHATQ_QUEUE_RETENTION`
/// (`vacuum_before`, never `vacuum`: that one also drops failed tasks waiting for a retry,
/// whose missing payload then kills the worker that fetches them), ids left in the done, dead
/// and failed sets after their data went (apalis never trims them), and the metadata of
/// workers no longer registered (apalis never deletes it).
async fn redis_housekeeping(ctx: &WorkerCtx) -> anyhow::Result<Value> {
    let keep = ctx.config.retention.finished_jobs;
    let mut out = serde_json::Map::new();
    for q in QUEUES {
        let queue = q.name(&ctx.queues);
        let vacuumed = q.vacuum(ctx, keep).await?;
        let mut trimmed = 0;
        for set in ["done", "dead", "failed"] {
            trimmed += trim_set(ctx, &queue, set).await?;
        }
        let workers = drop_stale_worker_metadata(ctx, &queue).await?;
        count(ctx, "redis_tasks", vacuumed as i64);
        count(ctx, "redis_set_entries", trimmed);
        count(ctx, "redis_worker_metadata", workers);
        out.insert(
            queue,
            json!({"tasks_vacuumed": vacuumed, "set_entries_trimmed": trimmed, "worker_metadata_deleted": workers}),
        );
    }
    Ok(Value::Object(out))
}

/// Removes ids from `{queue}:{set}` whose task metadata is gone; scans in small steps so
/// Redis is never blocked for long.
async fn trim_set(ctx: &WorkerCtx, queue: &str, set: &str) -> redis::RedisResult<i64> {
    let mut conn = ctx.redis.clone();
    let key = format!("{queue}:{set}");
    let mut cursor: u64 = 0;
    let mut removed = 0;
    loop {
        let (next, ids): (u64, Vec<String>) =
            redis::cmd("SSCAN").arg(&key).arg(cursor).arg("COUNT").arg(500).query_async(&mut conn).await?;
        if !ids.is_empty() {
            let mut pipe = redis::pipe();
            for id in &ids {
                pipe.exists(format!("{queue}:meta:{id}"));
            }
            let exists: Vec<bool> = pipe.query_async(&mut conn).await?;
            let gone: Vec<&String> = ids.iter().zip(exists).filter(|(_, e)| !e).map(|(id, _)| id).collect();
            if !gone.is_empty() {
                removed += conn.srem::<_, _, i64>(&key, gone).await?;
            }
        }
        cursor = next;
        if cursor == 0 {
            return Ok(removed);
        }
    }
}

/// Deletes `{queue}:workers:metadata:<name>` of workers not in `{queue}:workers` (evicted as
/// orphans or never seen again after a restart).
async fn drop_stale_worker_metadata(ctx: &WorkerCtx, queue: &str) -> redis::RedisResult<i64> {
    let mut conn = ctx.redis.clone();
    let prefix = format!("{queue}:workers:metadata:");
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(500)
            .query_async(&mut conn)
            .await?;
        for key in keys {
            let name = &key[prefix.len()..];
            let seen: Option<f64> = conn.zscore(format!("{queue}:workers"), name).await?;
            if seen.is_none() {
                deleted += conn.del::<_, i64>(&key).await?;
            }
        }
        cursor = next;
        if cursor == 0 {
            return Ok(deleted);
        }
    }
}
