//! Lease renewal while an attempt works: renewed every third of `CHATQ_RUN_LEASE_SECS`; a
//! failed renewal means another worker owns the run, so the attempt stops.

use chatq_common::db;
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
