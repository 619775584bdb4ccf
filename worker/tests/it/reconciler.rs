//! The reconciler: runs Redis never received are pushed again; runs whose workers died are
//! requeued, or failed once they used up their attempts.

use chatq_common::db;
use chatq_common::domain::RunStatus;
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::support::Setup;

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn the_reconciler_enqueues_a_run_redis_never_received(pool: PgPool) {
    let s = Setup::new(pool.clone()).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let worker = chatq_worker::start_with(s.ctx().await, listener).unwrap();
    // Stored as the API would, but never pushed (Redis was down at submit time).
    let run = s.submit("alice", "lost [[fake tokens=3]]").await;
    sqlx::query("UPDATE runs SET enqueued_at = now() - interval '5 minutes' WHERE id = $1")
        .bind(run)
        .execute(&pool)
        .await
        .unwrap();
    let pushed = chatq_worker::reconciler::tick(&s.ctx().await).await.unwrap();
    assert_eq!(pushed, 1);
    let done = s.wait_run(run).await;
    assert_eq!(done.status, RunStatus::Completed);
    worker.shutdown().await.unwrap();
    s.shutdown();
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn the_reaper_fails_a_run_whose_workers_died_too_often_and_requeues_the_others(pool: PgPool) {
    let s = Setup::new(pool.clone()).await;
    let doomed = s.submit("x", "one").await;
    let retry = s.submit("y", "two").await;
    // Both were claimed by workers that died; the first one for the third time.
    for (id, attempt) in [(doomed, 3), (retry, 1)] {
        sqlx::query(
            "UPDATE runs SET status = 'in_progress', attempt = $2, lease_owner = 'dead',
                    lease_expires_at = now() - interval '1 second', enqueued_at = now() - interval '1 minute'
             WHERE id = $1",
        )
        .bind(id)
        .bind(attempt)
        .execute(&pool)
        .await
        .unwrap();
    }
    let ctx = s.ctx().await;
    assert_eq!(chatq_worker::reconciler::tick(&ctx).await.unwrap(), 2);
    let run = db::runs::get(&pool, doomed).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Failed, "{run:?}");
    assert_eq!(run.error_code, Some(db::runs::EXHAUSTED_CODE));
    let last: String = sqlx::query_scalar("SELECT kind FROM run_events WHERE run_id = $1 ORDER BY seq DESC LIMIT 1")
        .bind(doomed)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(last, "run.failed");
    let run = db::runs::get(&pool, retry).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::InProgress, "pushed again, for the next worker to claim");
    let recoveries = |action: &str| ctx.metrics.reconciler_recoveries.with_label_values(&[action]).get();
    assert_eq!(recoveries("failed"), 1);
    assert_eq!(recoveries("requeued"), 1);
    s.shutdown();
}
