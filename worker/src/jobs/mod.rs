//! Every job the worker runs, registered in one place.

pub mod chat_run;

use std::{sync::atomic::Ordering, time::Duration};

use apalis::prelude::*;
use apalis_redis::RedisStorage;
use chatq_common::jobs::ChatRun;

use crate::WorkerCtx;

/// The apalis monitor with every queue's worker. Worker names are unique per process start
/// and per restart (shared names break orphan recovery), and a failed worker is restarted.
pub fn monitor(ctx: &WorkerCtx) -> Monitor {
    let chat_ctx = ctx.clone();
    let restarts_ctx = ctx.clone();
    Monitor::new()
        .register(move |restarts| {
            let ctx = chat_ctx.clone();
            let concurrency = ctx.config.chat_concurrency;
            let backend = RedisStorage::<ChatRun>::new(ctx.redis.clone())
                .with_config(ctx.queues.chat_runs_config(concurrency.min(32)))
                .poll_with_interval(ctx.config.chat_poll_interval);
            WorkerBuilder::new(format!("{}-{}-r{restarts}", ctx.queues.chat_runs(), ctx.worker_id))
                .backend(backend)
                .data(ctx)
                .concurrency(concurrency)
                .parallelize(tokio::spawn)
                .catch_panic()
                .build(chat_run::handle)
        })
        .should_restart(move |worker, error| {
            let n = restarts_ctx.worker_restarts.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::error!(worker = worker.name(), error = %error, restarts = n, "queue worker stopped; restarting it");
            true
        })
        .shutdown_timeout(Duration::from_secs(30))
}
