//! Every job the worker runs, registered in one place.

pub mod chat_run;
pub mod cleanup;
pub mod ingest;

use std::{
    str::FromStr as _,
    sync::atomic::Ordering,
    task::{Context, Poll},
    time::Duration,
};

use apalis::prelude::*;
use apalis_cron::CronScheduler;
use apalis_redis::RedisStorage;
use chatq_common::jobs::{ChatRun, Cleanup, IngestDocument};

use crate::WorkerCtx;

/// The apalis monitor with every queue's worker. Worker names are unique per process start
/// and per restart (shared names break orphan recovery), and a failed worker is restarted.
pub fn monitor(ctx: &WorkerCtx) -> Monitor {
    let chat_ctx = ctx.clone();
    let maintenance_ctx = ctx.clone();
    let cron_ctx = ctx.clone();
    let ingest_ctx = ctx.clone();
    let restarts_ctx = ctx.clone();
    Monitor::new()
        .register(move |restarts| {
            let ctx = chat_ctx.clone();
            let concurrency = ctx.config.worker.chat_concurrency;
            let backend = RedisStorage::<ChatRun>::new(ctx.redis.clone())
                .with_config(ctx.queues.chat_runs_config(concurrency.min(32)))
                .poll_with_strategy(Ticker::new(ctx.config.worker.chat_poll_interval));
            WorkerBuilder::new(format!("{}-{}-r{restarts}", ctx.queues.chat_runs(), ctx.worker_id))
                .backend(backend)
                .data(ctx)
                .concurrency(concurrency)
                .parallelize(tokio::spawn)
                .catch_panic()
                .build(chat_run::handle)
        })
        .register(move |restarts| {
            let ctx = ingest_ctx.clone();
            let concurrency = ctx.config.worker.ingest_concurrency;
            let backend = RedisStorage::<IngestDocument>::new(ctx.redis.clone())
                .with_config(ctx.queues.ingest_docs_config(concurrency.min(32)))
                .poll_with_strategy(Ticker::new(ctx.config.worker.chat_poll_interval.max(Duration::from_millis(50))));
            WorkerBuilder::new(format!("{}-{}-r{restarts}", ctx.queues.ingest_docs(), ctx.worker_id))
                .backend(backend)
                .data(ctx)
                .concurrency(concurrency)
                .parallelize(tokio::spawn)
                .catch_panic()
                .build(ingest::handle)
        })
        .register(move |restarts| {
            let ctx = maintenance_ctx.clone();
            let backend = RedisStorage::<Cleanup>::new(ctx.redis.clone())
                .with_config(ctx.queues.maintenance_config())
                .poll_with_strategy(Ticker::new(Duration::from_millis(200)));
            WorkerBuilder::new(format!("{}-{}-r{restarts}", ctx.queues.maintenance(), ctx.worker_id))
                .backend(backend)
                .data(ctx)
                .concurrency(1)
                .parallelize(tokio::spawn)
                .catch_panic()
                .build(cleanup::handle)
        })
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
