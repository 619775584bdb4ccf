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

    /// The maintenance queue: `{prefix}-maintenance`.
    pub fn maintenance(&self) -> String {
        format!("{}-maintenance", self.prefix)
    }

    /// apalis settings of the maintenance queue (one job at a time, nothing prefetched).
    pub fn maintenance_config(&self) -> QueueConfig {
        QueueConfig::default()
            .queue(self.maintenance())
            .heartbeat_interval(Duration::from_secs(5))
            .missed_heartbeats(6)
            .batch_size(1)
            .idempotency_ttl(Some(Duration::from_secs(24 * 3600)))
    }

    /// Every queue of the stack, for metrics and housekeeping.
    pub fn all(&self) -> Vec<String> {
        vec![self.chat_runs(), self.ingest_docs(), self.maintenance()]
    }

    /// The provider circuit breaker's published state: `{prefix}:breaker`.
    pub fn breaker_key(&self) -> String {
        format!("{}:breaker", self.prefix)
    }

    /// The document ingestion queue: `{prefix}-ingest-docs`.
    pub fn ingest_docs(&self) -> String {
        format!("{}-ingest-docs", self.prefix)
    }

    /// apalis settings of the ingestion queue, identical on both sides. Postgres statuses
    /// decide what is done, so a redelivery is harmless.
    pub fn ingest_docs_config(&self, batch_size: usize) -> QueueConfig {
        QueueConfig::default()
            .queue(self.ingest_docs())
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

/// Pushes a chat run due after `delay` (rounded up to whole seconds: apalis schedules by the
/// second). `task_id` must be fresh.
pub async fn push_chat_run_after(
    storage: &ChatRunStorage,
    run_id: Uuid,
    task_id: String,
    delay: Duration,
) -> Result<(), EnqueueError> {
    let mut storage = storage.clone();
    let task = TaskBuilder::new(ChatRun { run_id })
        .task_id(TaskId::from_string(task_id))
        .run_after(Duration::from_secs(delay.as_secs_f64().ceil() as u64))
        .build();
    storage.push_task(task).await.map_err(|e| EnqueueError(e.to_string()))
}

/// Pushes a chat run. `task_id` must be fresh for every re-push: apalis-redis silently drops a
/// push whose task id it still holds.
pub async fn push_chat_run(storage: &ChatRunStorage, run_id: Uuid, task_id: String) -> Result<(), EnqueueError> {
    let mut storage = storage.clone();
    let task = TaskBuilder::new(ChatRun { run_id }).task_id(TaskId::from_string(task_id)).build();
    storage.push_task(task).await.map_err(|e| EnqueueError(e.to_string()))
}

/// The apalis storage of the maintenance queue.
pub type CleanupStorage = RedisStorage<Cleanup>;

/// A storage for pushing cleanups.
pub fn cleanup_storage(conn: ConnectionManager, queues: &Queues) -> CleanupStorage {
    RedisStorage::new(conn).with_config(queues.maintenance_config())
}

/// Pushes a cleanup under `task_id`; a second push with the same id is dropped by apalis
/// (that is how every replica's cron tick turns into one job).
pub async fn push_cleanup(storage: &CleanupStorage, job: Cleanup, task_id: String) -> Result<(), EnqueueError> {
    let mut storage = storage.clone();
    let task = TaskBuilder::new(job).task_id(TaskId::from_string(task_id)).build();
    storage.push_task(task).await.map_err(|e| EnqueueError(e.to_string()))
}

/// The apalis storage of the ingestion queue.
pub type IngestStorage = RedisStorage<IngestDocument>;

/// A storage for pushing ingestion jobs (the API side).
pub fn ingest_storage(conn: ConnectionManager, queues: &Queues) -> IngestStorage {
    RedisStorage::new(conn).with_config(queues.ingest_docs_config(4))
}

/// Pushes an ingestion job with a fresh task id.
pub async fn push_ingest(storage: &IngestStorage, document_id: Uuid) -> Result<(), EnqueueError> {
    let mut storage = storage.clone();
    let task_id = format!("{document_id}-{}", crate::new_id().simple());
    let task = TaskBuilder::new(IngestDocument { document_id }).task_id(TaskId::from_string(task_id)).build();
    storage.push_task(task).await.map_err(|e| EnqueueError(e.to_string()))
}
