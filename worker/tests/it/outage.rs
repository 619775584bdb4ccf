//! Postgres unreachable when a run finishes: the answer waits in memory, the run's lease is kept
//! in Redis so no other worker takes the run over, and the answer is committed once Postgres is
//! back, without a second provider call.

use std::time::Duration;

use chatq_common::{db, domain::RunStatus};
use chatq_worker::{WorkerCtx, jobs::chat_run, reconciler};
use sqlx::PgPool;
use tokio::time::Instant;

use crate::support::{PgProxy, Setup, count, wait_for};

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn an_answer_finished_during_a_postgres_outage_is_committed_once_when_postgres_returns(pool: PgPool) {
    let s = Setup::with_env(pool.clone(), &[("CHATQ_RUN_LEASE_SECS", "3")]).await;
    let proxy = PgProxy::start(&pool).await;
    let ctx = WorkerCtx::from_parts(s.config.clone(), proxy.pool(&pool).await, s.redis().await).unwrap();
    // The provider pauses before ending its stream: Postgres is cut off in that pause, after the
    // streamed text is stored, so the outage hits the finish itself.
    let id = s.submit("alice", "hi [[fake tokens=8 finish_ms=2000]]").await;
    let worker = tokio::spawn(async move { chat_run::execute(&ctx, id).await });
    wait_for(Duration::from_secs(20), || async {
        let run = db::runs::get(&pool, id).await.unwrap()?;
        (run.output_text.split_whitespace().count() == 8).then_some(())
    })
    .await;
    proxy.cut();
    let cut_at = Instant::now();

    // The run's lease in Postgres lapses during the outage. A worker that still reaches Postgres,
    // and its reconciler, leave the run to the worker holding the answer.
    wait_for(Duration::from_secs(10), || async {
        let run = db::runs::get(&pool, id).await.unwrap()?;
        run.lease_expires_at.is_some_and(|at| at < chrono::Utc::now()).then_some(())
    })
    .await;
    let other = s.ctx().await;
    chat_run::execute(&other, id).await.unwrap();
    reconciler::tick(&other).await.unwrap();
    let run = db::runs::get(&pool, id).await.unwrap().unwrap();
    assert_eq!((run.status, run.attempt), (RunStatus::InProgress, 1), "the run was taken over");

    // The outage lasts 60 s, the longest a finish is promised to survive (and longer than the
    // 13 s of retries, plus their waits for a connection, a finish used to make).
    tokio::time::sleep_until(cut_at + Duration::from_secs(60)).await;
    assert!(!worker.is_finished(), "the worker gave up on the answer during the outage");
    proxy.restore();
    tokio::time::timeout(Duration::from_secs(30), worker)
        .await
        .expect("finished once Postgres is back")
        .unwrap()
        .unwrap();

    let run = db::runs::get(&pool, id).await.unwrap().unwrap();
    assert_eq!((run.status, run.attempt), (RunStatus::Completed, 1));
    assert_eq!(run.output_text.split_whitespace().count(), 8);
    assert_eq!(s.fake.chat_requests().len(), 1, "the provider was asked once");
    let answers = count(&pool, "SELECT count(*) FROM messages WHERE run_id = $1 AND role = 'assistant'", id).await;
    assert_eq!(answers, 1);
    assert_eq!(count(&pool, "SELECT count(*) FROM usage_records WHERE run_id = $1", id).await, 1);
    s.shutdown();
}
