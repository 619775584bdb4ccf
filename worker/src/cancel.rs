//! Cancel signals: the API flags the run in Postgres and publishes its id
//! ([`chatq_common::redis_formats::cancel`]); one pub/sub connection per worker process wakes
//! the attempt running it, which stops the upstream stream at once. The lease renewer re-checks the flag, so a lost
//! message delays a cancel by at most a renewal period.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use backon::{ConstantBuilder, Retryable as _};
use chatq_common::redis_formats;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Runs of this process that can be cancelled.
#[derive(Default)]
pub struct Cancels {
    runs: Mutex<HashMap<Uuid, (CancellationToken, usize)>>,
}

/// Unregisters its run when dropped.
pub struct Registration {
    cancels: Arc<Cancels>,
    run_id: Uuid,
    /// Cancelled when a cancel of the run arrives.
    pub token: CancellationToken,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut runs = self.cancels.runs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, n)) = runs.get_mut(&self.run_id) {
            *n -= 1;
            if *n == 0 {
                runs.remove(&self.run_id);
            }
        }
    }
}

impl Cancels {
    /// Watches `run_id` for cancel signals (register before claiming the run).
    pub fn register(self: &Arc<Self>, run_id: Uuid) -> Registration {
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        let entry = runs.entry(run_id).or_insert_with(|| (CancellationToken::new(), 0));
        entry.1 += 1;
        Registration { cancels: self.clone(), run_id, token: entry.0.clone() }
    }

    /// Cancels the attempt of `run_id` running here, if any.
    pub fn cancel(&self, run_id: Uuid) {
        let runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((token, _)) = runs.get(&run_id) {
            token.cancel();
        }
    }
}

/// Listens on the cancel channel until `stop`, reconnecting half a second after each error.
pub async fn listen(cancels: Arc<Cancels>, redis_url: String, channel: String, stop: CancellationToken) {
    let session = || subscribe_until(&cancels, &redis_url, &channel, &stop);
    let reconnecting = session
        .retry(ConstantBuilder::new().with_delay(Duration::from_millis(500)).without_max_times())
        .notify(|e, _| tracing::warn!(error = %e, "cancel listener disconnected; reconnecting"));
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = reconnecting => {}
    }
}

/// One pub/sub session: cancels the runs named on `channel` until `stop` (`Ok`) or until the
/// connection fails.
async fn subscribe_until(
    cancels: &Cancels,
    redis_url: &str,
    channel: &str,
    stop: &CancellationToken,
) -> redis::RedisResult<()> {
    let client = redis::Client::open(redis_url)?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    let mut messages = pubsub.on_message();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            msg = messages.next() => match msg {
                Some(msg) => {
                    if let Some(run_id) = redis_formats::cancel::parse(&msg.get_payload::<String>().unwrap_or_default()) {
                        cancels.cancel(run_id);
                    }
                }
                None => return Err(redis::RedisError::from((redis::ErrorKind::Io, "pub/sub connection closed"))),
            }
        }
    }
}
