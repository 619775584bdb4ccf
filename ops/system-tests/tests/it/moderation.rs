//! Moderation: the question before generation (`input`), the answer before it is kept
//! (`output`), or both; flagged, clean, off, and the moderation endpoint down with fail-open or
//! fail-closed. A flagged answer is withdrawn: the run fails `moderation_flagged`, the thread
//! keeps the refusal, and no replay of the run shows the withdrawn text.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;

use chatq_system_tests::{Stack, sse::SseClient, wait_for};

/// What the fake's moderation flags; the `trigger_at=K` directive puts it in the answer.
const TRIGGER: &str = "forbidden-topic";
/// The text kept in place of a withdrawn answer (`worker/src/jobs/chat_run/moderation.rs`).
const REFUSAL: &str = "Sorry, I can't share that answer: it was withheld by content moderation.";

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

/// The run's whole log as a client replays it from the start: `(type, data)` of each event.
async fn replay_json(s: &Stack, run_id: &str) -> Vec<(String, Value)> {
    let (st, page) = s.client(Method::GET, &format!("/v1/runs/{run_id}/events?format=json"), None).await;
    assert_eq!(st, StatusCode::OK, "{page}");
    assert_eq!(page["done"], true, "{page}");
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["type"].as_str().unwrap().to_string(), e["data"].clone()))
        .collect()
}

/// The run's SSE stream replayed from the start, until its terminal event.
async fn replay_sse(s: &Stack, run_id: &str) -> Vec<(String, Value)> {
    let resp =
        s.http.get(format!("{}/v1/runs/{run_id}/events", s.api_url)).bearer_auth(&s.client_key).send().await.unwrap();
    let mut c = SseClient::open(resp).await;
    let mut out = Vec::new();
    while let Some(e) = c.next().await {
        out.push((e.event, e.data));
    }
    out
}

/// The text a client shows after replaying `events`: the deltas since the last `run.reset`.
fn shown(events: &[(String, Value)]) -> String {
    let mut text = String::new();
    for (kind, data) in events {
        match kind.as_str() {
            "run.reset" => text.clear(),
            "message.delta" | "run.snapshot" => text.push_str(data["text"].as_str().unwrap()),
            _ => {}
        }
    }
    text
}

async fn thread_messages(s: &Stack, thread: &str) -> Vec<(String, String)> {
    let (st, page) = s.client(Method::GET, &format!("/v1/threads/{thread}/messages"), None).await;
    assert_eq!(st, StatusCode::OK, "{page}");
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["role"].as_str().unwrap().to_string(), m["content"].as_str().unwrap().to_string()))
        .collect()
}

