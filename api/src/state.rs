//! The API's shared state, built once by [`AppState::new`].

use std::sync::Arc;

use chatq_common::{
    config::Config,
    jobs::{ChatRunStorage, IngestStorage, Queues},
    provider::Provider,
    retrieval::VectorCache,
};
use redis::aio::ConnectionManager;
use sqlx::PgPool;

use crate::{auth::KeyCache, hub::Hub, metrics::Metrics};

/// Everything handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// Postgres: the source of truth for everything clients see.
    pub pool: PgPool,
    /// Redis, for readiness checks and (later) live events and rate limits.
    pub redis: ConnectionManager,
    /// Queue and key names of this stack.
    pub queues: Queues,
    /// The chat run queue, for pushing jobs after a submit commits.
    pub chat_queue: ChatRunStorage,
    /// Resolved API keys.
    pub keys: Arc<KeyCache>,
    /// Prometheus handles.
    pub metrics: Arc<Metrics>,
    /// Issue 4: the document ingestion queue.
    pub ingest_queue: IngestStorage,
    /// Issue 4: the provider, for embedding search queries.
    pub provider: Provider,
    /// Issue 4: knowledge-base vectors held in memory for `/search`.
    pub vectors: Arc<VectorCache>,
    // issue 3: live streaming
    /// The process's event hub: one Redis reader fanning run events out to subscribers.
    pub hub: Hub,
}

impl AppState {
    /// Connects to Postgres and Redis and builds the state.
    pub async fn new(config: Config) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let pool = chatq_common::db::connect(&config, config.db_max_connections)
            .await
            .context("cannot connect to Postgres (DATABASE_URL)")?;
        let redis = chatq_common::redis_conn::connect(config.redis_url.expose())
            .await
            .context("cannot connect to Redis (REDIS_URL)")?;
        Ok(Self::from_parts(config, pool, redis))
    }

    /// Builds the state on existing connections (tests use a per-test database).
    pub fn from_parts(config: Config, pool: PgPool, redis: ConnectionManager) -> Self {
        let queues = Queues::new(&config.queue_prefix);
        let chat_queue = chatq_common::jobs::chat_run_storage(redis.clone(), &queues);
        let ingest_queue = chatq_common::jobs::ingest_storage(redis.clone(), &queues);
        // Building a reqwest client only fails when the TLS backend cannot initialise.
        let provider = Provider::new(&config).expect("the provider HTTP client builds");
        let metrics = Arc::new(Metrics::new());
        let hub = Hub::start(config.redis_url.expose(), redis.clone(), queues.clone(), metrics.clone());
        Self {
            config: Arc::new(config),
            pool,
            redis,
            queues,
            chat_queue,
            keys: Arc::new(KeyCache::default()),
            ingest_queue,
            provider,
            vectors: Arc::default(),
            metrics,
            hub,
        }
    }
}
