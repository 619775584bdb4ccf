//! Job payloads and queue names. Payloads carry ids, not rows, and only ever change shape
//! backward-compatibly (`#[serde(default)]` on new fields, no renames): a payload that no longer
//! decodes kills an apalis worker.

use std::time::Duration;

use apalis_core::{backend::TaskSink, task::builder::TaskBuilder, task::task_id::TaskId};
use apalis_redis::{Config as QueueConfig, ConnectionManager, RedisStorage};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Generate the answer of one run (`chat-runs` queue).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChatRun {
    /// The run in Postgres; the worker reads everything else from there.
    pub run_id: Uuid,
}

/// The queue names of one chatq stack, all under `CHATQ_QUEUE_PREFIX`.
#[derive(Clone, Debug)]
pub struct Queues {
    prefix: String,
}

impl Queues {
    /// Queue names for the stack with this prefix.
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_string() }
    }

    /// The Redis key prefix of this stack (`{prefix}`), for keys that are not queues.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The chat run queue: `{prefix}-chat-runs`. No `:` in queue names (apalis pub/sub parsing).
    pub fn chat_runs(&self) -> String {
        format!("{}-chat-runs", self.prefix)
    }

    /// apalis settings of the chat queue. Identical on the API (push) and worker (fetch) sides.
    /// Heartbeat 5 s × 3 missed: a dead worker's prefetched jobs come back within ~15 s; Postgres
    /// leases decide who really works, so an early redelivery is harmless.
    pub fn chat_runs_config(&self, batch_size: usize) -> QueueConfig {
        QueueConfig::default()
            .queue(self.chat_runs())
            .heartbeat_interval(Duration::from_secs(5))
            .missed_heartbeats(3)
            .batch_size(batch_size.max(1))
            .idempotency_ttl(Some(Duration::from_secs(24 * 3600)))
    }

    /// The Redis stream carrying a run's live events: `{prefix}:run:{id}`.
    pub fn run_stream(&self, run_id: Uuid) -> String {
        format!("{}:run:{run_id}", self.prefix)
    }

    /// The pub/sub channel carrying cancel requests (payload: the run id): `{prefix}:cancel`.
    pub fn cancel_channel(&self) -> String {
        format!("{}:cancel", self.prefix)
    }
}

/// The apalis storage of the chat queue.
pub type ChatRunStorage = RedisStorage<ChatRun>;

/// A storage for pushing chat runs (the API side).
pub fn chat_run_storage(conn: ConnectionManager, queues: &Queues) -> ChatRunStorage {
    RedisStorage::new(conn).with_config(queues.chat_runs_config(16))
}

/// Pushing a job failed (Redis unreachable or erroring).
#[derive(Debug, thiserror::Error)]
#[error("cannot enqueue job: {0}")]
pub struct EnqueueError(String);

/// Pushes a chat run. `task_id` must be fresh for every re-push: apalis-redis silently drops a
/// push whose task id it still holds.
pub async fn push_chat_run(storage: &ChatRunStorage, run_id: Uuid, task_id: String) -> Result<(), EnqueueError> {
    let mut storage = storage.clone();
    let task = TaskBuilder::new(ChatRun { run_id }).task_id(TaskId::from_string(task_id)).build();
    storage.push_task(task).await.map_err(|e| EnqueueError(e.to_string()))
}
