//! `/v1/knowledge-bases` and `/v1/knowledge-bases/{id}`: create, list, get and delete
//! knowledge bases.

use axum::{extract::State, http::StatusCode};
use chatq_common::db::{self, knowledge::KnowledgeBase};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::live_kb;
use crate::{
    auth::Principal,
    error::ApiError,
    extract::{Json, Path, Query},
    routes::{List, PageQuery},
    state::AppState,
    validate::{Problem, Problems, Validate},
};

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_kb, list_kbs)).routes(routes!(get_kb, delete_kb))
}

/// A new knowledge base.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KnowledgeBaseIn {
    /// Display name (1-200 characters).
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// Free text.
    #[serde(default)]
    #[schema(max_length = 16384)]
    pub description: String,
    /// Language of its documents, for full-text search (stemming and stop words): a Postgres
    /// text search configuration such as `english` (the default), `simple` (no stemming, no
    /// stop words), `french`, `german`, `spanish`.
    #[serde(default)]
    #[schema(max_length = 63)]
    pub language: Option<String>,
}

impl Validate for KnowledgeBaseIn {
    fn validate(&self, p: &mut Problems) {
        p.text("name", &self.name, 1, 200);
        p.text("description", &self.description, 0, 16_384);
        p.opt_text("language", self.language.as_deref(), 1, 63);
    }
}

/// A knowledge base.
#[derive(Debug, Serialize, ToSchema)]
pub struct KnowledgeBaseOut {
    /// Id.
    pub id: Uuid,
    /// Always `knowledge_base`.
    pub object: &'static str,
    /// Display name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Live documents (any status).
    pub document_count: i64,
    /// Embedding model of its chunks.
    pub embedding_model: String,
    /// Embedding dimensions.
    pub embedding_dims: i32,
    /// Language of its full-text search (a Postgres text search configuration).
    pub language: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

impl From<KnowledgeBase> for KnowledgeBaseOut {
    fn from(k: KnowledgeBase) -> Self {
        Self {
            id: k.id,
            object: "knowledge_base",
            name: k.name,
            description: k.description,
            document_count: k.document_count,
            embedding_model: k.embedding_model,
            embedding_dims: k.embedding_dims,
            language: k.language,
            created_at: k.created_at,
        }
    }
}

/// Create a knowledge base.
#[utoipa::path(post, path = "/v1/knowledge-bases", tag = "knowledge", request_body = KnowledgeBaseIn,
    responses((status = 201, body = KnowledgeBaseOut), (status = 403), (status = 422)))]
pub async fn create_kb(
    State(state): State<AppState>,
    principal: Principal,
    Json(input): Json<KnowledgeBaseIn>,
) -> Result<(StatusCode, Json<KnowledgeBaseOut>), ApiError> {
    principal.require_admin()?;
    let c = &state.config.knowledge;
    let language = input.language.as_deref().unwrap_or("english");
    if !db::knowledge::text_search_config_exists(&state.pool, language).await? {
        return Err(ApiError::invalid_fields(vec![Problem {
            field: "language".into(),
            message: format!(
                "{language:?} is not a text search configuration of this database (english, simple, french, german, …)"
            ),
        }]));
    }
    let kb = db::knowledge::create_kb_in(
        &state.pool,
        input.name.trim(),
        &input.description,
        (&c.embedding_model, c.embedding_dims as i32),
        language,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(kb.into())))
}

/// List knowledge bases.
#[utoipa::path(get, path = "/v1/knowledge-bases", tag = "knowledge", params(PageQuery),
    responses((status = 200, body = List<KnowledgeBaseOut>), (status = 403)))]
pub async fn list_kbs(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<PageQuery>,
) -> Result<Json<List<KnowledgeBaseOut>>, ApiError> {
    principal.require_admin()?;
    let page = db::knowledge::list_kbs(&state.pool, q.after, q.limit()?).await?;
    Ok(Json(List::new(page, |k| k.id, KnowledgeBaseOut::from)))
}

/// Get a knowledge base.
#[utoipa::path(get, path = "/v1/knowledge-bases/{id}", tag = "knowledge", params(("id" = Uuid, Path)),
    responses((status = 200, body = KnowledgeBaseOut), (status = 404)))]
pub async fn get_kb(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<KnowledgeBaseOut>, ApiError> {
    principal.require_admin()?;
    Ok(Json(live_kb(&state, id).await?.into()))
}

/// Delete a knowledge base: its chunks leave retrieval at once and assistants stop using it.
#[utoipa::path(delete, path = "/v1/knowledge-bases/{id}", tag = "knowledge", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 404)))]
pub async fn delete_kb(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    principal.require_admin()?;
    if db::knowledge::delete_kb(&state.pool, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("knowledge base"))
    }
}
