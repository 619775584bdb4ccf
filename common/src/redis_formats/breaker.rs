//! The circuit breakers' states, one per chat upstream, published by workers at
//! `{prefix}:breaker:{upstream}` (the value is the state's name: `half_open` or `open`) so every
//! API replica's `/readyz` can report each upstream and `degraded`. A closed breaker is published
//! by deleting the key (and an expired key reads as closed), so a worker that dies with its
//! breaker open does not leave the API degraded for longer than the TTL.

use std::time::Duration;

use redis::aio::ConnectionManager;

/// The state of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumString, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// One probe is in flight.
    HalfOpen,
    /// Calls wait.
    Open,
}

impl BreakerState {
    /// The name published to Redis and shown by `/readyz`: `closed`, `half_open`, `open`.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Parses a published name.
    pub fn parse(name: &str) -> Option<Self> {
        name.parse().ok()
    }

    /// Value of the `chatq_provider_breaker_state` gauge: 0 closed, 1 half-open, 2 open.
    pub fn as_gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

/// The key holding the published state of `upstream`'s breaker: `{prefix}:breaker:{upstream}`.
pub fn key(prefix: &str, upstream: &str) -> String {
    format!("{prefix}:breaker:{upstream}")
}

/// Publishes the state of `upstream`'s breaker; a state other than closed expires after `ttl`.
pub async fn publish(
    redis: &ConnectionManager,
    prefix: &str,
    upstream: &str,
    state: BreakerState,
    ttl: Duration,
) -> redis::RedisResult<()> {
    let mut conn = redis.clone();
    let key = key(prefix, upstream);
    match state {
        BreakerState::Closed => redis::cmd("DEL").arg(key).query_async(&mut conn).await,
        _ => redis::cmd("SET").arg(key).arg(state.as_str()).arg("EX").arg(ttl.as_secs()).query_async(&mut conn).await,
    }
}

/// Reads the published states of `upstreams`' breakers in one round trip, in the same order:
/// closed when nothing is published, `None` for a name this version does not know.
pub async fn read_all(
    redis: &ConnectionManager,
    prefix: &str,
    upstreams: &[&str],
) -> redis::RedisResult<Vec<Option<BreakerState>>> {
    if upstreams.is_empty() {
        return Ok(Vec::new());
    }
    let mut conn = redis.clone();
    let mut cmd = redis::cmd("MGET");
    for u in upstreams {
        cmd.arg(key(prefix, u));
    }
    let names: Vec<Option<String>> = cmd.query_async(&mut conn).await?;
    Ok(names.into_iter().map(|n| n.map_or(Some(BreakerState::Closed), |n| BreakerState::parse(&n))).collect())
}

#[cfg(test)]
mod tests {
    use strum::VariantArray;

    use super::*;

    #[test]
    fn every_state_reads_back_by_its_name() {
        for &state in BreakerState::VARIANTS {
            assert_eq!(BreakerState::parse(state.as_str()), Some(state));
        }
        assert_eq!(BreakerState::HalfOpen.as_str(), "half_open");
        assert_eq!(BreakerState::parse("ajar"), None);
        assert_eq!(key("chatq", "openai"), "chatq:breaker:openai");
    }

    #[tokio::test]
    async fn each_upstream_has_its_own_published_state_and_closed_deletes_it() {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let redis = crate::redis_conn::connect(&url).await.expect("redis reachable");
        let prefix = format!("t{}", uuid::Uuid::now_v7().simple());
        let ttl = Duration::from_secs(60);
        publish(&redis, &prefix, "a", BreakerState::Open, ttl).await.unwrap();
        publish(&redis, &prefix, "b", BreakerState::HalfOpen, ttl).await.unwrap();
        let states = read_all(&redis, &prefix, &["a", "b", "c"]).await.unwrap();
        assert_eq!(states, [Some(BreakerState::Open), Some(BreakerState::HalfOpen), Some(BreakerState::Closed)]);
        let mut conn = redis.clone();
        let raw: Option<String> = redis::cmd("GET").arg(key(&prefix, "a")).query_async(&mut conn).await.unwrap();
        assert_eq!(raw.as_deref(), Some("open"), "the value is the state's name");
        publish(&redis, &prefix, "a", BreakerState::Closed, ttl).await.unwrap();
        let exists: bool = redis::cmd("EXISTS").arg(key(&prefix, "a")).query_async(&mut conn).await.unwrap();
        assert!(!exists, "closed is published by deleting the key");
        publish(&redis, &prefix, "b", BreakerState::Closed, ttl).await.unwrap();
    }
}
