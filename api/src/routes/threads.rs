//! `/v1/threads`: conversations of end users, scoped to the key that created them.

use axum::{extract::State, http::StatusCode};
use chatq_common::db;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::List;
use crate::{
    auth::Principal,
    error::ApiError,
    extract::{Json, Path, Query},
    state::AppState,
    validate::{Problems, Validate},
};

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_thread, list_threads)).routes(routes!(get_thread, delete_thread))
}

/// A new thread.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ThreadIn {
    /// Default assistant of the thread's runs.
    pub assistant_id: Option<Uuid>,
    /// The end user the thread belongs to (your own user id; 1-200 characters).
    #[schema(min_length = 1, max_length = 200)]
    pub user: Option<String>,
    /// Display title (at most `CHATQ_QUOTA_THREAD_TITLE_CHARS` characters, 500 by default;
    /// 413 beyond).
    pub title: Option<String>,
    /// Free-form JSON object (at most `CHATQ_QUOTA_THREAD_METADATA_BYTES` as JSON, 16 KiB by
    /// default; 413 beyond).
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

impl Validate for ThreadIn {
    fn validate(&self, p: &mut Problems) {
        p.opt_text("user", self.user.as_deref(), 1, 200);
        p.opt_text("title", self.title.as_deref(), 0, 0);
        p.json_object("metadata", self.metadata.as_ref(), 0);
    }
}

/// A thread.
#[derive(Debug, Serialize, ToSchema)]
pub struct ThreadOut {
    /// Id.
    pub id: Uuid,
    /// Always `thread`.
    pub object: &'static str,
    /// Default assistant.
    pub assistant_id: Option<Uuid>,
    /// End user.
    pub user: Option<String>,
    /// Display title.
    pub title: Option<String>,
    /// Free-form JSON object.
    pub metadata: Value,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last message or run.
    pub last_activity_at: DateTime<Utc>,
}

impl From<db::threads::Thread> for ThreadOut {
    fn from(t: db::threads::Thread) -> Self {
        Self {
            id: t.id,
            object: "thread",
            assistant_id: t.assistant_id,
            user: t.end_user,
            title: t.title,
            metadata: t.metadata,
            created_at: t.created_at,
            last_activity_at: t.last_activity_at,
        }
    }
}

/// Filters of the thread list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ThreadListQuery {
    /// Only this end user's threads.
    #[param(min_length = 1, max_length = 200)]
    pub user: Option<String>,
    /// Return threads after this id.
    pub after: Option<Uuid>,
    /// Page size, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
}

impl Validate for ThreadListQuery {
    fn validate(&self, p: &mut Problems) {
        p.opt_text("user", self.user.as_deref(), 1, 200);
        p.range("limit", self.limit, 1, 100);
    }
}

/// Create a thread for an end user. An end user may have `CHATQ_QUOTA_THREADS_PER_USER`
/// threads and a key `CHATQ_QUOTA_THREADS_PER_KEY`; past either, 429 `quota_exceeded` until
/// threads are deleted.
#[utoipa::path(post, path = "/v1/threads", tag = "threads", request_body = ThreadIn,
    responses((status = 201, body = ThreadOut), (status = 403), (status = 413, description = "title or metadata too large"),
              (status = 422), (status = 429, description = "quota_exceeded: the user's or the key's thread quota")))]
pub async fn create_thread(
    State(state): State<AppState>,
    principal: Principal,
    Json(input): Json<ThreadIn>,
) -> Result<(StatusCode, Json<ThreadOut>), ApiError> {
    // A user token always creates threads for its own user.
    let user = match (&principal.end_user, input.user) {
        (Some(own), Some(asked)) if *own != asked => {
            return Err(ApiError::Forbidden("a user token acts for its own user only"));
        }
        (Some(own), _) => Some(own.clone()),
        (None, asked) => asked,
    };
    let limits = &state.config.limits;
    if input.title.as_ref().is_some_and(|t| t.chars().count() > limits.thread_title_chars) {
        let max = limits.thread_title_chars;
        let message = format!("title must be at most {max} characters");
        return Err(ApiError::FieldTooLarge { field: "title", message, limit: max as u64 });
    }
    let metadata = input.metadata.unwrap_or_else(|| serde_json::json!({}));
    if metadata.to_string().len() > limits.thread_metadata_bytes {
        let max = limits.thread_metadata_bytes;
        let message = format!("metadata must be at most {max} bytes as JSON");
        return Err(ApiError::FieldTooLarge { field: "metadata", message, limit: max as u64 });
    }
    if let Some(id) = input.assistant_id
        && !principal.may_choose_assistant(id)
    {
        return Err(ApiError::Forbidden("this user token is not allowed to use that assistant"));
    }
    if let Some(id) = input.assistant_id
        && db::assistants::get(&state.pool, id).await?.is_none()
    {
        return Err(ApiError::invalid("assistant_id names an assistant that does not exist"));
    }
    let quota = |n: u64| (n > 0).then(|| i64::try_from(n).unwrap_or(i64::MAX));
    let quota =
        db::threads::ThreadQuota { per_user: quota(limits.threads_per_user), per_key: quota(limits.threads_per_key) };
    let created = db::threads::create_within_quota(
        &state.pool,
        principal.key_id,
        user.as_deref(),
        input.assistant_id,
        input.title.as_deref(),
        &metadata,
        quota,
    )
    .await?;
    let thread = created.map_err(|hit| {
        let (message, limit) = match hit {
            db::threads::QuotaHit::PerUser(n) => (format!("this user already has {n} threads; delete some first"), n),
            db::threads::QuotaHit::PerKey(n) => (format!("this key already has {n} threads; delete some first"), n),
        };
        ApiError::QuotaExceeded { message, limit: limit as u64 }
    })?;
    Ok((StatusCode::CREATED, Json(thread.into())))
}

/// List threads the caller may see.
#[utoipa::path(get, path = "/v1/threads", tag = "threads", params(ThreadListQuery),
    responses((status = 200, body = List<ThreadOut>)))]
pub async fn list_threads(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<ThreadListQuery>,
) -> Result<Json<List<ThreadOut>>, ApiError> {
    let limit = super::PageQuery { after: q.after, limit: q.limit }.limit()?;
    let page = db::threads::list(&state.pool, &principal.owner(), q.user.as_deref(), q.after, limit).await?;
    Ok(Json(List::new(page, |t| t.id, ThreadOut::from)))
}

/// Get a thread.
#[utoipa::path(get, path = "/v1/threads/{id}", tag = "threads", params(("id" = Uuid, Path)),
    responses((status = 200, body = ThreadOut), (status = 404)))]
pub async fn get_thread(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<ThreadOut>, ApiError> {
    let t = db::threads::get(&state.pool, id, &principal.owner()).await?.ok_or(ApiError::NotFound("thread"))?;
    Ok(Json(t.into()))
}

/// Delete a thread with its messages, runs and events.
#[utoipa::path(delete, path = "/v1/threads/{id}", tag = "threads", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 404)))]
pub async fn delete_thread(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    if db::threads::delete(&state.pool, id, &principal.owner()).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("thread"))
    }
}
