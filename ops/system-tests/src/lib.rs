//! A whole chatq stack per test: the API and a worker in-process on port 0, a fresh database
//! (`#[sqlx::test]`), the shared Redis under a unique queue prefix, and the fake OpenAI server.
//! The system tests in `tests/it` use it; [`sse`] is their event-stream client.

pub mod sse;

use chatq_common::config::ExposeSecret;
use std::{collections::HashMap, future::Future, time::Duration};

use chatq_common::{config::Config, db, keys::Role};
use chatq_fake_openai::{FakeConfig, FakeHandle};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub struct Stack {
    pub pool: PgPool,
    pub config: Config,
    pub fake: FakeHandle,
    pub api_url: String,
    /// Base URL of the API's metrics listener (`CHATQ_METRICS_LISTEN` in production).
    pub metrics_url: String,
    pub admin_key: String,
    pub client_key: String,
    pub http: reqwest::Client,
    api_stop: CancellationToken,
    api_task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub worker: Option<chatq_worker::WorkerHandle>,
    /// The context of the running worker (shares its breaker, metrics and queues).
    pub worker_ctx: Option<chatq_worker::WorkerCtx>,
}

pub fn test_config(fake_url: &str, overrides: &[(&str, &str)]) -> Config {
    let prefix = format!("t{}", uuid::Uuid::now_v7().simple());
    let mut env: HashMap<String, String> = HashMap::from([
        ("OPENAI_BASE_URL".into(), fake_url.to_string()),
        ("OPENAI_API_KEY".into(), "sk-test".into()),
        ("CHATQ_QUEUE_PREFIX".into(), prefix),
        ("CHATQ_TOKEN_SECRET".into(), "test-secret-test-secret-test-secret-0123".into()),
        ("CHATQ_CHAT_POLL_MS".into(), "10".into()),
        ("CHATQ_EVENT_FLUSH_MS".into(), "20".into()),
        ("CHATQ_CHAT_CONCURRENCY".into(), "16".into()),
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
    /// API + worker + fake.
    pub async fn start(pool: PgPool) -> Self {
        Self::start_with(pool, true, &[]).await
    }

    /// API + fake, no worker: runs stay queued.
    pub async fn without_worker(pool: PgPool) -> Self {
        Self::start_with(pool, false, &[]).await
    }

    pub async fn start_with(pool: PgPool, worker: bool, overrides: &[(&str, &str)]) -> Self {
        let (_, fake) = chatq_fake_openai::spawn(FakeConfig::default()).await.expect("fake server starts");
        Self::start_on(pool, worker, fake, overrides).await
    }

    /// API (+ worker) with `fake` as the provider of `OPENAI_BASE_URL` (tests with a providers
    /// file start their other fakes themselves).
    pub async fn start_on(pool: PgPool, worker: bool, fake: FakeHandle, overrides: &[(&str, &str)]) -> Self {
        chatq_common::telemetry::init("test");
        let config = test_config(&fake.base_url(), overrides);
        let (admin_key, _) = db::keys::create(&pool, Role::Admin, "test-admin").await.unwrap();
        let (client_key, _) = db::keys::create(&pool, Role::Client, "test-client").await.unwrap();
        let mut stack = Stack {
            pool,
            config,
            fake,
            api_url: String::new(),
            metrics_url: String::new(),
            admin_key,
            client_key,
            http: reqwest::Client::new(),
            api_stop: CancellationToken::new(),
            api_task: None,
            worker: None,
            worker_ctx: None,
        };
        stack.start_api().await;
        if worker {
            stack.start_worker().await;
        }
        stack
    }

    pub async fn redis(&self) -> redis::aio::ConnectionManager {
        chatq_common::redis_conn::connect(self.config.redis.url.expose_secret()).await.expect("redis reachable")
    }

    pub async fn start_api(&mut self) {
        let state = chatq_api::AppState::from_parts(self.config.clone(), self.pool.clone(), self.redis().await)
            .expect("API state");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.api_url = format!("http://{}", listener.local_addr().unwrap());
        self.api_stop = CancellationToken::new();
        let metrics_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.metrics_url = format!("http://{}", metrics_listener.local_addr().unwrap());
        let stop = self.api_stop.clone().cancelled_owned();
        tokio::spawn(chatq_api::serve_metrics(
            metrics_listener,
            state.clone(),
            self.api_stop.clone().cancelled_owned(),
        ));
        self.api_task = Some(tokio::spawn(chatq_api::serve(listener, state, stop)));
    }

    pub async fn stop_api(&mut self) {
        self.api_stop.cancel();
        if let Some(t) = self.api_task.take() {
            t.await.unwrap().unwrap();
        }
    }

    pub async fn start_worker(&mut self) {
        let ctx =
            chatq_worker::WorkerCtx::from_parts(self.config.clone(), self.pool.clone(), self.redis().await).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.worker_ctx = Some(ctx.clone());
        self.worker = Some(chatq_worker::start_with(ctx, listener).unwrap());
    }

    pub async fn stop_worker(&mut self) {
        self.worker_ctx = None;
        if let Some(w) = self.worker.take() {
            w.shutdown().await.unwrap();
        }
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

    /// Polls the run until it is final.
    pub async fn wait_run(&self, run_id: &str) -> Value {
        let path = format!("/v1/runs/{run_id}");
        wait_for(Duration::from_secs(20), || async {
            let (_, run) = self.client(Method::GET, &path, None).await;
            matches!(run["status"].as_str(), Some("completed" | "failed" | "cancelled")).then_some(run)
        })
        .await
    }

    /// The full name of the queue `name` (e.g. `chat-runs`) under this stack's prefix.
    pub fn config_queue(&self, name: &str) -> String {
        format!("{}-{name}", self.config.redis.queue_prefix)
    }

    /// Whether the queue `name` (e.g. `chat-runs`) has nothing to deliver and nothing in
    /// flight: every task pushed so far has been fetched and acknowledged.
    pub async fn queue_idle(&self, name: &str) -> bool {
        let queue = self.config_queue(name);
        let mut redis = self.redis().await;
        let waiting: (i64, i64) = redis::pipe()
            .cmd("LLEN")
            .arg(format!("{queue}:active"))
            .cmd("ZCARD")
            .arg(format!("{queue}:scheduled"))
            .query_async(&mut redis)
            .await
            .unwrap();
        if waiting != (0, 0) {
            return false;
        }
        let inflight: Vec<String> =
            redis::cmd("KEYS").arg(format!("{queue}:inflight:*")).query_async(&mut redis).await.unwrap();
        for key in inflight {
            let n: i64 = redis::cmd("SCARD").arg(&key).query_async(&mut redis).await.unwrap();
            if n > 0 {
                return false;
            }
        }
        true
    }

    /// The API's Prometheus text.
    pub async fn api_metrics(&self) -> String {
        self.http.get(format!("{}/metrics", self.metrics_url)).send().await.unwrap().text().await.unwrap()
    }

    pub async fn shutdown(mut self) {
        self.stop_worker().await;
        self.stop_api().await;
        self.fake.shutdown();
    }
}

/// Polls `f` until it returns `Some`, failing the test after `deadline`.
pub async fn wait_for<T, F, Fut>(deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < end, "condition not met within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The sum of the series `name{labels}` in a Prometheus text exposition (labels not given are
/// summed over, as `sum without` would), or `None` when no series matches.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, label_text) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let found: HashMap<&str, &str> = label_text
                .split("\",")
                .filter(|p| !p.is_empty())
                .filter_map(|p| p.split_once("=\"").map(|(k, v)| (k, v.trim_end_matches('"'))))
                .collect();
            labels.iter().all(|(k, v)| found.get(k) == Some(v)).then(|| value.parse().ok())?
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Assistant messages (answers) a run produced.
pub async fn answers(pool: &PgPool, run_id: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM messages WHERE run_id = $1::uuid AND role = 'assistant'")
        .bind(run_id)
        .fetch_one(pool)
        .await
        .unwrap()
}
