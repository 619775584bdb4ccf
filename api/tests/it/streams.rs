//! Event streams end: a cursor past the log, a deleted run, the stream caps, the maximum
//! lifetime, and a replay of a run whose events retention deleted.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::harness::{Stack, sse_events};

/// The `(seq, event, data)` of each event in an SSE body.
fn parse(body: &str) -> Vec<(i64, String, Value)> {
    sse_events(body)
        .into_iter()
        .map(|(id, event, data)| (id.parse().expect("a numeric event id"), event, data))
        .collect()
}

/// Reads an SSE response until the server closes it, which must happen within 10 s.
async fn read_to_end(resp: reqwest::Response) -> Vec<(i64, String, Value)> {
    parse(&rest_of(resp).await)
}

/// The rest of an SSE body, read until the server closes it (within 10 s).
async fn rest_of(resp: reqwest::Response) -> String {
    assert_eq!(resp.status(), StatusCode::OK);
    tokio::time::timeout(Duration::from_secs(10), resp.text())
        .await
        .expect("the server closes the stream within 10 s")
        .unwrap()
}

async fn events(s: &Stack, run_id: &str, query: &str, token: &str, last_event_id: Option<&str>) -> reqwest::Response {
    let mut req = s.http.get(format!("{}/v1/runs/{run_id}/events{query}", s.api_url)).bearer_auth(token);
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id);
    }
    req.send().await.unwrap()
}

