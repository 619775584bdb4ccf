//! The worker side alone per test: a fresh database (`#[sqlx::test]`), the shared Redis under a
//! unique queue prefix, the fake OpenAI server and runs stored the way the API stores them.
//! Tests drive the jobs directly ([`Setup::ctx`]) or start an in-process worker.

use chatq_common::config::ExposeSecret;
use chatq_common::domain::ModerationMode;
use std::{collections::HashMap, future::Future, time::Duration};

use chatq_common::{config::Config, db, keys::Role};
use chatq_fake_openai::{FakeConfig, FakeHandle};
use chatq_worker::WorkerCtx;
use sqlx::PgPool;
use uuid::Uuid;

pub struct Setup {
    pub pool: PgPool,
    pub config: Config,
    pub fake: FakeHandle,
    /// The client key the runs are submitted with.
    pub key_id: Uuid,
    /// The assistant the runs are for.
    pub assistant_id: Uuid,
}

impl Setup {
    pub async fn new(pool: PgPool) -> Self {
        Self::with_env(pool, &[]).await
    }

    /// A setup whose configuration also has the variables `extra`.
    pub async fn with_env(pool: PgPool, extra: &[(&str, &str)]) -> Self {
        chatq_common::telemetry::init("test");
        let (_, fake) = chatq_fake_openai::spawn(FakeConfig::default()).await.expect("fake server starts");
        let prefix = format!("t{}", Uuid::now_v7().simple());
        let mut env: HashMap<String, String> = HashMap::from([
            ("OPENAI_BASE_URL".into(), fake.base_url()),
            ("OPENAI_API_KEY".into(), "sk-test".into()),
            ("CHATQ_QUEUE_PREFIX".into(), prefix),
            ("CHATQ_TOKEN_SECRET".into(), "test-secret-test-secret-test-secret-0123".into()),
            ("CHATQ_CHAT_POLL_MS".into(), "10".into()),
            ("CHATQ_EVENT_FLUSH_MS".into(), "20".into()),
            ("CHATQ_DB_MAX_CONNECTIONS".into(), "5".into()),
        ]);
        if let Ok(url) = std::env::var("REDIS_URL") {
            env.insert("REDIS_URL".into(), url);
        }
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let config = Config::from_lookup(|k| env.get(k).cloned()).expect("valid test config");
        let (_, key) = db::keys::create(&pool, Role::Client, "test-client").await.unwrap();
        let fields = db::assistants::AssistantFields {
            name: "Lion".into(),
            instructions: "You are the zoo's lion.".into(),
            model: "gpt-4o-mini".into(),
            fallback_models: vec![],
            temperature: None,
            max_output_tokens: None,
            moderation: ModerationMode::Off,
            retention_days: None,
            metadata: serde_json::json!({}),
            knowledge_base_ids: vec![],
        };
        let assistant = db::assistants::create(&pool, &fields).await.unwrap();
        Setup { pool, config, fake, key_id: key.id, assistant_id: assistant.id }
    }

    pub async fn redis(&self) -> redis::aio::ConnectionManager {
        chatq_common::redis_conn::connect(self.config.redis.url.expose_secret()).await.expect("redis reachable")
    }

    /// A worker context on this setup, as a worker process would build it.
    pub async fn ctx(&self) -> WorkerCtx {
        WorkerCtx::from_parts(self.config.clone(), self.pool.clone(), self.redis().await).unwrap()
    }

    /// The full name of the queue `name` (e.g. `chat-runs`) under this setup's prefix.
    pub fn config_queue(&self, name: &str) -> String {
        format!("{}-{name}", self.config.redis.queue_prefix)
    }

    /// A new thread of `user` with one queued run, stored as the API stores it but not pushed.
    pub async fn submit(&self, user: &str, input: &str) -> Uuid {
        let thread = db::threads::create(
            &self.pool,
            self.key_id,
            Some(user),
            Some(self.assistant_id),
            None,
            &serde_json::json!({}),
        )
        .await
        .unwrap();
        let run = db::runs::submit(
            &self.pool,
            &db::runs::NewRun {
                thread_id: thread.id,
                assistant_id: self.assistant_id,
                model: "gpt-4o-mini",
                fallback_models: &[],
                api_key_id: self.key_id,
                input,
                client_message_id: None,
                idempotency_key: None,
                idempotency_user: None,
            },
        )
        .await
        .unwrap();
        run.id
    }

    /// Polls the run until it is final.
    pub async fn wait_run(&self, run_id: Uuid) -> db::runs::Run {
        wait_for(Duration::from_secs(20), || async {
            let run = db::runs::get(&self.pool, run_id).await.unwrap().unwrap();
            run.status.is_terminal().then_some(run)
        })
        .await
    }

    pub fn shutdown(self) {
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

/// Rows `sql` counts for `run` (bound as `$1`).
pub async fn count(pool: &PgPool, sql: &str, run: Uuid) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string())).bind(run).fetch_one(pool).await.unwrap()
}

/// A TCP proxy between a worker's pool and Postgres that a test cuts to stage an outage: every
/// open connection is dropped and new ones are refused (the port is closed), as when Postgres is
/// stopped, until [`PgProxy::restore`] opens the same port again.
pub struct PgProxy {
    addr: std::net::SocketAddr,
    up: tokio::sync::watch::Sender<bool>,
}

impl PgProxy {
    /// A proxy on a free local port to the Postgres `pool` connects to.
    pub async fn start(pool: &PgPool) -> Self {
        let options = pool.connect_options();
        let upstream = format!("{}:{}", options.get_host(), options.get_port());
        let listener = Self::listen("127.0.0.1:0".parse().unwrap());
        let addr = listener.local_addr().unwrap();
        let (up, watch) = tokio::sync::watch::channel(true);
        tokio::spawn(Self::serve(listener, addr, upstream, watch));
        Self { addr, up }
    }

    /// A pool on the same database as `pool`, through this proxy. Acquiring gives up after a
    /// second, so a cut shows as errors at once.
    pub async fn pool(&self, pool: &PgPool) -> PgPool {
        let options = (*pool.connect_options()).clone().host("127.0.0.1").port(self.addr.port());
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(5)
            .acquire_timeout(Duration::from_secs(1))
            .connect_with(options)
            .await
            .expect("postgres reachable through the proxy")
    }

    /// Drops every connection and closes the port.
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    /// Opens the port again.
    pub fn restore(&self) {
        self.up.send_replace(true);
    }

    fn listen(addr: std::net::SocketAddr) -> tokio::net::TcpListener {
        // SO_REUSEADDR: the port is bound again while the dropped connections are in TIME_WAIT.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(addr).expect("the proxy's port is free");
        socket.listen(64).unwrap()
    }

    async fn serve(
        mut listener: tokio::net::TcpListener,
        addr: std::net::SocketAddr,
        upstream: String,
        mut up: tokio::sync::watch::Receiver<bool>,
    ) {
        // Each connection watches for the cut on its own receiver.
        let conns = up.clone();
        loop {
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut client, _)) = accepted else { continue };
                        let (upstream, mut down) = (upstream.clone(), conns.clone());
                        tokio::spawn(async move {
                            let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else { return };
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                                _ = down.wait_for(|up| !*up) => {}
                            }
                        });
                    }
                    cut = up.wait_for(|up| !*up) => {
                        if cut.is_err() {
                            return;
                        }
                        break;
                    }
                }
            }
            drop(listener);
            if up.wait_for(|up| *up).await.is_err() {
                return;
            }
            listener = Self::listen(addr);
        }
    }
}
