//! The provider circuit breaker's state, published by workers at `{prefix}:breaker` so every
//! API replica's `/readyz` can report `degraded`. A closed breaker is published by deleting the
//! key (and an expired key reads as closed), so a worker that dies with its breaker open does not
//! leave the API degraded for longer than the TTL.

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

/// The key holding the published state: `{prefix}:breaker`.
pub fn key(prefix: &str) -> String {
    format!("{prefix}:breaker")
}

/// Publishes `state`; a state other than closed expires after `ttl`.
pub async fn publish(
    redis: &ConnectionManager,
    prefix: &str,
    state: BreakerState,
    ttl: Duration,
) -> redis::RedisResult<()> {
    let mut conn = redis.clone();
    match state {
        BreakerState::Closed => redis::cmd("DEL").arg(key(prefix)).query_async(&mut conn).await,
        _ => {
            redis::cmd("SET")
                .arg(key(prefix))
                .arg(state.as_str())
                .arg("EX")
                .arg(ttl.as_secs())
                .query_async(&mut conn)
                .await
        }
    }
}

/// Reads the published state: closed when nothing is published, `None` for a name this version
/// does not know.
pub async fn read(redis: &ConnectionManager, prefix: &str) -> redis::RedisResult<Option<BreakerState>> {
    let mut conn = redis.clone();
    let name: Option<String> = redis::cmd("GET").arg(key(prefix)).query_async(&mut conn).await?;
    Ok(match name {
        None => Some(BreakerState::Closed),
        Some(name) => BreakerState::parse(&name),
    })
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
        assert_eq!(key("chatq"), "chatq:breaker");
    }
}
