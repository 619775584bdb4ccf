//! Authentication: `Authorization: Bearer <key>` resolved to a [`Principal`].

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::{extract::FromRequestParts, http::request::Parts};
use chatq_common::{config::ExposeSecret, db, db::threads::Owner, keys::Role};
use uuid::Uuid;

use crate::{error::ApiError, state::AppState};

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
    };
    state.keys.put(hash, principal.clone());
    Ok(principal)
}

/// A user token: a client principal scoped to one end user. Refused when tampered, expired,
/// or when its issuing key was revoked (checked like keys, through the cache).
pub async fn resolve_user_token(state: &AppState, token: &str) -> Result<Principal, ApiError> {
    let secret = state.config.auth.token_secret.as_ref().ok_or(ApiError::Unauthorized)?;
    let grant = crate::user_token::verify(secret.expose_secret(), token, chrono::Utc::now().timestamp())
        .ok_or(ApiError::Unauthorized)?;
    let cache_key = [b"id:".as_slice(), grant.key_id.as_bytes()].concat();
    let issuer = match state.keys.get(&cache_key) {
        Some(p) => p,
        None => {
            let key = db::keys::find_active_by_id(&state.pool, grant.key_id).await?.ok_or(ApiError::Unauthorized)?;
            let role = key.role;
            let p = Principal {
                key_id: key.id,
                role,
                end_user: None,
                runs_per_minute: key.runs_per_minute,
                monthly_budget_usd: key.monthly_budget_usd,
            };
            state.keys.put(cache_key, p.clone());
            p
        }
    };
    // The token acts for its user with the issuing key's limits.
    Ok(Principal {
        key_id: grant.key_id,
        role: Role::Client,
        end_user: Some(grant.user),
        runs_per_minute: issuer.runs_per_minute,
        monthly_budget_usd: issuer.monthly_budget_usd,
    })
}
