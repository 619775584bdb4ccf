//! Opening the Postgres pool and the Redis connection a process works on.

use redis::aio::ConnectionManager;
use sqlx::PgPool;

use crate::config::{Config, ExposeSecret};

/// Why a process could not reach its stores; the message names the variable to check.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Postgres refused or did not answer.
    #[error("cannot connect to Postgres (DATABASE_URL)")]
    Postgres(#[source] sqlx::Error),
    /// Redis refused or did not answer.
    #[error("cannot connect to Redis (REDIS_URL)")]
    Redis(#[source] redis::RedisError),
}

/// Connects to Postgres (a pool of `CHATQ_DB_MAX_CONNECTIONS`) and to Redis.
pub async fn open(config: &Config) -> Result<(PgPool, ConnectionManager), ConnectError> {
    let pool = crate::db::connect(config, config.database.max_connections).await.map_err(ConnectError::Postgres)?;
    let redis = crate::redis_conn::connect(config.redis.url.expose_secret()).await.map_err(ConnectError::Redis)?;
    Ok((pool, redis))
}
