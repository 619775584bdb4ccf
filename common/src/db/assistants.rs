//! `assistants` and their knowledge bases.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgExecutor, PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::Page;
use crate::domain::ModerationMode;

/// A persona: instructions, model and settings.
#[derive(Debug, Clone)]
pub struct Assistant {
    /// Id.
    pub id: Uuid,
    /// Display name.
    pub name: String,
    /// System prompt.
    pub instructions: String,
    /// Model name sent to the provider.
    pub model: String,
    /// Models tried in order when `model` cannot answer (its upstreams down or out of retries).
    pub fallback_models: Vec<String>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Cap on answer length.
    pub max_output_tokens: Option<i32>,
    /// Whether user messages are moderated.
    pub moderation: ModerationMode,
    /// Days of inactivity after which threads are deleted; `None` = global default.
    pub retention_days: Option<i32>,
    /// Free-form client data.
    pub metadata: Value,
    /// Knowledge bases searched for answers.
    pub knowledge_base_ids: Vec<Uuid>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// Fields of a new assistant, or the full new state of an updated one.
#[derive(Debug, Clone)]
pub struct AssistantFields {
    /// Display name.
    pub name: String,
    /// System prompt.
    pub instructions: String,
    /// Model name.
    pub model: String,
    /// Fallback models, in order.
    pub fallback_models: Vec<String>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Cap on answer length.
    pub max_output_tokens: Option<i32>,
    /// Whether user messages are moderated.
    pub moderation: ModerationMode,
    /// Retention override.
    pub retention_days: Option<i32>,
    /// Free-form client data.
    pub metadata: Value,
    /// Knowledge bases.
    pub knowledge_base_ids: Vec<Uuid>,
}

/// Creates an assistant.
pub async fn create(pool: &PgPool, f: &AssistantFields) -> Result<Assistant, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let id = crate::new_id();
    sqlx::query!(
        "INSERT INTO assistants (id, name, instructions, model, temperature, max_output_tokens, moderation,
                                 retention_days, metadata, fallback_models)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        id,
        f.name,
        f.instructions,
        f.model,
        f.temperature,
        f.max_output_tokens,
        f.moderation as _,
        f.retention_days,
        f.metadata,
        &f.fallback_models,
    )
    .execute(&mut *tx)
    .await?;
    set_knowledge_bases(&mut tx, id, &f.knowledge_base_ids).await?;
    let a = get(&mut *tx, id).await?.ok_or(sqlx::Error::RowNotFound)?;
    tx.commit().await?;
    Ok(a)
}

async fn set_knowledge_bases(tx: &mut Transaction<'_, Postgres>, id: Uuid, kbs: &[Uuid]) -> Result<(), sqlx::Error> {
    sqlx::query!("DELETE FROM assistant_knowledge_bases WHERE assistant_id = $1", id).execute(&mut **tx).await?;
    sqlx::query!(
        "INSERT INTO assistant_knowledge_bases (assistant_id, knowledge_base_id)
         SELECT $1, kb FROM UNNEST($2::uuid[]) AS kb ON CONFLICT DO NOTHING",
        id,
        kbs,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A live (not deleted) assistant.
pub async fn get<'e>(exec: impl PgExecutor<'e>, id: Uuid) -> Result<Option<Assistant>, sqlx::Error> {
    sqlx::query_as!(
        Assistant,
        r#"SELECT a.id, a.name, a.instructions, a.model, a.fallback_models, a.temperature, a.max_output_tokens,
           a.moderation AS "moderation: ModerationMode", a.retention_days, a.metadata, a.created_at, a.updated_at,
           COALESCE((SELECT array_agg(k.knowledge_base_id ORDER BY k.knowledge_base_id)
                     FROM assistant_knowledge_bases k WHERE k.assistant_id = a.id), '{}') AS "knowledge_base_ids!"
         FROM assistants a WHERE a.id = $1 AND a.deleted_at IS NULL"#,
        id
    )
    .fetch_optional(exec)
    .await
}

/// Live assistants in creation order after the cursor.
pub async fn list(pool: &PgPool, after: Option<Uuid>, limit: i64) -> Result<Page<Assistant>, sqlx::Error> {
    let rows = sqlx::query_as!(
        Assistant,
        r#"SELECT a.id, a.name, a.instructions, a.model, a.fallback_models, a.temperature, a.max_output_tokens,
           a.moderation AS "moderation: ModerationMode", a.retention_days, a.metadata, a.created_at, a.updated_at,
           COALESCE((SELECT array_agg(k.knowledge_base_id ORDER BY k.knowledge_base_id)
                     FROM assistant_knowledge_bases k WHERE k.assistant_id = a.id), '{}') AS "knowledge_base_ids!"
         FROM assistants a
         WHERE a.deleted_at IS NULL AND ($1::uuid IS NULL OR a.id > $1)
         ORDER BY a.id LIMIT $2"#,
        after,
        limit + 1,
    )
    .fetch_all(pool)
    .await?;
    Ok(Page::from_overfetch(rows, limit))
}

/// Replaces the fields of a live assistant.
pub async fn update(pool: &PgPool, id: Uuid, f: &AssistantFields) -> Result<Option<Assistant>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let updated = sqlx::query!(
        "UPDATE assistants SET name = $2, instructions = $3, model = $4, temperature = $5, max_output_tokens = $6,
                moderation = $7, retention_days = $8, metadata = $9, fallback_models = $10
         WHERE id = $1 AND deleted_at IS NULL",
        id,
        f.name,
        f.instructions,
        f.model,
        f.temperature,
        f.max_output_tokens,
        f.moderation as _,
        f.retention_days,
        f.metadata,
        &f.fallback_models,
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated == 0 {
        return Ok(None);
    }
    set_knowledge_bases(&mut tx, id, &f.knowledge_base_ids).await?;
    let a = get(&mut *tx, id).await?;
    tx.commit().await?;
    Ok(a)
}

/// Soft-deletes an assistant: existing threads and runs keep their history.
pub async fn delete(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    let n = sqlx::query!("UPDATE assistants SET deleted_at = now() WHERE id = $1 AND deleted_at IS NULL", id)
        .execute(pool)
        .await?
        .rows_affected();
    Ok(n > 0)
}

/// The id of the newest live assistant called `name` (the demo page's default assistant).
pub async fn newest_id_named(pool: &PgPool, name: &str) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT id FROM assistants WHERE name = $1 AND deleted_at IS NULL ORDER BY created_at DESC LIMIT 1",
        name,
    )
    .fetch_optional(pool)
    .await
}

/// An assistant even if deleted since (a run submitted before the delete still answers).
pub async fn get_including_deleted(pool: &PgPool, id: Uuid) -> Result<Option<Assistant>, sqlx::Error> {
    sqlx::query_as!(
        Assistant,
        r#"SELECT a.id, a.name, a.instructions, a.model, a.fallback_models, a.temperature, a.max_output_tokens,
           a.moderation AS "moderation: ModerationMode", a.retention_days, a.metadata, a.created_at, a.updated_at,
           COALESCE((SELECT array_agg(k.knowledge_base_id ORDER BY k.knowledge_base_id)
                     FROM assistant_knowledge_bases k WHERE k.assistant_id = a.id), '{}') AS "knowledge_base_ids!"
         FROM assistants a WHERE a.id = $1"#,
        id
    )
    .fetch_optional(pool)
    .await
}
