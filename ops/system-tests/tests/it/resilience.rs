//! Provider errors, retries, Redis losing its data and graceful shutdown, end to end.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;

use chatq_system_tests::{Stack, wait_for};

// These tests fail many calls in a row on purpose: keep the circuit breaker out of the way.
const FAST_RETRIES: &[(&str, &str)] =
    &[("CHATQ_RETRY_BASE_MS", "50"), ("CHATQ_RUN_MAX_ATTEMPTS", "3"), ("CHATQ_BREAKER_FAILURES", "1000")];

async fn event_kinds(pool: &PgPool, run_id: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT kind FROM run_events WHERE run_id = $1::uuid ORDER BY seq")
        .bind(run_id)
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn outcomes(pool: &PgPool, run_id: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT outcome FROM usage_records WHERE run_id = $1::uuid ORDER BY at, id")
        .bind(run_id)
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Sends `input` in a new thread and waits for the final run.
async fn run_to_end(s: &Stack, input: &str) -> Value {
    let assistant = s.create_assistant(json!({})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let run = s.send(&thread, input).await;
    s.wait_run(run["id"].as_str().unwrap()).await
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn rate_limits_are_retried_until_the_answer_arrives(pool: PgPool) {
    let s = Stack::start_with(pool.clone(), true, FAST_RETRIES).await;
    let run = run_to_end(&s, "hi [[fake fail=429x2 retry_after_ms=100 tokens=4]]").await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["attempt"], 3);
    assert_eq!(run["output_text"].as_str().unwrap().split_whitespace().count(), 4);
    let id = run["id"].as_str().unwrap();
    let kinds = event_kinds(&pool, id).await;
    assert_eq!(kinds.iter().filter(|k| *k == "run.reset").count(), 2, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| *k == "run.started").count(), 3);
    assert_eq!(kinds.last().unwrap(), "run.completed");
    assert_eq!(outcomes(&pool, id).await, ["provider_rate_limited", "provider_rate_limited", "ok"]);
    let answers = chatq_system_tests::answers(&pool, id).await;
    assert_eq!(answers, 1);
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn each_error_class_ends_with_its_code_after_the_documented_attempts(pool: PgPool) {
    let s = Stack::start_with(pool.clone(), true, FAST_RETRIES).await;
    // (directive, final status, error code, attempts)
    let cases = [
        ("fail=500x5", "failed", "provider_unavailable", 3),
        ("fail=503x1", "completed", "", 2),
        ("fail=400", "failed", "provider_rejected", 1),
        ("fail=401", "failed", "provider_rejected", 1),
        ("fail=insufficient_quota", "failed", "provider_rejected", 1),
        ("fail=502htmlx1", "completed", "", 2),
        ("cut_after=2", "failed", "provider_unavailable", 3),
        ("garbage_after=2", "failed", "provider_unavailable", 3),
        ("error_after=2", "failed", "provider_unavailable", 3),
    ];
    for (directive, status, code, attempts) in cases {
        let run = run_to_end(&s, &format!("case {directive} [[fake {directive} tokens=6]]")).await;
        assert_eq!(run["status"], status, "{directive}: {run}");
        assert_eq!(run["attempt"], attempts, "{directive}: {run}");
        if status == "failed" {
            assert_eq!(run["error"]["code"], code, "{directive}: {run}");
            assert!(!run["error"]["message"].as_str().unwrap().is_empty());
        }
        let resets = event_kinds(&pool, run["id"].as_str().unwrap()).await.iter().filter(|k| *k == "run.reset").count();
        assert_eq!(resets, attempts as usize - 1, "{directive}");
    }
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_waiting_run_shows_why_it_waits(pool: PgPool) {
    let s = Stack::start_with(pool, true, FAST_RETRIES).await;
    let assistant = s.create_assistant(json!({})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let run = s.send(&thread, "hi [[fake fail=429x1 retry_after_ms=2500 tokens=3]]").await;
    let path = format!("/v1/runs/{}", run["id"].as_str().unwrap());
    let waiting: Value = wait_for(Duration::from_secs(10), || async {
        let (_, r) = s.client(Method::GET, &path, None).await;
        (r["status"] == "queued" && r["attempt"] == 1).then_some(r)
    })
    .await;
    let reason = waiting["waiting_reason"].as_str().unwrap();
    assert!(reason.contains("provider_rate_limited") && reason.contains("attempt 2 of 3"), "{reason}");
    let done = s.wait_run(run["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed");
    assert!(done["waiting_reason"].is_null());
    // The provider's Retry-After (2.5 s) was honoured.
    let created = chrono::DateTime::parse_from_rfc3339(done["created_at"].as_str().unwrap()).unwrap();
    let completed = chrono::DateTime::parse_from_rfc3339(done["completed_at"].as_str().unwrap()).unwrap();
    assert!((completed - created).num_milliseconds() >= 2400, "retried too early");
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn runs_queued_when_redis_lost_its_data_all_complete(pool: PgPool) {
    let overrides = [("CHATQ_RECONCILE_INTERVAL_SECS", "1"), ("CHATQ_RECONCILE_AFTER_SECS", "1")];
    let mut s = Stack::start_with(pool.clone(), false, &overrides).await;
    let assistant = s.create_assistant(json!({})).await;
    let mut runs = Vec::new();
    for i in 0..5 {
        let thread = s.create_thread(&assistant, &format!("user-{i}")).await;
        runs.push(s.send(&thread, "hi [[fake tokens=3]]").await["id"].as_str().unwrap().to_string());
    }
    // Redis forgets everything of this stack (a restart without persistence).
    let mut redis = s.redis().await;
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{}*", s.config.redis.queue_prefix)).query_async(&mut redis).await.unwrap();
    assert!(!keys.is_empty(), "the runs were queued in Redis");
    let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut redis).await.unwrap();

    s.start_worker().await;
    for id in &runs {
        assert_eq!(s.wait_run(id).await["status"], "completed");
    }
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn shutdown_lets_short_runs_finish_and_releases_long_ones(pool: PgPool) {
    // A grace of 3 s leaves room for the short run on a loaded machine; the long one outlasts it.
    let overrides = [("CHATQ_SHUTDOWN_GRACE_SECS", "3")];
    let mut s = Stack::start_with(pool.clone(), true, &overrides).await;
    let assistant = s.create_assistant(json!({})).await;
    let long_thread = s.create_thread(&assistant, "alice").await;
    let short_thread = s.create_thread(&assistant, "bob").await;
    let long = s.send(&long_thread, "long [[fake tokens=200 delay_ms=30]]").await["id"].as_str().unwrap().to_string();
    let short = s.send(&short_thread, "short [[fake tokens=4 delay_ms=50]]").await["id"].as_str().unwrap().to_string();
    wait_for(Duration::from_secs(10), || async {
        let (_, r) = s.client(Method::GET, &format!("/v1/runs/{long}"), None).await;
        (r["status"] == "in_progress" && !r["output_text"].as_str().unwrap().is_empty()).then_some(())
    })
    .await;
    let started = std::time::Instant::now();
    s.stop_worker().await;
    assert!(started.elapsed() < Duration::from_secs(12), "shutdown took {:?}", started.elapsed());

    let (_, short_run) = s.client(Method::GET, &format!("/v1/runs/{short}"), None).await;
    assert_eq!(short_run["status"], "completed", "a run that fits in the grace period finishes");
    let (_, long_run) = s.client(Method::GET, &format!("/v1/runs/{long}"), None).await;
    assert_eq!(long_run["status"], "queued", "a long run is given back: {long_run}");
    assert!(long_run["waiting_reason"].as_str().unwrap().contains("restarted"));

    // Another worker takes it at once and answers it fully, once.
    s.start_worker().await;
    let done = s.wait_run(&long).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["attempt"], 2);
    assert_eq!(done["output_text"].as_str().unwrap().split_whitespace().count(), 200);
    s.shutdown().await;
}
