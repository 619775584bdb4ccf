//! Webhook subscriptions, their delivery outbox and the attempts of each delivery.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::Page;

/// A subscription (its secret stays sealed in the database).
#[derive(Debug, Clone)]
pub struct Webhook {
    /// Id.
    pub id: Uuid,
    /// Where deliveries are POSTed.
    pub url: String,
    /// The events it receives.
    pub events: Vec<String>,
    /// Free text for the operator.
    pub description: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// A new subscription.
pub struct NewWebhook<'a> {
    /// Where deliveries go.
    pub url: &'a str,
    /// The events it receives.
    pub events: &'a [String],
    /// Free text.
    pub description: Option<&'a str>,
    /// The signing secret, sealed.
    pub secret_sealed: &'a [u8],
}

/// Stores a subscription.
pub async fn create(pool: &PgPool, w: &NewWebhook<'_>) -> Result<Webhook, sqlx::Error> {
    sqlx::query_as!(
        Webhook,
        "INSERT INTO webhooks (id, url, events, description, secret_sealed) VALUES ($1, $2, $3, $4, $5)
         RETURNING id, url, events, description, created_at",
        crate::new_id(),
        w.url,
        w.events,
        w.description,
        w.secret_sealed,
    )
    .fetch_one(pool)
    .await
}

/// One subscription.
pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<Webhook>, sqlx::Error> {
    sqlx::query_as!(Webhook, "SELECT id, url, events, description, created_at FROM webhooks WHERE id = $1", id)
        .fetch_optional(pool)
        .await
}

/// A page of subscriptions, oldest first.
pub async fn list(pool: &PgPool, after: Option<Uuid>, limit: i64) -> Result<Page<Webhook>, sqlx::Error> {
    let rows = sqlx::query_as!(
        Webhook,
        "SELECT id, url, events, description, created_at FROM webhooks
         WHERE ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2",
        after,
        limit + 1,
    )
    .fetch_all(pool)
    .await?;
    Ok(Page::from_overfetch(rows, limit))
}

/// Deletes a subscription with its deliveries; `false` if there was none.
pub async fn delete(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query!("DELETE FROM webhooks WHERE id = $1", id).execute(pool).await?.rows_affected() == 1)
}

/// Writes one pending delivery of `event` about `subject` for every subscription to it, inside
/// the transaction that makes the event true, so the event and its deliveries commit together.
/// Returns how many were written; the worker pushes their jobs after the commit
/// ([`take_unpushed`]) and the reconciler catches any it missed.
pub async fn record(tx: &mut Transaction<'_, Postgres>, event: &str, subject: Uuid) -> Result<u64, sqlx::Error> {
    let r = sqlx::query!(
        "INSERT INTO webhook_deliveries (id, webhook_id, event_type, subject_id)
         SELECT gen_random_uuid(), id, $1, $2 FROM webhooks WHERE $1 = ANY(events)",
        event,
        subject,
    )
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected())
}

/// Marks pending deliveries whose job was never pushed as pushed, and returns them.
pub async fn take_unpushed(pool: &PgPool, limit: i64) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        "UPDATE webhook_deliveries SET enqueued_at = now() WHERE id IN (
            SELECT id FROM webhook_deliveries WHERE status = 'pending' AND enqueued_at IS NULL
            ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED)
         RETURNING id",
        limit,
    )
    .fetch_all(pool)
    .await
}

/// Pending deliveries whose job may be lost (never pushed, or due for `stale_secs` and not being
/// sent): marks them pushed and returns them.
pub async fn take_stale(pool: &PgPool, stale_secs: f64, limit: i64) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        "UPDATE webhook_deliveries SET enqueued_at = now() WHERE id IN (
            SELECT id FROM webhook_deliveries
            WHERE status = 'pending' AND (locked_until IS NULL OR locked_until < now())
              AND (enqueued_at IS NULL
                   OR GREATEST(enqueued_at, next_attempt_at) < now() - make_interval(secs => $1))
            ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)
         RETURNING id",
        stale_secs,
        limit,
    )
    .fetch_all(pool)
    .await
}

/// A delivery claimed for sending, with what sending needs.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The delivery (`webhook-id`).
    pub id: Uuid,
    /// Its event.
    pub event_type: String,
    /// The run, document or batch.
    pub subject_id: Uuid,
    /// When the event happened (the body's `timestamp`).
    pub event_at: DateTime<Utc>,
    /// The body, once frozen by the first attempt.
    pub body: Option<String>,
    /// Attempts made before this one.
    pub attempt: i32,
    /// Destination.
    pub url: String,
    /// The sealed signing secret.
    pub secret_sealed: Vec<u8>,
}

/// Claims a pending, due delivery for `lock_secs` so no other job sends it meanwhile; `None`
/// if it is done, not due, being sent or gone.
pub async fn claim(pool: &PgPool, id: Uuid, lock_secs: f64) -> Result<Option<Claimed>, sqlx::Error> {
    sqlx::query_as!(
        Claimed,
        "UPDATE webhook_deliveries d SET locked_until = now() + make_interval(secs => $2)
         FROM webhooks w
         WHERE d.id = $1 AND w.id = d.webhook_id AND d.status = 'pending'
           AND (d.next_attempt_at IS NULL OR d.next_attempt_at <= now() + interval '1 second')
           AND (d.locked_until IS NULL OR d.locked_until < now())
         RETURNING d.id, d.event_type, d.subject_id, d.event_at, d.body, d.attempt, w.url, w.secret_sealed",
        id,
        lock_secs,
    )
    .fetch_optional(pool)
    .await
}

