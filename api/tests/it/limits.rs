//! Rate limits shared through Redis by every API instance, and per-key overrides.

use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::harness::Stack;

/// Starts a second API process-equivalent on the same database and Redis prefix.
async fn second_api(s: &Stack) -> String {
    let state = chatq_api::AppState::from_parts(s.config.clone(), s.pool.clone(), s.redis().await).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(chatq_api::serve(listener, state, std::future::pending()));
    url
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn the_per_user_rate_limit_is_shared_by_every_api_instance(pool: PgPool) {
    let limits = [("CHATQ_RATE_USER_RUNS_PER_MIN", "3"), ("CHATQ_RATE_USER_ACTIVE_RUNS", "0")];
    let s = Stack::start_with(pool, &limits).await;
    let other = second_api(&s).await;
    let assistant = s.create_assistant(json!({})).await;
    let mut urls = Vec::new();
    for (i, base) in [&s.api_url, &other, &s.api_url, &other].into_iter().enumerate() {
        let thread = s.create_thread(&assistant, "alice").await;
        urls.push((i, format!("{base}/v1/threads/{thread}/runs")));
    }
    for (i, url) in &urls {
        let resp = s.http.post(url).bearer_auth(&s.client_key).json(&json!({"input": "hi"})).send().await.unwrap();
        if *i < 3 {
            assert_eq!(resp.status(), StatusCode::ACCEPTED, "run {i}");
            continue;
        }
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        let h = resp.headers();
        let num = |name: &str| {
            h.get(name).unwrap_or_else(|| panic!("{name} header")).to_str().unwrap().parse::<u64>().unwrap()
        };
        assert_eq!(num("ratelimit-limit"), 3);
        assert_eq!(num("ratelimit-remaining"), 0);
        let reset = num("ratelimit-reset");
        assert!((1..=60).contains(&reset));
        assert_eq!(num("retry-after"), reset);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "rate_limited");
    }
    // Another user of the same key is not affected.
    let thread = s.create_thread(&assistant, "bob").await;
    let (status, _) = s.client(Method::POST, &format!("/v1/threads/{thread}/runs"), Some(json!({"input": "hi"}))).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn an_end_user_may_have_only_so_many_active_runs(pool: PgPool) {
    let s = Stack::start_with(pool, &[("CHATQ_RATE_USER_ACTIVE_RUNS", "2")]).await;
    let assistant = s.create_assistant(json!({})).await;
    for _ in 0..2 {
        let thread = s.create_thread(&assistant, "alice").await;
        s.send(&thread, "hi").await;
    }
    let thread = s.create_thread(&assistant, "alice").await;
    let (status, body) =
        s.client(Method::POST, &format!("/v1/threads/{thread}/runs"), Some(json!({"input": "hi"}))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_per_key_limit_overrides_the_global_one(pool: PgPool) {
    let s = Stack::start_with(pool.clone(), &[("CHATQ_RATE_USER_ACTIVE_RUNS", "0")]).await;
    let key_id: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM api_keys WHERE name = 'test-client'").fetch_one(&pool).await.unwrap();
    chatq_common::db::keys::set_limits(&pool, key_id, Some(1), None).await.unwrap();
    let assistant = s.create_assistant(json!({})).await;
    let t1 = s.create_thread(&assistant, "a").await;
    let t2 = s.create_thread(&assistant, "b").await;
    s.send(&t1, "hi").await;
    let (status, body) = s.client(Method::POST, &format!("/v1/threads/{t2}/runs"), Some(json!({"input": "hi"}))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["details"], serde_json::Value::Null, "details live inside error");
    assert_eq!(body["error"]["details"]["limit"], 1);
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn concurrent_submits_of_one_user_admit_exactly_the_allowed_active_runs(pool: PgPool) {
    let limits = [("CHATQ_RATE_USER_ACTIVE_RUNS", "1"), ("CHATQ_RATE_USER_RUNS_PER_MIN", "0")];
    let s = Stack::start_with(pool, &limits).await;
    let assistant = s.create_assistant(json!({})).await;
    let mut submits = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let thread = s.create_thread(&assistant, "alice").await;
        let req = s.http.post(format!("{}/v1/threads/{thread}/runs", s.api_url)).bearer_auth(&s.client_key);
        submits.spawn(req.json(&json!({"input": "hi"})).send());
    }
    let mut statuses = Vec::new();
    while let Some(resp) = submits.join_next().await {
        statuses.push(resp.unwrap().unwrap().status());
    }
    let admitted = statuses.iter().filter(|s| **s == StatusCode::ACCEPTED).count();
    let refused = statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
    assert_eq!((admitted, refused), (1, 15), "{statuses:?}");
    let active: i64 = sqlx::query_scalar("SELECT count(*) FROM runs WHERE status IN ('queued', 'in_progress')")
        .fetch_one(&s.pool)
        .await
        .unwrap();
    assert_eq!(active, 1);
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn concurrent_submits_against_a_budget_with_room_for_one_run_admit_exactly_one(pool: PgPool) {
    let limits = [("CHATQ_RATE_USER_ACTIVE_RUNS", "0"), ("CHATQ_RATE_USER_RUNS_PER_MIN", "0")];
    let s = Stack::start_with(pool.clone(), &limits).await;
    let key_id: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM api_keys WHERE name = 'test-client'").fetch_one(&pool).await.unwrap();
    // One earlier run cost $0.01 this month; the budget has room for one more such run.
    let usage = chatq_common::db::usage::NewUsage {
        id: chatq_common::new_id(),
        kind: chatq_common::domain::UsageKind::Chat,
        model: "gpt-4o-mini".into(),
        api_key_id: Some(key_id),
        assistant_id: None,
        run_id: Some(chatq_common::new_id()),
        document_id: None,
        input_tokens: 10,
        cached_input_tokens: 0,
        output_tokens: 10,
        cost_usd: Some(0.01),
        outcome: chatq_common::domain::UsageOutcome::Ok,
        latency_ms: 1,
        estimated: false,
    };
    chatq_common::db::usage::insert(&pool, &usage).await.unwrap();
    chatq_common::db::keys::set_limits(&pool, key_id, None, Some(0.015)).await.unwrap();
    let assistant = s.create_assistant(json!({})).await;
    let mut submits = tokio::task::JoinSet::new();
    for i in 0..16 {
        let thread = s.create_thread(&assistant, &format!("user-{i}")).await;
        let req = s.http.post(format!("{}/v1/threads/{thread}/runs", s.api_url)).bearer_auth(&s.client_key);
        submits.spawn(req.json(&json!({"input": "hi"})).send());
    }
    let mut admitted = 0;
    let mut codes = Vec::new();
    while let Some(resp) = submits.join_next().await {
        let resp = resp.unwrap().unwrap();
        if resp.status() == StatusCode::ACCEPTED {
            admitted += 1;
        } else {
            let body: serde_json::Value = resp.json().await.unwrap();
            codes.push(body["error"]["code"].as_str().unwrap_or_default().to_string());
        }
    }
    assert_eq!(admitted, 1, "{codes:?}");
    assert!(codes.iter().all(|c| c == "budget_exhausted"), "{codes:?}");
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn the_budget_is_checked_in_the_transaction_that_stores_the_run(pool: PgPool) {
    use chatq_common::db::runs::{Limits, NewRun, Refusal, submit_within};
    let s = Stack::start(pool.clone()).await;
    let key_id: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM api_keys WHERE name = 'test-client'").fetch_one(&pool).await.unwrap();
    let usage = chatq_common::db::usage::NewUsage {
        id: chatq_common::new_id(),
        kind: chatq_common::domain::UsageKind::Chat,
        model: "gpt-4o-mini".into(),
        api_key_id: Some(key_id),
        assistant_id: None,
        run_id: Some(chatq_common::new_id()),
        document_id: None,
        input_tokens: 10,
        cached_input_tokens: 0,
        output_tokens: 10,
        cost_usd: Some(0.01),
        outcome: chatq_common::domain::UsageOutcome::Ok,
        latency_ms: 1,
        estimated: false,
    };
    chatq_common::db::usage::insert(&pool, &usage).await.unwrap();
    let assistant = s.create_assistant(json!({})).await;
    let assistant_id: uuid::Uuid = assistant.parse().unwrap();
    // Sixteen submits at once, none of them checked beforehand: only the transaction decides.
    let mut submits = tokio::task::JoinSet::new();
    for i in 0..16 {
        let thread_id: uuid::Uuid = s.create_thread(&assistant, &format!("user-{i}")).await.parse().unwrap();
        let pool = pool.clone();
        submits.spawn(async move {
            let new = NewRun {
                thread_id,
                assistant_id,
                model: "gpt-4o-mini",
                api_key_id: key_id,
                input: "hi",
                client_message_id: None,
                idempotency_key: None,
            };
            let limits = Limits { active_per_user: None, monthly_budget_usd: Some(0.015) };
            submit_within(&pool, &new, limits).await.unwrap().map(|_| ())
        });
    }
    let outcomes = submits.join_all().await;
    let admitted = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(admitted, 1, "{outcomes:?}");
    assert!(outcomes.iter().all(|o| matches!(o, Ok(()) | Err(Refusal::BudgetExhausted))));
    s.shutdown().await;
}
