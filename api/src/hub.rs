//! The subscriber hub: one task per API process reads the Redis streams of every run that has a
//! local subscriber (one `XREAD BLOCK` over all watched keys on a dedicated connection) and fans
//! the events out in-process. Each subscriber has a bounded buffer; a subscriber that falls
//! behind is dropped (its channel closes) and resumes from its last `seq`.
//!
//! [`catch_up`] reads what a subscriber missed: the Postgres log first, then the part of the
//! Redis stream Postgres does not have yet (the worker writes Postgres in batches).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use backon::{ConstantBuilder, Retryable as _};
use chatq_common::{db, events::RunEvent, jobs::Queues, redis_formats::run_stream};
use redis::{AsyncConnectionConfig, aio::ConnectionManager, streams::StreamReadReply};
use sqlx::PgPool;
use tokio::sync::{Notify, mpsc};
use uuid::Uuid;

use crate::metrics::Metrics;

/// Events buffered per subscriber before it counts as too slow and is dropped.
pub const SUBSCRIBER_BUFFER: usize = 512;
/// How long one `XREAD` blocks when nothing happens.
const BLOCK_MS: u64 = 5_000;
/// Entries read per stream and call.
const READ_COUNT: usize = 512;

/// A live subscription; dropping it unsubscribes.
pub struct Subscription {
    hub: Hub,
    run_id: Uuid,
    id: u64,
    /// Events of the run as the hub reads them (may start before or after the caller's cursor:
    /// dedupe by `seq`). Closed when the subscriber was too slow.
    pub rx: mpsc::Receiver<Arc<RunEvent>>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(self.run_id, self.id);
    }
}

struct Watch {
    key: String,
    /// Last stream entry id read (`{seq}-0`).
    cursor: String,
    subscribers: Vec<(u64, mpsc::Sender<Arc<RunEvent>>)>,
}

#[derive(Default)]
struct State {
    watches: HashMap<Uuid, Watch>,
}

struct Inner {
    state: Mutex<State>,
    next_id: AtomicU64,
    /// Wakes the reader when the first run is watched.
    idle: Notify,
    /// The reader's control stream: an entry there interrupts its `XREAD BLOCK` so it picks up
    /// newly watched runs at once.
    control_key: String,
    queues: Queues,
    redis: ConnectionManager,
    healthy: AtomicBool,
    metrics: Arc<Metrics>,
}

/// Cheap to clone; one per API process.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl Hub {
    /// Starts the reader task on its own Redis connection.
    pub fn start(redis_url: &str, redis: ConnectionManager, queues: Queues, metrics: Arc<Metrics>) -> Self {
        let control_key = format!("{}:hub:{}", queues.prefix(), Uuid::now_v7().simple());
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            next_id: AtomicU64::new(1),
            idle: Notify::new(),
            control_key,
            queues,
            redis,
            healthy: AtomicBool::new(true),
            metrics,
        });
        let hub = Hub { inner };
        tokio::spawn(reader(Arc::downgrade(&hub.inner), redis_url.to_string()));
        hub
    }

    /// Whether the reader is connected; when it is not, subscribers poll Postgres.
    pub fn healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Relaxed)
    }

    /// Subscribes to a run's live events. The hub starts reading the run's stream after
    /// `after_seq` if no one watches it yet.
    pub async fn subscribe(&self, run_id: Uuid, after_seq: i64) -> Subscription {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let new_key = {
            let mut state = self.inner.lock();
            let was_empty = state.watches.is_empty();
            let mut new_key = false;
            let watch = state.watches.entry(run_id).or_insert_with(|| {
                new_key = true;
                Watch {
                    key: run_stream::key(self.inner.queues.prefix(), run_id),
                    cursor: run_stream::entry_id(after_seq),
                    subscribers: Vec::new(),
                }
            });
            watch.subscribers.push((id, tx));
            if was_empty {
                self.inner.idle.notify_one();
            }
            new_key
        };
        self.inner.metrics.sse_opened();
        if new_key {
            // Interrupt the reader's blocking read so it includes this key now.
            let mut conn = self.inner.redis.clone();
            let _: redis::RedisResult<()> = redis::pipe()
                .cmd("XADD")
                .arg(&self.inner.control_key)
                .arg("MAXLEN")
                .arg("~")
                .arg(100)
                .arg("*")
                .arg("w")
                .arg(1)
                .ignore()
                .expire(&self.inner.control_key, 3600)
                .ignore()
                .query_async(&mut conn)
                .await;
        }
        Subscription { hub: self.clone(), run_id, id, rx }
    }

    fn unsubscribe(&self, run_id: Uuid, id: u64) {
        let mut state = self.inner.lock();
        if let Some(watch) = state.watches.get_mut(&run_id) {
            let before = watch.subscribers.len();
            watch.subscribers.retain(|(i, _)| *i != id);
            if watch.subscribers.len() < before {
                self.inner.metrics.sse_closed();
            }
            if watch.subscribers.is_empty() {
                state.watches.remove(&run_id);
            }
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn connect(url: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_millis(BLOCK_MS + 5_000)));
    client.get_multiplexed_async_connection_with_config(&config).await
}

