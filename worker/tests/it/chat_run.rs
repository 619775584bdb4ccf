//! The chat job's delivery guarantees: redelivery, concurrent deliveries and a zombie attempt
//! are fenced by the run's lease and attempt.

use chatq_common::db;
use chatq_common::domain::RunStatus;
use chatq_worker::jobs::chat_run;
use serde_json::json;
use sqlx::PgPool;

use crate::support::{Setup, count};

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_redelivered_job_for_a_completed_run_changes_nothing(pool: PgPool) {
    let s = Setup::new(pool.clone()).await;
    let id = s.submit("alice", "hi [[fake tokens=4]]").await;
    let ctx = s.ctx().await;
    chat_run::execute(&ctx, id).await.unwrap();
    let run = s.wait_run(id).await;
    assert_eq!(run.status, RunStatus::Completed);
    let events_before = count(&pool, "SELECT count(*) FROM run_events WHERE run_id = $1", id).await;
    let provider_calls = s.fake.chat_requests().len();

    chat_run::execute(&s.ctx().await, id).await.unwrap();

    assert_eq!(count(&pool, "SELECT count(*) FROM run_events WHERE run_id = $1", id).await, events_before);
    assert_eq!(count(&pool, "SELECT count(*) FROM messages WHERE run_id = $1 AND role = 'assistant'", id).await, 1);
    assert_eq!(s.fake.chat_requests().len(), provider_calls, "no second provider call");
    let after = db::runs::get(&pool, id).await.unwrap().unwrap();
    assert_eq!(after.attempt, run.attempt);
    assert_eq!(after.output_text, run.output_text);
    s.shutdown();
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn two_deliveries_at_once_produce_one_answer(pool: PgPool) {
    let s = Setup::new(pool.clone()).await;
    let id = s.submit("alice", "hi [[fake tokens=8 delay_ms=5]]").await;
    let (a, b) = (s.ctx().await, s.ctx().await);
    let (ra, rb) = tokio::join!(chat_run::execute(&a, id), chat_run::execute(&b, id));
    ra.unwrap();
    rb.unwrap();
    let stored = s.wait_run(id).await;
    assert_eq!(stored.status, RunStatus::Completed);
    assert_eq!(stored.attempt, 1, "only one delivery claimed the run");
    assert_eq!(count(&pool, "SELECT count(*) FROM messages WHERE run_id = $1 AND role = 'assistant'", id).await, 1);
    assert_eq!(count(&pool, "SELECT count(*) FROM usage_records WHERE run_id = $1", id).await, 1);
    assert_eq!(s.fake.chat_requests().len(), 1);
    s.shutdown();
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_zombie_attempt_cannot_write_after_losing_its_lease(pool: PgPool) {
    let s = Setup::new(pool.clone()).await;
    let id = s.submit("alice", "hi").await;

    let zombie = db::runs::claim(&pool, id, "worker-a", 30.0, true).await.unwrap().unwrap();
    assert_eq!(zombie.attempt, 1);
    assert!(db::runs::claim(&pool, id, "worker-b", 30.0, true).await.unwrap().is_none(), "a live lease is respected");
    // Worker A stalls past its lease; B takes over with attempt 2.
    sqlx::query("UPDATE runs SET lease_expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    let live = db::runs::claim(&pool, id, "worker-b", 30.0, true).await.unwrap().unwrap();
    assert_eq!(live.attempt, 2);

    // The zombie's event, progress, lease renewal and finish are all rejected.
    let event = chatq_common::events::RunEvent {
        run_id: id,
        seq: 2,
        attempt: 1,
        kind: chatq_common::events::EventKind::Delta,
        data: json!({"text": "zombie"}),
    };
    let mut tx = pool.begin().await.unwrap();
    assert_eq!(db::events::insert_batch_fenced(&mut tx, &[event]).await.unwrap(), 0);
    let progress =
        db::runs::Progress { run_id: id, attempt: 1, append: "zombie".into(), last_seq: 2, first_token_at: None };
    assert_eq!(db::runs::apply_progress(&mut tx, &[progress]).await.unwrap(), 0);
    tx.commit().await.unwrap();
    assert!(!db::runs::renew_lease(&pool, id, 1, 30.0).await.unwrap());
    let finish = |attempt: i32| db::runs::Finish {
        run_id: id,
        attempt,
        seq: 2,
        outcome: db::runs::Outcome::Completed {
            output_text: format!("answer of attempt {attempt}"),
            finish_reason: "stop".into(),
            input_tokens: 1,
            cached_input_tokens: 0,
            output_tokens: 1,
            cost_usd: None,
            citations: json!([]),
        },
        usage: None,
    };
    assert!(db::runs::finish(&pool, &finish(1)).await.unwrap().is_none());
    assert!(db::runs::finish(&pool, &finish(2)).await.unwrap().is_some());
    let stored = db::runs::get(&pool, id).await.unwrap().unwrap();
    assert_eq!(stored.output_text, "answer of attempt 2");
    assert_eq!(count(&pool, "SELECT count(*) FROM messages WHERE run_id = $1 AND role = 'assistant'", id).await, 1);
    s.shutdown();
}
