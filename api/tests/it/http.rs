//! The listener's own limits: header, idle, body and request timeouts, and the connection cap.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::harness::Stack;

async fn connect(s: &Stack) -> TcpStream {
    TcpStream::connect(s.api_url.trim_start_matches("http://")).await.unwrap()
}

/// Reads until the server closes the connection, which must happen within `deadline`;
/// returns what it sent.
async fn read_until_closed(conn: &mut TcpStream, deadline: Duration) -> String {
    let mut out = Vec::new();
    let read = tokio::time::timeout(deadline, async {
        let mut buf = [0u8; 4096];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(read.is_ok(), "the server kept the connection open for {deadline:?}; it sent {text:?}");
    text
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_slowloris_sending_its_head_byte_by_byte_is_closed_after_the_header_timeout(pool: PgPool) {
    let s = Stack::start_with(pool, &[("CHATQ_HTTP_HEADER_TIMEOUT_SECS", "1")]).await;
    let (mut conn, mut slow) = connect(&s).await.into_split();
    // A slowloris: its head one byte every 50 ms, for ever; no byte may restart the clock.
    let trickle = tokio::spawn(async move {
        let head = b"GET /healthz HTTP/1.1\r\nHost: chatq\r\nX-Slow: ";
        for byte in head.iter().chain(std::iter::repeat(&b'a')) {
            if slow.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        while let Ok(n) = conn.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    trickle.abort();
    assert!(closed.is_ok(), "a connection trickling its head byte by byte is still open after 5 s");
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn an_idle_kept_alive_connection_is_closed(pool: PgPool) {
    let s = Stack::start_with(pool, &[("CHATQ_HTTP_HEADER_TIMEOUT_SECS", "1")]).await;
    let mut conn = connect(&s).await;
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: chatq\r\n\r\n").await.unwrap();
    let sent = read_until_closed(&mut conn, Duration::from_secs(10)).await;
    assert!(sent.starts_with("HTTP/1.1 200"), "the request is answered before the idle close: {sent:?}");
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_request_body_that_stalls_is_answered_408_after_the_body_timeout(pool: PgPool) {
    let s = Stack::start_with(pool, &[("CHATQ_HTTP_BODY_TIMEOUT_SECS", "1")]).await;
    let mut conn = connect(&s).await;
    let head = format!(
        "POST /v1/threads HTTP/1.1\r\nHost: chatq\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"title\":",
        s.client_key
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let sent = read_until_closed(&mut conn, Duration::from_secs(10)).await;
    assert!(sent.starts_with("HTTP/1.1 408"), "{sent:?}");
    assert!(sent.contains("\"request_timeout\""), "the error envelope names the timeout: {sent:?}");
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_request_slower_than_the_request_timeout_gets_503_request_timeout(pool: PgPool) {
    let s = Stack::start_with(pool, &[("CHATQ_HTTP_REQUEST_TIMEOUT_SECS", "1")]).await;
    let assistant = s.create_assistant(json!({})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let run = s.send(&thread, "hi").await;
    let run_id = run["id"].as_str().unwrap();
    // A cancel of a running run waits up to 2 s for its worker, and no worker runs here.
    sqlx::query("UPDATE runs SET status = 'in_progress', attempt = 1, started_at = now() WHERE id = $1::uuid")
        .bind(run_id)
        .execute(&s.pool)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (st, body) = s.client(reqwest::Method::POST, &format!("/v1/runs/{run_id}/cancel"), None).await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "request_timeout", "{body}");
    assert!(started.elapsed() < Duration::from_millis(1900), "cut at the timeout, not at the end of the wait");
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn connections_beyond_the_limit_wait_until_a_slot_frees(pool: PgPool) {
    let s = Stack::start_with(pool, &[("CHATQ_HTTP_MAX_CONNECTIONS", "2")]).await;
    // Two connections that send nothing hold both slots.
    let held = [connect(&s).await, connect(&s).await];
    let quick = reqwest::Client::builder().timeout(Duration::from_millis(700)).build().unwrap();
    let url = format!("{}/healthz", s.api_url);
    assert!(quick.get(&url).send().await.is_err(), "a third connection is not served while two are held");
    drop(held);
    let resp = reqwest::Client::new().get(&url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    s.shutdown().await;
}
