//! The OpenAPI document: every route and the allowed values of typed fields.

use reqwest::{Method, StatusCode};
use sqlx::PgPool;

use crate::harness::Stack;

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn the_openapi_document_covers_every_route(pool: PgPool) {
    let s = Stack::start(pool).await;
    let (status, doc) = s.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let expected = [
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/v1/assistants", "post"),
        ("/v1/assistants", "get"),
        ("/v1/assistants/{id}", "get"),
        ("/v1/assistants/{id}", "patch"),
        ("/v1/assistants/{id}", "delete"),
        ("/v1/threads", "post"),
        ("/v1/threads", "get"),
        ("/v1/threads/{id}", "get"),
        ("/v1/threads/{id}", "delete"),
        ("/v1/threads/{id}/messages", "get"),
        ("/v1/threads/{id}/runs", "post"),
        ("/v1/threads/{id}/runs", "get"),
        ("/v1/runs/{id}", "get"),
        ("/v1/usage", "get"),
        ("/v1/admin/cleanup", "post"),
        ("/v1/admin/jobs/{id}", "get"),
        ("/v1/knowledge-bases", "post"),
        ("/v1/knowledge-bases", "get"),
        ("/v1/knowledge-bases/{id}", "get"),
        ("/v1/knowledge-bases/{id}", "delete"),
        ("/v1/knowledge-bases/{id}/documents", "post"),
        ("/v1/knowledge-bases/{id}/documents", "get"),
        ("/v1/knowledge-bases/{id}/search", "post"),
        ("/v1/documents/{id}", "get"),
        ("/v1/documents/{id}", "delete"),
        ("/v1/ingestion-batches/{id}", "get"),
        ("/v1/runs/{id}/events", "get"),
        ("/v1/runs/{id}/cancel", "post"),
        ("/v1/user-tokens", "post"),
        ("/v1/user-tokens/revoke", "post"),
    ];
    for (path, method) in expected {
        assert!(doc["paths"][path][method].is_object(), "{method} {path} missing from /openapi.json");
    }
    let documented: usize = doc["paths"].as_object().unwrap().values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(documented, expected.len(), "a route is documented but not listed in this test");
    let run_statuses = &doc["components"]["schemas"]["RunStatus"]["enum"];
    assert_eq!(run_statuses, &serde_json::json!(["queued", "in_progress", "completed", "failed", "cancelled"]));
    assert!(doc["components"]["schemas"]["RunErrorCode"]["enum"].as_array().is_some_and(|codes| !codes.is_empty()));
    s.shutdown().await;
}
