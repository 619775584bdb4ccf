#![doc = include_str!("../README.md")]

pub mod breaker;
pub mod cancel;
pub mod extract;
pub mod jobs;
pub mod metrics;
pub mod pipeline;
pub mod reconciler;
pub mod retry;
pub mod scrape;

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, atomic::AtomicUsize},
};

use anyhow::Context as _;
use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use chatq_common::{config::Config, jobs::Queues, pricing::Pricing, provider::Provider, redis_formats};
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{metrics::Metrics, pipeline::EventSink};

/// Everything jobs share. Cheap to clone.
#[derive(Clone)]
pub struct WorkerCtx {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// Postgres.
    pub pool: PgPool,
    /// Redis (queues, live events).
    pub redis: ConnectionManager,
    /// Queue and key names of this stack.
    pub queues: Queues,
    /// The OpenAI-compatible provider.
    pub provider: Provider,
    /// Prices for cost records.
    pub pricing: Arc<Pricing>,
    /// Live + batched event output.
    pub sink: EventSink,
    /// Prometheus handles.
    pub metrics: Arc<Metrics>,
    /// Unique per process start: lease owner and part of apalis worker names.
    pub worker_id: String,
    /// Queue workers restarted after an error, for logs.
    pub worker_restarts: Arc<AtomicUsize>,
    /// When scrape-time gauges were last read.
    pub scrape: Arc<scrape::ScrapeCache>,
    /// Cancelled when the shutdown grace has passed: attempts still running give their run
    /// back to the queue so another worker restarts it at once.
    pub release: CancellationToken,
    /// The provider's circuit breaker.
    pub breaker: Arc<breaker::Breaker>,
    /// Issue 4: knowledge-base vectors held in memory for retrieval.
    pub vectors: Arc<chatq_common::retrieval::VectorCache>,
    // issue 3: live streaming
    /// Cancel signals of the runs this process works on.
    pub cancels: Arc<cancel::Cancels>,
}

impl WorkerCtx {
    /// Connects to Postgres and Redis, loads pricing and starts the event writer.
    pub async fn new(config: Config) -> anyhow::Result<Self> {
        let pool = chatq_common::db::connect(&config, config.db_max_connections)
            .await
            .context("cannot connect to Postgres (DATABASE_URL)")?;
        let redis = chatq_common::redis_conn::connect(config.redis_url.expose())
            .await
            .context("cannot connect to Redis (REDIS_URL)")?;
        Self::from_parts(config, pool, redis)
    }

    /// Builds the context on existing connections (tests use a per-test database).
    pub fn from_parts(config: Config, pool: PgPool, redis: ConnectionManager) -> anyhow::Result<Self> {
        let pricing =
            Pricing::load(config.pricing_file.as_deref()).context("cannot load pricing (CHATQ_PRICING_FILE)")?;
        let provider = Provider::new(&config).context("cannot build the provider client")?;
        let queues = Queues::new(&config.queue_prefix);
        let breaker = Arc::new(breaker::Breaker::new(config.breaker_failures, config.breaker_cooldown));
        let metrics = Arc::new(Metrics::new());
        let sink = EventSink::start(
            pool.clone(),
            redis.clone(),
            queues.clone(),
            config.event_flush_interval,
            config.run_stream_ttl,
            metrics.clone(),
        );
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
        let worker_id = format!("{host}-{}-{}", std::process::id(), &uuid::Uuid::now_v7().simple().to_string()[20..]);
        Ok(Self {
            config: Arc::new(config),
            pool,
            redis,
            queues,
            provider,
            pricing: Arc::new(pricing),
            sink,
            metrics,
            worker_id,
            worker_restarts: Arc::new(AtomicUsize::new(0)),
            scrape: Arc::new(scrape::ScrapeCache::default()),
            release: CancellationToken::new(),
            breaker,
            vectors: Arc::default(),
            cancels: Arc::new(cancel::Cancels::default()),
        })
    }
}