/// Freezes the body of a delivery (first attempt); returns the body in force.
pub async fn freeze_body(pool: &PgPool, id: Uuid, body: &str) -> Result<String, sqlx::Error> {
    sqlx::query_scalar!(
        r#"UPDATE webhook_deliveries SET body = COALESCE(body, $2) WHERE id = $1 RETURNING body AS "body!""#,
        id,
        body,
    )
    .fetch_one(pool)
    .await
}

/// The result of one attempt.
#[derive(Debug, Clone)]
pub struct AttemptResult {
    /// The attempt's number (1-based).
    pub attempt: i32,
    /// HTTP status received, if any.
    pub status_code: Option<i32>,
    /// Time to the response or the error.
    pub latency_ms: i32,
    /// Why it failed (no body or secret in it).
    pub error: Option<String>,
    /// `succeeded`, `pending` (another attempt at `next_attempt_at`) or `failed`.
    pub status: &'static str,
    /// When the next attempt is due, for `pending`.
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// Records an attempt and the delivery's new state, and releases it.
pub async fn record_attempt(pool: &PgPool, id: Uuid, a: &AttemptResult) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query!(
        "INSERT INTO webhook_attempts (delivery_id, attempt, status_code, latency_ms, error) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (delivery_id, attempt) DO NOTHING",
        id,
        a.attempt,
        a.status_code,
        a.latency_ms,
        a.error,
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "UPDATE webhook_deliveries SET attempt = GREATEST(attempt, $2), status = $3, next_attempt_at = $4,
                enqueued_at = now(), locked_until = NULL, last_status_code = $5, last_error = $6
         WHERE id = $1",
        id,
        a.attempt,
        a.status,
        a.next_attempt_at,
        a.status_code,
        a.error,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// A delivery as `GET /v1/webhooks/{id}/deliveries` lists it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Id (`webhook-id`).
    pub id: Uuid,
    /// Its event.
    pub event_type: String,
    /// The run, document or batch.
    pub subject_id: Uuid,
    /// `pending`, `succeeded` or `failed`.
    pub status: String,
    /// Attempts made.
    pub attempt: i32,
    /// When the next attempt is due.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Status code of the last attempt.
    pub last_status_code: Option<i32>,
    /// Error of the last attempt.
    pub last_error: Option<String>,
    /// When the event happened.
    pub created_at: DateTime<Utc>,
}

/// One attempt of a delivery.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The delivery.
    pub delivery_id: Uuid,
    /// 1-based.
    pub attempt: i32,
    /// HTTP status received.
    pub status_code: Option<i32>,
    /// Time to the response or error.
    pub latency_ms: i32,
    /// Why it failed.
    pub error: Option<String>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
}

/// The latest deliveries of a subscription, newest first, with their attempts.
pub async fn list_deliveries(
    pool: &PgPool,
    webhook_id: Uuid,
    limit: i64,
) -> Result<Vec<(Delivery, Vec<Attempt>)>, sqlx::Error> {
    let deliveries = sqlx::query_as!(
        Delivery,
        "SELECT id, event_type, subject_id, status, attempt, next_attempt_at, last_status_code, last_error, created_at
         FROM webhook_deliveries WHERE webhook_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2",
        webhook_id,
        limit,
    )
    .fetch_all(pool)
    .await?;
    let ids: Vec<Uuid> = deliveries.iter().map(|d| d.id).collect();
    let attempts = sqlx::query_as!(
        Attempt,
        "SELECT delivery_id, attempt, status_code, latency_ms, error, created_at
         FROM webhook_attempts WHERE delivery_id = ANY($1) ORDER BY delivery_id, attempt",
        &ids,
    )
    .fetch_all(pool)
    .await?;
    Ok(deliveries
        .into_iter()
        .map(|d| {
            let mine = attempts.iter().filter(|a| a.delivery_id == d.id).cloned().collect();
            (d, mine)
        })
        .collect())
}

/// Makes a delivery of `webhook_id` due now, whatever its state (a manual retry); `false` if
/// there is no such delivery.
pub async fn retry_now(pool: &PgPool, webhook_id: Uuid, delivery_id: Uuid) -> Result<bool, sqlx::Error> {
    let r = sqlx::query!(
        "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = now(), enqueued_at = now()
         WHERE id = $2 AND webhook_id = $1",
        webhook_id,
        delivery_id,
    )
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Pending deliveries (the backlog gauge).
pub async fn backlog(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM webhook_deliveries WHERE status = 'pending'"#)
        .fetch_one(pool)
        .await
}

/// Records `document.ready` or `document.failed` for a document, and `batch.completed` when it
/// was the last document of its batch still queued or processing. Runs inside the transaction
/// that set the document's status.
pub async fn record_document(
    tx: &mut Transaction<'_, Postgres>,
    event: &str,
    document_id: Uuid,
    batch_id: Option<Uuid>,
) -> Result<(), sqlx::Error> {
    record(tx, event, document_id).await?;
    let Some(batch_id) = batch_id else { return Ok(()) };
    // The row lock orders concurrent finishes of one batch: the last to take it sees every
    // other document's status committed (the next statement reads a fresh snapshot), so
    // exactly one of them completes the batch.
    sqlx::query!("SELECT id FROM ingestion_batches WHERE id = $1 FOR UPDATE", batch_id)
        .fetch_optional(&mut **tx)
        .await?;
    let done = sqlx::query_scalar!(
        "UPDATE ingestion_batches SET completed_at = now()
         WHERE id = $1 AND completed_at IS NULL AND NOT EXISTS (
             SELECT 1 FROM documents WHERE batch_id = $1 AND deleted_at IS NULL AND status IN ('queued', 'processing'))
         RETURNING id",
        batch_id,
    )
    .fetch_optional(&mut **tx)
    .await?;
    if done.is_some() {
        record(tx, "batch.completed", batch_id).await?;
    }
    Ok(())
}