/// A run of alice's, queued (its log holds `run.queued`, seq 1).
async fn queued_run(s: &Stack) -> (String, String) {
    let assistant = s.create_assistant(json!({})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let run = s.send(&thread, "hi").await;
    (thread, run["id"].as_str().unwrap().to_string())
}

/// Marks a run as taken by a worker: live, with no worker running.
async fn mark_started(s: &Stack, run_id: &str) {
    sqlx::query("UPDATE runs SET status = 'in_progress', attempt = 1, started_at = now() WHERE id = $1::uuid")
        .bind(run_id)
        .execute(&s.pool)
        .await
        .unwrap();
}

async fn user_token(s: &Stack, user: &str) -> String {
    let (st, body) = s.client(Method::POST, "/v1/user-tokens", Some(json!({"user": user}))).await;
    assert_eq!(st, StatusCode::CREATED, "{body}");
    body["token"].as_str().unwrap().to_string()
}

async fn assert_too_many_streams(resp: reqwest::Response) {
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_streams", "{body}");
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_cursor_past_the_log_resumes_from_the_newest_event_and_the_stream_ends_with_the_run(pool: PgPool) {
    let s = Stack::start(pool).await;
    let (_, run) = queued_run(&s).await;
    let key = s.client_key.clone();
    let stream = events(&s, &run, "?after=9223372036854775807", &key, None).await;
    let (st, body) = s.client(Method::POST, &format!("/v1/runs/{run}/cancel"), None).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let got = read_to_end(stream).await;
    assert_eq!(got.iter().map(|e| (e.0, e.1.as_str())).collect::<Vec<_>>(), [(2, "run.cancelled")]);

    let resp = events(&s, &run, "", &key, Some("9223372036854775807")).await;
    assert!(read_to_end(resp).await.is_empty(), "nothing after the terminal event");
    let resp = events(&s, &run, "?format=json&after=9223372036854775807&wait_ms=1000", &key, None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let page: Value = resp.json().await.unwrap();
    assert_eq!(page["done"], true, "{page}");
    assert_eq!(page["next_after"], 2, "{page}");
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_stream_ends_when_its_thread_is_deleted_mid_run(pool: PgPool) {
    let s = Stack::start_with(pool, &[("CHATQ_STREAM_RECHECK_SECS", "1")]).await;
    let (thread, run) = queued_run(&s).await;
    mark_started(&s, &run).await;
    let mut stream = events(&s, &run, "", &s.client_key.clone(), None).await;
    assert_eq!(stream.status(), StatusCode::OK);
    // Delete only once the replay has reached the client: the deletion takes the log with it.
    let mut body = String::new();
    while !body.contains("\n\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.chunk()).await.unwrap().unwrap();
        body.push_str(&String::from_utf8_lossy(&chunk.expect("the replay arrives before the stream ends")));
    }
    let (st, answer) = s.client(Method::DELETE, &format!("/v1/threads/{thread}"), None).await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{answer}");
    body.push_str(&rest_of(stream).await);
    let got = parse(&body);
    assert_eq!(got.iter().map(|e| e.1.as_str()).collect::<Vec<_>>(), ["run.queued"]);
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn streams_beyond_the_per_user_cap_get_429_too_many_streams_until_one_closes(pool: PgPool) {
    let s = Stack::start_with(pool, &[("CHATQ_STREAMS_PER_USER", "1")]).await;
    let (_, run) = queued_run(&s).await;
    let alice = user_token(&s, "alice").await;
    let open = events(&s, &run, "", &alice, None).await;
    assert_eq!(open.status(), StatusCode::OK);
    assert_too_many_streams(events(&s, &run, "", &alice, None).await).await;
    assert_too_many_streams(events(&s, &run, "?format=json&wait_ms=1000", &alice, None).await).await;
    // Another end user of the same key is not affected.
    let assistant = s.create_assistant(json!({})).await;
    let bobs_thread = s.create_thread(&assistant, "bob").await;
    let bobs_run = s.send(&bobs_thread, "hi").await;
    let bob = user_token(&s, "bob").await;
    let resp = events(&s, bobs_run["id"].as_str().unwrap(), "?format=json", &bob, None).await;
    assert_eq!(resp.status(), StatusCode::OK);

    drop(open);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let resp = events(&s, &run, "?format=json", &alice, None).await;
        if resp.status() == StatusCode::OK {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the closed stream frees its place");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn streams_beyond_the_per_key_cap_get_429_too_many_streams(pool: PgPool) {
    let s = Stack::start_with(pool, &[("CHATQ_STREAMS_PER_KEY", "1")]).await;
    let (thread, run) = queued_run(&s).await;
    let key = s.client_key.clone();
    let open = events(&s, &run, "", &key, None).await;
    assert_eq!(open.status(), StatusCode::OK);
    // A user token counts against its key.
    let alice = user_token(&s, "alice").await;
    assert_too_many_streams(events(&s, &run, "", &alice, None).await).await;
    // A stream on submit too, and the refused submit creates no run.
    let resp = s
        .http
        .post(format!("{}/v1/threads/{thread}/runs", s.api_url))
        .bearer_auth(&key)
        .json(&json!({"input": "again", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_too_many_streams(resp).await;
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM runs").fetch_one(&s.pool).await.unwrap();
    assert_eq!(runs, 1);
    // Another key is not affected.
    let admin = s.admin_key.clone();
    assert_eq!(events(&s, &run, "?format=json", &admin, None).await.status(), StatusCode::OK);
    drop(open);
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn streams_beyond_the_process_cap_get_429_too_many_streams(pool: PgPool) {
    let s = Stack::start_with(pool, &[("CHATQ_STREAMS_MAX", "1")]).await;
    let (_, run) = queued_run(&s).await;
    let open = events(&s, &run, "", &s.client_key.clone(), None).await;
    assert_eq!(open.status(), StatusCode::OK);
    assert_too_many_streams(events(&s, &run, "", &s.admin_key.clone(), None).await).await;
    drop(open);
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_stream_is_closed_after_its_maximum_lifetime_and_resumes_with_last_event_id(pool: PgPool) {
    let s = Stack::start_with(pool, &[("CHATQ_STREAM_MAX_LIFETIME_SECS", "1")]).await;
    let (_, run) = queued_run(&s).await;
    mark_started(&s, &run).await;
    let key = s.client_key.clone();
    let got = read_to_end(events(&s, &run, "", &key, None).await).await;
    assert_eq!(got.iter().map(|e| (e.0, e.1.as_str())).collect::<Vec<_>>(), [(1, "run.queued")]);
    // The run finishes while the client is away; it resumes after the last id it saw.
    finish_with_text(&s, &run, "Hello, world").await;
    let got = read_to_end(events(&s, &run, "", &key, Some("1")).await).await;
    let kinds: Vec<_> = got.iter().map(|e| (e.0, e.1.as_str())).collect();
    assert_eq!(kinds, [(2, "run.started"), (3, "message.delta"), (4, "message.delta"), (5, "run.completed")]);
    s.shutdown().await;
}

/// Writes what a worker would: `run.started`, two deltas and `run.completed` (seq 2 to 5),
/// finished a day ago.
async fn finish_with_text(s: &Stack, run_id: &str, text: &str) {
    let (a, b) = text.split_at(text.len() / 2);
    for (seq, kind, data) in [
        (2, "run.started", json!({"attempt": 1})),
        (3, "message.delta", json!({"text": a})),
        (4, "message.delta", json!({"text": b})),
        (5, "run.completed", json!({"finish_reason": "stop"})),
    ] {
        sqlx::query("INSERT INTO run_events (run_id, seq, attempt, kind, data) VALUES ($1::uuid, $2, 1, $3, $4)")
            .bind(run_id)
            .bind(seq as i64)
            .bind(kind)
            .bind(data)
            .execute(&s.pool)
            .await
            .unwrap();
    }
    sqlx::query(
        "UPDATE runs SET status = 'completed', attempt = 1, output_text = $2, last_seq = 5,
                started_at = now() - interval '1 day', completed_at = now() - interval '1 day'
         WHERE id = $1::uuid",
    )
    .bind(run_id)
    .bind(text)
    .execute(&s.pool)
    .await
    .unwrap();
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_replay_of_a_run_pruned_by_retention_sends_a_snapshot_of_the_text_then_the_terminal_event(pool: PgPool) {
    let s = Stack::start(pool).await;
    let (_, run) = queued_run(&s).await;
    finish_with_text(&s, &run, "Hello, world").await;
    let pruned = chatq_common::db::maintenance::delete_old_events(&s.pool, 3600.0, 1000).await.unwrap();
    assert_eq!(pruned, 4, "retention kept only the terminal event");
    let key = s.client_key.clone();
    for cursor in [None, Some("2")] {
        let got = read_to_end(events(&s, &run, "", &key, cursor).await).await;
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!((got[0].0, got[0].1.as_str()), (4, "run.snapshot"));
        assert_eq!(got[0].2["text"], "Hello, world");
        assert_eq!((got[1].0, got[1].1.as_str()), (5, "run.completed"));
    }
    let resp = events(&s, &run, "?format=json&after=0", &key, None).await;
    let page: Value = resp.json().await.unwrap();
    assert_eq!(page["events"][0]["type"], "run.snapshot", "{page}");
    assert_eq!(page["events"][0]["data"]["text"], "Hello, world", "{page}");
    assert_eq!(page["events"][1]["type"], "run.completed", "{page}");
    assert_eq!(page["done"], true, "{page}");
    s.shutdown().await;
}
