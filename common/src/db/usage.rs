//! `usage_records`: one row per provider call, the source of cost reporting.

use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::domain::{UsageKind, UsageOutcome};

/// A provider call to record.
#[derive(Debug, Clone)]
pub struct NewUsage {
    /// Chosen by the caller, so that writing the same record again (a retried transaction
    /// whose commit may have landed) never counts the call twice.
    pub id: Uuid,
    /// Which call.
    pub kind: UsageKind,
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
    /// How it ended.
    pub outcome: UsageOutcome,
    /// Duration of the call.
    pub latency_ms: i64,
    /// The tokens were counted with the tokenizer because the provider reported no usage (the
    /// call was cut, cancelled or abandoned before its usage chunk).
    pub estimated: bool,
    /// The upstream a chat call went to; `None` for embeddings and moderation (they use
    /// `OPENAI_BASE_URL`).
    pub upstream: Option<String>,
}

/// Inserts a usage record; a record whose id is already stored is left as it is.
pub async fn insert<'e>(exec: impl PgExecutor<'e>, u: &NewUsage) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO usage_records (id, kind, model, api_key_id, assistant_id, run_id, document_id, input_tokens,
                                    cached_input_tokens, output_tokens, cost_usd, outcome, latency_ms, estimated,
                                    upstream)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::float8::numeric, $12, $13, $14, $15)
         ON CONFLICT (id) DO NOTHING",
        u.id,
        u.kind as _,
        u.model,
        u.api_key_id,
        u.assistant_id,
        u.run_id,
        u.document_id,
        u.input_tokens as i32,
        u.cached_input_tokens as i32,
        u.output_tokens as i32,
        u.cost_usd,
        u.outcome as _,
        u.latency_ms as i32,
        u.estimated,
        u.upstream,
    )
    .execute(exec)
    .await?;
    Ok(())
}

/// Usage records of one run (tests and reports).
pub async fn count_for_run(pool: &PgPool, run_id: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT count(*) AS "count!" FROM usage_records WHERE run_id = $1"#, run_id)
        .fetch_one(pool)
        .await
}

/// A dimension `/v1/usage` can group by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// UTC day, `YYYY-MM-DD`.
    Day,
    /// Model billed.
    Model,
    /// Assistant id.
    Assistant,
    /// `chat`, `embedding` or `moderation`.
    Kind,
    /// Key id.
    ApiKey,
}

impl GroupBy {
    /// Parses a `group_by` item.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "day" => GroupBy::Day,
            "model" => GroupBy::Model,
            "assistant" => GroupBy::Assistant,
            "kind" => GroupBy::Kind,
            "api_key" => GroupBy::ApiKey,
            _ => return None,
        })
    }

    /// The field name in the response.
    pub fn name(self) -> &'static str {
        match self {
            GroupBy::Day => "day",
            GroupBy::Model => "model",
            GroupBy::Assistant => "assistant_id",
            GroupBy::Kind => "kind",
            GroupBy::ApiKey => "api_key_id",
        }
    }

    /// A constant SQL expression (never user text).
    fn expr(self) -> &'static str {
        match self {
            GroupBy::Day => "to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
            GroupBy::Model => "model",
            GroupBy::Assistant => "assistant_id::text",
            GroupBy::Kind => "kind",
            GroupBy::ApiKey => "api_key_id::text",
        }
    }
}

/// One group of usage (or the totals, with no keys).
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRow {
    /// The group's key values, in `group_by` order (`None` for a missing assistant or key).
    pub keys: Vec<Option<String>>,
    /// Provider calls.
    pub requests: i64,
    /// Calls that failed: outcome neither `ok` nor `cancelled` (a cancel is the client's choice).
    pub failures: i64,
    /// Distinct runs.
    pub runs: i64,
    /// Input tokens, cached included.
    pub input_tokens: i64,
    /// Cached input tokens.
    pub cached_input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Cost of the priced calls; `None` when the group has unpriced calls and no priced cost.
    pub cost_usd: Option<f64>,
    /// Billed calls (successful or estimated) with no price (unknown model): their cost is
    /// unknown, not zero.
    pub unpriced_requests: i64,
    /// The unpriced models of the group.
    pub unpriced_models: Vec<String>,
    /// Calls whose tokens were estimated with the tokenizer (included in the figures above).
    pub estimated_requests: i64,
    /// The estimated part of `input_tokens`.
    pub estimated_input_tokens: i64,
    /// The estimated part of `output_tokens`.
    pub estimated_output_tokens: i64,
    /// The estimated part of `cost_usd` (0 when none).
    pub estimated_cost_usd: f64,
}

