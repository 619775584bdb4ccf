//! Who may call what: missing or bad keys, client versus admin keys, and another key's data
//! answered 404.

use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;

use crate::harness::Stack;

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn requests_without_a_valid_key_are_unauthorized(pool: PgPool) {
    let s = Stack::start(pool).await;
    let (status, body) = s.call(Method::GET, "/v1/threads", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "unauthorized");
    let (status, _) = s.call(Method::GET, "/v1/threads", Some("cq_client_notarealkey"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = s.call(Method::GET, "/v1/threads", Some("sk-something-else"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn client_keys_cannot_manage_assistants_but_can_read_them(pool: PgPool) {
    let s = Stack::start(pool).await;
    let (status, body) =
        s.client(Method::POST, "/v1/assistants", Some(json!({"name": "x", "model": "gpt-4o-mini"}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["code"], "forbidden");
    let id = s.create_assistant(json!({})).await;
    let (status, a) = s.client(Method::GET, &format!("/v1/assistants/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(a["name"], "Lion");
    let (status, _) = s.client(Method::DELETE, &format!("/v1/assistants/{id}"), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn another_keys_thread_and_run_are_not_found(pool: PgPool) {
    let s = Stack::start(pool.clone()).await;
    let assistant = s.create_assistant(json!({})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let run = s.send(&thread, "hello").await;
    let (other_key, _) =
        chatq_common::db::keys::create(&pool, chatq_common::keys::Role::Client, "other").await.unwrap();
    for path in [
        format!("/v1/threads/{thread}"),
        format!("/v1/threads/{thread}/messages"),
        format!("/v1/threads/{thread}/runs"),
        format!("/v1/runs/{}", run["id"].as_str().unwrap()),
    ] {
        let (status, body) = s.call(Method::GET, &path, Some(&other_key), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert_eq!(body["error"]["code"], "not_found");
    }
    let (status, _) = s
        .call(Method::POST, &format!("/v1/threads/{thread}/runs"), Some(&other_key), Some(json!({"input": "hi"})))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, list) = s.call(Method::GET, "/v1/threads", Some(&other_key), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["data"].as_array().unwrap().len(), 0);
    // The owner and admins still see it.
    assert_eq!(s.client(Method::GET, &format!("/v1/threads/{thread}"), None).await.0, StatusCode::OK);
    assert_eq!(s.admin(Method::GET, &format!("/v1/threads/{thread}"), None).await.0, StatusCode::OK);
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn threads_list_filters_by_user_and_paginates(pool: PgPool) {
    let s = Stack::start(pool).await;
    let assistant = s.create_assistant(json!({})).await;
    let mut alice = Vec::new();
    for _ in 0..5 {
        alice.push(s.create_thread(&assistant, "alice").await);
    }
    s.create_thread(&assistant, "bob").await;
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let q = if after.is_empty() {
            "/v1/threads?user=alice&limit=2".to_string()
        } else {
            format!("/v1/threads?user=alice&limit=2&after={after}")
        };
        let (status, page) = s.client(Method::GET, &q, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for t in page["data"].as_array().unwrap() {
            assert_eq!(t["user"], "alice");
            seen.push(t["id"].as_str().unwrap().to_string());
        }
        match page["next_after"].as_str() {
            Some(next) => after = next.to_string(),
            None => break,
        }
    }
    assert_eq!(seen, alice, "every thread once, oldest first");
    s.shutdown().await;
}
