//! The run event writer: each event goes to the run's Redis stream at once (live subscribers)
//! and to Postgres through one batched writer per process (one multi-row insert per
//! `CHATQ_EVENT_FLUSH_MS` across all runs), never one insert per token.

use std::{collections::HashMap, sync::Arc, time::Duration};

use backon::{ConstantBuilder, Retryable as _};
use chatq_common::{db, events::RunEvent, jobs::Queues};
use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::metrics::Metrics;

enum Command {
    Event { event: RunEvent, append: String, first_token_at: Option<DateTime<Utc>> },
    Flush(oneshot::Sender<()>),
}

/// Publishes run events live and hands them to the batched Postgres writer.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Command>,
    redis: ConnectionManager,
    queues: Queues,
    stream_ttl: Duration,
}

impl EventSink {
    /// Starts the writer task; it stops when every sink clone is dropped.
    pub fn start(
        pool: PgPool,
        redis: ConnectionManager,
        queues: Queues,
        flush_every: Duration,
        stream_ttl: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(16_384);
        tokio::spawn(writer(pool, rx, flush_every, metrics));
        Self { tx, redis, queues, stream_ttl }
    }

    /// Publishes `event` to the run's Redis stream (id `{seq}-0`, so readers can resume by seq)
    /// and queues it for Postgres. `append` is the text it adds to the run's `output_text`.
    /// A Redis failure is logged, not fatal: Postgres stays the source of truth.
    pub async fn emit(&self, event: RunEvent, append: String, first_token_at: Option<DateTime<Utc>>) {
        self.publish(&event).await;
        // The bounded channel is the backpressure: a stalled database slows generation.
        let _ = self.tx.send(Command::Event { event, append, first_token_at }).await;
    }

    /// Publishes an event that is already stored (terminal events are written by the finish
    /// transaction).
    pub async fn publish(&self, event: &RunEvent) {
        chatq_common::events::publish(&self.redis, &self.queues, event, self.stream_ttl).await;
    }

    /// Waits until every event queued so far is in Postgres.
    pub async fn flush(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Command::Flush(ack)).await.is_ok() {
            let _ = done.await;
        }
    }
}

#[derive(Default)]
struct Batch {
    events: Vec<RunEvent>,
    progress: HashMap<(Uuid, i32), db::runs::Progress>,
}

impl Batch {
    fn add(&mut self, event: RunEvent, append: String, first_token_at: Option<DateTime<Utc>>) {
        let p = self.progress.entry((event.run_id, event.attempt)).or_insert_with(|| db::runs::Progress {
            run_id: event.run_id,
            attempt: event.attempt,
            append: String::new(),
            last_seq: 0,
            first_token_at: None,
        });
        p.append.push_str(&append);
        p.last_seq = p.last_seq.max(event.seq);
        p.first_token_at = p.first_token_at.or(first_token_at);
        self.events.push(event);
    }

    fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

async fn writer(pool: PgPool, mut rx: mpsc::Receiver<Command>, every: Duration, metrics: Arc<Metrics>) {
    let mut batch = Batch::default();
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let flush_now = tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(Command::Event { event, append, first_token_at }) => {
                    batch.add(event, append, first_token_at);
                    batch.events.len() >= 2_000
                }
                Some(Command::Flush(ack)) => {
                    waiting.push(ack);
                    true
                }
                None => {
                    write_until_done(&pool, &batch, &metrics).await;
                    return;
                }
            },
            _ = tick.tick() => true,
        };
        if flush_now && !batch.is_empty() && write(&pool, &batch, &metrics).await.is_err() {
            // Keep the batch and retry at the next tick; the writes are idempotent.
            continue;
        }
        if flush_now {
            batch = Batch::default();
            for ack in waiting.drain(..) {
                let _ = ack.send(());
            }
        }
    }
}

/// The last batch at shutdown: tried for about 10 s (every 200 ms) before giving up.
async fn write_until_done(pool: &PgPool, batch: &Batch, metrics: &Metrics) {
    if batch.is_empty() {
        return;
    }
    let every = ConstantBuilder::default().with_delay(Duration::from_millis(200)).with_max_times(49);
    if (|| write(pool, batch, metrics)).retry(every).sleep(tokio::time::sleep).await.is_err() {
        tracing::error!(events = batch.events.len(), "giving up on unwritten run events at shutdown");
    }
}

/// One transaction for the whole batch: fenced event inserts plus run progress.
async fn write(pool: &PgPool, batch: &Batch, metrics: &Metrics) -> Result<(), sqlx::Error> {
    let result = async {
        let mut tx = pool.begin().await?;
        db::events::insert_batch_fenced(&mut tx, &batch.events).await?;
        let progress: Vec<_> = batch.progress.values().cloned().collect();
        db::runs::apply_progress(&mut tx, &progress).await?;
        tx.commit().await
    }
    .await;
    match &result {
        Ok(()) => metrics.flush_rows.observe(batch.events.len() as f64),
        Err(e) => tracing::warn!(events = batch.events.len(), error = %e, "cannot write run events; retrying"),
    }
    result
}
