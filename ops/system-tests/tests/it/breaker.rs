//! The provider circuit breaker: runs wait while it is open, fail past the maximum wait, and a
//! probe that never reached the provider frees its slot.

use std::time::Duration;

use chatq_worker::breaker::BreakerState as State;
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;

use chatq_system_tests::{Stack, wait_for};

const BREAKER: &[(&str, &str)] = &[
    ("CHATQ_BREAKER_FAILURES", "2"),
    ("CHATQ_BREAKER_COOLDOWN_SECS", "2"),
    ("CHATQ_RUN_MAX_ATTEMPTS", "1"),
    ("CHATQ_PROVIDER_MAX_WAIT_SECS", "60"),
];

/// Two failed runs in a row open the breaker.
async fn open_breaker(s: &Stack, assistant: &str) {
    s.fake.set_default_directive("fail=503");
    for user in ["f1", "f2"] {
        let thread = s.create_thread(assistant, user).await;
        let run = s.send(&thread, "hi").await;
        assert_eq!(s.wait_run(run["id"].as_str().unwrap()).await["status"], "failed");
    }
    s.fake.set_default_directive("");
}

async fn breaker_gauge(s: &Stack) -> String {
    let addr = s.worker.as_ref().unwrap().addr;
    let text = s.http.get(format!("http://{addr}/metrics")).send().await.unwrap().text().await.unwrap();
    let line = r#"chatq_provider_breaker_state{upstream="default"} "#;
    text.lines().find(|l| l.starts_with(line)).unwrap_or_default().replace(line, "")
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn an_open_breaker_holds_runs_until_the_provider_recovers(pool: PgPool) {
    let s = Stack::start_with(pool, true, BREAKER).await;
    let assistant = s.create_assistant(json!({})).await;
    open_breaker(&s, &assistant).await;
    let (_, ready) = s.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert_eq!(ready["provider"], "open");
    assert_eq!(ready["upstreams"], json!([{"name": "default", "breaker": "open"}]));
    assert_eq!(breaker_gauge(&s).await, "2");
    let calls_before = s.fake.chat_requests().len();

    let thread = s.create_thread(&assistant, "alice").await;
    let run = s.send(&thread, "hello [[fake tokens=3]]").await;
    let path = format!("/v1/runs/{}", run["id"].as_str().unwrap());
    let waiting: Value = wait_for(Duration::from_secs(5), || async {
        let (_, r) = s.client(Method::GET, &path, None).await;
        r["waiting_reason"].as_str().is_some_and(|w| w.contains("provider is unavailable")).then_some(r)
    })
    .await;
    assert_eq!(waiting["status"], "queued");
    assert_eq!(waiting["attempt"], 0, "waiting does not use up attempts");
    assert_eq!(s.fake.chat_requests().len(), calls_before, "no calls while open");

    // After the cool-down one probe goes through, succeeds and closes the breaker.
    let done = s.wait_run(run["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["attempt"], 1);
    let (_, ready) = s.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(breaker_gauge(&s).await, "0");
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn runs_waiting_past_the_max_wait_fail_with_provider_unavailable(pool: PgPool) {
    let config = [
        ("CHATQ_BREAKER_FAILURES", "2"),
        ("CHATQ_BREAKER_COOLDOWN_SECS", "60"),
        ("CHATQ_RUN_MAX_ATTEMPTS", "1"),
        ("CHATQ_PROVIDER_MAX_WAIT_SECS", "1"),
    ];
    let s = Stack::start_with(pool, true, &config).await;
    let assistant = s.create_assistant(json!({})).await;
    open_breaker(&s, &assistant).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let run = s.send(&thread, "hello").await;
    let done = s.wait_run(run["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["error"]["code"], "provider_unavailable");
    assert!(done["error"]["message"].as_str().unwrap().contains("unavailable"));
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_probe_that_ends_without_a_provider_call_frees_the_probe_slot(pool: PgPool) {
    let s = Stack::start_with(pool, true, BREAKER).await;
    let assistant = s.create_assistant(json!({})).await;
    open_breaker(&s, &assistant).await;
    // After the cool-down the breaker half-opens: the next run probes.
    let ctx = s.worker_ctx.clone().unwrap();
    let breaker = &ctx.upstreams.get(0).breaker;
    wait_for(Duration::from_secs(5), || async { (breaker.state() == State::HalfOpen).then_some(()) }).await;
    // The probe is refused by moderation before any chat call: no verdict on the provider.
    let strict = s.create_assistant(json!({"moderation": "input"})).await;
    let thread = s.create_thread(&strict, "alice").await;
    let flagged = s.send(&thread, "the forbidden-topic").await;
    assert_eq!(s.wait_run(flagged["id"].as_str().unwrap()).await["error"]["code"], "moderation_flagged");
    // The next run becomes the probe and closes the breaker.
    let thread = s.create_thread(&assistant, "bob").await;
    let run = s.send(&thread, "hello [[fake tokens=2]]").await;
    assert_eq!(s.wait_run(run["id"].as_str().unwrap()).await["status"], "completed");
    s.shutdown().await;
}
