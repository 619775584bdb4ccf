//! `POST /v1/user-tokens`: short-lived tokens scoped to one end user, for browsers.

use axum::{extract::State, http::StatusCode};
use chatq_common::{config::ExposeSecret, keys::Role};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    auth::Principal,
    error::ApiError,
    extract::Json,
    state::AppState,
    user_token,
    validate::{Problems, Validate},
};

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_user_token))
}

/// Longest lifetime of a user token.
pub const MAX_TTL_SECONDS: i64 = 24 * 3600;
const DEFAULT_TTL_SECONDS: i64 = 3600;

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
}

impl Validate for UserTokenIn {
    fn validate(&self, p: &mut Problems) {
        p.text("user", &self.user, 1, 200);
        p.range("ttl_seconds", self.ttl_seconds, 1, MAX_TTL_SECONDS);
    }
}

/// A user token.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserTokenOut {
    /// Send as `Authorization: Bearer <token>`, or as `?access_token=` on the events route.
    pub token: String,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
}

/// Issue a user token (client key): it acts as this key for one end user only, on that
/// user's threads, runs and events, and cannot do anything admin.
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
    let secret = state
        .config
        .auth
        .token_secret
        .as_ref()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("CHATQ_TOKEN_SECRET is not set")))?;
    let expires_at = Utc::now() + chrono::Duration::seconds(ttl);
    let token = user_token::sign(secret.expose_secret(), principal.key_id, &input.user, expires_at.timestamp());
    Ok((StatusCode::CREATED, Json(UserTokenOut { token, expires_at })))
}
