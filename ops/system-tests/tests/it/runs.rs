//! Chat runs end to end: answers, history, polling, idempotent submits, busy threads.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;

use chatq_system_tests::{Stack, wait_for};

/// What the fake answers to `input` with `tokens` words: an echo, then filler.
fn expected_reply_prefix(input: &str) -> String {
    format!("Echo: {input}")
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_run_completes_with_the_fake_answer_usage_and_cost(pool: PgPool) {
    let s = Stack::start(pool.clone()).await;
    let assistant = s.create_assistant(json!({})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let run = s.send(&thread, "Hello lion [[fake tokens=12]]").await;
    assert_eq!(run["status"], "queued");
    assert_eq!(run["object"], "run");
    let run = s.wait_run(run["id"].as_str().unwrap()).await;
    assert_eq!(run["status"], "completed", "{run}");
    let text = run["output_text"].as_str().unwrap();
    assert!(text.starts_with(&expected_reply_prefix("Hello lion")), "{text}");
    assert_eq!(text.split_whitespace().count(), 12, "{text}");
    assert_eq!(run["finish_reason"], "stop");
    assert_eq!(run["usage"]["output_tokens"], 12);
    assert!(run["usage"]["input_tokens"].as_i64().unwrap() > 10);
    // gpt-4o-mini is priced: (input * 0.15 + output * 0.60) / 1M.
    let input = run["usage"]["input_tokens"].as_f64().unwrap();
    let expected_cost = (input * 0.15 + 12.0 * 0.60) / 1e6;
    assert!((run["cost_usd"].as_f64().unwrap() - expected_cost).abs() < 1e-12, "{run}");
    assert!(run["started_at"].is_string() && run["first_token_at"].is_string() && run["completed_at"].is_string());
    assert!(run["last_seq"].as_i64().unwrap() >= 4, "queued, started, >=1 delta, completed");

    // Exactly one assistant message, equal to the output; one usage record with the same cost.
    let (_, msgs) = s.client(Method::GET, &format!("/v1/threads/{thread}/messages"), None).await;
    let msgs = msgs["data"].as_array().unwrap().clone();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0]["role"], "user");
    assert_eq!(msgs[1]["role"], "assistant");
    assert_eq!(msgs[1]["content"], text);
    let (records, cost): (i64, Option<f64>) = sqlx::query_as(
        "SELECT count(*), sum(cost_usd)::float8 FROM usage_records WHERE run_id = $1::uuid AND kind = 'chat'",
    )
    .bind(run["id"].as_str().unwrap())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(records, 1);
    assert!((cost.unwrap() - expected_cost).abs() < 1e-12);

    // The event log is gapless and ends with the terminal event.
    let kinds: Vec<(i64, String)> =
        sqlx::query_as("SELECT seq, kind FROM run_events WHERE run_id = $1::uuid ORDER BY seq")
            .bind(run["id"].as_str().unwrap())
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(kinds.iter().map(|k| k.0).collect::<Vec<_>>(), (1..=kinds.len() as i64).collect::<Vec<_>>());
    assert_eq!(kinds.first().unwrap().1, "run.queued");
    assert_eq!(kinds[1].1, "run.started");
    assert_eq!(kinds.last().unwrap().1, "run.completed");
    let deltas: String = sqlx::query_scalar(
        "SELECT string_agg(data->>'text', '' ORDER BY seq) FROM run_events WHERE run_id = $1::uuid AND kind = 'message.delta'",
    )
    .bind(run["id"].as_str().unwrap())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(deltas, text, "the deltas add up to the answer");
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn the_second_message_is_answered_with_the_conversation_so_far(pool: PgPool) {
    let s = Stack::start(pool).await;
    let assistant = s.create_assistant(json!({})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let first = s.send(&thread, "My name is Ada [[fake tokens=6]]").await;
    let first = s.wait_run(first["id"].as_str().unwrap()).await;
    assert_eq!(first["status"], "completed");
    let second = s.send(&thread, "What is my name? [[fake tokens=40 echo=prompt]]").await;
    let second = s.wait_run(second["id"].as_str().unwrap()).await;
    assert_eq!(second["status"], "completed", "{second}");

    // The request the provider received: instructions, the first exchange, the new message.
    let requests = s.fake.chat_requests();
    let last = requests.last().unwrap();
    let messages: Vec<(String, String)> = last["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["role"].as_str().unwrap().to_string(), m["content"].as_str().unwrap_or_default().to_string()))
        .collect();
    assert_eq!(messages.len(), 4, "{messages:?}");
    assert_eq!(messages[0], ("system".into(), "You are the zoo's lion.".into()));
    assert_eq!(messages[1].0, "user");
    assert!(messages[1].1.contains("My name is Ada"));
    assert_eq!(messages[2], ("assistant".into(), first["output_text"].as_str().unwrap().to_string()));
    assert!(messages[3].1.contains("What is my name?"));
    // The answer shows the history too (echo=prompt), and a longer history costs more input.
    assert!(second["output_text"].as_str().unwrap().contains("Ada"));
    assert!(second["usage"]["input_tokens"].as_i64() > first["usage"]["input_tokens"].as_i64());
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn polling_shows_the_answer_growing_until_completed(pool: PgPool) {
    let s = Stack::start(pool).await;
    let assistant = s.create_assistant(json!({})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let run = s.send(&thread, "Tell me a story [[fake tokens=30 delay_ms=60]]").await;
    let path = format!("/v1/runs/{}", run["id"].as_str().unwrap());
    let partial: Value = wait_for(Duration::from_secs(10), || async {
        let (_, r) = s.client(Method::GET, &path, None).await;
        (r["status"] == "in_progress" && !r["output_text"].as_str().unwrap().is_empty()).then_some(r)
    })
    .await;
    let done = s.wait_run(run["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed");
    let partial_text = partial["output_text"].as_str().unwrap();
    let full = done["output_text"].as_str().unwrap();
    assert!(partial_text.len() < full.len(), "a poll saw part of the answer");
    assert!(full.starts_with(partial_text), "the partial text is a prefix of the answer");
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn repeated_submits_return_the_same_run(pool: PgPool) {
    let s = Stack::without_worker(pool.clone()).await;
    let assistant = s.create_assistant(json!({})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let url = format!("{}/v1/threads/{thread}/runs", s.api_url);

    let send = |key: &'static str| {
        s.http.post(&url).bearer_auth(&s.client_key).header("Idempotency-Key", key).json(&json!({"input": "hi"})).send()
    };
    let first = send("k-1").await.unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.unwrap();
    let again = send("k-1").await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    let again: Value = again.json().await.unwrap();
    assert_eq!(first["id"], again["id"]);

    // client_message_id works the same way (after the first run is done).
    sqlx::query("UPDATE runs SET status = 'completed' WHERE thread_id = $1::uuid")
        .bind(&thread)
        .execute(&pool)
        .await
        .unwrap();
    let body = json!({"input": "second", "client_message_id": "m-2"});
    let (s1, r1) = s.client(Method::POST, &format!("/v1/threads/{thread}/runs"), Some(body.clone())).await;
    let (s2, r2) = s.client(Method::POST, &format!("/v1/threads/{thread}/runs"), Some(body)).await;
    assert_eq!((s1, s2), (StatusCode::ACCEPTED, StatusCode::OK));
    assert_eq!(r1["id"], r2["id"]);
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE thread_id = $1::uuid AND role = 'user'")
        .bind(&thread)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(users, 2, "one user message per distinct submit");
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_busy_thread_answers_409_with_the_active_run(pool: PgPool) {
    let s = Stack::without_worker(pool).await;
    let assistant = s.create_assistant(json!({})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let run = s.send(&thread, "first").await;
    let (status, body) =
        s.client(Method::POST, &format!("/v1/threads/{thread}/runs"), Some(json!({"input": "second"}))).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "thread_busy");
    assert_eq!(body["error"]["details"]["active_run_id"], run["id"]);
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn history_survives_a_restart_of_every_process(pool: PgPool) {
    let mut s = Stack::start(pool).await;
    let assistant = s.create_assistant(json!({})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let run = s.send(&thread, "one [[fake tokens=3]]").await;
    s.wait_run(run["id"].as_str().unwrap()).await;

    s.stop_worker().await;
    s.stop_api().await;
    s.start_api().await;
    s.start_worker().await;

    let run = s.send(&thread, "two [[fake tokens=3]]").await;
    let run = s.wait_run(run["id"].as_str().unwrap()).await;
    assert_eq!(run["status"], "completed");
    let (_, msgs) = s.client(Method::GET, &format!("/v1/threads/{thread}/messages?limit=2"), None).await;
    let mut all: Vec<Value> = msgs["data"].as_array().unwrap().clone();
    let (_, rest) = s
        .client(
            Method::GET,
            &format!("/v1/threads/{thread}/messages?after={}", msgs["next_after"].as_str().unwrap()),
            None,
        )
        .await;
    all.extend(rest["data"].as_array().unwrap().iter().cloned());
    assert!(rest["next_after"].is_null());
    let roles: Vec<&str> = all.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant", "user", "assistant"]);
    assert!(all[2]["content"].as_str().unwrap().starts_with("two"));
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_rejected_request_fails_the_run_with_provider_rejected(pool: PgPool) {
    let s = Stack::start(pool.clone()).await;
    let assistant = s.create_assistant(json!({})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let run = s.send(&thread, "hi [[fake fail=400]]").await;
    let run = s.wait_run(run["id"].as_str().unwrap()).await;
    assert_eq!(run["status"], "failed");
    assert_eq!(run["error"]["code"], "provider_rejected");
    assert!(!run["error"]["message"].as_str().unwrap().is_empty());
    let answers = chatq_system_tests::answers(&pool, run["id"].as_str().unwrap()).await;
    assert_eq!(answers, 0, "a failed run leaves no answer");
    // The thread is free again.
    let next = s.send(&thread, "again [[fake tokens=2]]").await;
    assert_eq!(s.wait_run(next["id"].as_str().unwrap()).await["status"], "completed");
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_cut_stream_is_a_failure_not_a_short_answer(pool: PgPool) {
    let s = Stack::start(pool).await;
    let assistant = s.create_assistant(json!({})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let run = s.send(&thread, "hi [[fake tokens=20 cut_after=3]]").await;
    let run = s.wait_run(run["id"].as_str().unwrap()).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"]["code"], "provider_unavailable");
    assert!(run["usage"].is_null());
    let (_, msgs) = s.client(Method::GET, &format!("/v1/threads/{thread}/messages"), None).await;
    assert_eq!(msgs["data"].as_array().unwrap().len(), 1, "no assistant message for a truncated answer");
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_prompt_over_the_context_window_fails_with_context_too_long(pool: PgPool) {
    let s = Stack::start(pool).await;
    let assistant = s.create_assistant(json!({})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let run = s.send(&thread, "hi [[fake fail=context_length]]").await;
    let run = s.wait_run(run["id"].as_str().unwrap()).await;
    assert_eq!(run["status"], "failed");
    assert_eq!(run["error"]["code"], "context_too_long");
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn an_idle_worker_starts_a_new_run_promptly(pool: PgPool) {
    let s = Stack::start_with(pool, true, &[("CHATQ_CHAT_POLL_MS", "20"), ("CHATQ_CHAT_CONCURRENCY", "256")]).await;
    let assistant = s.create_assistant(json!({})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    // Let the worker go idle: it has answered a first run and acknowledged it, and the queue is
    // empty, so only its poll timer can wake it.
    let first = s.send(&thread, "hi [[fake tokens=1]]").await;
    assert_eq!(s.wait_run(first["id"].as_str().unwrap()).await["status"], "completed");
    wait_for(Duration::from_secs(10), || async { s.queue_idle("chat-runs").await.then_some(()) }).await;
    let run = s.send(&thread, "hi [[fake tokens=2]]").await;
    let run = s.wait_run(run["id"].as_str().unwrap()).await;
    let created = chrono::DateTime::parse_from_rfc3339(run["created_at"].as_str().unwrap()).unwrap();
    let started = chrono::DateTime::parse_from_rfc3339(run["started_at"].as_str().unwrap()).unwrap();
    let wait = (started - created).num_milliseconds();
    // Heartbeats are 5 s apart: a worker that only wakes on them would take seconds.
    assert!(wait < 1000, "run waited {wait} ms in the queue");
    s.shutdown().await;
}
