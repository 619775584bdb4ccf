//! `POST /v1/user-tokens`: short-lived tokens scoped to one end user, for browsers; and
//! `POST /v1/user-tokens/revoke`: end a user's tokens before they expire.

use axum::{extract::State, http::StatusCode};
use chatq_common::{db, keys::Role};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    auth::Principal,
    error::ApiError,
    extract::Json,
    state::AppState,
    user_token,
    validate::{Problems, Validate},
};

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_user_token)).routes(routes!(revoke_user_tokens))
}

/// Longest lifetime of a user token.
pub const MAX_TTL_SECONDS: i64 = user_token::MAX_TTL_SECONDS;
const DEFAULT_TTL_SECONDS: i64 = 3600;
/// Most assistants one token may be bound to (each is a claim the token carries).
const MAX_ASSISTANTS: usize = 20;

/// The end user to issue a token for.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserTokenIn {
    /// Your id of the end user (1-200 characters), as in a thread's `user`.
    #[schema(min_length = 1, max_length = 200)]
    pub user: String,
    /// Lifetime in seconds, 1 to 86400 (default 3600).
    #[schema(minimum = 1, maximum = 86400)]
    pub ttl_seconds: Option<i64>,
    /// The assistants (at most 20) the token may start threads with, pick for a run and read
    /// the public view of. Without any, the token can only continue threads your backend
    /// created for the user with an assistant set.
    #[serde(default)]
    #[schema(max_items = 20)]
    pub assistants: Vec<Uuid>,
}

impl Validate for UserTokenIn {
    fn validate(&self, p: &mut Problems) {
        p.text("user", &self.user, 1, 200);
        p.range("ttl_seconds", self.ttl_seconds, 1, MAX_TTL_SECONDS);
        if self.assistants.len() > MAX_ASSISTANTS {
            p.add("assistants", format!("at most {MAX_ASSISTANTS} ids"));
        }
    }
}

/// A user token.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserTokenOut {
    /// Send as `Authorization: Bearer <token>`, or as `?access_token=` on the events route.
    pub token: String,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
    /// The assistants it is bound to.
    pub assistants: Vec<Uuid>,
}

/// Issue a user token (client key): it acts as this key for one end user only, on that
/// user's threads, runs and events, may choose only the `assistants` it is bound to, and
/// cannot do anything admin.
#[utoipa::path(post, path = "/v1/user-tokens", tag = "auth", request_body = UserTokenIn,
    responses((status = 201, body = UserTokenOut), (status = 401), (status = 403), (status = 422)))]
pub async fn create_user_token(
    State(state): State<AppState>,
    principal: Principal,
    Json(input): Json<UserTokenIn>,
) -> Result<(StatusCode, Json<UserTokenOut>), ApiError> {
    if principal.end_user.is_some() {
        return Err(ApiError::Forbidden("a user token cannot issue tokens"));
    }
    if principal.role != Role::Client {
        return Err(ApiError::Forbidden("user tokens are issued with a client key"));
    }
    let ttl = input.ttl_seconds.unwrap_or(DEFAULT_TTL_SECONDS);
    let mut assistants = input.assistants;
    assistants.sort();
    assistants.dedup();
    for id in &assistants {
        if db::assistants::get(&state.pool, *id).await?.is_none() {
            return Err(ApiError::invalid(format!("assistants names an assistant that does not exist: {id}")));
        }
    }
    let keys =
        state.tokens.as_ref().ok_or_else(|| ApiError::Internal(anyhow::anyhow!("CHATQ_TOKEN_SECRET is not set")))?;
    let now = Utc::now();
    let expires_at = now + chrono::Duration::seconds(ttl);
    let token = keys.seal(&user_token::Grant {
        key_id: principal.key_id,
        user: input.user,
        issued_at_ms: now.timestamp_millis(),
        expires_at: expires_at.timestamp(),
        assistants: assistants.clone(),
    });
    Ok((StatusCode::CREATED, Json(UserTokenOut { token, expires_at, assistants })))
}

/// The end user whose tokens to revoke.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeIn {
    /// Your id of the end user (1-200 characters).
    #[schema(min_length = 1, max_length = 200)]
    pub user: String,
}

impl Validate for RevokeIn {
    fn validate(&self, p: &mut Problems) {
        p.text("user", &self.user, 1, 200);
    }
}

/// A revocation in force.
#[derive(Debug, Serialize, ToSchema)]
pub struct RevokeOut {
    /// The end user.
    pub user: String,
    /// Tokens issued for this user by this key before this time are refused.
    pub revoked_before: DateTime<Utc>,
}

/// Revoke an end user's tokens (client key): every token this key issued for `user` until
/// now stops working, on this API process at once and on the others within 5 s; open event
/// streams of those tokens end within a few seconds. Tokens issued afterwards work.
#[utoipa::path(post, path = "/v1/user-tokens/revoke", tag = "auth", request_body = RevokeIn,
    responses((status = 200, body = RevokeOut), (status = 401), (status = 403), (status = 422)))]
pub async fn revoke_user_tokens(
    State(state): State<AppState>,
    principal: Principal,
    Json(input): Json<RevokeIn>,
) -> Result<Json<RevokeOut>, ApiError> {
    if principal.end_user.is_some() || principal.role != Role::Client {
        return Err(ApiError::Forbidden("user tokens are revoked with the client key that issued them"));
    }
    let revoked_before = db::token_revocations::revoke(&state.pool, principal.key_id, &input.user, Utc::now()).await?;
    state.revocations.remember((principal.key_id, input.user.clone()), Some(revoked_before.timestamp_millis()));
    Ok(Json(RevokeOut { user: input.user, revoked_before }))
}
