//! Authentication: `Authorization: Bearer <key>` resolved to a [`Principal`].

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::{extract::FromRequestParts, http::request::Parts};
use chatq_common::{db, db::threads::Owner, keys::Role};
use uuid::Uuid;

use crate::{error::ApiError, state::AppState, user_token::Grant};

/// Who is calling.
#[derive(Clone, Debug)]
pub struct Principal {
    /// The key used.
    pub key_id: Uuid,
    /// What it may do.
    pub role: Role,
    /// Set for user tokens: the one end user this caller acts as.
    pub end_user: Option<String>,
    /// The key's own runs-per-minute limit, overriding the global one.
    pub runs_per_minute: Option<i32>,
    /// The key's monthly cost budget in USD.
    pub monthly_budget_usd: Option<f64>,
    /// Set for user tokens: what the token grants, re-checked by long-lived streams.
    pub token: Option<Grant>,
}

impl Principal {
    /// Fails with 403 unless this is an admin key.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.role == Role::Admin && self.end_user.is_none() {
            Ok(())
        } else {
            Err(ApiError::Forbidden("this route needs an admin key"))
        }
    }

    /// Whether this caller may pick assistant `id` for a thread or a run: keys may pick any,
    /// a user token only one it was bound to when issued.
    pub fn may_choose_assistant(&self, id: Uuid) -> bool {
        self.token.as_ref().is_none_or(|grant| grant.assistants.contains(&id))
    }

    /// The scope of threads this caller may see: admins see all, a client key its own, a user
    /// token its user's.
    pub fn owner(&self) -> Owner {
        match (self.role, &self.end_user) {
            (Role::Admin, None) => Owner { api_key_id: None, end_user: None },
            (_, end_user) => Owner { api_key_id: Some(self.key_id), end_user: end_user.clone() },
        }
    }
}

/// Resolved keys for a short time, so a request costs no database round trip for auth.
/// A revoked key stops working within [`KeyCache::TTL`].
#[derive(Default)]
pub struct KeyCache {
    entries: Mutex<HashMap<Vec<u8>, (Principal, Instant)>>,
}

impl KeyCache {
    /// How long a resolved key is trusted without asking Postgres.
    pub const TTL: Duration = Duration::from_secs(30);
    const MAX_ENTRIES: usize = 10_000;

    fn get(&self, hash: &[u8]) -> Option<Principal> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(hash).filter(|(_, at)| at.elapsed() < Self::TTL).map(|(p, _)| p.clone())
    }

    fn put(&self, hash: Vec<u8>, principal: Principal) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= Self::MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(hash, (principal, Instant::now()));
    }
}

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(parts).ok_or(ApiError::Unauthorized)?;
        resolve(state, token).await
    }
}

/// Whether the request carries an `Authorization: Bearer` header.
pub fn has_bearer(parts: &Parts) -> bool {
    bearer(parts).is_some()
}

/// Resolves an API key (`cq_...`) or a user token (`cqu_...`) to its principal.
pub async fn resolve(state: &AppState, token: &str) -> Result<Principal, ApiError> {
    if token.starts_with(crate::user_token::PREFIX) {
        return resolve_user_token(state, token).await;
    }
    if !token.starts_with("cq_") {
        return Err(ApiError::Unauthorized);
    }
    let hash = chatq_common::keys::hash(token);
    if let Some(p) = state.keys.get(&hash) {
        return Ok(p);
    }
    let key = db::keys::find_active_by_hash(&state.pool, &hash).await?.ok_or(ApiError::Unauthorized)?;
    let role = key.role;
    let principal = Principal {
        key_id: key.id,
        role,
        end_user: None,
        runs_per_minute: key.runs_per_minute,
        monthly_budget_usd: key.monthly_budget_usd,
        token: None,
    };
    state.keys.put(hash, principal.clone());
    Ok(principal)
}

