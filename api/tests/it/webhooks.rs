//! `/v1/webhooks`: admin-only subscriptions, validated at creation, whose signing secret is
//! shown once and stored sealed.

use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;

use crate::harness::Stack;

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_webhook_shows_its_secret_on_creation_only_and_can_be_listed_and_deleted(pool: PgPool) {
    let s = Stack::start(pool).await;
    let (status, created) = s
        .admin(
            Method::POST,
            "/v1/webhooks",
            Some(json!({"url": "https://hooks.example.com/chatq", "events": ["run.completed", "document.ready"],
                        "description": "billing"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["object"], "webhook");
    assert_eq!(created["url"], "https://hooks.example.com/chatq");
    assert_eq!(created["events"], json!(["document.ready", "run.completed"]));
    let secret = created["secret"].as_str().expect("the secret is in the creation answer");
    let key = secret.strip_prefix("whsec_").expect("Standard Webhooks prefix");
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(key).expect("base64 after whsec_");
    assert!(bytes.len() >= 24, "{} random bytes", bytes.len());
    let id = created["id"].as_str().unwrap();

    let (status, got) = s.admin(Method::GET, &format!("/v1/webhooks/{id}"), None).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert!(got.get("secret").is_none(), "GET shows the secret: {got}");
    assert_eq!(got["description"], "billing");
    let (status, list) = s.admin(Method::GET, "/v1/webhooks", None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert!(list["data"][0].get("secret").is_none(), "the list shows the secret: {list}");

    // Sealed at rest: the stored bytes do not contain the secret nor its key.
    let sealed: Vec<u8> = sqlx::query_scalar("SELECT secret_sealed FROM webhooks").fetch_one(&s.pool).await.unwrap();
    let text = String::from_utf8_lossy(&sealed);
    assert!(!text.contains(key) && !sealed.windows(bytes.len()).any(|w| w == bytes.as_slice()));

    let (status, _) = s.admin(Method::DELETE, &format!("/v1/webhooks/{id}"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = s.admin(Method::GET, &format!("/v1/webhooks/{id}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = s.admin(Method::DELETE, &format!("/v1/webhooks/{id}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn bad_urls_and_unknown_events_are_refused_with_422_naming_the_field(pool: PgPool) {
    let s = Stack::start(pool).await;
    for (body, field) in [
        (json!({"url": "ftp://example.com/x", "events": ["run.completed"]}), "url"),
        (json!({"url": "https://user:pw@example.com/x", "events": ["run.completed"]}), "url"),
        (json!({"url": "example.com/x", "events": ["run.completed"]}), "url"),
        (json!({"url": "https://example.com/x", "events": ["run.exploded"]}), "events"),
        (json!({"url": "https://example.com/x", "events": []}), "events"),
    ] {
        let (status, err) = s.admin(Method::POST, "/v1/webhooks", Some(body.clone())).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body} → {err}");
        assert_eq!(err["error"]["code"], "invalid_request", "{err}");
        let problems = err["error"]["details"]["problems"].as_array().unwrap();
        assert!(problems.iter().any(|p| p["field"] == field), "{body} → {err}");
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM webhooks").fetch_one(&s.pool).await.unwrap();
    assert_eq!(count, 0);
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn webhooks_are_admin_only_and_unknown_ids_are_404(pool: PgPool) {
    let s = Stack::start(pool).await;
    let body = json!({"url": "https://example.com/x", "events": ["run.completed"]});
    let (status, err) = s.client(Method::POST, "/v1/webhooks", Some(body)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{err}");
    let (status, _) = s.client(Method::GET, "/v1/webhooks", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let unknown = uuid::Uuid::now_v7();
    let (status, err) = s.admin(Method::GET, &format!("/v1/webhooks/{unknown}/deliveries"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{err}");
    let (status, err) =
        s.admin(Method::POST, &format!("/v1/webhooks/{unknown}/deliveries/{unknown}/retry"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{err}");
    let (status, err) = s.admin(Method::GET, &format!("/v1/webhooks/{unknown}/deliveries?limit=0"), None).await;
    assert_eq!(status.as_u16() / 100, 4, "{err}");
}