/// Aggregates `usage_records` with `at` in `[from, to)` by `group_by` (empty: one total row).
pub async fn report(
    pool: &PgPool,
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
    group_by: &[GroupBy],
) -> Result<Vec<UsageRow>, sqlx::Error> {
    use sqlx::Row;
    // Built at run time: the selected and grouped columns depend on `group_by` (constant SQL
    // expressions from [`GroupBy::expr`], never user text), so no query! macro can hold it.
    let keys: Vec<String> = group_by.iter().enumerate().map(|(i, g)| format!("{} AS k{i}", g.expr())).collect();
    let positions: Vec<String> = (1..=group_by.len()).map(|i| i.to_string()).collect();
    let (select_keys, group) = if group_by.is_empty() {
        (String::new(), String::new())
    } else {
        (format!("{}, ", keys.join(", ")), format!("GROUP BY {0} ORDER BY {0}", positions.join(", ")))
    };
    // A call is unpriced when it was billed (it succeeded, or its tokens were counted) and its
    // model has no price.
    let unpriced = "cost_usd IS NULL AND (outcome = $3 OR estimated)";
    let sql = format!(
        "SELECT {select_keys}count(*) AS requests, count(*) FILTER (WHERE outcome NOT IN ($3, $4)) AS failures,
                count(DISTINCT run_id) AS runs,
                COALESCE(sum(input_tokens), 0)::int8 AS input_tokens,
                COALESCE(sum(cached_input_tokens), 0)::int8 AS cached_input_tokens,
                COALESCE(sum(output_tokens), 0)::int8 AS output_tokens,
                (CASE WHEN sum(cost_usd) IS NULL AND count(*) FILTER (WHERE {unpriced}) > 0 THEN NULL
                      ELSE COALESCE(sum(cost_usd), 0) END)::float8 AS cost_usd,
                count(*) FILTER (WHERE {unpriced}) AS unpriced_requests,
                COALESCE(array_agg(DISTINCT model) FILTER (WHERE {unpriced}), '{{}}') AS unpriced_models,
                count(*) FILTER (WHERE estimated) AS estimated_requests,
                COALESCE(sum(input_tokens) FILTER (WHERE estimated), 0)::int8 AS estimated_input_tokens,
                COALESCE(sum(output_tokens) FILTER (WHERE estimated), 0)::int8 AS estimated_output_tokens,
                COALESCE(sum(cost_usd) FILTER (WHERE estimated), 0)::float8 AS estimated_cost_usd
         FROM usage_records WHERE at >= $1 AND at < $2 {group}"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(from)
        .bind(to)
        .bind(UsageOutcome::Ok)
        .bind(UsageOutcome::Cancelled)
        .fetch_all(pool)
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let mut keys = Vec::with_capacity(group_by.len());
        for i in 0..group_by.len() {
            keys.push(row.try_get::<Option<String>, _>(i)?);
        }
        out.push(UsageRow {
            keys,
            requests: row.try_get("requests")?,
            failures: row.try_get("failures")?,
            runs: row.try_get("runs")?,
            input_tokens: row.try_get("input_tokens")?,
            cached_input_tokens: row.try_get("cached_input_tokens")?,
            output_tokens: row.try_get("output_tokens")?,
            cost_usd: row.try_get("cost_usd")?,
            unpriced_requests: row.try_get("unpriced_requests")?,
            unpriced_models: row.try_get("unpriced_models")?,
            estimated_requests: row.try_get("estimated_requests")?,
            estimated_input_tokens: row.try_get("estimated_input_tokens")?,
            estimated_output_tokens: row.try_get("estimated_output_tokens")?,
            estimated_cost_usd: row.try_get("estimated_cost_usd")?,
        });
    }
    Ok(out)
}
