//! Provider fallback: two fake upstreams from a providers file, the first failing or down. A
//! run falls back to the assistant's next model on the other upstream, says so in its events,
//! and is recorded and priced as the model that answered.

use std::time::Duration;

use chatq_common::pricing::{Pricing, TokenUsage};
use chatq_fake_openai::{FakeConfig, FakeHandle};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;

use chatq_system_tests::{Stack, metric, wait_for};

/// A providers file: `primary` at `primary_url` serving `gpt-4o-mini`, `backup` (the second
/// fake) serving `gpt-4o`. Returns its path.
fn providers_file(primary_url: &str, backup_url: &str) -> String {
    let path = std::env::temp_dir().join(format!("chatq-providers-{}.toml", uuid::Uuid::now_v7().simple()));
    let text = format!(
        r#"[[providers]]
name = "primary"
base_url = "{primary_url}"
api_key_env = "CHATQ_TEST_PRIMARY_KEY"
models = ["gpt-4o-mini"]

[[providers]]
name = "backup"
base_url = "{backup_url}"
api_key_env = "CHATQ_TEST_BACKUP_KEY"
idle_timeout_secs = 30
models = ["gpt-4o"]
"#
    );
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// A stack whose chat goes to two upstreams: the stack's fake (`primary`, unless
/// `primary_down`, then a port nobody listens on) and a second fake (`backup`), returned too.
async fn two_upstreams(pool: PgPool, primary_down: bool, extra: &[(&str, &str)]) -> (Stack, FakeHandle, String) {
    let (_, primary) = chatq_fake_openai::spawn(FakeConfig::default()).await.expect("fake server starts");
    let (_, backup) = chatq_fake_openai::spawn(FakeConfig::default()).await.expect("fake server starts");
    let primary_url = if primary_down {
        // A port that was free a moment ago: connections are refused.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/v1", listener.local_addr().unwrap())
    } else {
        primary.base_url()
    };
    let file = providers_file(&primary_url, &backup.base_url());
    let mut overrides = vec![
        ("CHATQ_PROVIDERS_FILE", file.as_str()),
        ("CHATQ_TEST_PRIMARY_KEY", "sk-primary"),
        ("CHATQ_TEST_BACKUP_KEY", "sk-backup"),
        ("CHATQ_RUN_MAX_ATTEMPTS", "2"),
        ("CHATQ_RETRY_BASE_MS", "50"),
        ("CHATQ_RETRY_MAX_MS", "100"),
    ];
    overrides.extend_from_slice(extra);
    let s = Stack::start_on(pool, true, primary, &overrides).await;
    (s, backup, file)
}

/// `(kind, data)` of a run's stored events, in order.
async fn events(s: &Stack, run_id: &str) -> Vec<(String, Value)> {
    sqlx::query_as("SELECT kind, data FROM run_events WHERE run_id = $1::uuid ORDER BY seq")
        .bind(run_id)
        .fetch_all(&s.pool)
        .await
        .unwrap()
}

/// `(model, upstream, outcome, cost_usd)` of a run's usage records, oldest first.
async fn usage(s: &Stack, run_id: &str) -> Vec<(String, Option<String>, String, Option<f64>)> {
    sqlx::query_as(
        "SELECT model, upstream, outcome::text, cost_usd::float8 FROM usage_records
         WHERE run_id = $1::uuid ORDER BY at, id",
    )
    .bind(run_id)
    .fetch_all(&s.pool)
    .await
    .unwrap()
}

async fn assert_answered_by_the_fallback(s: &Stack, backup: &FakeHandle, run: &Value) {
    let id = run["id"].as_str().unwrap();
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["model"], "gpt-4o", "the run names the model that answered");
    assert_eq!(run["upstream"], "backup");
    assert!(run["output_text"].as_str().unwrap().starts_with("Echo: hello"), "{run}");
    let asked = backup.chat_requests();
    assert_eq!(asked.len(), 1, "one call to the backup");
    assert_eq!(asked[0]["model"], "gpt-4o");

    // The visitor saw a reset with reason `fallback`, then the answer of the next model.
    let events = events(s, id).await;
    let reset = events.iter().position(|(k, d)| k == "run.reset" && d["reason"] == "fallback");
    let reset = reset.unwrap_or_else(|| panic!("no run.reset fallback in {events:?}"));
    assert_eq!(events[reset].1["model"], "gpt-4o");
    assert_eq!(events[reset].1["upstream"], "backup");
    assert!(events[reset..].iter().any(|(k, _)| k == "message.delta"), "the answer follows the reset");

    // Usage: the failed calls on the primary, the answer on the backup at gpt-4o's price.
    let records = usage(s, id).await;
    let (model, upstream, outcome, cost) = records.last().unwrap().clone();
    assert_eq!((model.as_str(), upstream.as_deref(), outcome.as_str()), ("gpt-4o", Some("backup"), "ok"));
    assert!(
        records[..records.len() - 1].iter().all(|r| r.1.as_deref() == Some("primary") && r.2 != "ok"),
        "{records:?}"
    );
    let u = &run["usage"];
    let tokens = TokenUsage {
        input: u["input_tokens"].as_u64().unwrap(),
        cached_input: u["cached_input_tokens"].as_u64().unwrap(),
        output: u["output_tokens"].as_u64().unwrap(),
    };
    let pricing = Pricing::load(None).unwrap();
    let today = chrono::Utc::now().date_naive();
    let want = pricing.cost("gpt-4o", today, tokens).expect("gpt-4o is priced");
    assert_ne!(Some(want), pricing.cost("gpt-4o-mini", today, tokens), "the two prices differ");
    assert!((cost.unwrap() - want).abs() < 1e-9, "usage cost {cost:?} is not gpt-4o's {want}");
    assert!((run["cost_usd"].as_f64().unwrap() - want).abs() < 1e-9, "{run}");
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_failing_upstream_falls_back_to_the_next_model_on_the_other_upstream(pool: PgPool) {
    let (s, backup, file) = two_upstreams(pool, false, &[]).await;
    s.fake.set_default_directive("fail=500");
    let assistant = s.create_assistant(json!({"fallback_models": ["gpt-4o"]})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let run = s.send(&thread, "hello").await;
    let done = s.wait_run(run["id"].as_str().unwrap()).await;
    assert_eq!(s.fake.chat_requests().len(), 2, "CHATQ_RUN_MAX_ATTEMPTS calls to the primary first");
    assert_eq!(done["attempt"], 3);
    assert_answered_by_the_fallback(&s, &backup, &done).await;

    let w = s.http.get(format!("http://{}/metrics", s.worker.as_ref().unwrap().addr)).send().await.unwrap();
    let w = w.text().await.unwrap();
    let requests = |upstream: &str, outcome: &str| {
        metric(&w, "chatq_provider_requests_total", &[("upstream", upstream), ("outcome", outcome)])
    };
    assert_eq!(requests("primary", "provider_unavailable"), Some(2.0));
    assert_eq!(requests("backup", "ok"), Some(1.0));
    assert_eq!(metric(&w, "chatq_run_fallbacks_total", &[("from", "primary"), ("to", "backup")]), Some(1.0));
    assert!(metric(&w, "chatq_provider_request_duration_seconds_count", &[("upstream", "backup")]) == Some(1.0));
    backup.shutdown();
    s.shutdown().await;
    std::fs::remove_file(file).unwrap();
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn an_upstream_that_is_down_falls_back_to_the_next_one(pool: PgPool) {
    let (s, backup, file) = two_upstreams(pool, true, &[]).await;
    let assistant = s.create_assistant(json!({"fallback_models": ["gpt-4o"]})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let run = s.send(&thread, "hello").await;
    let done = s.wait_run(run["id"].as_str().unwrap()).await;
    assert_answered_by_the_fallback(&s, &backup, &done).await;
    let records = usage(&s, done["id"].as_str().unwrap()).await;
    assert_eq!(records.len(), 3, "two refused calls on the primary, the answer: {records:?}");
    backup.shutdown();
    s.shutdown().await;
    std::fs::remove_file(file).unwrap();
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn an_open_breaker_sends_new_runs_straight_to_the_next_upstream(pool: PgPool) {
    let breaker = [("CHATQ_BREAKER_FAILURES", "2"), ("CHATQ_BREAKER_COOLDOWN_SECS", "60")];
    let (s, backup, file) = two_upstreams(pool, false, &breaker).await;
    s.fake.set_default_directive("fail=503");
    let assistant = s.create_assistant(json!({"fallback_models": ["gpt-4o"]})).await;
    // Two failed calls open the primary's breaker; the run falls back and completes.
    let thread = s.create_thread(&assistant, "alice").await;
    let first = s.send(&thread, "hello").await;
    assert_eq!(s.wait_run(first["id"].as_str().unwrap()).await["upstream"], "backup");
    let (_, ready) = s.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert_eq!(
        ready["upstreams"],
        json!([{"name": "primary", "breaker": "open"}, {"name": "backup", "breaker": "closed"}]),
    );
    let w = s.http.get(format!("http://{}/metrics", s.worker.as_ref().unwrap().addr)).send().await.unwrap();
    let w = w.text().await.unwrap();
    assert_eq!(metric(&w, "chatq_provider_breaker_state", &[("upstream", "primary")]), Some(2.0));
    assert_eq!(metric(&w, "chatq_provider_breaker_state", &[("upstream", "backup")]), Some(0.0));

    // A new run does not ask the primary at all: its first attempt goes to the backup.
    let calls = s.fake.chat_requests().len();
    let thread = s.create_thread(&assistant, "bob").await;
    let run = s.send(&thread, "hello").await;
    let done = s.wait_run(run["id"].as_str().unwrap()).await;
    assert_eq!((done["status"].as_str(), done["attempt"].as_i64()), (Some("completed"), Some(1)), "{done}");
    assert_eq!((done["model"].as_str(), done["upstream"].as_str()), (Some("gpt-4o"), Some("backup")));
    assert_eq!(s.fake.chat_requests().len(), calls, "no call to the primary while its breaker is open");
    assert_eq!(backup.chat_requests().len(), 2);
    let records = usage(&s, done["id"].as_str().unwrap()).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].1.as_deref(), Some("backup"));
    backup.shutdown();
    s.shutdown().await;
    std::fs::remove_file(file).unwrap();
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn without_fallback_models_a_failing_upstream_fails_the_run_as_before(pool: PgPool) {
    let (s, backup, file) = two_upstreams(pool, false, &[]).await;
    s.fake.set_default_directive("fail=500");
    let assistant = s.create_assistant(json!({})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let run = s.send(&thread, "hello").await;
    let done = s.wait_run(run["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "provider_unavailable");
    assert_eq!((done["model"].as_str(), done["upstream"].as_str()), (Some("gpt-4o-mini"), Some("primary")));
    assert_eq!(done["attempt"], 2);
    assert!(backup.chat_requests().is_empty(), "the backup serves another model: never asked");
    let events = events(&s, done["id"].as_str().unwrap()).await;
    assert!(!events.iter().any(|(_, d)| d["reason"] == "fallback"), "{events:?}");
    backup.shutdown();
    s.shutdown().await;
    std::fs::remove_file(file).unwrap();
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn an_assistant_naming_a_model_no_provider_serves_is_refused(pool: PgPool) {
    let (s, backup, file) = two_upstreams(pool, false, &[]).await;
    let body = json!({"name": "Lion", "model": "gpt-4o-mini", "fallback_models": ["gpt-4o", "claude-3"]});
    let (status, e) = s.admin(Method::POST, "/v1/assistants", Some(body)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(e["error"]["code"], "model_not_served");
    assert_eq!(e["error"]["details"], json!({"field": "fallback_models[1]", "model": "claude-3"}));

    let assistant = s.create_assistant(json!({"fallback_models": ["gpt-4o"]})).await;
    let path = format!("/v1/assistants/{assistant}");
    let (_, a) = s.admin(Method::GET, &path, None).await;
    assert_eq!(a["fallback_models"], json!(["gpt-4o"]));
    let (status, e) = s.admin(Method::PATCH, &path, Some(json!({"model": "llama-3"}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(e["error"]["details"]["field"], "model");
    let (status, e) = s.admin(Method::PATCH, &path, Some(json!({"fallback_models": ["gpt-4o", "gpt-4o"]}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(e["error"]["code"], "invalid_request");
    let (status, a) = s.admin(Method::PATCH, &path, Some(json!({"fallback_models": []}))).await;
    assert_eq!(status, StatusCode::OK, "{a}");
    assert_eq!(a["fallback_models"], json!([]));
    backup.shutdown();
    s.shutdown().await;
    std::fs::remove_file(file).unwrap();
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn without_a_providers_file_any_model_is_accepted_and_runs_name_the_default_upstream(pool: PgPool) {
    let s = Stack::start(pool).await;
    let assistant = s.create_assistant(json!({"model": "any-model", "fallback_models": ["gpt-4o"]})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let run = s.send(&thread, "hello").await;
    let done = s.wait_run(run["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!((done["model"].as_str(), done["upstream"].as_str()), (Some("any-model"), Some("default")));
    let ready: Value = wait_for(Duration::from_secs(5), || async {
        let (_, r) = s.call(Method::GET, "/readyz", None, None).await;
        (r["status"] == "ready").then_some(r)
    })
    .await;
    assert_eq!(ready["upstreams"], json!([{"name": "default", "breaker": "closed"}]));
    s.shutdown().await;
}
