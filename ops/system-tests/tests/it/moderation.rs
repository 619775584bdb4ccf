//! Input moderation before generation: flagged, clean, off, and the provider down with
//! fail-open or fail-closed.

use serde_json::json;
use sqlx::PgPool;

use chatq_system_tests::Stack;

async fn usage_outcomes(pool: &PgPool, run_id: &str, kind: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT outcome FROM usage_records WHERE run_id = $1::uuid AND kind = $2 ORDER BY at")
        .bind(run_id)
        .bind(kind)
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn ask(s: &Stack, moderation: &str, input: &str) -> serde_json::Value {
    let assistant = s.create_assistant(json!({"moderation": moderation})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let run = s.send(&thread, input).await;
    s.wait_run(run["id"].as_str().unwrap()).await
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_flagged_message_is_refused_before_any_generation(pool: PgPool) {
    let s = Stack::start(pool.clone()).await;
    let run = ask(&s, "input", "tell me about the forbidden-topic please").await;
    assert_eq!(run["status"], "failed");
    assert_eq!(run["error"]["code"], "moderation_flagged");
    let message = run["error"]["message"].as_str().unwrap();
    assert!(message.contains("violence") && message.contains("harassment"), "{message}");
    assert!(s.fake.chat_requests().is_empty(), "the model was never asked");
    let id = run["id"].as_str().unwrap();
    assert_eq!(usage_outcomes(&pool, id, "moderation").await, ["flagged"]);
    let answers = chatq_system_tests::answers(&pool, id).await;
    assert_eq!(answers, 0);
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_clean_message_is_answered_and_moderation_off_skips_the_check(pool: PgPool) {
    let s = Stack::start(pool.clone()).await;
    let run = ask(&s, "input", "what do lions eat? [[fake tokens=3]]").await;
    assert_eq!(run["status"], "completed");
    assert_eq!(usage_outcomes(&pool, run["id"].as_str().unwrap(), "moderation").await, ["ok"]);
    assert_eq!(s.fake.stats().moderations, 1);
    let run = ask(&s, "off", "the forbidden-topic, unchecked [[fake tokens=3]]").await;
    assert_eq!(run["status"], "completed");
    assert_eq!(s.fake.stats().moderations, 1, "no check when moderation is off");
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn moderation_down_answers_unchecked_by_default(pool: PgPool) {
    let s = Stack::start(pool.clone()).await;
    s.fake.set_moderation_outage(Some(503));
    let run = ask(&s, "input", "hello [[fake tokens=3]]").await;
    assert_eq!(run["status"], "completed", "fail-open");
    assert_eq!(usage_outcomes(&pool, run["id"].as_str().unwrap(), "moderation").await, ["provider_unavailable"]);
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn moderation_down_refuses_to_answer_when_fail_closed(pool: PgPool) {
    let config =
        [("CHATQ_MODERATION_FAIL_CLOSED", "true"), ("CHATQ_RUN_MAX_ATTEMPTS", "2"), ("CHATQ_RETRY_BASE_MS", "50")];
    let s = Stack::start_with(pool.clone(), true, &config).await;
    s.fake.set_moderation_outage(Some(503));
    let run = ask(&s, "input", "hello [[fake tokens=3]]").await;
    assert_eq!(run["status"], "failed");
    assert_eq!(run["error"]["code"], "provider_unavailable");
    assert_eq!(run["attempt"], 2, "an outage is retried before giving up");
    assert!(s.fake.chat_requests().is_empty(), "never answered unchecked");
    s.shutdown().await;
}
