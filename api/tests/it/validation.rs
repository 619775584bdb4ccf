//! Malformed or oversized requests get the error envelope with a 4xx, never a 500.

use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;

use crate::harness::Stack;

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn malformed_requests_get_the_error_envelope_not_a_500(pool: PgPool) {
    let s = Stack::start(pool).await;
    let assistant = s.create_assistant(json!({})).await;
    let thread = s.create_thread(&assistant, "alice").await;

    // Broken JSON.
    let resp = s
        .http
        .post(format!("{}/v1/threads/{thread}/runs", s.api_url))
        .bearer_auth(&s.client_key)
        .header("content-type", "application/json")
        .body("{\"input\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_json");

    // Unknown field, wrong type, missing field.
    for bad in [json!({"input": "hi", "bogus": 1}), json!({"input": 42}), json!({})] {
        let (status, body) = s.client(Method::POST, &format!("/v1/threads/{thread}/runs"), Some(bad.clone())).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad} -> {body}");
        assert_eq!(body["error"]["code"], "invalid_request");
        assert!(body["error"]["message"].as_str().unwrap().len() > 5);
    }

    // Empty input.
    let (status, body) =
        s.client(Method::POST, &format!("/v1/threads/{thread}/runs"), Some(json!({"input": "  "}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    // Bad UUIDs in the path.
    let (status, body) = s.client(Method::GET, "/v1/runs/not-a-uuid", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_path");

    // Bad query.
    let (status, body) = s.client(Method::GET, "/v1/threads?limit=abc", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_query");
    let (status, _) = s.client(Method::GET, "/v1/threads?limit=1000", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Unknown route.
    let (status, body) = s.client(Method::GET, "/v1/nothing-here", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");

    // Invalid assistant fields list every problem.
    let (status, body) =
        s.admin(Method::POST, "/v1/assistants", Some(json!({"name": "", "model": "m", "temperature": 5.0}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["details"]["problems"].as_array().unwrap().len(), 2, "{body}");
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn oversized_messages_and_bodies_are_refused_with_413(pool: PgPool) {
    let s = Stack::start(pool).await;
    let assistant = s.create_assistant(json!({})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let big_message = "a".repeat(s.config.limits.max_message_bytes + 1);
    let (status, body) =
        s.client(Method::POST, &format!("/v1/threads/{thread}/runs"), Some(json!({"input": big_message}))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large");

    let huge_body = "a".repeat(s.config.limits.max_body_bytes + 10);
    let (status, body) =
        s.client(Method::POST, &format!("/v1/threads/{thread}/runs"), Some(json!({"input": huge_body}))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large");

    // Nothing was stored.
    let (_, msgs) = s.client(Method::GET, &format!("/v1/threads/{thread}/messages"), None).await;
    assert_eq!(msgs["data"].as_array().unwrap().len(), 0);
    s.shutdown().await;
}
