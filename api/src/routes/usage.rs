//! `GET /v1/usage`: tokens, cost, requests and failures from `usage_records`, grouped by day,
//! model, assistant, kind or key. Unpriced models have a null cost and are flagged, never
//! reported as free.

use axum::extract::State;
use chatq_common::db::{self, usage::GroupBy};
use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    auth::Principal,
    error::{ApiError, ApiErrorCode},
    extract::{Json, Query},
    state::AppState,
    validate::{Problems, Validate},
};

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(usage))
}

/// The report's range and grouping.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// Start, inclusive: RFC 3339 or a UTC day `YYYY-MM-DD` (default: 30 days before `to`).
    pub from: Option<String>,
    /// End, exclusive: RFC 3339 or a UTC day (the day itself is included; default: now).
    pub to: Option<String>,
    /// Comma-separated: `day`, `model`, `assistant`, `kind`, `api_key` (default: none, totals only).
    pub group_by: Option<String>,
}

impl Validate for UsageQuery {
    fn validate(&self, p: &mut Problems) {
        p.opt_text("from", self.from.as_deref(), 1, 64);
        p.opt_text("to", self.to.as_deref(), 1, 64);
        p.opt_text("group_by", self.group_by.as_deref(), 0, 200);
    }
}

/// Figures of a group or of the totals.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageFigures {
    /// Provider calls.
    pub requests: i64,
    /// Calls that failed (outcome other than `ok` or `cancelled`).
    pub failures: i64,
    /// `failures / requests`, 0 when there were no requests.
    pub failure_rate: f64,
    /// Distinct runs.
    pub runs: i64,
    /// Input tokens, cached ones included.
    pub input_tokens: i64,
    /// The cached part of `input_tokens`.
    pub cached_input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Cost in USD of the priced calls; `null` when the group only has unpriced calls.
    pub cost_usd: Option<f64>,
    /// `true` when some calls had no price: `cost_usd` leaves them out.
    pub unpriced: bool,
    /// Billed calls (successful or estimated) of unpriced models.
    pub unpriced_requests: i64,
    /// The unpriced models.
    pub unpriced_models: Vec<String>,
    /// Calls the provider reported no usage for (cancelled, cut or abandoned mid-stream), whose
    /// tokens chatq counted with the tokenizer. They are included in every figure above.
    pub estimated_requests: i64,
    /// The estimated part of `input_tokens`.
    pub estimated_input_tokens: i64,
    /// The estimated part of `output_tokens`.
    pub estimated_output_tokens: i64,
    /// The estimated part of `cost_usd`.
    pub estimated_cost_usd: f64,
}

impl From<db::usage::UsageRow> for UsageFigures {
    fn from(r: db::usage::UsageRow) -> Self {
        Self {
            failure_rate: if r.requests > 0 { r.failures as f64 / r.requests as f64 } else { 0.0 },
            requests: r.requests,
            failures: r.failures,
            runs: r.runs,
            input_tokens: r.input_tokens,
            cached_input_tokens: r.cached_input_tokens,
            output_tokens: r.output_tokens,
            cost_usd: r.cost_usd,
            unpriced: r.unpriced_requests > 0,
            unpriced_requests: r.unpriced_requests,
            unpriced_models: r.unpriced_models,
            estimated_requests: r.estimated_requests,
            estimated_input_tokens: r.estimated_input_tokens,
            estimated_output_tokens: r.estimated_output_tokens,
            estimated_cost_usd: r.estimated_cost_usd,
        }
    }
}

/// One group: its keys (`day`, `model`, `assistant_id`, `kind`, `api_key_id`) and figures.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageRowOut {
    /// The group's keys.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub group: Map<String, Value>,
    /// The figures.
    #[serde(flatten)]
    pub figures: UsageFigures,
}

/// A usage report.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageReport {
    /// Start of the range (inclusive).
    pub from: DateTime<Utc>,
    /// End of the range (exclusive).
    pub to: DateTime<Utc>,
    /// The grouping used.
    pub group_by: Vec<String>,
    /// One row per group, ordered by the group keys.
    pub rows: Vec<UsageRowOut>,
    /// All calls in the range.
    pub totals: UsageFigures,
}

fn parse_bound(name: &str, raw: &str, end: bool) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Ok(t.with_timezone(&Utc));
    }
    match NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        // A day as `to` includes that day.
        Ok(d) => Ok(d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc()
            + if end { Duration::days(1) } else { Duration::zero() }),
        Err(_) => Err(ApiError::BadRequest {
            code: ApiErrorCode::InvalidQuery,
            message: format!("{name} must be an RFC 3339 time or a day YYYY-MM-DD"),
        }),
    }
}

/// Usage and cost report (admin).
#[utoipa::path(get, path = "/v1/usage", tag = "usage", params(UsageQuery),
    responses((status = 200, body = UsageReport), (status = 400), (status = 403)))]
pub async fn usage(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<UsageQuery>,
) -> Result<Json<UsageReport>, ApiError> {
    principal.require_admin()?;
    let to = match &q.to {
        Some(raw) => parse_bound("to", raw, true)?,
        None => Utc::now(),
    };
    let from = match &q.from {
        Some(raw) => parse_bound("from", raw, false)?,
        None => to - Duration::days(30),
    };
    if from >= to {
        return Err(ApiError::BadRequest {
            code: ApiErrorCode::InvalidQuery,
            message: "from must be before to".into(),
        });
    }
    let mut group_by = Vec::new();
    for name in q.group_by.as_deref().unwrap_or("").split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let g = GroupBy::parse(name).ok_or_else(|| ApiError::BadRequest {
            code: ApiErrorCode::InvalidQuery,
            message: format!("group_by: unknown dimension {name:?} (use day, model, assistant, kind, api_key)"),
        })?;
        if !group_by.contains(&g) {
            group_by.push(g);
        }
    }
    let rows = db::usage::report(&state.pool, from, to, &group_by).await?;
    let totals = db::usage::report(&state.pool, from, to, &[]).await?.into_iter().next();
    let totals = totals.map(UsageFigures::from).ok_or_else(|| ApiError::Internal(anyhow::anyhow!("no totals row")))?;
    let rows = rows
        .into_iter()
        .map(|mut r| {
            let keys = std::mem::take(&mut r.keys);
            let group = group_by
                .iter()
                .zip(keys)
                .map(|(g, k)| (g.name().to_string(), k.map_or(Value::Null, Value::String)))
                .collect();
            UsageRowOut { group, figures: r.into() }
        })
        .collect();
    Ok(Json(UsageReport { from, to, group_by: group_by.iter().map(|g| g.name().to_string()).collect(), rows, totals }))
}
