//! `/v1/threads/{id}/messages`: a thread's history, oldest first.

use axum::extract::State;
use chatq_common::{db, domain::MessageRole};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{List, PageQuery};
use crate::{
    auth::Principal,
    error::ApiError,
    extract::{Json, Path, Query},
    state::AppState,
};

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_messages))
}

/// A message of a thread.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageOut {
    /// Id.
    pub id: Uuid,
    /// Always `message`.
    pub object: &'static str,
    /// Thread.
    pub thread_id: Uuid,
    /// `user` or `assistant`.
    pub role: MessageRole,
    /// Text.
    pub content: String,
    /// The run it started (user) or that wrote it (assistant).
    pub run_id: Option<Uuid>,
    /// The client's id of a user message.
    pub client_message_id: Option<String>,
    /// Sources cited by an answer.
    #[schema(value_type = Vec<Object>)]
    pub citations: Value,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

impl From<db::messages::Message> for MessageOut {
    fn from(m: db::messages::Message) -> Self {
        Self {
            id: m.id,
            object: "message",
            thread_id: m.thread_id,
            role: m.role,
            content: m.content,
            run_id: m.run_id,
            client_message_id: m.client_message_id,
            citations: m.citations,
            created_at: m.created_at,
        }
    }
}

/// A thread's messages, oldest first.
#[utoipa::path(get, path = "/v1/threads/{id}/messages", tag = "messages", params(("id" = Uuid, Path), PageQuery),
    responses((status = 200, body = List<MessageOut>), (status = 404)))]
pub async fn list_messages(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    Query(q): Query<PageQuery>,
) -> Result<Json<List<MessageOut>>, ApiError> {
    let thread = db::threads::get(&state.pool, id, &principal.owner()).await?.ok_or(ApiError::NotFound("thread"))?;
    let page = db::messages::list(&state.pool, thread.id, q.after, q.limit()?).await?;
    Ok(Json(List::new(page, |m| m.id, MessageOut::from)))
}
