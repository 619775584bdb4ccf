//! Operations endpoints: what the public API port answers about the process, and what it
//! keeps for operators (metrics on their own listener, readiness without backend details).

use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::harness::Stack;

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn metrics_are_served_on_their_own_listener_and_not_on_the_api_port(pool: PgPool) {
    let s = Stack::start(pool).await;
    let (status, _) = s.call(reqwest::Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let on_api = s.http.get(format!("{}/metrics", s.api_url)).send().await.unwrap();
    assert_eq!(on_api.status(), StatusCode::NOT_FOUND, "the public port must not serve /metrics");

    let state = chatq_api::AppState::from_parts(s.config.clone(), s.pool.clone(), s.redis().await).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let server = tokio::spawn(chatq_api::serve_metrics(listener, state, stop.clone().cancelled_owned()));
    let metrics = s.http.get(format!("{url}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    let text = metrics.text().await.unwrap();
    assert!(text.contains("chatq_sse_connections"), "{text}");
    // The metrics listener serves nothing of the API.
    let api_there = s.http.get(format!("{url}/v1/assistants")).send().await.unwrap();
    assert_eq!(api_there.status(), StatusCode::NOT_FOUND);
    stop.cancel();
    server.await.unwrap().unwrap();
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn readyz_reports_a_down_database_without_its_error_text(pool: PgPool) {
    let s = Stack::start(pool).await;
    // A pool whose server refuses every connection, with a password in its URL.
    let down = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_secs(2))
        .connect_lazy("postgres://chatq_owner:hunter2-db-password@127.0.0.1:1/chatq_secret_db")
        .unwrap();
    let state = chatq_api::AppState::from_parts(s.config.clone(), down, s.redis().await).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let server = tokio::spawn(chatq_api::serve(listener, state, stop.clone().cancelled_owned()));

    let resp = s.http.get(format!("{url}/readyz")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let text = resp.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["status"], "unavailable", "{text}");
    assert_eq!(body["postgres"], "error", "{text}");
    assert_eq!(body["redis"], "ok", "{text}");
    for leak in ["127.0.0.1", "refused", "chatq_owner", "chatq_secret_db", "hunter2", "timed out"] {
        assert!(!text.to_lowercase().contains(leak), "/readyz leaks {leak:?}: {text}");
    }
    stop.cancel();
    server.await.unwrap().unwrap();
    s.shutdown().await;
}
