//! Job payloads and queue names. Payloads carry ids, not rows, and only ever change shape
//! backward-compatibly (`#[serde(default)]` on new fields, no renames): a payload that no longer
//! decodes kills an apalis worker.

use std::time::Duration;

use apalis_core::{backend::TaskSink, task::builder::TaskBuilder, task::task_id::TaskId};
use apalis_redis::{Config as QueueConfig, ConnectionManager, RedisStorage};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use uuid::Uuid;

/// Generate the answer of one run (`chat-runs` queue).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChatRun {
    /// The run in Postgres; the worker reads everything else from there.
    pub run_id: Uuid,
}

/// Run the maintenance cleanup (`maintenance` queue): retention, event and document purges,
/// Redis housekeeping. Pushed by the cron tick of every worker (task id `cleanup-{tick}`, so
/// replicas deduplicate) and by `POST /v1/admin/cleanup`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Cleanup {
    /// The `maintenance_jobs` row to run; `None` for a cron tick (the handler creates it).
    #[serde(default)]
    pub job_id: Option<Uuid>,
    /// Count what would be deleted, delete nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// Extract, chunk, embed and index one uploaded document (`ingest-docs` queue).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct IngestDocument {
    /// The document in Postgres; its bytes are in `document_blobs`.
    pub document_id: Uuid,
}

/// Send one webhook delivery (`webhooks` queue): one attempt, after which the handler records
/// it and pushes the next attempt itself when the delivery is to be retried.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WebhookDelivery {
    /// The `webhook_deliveries` row; its state in Postgres decides whether anything is sent.
    pub delivery_id: Uuid,
}

/// A job payload with its own queue. Each payload declares here, once, its queue name and its
/// apalis settings, so the pushing side (API, reconciler, cron tick) and the fetching side
/// (worker) cannot disagree.
pub trait QueueJob: Serialize + DeserializeOwned + Clone + Send + Sync + Unpin + 'static {
    /// The queue name under the stack prefix: `{prefix}-{QUEUE}`. No `:` in it (apalis pub/sub
    /// parsing splits channel names on `:`).
    const QUEUE: &'static str;
    /// How many jobs a storage used only for pushing asks for (apalis reads it on fetch only).
    const PUSH_BATCH_SIZE: usize;

    /// The apalis settings of `queue`, with `batch_size` jobs prefetched per fetch.
    fn config(queue: String, batch_size: usize) -> QueueConfig;
}

/// Heartbeat of every queue worker. 5 s × 3 missed heartbeats brings a dead worker's prefetched
/// jobs back within ~15 s; Postgres leases and statuses decide who really works, so an early
/// redelivery is harmless.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long apalis remembers a pushed task id, so a duplicate push is dropped.
const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);

impl QueueJob for ChatRun {
    const QUEUE: &'static str = "chat-runs";
    const PUSH_BATCH_SIZE: usize = 16;

    fn config(queue: String, batch_size: usize) -> QueueConfig {
        QueueConfig::default()
            .queue(queue)
            .heartbeat_interval(HEARTBEAT)
            .missed_heartbeats(3)
            .batch_size(batch_size.max(1))
            .idempotency_ttl(Some(IDEMPOTENCY_TTL))
    }
}

impl QueueJob for IngestDocument {
    const QUEUE: &'static str = "ingest-docs";
    const PUSH_BATCH_SIZE: usize = 4;

    fn config(queue: String, batch_size: usize) -> QueueConfig {
        QueueConfig::default()
            .queue(queue)
            .heartbeat_interval(HEARTBEAT)
            .missed_heartbeats(3)
            .batch_size(batch_size.max(1))
            .idempotency_ttl(Some(IDEMPOTENCY_TTL))
    }
}

impl QueueJob for Cleanup {
    const QUEUE: &'static str = "maintenance";
    const PUSH_BATCH_SIZE: usize = 1;

    /// One cleanup at a time, nothing prefetched, whatever `batch_size` says.
    fn config(queue: String, _batch_size: usize) -> QueueConfig {
        QueueConfig::default()
            .queue(queue)
            .heartbeat_interval(HEARTBEAT)
            .missed_heartbeats(6)
            .batch_size(1)
            .idempotency_ttl(Some(IDEMPOTENCY_TTL))
    }
}

impl QueueJob for WebhookDelivery {
    const QUEUE: &'static str = "webhooks";
    const PUSH_BATCH_SIZE: usize = 8;

    fn config(queue: String, batch_size: usize) -> QueueConfig {
        QueueConfig::default()
            .queue(queue)
            .heartbeat_interval(HEARTBEAT)
            .missed_heartbeats(3)
            .batch_size(batch_size.max(1))
            .idempotency_ttl(Some(IDEMPOTENCY_TTL))
    }
}

