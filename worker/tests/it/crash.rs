//! A worker killed with `kill -9` mid-stream: another worker finishes the run with one answer.

use chatq_common::domain::{ModerationMode, RunStatus};
use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use chatq_common::{db, jobs, keys::Role};
use chatq_fake_openai::FakeConfig;
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::wait_for;

/// Environment for a worker process on this test's database, Redis prefix and fake server.
fn worker_env(pool: &PgPool, prefix: &str, fake_url: &str) -> Vec<(String, String)> {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL is set for tests");
    let db_name = pool.connect_options().get_database().expect("test database").to_string();
    let (server, _) = base.rsplit_once('/').expect("DATABASE_URL has a database");
    [
        ("DATABASE_URL", format!("{server}/{db_name}")),
        ("REDIS_URL", std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())),
        ("CHATQ_QUEUE_PREFIX", prefix.to_string()),
        ("OPENAI_BASE_URL", fake_url.to_string()),
        ("OPENAI_API_KEY", "sk-test".into()),
        ("CHATQ_WORKER_LISTEN", "127.0.0.1:0".into()),
        ("CHATQ_RUN_LEASE_SECS", "3".into()),
        ("CHATQ_RECONCILE_INTERVAL_SECS", "1".into()),
        ("CHATQ_RECONCILE_AFTER_SECS", "1".into()),
        ("CHATQ_EVENT_FLUSH_MS", "20".into()),
        ("CHATQ_CHAT_POLL_MS", "10".into()),
        ("CHATQ_DB_MAX_CONNECTIONS", "4".into()),
        ("RUST_LOG", "warn".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn spawn_worker(env: &[(String, String)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_chatq-worker"))
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("worker binary starts")
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_worker_killed_mid_stream_is_recovered_by_another_with_one_answer(pool: PgPool) {
    let (_, fake) = chatq_fake_openai::spawn(FakeConfig::default()).await.unwrap();
    let prefix = format!("t{}", Uuid::now_v7().simple());
    let env = worker_env(&pool, &prefix, &fake.base_url());

    // A thread with a run, stored and pushed as the API would.
    let (_, key) = db::keys::create(&pool, Role::Client, "c").await.unwrap();
    let fields = db::assistants::AssistantFields {
        name: "a".into(),
        instructions: String::new(),
        model: "gpt-4o-mini".into(),
        fallback_models: vec![],
        temperature: None,
        max_output_tokens: None,
        moderation: ModerationMode::Off,
        retention_days: None,
        metadata: serde_json::json!({}),
        knowledge_base_ids: vec![],
    };
    let assistant = db::assistants::create(&pool, &fields).await.unwrap();
    let thread =
        db::threads::create(&pool, key.id, Some("u"), Some(assistant.id), None, &serde_json::json!({})).await.unwrap();
    let run = db::runs::submit(
        &pool,
        &db::runs::NewRun {
            thread_id: thread.id,
            assistant_id: assistant.id,
            model: "gpt-4o-mini",
            fallback_models: &[],
            api_key_id: key.id,
            input: "a long story [[fake tokens=120 delay_ms=40]]",
            client_message_id: None,
            idempotency_key: None,
            idempotency_user: None,
        },
    )
    .await
    .unwrap();
    let redis =
        chatq_common::redis_conn::connect(&env.iter().find(|(k, _)| k == "REDIS_URL").unwrap().1).await.unwrap();
    let queues = jobs::Queues::new(&prefix);
    jobs::push(&jobs::storage(redis, &queues), jobs::ChatRun { run_id: run.id }, run.id.to_string()).await.unwrap();

    let mut first = spawn_worker(&env);
    // Kill it in the middle of the answer.
    wait_for(Duration::from_secs(20), || async {
        let r = db::runs::get(&pool, run.id).await.unwrap().unwrap();
        (r.status == RunStatus::InProgress && r.output_text.split_whitespace().count() >= 10).then_some(())
    })
    .await;
    first.kill().expect("kill -9");
    first.wait().unwrap();

    let mut second = spawn_worker(&env);
    // Recovery bound: lease (3 s) + reconciler interval (1 s), then the answer (~5 s).
    wait_for(Duration::from_secs(30), || async {
        (db::runs::get(&pool, run.id).await.unwrap().unwrap().status == RunStatus::Completed).then_some(())
    })
    .await;
    second.kill().ok();
    second.wait().ok();

    let done = db::runs::get(&pool, run.id).await.unwrap().unwrap();
    let outcomes: Vec<String> = sqlx::query_scalar("SELECT outcome FROM usage_records WHERE run_id = $1 ORDER BY at")
        .bind(run.id)
        .fetch_all(&pool)
        .await
        .unwrap();
    // Attempt 2 after the kill; a slow machine may add a legitimate retry (it shows in outcomes).
    assert!(done.attempt >= 2, "attempt {} (outcomes {outcomes:?})", done.attempt);
    assert_eq!(done.output_text.split_whitespace().count(), 120);
    let answers: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE run_id = $1 AND role = 'assistant'")
        .bind(run.id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(answers, 1, "exactly one answer");
    let events: Vec<(i64, String, serde_json::Value)> =
        sqlx::query_as("SELECT seq, kind, data FROM run_events WHERE run_id = $1 ORDER BY seq")
            .bind(run.id)
            .fetch_all(&pool)
            .await
            .unwrap();
    let seqs: Vec<i64> = events.iter().map(|e| e.0).collect();
    assert_eq!(seqs, (1..=events.len() as i64).collect::<Vec<_>>(), "gapless event log");
    let resets: Vec<_> = events.iter().filter(|e| e.1 == "run.reset").collect();
    assert!(
        resets.iter().any(|e| e.2["reason"] == "worker_lost"),
        "no run.reset(worker_lost) in {resets:?}; provider outcomes {outcomes:?}"
    );
    // After the last reset, the deltas add up to the final answer.
    let reset_seq = resets.last().unwrap().0;
    let after: String = events
        .iter()
        .filter(|e| e.0 > reset_seq && e.1 == "message.delta")
        .map(|e| e.2["text"].as_str().unwrap())
        .collect();
    assert_eq!(after, done.output_text);
    fake.shutdown();
}
