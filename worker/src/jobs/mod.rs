//! Every job the worker runs, registered from one list ([`QUEUES`] and [`monitor`] are
//! generated together), plus the cron tick that pushes the cleanup.

pub mod chat_run;
pub mod cleanup;
mod error;
pub mod ingest;
pub mod webhook;

pub use error::JobError;

use std::{
    future::Future,
    str::FromStr as _,
    sync::atomic::Ordering,
    task::{Context, Poll},
    time::Duration,
};

use apalis::prelude::*;
use apalis_core::backend::Vacuum as _;
use apalis_cron::CronScheduler;
use apalis_redis::RedisStorage;
use chatq_common::{
    config::Config,
    jobs::{self as payloads, ChatRun, Cleanup, IngestDocument, QueueJob, Queues, WebhookDelivery},
};
use futures::future::BoxFuture;

use crate::WorkerCtx;

/// A queue job as this worker runs it. Its payload's [`QueueJob`] impl (in `chatq_common::jobs`)
/// holds the queue name and apalis settings shared with the pushing side.
pub trait Job: QueueJob {
    /// How many jobs of this queue one process runs at once (also its prefetch, capped at 32).
    fn concurrency(config: &Config) -> usize;

    /// How often an idle worker of this queue looks for new jobs.
    fn poll_interval(config: &Config) -> Duration;

    /// Pushes again the work of this queue whose job may be lost (failed push, Redis flush,
    /// dead worker); returns how many items were recovered. Run by the reconciler's leader.
    fn recover(ctx: &WorkerCtx) -> impl Future<Output = Result<usize, sqlx::Error>> + Send {
        let _ = ctx;
        async { Ok(0) }
    }
}

/// One queue of the stack, as housekeeping, queue-depth metrics and the reconciler see it.
pub struct Queue {
    name: fn(&Queues) -> String,
    vacuum: fn(WorkerCtx, Duration) -> BoxFuture<'static, Result<usize, apalis_redis::Error>>,
    recover: for<'a> fn(&'a WorkerCtx) -> BoxFuture<'a, Result<usize, sqlx::Error>>,
}

impl Queue {
    const fn of<J: Job>() -> Self {
        Self { name: Queues::name::<J>, vacuum: vacuum::<J>, recover: recover::<J> }
    }

    /// The queue's Redis name on this stack.
    pub fn name(&self, queues: &Queues) -> String {
        (self.name)(queues)
    }

    /// Drops the queue's finished tasks older than `keep`; returns how many went.
    pub async fn vacuum(&self, ctx: &WorkerCtx, keep: Duration) -> Result<usize, apalis_redis::Error> {
        (self.vacuum)(ctx.clone(), keep).await
    }

    /// See [`Job::recover`].
    pub async fn recover(&self, ctx: &WorkerCtx) -> Result<usize, sqlx::Error> {
        (self.recover)(ctx).await
    }
}

fn vacuum<J: Job>(ctx: WorkerCtx, keep: Duration) -> BoxFuture<'static, Result<usize, apalis_redis::Error>> {
    Box::pin(async move { payloads::storage::<J>(ctx.redis.clone(), &ctx.queues).vacuum_before(keep).await })
}

fn recover<J: Job>(ctx: &WorkerCtx) -> BoxFuture<'_, Result<usize, sqlx::Error>> {
    Box::pin(J::recover(ctx))
}

/// Declares the queue jobs once: [`QUEUES`] and the registration of their workers come from the
/// same list, so a queue cannot be registered but forgotten by housekeeping or metrics.
macro_rules! queue_jobs {
    ($($job:ty => $handler:path),+ $(,)?) => {
        /// Every queue of the stack.
        pub const QUEUES: &[Queue] = &[$(Queue::of::<$job>()),+];

        /// Registers one worker per queue. Worker names are unique per process start and per
        /// restart (shared names break apalis orphan recovery).
        fn register_queues(mut monitor: Monitor, ctx: &WorkerCtx) -> Monitor {
            $(
                let job_ctx = ctx.clone();
                monitor = monitor.register(move |restarts| {
                    let ctx = job_ctx.clone();
                    let concurrency = <$job as Job>::concurrency(&ctx.config);
                    let backend = RedisStorage::<$job>::new(ctx.redis.clone())
                        .with_config(ctx.queues.config::<$job>(concurrency.min(32)))
                        .poll_with_strategy(Ticker::new(<$job as Job>::poll_interval(&ctx.config)));
                    WorkerBuilder::new(format!("{}-{}-r{restarts}", ctx.queues.name::<$job>(), ctx.worker_id))
                        .backend(backend)
                        .data(ctx)
                        .concurrency(concurrency)
                        .parallelize(tokio::spawn)
                        .catch_panic()
                        .build($handler)
                });
            )+
            monitor
        }
    };
}

queue_jobs! {
    ChatRun => chat_run::handle,
    IngestDocument => ingest::handle,
    Cleanup => cleanup::handle,
    WebhookDelivery => webhook::handle,
}

/// The apalis monitor with every queue's worker and the cleanup cron tick. A failed worker is
/// restarted.
pub fn monitor(ctx: &WorkerCtx) -> Monitor {
    let cron_ctx = ctx.clone();
    let restarts_ctx = ctx.clone();
    register_queues(Monitor::new(), ctx)
        // Every replica ticks; the tick's task id makes the pushes collapse into one job.
        .register(move |restarts| {
            let ctx = cron_ctx.clone();
            // Validated at start (`Config`), so this parse cannot fail.
            let schedule = cron::Schedule::from_str(&ctx.config.retention.cleanup_schedule).expect("valid CHATQ_CLEANUP_SCHEDULE");
            WorkerBuilder::new(format!("{}-cron-{}-r{restarts}", ctx.queues.maintenance(), ctx.worker_id))
                .backend(CronScheduler::new(schedule))
                .data(ctx)
                .concurrency(1)
                .build(cleanup::on_tick)
        })
        .should_restart(move |worker, error| {
            let n = restarts_ctx.worker_restarts.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::error!(worker = worker.name(), error = %error, restarts = n, "queue worker stopped; restarting it");
            true
        })
        .shutdown_timeout(ctx.config.worker.shutdown_grace + Duration::from_secs(10))
}

/// Wakes an idle queue worker every `period` so it fetches new jobs promptly.
///
/// apalis 1.0's own `IntervalStrategy` (and `StreamStrategy`) re-arm their timer without
/// polling it after it fires, so no wake-up is registered and an idle worker sleeps until its
/// next heartbeat (5 s here): runs sat `queued` for seconds. This strategy polls the interval
/// until it is pending, which always leaves a timer armed (the `PollStrategy` contract).
pub struct Ticker(tokio::time::Interval);

impl Ticker {
    /// A ticker firing every `period`.
    pub fn new(period: Duration) -> Self {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        Self(interval)
    }
}

impl PollStrategy for Ticker {
    fn poll_drive(&mut self, cx: &mut Context<'_>, _: &PollSnapshot) -> Poll<Option<()>> {
        let mut fired = false;
        while self.0.poll_tick(cx).is_ready() {
            fired = true;
        }
        if fired { Poll::Ready(Some(())) } else { Poll::Pending }
    }
}
