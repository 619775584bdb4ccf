//! The cleanup job on the worker side: purging deleted documents and trimming what apalis
//! leaves behind in Redis.

use chatq_common::jobs::Cleanup;
use chatq_worker::jobs::cleanup;
use sqlx::PgPool;

use crate::support::Setup;

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn cleanup_purges_chunks_and_bytes_of_deleted_documents_only(pool: PgPool) {
    let s = Setup::new(pool.clone()).await;
    let kb = uuid::Uuid::now_v7();
    sqlx::query("INSERT INTO knowledge_bases (id, name, embedding_model, embedding_dims) VALUES ($1, 'kb', 'e', 2)")
        .bind(kb)
        .execute(&pool)
        .await
        .unwrap();
    let mut docs = Vec::new();
    for (name, deleted) in [("gone.md", true), ("live.md", false)] {
        let id = uuid::Uuid::now_v7();
        sqlx::query(
            "INSERT INTO documents (id, knowledge_base_id, filename, media_type, size_bytes, sha256, status, deleted_at)
             VALUES ($1, $2, $3, 'text/markdown', 5, $4, 'ready', CASE WHEN $5 THEN now() END)",
        )
        .bind(id)
        .bind(kb)
        .bind(name)
        .bind(name.as_bytes())
        .bind(deleted)
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query("INSERT INTO document_blobs (document_id, bytes) VALUES ($1, 'hello')")
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
        for ordinal in 0..3 {
            sqlx::query(
                "INSERT INTO chunks (id, document_id, knowledge_base_id, ordinal, content, token_count, char_start, char_end, embedding)
                 VALUES ($1, $2, $3, $4, 'hello', 1, 0, 5, '{0.1, 0.2}')",
            )
            .bind(uuid::Uuid::now_v7())
            .bind(id)
            .bind(kb)
            .bind(ordinal)
            .execute(&pool)
            .await
            .unwrap();
        }
        docs.push(id);
    }
    let ctx = s.ctx().await;
    let dry = cleanup::run(&ctx, &Cleanup { job_id: None, dry_run: true }).await.unwrap().unwrap();
    assert_eq!((dry["document_chunks"].as_i64(), dry["document_blobs"].as_i64()), (Some(3), Some(1)), "{dry}");
    let stats = cleanup::run(&ctx, &Cleanup::default()).await.unwrap().unwrap();
    assert_eq!((stats["document_chunks"].as_i64(), stats["document_blobs"].as_i64()), (Some(3), Some(1)), "{stats}");
    for (doc, left) in [(docs[0], 0), (docs[1], 4)] {
        let n: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM chunks WHERE document_id = $1) + (SELECT count(*) FROM document_blobs WHERE document_id = $1)",
        )
        .bind(doc)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(n, left);
    }
    assert_eq!(ctx.metrics.cleanup_deleted.with_label_values(&["document_chunks"]).get(), 3);
    s.shutdown();
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn cleanup_trims_apalis_sets_and_metadata_of_workers_that_are_gone(pool: PgPool) {
    use redis::AsyncCommands;
    let s = Setup::new(pool.clone()).await;
    let queue = s.config_queue("chat-runs");
    let mut redis = s.redis().await;
    // A finished task whose data is still there, and ids whose data apalis already dropped.
    let _: () = redis.hset(format!("{queue}:meta:kept"), "status", "Done").await.unwrap();
    let _: () = redis.sadd(format!("{queue}:done"), &["kept", "gone-1", "gone-2"]).await.unwrap();
    let _: () = redis.sadd(format!("{queue}:dead"), "gone-3").await.unwrap();
    let _: () = redis.hset(format!("{queue}:workers:metadata:ghost"), "backend_name", "x").await.unwrap();
    let _: () = redis.hset(format!("{queue}:workers:metadata:alive"), "backend_name", "x").await.unwrap();
    let _: () = redis.zadd(format!("{queue}:workers"), "alive", chrono::Utc::now().timestamp()).await.unwrap();

    let ctx = s.ctx().await;
    let stats = cleanup::run(&ctx, &Cleanup::default()).await.unwrap().unwrap();
    assert_eq!(stats["redis"][&queue]["set_entries_trimmed"], 3, "{stats}");
    assert_eq!(stats["redis"][&queue]["worker_metadata_deleted"], 1, "{stats}");
    let done: Vec<String> = redis.smembers(format!("{queue}:done")).await.unwrap();
    assert_eq!(done, ["kept"]);
    assert!(!redis.exists::<_, bool>(format!("{queue}:workers:metadata:ghost")).await.unwrap());
    assert!(redis.exists::<_, bool>(format!("{queue}:workers:metadata:alive")).await.unwrap());
    let keys: Vec<String> = redis.keys(format!("{}*", s.config.redis.queue_prefix)).await.unwrap();
    if !keys.is_empty() {
        let _: () = redis.del(keys).await.unwrap();
    }
    s.shutdown();
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn cleanup_deletes_finished_webhook_deliveries_past_the_event_retention_and_keeps_pending_ones(pool: PgPool) {
    let s = Setup::new(pool.clone()).await;
    let hook = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO webhooks (id, url, events, secret_sealed) VALUES ($1, 'https://example.com/h', '{run.completed}', '\\x00')",
    )
    .bind(hook)
    .execute(&pool)
    .await
    .unwrap();
    // (status, age in days): only the old finished ones go (the event retention is 7 days).
    let rows = [("succeeded", 8), ("failed", 9), ("pending", 9), ("succeeded", 1)];
    let mut ids = Vec::new();
    for (status, days) in rows {
        let id = uuid::Uuid::now_v7();
        sqlx::query(
            "INSERT INTO webhook_deliveries (id, webhook_id, event_type, subject_id, body, status, attempt, created_at)
             VALUES ($1, $2, 'run.completed', $1, '{}', $3, 1, now() - make_interval(days => $4))",
        )
        .bind(id)
        .bind(hook)
        .bind(status)
        .bind(days)
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO webhook_attempts (delivery_id, attempt, status_code, latency_ms) VALUES ($1, 1, 200, 5)",
        )
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
        ids.push(id);
    }
    let ctx = s.ctx().await;
    let dry = cleanup::run(&ctx, &Cleanup { job_id: None, dry_run: true }).await.unwrap().unwrap();
    assert_eq!(dry["webhook_deliveries"].as_i64(), Some(2), "{dry}");
    let stats = cleanup::run(&ctx, &Cleanup::default()).await.unwrap().unwrap();
    assert_eq!(stats["webhook_deliveries"].as_i64(), Some(2), "{stats}");
    let left: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM webhook_deliveries ORDER BY id").fetch_all(&pool).await.unwrap();
    assert_eq!(left, vec![ids[2], ids[3]]);
    let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_attempts").fetch_one(&pool).await.unwrap();
    assert_eq!(attempts, 2, "the attempts of deleted deliveries go with them");
}
