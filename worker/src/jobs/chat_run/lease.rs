//! Lease renewal while an attempt works: renewed every third of `CHATQ_RUN_LEASE_SECS`; a
//! failed renewal means another worker owns the run, so the attempt stops. The lease is kept in
//! Redis too, renewed on its own schedule, so that it outlives a Postgres outage: an answer
//! waiting for Postgres to return is not taken over when it does.

use chatq_common::{db, redis_formats::run_lease};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::WorkerCtx;

/// Renews the lease of `attempt` until aborted; cancels `lost` when the lease is gone, and
/// `cancel` when a cancel request is seen in Postgres (the fallback for a missed signal).
pub(super) async fn renew(
    ctx: WorkerCtx,
    run_id: Uuid,
    attempt: i32,
    lost: CancellationToken,
    cancel: CancellationToken,
) {
    tokio::select! {
        () = keep_in_redis(&ctx, run_id) => {}
        () = keep_in_postgres(&ctx, run_id, attempt, lost, cancel) => {}
    }
}

/// Holds the run's Redis lease, renewed every third of the lease, until aborted.
async fn keep_in_redis(ctx: &WorkerCtx, run_id: Uuid) {
    let lease = ctx.config.runs.lease;
    loop {
        if let Err(e) = run_lease::hold(&ctx.redis, ctx.queues.prefix(), run_id, lease).await {
            tracing::warn!(error = %e, "cannot renew the run's lease in Redis");
        }
        tokio::time::sleep(lease / 3).await;
    }
}

/// Renews the Postgres lease until it is lost (then returns) or the renewer is aborted.
async fn keep_in_postgres(
    ctx: &WorkerCtx,
    run_id: Uuid,
    attempt: i32,
    lost: CancellationToken,
    cancel: CancellationToken,
) {
    let every = ctx.config.runs.lease / 3;
    loop {
        tokio::time::sleep(every).await;
        // The fallback for a cancel signal this process missed.
        if let Ok(true) = db::runs::cancel_requested(&ctx.pool, run_id).await {
            cancel.cancel();
        }
        match db::runs::renew_lease(&ctx.pool, run_id, attempt, ctx.config.runs.lease.as_secs_f64()).await {
            Ok(true) => {}
            Ok(false) => {
                lost.cancel();
                return;
            }
            // Postgres unreachable: keep trying; the lease lasts three renewal periods.
            Err(e) => tracing::warn!(error = %e, "cannot renew lease"),
        }
    }
}
