//! `maintenance_jobs` and the retention queries of the cleanup job. Every delete works on at
//! most `limit` rows per statement so a large cleanup never holds long locks; counts for a dry
//! run use the same predicates as the deletes. Statuses in `WHERE` clauses stay literal so
//! Postgres can match them to the partial unique index `maintenance_jobs_one_active`.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::domain::{DocumentStatus, MaintenanceKind, MaintenanceStatus};

/// A maintenance job and what it did.
#[derive(Debug, Clone)]
pub struct Job {
    /// Id.
    pub id: Uuid,
    /// What it does.
    pub kind: MaintenanceKind,
    /// Where it is.
    pub status: MaintenanceStatus,
    /// Counted only, nothing deleted.
    pub dry_run: bool,
    /// Counts by kind of data, plus timings.
    pub stats: Value,
    /// The admin key that asked, `None` for the schedule.
    pub requested_by: Option<Uuid>,
    /// When it was requested.
    pub created_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
}

/// A trigger's outcome: a new job, or the one already queued or running (at most one per kind).
#[derive(Debug, Clone)]
pub enum Requested {
    /// A new job was created.
    New(Job),
    /// This job of the kind was already active; nothing new was created.
    Existing(Job),
}

impl Requested {
    /// The job either way.
    pub fn job(&self) -> &Job {
        match self {
            Requested::New(j) | Requested::Existing(j) => j,
        }
    }
}

/// Why a maintenance job could not be requested.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Postgres.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// Each try collided with an active job that had finished by the time it was read.
    #[error("no {0} job could be created or found: the active one kept finishing")]
    Contended(MaintenanceKind),
}

/// Creates a queued job of `kind`, or returns the active one (`maintenance_jobs_one_active`).
pub async fn request(
    pool: &PgPool,
    kind: MaintenanceKind,
    dry_run: bool,
    requested_by: Option<Uuid>,
) -> Result<Requested, RequestError> {
    // The active job may finish between the insert and the select: try again then.
    for _ in 0..5 {
        let created = sqlx::query_as!(
            Job,
            r#"INSERT INTO maintenance_jobs (id, kind, status, dry_run, requested_by) VALUES ($1, $2, $5, $3, $4)
             ON CONFLICT (kind) WHERE status IN ('queued', 'running') DO NOTHING
             RETURNING id, kind AS "kind: MaintenanceKind", status AS "status: MaintenanceStatus", dry_run, stats,
           requested_by,
           created_at, finished_at"#,
            crate::new_id(),
            kind as _,
            dry_run,
            requested_by,
            MaintenanceStatus::Queued as _,
        )
        .fetch_optional(pool)
        .await?;
        if let Some(job) = created {
            return Ok(Requested::New(job));
        }
        if let Some(job) = active(pool, kind).await? {
            return Ok(Requested::Existing(job));
        }
    }
    Err(RequestError::Contended(kind))
}

/// A job by id.
pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<Job>, sqlx::Error> {
    sqlx::query_as!(
        Job,
        r#"SELECT id, kind AS "kind: MaintenanceKind", status AS "status: MaintenanceStatus", dry_run, stats,
           requested_by,
           created_at, finished_at FROM maintenance_jobs WHERE id = $1"#,
        id
    )
    .fetch_optional(pool)
    .await
}

/// The active job of `kind`, if any.
pub async fn active(pool: &PgPool, kind: MaintenanceKind) -> Result<Option<Job>, sqlx::Error> {
    sqlx::query_as!(
        Job,
        r#"SELECT id, kind AS "kind: MaintenanceKind", status AS "status: MaintenanceStatus", dry_run, stats,
           requested_by,
           created_at, finished_at FROM maintenance_jobs WHERE kind = $1 AND status IN ('queued', 'running')"#,
        kind as _,
    )
    .fetch_optional(pool)
    .await
}

/// Takes the cleanup lock for the lifetime of `tx`: `false` when another process holds it. The
/// lock is transaction-scoped, so a crashed runner releases it with its connection.
pub async fn try_lock(tx: &mut Transaction<'_, Postgres>, key: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT pg_try_advisory_xact_lock($1) AS "locked!""#, key).fetch_one(&mut **tx).await
}

/// Marks a queued (or abandoned running) job as running; `None` when it already ended.
pub async fn start(pool: &PgPool, id: Uuid) -> Result<Option<Job>, sqlx::Error> {
    sqlx::query_as!(
        Job,
        r#"UPDATE maintenance_jobs SET status = $2 WHERE id = $1 AND status IN ('queued', 'running')
         RETURNING id, kind AS "kind: MaintenanceKind", status AS "status: MaintenanceStatus", dry_run, stats,
           requested_by,
           created_at, finished_at"#,
        id,
        MaintenanceStatus::Running as _,
    )
    .fetch_optional(pool)
    .await
}

