//! The API alone per test: in-process on port 0, a fresh database (`#[sqlx::test]`) and the
//! shared Redis under a unique queue prefix. No worker runs, so submitted runs stay queued;
//! tests that need answers are system tests (`ops/system-tests`).

use chatq_common::config::ExposeSecret;
use std::collections::HashMap;

use chatq_common::{config::Config, db, keys::Role};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub struct Stack {
    pub pool: PgPool,
    pub config: Config,
    pub api_url: String,
    /// The metrics listener (`/metrics`), serving the same state as the API.
    pub metrics_url: String,
    pub admin_key: String,
    pub client_key: String,
    pub http: reqwest::Client,
    api_stop: CancellationToken,
    api_task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

fn test_config(overrides: &[(&str, &str)]) -> Config {
    let prefix = format!("t{}", uuid::Uuid::now_v7().simple());
    let mut env: HashMap<String, String> = HashMap::from([
        // Never called: the API itself makes no provider calls in these tests.
        ("OPENAI_BASE_URL".into(), "http://127.0.0.1:9/v1".into()),
        ("OPENAI_API_KEY".into(), "sk-test".into()),
        ("CHATQ_QUEUE_PREFIX".into(), prefix),
        ("CHATQ_TOKEN_SECRET".into(), "test-secret-test-secret-test-secret-0123".into()),
        ("CHATQ_DB_MAX_CONNECTIONS".into(), "5".into()),
    ]);
    if let Ok(url) = std::env::var("REDIS_URL") {
        env.insert("REDIS_URL".into(), url);
    }
    for (k, v) in overrides {
        env.insert(k.to_string(), v.to_string());
    }
    Config::from_lookup(|k| env.get(k).cloned()).expect("valid test config")
}

impl Stack {
    /// The API with the default test configuration.
    pub async fn start(pool: PgPool) -> Self {
        Self::start_with(pool, &[]).await
    }

    /// The API with configuration `overrides` (environment variable, value).
    pub async fn start_with(pool: PgPool, overrides: &[(&str, &str)]) -> Self {
        chatq_common::telemetry::init("test");
        let config = test_config(overrides);
        let (admin_key, _) = db::keys::create(&pool, Role::Admin, "test-admin").await.unwrap();
        let (client_key, _) = db::keys::create(&pool, Role::Client, "test-client").await.unwrap();
        let mut stack = Stack {
            pool,
            config,
            api_url: String::new(),
            metrics_url: String::new(),
            admin_key,
            client_key,
            http: reqwest::Client::new(),
            api_stop: CancellationToken::new(),
            api_task: None,
        };
        let state =
            chatq_api::AppState::from_parts(stack.config.clone(), stack.pool.clone(), stack.redis().await).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        stack.api_url = format!("http://{}", listener.local_addr().unwrap());
        let metrics_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        stack.metrics_url = format!("http://{}", metrics_listener.local_addr().unwrap());
        let metrics_stop = stack.api_stop.clone().cancelled_owned();
        tokio::spawn(chatq_api::serve_metrics(metrics_listener, state.clone(), metrics_stop));
        let stop = stack.api_stop.clone().cancelled_owned();
        stack.api_task = Some(tokio::spawn(chatq_api::serve(listener, state, stop)));
        stack
    }

    pub async fn redis(&self) -> redis::aio::ConnectionManager {
        chatq_common::redis_conn::connect(self.config.redis.url.expose_secret()).await.expect("redis reachable")
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.api_url));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("API reachable");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call(method, path, Some(&self.admin_key.clone()), body).await
    }

    pub async fn client(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call(method, path, Some(&self.client_key.clone()), body).await
    }

    pub async fn create_assistant(&self, extra: Value) -> String {
        let mut body = json!({"name": "Lion", "instructions": "You are the zoo's lion.", "model": "gpt-4o-mini"});
        body.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap_or_default());
        let (s, a) = self.admin(Method::POST, "/v1/assistants", Some(body)).await;
        assert_eq!(s, StatusCode::CREATED, "{a}");
        a["id"].as_str().unwrap().to_string()
    }

    pub async fn create_thread(&self, assistant_id: &str, user: &str) -> String {
        let (s, t) =
            self.client(Method::POST, "/v1/threads", Some(json!({"assistant_id": assistant_id, "user": user}))).await;
        assert_eq!(s, StatusCode::CREATED, "{t}");
        t["id"].as_str().unwrap().to_string()
    }

    pub async fn send(&self, thread_id: &str, input: &str) -> Value {
        let (s, run) =
            self.client(Method::POST, &format!("/v1/threads/{thread_id}/runs"), Some(json!({"input": input}))).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{run}");
        run
    }

    pub async fn shutdown(mut self) {
        self.api_stop.cancel();
        if let Some(t) = self.api_task.take() {
            t.await.unwrap().unwrap();
        }
        // `#[sqlx::test]` drops this test's database next, which Postgres refuses while the
        // backend of a just-closed connection is still exiting: close the pool and wait until
        // no session is left on the database.
        let db = self.pool.connect_options().get_database().map(str::to_string);
        self.pool.close().await;
        let (Some(db), Ok(url)) = (db, std::env::var("DATABASE_URL")) else { return };
        let mut admin = PgConnection::connect(&url).await.expect("Postgres reachable");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = $1")
                .bind(&db)
                .fetch_one(&mut admin)
                .await
                .unwrap();
            if sessions == 0 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{sessions} sessions still on {db} 10 s after shutdown");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        admin.close().await.unwrap();
    }
}

/// The `(id, event, data)` of each complete event in an SSE body (a trailing partial event is
/// left out until its blank line arrives).
pub fn sse_events(body: &str) -> Vec<(String, String, Value)> {
    body.split("\n\n")
        .filter(|block| body.ends_with("\n\n") || !body.ends_with(block))
        .filter_map(|block| {
            let (mut id, mut event, mut data) = (None, String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            Some((id?, event, serde_json::from_str(&data).unwrap_or(Value::Null)))
        })
        .collect()
}
