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

/// The `field` of each problem in a refusal's `details.problems`.
fn problem_fields(body: &serde_json::Value) -> Vec<String> {
    body["error"]["details"]["problems"]
        .as_array()
        .map(|ps| ps.iter().filter_map(|p| p["field"].as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn text_or_numbers_postgres_cannot_store_are_a_4xx_naming_the_field(pool: PgPool) {
    let s = Stack::start(pool.clone()).await;
    let assistant = s.create_assistant(json!({})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let (_, kb) = s.admin(Method::POST, "/v1/knowledge-bases", Some(json!({"name": "kb"}))).await;
    let kb = kb["id"].as_str().unwrap().to_string();
    let runs = format!("/v1/threads/{thread}/runs");
    let nul = "a\u{0}b";
    let admin = Some(s.admin_key.as_str());
    let client = Some(s.client_key.as_str());
    let bodies = [
        (client, Method::POST, "/v1/threads".to_string(), json!({"user": nul}), "user"),
        (client, Method::POST, "/v1/threads".into(), json!({"title": nul}), "title"),
        (client, Method::POST, "/v1/threads".into(), json!({"metadata": {"tags": ["ok", nul]}}), "metadata.tags[1]"),
        (client, Method::POST, "/v1/threads".into(), json!({"metadata": {nul: 1}}), "metadata"),
        (client, Method::POST, "/v1/threads".into(), json!({"metadata": {"n": [f64::MAX]}}), "metadata.n[0]"),
        (client, Method::POST, runs.clone(), json!({"input": nul}), "input"),
        (client, Method::POST, runs.clone(), json!({"input": "hi", "client_message_id": nul}), "client_message_id"),
        (client, Method::POST, "/v1/user-tokens".into(), json!({"user": nul}), "user"),
        (client, Method::POST, "/v1/user-tokens".into(), json!({"user": "u", "ttl_seconds": 1e30}), "ttl_seconds"),
        (admin, Method::POST, "/v1/knowledge-bases".into(), json!({"name": nul}), "name"),
        (admin, Method::POST, "/v1/knowledge-bases".into(), json!({"name": "kb", "description": nul}), "description"),
        (admin, Method::POST, format!("/v1/knowledge-bases/{kb}/search"), json!({"query": nul}), "query"),
        (
            admin,
            Method::POST,
            "/v1/assistants".into(),
            json!({"name": "a", "model": "m", "instructions": nul}),
            "instructions",
        ),
        (
            admin,
            Method::POST,
            "/v1/assistants".into(),
            json!({"name": "a", "model": "m", "max_output_tokens": 2_147_483_648_i64}),
            "max_output_tokens",
        ),
        (
            admin,
            Method::POST,
            "/v1/assistants".into(),
            json!({"name": "a", "model": "m", "retention_days": 2_000_000_000}),
            "retention_days",
        ),
        (admin, Method::PATCH, format!("/v1/assistants/{assistant}"), json!({"metadata": {"x": nul}}), "metadata.x"),
    ];
    for (key, method, path, body, field) in bodies {
        let (status, answer) = s.call(method.clone(), &path, key, Some(body.clone())).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{method} {path} {body} -> {answer}");
        assert_eq!(answer["error"]["code"], "invalid_request", "{answer}");
        assert_eq!(problem_fields(&answer), [field], "{method} {path} {body} -> {answer}");
    }

    for (path, field) in [
        ("/v1/threads?user=a%00b", "user"),
        ("/v1/threads?limit=99999999999999999999", "limit"),
        ("/v1/assistants?limit=0", "limit"),
        ("/v1/threads?limit=abc", "limit"),
    ] {
        let (status, answer) = s.client(Method::GET, path, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} -> {answer}");
        assert_eq!(answer["error"]["code"], "invalid_query", "{answer}");
        assert_eq!(problem_fields(&answer), [field], "{path} -> {answer}");
    }

    // Nothing was stored by the refused requests.
    let threads: i64 = sqlx::query_scalar("SELECT count(*) FROM threads").fetch_one(&pool).await.unwrap();
    assert_eq!(threads, 1);
    let messages: i64 = sqlx::query_scalar("SELECT count(*) FROM messages").fetch_one(&pool).await.unwrap();
    assert_eq!(messages, 0);
    s.shutdown().await;
}