/// A user token: a client principal scoped to one end user. Refused when tampered, expired,
/// revoked for its user, or when its issuing key was revoked (checked like keys, through the
/// cache).
pub async fn resolve_user_token(state: &AppState, token: &str) -> Result<Principal, ApiError> {
    let keys = state.tokens.as_ref().ok_or(ApiError::Unauthorized)?;
    let grant = keys.open(token, chrono::Utc::now().timestamp()).ok_or(ApiError::Unauthorized)?;
    let issuer = issuer(state, grant.key_id).await?.ok_or(ApiError::Unauthorized)?;
    if state.revocations.revoked(&state.pool, &grant).await? {
        return Err(ApiError::Unauthorized);
    }
    // The token acts for its user with the issuing key's limits.
    Ok(Principal {
        key_id: grant.key_id,
        role: Role::Client,
        end_user: Some(grant.user.clone()),
        runs_per_minute: issuer.runs_per_minute,
        monthly_budget_usd: issuer.monthly_budget_usd,
        token: Some(grant),
    })
}

/// The active key with this id, through the key cache.
async fn issuer(state: &AppState, key_id: Uuid) -> Result<Option<Principal>, ApiError> {
    let cache_key = [b"id:".as_slice(), key_id.as_bytes()].concat();
    if let Some(p) = state.keys.get(&cache_key) {
        return Ok(Some(p));
    }
    let Some(key) = db::keys::find_active_by_id(&state.pool, key_id).await? else {
        return Ok(None);
    };
    let p = Principal {
        key_id: key.id,
        role: key.role,
        end_user: None,
        runs_per_minute: key.runs_per_minute,
        monthly_budget_usd: key.monthly_budget_usd,
        token: None,
    };
    state.keys.put(cache_key, p.clone());
    Ok(Some(p))
}

/// Per end-user revocations of user tokens, cached briefly: a revocation made through another
/// API process takes effect here within [`Revocations::TTL`]; one made through this process at
/// once.
#[derive(Default)]
pub struct Revocations {
    entries: Mutex<HashMap<RevocationKey, (Option<i64>, Instant)>>,
}

/// A client key and one of its end users.
type RevocationKey = (Uuid, String);

impl Revocations {
    /// How long a looked-up revocation (or its absence) is trusted without asking Postgres.
    pub const TTL: Duration = Duration::from_secs(5);
    const MAX_ENTRIES: usize = 10_000;

    /// Whether `grant` was issued before its user's tokens were revoked.
    pub async fn revoked(&self, pool: &sqlx::PgPool, grant: &Grant) -> Result<bool, sqlx::Error> {
        let key = (grant.key_id, grant.user.clone());
        let cached = {
            let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            entries.get(&key).filter(|(_, at)| at.elapsed() < Self::TTL).map(|(before, _)| *before)
        };
        let before = match cached {
            Some(before) => before,
            None => {
                let before = db::token_revocations::revoked_before(pool, grant.key_id, &grant.user)
                    .await?
                    .map(|t| t.timestamp_millis());
                self.remember(key, before);
                before
            }
        };
        Ok(before.is_some_and(|before| grant.issued_at_ms < before))
    }

    /// Records a revocation made by this process, so it applies here without waiting.
    pub fn remember(&self, key: RevocationKey, before: Option<i64>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= Self::MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(key, (before, Instant::now()));
    }
}

/// How often a long-lived stream re-checks that its user token is still valid.
const RECHECK: Duration = Duration::from_secs(2);

/// Resolves when `principal` stops being allowed to hold a stream open: its user token
/// expired or was revoked, or its issuing key was revoked (within the key cache). Never
/// resolves for API keys, whose streams are bounded elsewhere.
pub async fn lapsed(state: &AppState, principal: &Principal) {
    let Some(grant) = &principal.token else {
        return std::future::pending().await;
    };
    let left = grant.expires_at.saturating_sub(chrono::Utc::now().timestamp()).max(0);
    let expiry = tokio::time::Instant::now() + Duration::from_secs(left.unsigned_abs());
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(expiry) => return,
            _ = tokio::time::sleep(RECHECK) => {}
        }
        // A check that fails on a database error keeps the stream: the next one decides.
        let revoked = state.revocations.revoked(&state.pool, grant).await.unwrap_or(false);
        let key_active = issuer(state, grant.key_id).await.map_or(true, |k| k.is_some());
        if revoked || !key_active {
            return;
        }
    }
}
