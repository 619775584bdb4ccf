//! Redis connections with production timeouts.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// A reconnecting, multiplexed connection. The response timeout is 5 s, not redis-rs's 500 ms
/// default, which under load kills apalis workers (apalis-redis#76).
pub async fn connect(url: &str) -> redis::RedisResult<ConnectionManager> {
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(3);
    client.get_connection_manager_with_config(config).await
}
