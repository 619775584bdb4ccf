//! The leases of the runs workers are answering, kept in Redis beside the lease in Postgres
//! (`{prefix}:run-leases`, a sorted set of run ids scored by expiry in Redis server
//! milliseconds). A worker renews both; when Postgres is unreachable only this one can be
//! renewed, so an answer waiting for Postgres to return is not taken over by another worker (nor
//! failed by the reconciler) once it does, and the provider is not paid twice for it.

use std::time::Duration;

use redis::{Script, aio::ConnectionManager};
use uuid::Uuid;

/// The sorted set of held leases: `{prefix}:run-leases`.
pub fn key(prefix: &str) -> String {
    format!("{prefix}:run-leases")
}

/// Holds (or extends) the lease of `run_id` for `lease`, and drops the leases that lapsed.
/// Expiry is reckoned on the Redis server's clock, so workers' clocks need not agree.
pub async fn hold(redis: &ConnectionManager, prefix: &str, run_id: Uuid, lease: Duration) -> redis::RedisResult<()> {
    let script = Script::new(
        r"local t = redis.call('TIME')
          local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
          redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
          redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
          return 1",
    );
    let mut conn = redis.clone();
    let _: i64 =
        script.key(key(prefix)).arg(run_id.to_string()).arg(lease.as_millis() as u64).invoke_async(&mut conn).await?;
    Ok(())
}

/// Gives the lease of `run_id` up (its attempt ended).
pub async fn release(redis: &ConnectionManager, prefix: &str, run_id: Uuid) -> redis::RedisResult<()> {
    let mut conn = redis.clone();
    redis::cmd("ZREM").arg(key(prefix)).arg(run_id.to_string()).query_async(&mut conn).await
}

/// The runs whose lease is held now.
pub async fn held(redis: &ConnectionManager, prefix: &str) -> redis::RedisResult<Vec<Uuid>> {
    let script = Script::new(
        r"local t = redis.call('TIME')
          local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
          return redis.call('ZRANGE', KEYS[1], now, '+inf', 'BYSCORE')",
    );
    let mut conn = redis.clone();
    let ids: Vec<String> = script.key(key(prefix)).invoke_async(&mut conn).await?;
    // A member this version cannot read is nobody's lease.
    Ok(ids.iter().filter_map(|id| id.parse().ok()).collect())
}

/// Whether the lease of `run_id` is held now.
pub async fn is_held(redis: &ConnectionManager, prefix: &str, run_id: Uuid) -> redis::RedisResult<bool> {
    let script = Script::new(
        r"local t = redis.call('TIME')
          local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
          local expires = redis.call('ZSCORE', KEYS[1], ARGV[1])
          if expires and tonumber(expires) > now then return 1 end
          return 0",
    );
    let mut conn = redis.clone();
    let held: i64 = script.key(key(prefix)).arg(run_id.to_string()).invoke_async(&mut conn).await?;
    Ok(held == 1)
}
