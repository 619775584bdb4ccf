//! The cancel signal: the API publishes a run's id on the pub/sub channel `{prefix}:cancel`;
//! every worker listens and the one running the run stops it. Pub/sub is fire-and-forget: the
//! Postgres cancel flag, re-checked by the lease renewer, covers a lost message.

use redis::aio::ConnectionManager;
use uuid::Uuid;

/// The pub/sub channel carrying cancel requests: `{prefix}:cancel`.
pub fn channel(prefix: &str) -> String {
    format!("{prefix}:cancel")
}

/// The message payload asking to cancel `run_id`.
pub fn payload(run_id: Uuid) -> String {
    run_id.to_string()
}

/// The run a payload asks to cancel; `None` for a malformed payload.
pub fn parse(payload: &str) -> Option<Uuid> {
    payload.parse().ok()
}

/// Asks every worker to cancel `run_id`.
pub async fn publish(redis: &ConnectionManager, prefix: &str, run_id: Uuid) -> redis::RedisResult<()> {
    let mut conn = redis.clone();
    let _receivers: i64 =
        redis::cmd("PUBLISH").arg(channel(prefix)).arg(payload(run_id)).query_async(&mut conn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_payload_reads_back_as_its_run() {
        let run_id = Uuid::now_v7();
        assert_eq!(parse(&payload(run_id)), Some(run_id));
        assert_eq!(parse("not a run"), None);
        assert_eq!(channel("chatq"), "chatq:cancel");
    }
}
