//! User tokens: what they reveal, how long they live, secret rotation, revocation, and what
//! an end user can reach with one.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chatq_api::user_token::{Grant, TokenKeys};
use chatq_common::{db, keys};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::harness::Stack;

const SECRET: &str = "test-secret-test-secret-test-secret-0123";

async fn client_key_id(s: &Stack) -> Uuid {
    db::keys::find_active_by_hash(&s.pool, &keys::hash(&s.client_key)).await.unwrap().unwrap().id
}

/// A token from `POST /v1/user-tokens` with the test client key.
async fn user_token(s: &Stack, body: Value) -> String {
    let (status, t) = s.client(Method::POST, "/v1/user-tokens", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{t}");
    t["token"].as_str().unwrap().to_string()
}

fn grant(key_id: Uuid, user: &str, ttl: i64) -> Grant {
    let now = chrono::Utc::now();
    Grant {
        key_id,
        user: user.into(),
        issued_at_ms: now.timestamp_millis(),
        expires_at: now.timestamp() + ttl,
        assistants: Vec::new(),
    }
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_token_claiming_a_lifetime_beyond_the_maximum_is_refused(pool: PgPool) {
    let s = Stack::start(pool).await;
    let keys = TokenKeys::new(SECRET, None);
    let key_id = client_key_id(&s).await;
    let ok = keys.seal(&grant(key_id, "alice", 3600));
    assert_eq!(s.call(Method::GET, "/v1/threads", Some(&ok), None).await.0, StatusCode::OK);
    let forever = keys.seal(&grant(key_id, "alice", 10 * 365 * 24 * 3600));
    let (status, body) = s.call(Method::GET, "/v1/threads", Some(&forever), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_user_token_shows_neither_its_key_id_nor_its_user_in_clear(pool: PgPool) {
    let s = Stack::start(pool).await;
    let key_id = client_key_id(&s).await;
    let token = user_token(&s, json!({"user": "alice-in-clear"})).await;
    assert!(token.starts_with("cqu_"), "{token}");
    let mut seen = token.clone();
    for part in token["cqu_".len()..].split('.') {
        if let Ok(bytes) = URL_SAFE_NO_PAD.decode(part) {
            seen.push_str(&String::from_utf8_lossy(&bytes));
            seen.push_str(&hex::encode(&bytes));
        }
    }
    for secret in [key_id.to_string(), key_id.simple().to_string(), "alice-in-clear".to_string()] {
        assert!(!seen.contains(&secret), "the token reveals {secret}");
    }
    assert_eq!(s.call(Method::GET, "/v1/threads", Some(&token), None).await.0, StatusCode::OK);
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn tokens_of_the_previous_secret_still_work_and_tokens_of_an_unknown_one_do_not(pool: PgPool) {
    let previous = "previous-secret-previous-secret-0123456";
    let s = Stack::start_with(pool, &[("CHATQ_TOKEN_SECRET_PREVIOUS", previous)]).await;
    let key_id = client_key_id(&s).await;
    let old = TokenKeys::new(previous, None).seal(&grant(key_id, "alice", 600));
    let (status, body) = s.call(Method::GET, "/v1/threads", Some(&old), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let unknown = TokenKeys::new("unknown-secret-unknown-secret-0123456", None).seal(&grant(key_id, "alice", 600));
    assert_eq!(s.call(Method::GET, "/v1/threads", Some(&unknown), None).await.0, StatusCode::UNAUTHORIZED);
    // New tokens are sealed with the current secret: a stack without the previous one accepts them.
    let fresh = user_token(&s, json!({"user": "alice"})).await;
    assert!(TokenKeys::new(SECRET, None).open(&fresh, chrono::Utc::now().timestamp()).is_some());
    assert!(TokenKeys::new(previous, None).open(&fresh, chrono::Utc::now().timestamp()).is_none());
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn revoking_a_user_refuses_their_earlier_tokens_only(pool: PgPool) {
    let s = Stack::start(pool).await;
    let alice = user_token(&s, json!({"user": "alice"})).await;
    let bob = user_token(&s, json!({"user": "bob"})).await;
    let (status, body) =
        s.call(Method::POST, "/v1/user-tokens/revoke", Some(&alice), Some(json!({"user": "alice"}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a token cannot revoke: {body}");
    let (status, body) = s.client(Method::POST, "/v1/user-tokens/revoke", Some(json!({"user": "alice"}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user"], "alice");
    let (status, body) = s.call(Method::GET, "/v1/threads", Some(&alice), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(s.call(Method::GET, "/v1/threads", Some(&bob), None).await.0, StatusCode::OK);
    let again = user_token(&s, json!({"user": "alice"})).await;
    assert_eq!(s.call(Method::GET, "/v1/threads", Some(&again), None).await.0, StatusCode::OK);
    s.shutdown().await;
}

/// Reads an open event stream until it ends; panics if it is still open after `within`.
async fn wait_for_end(mut resp: reqwest::Response, within: std::time::Duration) -> String {
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, resp.chunk()).await {
            Ok(Ok(Some(bytes))) => seen.push_str(&String::from_utf8_lossy(&bytes)),
            Ok(Ok(None)) | Ok(Err(_)) => return seen,
            Err(_) => panic!("the stream is still open after {within:?}; it sent: {seen}"),
        }
    }
}

/// A queued run of `user` (no worker runs, so it stays queued and its stream stays open).
async fn queued_run(s: &Stack, user: &str) -> String {
    let assistant = s.create_assistant(json!({})).await;
    let thread = s.create_thread(&assistant, user).await;
    s.send(&thread, "hello").await["id"].as_str().unwrap().to_string()
}

/// The value of the gauge `name` on the API's metrics listener.
async fn gauge(s: &Stack, name: &str) -> f64 {
    let text = s.http.get(format!("{}/metrics", s.metrics_url)).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics: {text}"))
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn an_event_stream_and_a_long_poll_end_when_their_users_tokens_are_revoked(pool: PgPool) {
    let s = Stack::start(pool).await;
    let run = queued_run(&s, "alice").await;
    let token = user_token(&s, json!({"user": "alice"})).await;
    let sse = s.http.get(format!("{}/v1/runs/{run}/events?access_token={token}", s.api_url)).send().await.unwrap();
    assert_eq!(sse.status(), StatusCode::OK);
    let poll = tokio::spawn(
        s.http
            .get(format!("{}/v1/runs/{run}/events?format=json&after=1&wait_ms=30000", s.api_url))
            .bearer_auth(&token)
            .send(),
    );
    // Revoke only once both are waiting on the hub, so the long-poll was let in.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while gauge(&s, "chatq_sse_subscribers").await < 2.0 {
        assert!(tokio::time::Instant::now() < deadline, "the stream and the long-poll never both subscribed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let started = std::time::Instant::now();
    let (status, _) = s.client(Method::POST, "/v1/user-tokens/revoke", Some(json!({"user": "alice"}))).await;
    assert_eq!(status, StatusCode::OK);
    let seen = wait_for_end(sse, std::time::Duration::from_secs(15)).await;
    assert!(seen.contains("run.queued"), "{seen}");
    let poll = tokio::time::timeout(std::time::Duration::from_secs(15), poll)
        .await
        .expect("the long-poll is still open 15 s after the revocation")
        .unwrap()
        .unwrap();
    assert_eq!(poll.status(), StatusCode::UNAUTHORIZED, "the long-poll outlived the revocation");
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn an_event_stream_and_a_long_poll_end_when_their_token_expires(pool: PgPool) {
    let s = Stack::start(pool).await;
    let run = queued_run(&s, "alice").await;
    let token = user_token(&s, json!({"user": "alice", "ttl_seconds": 3})).await;
    let started = std::time::Instant::now();
    let sse = s.http.get(format!("{}/v1/runs/{run}/events?access_token={token}", s.api_url)).send().await.unwrap();
    assert_eq!(sse.status(), StatusCode::OK);
    let poll = s
        .http
        .get(format!("{}/v1/runs/{run}/events?format=json&after=1&wait_ms=30000", s.api_url))
        .bearer_auth(&token)
        .send();
    let (seen, poll) = tokio::join!(wait_for_end(sse, std::time::Duration::from_secs(15)), poll);
    assert!(seen.contains("run.queued"), "{seen}");
    assert_eq!(poll.unwrap().status(), StatusCode::UNAUTHORIZED, "the long-poll outlived the token");
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_user_token_sees_only_the_public_view_of_the_assistants_it_is_bound_to(pool: PgPool) {
    let s = Stack::start(pool).await;
    let public = s
        .create_assistant(json!({"name": "Help", "instructions": "SECRET PROMPT", "metadata": {"team": "internal"}}))
        .await;
    let other = s.create_assistant(json!({"name": "Internal", "instructions": "OTHER SECRET"})).await;
    let bound = user_token(&s, json!({"user": "alice", "assistants": [public]})).await;
    let (status, list) = s.call(Method::GET, "/v1/assistants", Some(&bound), None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let data = list["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{list}");
    assert_eq!(data[0]["id"], public.as_str());
    assert_eq!(data[0]["name"], "Help");
    let (status, one) = s.call(Method::GET, &format!("/v1/assistants/{public}"), Some(&bound), None).await;
    assert_eq!(status, StatusCode::OK, "{one}");
    for view in [&data[0], &one] {
        for field in ["instructions", "knowledge_base_ids", "metadata", "model"] {
            assert!(view.get(field).is_none(), "a user token sees {field}: {view}");
        }
    }
    let (status, _) = s.call(Method::GET, &format!("/v1/assistants/{other}"), Some(&bound), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let unbound = user_token(&s, json!({"user": "alice"})).await;
    let (status, list) = s.call(Method::GET, "/v1/assistants", Some(&unbound), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["data"].as_array().unwrap().len(), 0, "{list}");
    assert!(!list.to_string().contains("SECRET"));
    // Keys still see everything.
    let (_, full) = s.client(Method::GET, &format!("/v1/assistants/{public}"), None).await;
    assert_eq!(full["instructions"], "SECRET PROMPT");
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_user_token_cannot_start_a_thread_or_run_with_an_assistant_it_is_not_bound_to(pool: PgPool) {
    let s = Stack::start(pool).await;
    let allowed = s.create_assistant(json!({"name": "Help"})).await;
    let internal = s.create_assistant(json!({"name": "Internal"})).await;
    let token = user_token(&s, json!({"user": "alice", "assistants": [allowed]})).await;
    let (status, body) =
        s.call(Method::POST, "/v1/threads", Some(&token), Some(json!({"assistant_id": internal}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    let (status, thread) =
        s.call(Method::POST, "/v1/threads", Some(&token), Some(json!({"assistant_id": allowed}))).await;
    assert_eq!(status, StatusCode::CREATED, "{thread}");
    let runs = format!("/v1/threads/{}/runs", thread["id"].as_str().unwrap());
    let (status, body) =
        s.call(Method::POST, &runs, Some(&token), Some(json!({"input": "hi", "assistant_id": internal}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (_, list) = s.call(Method::GET, &runs, Some(&token), None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0, "a refused run must not exist: {list}");
    let (status, body) =
        s.call(Method::POST, &runs, Some(&token), Some(json!({"input": "hi", "assistant_id": allowed}))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    // Unbound: no assistant of its own choosing, but it continues the threads the key created.
    let unbound = user_token(&s, json!({"user": "alice"})).await;
    let (status, _) = s.call(Method::POST, "/v1/threads", Some(&unbound), Some(json!({"assistant_id": allowed}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let keys_thread = s.create_thread(&internal, "alice").await;
    let (status, body) = s
        .call(Method::POST, &format!("/v1/threads/{keys_thread}/runs"), Some(&unbound), Some(json!({"input": "hi"})))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn citations_of_an_unbound_knowledge_base_or_another_user_stay_out_of_reach(pool: PgPool) {
    let s = Stack::start(pool.clone()).await;
    let (status, kb) = s.admin(Method::POST, "/v1/knowledge-bases", Some(json!({"name": "Salaries"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{kb}");
    let internal = s.create_assistant(json!({"name": "HR", "knowledge_base_ids": [kb["id"]]})).await;
    let public = s.create_assistant(json!({"name": "Help"})).await;

    // Alice's answered run, citing a document.
    let alices_thread = s.create_thread(&public, "alice").await;
    let run = s.send(&alices_thread, "hello").await["id"].as_str().unwrap().to_string();
    let document = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO documents (id, knowledge_base_id, filename, media_type, size_bytes, sha256, status)
         VALUES ($1, $2::uuid, 'alice-private.pdf', 'application/pdf', 3, '\\x00', 'ready')",
    )
    .bind(document)
    .bind(kb["id"].as_str().unwrap())
    .execute(&pool)
    .await
    .unwrap();
    let citation = json!([{"index": 1, "document_id": document, "chunk_id": Uuid::now_v7(),
        "filename": "alice-private.pdf", "location": null, "quote": "alice's secret"}]);
    sqlx::query("UPDATE runs SET status = 'completed', completed_at = now() WHERE id = $1::uuid")
        .bind(&run)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO messages (id, thread_id, role, content, run_id, citations)
         VALUES ($1, $2::uuid, 'assistant', 'see [1]', $3::uuid, $4)",
    )
    .bind(Uuid::now_v7())
    .bind(&alices_thread)
    .bind(&run)
    .bind(&citation)
    .execute(&pool)
    .await
    .unwrap();
    let alice = user_token(&s, json!({"user": "alice", "assistants": [public]})).await;
    let (status, seen) = s.call(Method::GET, &format!("/v1/runs/{run}"), Some(&alice), None).await;
    assert_eq!(status, StatusCode::OK, "{seen}");
    assert_eq!(seen["citations"][0]["filename"], "alice-private.pdf");

    // Bob reaches neither Alice's citations nor the internal knowledge base.
    let bob = user_token(&s, json!({"user": "bob", "assistants": [public]})).await;
    for (method, path) in [
        (Method::GET, format!("/v1/runs/{run}")),
        (Method::GET, format!("/v1/threads/{alices_thread}/messages")),
        (Method::GET, format!("/v1/threads/{alices_thread}/runs")),
        (Method::GET, format!("/v1/runs/{run}/events?format=json")),
        (Method::GET, format!("/v1/runs/{run}/events")),
        (Method::POST, format!("/v1/runs/{run}/cancel")),
    ] {
        let (status, body) = s.call(method, &path, Some(&bob), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert!(!body.to_string().contains("alice"), "{path}: {body}");
    }
    // The cited document and its knowledge base are out of reach of every user token, its
    // citer's included: knowledge routes take an admin key.
    let kb_id = kb["id"].as_str().unwrap();
    for token in [&bob, &alice] {
        for (method, path, body) in [
            (Method::GET, format!("/v1/documents/{document}"), None),
            (Method::GET, format!("/v1/knowledge-bases/{kb_id}"), None),
            (Method::GET, format!("/v1/knowledge-bases/{kb_id}/documents"), None),
            (Method::POST, format!("/v1/knowledge-bases/{kb_id}/search"), Some(json!({"query": "salary"}))),
        ] {
            let (status, body) = s.call(method, &path, Some(token), body).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
            assert!(!body.to_string().contains("alice-private"), "{path}: {body}");
        }
    }
    let (status, thread) = s.call(Method::POST, "/v1/threads", Some(&bob), Some(json!({"assistant_id": public}))).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = s
        .call(
            Method::POST,
            &format!("/v1/threads/{}/runs", thread["id"].as_str().unwrap()),
            Some(&bob),
            Some(json!({"input": "Summarise the salary bands", "assistant_id": internal})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a run on the internal knowledge base was accepted: {body}");
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn two_end_users_of_one_key_may_use_the_same_idempotency_key(pool: PgPool) {
    let s = Stack::start(pool).await;
    let assistant = s.create_assistant(json!({})).await;
    let mut runs = Vec::new();
    for user in ["alice", "bob"] {
        let thread = s.create_thread(&assistant, user).await;
        let token = user_token(&s, json!({"user": user})).await;
        let send = || {
            s.http
                .post(format!("{}/v1/threads/{thread}/runs", s.api_url))
                .bearer_auth(&token)
                .header("idempotency-key", "msg-1")
                .json(&json!({"input": "hello"}))
                .send()
        };
        let first = send().await.unwrap();
        assert_eq!(first.status(), StatusCode::ACCEPTED, "{user}: {}", first.text().await.unwrap());
        let first: Value = first.json().await.unwrap();
        let again = send().await.unwrap();
        assert_eq!(again.status(), StatusCode::OK, "{user}'s retry returns the original run");
        assert_eq!(again.json::<Value>().await.unwrap()["id"], first["id"]);
        runs.push(first["id"].clone());
    }
    assert_ne!(runs[0], runs[1]);
    s.shutdown().await;
}