impl WorkerCtx {
    /// Exports a breaker state change (gauge, and Redis for the API's `/readyz`).
    pub async fn breaker_changed(&self) {
        let state = self.breaker.state();
        self.metrics.breaker_state.set(state.as_gauge());
        tracing::warn!(state = state.as_str(), "provider circuit breaker changed state");
        // Outlives the cool-down so a worker that dies with the breaker open cannot leave the
        // API degraded for good.
        let ttl = self.config.breaker_cooldown + std::time::Duration::from_secs(60);
        let result = redis_formats::breaker::publish(&self.redis, self.queues.prefix(), state, ttl).await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot publish the breaker state");
        }
    }

    /// A storage for pushing chat runs (retries, reconciler).
    pub fn chat_queue(&self) -> chatq_common::jobs::ChatRunStorage {
        chatq_common::jobs::chat_run_storage(self.redis.clone(), &self.queues)
    }
}

/// A worker running in the background (tests and embedding).
pub struct WorkerHandle {
    /// Address of the health and metrics server.
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl WorkerHandle {
    /// Stops fetching, lets in-flight jobs finish (bounded) and waits for the worker to exit.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await.context("worker task panicked")?
    }

    /// Stops the worker abruptly, as a crash would (in-flight runs keep their leases).
    pub fn abort(self) {
        self.task.abort();
    }
}

/// Starts a worker whose health server listens on `listener`.
pub async fn start(config: Config, listener: TcpListener) -> anyhow::Result<WorkerHandle> {
    start_with(WorkerCtx::new(config).await?, listener)
}

/// Starts a worker on an existing context.
pub fn start_with(ctx: WorkerCtx, listener: TcpListener) -> anyhow::Result<WorkerHandle> {
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let task = tokio::spawn(run_with(ctx, listener, stop.clone().cancelled_owned()));
    Ok(WorkerHandle { addr, stop, task })
}

/// Connects, binds `CHATQ_WORKER_LISTEN` and works until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let listen = config.worker_listen;
    let ctx = WorkerCtx::new(config).await?;
    let listener =
        TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen} (CHATQ_WORKER_LISTEN)"))?;
    run_with(ctx, listener, shutdown).await
}

async fn run_with(
    ctx: WorkerCtx,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    tracing::info!(worker.id = %ctx.worker_id, health = %listener.local_addr()?, "chatq worker starting");
    let stop = CancellationToken::new();
    let http = tokio::spawn({
        let app = health_router(ctx.clone());
        let stop = stop.clone();
        async move { axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await }
    });
    let reconciler = tokio::spawn(reconciler::run(ctx.clone(), stop.clone()));
    let cancel_listener = tokio::spawn(cancel::listen(
        ctx.cancels.clone(),
        ctx.config.redis_url.expose().to_string(),
        redis_formats::cancel::channel(ctx.queues.prefix()),
        stop.clone(),
    ));
    let monitor_stop = stop.clone();
    let (release, grace) = (ctx.release.clone(), ctx.config.shutdown_grace);
    let signal = async move {
        shutdown.await;
        // Stop fetching now; runs in flight get `grace` to finish, then release their leases.
        tracing::info!(grace_secs = grace.as_secs(), "shutting down: no new runs; in-flight runs may finish");
        monitor_stop.cancel();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            release.cancel();
        });
        Ok(())
    };
    let result = jobs::monitor(&ctx).run_with_signal(signal).await;
    stop.cancel();
    ctx.sink.flush().await;
    let _ = reconciler.await;
    let _ = cancel_listener.await;
    let _ = http.await;
    tracing::info!(worker.id = %ctx.worker_id, "chatq worker stopped");
    result.map_err(|e| anyhow::anyhow!("queue monitor failed: {e}"))
}

fn health_router(ctx: WorkerCtx) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(|State(ctx): State<WorkerCtx>| async move {
                scrape::refresh(&ctx).await;
                (
                    [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    chatq_common::metrics::encode(&ctx.metrics.registry),
                )
            }),
        )
        .with_state(ctx)
}

async fn readyz(State(ctx): State<WorkerCtx>) -> impl IntoResponse {
    let pg = sqlx::query("SELECT 1").execute(&ctx.pool).await.is_ok();
    let mut conn = ctx.redis.clone();
    let redis = redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok();
    let body = serde_json::json!({
        "status": if pg && redis { "ready" } else { "unavailable" },
        "postgres": if pg { "ok" } else { "error" },
        "redis": if redis { "ok" } else { "error" },
    });
    (if pg && redis { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, axum::Json(body))
}
