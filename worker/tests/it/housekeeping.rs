//! Redis housekeeping of the cleanup job, on every queue of the stack: finished apalis tasks
//! vacuumed, dangling set entries trimmed, metadata of departed workers deleted, and the stats
//! keyed by the queue they describe.

use chatq_common::config::ExposeSecret;
use std::collections::HashMap;

use chatq_common::{config::Config, jobs::Cleanup};
use chatq_worker::WorkerCtx;
use redis::AsyncCommands;
use sqlx::PgPool;
use uuid::Uuid;

/// A configuration for an in-process context on its own queue prefix (no provider is called).
fn config(prefix: &str) -> Config {
    let mut env: HashMap<&str, String> = HashMap::from([
        ("OPENAI_BASE_URL", "http://127.0.0.1:9".to_string()),
        ("OPENAI_API_KEY", "sk-test".into()),
        ("CHATQ_QUEUE_PREFIX", prefix.to_string()),
        ("CHATQ_DB_MAX_CONNECTIONS", "4".into()),
    ]);
    if let Ok(url) = std::env::var("REDIS_URL") {
        env.insert("REDIS_URL", url);
    }
    Config::from_lookup(|k| env.get(k).cloned()).expect("valid test config")
}

/// Leaves in `queue` what apalis leaves behind: a task finished long ago (data and meta), a
/// recent one, ids whose data is gone in the done and dead sets, and the metadata of a worker
/// that is gone next to one that is alive.
async fn litter(redis: &mut redis::aio::ConnectionManager, queue: &str) {
    let now = chrono::Utc::now().timestamp();
    for (id, done_at) in [("old", now - 30 * 24 * 3600), ("recent", now)] {
        let _: () = redis.hset(format!("{queue}:data"), id, "{}").await.unwrap();
        let _: () = redis
            .hset_multiple(
                format!("{queue}:meta:{id}"),
                &[("status", "Done".to_string()), ("done_at", done_at.to_string())],
            )
            .await
            .unwrap();
    }
    let _: () = redis.sadd(format!("{queue}:done"), &["old", "recent", "gone-1", "gone-2"]).await.unwrap();
    let _: () = redis.sadd(format!("{queue}:dead"), "gone-3").await.unwrap();
    let _: () = redis.hset(format!("{queue}:workers:metadata:ghost"), "backend_name", "x").await.unwrap();
    let _: () = redis.hset(format!("{queue}:workers:metadata:alive"), "backend_name", "x").await.unwrap();
    let _: () = redis.zadd(format!("{queue}:workers"), "alive", now).await.unwrap();
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn cleanup_vacuums_and_trims_every_queue_and_labels_each_queues_stats(pool: PgPool) {
    let prefix = format!("t{}", Uuid::now_v7().simple());
    let config = config(&prefix);
    let mut redis = chatq_common::redis_conn::connect(config.redis.url.expose_secret()).await.unwrap();
    let queues = [
        format!("{prefix}-chat-runs"),
        format!("{prefix}-ingest-docs"),
        format!("{prefix}-maintenance"),
        format!("{prefix}-webhooks"),
    ];
    for queue in &queues {
        litter(&mut redis, queue).await;
    }

    let ctx = WorkerCtx::from_parts(config, pool, redis.clone()).unwrap();
    let stats = chatq_worker::jobs::cleanup::run(&ctx, &Cleanup::default()).await.unwrap().unwrap();

    let reported: Vec<&String> = stats["redis"].as_object().expect("redis stats").keys().collect();
    assert_eq!(reported.len(), queues.len(), "one entry per queue: {stats}");
    for queue in &queues {
        let s = &stats["redis"][queue];
        // Vacuuming drops the old task's data and meta, so "old" also becomes a dangling id.
        assert_eq!(s["tasks_vacuumed"], 1, "{queue}: {stats}");
        assert_eq!(s["set_entries_trimmed"], 4, "{queue}: {stats}");
        assert_eq!(s["worker_metadata_deleted"], 1, "{queue}: {stats}");
        assert!(!redis.hexists::<_, _, bool>(format!("{queue}:data"), "old").await.unwrap(), "{queue}");
        assert!(redis.hexists::<_, _, bool>(format!("{queue}:data"), "recent").await.unwrap(), "{queue}");
        let done: Vec<String> = redis.smembers(format!("{queue}:done")).await.unwrap();
        assert_eq!(done, ["recent"], "{queue}");
        assert!(!redis.exists::<_, bool>(format!("{queue}:dead")).await.unwrap(), "{queue}");
        assert!(!redis.exists::<_, bool>(format!("{queue}:workers:metadata:ghost")).await.unwrap(), "{queue}");
        assert!(redis.exists::<_, bool>(format!("{queue}:workers:metadata:alive")).await.unwrap(), "{queue}");
    }

    let keys: Vec<String> = redis.keys(format!("{prefix}*")).await.unwrap();
    if !keys.is_empty() {
        let _: () = redis.del(keys).await.unwrap();
    }
}
