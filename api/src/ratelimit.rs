//! Rate limits and quotas, kept in Redis so every API replica shares them: runs per minute per
//! key and per end user (fixed one-minute windows), active runs per end user, and an optional
//! monthly cost budget per key. The counters' keys are in
//! [`chatq_common::redis_formats::rate_limit`].

use chatq_common::{
    db::{
        self,
        runs::{Limits, Refusal},
    },
    redis_formats::rate_limit::{self, RunScope},
};

use crate::{
    auth::Principal,
    error::{ApiError, ApiErrorCode},
    state::AppState,
};

/// Checks every limit a new run is subject to, and counts it. The checks without side effects
/// (active runs, budget) come first, so a refused run does not use up the per-minute quota.
/// Both are made again, atomically with the insert, by [`db::runs::submit_within`] (with
/// [`run_limits`]); these early checks spare the quota.
pub async fn admit_run(state: &AppState, principal: &Principal, end_user: Option<&str>) -> Result<(), ApiError> {
    let config = &state.config;
    if let Some(user) = end_user
        && config.limits.user_active_runs > 0
    {
        let active = db::runs::active_for_user(&state.pool, principal.key_id, user).await?;
        if active >= i64::from(config.limits.user_active_runs) {
            return Err(refused(state, principal, Refusal::TooManyActive { active }));
        }
    }
    if let Some(budget) = principal.monthly_budget_usd
        && db::keys::committed_this_month(&state.pool, principal.key_id).await? >= budget
    {
        return Err(refused(state, principal, Refusal::BudgetExhausted));
    }
    let key_limit = match principal.runs_per_minute {
        Some(n) => n.max(0) as u64,
        None => u64::from(config.limits.key_runs_per_min),
    };
    if key_limit > 0 {
        count(state, RunScope::Key(principal.key_id), key_limit, "runs per minute for this key").await?;
    }
    if let Some(user) = end_user
        && config.limits.user_runs_per_min > 0
    {
        let scope = RunScope::EndUser(principal.key_id, user);
        count(state, scope, u64::from(config.limits.user_runs_per_min), "runs per minute for this user").await?;
    }
    Ok(())
}

/// The limits [`db::runs::submit_within`] checks again in the transaction that stores a run.
pub fn run_limits<'a>(state: &AppState, principal: &Principal, end_user: Option<&'a str>) -> Limits<'a> {
    let max_active = i64::from(state.config.limits.user_active_runs);
    Limits {
        active_per_user: end_user.filter(|_| max_active > 0).map(|user| (user, max_active)),
        monthly_budget_usd: principal.monthly_budget_usd,
    }
}

/// The 429 answering a run refused by its end user's active-run limit or its key's budget.
pub fn refused(state: &AppState, principal: &Principal, refusal: Refusal) -> ApiError {
    match refusal {
        Refusal::TooManyActive { active } => ApiError::RateLimited {
            code: ApiErrorCode::RateLimited,
            message: format!("this user already has {active} runs in progress; wait for one to finish"),
            limit: u64::from(state.config.limits.user_active_runs),
            remaining: 0,
            reset_secs: 1,
        },
        Refusal::BudgetExhausted => ApiError::RateLimited {
            code: ApiErrorCode::BudgetExhausted,
            message: format!(
                "this key's monthly budget of ${:.2} is used up",
                principal.monthly_budget_usd.unwrap_or_default()
            ),
            limit: 0,
            remaining: 0,
            reset_secs: seconds_to_next_month(),
        },
    }
}

/// Counts an upload of `bytes` against the key's daily quota (UTC day); refuses it, without
/// counting it, when it would go over `CHATQ_RATE_UPLOAD_BYTES_PER_DAY`. Fails open like the
/// run limits when Redis is unreachable.
pub async fn admit_upload(state: &AppState, principal: &Principal, bytes: u64) -> Result<(), ApiError> {
    let limit = state.config.limits.upload_bytes_per_day;
    if limit == 0 {
        return Ok(());
    }
    let now = chrono::Utc::now();
    let key = rate_limit::upload_key(state.queues.prefix(), principal.key_id, now);
    let reset_secs = 86_400 - (now.timestamp().max(0) as u64 % 86_400);
    let mut conn = state.redis.clone();
    let used: redis::RedisResult<(u64,)> = redis::pipe()
        .atomic()
        .incr(&key, bytes)
        .cmd("EXPIRE")
        .arg(&key)
        .arg(2 * 86_400)
        .ignore()
        .query_async(&mut conn)
        .await;
    match used {
        Ok((used,)) if used > limit => {
            // A refused upload stores nothing, so it must not use up the quota either.
            let _: redis::RedisResult<i64> = redis::cmd("DECRBY").arg(&key).arg(bytes).query_async(&mut conn).await;
            Err(ApiError::RateLimited {
                code: ApiErrorCode::RateLimited,
                message: format!("this upload would exceed the key's daily upload quota of {limit} bytes"),
                limit,
                remaining: limit.saturating_sub(used - bytes),
                reset_secs,
            })
        }
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::warn!(error = %e, "upload quota unavailable; admitting the upload");
            Ok(())
        }
    }
}

/// Counts one run in the current minute of `scope`; refuses it over `limit`. If Redis is
/// unreachable the run is admitted (and logged): rate limiting must not take the API down.
async fn count(state: &AppState, scope: RunScope<'_>, limit: u64, what: &str) -> Result<(), ApiError> {
    let now = chrono::Utc::now().timestamp().max(0) as u64;
    let window = now / 60;
    let reset_secs = 60 - now % 60;
    let key = rate_limit::runs_key(state.queues.prefix(), scope, window);
    let mut conn = state.redis.clone();
    let result: redis::RedisResult<(u64,)> =
        redis::pipe().atomic().incr(&key, 1).cmd("EXPIRE").arg(&key).arg(61).ignore().query_async(&mut conn).await;
    match result {
        Ok((used,)) if used > limit => Err(ApiError::RateLimited {
            code: ApiErrorCode::RateLimited,
            message: format!("too many runs: the limit is {limit} {what}"),
            limit,
            remaining: 0,
            reset_secs,
        }),
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::warn!(error = %e, "rate limiter unavailable; admitting the run");
            Ok(())
        }
    }
}

fn seconds_to_next_month() -> u64 {
    use chrono::{Datelike, TimeZone, Utc};
    let now = Utc::now();
    let (y, m) = if now.month() == 12 { (now.year() + 1, 1) } else { (now.year(), now.month() + 1) };
    let next = Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).single().unwrap_or(now);
    (next - now).num_seconds().max(1) as u64
}