/// Asserts the run's answer was withdrawn: the log a client replays (JSON and SSE) holds no
/// withdrawn text, tells clients to clear what they showed, and shows `refusal` at the end.
async fn assert_withdrawn(s: &Stack, pool: &PgPool, run_id: &str, refusal: &str) {
    for events in [replay_json(s, run_id).await, replay_sse(s, run_id).await] {
        let all = serde_json::to_string(&events).unwrap();
        assert!(!all.contains(TRIGGER) && !all.contains("Echo:"), "withdrawn text in the replay: {all}");
        let reset = events.iter().position(|(k, d)| k == "run.reset" && d["reason"] == "moderation");
        assert!(reset.is_some(), "a run.reset with reason moderation: {all}");
        assert_eq!(shown(&events), refusal, "{all}");
        assert_eq!(events.last().unwrap().0, "run.failed", "{all}");
    }
    let stored: Vec<String> = sqlx::query_scalar("SELECT data::text FROM run_events WHERE run_id = $1::uuid")
        .bind(run_id)
        .fetch_all(pool)
        .await
        .unwrap();
    assert!(
        stored.iter().all(|d| !d.contains(TRIGGER) && !d.contains("Echo:")),
        "withdrawn text in run_events: {stored:?}"
    );
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_flagged_answer_is_withdrawn_and_replaced_by_the_refusal(pool: PgPool) {
    let s = Stack::start(pool.clone()).await;
    let assistant = s.create_assistant(json!({"moderation": "output"})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let run = s.send(&thread, "Tell me a story [[fake tokens=8 trigger_at=7]]").await;
    let id = run["id"].as_str().unwrap();
    let run = s.wait_run(id).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"]["code"], "moderation_flagged", "{run}");
    assert!(run["error"]["message"].as_str().unwrap().contains("withdrawn"), "{run}");
    assert_eq!(run["output_text"], REFUSAL, "{run}");
    assert_eq!(
        thread_messages(&s, &thread).await,
        [
            ("user".to_string(), "Tell me a story [[fake tokens=8 trigger_at=7]]".to_string()),
            ("assistant".into(), REFUSAL.into())
        ],
        "the thread keeps the refusal, never the flagged answer"
    );
    assert_withdrawn(&s, &pool, id, REFUSAL).await;
    assert_eq!(usage_outcomes(&pool, id, "moderation").await, ["flagged"], "only the answer is checked");
    assert_eq!(usage_outcomes(&pool, id, "chat").await, ["ok"], "the answer was generated and billed");
    assert_eq!(s.fake.stats().moderations, 1);
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_clean_answer_is_kept_and_input_mode_does_not_check_answers(pool: PgPool) {
    let s = Stack::start(pool.clone()).await;
    let run = ask(&s, "output", "what do lions eat? [[fake tokens=4]]").await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output_text"], "Echo: what do lions", "{run}");
    assert_eq!(usage_outcomes(&pool, run["id"].as_str().unwrap(), "moderation").await, ["ok"]);

    let run = ask(&s, "input", "Tell me a story [[fake tokens=8 trigger_at=7]]").await;
    assert_eq!(run["status"], "completed", "{run}");
    assert!(run["output_text"].as_str().unwrap().contains(TRIGGER), "{run}");
    assert_eq!(usage_outcomes(&pool, run["id"].as_str().unwrap(), "moderation").await, ["ok"], "the question only");
    assert_eq!(s.fake.stats().moderations, 2);
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn both_mode_checks_the_question_and_the_answer(pool: PgPool) {
    let s = Stack::start(pool.clone()).await;
    let run = ask(&s, "both", "Tell me a story [[fake tokens=8 trigger_at=7]]").await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"]["code"], "moderation_flagged", "{run}");
    assert_eq!(run["output_text"], REFUSAL, "{run}");
    let id = run["id"].as_str().unwrap();
    assert_eq!(usage_outcomes(&pool, id, "moderation").await, ["ok", "flagged"], "question, then answer");
    assert_withdrawn(&s, &pool, id, REFUSAL).await;

    let run = ask(&s, "both", "tell me about the forbidden-topic please").await;
    assert_eq!(run["error"]["code"], "moderation_flagged", "{run}");
    assert_eq!(usage_outcomes(&pool, run["id"].as_str().unwrap(), "moderation").await, ["flagged"]);
    assert_eq!(s.fake.chat_requests().len(), 1, "a flagged question is never answered");
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn output_moderation_down_keeps_the_answer_by_default(pool: PgPool) {
    let s = Stack::start(pool.clone()).await;
    s.fake.set_moderation_outage(Some(503));
    let run = ask(&s, "output", "Tell me a story [[fake tokens=8 trigger_at=7]]").await;
    assert_eq!(run["status"], "completed", "fail-open: {run}");
    assert!(run["output_text"].as_str().unwrap().contains(TRIGGER), "kept unchecked: {run}");
    assert_eq!(usage_outcomes(&pool, run["id"].as_str().unwrap(), "moderation").await, ["provider_unavailable"]);
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn output_moderation_down_withdraws_the_answer_when_fail_closed(pool: PgPool) {
    let config =
        [("CHATQ_MODERATION_FAIL_CLOSED", "true"), ("CHATQ_RUN_MAX_ATTEMPTS", "2"), ("CHATQ_RETRY_BASE_MS", "50")];
    let s = Stack::start_with(pool.clone(), true, &config).await;
    s.fake.set_moderation_outage(Some(503));
    let assistant = s.create_assistant(json!({"moderation": "output"})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let run = s.send(&thread, "hello [[fake tokens=5]]").await;
    let id = run["id"].as_str().unwrap();
    let run = s.wait_run(id).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"]["code"], "provider_unavailable", "{run}");
    assert_eq!(run["attempt"], 2, "an outage is retried before giving up: {run}");
    assert_eq!(run["output_text"], "", "{run}");
    assert_eq!(s.fake.chat_requests().len(), 2);
    assert_eq!(thread_messages(&s, &thread).await.len(), 1, "no answer kept unchecked");
    assert_withdrawn(&s, &pool, id, "").await;
    assert_eq!(usage_outcomes(&pool, id, "moderation").await, ["provider_unavailable", "provider_unavailable"]);
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn checking_while_streaming_stops_a_flagged_answer_early(pool: PgPool) {
    let config = [("CHATQ_MODERATION_OUTPUT_EVERY_CHARS", "40")];
    let s = Stack::start_with(pool.clone(), true, &config).await;
    let assistant = s.create_assistant(json!({"moderation": "output"})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let run = s.send(&thread, "Tell me a story [[fake tokens=300 delay_ms=5 trigger_at=12]]").await;
    let id = run["id"].as_str().unwrap();
    let run = s.wait_run(id).await;
    assert_eq!(run["error"]["code"], "moderation_flagged", "{run}");
    assert_eq!(run["output_text"], REFUSAL, "{run}");
    assert_withdrawn(&s, &pool, id, REFUSAL).await;
    let outcomes = usage_outcomes(&pool, id, "moderation").await;
    assert_eq!(outcomes.last().unwrap(), "flagged", "{outcomes:?}");
    assert!(outcomes.len() <= 3, "checked every 40 characters until flagged: {outcomes:?}");
    let (outcome, output_tokens): (String, i32) =
        sqlx::query_as("SELECT outcome, output_tokens FROM usage_records WHERE run_id = $1::uuid AND kind = 'chat'")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(outcome, "moderation_flagged");
    assert!(output_tokens < 100, "the stream was stopped long before its 300 words: {output_tokens}");
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_cancelled_answer_is_checked_before_it_is_kept(pool: PgPool) {
    let s = Stack::start(pool.clone()).await;
    let assistant = s.create_assistant(json!({"moderation": "output"})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let run = s.send(&thread, "Tell me a story [[fake tokens=300 delay_ms=20 trigger_at=3]]").await;
    let id = run["id"].as_str().unwrap().to_string();
    wait_for(Duration::from_secs(10), || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM run_events WHERE run_id = $1::uuid AND kind = 'message.delta'")
                .bind(&id)
                .fetch_one(&pool)
                .await
                .unwrap();
        let (_, run) = s.client(Method::GET, &format!("/v1/runs/{id}"), None).await;
        (n > 0 && run["output_text"].as_str().unwrap_or_default().contains(TRIGGER)).then_some(())
    })
    .await;
    let (st, _) = s.client(Method::POST, &format!("/v1/runs/{id}/cancel"), None).await;
    assert_eq!(st, StatusCode::OK);
    let run = s.wait_run(&id).await;
    assert_eq!(run["error"]["code"], "moderation_flagged", "the flagged partial answer is withdrawn: {run}");
    assert_eq!(run["output_text"], REFUSAL, "{run}");
    assert_eq!(thread_messages(&s, &thread).await[1], ("assistant".to_string(), REFUSAL.to_string()));
    assert_withdrawn(&s, &pool, &id, REFUSAL).await;
    s.shutdown().await;
}
