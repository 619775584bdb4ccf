//! The API's shared state, built once by [`AppState::new`].

use std::sync::Arc;

use anyhow::Context as _;
use chatq_common::{
    config::{Config, ExposeSecret},
    jobs::{ChatRunStorage, IngestStorage, Queues},
    pricing::Pricing,
    provider::Provider,
    retrieval::VectorCache,
};
use redis::aio::ConnectionManager;
use sqlx::PgPool;

use crate::{
    auth::{KeyCache, Revocations},
    hub::Hub,
    metrics::Metrics,
    stream_limits::StreamLimits,
    user_token::TokenKeys,
};

/// Everything handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// Postgres: the source of truth for everything clients see.
    pub pool: PgPool,
    /// Redis: readiness checks, rate-limit counters, cancel signals and breaker state.
    pub redis: ConnectionManager,
    /// Queue and key names of this stack.
    pub queues: Queues,
    /// The chat run queue, for pushing jobs after a submit commits.
    pub chat_queue: ChatRunStorage,
    /// The document ingestion queue, for pushing documents after an upload commits.
    pub ingest_queue: IngestStorage,
    /// Resolved API keys, cached briefly so most requests skip the lookup in Postgres.
    pub keys: Arc<KeyCache>,
    /// Prometheus handles.
    pub metrics: Arc<Metrics>,
    /// The provider, for embedding search queries.
    pub provider: Provider,
    /// Prices per model, for the cost records of search-query embeddings. Loaded once at start.
    pub pricing: Arc<Pricing>,
    /// Knowledge-base vectors held in memory for `/search`.
    pub vectors: Arc<VectorCache>,
    /// The process's event hub: one Redis reader fanning run events out to subscribers.
    pub hub: Hub,
    /// Keys sealing and opening user tokens, derived once from the token secrets; `None`
    /// without `CHATQ_TOKEN_SECRET` (then every user token is refused and none is issued).
    pub tokens: Option<Arc<TokenKeys>>,
    /// Per end-user revocations of user tokens, cached briefly.
    pub revocations: Arc<Revocations>,
    /// Open event streams per process, key and end user, against their caps.
    pub streams: Arc<StreamLimits>,
}

impl AppState {
    /// Loads pricing, connects to Postgres and Redis and builds the state.
    pub async fn new(config: Config) -> anyhow::Result<Self> {
        // A bad pricing file fails start-up before anything is connected.
        let pricing = load_pricing(&config)?;
        let (pool, redis) = chatq_common::connections::open(&config).await?;
        Self::build(config, pool, redis, pricing)
    }

    /// Builds the state on existing connections (tests use a per-test database).
    pub fn from_parts(config: Config, pool: PgPool, redis: ConnectionManager) -> anyhow::Result<Self> {
        let pricing = load_pricing(&config)?;
        Self::build(config, pool, redis, pricing)
    }

    fn build(config: Config, pool: PgPool, redis: ConnectionManager, pricing: Pricing) -> anyhow::Result<Self> {
        let queues = Queues::new(&config.redis.queue_prefix);
        let vectors = Arc::new(VectorCache::new(config.knowledge.ann));
        let chat_queue = chatq_common::jobs::storage(redis.clone(), &queues);
        let ingest_queue = chatq_common::jobs::storage(redis.clone(), &queues);
        let provider = Provider::new(&config).context("cannot build the provider client")?;
        let metrics = Arc::new(Metrics::new());
        let tokens = config.auth.token_secret.as_ref().map(|secret| {
            let previous = config.auth.token_secret_previous.as_ref().map(|p| p.expose_secret());
            Arc::new(TokenKeys::new(secret.expose_secret(), previous))
        });
        let streams = Arc::new(StreamLimits::new(&config.http));
        let hub = Hub::start(config.redis.url.expose_secret(), redis.clone(), queues.clone(), metrics.clone());
        Ok(Self {
            config: Arc::new(config),
            pool,
            redis,
            queues,
            chat_queue,
            ingest_queue,
            keys: Arc::new(KeyCache::default()),
            metrics,
            provider,
            pricing: Arc::new(pricing),
            vectors,
            hub,
            tokens,
            revocations: Arc::default(),
            streams,
        })
    }
}

fn load_pricing(config: &Config) -> anyhow::Result<Pricing> {
    Pricing::load(config.provider.pricing_file.as_deref()).context("cannot load pricing (CHATQ_PRICING_FILE)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bad_pricing_file_stops_start_up_naming_the_file_and_line() {
        let dir = std::env::temp_dir().join(format!("chatq-api-pricing-{}", uuid::Uuid::now_v7().simple()));
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
        let err = format!("{:#}", AppState::new(config).await.err().expect("start-up fails"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(err.contains("CHATQ_PRICING_FILE"), "{err}");
        assert!(err.contains(&format!("{file}:4:")), "{err}");
    }
}