/// Records the end of a job with its stats.
pub async fn finish(pool: &PgPool, id: Uuid, status: MaintenanceStatus, stats: &Value) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE maintenance_jobs SET status = $2, stats = $3, finished_at = now() WHERE id = $1",
        id,
        status as _,
        stats,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Rows removed (or, in a dry run, that would be) by the thread retention.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThreadCounts {
    /// Threads.
    pub threads: i64,
    /// Their messages.
    pub messages: i64,
    /// Their runs.
    pub runs: i64,
    /// Their runs' events.
    pub run_events: i64,
}

impl std::ops::AddAssign for ThreadCounts {
    fn add_assign(&mut self, o: Self) {
        self.threads += o.threads;
        self.messages += o.messages;
        self.runs += o.runs;
        self.run_events += o.run_events;
    }
}

/// The smallest retention in days in force: the global one or any assistant's.
pub async fn min_retention_days(pool: &PgPool, global_days: i32) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT LEAST($1, (SELECT min(retention_days) FROM assistants))::int4 AS "days!""#,
        global_days
    )
    .fetch_one(pool)
    .await
}

// A thread `t` is past its retention when it had no activity for its assistant's
// `retention_days`, else the global days, and has no active run; the smallest retention in
// force is a prefilter that lets Postgres use `threads_last_activity_idx`. The counts and the
// delete below spell out the same predicate.

/// Counts what the thread retention would delete.
pub async fn count_expired_threads(
    pool: &PgPool,
    global_days: i32,
    min_days: i32,
) -> Result<ThreadCounts, sqlx::Error> {
    sqlx::query_as!(
        ThreadCounts,
        r#"WITH t AS (SELECT t.id FROM threads t
           WHERE t.last_activity_at < now() - make_interval(days => $2)
             AND t.last_activity_at < now() - make_interval(days =>
                 COALESCE((SELECT a.retention_days FROM assistants a WHERE a.id = t.assistant_id), $1))
             AND NOT EXISTS (SELECT 1 FROM runs ar
                           WHERE ar.thread_id = t.id AND ar.status IN ('queued', 'in_progress')))
         SELECT (SELECT count(*) FROM t) AS "threads!",
                (SELECT count(*) FROM messages m WHERE m.thread_id IN (SELECT id FROM t)) AS "messages!",
                (SELECT count(*) FROM runs r WHERE r.thread_id IN (SELECT id FROM t)) AS "runs!",
                (SELECT count(*) FROM run_events e JOIN runs r ON r.id = e.run_id
                  WHERE r.thread_id IN (SELECT id FROM t)) AS "run_events!""#,
        global_days,
        min_days,
    )
    .fetch_one(pool)
    .await
}

/// Deletes up to `limit` expired threads with their messages, runs and events (by cascade)
/// and returns what went; zero threads means done.
pub async fn delete_expired_threads(
    pool: &PgPool,
    global_days: i32,
    min_days: i32,
    limit: i64,
) -> Result<ThreadCounts, sqlx::Error> {
    // The counting subqueries see the snapshot before the delete, so they count the cascade.
    sqlx::query_as!(
        ThreadCounts,
        r#"WITH t AS (SELECT t.id FROM threads t
           WHERE t.last_activity_at < now() - make_interval(days => $2)
             AND t.last_activity_at < now() - make_interval(days =>
                 COALESCE((SELECT a.retention_days FROM assistants a WHERE a.id = t.assistant_id), $1))
             AND NOT EXISTS (SELECT 1 FROM runs ar
                           WHERE ar.thread_id = t.id AND ar.status IN ('queued', 'in_progress'))
           LIMIT $3 FOR UPDATE SKIP LOCKED),
              d AS (DELETE FROM threads WHERE id IN (SELECT id FROM t) RETURNING id)
         SELECT (SELECT count(*) FROM d) AS "threads!",
                (SELECT count(*) FROM messages m WHERE m.thread_id IN (SELECT id FROM t)) AS "messages!",
                (SELECT count(*) FROM runs r WHERE r.thread_id IN (SELECT id FROM t)) AS "runs!",
                (SELECT count(*) FROM run_events e JOIN runs r ON r.id = e.run_id
                  WHERE r.thread_id IN (SELECT id FROM t)) AS "run_events!""#,
        global_days,
        min_days,
        limit,
    )
    .fetch_one(pool)
    .await
}

// Old events: those of runs finished more than `event_secs` ago, except the terminal event (a
// replay still ends properly). The count and the delete spell out the same predicate.

