//! `messages`: the conversation history. A role in a `WHERE` clause stays literal so Postgres
//! can match it to the predicate of the partial index `messages_one_answer_per_run`.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::Page;
use crate::domain::MessageRole;

/// One message of a thread.
#[derive(Debug, Clone)]
pub struct Message {
    /// Id (time-ordered: history order).
    pub id: Uuid,
    /// Thread.
    pub thread_id: Uuid,
    /// Author.
    pub role: MessageRole,
    /// Text.
    pub content: String,
    /// The run this message started (user) or that wrote it (assistant).
    pub run_id: Option<Uuid>,
    /// The client's own id of a user message, for idempotent submits.
    pub client_message_id: Option<String>,
    /// Sources cited by an answer.
    pub citations: Value,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// History of a thread, oldest first, after the cursor.
pub async fn list(
    pool: &PgPool,
    thread_id: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Page<Message>, sqlx::Error> {
    let rows = sqlx::query_as!(
        Message,
        r#"SELECT id, thread_id, role AS "role: MessageRole", content, run_id, client_message_id, citations, created_at
         FROM messages
         WHERE thread_id = $1 AND ($2::uuid IS NULL OR id > $2) ORDER BY id LIMIT $3"#,
        thread_id,
        after,
        limit + 1,
    )
    .fetch_all(pool)
    .await?;
    Ok(Page::from_overfetch(rows, limit))
}

/// The newest `limit` messages of a thread up to and including `until`, newest first
/// (the worker trims them to the token budget).
pub async fn recent_until(
    pool: &PgPool,
    thread_id: Uuid,
    until: Uuid,
    limit: i64,
) -> Result<Vec<Message>, sqlx::Error> {
    sqlx::query_as!(
        Message,
        r#"SELECT id, thread_id, role AS "role: MessageRole", content, run_id, client_message_id, citations, created_at
         FROM messages
         WHERE thread_id = $1 AND id <= $2 ORDER BY id DESC LIMIT $3"#,
        thread_id,
        until,
        limit,
    )
    .fetch_all(pool)
    .await
}

/// One message.
pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<Message>, sqlx::Error> {
    sqlx::query_as!(
        Message,
        r#"SELECT id, thread_id, role AS "role: MessageRole", content, run_id, client_message_id, citations, created_at
         FROM messages WHERE id = $1"#,
        id
    )
    .fetch_optional(pool)
    .await
}

/// Citations of a run's answer (empty when there is no answer yet).
pub async fn answer_citations(pool: &PgPool, run_id: Uuid) -> Result<Value, sqlx::Error> {
    let c = sqlx::query_scalar!("SELECT citations FROM messages WHERE run_id = $1 AND role = 'assistant'", run_id)
        .fetch_optional(pool)
        .await?;
    Ok(c.unwrap_or_else(|| Value::Array(Vec::new())))
}
