//! Limits that need a worker: the monthly budget counts the cost of answered runs.

use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;

use chatq_system_tests::Stack;

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_key_over_its_monthly_budget_gets_budget_exhausted(pool: PgPool) {
    let s = Stack::start(pool.clone()).await;
    let key_id: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM api_keys WHERE name = 'test-client'").fetch_one(&pool).await.unwrap();
    chatq_common::db::keys::set_limits(&pool, key_id, None, Some(0.000001)).await.unwrap();
    let assistant = s.create_assistant(json!({})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    // Under budget: the run goes through and costs more than the budget.
    let run = s.send(&thread, "hi [[fake tokens=20]]").await;
    assert_eq!(s.wait_run(run["id"].as_str().unwrap()).await["status"], "completed");
    // The cached key still knows its budget; the spend is read fresh.
    let (status, body) =
        s.client(Method::POST, &format!("/v1/threads/{thread}/runs"), Some(json!({"input": "more"}))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "budget_exhausted");
    s.shutdown().await;
}