/// Counts the events the event retention would drop, leaving out those of threads the thread
/// retention deletes first (so a dry run reports what a real run deletes).
pub async fn count_old_events(
    pool: &PgPool,
    event_secs: f64,
    global_days: i32,
    min_days: i32,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM run_events e
         WHERE e.kind NOT IN ('run.completed', 'run.failed', 'run.cancelled')
           AND e.run_id IN (SELECT r.id FROM runs r WHERE r.completed_at < now() - make_interval(secs => $1))
           AND NOT EXISTS (SELECT 1 FROM runs x JOIN threads t ON t.id = x.thread_id
                           WHERE x.id = e.run_id
                             AND t.last_activity_at < now() - make_interval(days => $3)
                             AND t.last_activity_at < now() - make_interval(days =>
                                 COALESCE((SELECT a.retention_days FROM assistants a WHERE a.id = t.assistant_id), $2))
                             AND NOT EXISTS (SELECT 1 FROM runs ar
                           WHERE ar.thread_id = t.id AND ar.status IN ('queued', 'in_progress')))"#,
        event_secs,
        global_days,
        min_days,
    )
    .fetch_one(pool)
    .await
}

/// Deletes up to `limit` old events; returns how many went.
pub async fn delete_old_events(pool: &PgPool, event_secs: f64, limit: i64) -> Result<i64, sqlx::Error> {
    let n = sqlx::query!(
        "DELETE FROM run_events WHERE ctid IN (
           SELECT e.ctid FROM run_events e
           WHERE e.kind NOT IN ('run.completed', 'run.failed', 'run.cancelled')
           AND e.run_id IN (SELECT r.id FROM runs r WHERE r.completed_at < now() - make_interval(secs => $1))
           LIMIT $2)",
        event_secs,
        limit,
    )
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n as i64)
}

// Webhook deliveries: a finished one (succeeded or failed for good) is kept as long as events
// are, and never longer than the shortest thread retention, since its body holds the run's answer.
// Pending deliveries stay until their retries end. The count and the delete share the predicate.

/// Counts finished webhook deliveries older than `secs`.
pub async fn count_old_webhook_deliveries(pool: &PgPool, secs: f64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM webhook_deliveries
           WHERE status <> 'pending' AND created_at < now() - make_interval(secs => $1)"#,
        secs,
    )
    .fetch_one(pool)
    .await
}

/// Deletes up to `limit` finished webhook deliveries older than `secs`, with their attempts;
/// returns how many deliveries went.
pub async fn delete_old_webhook_deliveries(pool: &PgPool, secs: f64, limit: i64) -> Result<i64, sqlx::Error> {
    let n = sqlx::query!(
        "DELETE FROM webhook_deliveries WHERE id IN (
           SELECT id FROM webhook_deliveries
           WHERE status <> 'pending' AND created_at < now() - make_interval(secs => $1)
           LIMIT $2)",
        secs,
        limit,
    )
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n as i64)
}

// Deleted documents: deleted themselves or in a deleted knowledge base. The count and the
// deletes spell out the same subquery.

/// Counts chunks and blobs of deleted documents.
pub async fn count_deleted_document_data(pool: &PgPool) -> Result<(i64, i64), sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT (SELECT count(*) FROM chunks WHERE document_id IN (
                     SELECT d.id FROM documents d JOIN knowledge_bases k ON k.id = d.knowledge_base_id
                     WHERE d.deleted_at IS NOT NULL OR k.deleted_at IS NOT NULL)) AS "chunks!",
                  (SELECT count(*) FROM document_blobs WHERE document_id IN (
                     SELECT d.id FROM documents d JOIN knowledge_bases k ON k.id = d.knowledge_base_id
                     WHERE d.deleted_at IS NOT NULL OR k.deleted_at IS NOT NULL)) AS "blobs!""#
    )
    .fetch_one(pool)
    .await?;
    Ok((row.chunks, row.blobs))
}

/// Deletes up to `limit` chunks, then up to `limit` blobs, of deleted documents.
pub async fn delete_deleted_document_data(pool: &PgPool, limit: i64) -> Result<(i64, i64), sqlx::Error> {
    let chunks = sqlx::query!(
        "DELETE FROM chunks WHERE id IN (
           SELECT id FROM chunks WHERE document_id IN (
             SELECT d.id FROM documents d JOIN knowledge_bases k ON k.id = d.knowledge_base_id
             WHERE d.deleted_at IS NOT NULL OR k.deleted_at IS NOT NULL)
           LIMIT $1)",
        limit,
    )
    .execute(pool)
    .await?
    .rows_affected();
    let blobs = sqlx::query!(
        "DELETE FROM document_blobs WHERE document_id IN (
           SELECT document_id FROM document_blobs WHERE document_id IN (
             SELECT d.id FROM documents d JOIN knowledge_bases k ON k.id = d.knowledge_base_id
             WHERE d.deleted_at IS NOT NULL OR k.deleted_at IS NOT NULL)
           LIMIT $1)",
        limit,
    )
    .execute(pool)
    .await?
    .rows_affected();
    Ok((chunks as i64, blobs as i64))
}

/// Documents by status (deleted ones left out), for the ingestion gauge.
pub async fn documents_by_status(pool: &PgPool) -> Result<Vec<(DocumentStatus, i64)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT status AS "status: DocumentStatus", count(*) AS "count!" FROM documents
         WHERE deleted_at IS NULL GROUP BY status"#
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.status, r.count)).collect())
}