/// The Redis names of one chatq stack, all under `CHATQ_QUEUE_PREFIX`.
#[derive(Clone, Debug)]
pub struct Queues {
    prefix: String,
}

impl Queues {
    /// Names for the stack with this prefix.
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_string() }
    }

    /// The Redis key prefix of this stack (`{prefix}`), for keys that are not queues.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The queue of `J`: `{prefix}-{J::QUEUE}`.
    pub fn name<J: QueueJob>(&self) -> String {
        format!("{}-{}", self.prefix, J::QUEUE)
    }

    /// The apalis settings of `J`'s queue on this stack.
    pub fn config<J: QueueJob>(&self, batch_size: usize) -> QueueConfig {
        J::config(self.name::<J>(), batch_size)
    }

    /// The chat run queue: `{prefix}-chat-runs`.
    pub fn chat_runs(&self) -> String {
        self.name::<ChatRun>()
    }

    /// The document ingestion queue: `{prefix}-ingest-docs`.
    pub fn ingest_docs(&self) -> String {
        self.name::<IngestDocument>()
    }

    /// The maintenance queue: `{prefix}-maintenance`.
    pub fn maintenance(&self) -> String {
        self.name::<Cleanup>()
    }
}

impl Queues {
    /// The webhook delivery queue: `{prefix}-webhooks`.
    pub fn webhooks(&self) -> String {
        self.name::<WebhookDelivery>()
    }
}

/// A storage for pushing jobs of type `J` (the fetching worker builds its own, with its
/// prefetch and poll strategy).
pub fn storage<J: QueueJob>(conn: ConnectionManager, queues: &Queues) -> RedisStorage<J> {
    RedisStorage::new(conn).with_config(queues.config::<J>(J::PUSH_BATCH_SIZE))
}

/// Pushing a job failed (Redis unreachable or erroring).
#[derive(Debug, thiserror::Error)]
#[error("cannot enqueue job: {0}")]
pub struct EnqueueError(String);

/// Pushes `job` under `task_id`. apalis-redis silently drops a push whose task id it still
/// holds: a fresh id re-delivers, a derived id (a cron tick, a trigger) deduplicates.
pub async fn push<J: QueueJob>(storage: &RedisStorage<J>, job: J, task_id: String) -> Result<(), EnqueueError> {
    let task = TaskBuilder::new(job).task_id(TaskId::from_string(task_id)).build();
    storage.clone().push_task(task).await.map_err(|e| EnqueueError(e.to_string()))
}

/// Pushes `job` due after `delay`, rounded up to whole seconds (apalis schedules by the
/// second). Same task id rules as [`push`].
pub async fn push_after<J: QueueJob>(
    storage: &RedisStorage<J>,
    job: J,
    task_id: String,
    delay: Duration,
) -> Result<(), EnqueueError> {
    let task = TaskBuilder::new(job)
        .task_id(TaskId::from_string(task_id))
        .run_after(Duration::from_secs(delay.as_secs_f64().ceil() as u64))
        .build();
    storage.clone().push_task(task).await.map_err(|e| EnqueueError(e.to_string()))
}

/// The apalis storage of the chat queue.
pub type ChatRunStorage = RedisStorage<ChatRun>;
/// The apalis storage of the ingestion queue.
pub type IngestStorage = RedisStorage<IngestDocument>;
/// The apalis storage of the maintenance queue.
pub type CleanupStorage = RedisStorage<Cleanup>;
/// The apalis storage of the webhook queue.
pub type WebhookStorage = RedisStorage<WebhookDelivery>;

/// A task id never used before for `id`: re-pushing work that must run again (a retry, a
/// recovery, an ingestion) needs one, since apalis-redis drops a push whose id it still holds.
pub fn fresh_task_id(id: Uuid) -> String {
    format!("{id}-{}", crate::new_id().simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_and_settings_are_stable() {
        let q = Queues::new("p");
        assert_eq!(q.chat_runs(), "p-chat-runs");
        assert_eq!(q.ingest_docs(), "p-ingest-docs");
        assert_eq!(q.maintenance(), "p-maintenance");
        assert_eq!(q.webhooks(), "p-webhooks");
        assert_eq!(q.config::<ChatRun>(8).active_jobs_list(), "p-chat-runs:active");
        assert_eq!(q.config::<ChatRun>(8).orphaned_duration(), Duration::from_secs(15));
        assert_eq!(q.config::<IngestDocument>(8).orphaned_duration(), Duration::from_secs(15));
        assert_eq!(q.config::<Cleanup>(8).orphaned_duration(), Duration::from_secs(30));
    }
}
