//! `threads`: conversations, each owned by one key and one end user.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::Page;

/// Who is asking: the scope every thread, message and run lookup is checked against.
#[derive(Debug, Clone)]
pub struct Owner {
    /// The key; `None` for admin keys, which see every thread.
    pub api_key_id: Option<Uuid>,
    /// The end user of a user token; `None` when the key acts for any of its users.
    pub end_user: Option<String>,
}

/// A conversation.
#[derive(Debug, Clone)]
pub struct Thread {
    /// Id.
    pub id: Uuid,
    /// Owning key.
    pub api_key_id: Uuid,
    /// Owning end user.
    pub end_user: Option<String>,
    /// Default assistant of the thread's runs.
    pub assistant_id: Option<Uuid>,
    /// Display title.
    pub title: Option<String>,
    /// Free-form client data.
    pub metadata: Value,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last message or run.
    pub last_activity_at: DateTime<Utc>,
}

/// Creates a thread.
pub async fn create(
    pool: &PgPool,
    api_key_id: Uuid,
    end_user: Option<&str>,
    assistant_id: Option<Uuid>,
    title: Option<&str>,
    metadata: &Value,
) -> Result<Thread, sqlx::Error> {
    sqlx::query_as!(
        Thread,
        "INSERT INTO threads (id, api_key_id, end_user, assistant_id, title, metadata)
         VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING id, api_key_id, end_user, assistant_id, title, metadata, created_at, last_activity_at",
        crate::new_id(),
        api_key_id,
        end_user,
        assistant_id,
        title,
        metadata,
    )
    .fetch_one(pool)
    .await
}

/// The thread if `owner` may see it.
pub async fn get(pool: &PgPool, id: Uuid, owner: &Owner) -> Result<Option<Thread>, sqlx::Error> {
    sqlx::query_as!(
        Thread,
        "SELECT id, api_key_id, end_user, assistant_id, title, metadata, created_at, last_activity_at FROM threads
         WHERE id = $1 AND ($2::uuid IS NULL OR api_key_id = $2) AND ($3::text IS NULL OR end_user = $3)",
        id,
        owner.api_key_id,
        owner.end_user.as_deref(),
    )
    .fetch_optional(pool)
    .await
}

/// Threads `owner` may see, optionally of one end user, oldest first after the cursor.
pub async fn list(
    pool: &PgPool,
    owner: &Owner,
    user: Option<&str>,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Page<Thread>, sqlx::Error> {
    let rows = sqlx::query_as!(
        Thread,
        "SELECT id, api_key_id, end_user, assistant_id, title, metadata, created_at, last_activity_at FROM threads
         WHERE ($1::uuid IS NULL OR api_key_id = $1) AND ($2::text IS NULL OR end_user = $2)
           AND ($3::text IS NULL OR end_user = $3) AND ($4::uuid IS NULL OR id > $4)
         ORDER BY id LIMIT $5",
        owner.api_key_id,
        owner.end_user.as_deref(),
        user,
        after,
        limit + 1,
    )
    .fetch_all(pool)
    .await?;
    Ok(Page::from_overfetch(rows, limit))
}

/// Deletes a thread with its messages, runs and events.
pub async fn delete(pool: &PgPool, id: Uuid, owner: &Owner) -> Result<bool, sqlx::Error> {
    let n = sqlx::query!(
        "DELETE FROM threads
         WHERE id = $1 AND ($2::uuid IS NULL OR api_key_id = $2) AND ($3::text IS NULL OR end_user = $3)",
        id,
        owner.api_key_id,
        owner.end_user.as_deref(),
    )
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n > 0)
}
