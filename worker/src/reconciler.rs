//! The reconciler (stuck-work reaper): every `CHATQ_RECONCILE_INTERVAL_SECS`, one worker (leader by Postgres
//! advisory lock) pushes again the runs whose job may be lost — queued runs Redis forgot
//! (flush, failed push) and runs whose worker died (lease lapsed) — and fails runs whose
//! workers died `CHATQ_RUN_MAX_ATTEMPTS` times, so a run that crashes every worker (a poison
//! input) stops after a bounded number of attempts. Duplicate deliveries are harmless: the
//! claim decides. Recoveries are counted in `chatq_reconciler_recoveries_total{action}`.

use chatq_common::{db, domain::RunStatus, jobs};
use tokio_util::sync::CancellationToken;

use crate::WorkerCtx;

const LOCK_KEY: i64 = 0x6368_6174_7172_6563; // "chatqrec"

/// Runs until `stop`.
pub async fn run(ctx: WorkerCtx, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(ctx.config.reconcile_interval) => {}
        }
        match tick(&ctx).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(runs = n, "reconciler pushed stale runs again"),
            Err(e) => tracing::warn!(error = %e, "reconciler tick failed"),
        }
    }
}

/// One pass; returns how many runs were pushed again or failed.
pub async fn tick(ctx: &WorkerCtx) -> Result<usize, sqlx::Error> {
    let mut tx = ctx.pool.begin().await?;
    let leader: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)").bind(LOCK_KEY).fetch_one(&mut *tx).await?;
    if !leader {
        return Ok(0);
    }
    let max_attempts = ctx.config.run_max_attempts;
    let failed = db::runs::fail_exhausted(&ctx.pool, max_attempts, 500).await?;
    let ids = db::runs::take_stale(&ctx.pool, ctx.config.reconcile_after.as_secs_f64(), max_attempts, 500).await?;
    // Issue 4: documents whose ingestion job was lost (failed push, Redis flush, dead worker).
    let processing_after = ctx.config.extract_timeout.as_secs_f64() + 600.0;
    let docs = db::knowledge::take_stale_documents(&ctx.pool, 60.0, processing_after, 500).await?;
    tx.commit().await?;
    let ingest = jobs::ingest_storage(ctx.redis.clone(), &ctx.queues);
    for id in docs {
        match jobs::push_ingest(&ingest, id).await {
            Ok(()) => tracing::info!(document.id = %id, "reconciler pushed a stale document again"),
            Err(e) => tracing::warn!(document.id = %id, error = %e, "reconciler cannot push document"),
        }
    }
    for event in &failed {
        tracing::warn!(run.id = %event.run_id, attempt = event.attempt, "run failed: its workers died too many times");
        ctx.sink.publish(event).await;
        ctx.metrics
            .runs_finished
            .with_label_values(&[RunStatus::Failed.as_str(), db::runs::EXHAUSTED_CODE.as_str()])
            .inc();
    }
    ctx.metrics.reconciler_recoveries.with_label_values(&["failed"]).inc_by(failed.len() as u64);
    let storage = ctx.chat_queue();
    let stamp = chrono::Utc::now().timestamp_millis();
    let mut pushed = 0;
    for id in ids {
        // A fresh task id: apalis drops pushes whose id it still holds.
        match jobs::push_chat_run(&storage, id, format!("{id}-{stamp}")).await {
            Ok(()) => pushed += 1,
            Err(e) => tracing::warn!(run.id = %id, error = %e, "reconciler cannot push run"),
        }
    }
    ctx.metrics.reconciler_recoveries.with_label_values(&["requeued"]).inc_by(pushed as u64);
    Ok(pushed + failed.len())
}
