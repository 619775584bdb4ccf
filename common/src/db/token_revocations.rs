//! Revocations of user tokens, per client key and end user.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// Revokes the tokens `api_key_id` issued for `end_user` before `before`. Never moves an
/// existing revocation back; returns the revocation in force.
pub async fn revoke(
    pool: &PgPool,
    api_key_id: Uuid,
    end_user: &str,
    before: DateTime<Utc>,
) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar!(
        "INSERT INTO user_token_revocations (api_key_id, end_user, revoked_before) VALUES ($1, $2, $3)
         ON CONFLICT (api_key_id, end_user)
         DO UPDATE SET revoked_before = GREATEST(user_token_revocations.revoked_before, EXCLUDED.revoked_before)
         RETURNING revoked_before",
        api_key_id,
        end_user,
        before,
    )
    .fetch_one(pool)
    .await
}

/// Tokens of `end_user` issued by `api_key_id` before this time are revoked.
pub async fn revoked_before(
    pool: &PgPool,
    api_key_id: Uuid,
    end_user: &str,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT revoked_before FROM user_token_revocations WHERE api_key_id = $1 AND end_user = $2",
        api_key_id,
        end_user,
    )
    .fetch_optional(pool)
    .await
}
