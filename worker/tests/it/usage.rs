//! Every provider call that opened a stream is a usage record, whatever ended it: a cancel, a
//! cut stream that is retried, a thread deleted mid-run. Without the provider's usage the
//! tokens are counted with the tokenizer and the record says it is estimated.

use std::time::Duration;

use chatq_common::db;
use chatq_common::domain::RunStatus;
use chatq_worker::jobs::chat_run;
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::{Setup, count, wait_for};

/// One usage record as the report reads it.
#[derive(Debug, sqlx::FromRow)]
pub struct Record {
    pub outcome: String,
    pub estimated: bool,
    pub input_tokens: i32,
    pub output_tokens: i32,
    pub cost_usd: Option<f64>,
}

/// The chat usage records of `run_id`, oldest first.
pub async fn records(pool: &PgPool, run_id: Uuid) -> Vec<Record> {
    sqlx::query_as(
        "SELECT outcome, estimated, input_tokens, output_tokens, cost_usd::float8 AS cost_usd
         FROM usage_records WHERE run_id = $1 AND kind = 'chat' ORDER BY at, id",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Waits until the worker has stored at least `words` words of the answer.
async fn wait_for_words(pool: &PgPool, run_id: Uuid, words: usize) {
    wait_for(Duration::from_secs(20), || async {
        let run = db::runs::get(pool, run_id).await.unwrap()?;
        (run.output_text.split_whitespace().count() >= words).then_some(())
    })
    .await
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_cancelled_run_is_billed_with_estimated_usage_and_counts_against_the_budget(pool: PgPool) {
    let s = Setup::new(pool.clone()).await;
    let id = s.submit("alice", "essay [[fake tokens=400 delay_ms=20]]").await;
    let ctx = s.ctx().await;
    let worker = tokio::spawn({
        let ctx = ctx.clone();
        async move { chat_run::execute(&ctx, id).await }
    });
    wait_for_words(&pool, id, 5).await;
    assert!(db::runs::request_cancel(&pool, id).await.unwrap());
    ctx.cancels.cancel(id);
    worker.await.unwrap().unwrap();

    let run = s.wait_run(id).await;
    assert_eq!(run.status, RunStatus::Cancelled);
    let records = records(&pool, id).await;
    assert_eq!(records.len(), 1, "one record for the cancelled call: {records:?}");
    let r = &records[0];
    assert_eq!(r.outcome, "cancelled");
    assert!(r.estimated, "the provider sent no usage, so the tokens are estimated");
    assert!(r.input_tokens > 0);
    assert!(r.output_tokens as usize >= run.output_text.split_whitespace().count() / 2, "{r:?}");
    assert!(r.cost_usd.is_some_and(|c| c > 0.0), "a priced model has a cost: {r:?}");

    // The budget and the report include it, and the report says it is estimated.
    assert!(db::keys::spend_this_month(&pool, s.key_id).await.unwrap() > 0.0);
    let now = chrono::Utc::now();
    let totals = db::usage::report(&pool, now - chrono::Duration::hours(1), now + chrono::Duration::hours(1), &[])
        .await
        .unwrap()
        .remove(0);
    assert_eq!(totals.requests, 1);
    assert_eq!(totals.failures, 0, "a cancel is not a failure");
    assert_eq!(totals.estimated_requests, 1);
    assert_eq!(totals.estimated_output_tokens, i64::from(r.output_tokens));
    assert!(totals.estimated_cost_usd > 0.0);
    s.shutdown();
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn an_attempt_cut_mid_stream_and_retried_leaves_a_record_for_each_call(pool: PgPool) {
    let s = Setup::new(pool.clone()).await;
    let ctx = s.ctx().await;
    s.fake.set_default_directive("cut_after=6");
    let id = s.submit("alice", "hi [[fake tokens=20]]").await;
    chat_run::execute(&ctx, id).await.unwrap();
    let run = db::runs::get(&pool, id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Queued, "the cut attempt is retried");

    s.fake.set_default_directive("");
    sqlx::query("UPDATE runs SET next_attempt_at = now() WHERE id = $1").bind(id).execute(&pool).await.unwrap();
    chat_run::execute(&ctx, id).await.unwrap();
    let run = s.wait_run(id).await;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.attempt, 2);

    let records = records(&pool, id).await;
    assert_eq!(records.len(), 2, "{records:?}");
    let (cut, done) = (&records[0], &records[1]);
    assert!(cut.estimated, "the cut stream sent no usage: {cut:?}");
    assert_ne!(cut.outcome, "ok");
    assert!(cut.input_tokens > 0 && cut.output_tokens >= 6, "the six words streamed are billed: {cut:?}");
    assert!(cut.cost_usd.is_some());
    assert!(!done.estimated, "the provider reported the usage of the second call");
    assert_eq!(done.outcome, "ok");
    assert_eq!(done.output_tokens, run.output_tokens.unwrap());
    s.shutdown();
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_run_whose_thread_is_deleted_mid_stream_is_still_billed(pool: PgPool) {
    let s = Setup::new(pool.clone()).await;
    let id = s.submit("alice", "essay [[fake tokens=60 delay_ms=20]]").await;
    let thread_id = db::runs::get(&pool, id).await.unwrap().unwrap().thread_id;
    let ctx = s.ctx().await;
    let worker = tokio::spawn({
        let ctx = ctx.clone();
        async move { chat_run::execute(&ctx, id).await }
    });
    wait_for_words(&pool, id, 3).await;
    let everyone = db::threads::Owner { api_key_id: None, end_user: None };
    assert!(db::threads::delete(&pool, thread_id, &everyone).await.unwrap());
    worker.await.unwrap().unwrap();

    assert!(db::runs::get(&pool, id).await.unwrap().is_none(), "the run went with its thread");
    assert_eq!(count(&pool, "SELECT count(*) FROM usage_records WHERE run_id = $1 AND kind = 'chat'", id).await, 1);
    let r = &records(&pool, id).await[0];
    assert!(r.input_tokens > 0 && r.output_tokens > 0, "{r:?}");
    s.shutdown();
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_run_whose_lease_is_lost_mid_stream_is_still_billed(pool: PgPool) {
    let s = Setup::with_env(pool.clone(), &[("CHATQ_RUN_LEASE_SECS", "3")]).await;
    let id = s.submit("alice", "essay [[fake tokens=400 delay_ms=20]]").await;
    let ctx = s.ctx().await;
    let worker = tokio::spawn({
        let ctx = ctx.clone();
        async move { chat_run::execute(&ctx, id).await }
    });
    wait_for_words(&pool, id, 3).await;
    // Another worker claims the run (its attempt fences this one out): the next renewal fails.
    sqlx::query("UPDATE runs SET attempt = attempt + 1, lease_owner = 'worker-b' WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    worker.await.unwrap().unwrap();

    let records = records(&pool, id).await;
    assert_eq!(records.len(), 1, "one record for the abandoned call: {records:?}");
    let r = &records[0];
    assert_eq!(r.outcome, "lease_lost");
    assert!(r.estimated, "the provider sent no usage, so the tokens are estimated");
    assert!(r.input_tokens > 0 && r.output_tokens >= 3, "{r:?}");
    assert!(db::keys::spend_this_month(&pool, s.key_id).await.unwrap() > 0.0, "the budget counts it");
    s.shutdown();
}
