//! Rate limits shared through Redis by every API instance, per-key overrides, and quotas.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::{Connection, PgConnection, PgPool};
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
async fn threads_past_the_end_user_or_key_quota_are_a_429(pool: PgPool) {
    let quotas = [("CHATQ_QUOTA_THREADS_PER_USER", "2"), ("CHATQ_QUOTA_THREADS_PER_KEY", "3")];
    let s = Stack::start_with(pool, &quotas).await;
    let assistant = s.create_assistant(json!({})).await;
    let first = s.create_thread(&assistant, "alice").await;
    s.create_thread(&assistant, "alice").await;
    let new_thread = |user: &str| json!({"assistant_id": assistant, "user": user});

    let (status, body) = s.client(Method::POST, "/v1/threads", Some(new_thread("alice"))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "quota_exceeded");
    assert_eq!(body["error"]["details"]["limit"], 2, "{body}");

    // Another user of the key has room of their own, until the key's quota is used up.
    s.create_thread(&assistant, "bob").await;
    let (status, body) = s.client(Method::POST, "/v1/threads", Some(new_thread("carol"))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "quota_exceeded");
    assert_eq!(body["error"]["details"]["limit"], 3, "{body}");

    // The quota counts the threads that exist: deleting one makes room.
    let (status, _) = s.client(Method::DELETE, &format!("/v1/threads/{first}"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = s.client(Method::POST, "/v1/threads", Some(new_thread("alice"))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn thread_titles_and_metadata_past_their_configured_size_are_a_413(pool: PgPool) {
    let sizes = [("CHATQ_QUOTA_THREAD_TITLE_CHARS", "10"), ("CHATQ_QUOTA_THREAD_METADATA_BYTES", "50")];
    let s = Stack::start_with(pool.clone(), &sizes).await;
    for body in
        [json!({"user": "alice", "title": "é".repeat(11)}), json!({"user": "alice", "metadata": {"p": "a".repeat(60)}})]
    {
        let (status, answer) = s.client(Method::POST, "/v1/threads", Some(body.clone())).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body} -> {answer}");
        assert_eq!(answer["error"]["code"], "payload_too_large");
    }
    let (_, answer) = s.client(Method::POST, "/v1/threads", Some(json!({"title": "x".repeat(11)}))).await;
    assert_eq!(answer["error"]["details"], json!({"field": "title", "limit": 10}), "{answer}");
    let (_, answer) = s.client(Method::POST, "/v1/threads", Some(json!({"metadata": {"p": "a".repeat(60)}}))).await;
    assert_eq!(answer["error"]["details"], json!({"field": "metadata", "limit": 50}), "{answer}");
    let threads: i64 = sqlx::query_scalar("SELECT count(*) FROM threads").fetch_one(&pool).await.unwrap();
    assert_eq!(threads, 0);

    // At the limits exactly, the thread is created.
    let body = json!({"user": "alice", "title": "é".repeat(10), "metadata": {"p": "a".repeat(40)}});
    let (status, answer) = s.client(Method::POST, "/v1/threads", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    s.shutdown().await;
}

/// A request uploading `files` (name, content) to a knowledge base as one multipart body.
fn upload_request(s: &Stack, kb: &str, files: &[(&str, Vec<u8>)]) -> reqwest::RequestBuilder {
    let boundary = "chatq-test-boundary-7d1f";
    let mut body = Vec::new();
    for (name, content) in files {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n\
                 Content-Type: text/plain\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    s.http
        .post(format!("{}/v1/knowledge-bases/{kb}/documents", s.api_url))
        .bearer_auth(&s.admin_key)
        .header("content-type", format!("multipart/form-data; boundary={boundary}"))
        .body(body)
}

/// Uploads `files` (name, content) to a knowledge base as one multipart request.
async fn upload(s: &Stack, kb: &str, files: &[(&str, Vec<u8>)]) -> (StatusCode, serde_json::Value) {
    let resp = upload_request(s, kb, files).send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap())
}

/// Sends every request at once and returns the statuses, sorted.
async fn all_at_once(requests: Vec<reqwest::RequestBuilder>) -> Vec<StatusCode> {
    let mut set = tokio::task::JoinSet::new();
    for request in requests {
        set.spawn(request.send());
    }
    let mut statuses = Vec::new();
    while let Some(resp) = set.join_next().await {
        statuses.push(resp.unwrap().unwrap().status());
    }
    statuses.sort();
    statuses
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn uploads_past_a_knowledge_base_quota_are_a_429_and_store_nothing(pool: PgPool) {
    let quotas = [("CHATQ_QUOTA_KB_DOCUMENTS", "2"), ("CHATQ_QUOTA_KB_BYTES", "100")];
    let s = Stack::start_with(pool.clone(), &quotas).await;
    let (_, kb) = s.admin(Method::POST, "/v1/knowledge-bases", Some(json!({"name": "docs"}))).await;
    let kb = kb["id"].as_str().unwrap().to_string();
    let (status, body) = upload(&s, &kb, &[("a.txt", vec![b'a'; 40])]).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    // Two more documents would make three; 70 more bytes would make 110.
    let too_many = [("b.txt", vec![b'b'; 10]), ("c.txt", vec![b'c'; 10])];
    let too_big = [("d.txt", vec![b'd'; 70])];
    for (files, limit) in [(&too_many[..], 2), (&too_big[..], 100)] {
        let (status, body) = upload(&s, &kb, files).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert_eq!(body["error"]["code"], "quota_exceeded");
        assert_eq!(body["error"]["details"]["limit"], limit, "{body}");
    }
    let count = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool);
    let documents = count("SELECT count(*) FROM documents").await.unwrap();
    let blobs = count("SELECT count(*) FROM document_blobs").await.unwrap();
    let batches = count("SELECT count(*) FROM ingestion_batches").await.unwrap();
    assert_eq!((documents, blobs, batches), (1, 1, 1), "a refused upload stored something");

    // What fits still goes in.
    let (status, body) = upload(&s, &kb, &[("e.txt", vec![b'e'; 60])]).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (_, kb) = s.admin(Method::GET, &format!("/v1/knowledge-bases/{kb}"), None).await;
    assert_eq!(kb["document_count"], 2);
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn concurrent_thread_creations_cannot_overshoot_the_quota(pool: PgPool) {
    let s = Stack::start_with(pool.clone(), &[("CHATQ_QUOTA_THREADS_PER_USER", "3")]).await;
    let url = format!("{}/v1/threads", s.api_url);
    let requests =
        (0..12).map(|_| s.http.post(&url).bearer_auth(&s.client_key).json(&json!({"user": "alice"}))).collect();
    let statuses = all_at_once(requests).await;
    let created = statuses.iter().filter(|s| **s == StatusCode::CREATED).count();
    let refused = statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
    assert_eq!((created, refused), (3, 9), "{statuses:?}");
    let threads: i64 = sqlx::query_scalar("SELECT count(*) FROM threads").fetch_one(&pool).await.unwrap();
    assert_eq!(threads, 3);
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn concurrent_uploads_cannot_overshoot_a_knowledge_base_quota(pool: PgPool) {
    let s = Stack::start_with(pool.clone(), &[("CHATQ_QUOTA_KB_DOCUMENTS", "2")]).await;
    let (_, kb) = s.admin(Method::POST, "/v1/knowledge-bases", Some(json!({"name": "docs"}))).await;
    let kb = kb["id"].as_str().unwrap().to_string();

    // A gate: while this connection holds a SHARE lock on `documents`, every upload stops at its
    // insert; released at once, they all count the base at the same moment.
    let mut gate_conn = PgConnection::connect_with(&pool.connect_options()).await.unwrap();
    let mut gate = gate_conn.begin().await.unwrap();
    sqlx::query("LOCK TABLE documents IN SHARE MODE").execute(&mut *gate).await.unwrap();
    // As many uploads as the test pool has connections (5), each holding one at the gate.
    let uploads = 5;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..uploads {
        set.spawn(upload_request(&s, &kb, &[(&format!("{i}.txt"), vec![b'a' + i; 10])]).send());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'documents'::regclass
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_one(&mut *gate)
        .await
        .unwrap();
        if waiting == i64::from(uploads) {
            break;
        }
        assert!(Instant::now() < deadline, "only {waiting} uploads reached the gate");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gate.commit().await.unwrap();
    gate_conn.close().await.unwrap();

    let mut statuses = Vec::new();
    while let Some(resp) = set.join_next().await {
        statuses.push(resp.unwrap().unwrap().status());
    }
    statuses.sort();
    let accepted = statuses.iter().filter(|s| **s == StatusCode::ACCEPTED).count();
    let refused = statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
    assert_eq!((accepted, refused), (2, 3), "{statuses:?}");
    let documents: i64 = sqlx::query_scalar("SELECT count(*) FROM documents").fetch_one(&pool).await.unwrap();
    assert_eq!(documents, 2);
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
        upstream: None,
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
        upstream: None,
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
                fallback_models: &[],
                api_key_id: key_id,
                input: "hi",
                client_message_id: None,
                idempotency_key: None,
                idempotency_user: None,
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
