#![doc = include_str!("../README.md")]

pub mod breaker;
pub mod cancel;
pub mod ingest;
pub mod jobs;
pub mod metrics;
pub mod pipeline;
pub mod reconciler;
pub mod retry;
pub mod scrape;
pub mod upstream;

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, atomic::AtomicUsize},
};

use anyhow::Context as _;
use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use chatq_common::{
    config::{Config, ExposeSecret},
    jobs::Queues,
    pricing::Pricing,
    provider::Provider,
    redis_formats,
    retrieval::VectorCache,
};
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
    /// Postgres: runs, events, documents, usage.
    pub pool: PgPool,
    /// Redis: queues, live event streams, breaker state.
    pub redis: ConnectionManager,
    /// Queue and key names of this stack.
    pub queues: Queues,
    /// The OpenAI-compatible provider of `OPENAI_BASE_URL`: embeddings and moderation.
    pub provider: Provider,
    /// The chat upstreams, each with its client and circuit breaker.
    pub upstreams: Arc<upstream::ChatUpstreams>,
    /// Prices per model, for cost records. Loaded once at start.
    pub pricing: Arc<Pricing>,
    /// Run event output: live to Redis, batched to Postgres.
    pub sink: EventSink,
    /// Prometheus handles.
    pub metrics: Arc<Metrics>,
    /// Unique per process start: lease owner and part of apalis worker names.
    pub worker_id: String,
    /// Queue workers restarted after an error, for logs.
    pub worker_restarts: Arc<AtomicUsize>,
    /// When the documents gauge was last read, so scrapes query Postgres at most every few seconds.
    pub scrape: Arc<scrape::ScrapeCache>,
    /// Cancelled when the shutdown grace has passed: attempts still running give their run
    /// back to the queue so another worker restarts it at once.
    pub release: CancellationToken,
    /// Knowledge-base vectors held in memory for retrieval.
    pub vectors: Arc<VectorCache>,
    /// Cancel signals of the runs this process works on.
    pub cancels: Arc<cancel::Cancels>,
}

impl WorkerCtx {
    /// Loads pricing, connects to Postgres and Redis and starts the event writer.
    pub async fn new(config: Config) -> anyhow::Result<Self> {
        // A bad pricing file fails start-up before anything is connected.
        let pricing = load_pricing(&config)?;
        let (pool, redis) = chatq_common::connections::open(&config).await?;
        Self::build(config, pool, redis, pricing)
    }

    /// Builds the context on existing connections (tests use a per-test database).
    pub fn from_parts(config: Config, pool: PgPool, redis: ConnectionManager) -> anyhow::Result<Self> {
        let pricing = load_pricing(&config)?;
        Self::build(config, pool, redis, pricing)
    }

    fn build(config: Config, pool: PgPool, redis: ConnectionManager, pricing: Pricing) -> anyhow::Result<Self> {
        let provider = Provider::new(&config).context("cannot build the provider client")?;
        let queues = Queues::new(&config.redis.queue_prefix);
        let upstreams =
            Arc::new(upstream::ChatUpstreams::new(&config).context("cannot build the chat upstreams' clients")?);
        let vectors = Arc::new(VectorCache::new(config.knowledge.ann));
        let metrics = Metrics::with_max_assistants(config.worker.metrics_max_assistants);
        let queue_names: Vec<String> = crate::jobs::QUEUES.iter().map(|q| q.name(&queues)).collect();
        let upstream_names: Vec<&str> = upstreams.all().iter().map(|u| u.name.as_str()).collect();
        metrics.init_known_series(&queue_names, &pricing.models(), &upstream_names);
        let metrics = Arc::new(metrics);
        let sink = EventSink::start(
            pool.clone(),
            redis.clone(),
            queues.clone(),
            config.streaming.event_flush_interval,
            config.streaming.run_stream_ttl,
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
            upstreams,
            pricing: Arc::new(pricing),
            sink,
            metrics,
            worker_id,
            worker_restarts: Arc::new(AtomicUsize::new(0)),
            scrape: Arc::new(scrape::ScrapeCache::default()),
            release: CancellationToken::new(),
            vectors,
            cancels: Arc::new(cancel::Cancels::default()),
        })
    }
}

fn load_pricing(config: &Config) -> anyhow::Result<Pricing> {
    Pricing::load(config.provider.pricing_file.as_deref()).context("cannot load pricing (CHATQ_PRICING_FILE)")
}

impl WorkerCtx {
    /// Exports a state change of `upstream`'s breaker (gauge, and Redis for the API's
    /// `/readyz`).
    pub async fn breaker_changed(&self, upstream: &upstream::ChatUpstream) {
        let state = upstream.breaker.state();
        self.metrics.breaker_state.with_label_values(&[&upstream.name]).set(state.as_gauge());
        tracing::warn!(state = state.as_str(), upstream = %upstream.name, "provider circuit breaker changed state");
        // Outlives the cool-down so a worker that dies with the breaker open cannot leave the
        // API degraded for good.
        let ttl = self.config.provider.breaker_cooldown + std::time::Duration::from_secs(60);
        let result =
            redis_formats::breaker::publish(&self.redis, self.queues.prefix(), &upstream.name, state, ttl).await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot publish the breaker state");
        }
    }

    /// A storage for pushing chat runs (retries, reconciler).
    pub fn chat_queue(&self) -> chatq_common::jobs::ChatRunStorage {
        chatq_common::jobs::storage(self.redis.clone(), &self.queues)
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
    let listen = config.worker.listen;
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
        ctx.config.redis.url.expose_secret().to_string(),
        redis_formats::cancel::channel(ctx.queues.prefix()),
        stop.clone(),
    ));
    let monitor_stop = stop.clone();
    let (release, grace) = (ctx.release.clone(), ctx.config.worker.shutdown_grace);
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
    let pg = chatq_common::db::ping(&ctx.pool).await.is_ok();
    let mut conn = ctx.redis.clone();
    let redis = redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok();
    let body = serde_json::json!({
        "status": if pg && redis { "ready" } else { "unavailable" },
        "postgres": if pg { "ok" } else { "error" },
        "redis": if redis { "ok" } else { "error" },
    });
    (if pg && redis { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, axum::Json(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bad_pricing_file_stops_start_up_naming_the_file_and_line() {
        let dir = std::env::temp_dir().join(format!("chatq-worker-pricing-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pricing.toml");
        std::fs::write(&path, "[[model]]\nname = 'm'\neffective = '2026-01-01'\ninput = 'cheap'\n").unwrap();
        let file = path.display().to_string();
        // Nothing listens on port 1: were pricing not checked first, the error would be the connection.
        let config = Config::from_lookup(|k| match k {
            "CHATQ_PRICING_FILE" => Some(file.clone()),
            "DATABASE_URL" => Some("postgres://postgres@127.0.0.1:1/none".into()),
            "REDIS_URL" => Some("redis://127.0.0.1:1".into()),
            _ => None,
        })
        .unwrap();
        let err = format!("{:#}", WorkerCtx::new(config).await.err().expect("start-up fails"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(err.contains("CHATQ_PRICING_FILE"), "{err}");
        assert!(err.contains(&format!("{file}:4:")), "{err}");
    }
}
