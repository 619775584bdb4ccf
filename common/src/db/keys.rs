//! `api_keys`: admin and client keys, stored as SHA-256.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::keys::{self, Role};

/// A stored key (never the key itself).
#[derive(Debug, Clone)]
pub struct ApiKey {
    /// Id, referenced by threads and runs.
    pub id: Uuid,
    /// Operator-chosen name.
    pub name: String,
    /// What the key may do.
    pub role: Role,
    /// Displayable start of the key.
    pub key_prefix: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Set when the key no longer works.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Override of the runs-per-minute limit of this key (`0` = unlimited).
    pub runs_per_minute: Option<i32>,
    /// Monthly cost budget in USD; new runs are refused once usage reaches it.
    pub monthly_budget_usd: Option<f64>,
}

/// Creates a key and returns it with its row; the key is not recoverable later.
pub async fn create(pool: &PgPool, role: Role, name: &str) -> Result<(String, ApiKey), sqlx::Error> {
    let key = keys::generate(role);
    let row = sqlx::query_as!(
        ApiKey,
        r#"INSERT INTO api_keys (id, name, role, key_hash, key_prefix) VALUES ($1, $2, $3, $4, $5)
         RETURNING id, name, role AS "role: Role", key_prefix, created_at, revoked_at, runs_per_minute,
           monthly_budget_usd::float8 AS monthly_budget_usd"#,
        crate::new_id(),
        name,
        role as _,
        &keys::hash(&key)[..],
        keys::display_prefix(&key),
    )
    .fetch_one(pool)
    .await?;
    Ok((key, row))
}

/// The live (not revoked) key with this hash.
pub async fn find_active_by_hash(pool: &PgPool, hash: &[u8]) -> Result<Option<ApiKey>, sqlx::Error> {
    sqlx::query_as!(
        ApiKey,
        r#"SELECT id, name, role AS "role: Role", key_prefix, created_at, revoked_at, runs_per_minute,
           monthly_budget_usd::float8 AS monthly_budget_usd FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL"#,
        hash
    )
    .fetch_optional(pool)
    .await
}

/// Sets the per-key limits (`None` clears an override).
pub async fn set_limits(
    pool: &PgPool,
    id: Uuid,
    runs_per_minute: Option<i32>,
    monthly_budget_usd: Option<f64>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE api_keys SET runs_per_minute = $2, monthly_budget_usd = $3::float8::numeric WHERE id = $1",
        id,
        runs_per_minute,
        monthly_budget_usd,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// What a key has committed this month (UTC): its recorded cost, plus each of its runs in flight
/// (queued or in progress) at the average cost of its runs this month. New runs are admitted
/// against it, so that runs started together cannot all pass a budget that has room for one.
pub async fn committed_this_month<'e>(exec: impl sqlx::PgExecutor<'e>, id: Uuid) -> Result<f64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"WITH spend AS (
             SELECT COALESCE(sum(cost_usd), 0)::float8 AS spent,
                    COALESCE(sum(cost_usd) FILTER (WHERE run_id IS NOT NULL), 0)::float8 AS run_cost,
                    count(DISTINCT run_id) AS runs
             FROM usage_records
             WHERE api_key_id = $1 AND at >= date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'),
           in_flight AS (SELECT count(*) AS n FROM runs WHERE api_key_id = $1 AND status IN ('queued', 'in_progress'))
           SELECT (spent + CASE WHEN runs > 0 THEN run_cost / runs ELSE 0 END * n)::float8 AS "committed!"
           FROM spend, in_flight"#,
        id,
    )
    .fetch_one(exec)
    .await
}

/// Cost in USD recorded for a key since the start of the current month (UTC).
pub async fn spend_this_month(pool: &PgPool, id: Uuid) -> Result<f64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT COALESCE(sum(cost_usd), 0)::float8 AS "spend!" FROM usage_records
         WHERE api_key_id = $1 AND at >= date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"#,
        id,
    )
    .fetch_one(pool)
    .await
}

/// The live (not revoked) key with this id: a user token stops working with its issuing key.
pub async fn find_active_by_id(pool: &PgPool, id: Uuid) -> Result<Option<ApiKey>, sqlx::Error> {
    sqlx::query_as!(
        ApiKey,
        r#"SELECT id, name, role AS "role: Role", key_prefix, created_at, revoked_at, runs_per_minute,
           monthly_budget_usd::float8 AS monthly_budget_usd FROM api_keys WHERE id = $1 AND revoked_at IS NULL"#,
        id
    )
    .fetch_optional(pool)
    .await
}

/// The id of the oldest live client key called `name` (the demo page's shared key).
pub async fn oldest_active_client_named(pool: &PgPool, name: &str) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT id FROM api_keys WHERE name = $1 AND role = 'client' AND revoked_at IS NULL ORDER BY created_at LIMIT 1",
        name,
    )
    .fetch_optional(pool)
    .await
}

/// Every key, newest first, revoked ones included (never the key itself).
pub async fn list(pool: &PgPool) -> Result<Vec<ApiKey>, sqlx::Error> {
    sqlx::query_as!(
        ApiKey,
        r#"SELECT id, name, role AS "role: Role", key_prefix, created_at, revoked_at, runs_per_minute,
           monthly_budget_usd::float8 AS monthly_budget_usd FROM api_keys ORDER BY created_at DESC, id"#
    )
    .fetch_all(pool)
    .await
}

/// Revokes the key `id`; returns its row, with `revoked_at` set (kept when it was already
/// revoked), or `None` when there is no such key. Callers holding the key are refused within
/// the API's key cache lifetime.
pub async fn revoke(pool: &PgPool, id: Uuid) -> Result<Option<ApiKey>, sqlx::Error> {
    sqlx::query_as!(
        ApiKey,
        r#"UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1
         RETURNING id, name, role AS "role: Role", key_prefix, created_at, revoked_at, runs_per_minute,
           monthly_budget_usd::float8 AS monthly_budget_usd"#,
        id
    )
    .fetch_optional(pool)
    .await
}

/// Gives the live key `id` a new secret and returns it with the row, or `None` when `id` is
/// not a live key. The old secret stops matching at once (the API's key cache may accept it
/// for its lifetime); the key keeps its id, so its threads, limits and user tokens stay.
pub async fn rotate(pool: &PgPool, id: Uuid) -> Result<Option<(String, ApiKey)>, sqlx::Error> {
    let role =
        sqlx::query_scalar!(r#"SELECT role AS "role: Role" FROM api_keys WHERE id = $1 AND revoked_at IS NULL"#, id)
            .fetch_optional(pool)
            .await?;
    let Some(role) = role else { return Ok(None) };
    let key = keys::generate(role);
    let row = sqlx::query_as!(
        ApiKey,
        r#"UPDATE api_keys SET key_hash = $2, key_prefix = $3 WHERE id = $1 AND revoked_at IS NULL
         RETURNING id, name, role AS "role: Role", key_prefix, created_at, revoked_at, runs_per_minute,
           monthly_budget_usd::float8 AS monthly_budget_usd"#,
        id,
        &keys::hash(&key)[..],
        keys::display_prefix(&key),
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|row| (key, row)))
}