/// Connects the reader, retrying every half second while the hub lives; marks the hub unhealthy
/// while it cannot (subscribers then poll Postgres). `None` once the hub is dropped.
async fn connect_retrying(hub: &std::sync::Weak<Inner>, url: &str) -> Option<redis::aio::MultiplexedConnection> {
    let set_healthy = |healthy: bool| {
        if let Some(inner) = hub.upgrade() {
            inner.healthy.store(healthy, Ordering::Relaxed);
        }
    };
    let conn = (|| connect(url))
        .retry(ConstantBuilder::new().with_delay(Duration::from_millis(500)).without_max_times())
        .when(|_| hub.strong_count() > 0)
        .notify(|e, _| {
            set_healthy(false);
            tracing::warn!(error = %e, "event hub cannot connect to Redis; retrying");
        })
        .await
        .ok()?;
    set_healthy(true);
    Some(conn)
}

/// The reader loop; ends when the hub is dropped.
async fn reader(hub: std::sync::Weak<Inner>, url: String) {
    let mut conn = None;
    let mut control_cursor = "0-0".to_string();
    loop {
        let Some(inner) = hub.upgrade() else { return };
        // Snapshot the watched keys and cursors.
        let (keys, cursors): (Vec<String>, Vec<String>) = {
            let state = inner.lock();
            state.watches.values().map(|w| (w.key.clone(), w.cursor.clone())).unzip()
        };
        if keys.is_empty() {
            // Holding the hub for at most a second keeps it alive a little after its last clone.
            let _ = tokio::time::timeout(Duration::from_secs(1), inner.idle.notified()).await;
            continue;
        }
        if conn.is_none() {
            drop(inner);
            conn = connect_retrying(&hub, &url).await;
            continue;
        }
        let c = conn.as_mut().expect("connected above");
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(READ_COUNT).arg("BLOCK").arg(BLOCK_MS).arg("STREAMS");
        cmd.arg(&inner.control_key).arg(&keys).arg(&control_cursor).arg(&cursors);
        let control_key = inner.control_key.clone();
        drop(inner);
        let reply: redis::RedisResult<Option<StreamReadReply>> = cmd.query_async(c).await;
        let Some(inner) = hub.upgrade() else { return };
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                inner.healthy.store(false, Ordering::Relaxed);
                tracing::warn!(error = %e, "event hub read failed; reconnecting");
                conn = None;
                drop(inner);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let Some(reply) = reply else { continue };
        let mut state = inner.lock();
        for stream in reply.keys {
            if stream.key == control_key {
                if let Some(last) = stream.ids.last() {
                    control_cursor = last.id.clone();
                }
                continue;
            }
            let Some(run_id) = run_stream::run_id_of(&stream.key) else { continue };
            let Some(watch) = state.watches.get_mut(&run_id) else { continue };
            for entry in &stream.ids {
                watch.cursor = entry.id.clone();
                let Some(event) = run_stream::parse_entry(run_id, entry) else { continue };
                let event = Arc::new(event);
                watch.subscribers.retain(|(_, tx)| match tx.try_send(event.clone()) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        inner.metrics.sse_dropped.inc();
                        inner.metrics.sse_closed();
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        inner.metrics.sse_closed();
                        false
                    }
                });
            }
            if watch.subscribers.is_empty() {
                state.watches.remove(&run_id);
            }
        }
    }
}

/// Events of a run after `after`, contiguous from `after + 1`, at most `limit`: the Postgres
/// log, then the newer part of the Redis stream that Postgres does not have yet.
pub async fn catch_up(
    pool: &PgPool,
    redis: &ConnectionManager,
    queues: &Queues,
    run_id: Uuid,
    after: i64,
    limit: usize,
) -> Result<Vec<RunEvent>, sqlx::Error> {
    let mut events = db::events::list_after(pool, run_id, after, limit as i64).await?;
    let mut last = events.last().map_or(after, |e| e.seq);
    if events.len() >= limit || events.last().is_some_and(|e| e.kind.is_terminal()) {
        return Ok(events);
    }
    let mut conn = redis.clone();
    let reply: redis::RedisResult<redis::streams::StreamRangeReply> = redis::cmd("XRANGE")
        .arg(run_stream::key(queues.prefix(), run_id))
        .arg(run_stream::entry_id(last.saturating_add(1)))
        .arg("+")
        .arg("COUNT")
        .arg(limit - events.len())
        .query_async(&mut conn)
        .await;
    match reply {
        Ok(reply) => {
            for entry in &reply.ids {
                let Some(e) = run_stream::parse_entry(run_id, entry) else { continue };
                if Some(e.seq) != last.checked_add(1) {
                    break;
                }
                last = e.seq;
                let terminal = e.kind.is_terminal();
                events.push(e);
                if terminal {
                    break;
                }
            }
        }
        Err(e) => tracing::debug!(run.id = %run_id, error = %e, "cannot read the run stream; Postgres only"),
    }
    Ok(events)
}

/// The newest `seq` of a run: `stored` (the run's `last_seq` in Postgres) or the last entry of
/// its Redis stream, which may be ahead of Postgres while the run is live. `None` when Redis
/// cannot be read: Postgres alone may lag behind what a client has seen.
pub async fn last_seq(redis: &ConnectionManager, queues: &Queues, run_id: Uuid, stored: i64) -> Option<i64> {
    let mut conn = redis.clone();
    let reply: redis::RedisResult<redis::streams::StreamRangeReply> = redis::cmd("XREVRANGE")
        .arg(run_stream::key(queues.prefix(), run_id))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut conn)
        .await;
    match reply {
        Ok(reply) => {
            let live = reply.ids.first().and_then(|entry| run_stream::parse_entry(run_id, entry)).map(|e| e.seq);
            Some(live.map_or(stored, |live| live.max(stored)))
        }
        Err(e) => {
            tracing::debug!(run.id = %run_id, error = %e, "cannot read the run stream to bound a cursor");
            None
        }
    }
}
