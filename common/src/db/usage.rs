//! `usage_records`: one row per provider call, the source of cost reporting.

use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

/// A provider call to record.
#[derive(Debug, Clone)]
pub struct NewUsage {
    /// `chat`, `embedding` or `moderation`.
    pub kind: &'static str,
    /// Model billed.
    pub model: String,
    /// Key that caused the call.
    pub api_key_id: Option<Uuid>,
    /// Assistant, for chat.
    pub assistant_id: Option<Uuid>,
    /// Run, for chat and moderation.
    pub run_id: Option<Uuid>,
    /// Document, for embeddings.
    pub document_id: Option<Uuid>,
    /// Input tokens (cached included).
    pub input_tokens: i64,
    /// Cached input tokens.
    pub cached_input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Cost, `None` when unpriced.
    pub cost_usd: Option<f64>,
    /// `ok`, or an error code.
    pub outcome: String,
    /// Duration of the call.
    pub latency_ms: i64,
}

/// Inserts a usage record.
pub async fn insert<'e>(exec: impl PgExecutor<'e>, u: &NewUsage) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO usage_records (id, kind, model, api_key_id, assistant_id, run_id, document_id, input_tokens,
                                    cached_input_tokens, output_tokens, cost_usd, outcome, latency_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::float8::numeric, $12, $13)",
    )
    .bind(crate::new_id())
    .bind(u.kind)
    .bind(&u.model)
    .bind(u.api_key_id)
    .bind(u.assistant_id)
    .bind(u.run_id)
    .bind(u.document_id)
    .bind(u.input_tokens as i32)
    .bind(u.cached_input_tokens as i32)
    .bind(u.output_tokens as i32)
    .bind(u.cost_usd)
    .bind(&u.outcome)
    .bind(u.latency_ms as i32)
    .execute(exec)
    .await?;
    Ok(())
}

/// Usage records of one run (tests and reports).
pub async fn count_for_run(pool: &PgPool, run_id: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM usage_records WHERE run_id = $1").bind(run_id).fetch_one(pool).await
}
