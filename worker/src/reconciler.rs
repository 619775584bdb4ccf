//! The reconciler (stuck-work reaper): every `CHATQ_RECONCILE_INTERVAL_SECS`, one worker (leader
//! by Postgres advisory lock) asks every queue in [`jobs::QUEUES`] to push again the work whose
//! job may be lost. For chat runs that is queued runs Redis forgot (flush, failed push) and runs
//! whose worker died (lease lapsed); runs whose workers died `CHATQ_RUN_MAX_ATTEMPTS` times are
//! failed, so a run that crashes every worker (a poison input) stops after a bounded number of
//! attempts. For documents it is queued or long-`processing` documents, and documents whose
//! attempts were all interrupted `CHATQ_INGEST_MAX_ATTEMPTS` times are failed. Duplicate deliveries
//! are harmless: the claim decides. Recoveries are counted in
//! `chatq_reconciler_recoveries_total{action}`.

use chatq_common::{
    db,
    domain::{DocumentStatus, RunStatus},
    jobs::{self, ChatRun, IngestDocument},
    redis_formats::run_lease,
};
use tokio_util::sync::CancellationToken;

use crate::{WorkerCtx, jobs::QUEUES};

const LOCK_KEY: i64 = 0x6368_6174_7172_6563; // "chatqrec"

/// Runs until `stop`.
pub async fn run(ctx: WorkerCtx, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(ctx.config.runs.reconcile_interval) => {}
        }
        match tick(&ctx).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(items = n, "reconciler recovered stale work"),
            Err(e) => tracing::warn!(error = %e, "reconciler tick failed"),
        }
    }
}

/// One pass over every queue; returns how many runs and documents were pushed again or failed.
pub async fn tick(ctx: &WorkerCtx) -> Result<usize, sqlx::Error> {
    let mut tx = ctx.pool.begin().await?;
    if !db::maintenance::try_lock(&mut tx, LOCK_KEY).await? {
        return Ok(0);
    }
    let mut recovered = 0;
    for queue in QUEUES {
        recovered += queue.recover(ctx).await?;
    }
    tx.commit().await?;
    Ok(recovered)
}

/// Chat runs: fails those whose workers died too often, pushes again the stale ones.
pub(crate) async fn recover_runs(ctx: &WorkerCtx) -> Result<usize, sqlx::Error> {
    let max_attempts = ctx.config.runs.max_attempts;
    // Runs whose worker still holds their Redis lease are being worked on, even if their
    // Postgres lease lapsed during an outage: neither failed nor pushed again.
    let held = run_lease::held(&ctx.redis, ctx.queues.prefix()).await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read run leases from Redis; going by Postgres leases");
        Vec::new()
    });
    let failed = db::runs::fail_exhausted(&ctx.pool, max_attempts, &held, 500).await?;
    let reconcile_after = ctx.config.runs.reconcile_after.as_secs_f64();
    let ids = db::runs::take_stale(&ctx.pool, reconcile_after, max_attempts, &held, 500).await?;
    for db::runs::Exhausted { event, assistant_id } in &failed {
        tracing::warn!(run.id = %event.run_id, attempt = event.attempt, "run failed: its workers died too many times");
        ctx.sink.publish(event).await;
        let assistant = ctx.metrics.assistants.label(Some(*assistant_id));
        ctx.metrics
            .runs_finished
            .with_label_values(&[RunStatus::Failed.as_str(), db::runs::EXHAUSTED_CODE.as_str(), &assistant])
            .inc();
    }
    ctx.metrics.reconciler_recoveries.with_label_values(&["failed"]).inc_by(failed.len() as u64);
    let storage = jobs::storage::<ChatRun>(ctx.redis.clone(), &ctx.queues);
    let stamp = chrono::Utc::now().timestamp_millis();
    let mut pushed = 0;
    for run_id in ids {
        // A fresh task id: apalis drops pushes whose id it still holds.
        match jobs::push(&storage, ChatRun { run_id }, format!("{run_id}-{stamp}")).await {
            Ok(()) => pushed += 1,
            Err(e) => tracing::warn!(run.id = %run_id, error = %e, "reconciler cannot push run"),
        }
    }
    ctx.metrics.reconciler_recoveries.with_label_values(&["requeued"]).inc_by(pushed as u64);
    Ok(pushed + failed.len())
}

/// Documents whose ingestion job was lost: queued for a minute, or `processing` well past the
/// extraction timeout. Those whose `CHATQ_INGEST_MAX_ATTEMPTS` attempts were all interrupted are
/// failed instead, so a file that kills its worker is not tried forever.
pub(crate) async fn recover_documents(ctx: &WorkerCtx) -> Result<usize, sqlx::Error> {
    let processing_after = ctx.config.knowledge.extract_timeout.as_secs_f64() + 600.0;
    let max_attempts = ctx.config.knowledge.ingest_max_attempts;
    let failed = db::knowledge::fail_exhausted_documents(&ctx.pool, max_attempts, processing_after, 500).await?;
    for id in &failed {
        tracing::warn!(document.id = %id, attempts = max_attempts, "document failed: its ingestion was interrupted too many times");
    }
    ctx.metrics.documents_ingested.with_label_values(&[DocumentStatus::Failed]).inc_by(failed.len() as u64);
    ctx.metrics.reconciler_recoveries.with_label_values(&["failed"]).inc_by(failed.len() as u64);
    let docs = db::knowledge::take_stale_documents(&ctx.pool, 60.0, processing_after, max_attempts, 500).await?;
    let storage = jobs::storage::<IngestDocument>(ctx.redis.clone(), &ctx.queues);
    let mut pushed = 0;
    for id in docs {
        match jobs::push(&storage, IngestDocument { document_id: id }, jobs::fresh_task_id(id)).await {
            Ok(()) => {
                pushed += 1;
                tracing::info!(document.id = %id, "reconciler pushed a stale document again");
            }
            Err(e) => tracing::warn!(document.id = %id, error = %e, "reconciler cannot push document"),
        }
    }
    Ok(pushed + failed.len())
}
