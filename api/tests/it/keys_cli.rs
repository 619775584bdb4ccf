//! `chatq-api keys list | revoke | rotate` against the running API: what an operator sees and
//! what a caller holding the key notices.

use std::time::Duration;

use chatq_api::auth::KeyCache;
use reqwest::{Method, StatusCode};
use sqlx::PgPool;

use crate::harness::Stack;

/// Polls until `key` is refused on an authenticated route, within the key cache's lifetime.
async fn wait_refused(s: &Stack, key: &str) {
    let deadline = tokio::time::Instant::now() + KeyCache::TTL + Duration::from_secs(5);
    loop {
        let (status, _) = s.call(Method::GET, "/v1/threads", Some(key), None).await;
        if status == StatusCode::UNAUTHORIZED {
            return;
        }
        assert_eq!(status, StatusCode::OK);
        assert!(tokio::time::Instant::now() < deadline, "the key still works after the cache lifetime");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn key_id(pool: &PgPool, name: &str) -> uuid::Uuid {
    sqlx::query_scalar("SELECT id FROM api_keys WHERE name = $1").bind(name).fetch_one(pool).await.unwrap()
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn keys_list_shows_every_key_by_id_and_prefix_but_never_a_secret(pool: PgPool) {
    let s = Stack::start(pool.clone()).await;
    let client_id = key_id(&pool, "test-client").await;
    chatq_api::keys_cli::revoke(&pool, &client_id.to_string(), &mut Vec::new()).await.unwrap();
    let mut out = Vec::new();
    chatq_api::keys_cli::list(&pool, &mut out).await.unwrap();
    let out = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    let client = lines.iter().find(|l| l.contains(&client_id.to_string())).expect("the client key is listed");
    assert!(client.contains("client") && client.contains("revoked") && client.ends_with("test-client"), "{client}");
    let admin = lines.iter().find(|l| l.ends_with("test-admin")).expect("the admin key is listed");
    assert!(admin.contains("active") && admin.contains(&s.admin_key[..14]), "{admin}");
    for secret in [&s.admin_key, &s.client_key] {
        assert!(!out.contains(&secret[14..]), "the list shows a secret: {out}");
    }
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_revoked_key_stops_working_within_the_key_cache_lifetime(pool: PgPool) {
    let s = Stack::start(pool.clone()).await;
    // In use, so the API holds it in its key cache.
    let (status, _) = s.client(Method::GET, "/v1/threads", None).await;
    assert_eq!(status, StatusCode::OK);
    let id = key_id(&pool, "test-client").await;
    let mut out = Vec::new();
    chatq_api::keys_cli::revoke(&pool, &id.to_string(), &mut out).await.unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains(&format!("revoked key {id}")), "{out}");
    assert!(!out.contains(&s.client_key), "{out}");
    wait_refused(&s, &s.client_key).await;
    // The admin key is untouched.
    let (status, _) = s.admin(Method::GET, "/v1/assistants", None).await;
    assert_eq!(status, StatusCode::OK);
    // Unknown and malformed ids are reported, not ignored.
    let unknown = uuid::Uuid::now_v7().to_string();
    let err = chatq_api::keys_cli::revoke(&pool, &unknown, &mut Vec::new()).await.unwrap_err().to_string();
    assert!(err.contains("no key with id"), "{err}");
    assert!(chatq_api::keys_cli::revoke(&pool, "not-an-id", &mut Vec::new()).await.is_err());
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_rotated_key_gets_a_new_secret_and_keeps_its_threads_while_the_old_secret_stops(pool: PgPool) {
    let s = Stack::start(pool.clone()).await;
    let assistant = s.create_assistant(serde_json::json!({})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let id = key_id(&pool, "test-client").await;
    let mut out = Vec::new();
    chatq_api::keys_cli::rotate(&pool, &id.to_string(), &mut out).await.unwrap();
    let out = String::from_utf8(out).unwrap();
    let new_key = out.trim();
    assert_eq!(out.lines().count(), 1, "only the new key is printed: {out}");
    assert!(new_key.starts_with("cq_client_") && new_key != s.client_key, "{out}");

    let (status, got) = s.call(Method::GET, &format!("/v1/threads/{thread}"), Some(new_key), None).await;
    assert_eq!(status, StatusCode::OK, "the new secret reaches the key's threads: {got}");
    wait_refused(&s, &s.client_key).await;
    // A revoked key cannot be rotated back to life.
    chatq_api::keys_cli::revoke(&pool, &id.to_string(), &mut Vec::new()).await.unwrap();
    let err = chatq_api::keys_cli::rotate(&pool, &id.to_string(), &mut Vec::new()).await.unwrap_err().to_string();
    assert!(err.contains("no live key"), "{err}");
    s.shutdown().await;
}

#[test]
fn the_ingest_command_refuses_a_key_on_the_command_line() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chatq-api"))
        .args(["ingest", "tests", "--kb", "00000000-0000-0000-0000-000000000000", "--api", "http://127.0.0.1:9"])
        .args(["--key", "cq_admin_visible_in_ps"])
        .env_remove("CHATQ_ADMIN_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unexpected argument '--key'"), "{err}");
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn the_ingest_command_exits_with_status_1_when_the_api_refuses_a_file(pool: PgPool) {
    let s = Stack::start_with(pool, &[("CHATQ_MAX_UPLOAD_FILE_BYTES", "100")]).await;
    let (status, kb) = s.admin(Method::POST, "/v1/knowledge-bases", Some(serde_json::json!({"name": "cli"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{kb}");
    let dir = std::env::temp_dir().join(format!("chatq-ingest-exit-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/big.txt"), "x".repeat(500)).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_chatq-api"))
        .arg("ingest")
        .arg(&dir)
        .args(["--kb", kb["id"].as_str().unwrap(), "--api", &s.api_url])
        .env("CHATQ_ADMIN_KEY", &s.admin_key)
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let row = stdout.lines().find(|l| l.starts_with("sub/big.txt")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(row.contains("refused") && row.contains("413"), "{stdout}");
    assert!(stdout.lines().last().unwrap().starts_with("0 ready, 1 failed, 0 other"), "{stdout}");
    // Not a terminal: progress comes as lines on stderr, and the key never appears.
    assert!(stderr.lines().any(|l| l == "uploaded 1/1 files"), "{stderr}");
    assert!(!stdout.contains(&s.admin_key) && !stderr.contains(&s.admin_key));
    std::fs::remove_dir_all(&dir).unwrap();
    s.shutdown().await;
}

/// Runs `chatq-api ARGS` against the test's database; returns (success, stdout, stderr).
fn chatq_api(pool: &PgPool, args: &[&str]) -> (bool, String, String) {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let server = base.split('?').next().unwrap().rsplit_once('/').unwrap().0;
    let db = pool.connect_options().get_database().unwrap().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chatq-api"))
        .args(args)
        .env("DATABASE_URL", format!("{server}/{db}"))
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn the_keys_command_lists_rotates_and_revokes_a_key_by_id(pool: PgPool) {
    let s = Stack::start(pool.clone()).await;
    let id = key_id(&pool, "test-client").await.to_string();
    let (ok, listed, err) = chatq_api(&pool, &["keys", "list"]);
    assert!(ok, "{err}");
    assert!(listed.lines().any(|l| l.starts_with(&id) && l.ends_with("test-client")), "{listed}");
    assert!(!listed.contains(&s.client_key[14..]) && !listed.contains(&s.admin_key[14..]), "{listed}");

    let (ok, rotated, err) = chatq_api(&pool, &["keys", "rotate", &id]);
    assert!(ok, "{err}");
    let new_key = rotated.trim();
    assert!(new_key.starts_with("cq_client_") && rotated.lines().count() == 1, "{rotated}");
    wait_refused(&s, &s.client_key).await;
    let (status, _) = s.call(Method::GET, "/v1/threads", Some(new_key), None).await;
    assert_eq!(status, StatusCode::OK);

    let (ok, revoked, err) = chatq_api(&pool, &["keys", "revoke", &id]);
    assert!(ok && revoked.contains(&format!("revoked key {id}")), "{revoked}{err}");
    assert!(!revoked.contains(new_key), "{revoked}");
    wait_refused(&s, new_key).await;

    let unknown = uuid::Uuid::now_v7().to_string();
    let (ok, _, err) = chatq_api(&pool, &["keys", "rotate", &unknown]);
    assert!(!ok && err.contains("no live key"), "{err}");
    s.shutdown().await;
}
