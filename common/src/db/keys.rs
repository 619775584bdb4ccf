//! `api_keys`: admin and client keys, stored as SHA-256.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::keys::{self, Role};

/// A stored key (never the key itself).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKey {
    /// Id, referenced by threads and runs.
    pub id: Uuid,
    /// Operator-chosen name.
    pub name: String,
    /// `admin` or `client`.
    pub role: String,
    /// Displayable start of the key.
    pub key_prefix: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Set when the key no longer works.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Creates a key and returns it with its row; the key is not recoverable later.
pub async fn create(pool: &PgPool, role: Role, name: &str) -> Result<(String, ApiKey), sqlx::Error> {
    let key = keys::generate(role);
    let row = sqlx::query_as::<_, ApiKey>(
        "INSERT INTO api_keys (id, name, role, key_hash, key_prefix) VALUES ($1, $2, $3, $4, $5)
         RETURNING id, name, role, key_prefix, created_at, revoked_at",
    )
    .bind(crate::new_id())
    .bind(name)
    .bind(role.as_str())
    .bind(keys::hash(&key))
    .bind(keys::display_prefix(&key))
    .fetch_one(pool)
    .await?;
    Ok((key, row))
}

/// The live (not revoked) key with this hash.
pub async fn find_active_by_hash(pool: &PgPool, hash: &[u8]) -> Result<Option<ApiKey>, sqlx::Error> {
    sqlx::query_as::<_, ApiKey>(
        "SELECT id, name, role, key_prefix, created_at, revoked_at FROM api_keys
         WHERE key_hash = $1 AND revoked_at IS NULL",
    )
    .bind(hash)
    .fetch_optional(pool)
    .await
}

// issue 3: user tokens

/// The live (not revoked) key with this id: a user token stops working with its issuing key.
pub async fn find_active_by_id(pool: &PgPool, id: Uuid) -> Result<Option<ApiKey>, sqlx::Error> {
    sqlx::query_as::<_, ApiKey>(
        "SELECT id, name, role, key_prefix, created_at, revoked_at FROM api_keys
         WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}
