//! `/v1/assistants`: personas with instructions, model and settings (admin; client keys may
//! read; user tokens see only a public view of the assistants they are bound to).

use axum::{extract::State, http::StatusCode};
use chatq_common::{
    db::{self, assistants::AssistantFields},
    domain::ModerationMode,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
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
    validate::{Problems, Validate},
};

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_assistant, list_assistants)).routes(routes!(
        get_assistant,
        update_assistant,
        delete_assistant
    ))
}

/// A new assistant.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssistantIn {
    /// Display name (1-200 characters).
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// System prompt.
    #[serde(default)]
    #[schema(max_length = 65536)]
    pub instructions: String,
    /// Model name, e.g. `gpt-4o-mini`.
    #[schema(min_length = 1, max_length = 200)]
    pub model: String,
    /// Models tried in order when `model` cannot answer: its upstreams are down, their circuit
    /// breakers open, or its retries used up (at most 8, each served by a provider).
    #[serde(default)]
    #[schema(max_items = 8)]
    pub fallback_models: Vec<String>,
    /// Sampling temperature, 0 to 2.
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f32>,
    /// Cap on answer length in tokens.
    #[schema(minimum = 1)]
    pub max_output_tokens: Option<i32>,
    /// Knowledge bases the assistant answers from.
    #[serde(default)]
    pub knowledge_base_ids: Vec<Uuid>,
    /// `off` (default), `input` (check the user's message before answering), `output` (check
    /// the answer; a flagged one is withdrawn and replaced by a refusal) or `both`.
    pub moderation: Option<ModerationMode>,
    /// Delete threads after this many days without activity (default: global setting).
    #[schema(minimum = 1, maximum = 36500)]
    pub retention_days: Option<i32>,
    /// Free-form JSON object (at most 16 KiB as JSON).
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

/// Changes to an assistant; absent fields stay, `null` clears optional ones.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssistantPatch {
    /// Display name.
    #[schema(min_length = 1, max_length = 200)]
    pub name: Option<String>,
    /// System prompt.
    #[schema(max_length = 65536)]
    pub instructions: Option<String>,
    /// Model name.
    #[schema(min_length = 1, max_length = 200)]
    pub model: Option<String>,
    /// Fallback models, in order (replaces the list; `[]` removes them).
    #[schema(max_items = 8)]
    pub fallback_models: Option<Vec<String>>,
    /// Sampling temperature (`null` = provider default).
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<f32>, minimum = 0, maximum = 2)]
    pub temperature: Option<Option<f32>>,
    /// Cap on answer length (`null` = none).
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i32>, minimum = 1)]
    pub max_output_tokens: Option<Option<i32>>,
    /// Knowledge bases (replaces the list).
    pub knowledge_base_ids: Option<Vec<Uuid>>,
    /// `off`, `input`, `output` or `both`.
    pub moderation: Option<ModerationMode>,
    /// Retention in days (`null` = global setting).
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i32>, minimum = 1, maximum = 36500)]
    pub retention_days: Option<Option<i32>>,
    /// Free-form JSON object (at most 16 KiB as JSON).
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

fn double_option<'de, T: Deserialize<'de>, D: Deserializer<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Ok(Some(Option::deserialize(d)?))
}

/// An assistant.
#[derive(Debug, Serialize, ToSchema)]
pub struct AssistantOut {
    /// Id.
    pub id: Uuid,
    /// Always `assistant`.
    pub object: &'static str,
    /// Display name.
    pub name: String,
    /// System prompt.
    pub instructions: String,
    /// Model name.
    pub model: String,
    /// Models tried in order when `model` cannot answer.
    pub fallback_models: Vec<String>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Cap on answer length.
    pub max_output_tokens: Option<i32>,
    /// Knowledge bases.
    pub knowledge_base_ids: Vec<Uuid>,
    /// What is moderated: `off`, `input` (user messages), `output` (answers) or `both`.
    pub moderation: ModerationMode,
    /// Retention in days.
    pub retention_days: Option<i32>,
    /// Free-form JSON object.
    pub metadata: Value,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// What an end user may see of an assistant: no instructions, knowledge bases or metadata.
/// Closed (`additionalProperties: false`), so a full view never also matches this schema.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssistantPublicOut {
    /// Id.
    pub id: Uuid,
    /// Always `assistant`.
    pub object: &'static str,
    /// Display name.
    pub name: String,
}

/// An assistant as the caller may see it: in full for keys, the public view for user tokens.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum AssistantView {
    /// For API keys.
    Full(AssistantOut),
    /// For user tokens.
    Public(AssistantPublicOut),
}

impl AssistantView {
    fn for_caller(principal: &Principal, a: db::assistants::Assistant) -> Self {
        if principal.token.is_some() {
            Self::Public(AssistantPublicOut { id: a.id, object: "assistant", name: a.name })
        } else {
            Self::Full(a.into())
        }
    }
}

impl From<db::assistants::Assistant> for AssistantOut {
    fn from(a: db::assistants::Assistant) -> Self {
        Self {
            id: a.id,
            object: "assistant",
            name: a.name,
            instructions: a.instructions,
            model: a.model,
            fallback_models: a.fallback_models,
            temperature: a.temperature,
            max_output_tokens: a.max_output_tokens,
            knowledge_base_ids: a.knowledge_base_ids,
            moderation: a.moderation,
            retention_days: a.retention_days,
            metadata: a.metadata,
            created_at: a.created_at,
            updated_at: a.updated_at,
        }
    }
}

/// Most fallback models an assistant may have: each may cost a round of retries.
const MAX_FALLBACK_MODELS: usize = 8;

/// Refuses a model no upstream serves, so that a misspelt model fails now, not at every run.
fn check_served(state: &AppState, model: &str, fallback_models: &[String]) -> Result<(), ApiError> {
    let upstreams = &state.config.provider.upstreams;
    let fields = std::iter::once(("model".to_string(), model))
        .chain(fallback_models.iter().enumerate().map(|(i, m)| (format!("fallback_models[{i}]"), m.as_str())));
    for (field, model) in fields {
        if !upstreams.serves(model) {
            return Err(ApiError::ModelNotServed { field, model: model.to_string() });
        }
    }
    Ok(())
}

/// Longest `retention_days`: a century, so the cleanup's date arithmetic cannot overflow.
const MAX_RETENTION_DAYS: i32 = 36_500;

/// The rules of an assistant's fields, for a new assistant and for the fields a patch sets.
#[allow(clippy::too_many_arguments)]
fn check_fields(
    p: &mut Problems,
    name: Option<&str>,
    instructions: Option<&str>,
    model: Option<&str>,
    fallback_models: Option<&[String]>,
    temperature: Option<f32>,
    max_output_tokens: Option<i32>,
    retention_days: Option<i32>,
    metadata: Option<&Value>,
) {
    p.opt_text("name", name, 1, 200);
    p.opt_text("instructions", instructions, 0, 65_536);
    p.opt_text("model", model, 1, 200);
    if let Some(models) = fallback_models {
        if models.len() > MAX_FALLBACK_MODELS {
            p.add("fallback_models", format!("at most {MAX_FALLBACK_MODELS} models"));
        }
        for (i, m) in models.iter().enumerate() {
            p.opt_text(&format!("fallback_models[{i}]"), Some(m.as_str()), 1, 200);
            if models[..i].contains(m) || model == Some(m.as_str()) {
                p.add(format!("fallback_models[{i}]"), "repeats a model tried before it");
            }
        }
    }
    p.range("temperature", temperature, 0.0, 2.0);
    p.range("max_output_tokens", max_output_tokens, 1, i32::MAX);
    p.range("retention_days", retention_days, 1, MAX_RETENTION_DAYS);
    p.json_object("metadata", metadata, 16_384);
}

impl Validate for AssistantIn {
    fn validate(&self, p: &mut Problems) {
        check_fields(
            p,
            Some(&self.name),
            Some(&self.instructions),
            Some(&self.model),
            Some(&self.fallback_models),
            self.temperature,
            self.max_output_tokens,
            self.retention_days,
            self.metadata.as_ref(),
        );
    }
}

impl Validate for AssistantPatch {
    fn validate(&self, p: &mut Problems) {
        check_fields(
            p,
            self.name.as_deref(),
            self.instructions.as_deref(),
            self.model.as_deref(),
            self.fallback_models.as_deref(),
            self.temperature.flatten(),
            self.max_output_tokens.flatten(),
            self.retention_days.flatten(),
            self.metadata.as_ref(),
        );
    }
}

/// The foreign key from an assistant's knowledge-base links to the knowledge bases (named by
/// its migration).
const KNOWLEDGE_BASE_EXISTS: &str = "assistant_knowledge_bases_kb_fkey";

fn map_write_error(err: sqlx::Error) -> ApiError {
    if db::violated_constraint(&err) == Some(KNOWLEDGE_BASE_EXISTS) {
        ApiError::invalid("knowledge_base_ids names a knowledge base that does not exist")
    } else {
        err.into()
    }
}

/// Create an assistant.
#[utoipa::path(post, path = "/v1/assistants", tag = "assistants", request_body = AssistantIn,
    responses((status = 201, body = AssistantOut), (status = 403),
        (status = 422, description = "invalid_request, or model_not_served: a model no provider serves")))]
pub async fn create_assistant(
    State(state): State<AppState>,
    principal: Principal,
    Json(input): Json<AssistantIn>,
) -> Result<(StatusCode, Json<AssistantOut>), ApiError> {
    principal.require_admin()?;
    check_served(&state, &input.model, &input.fallback_models)?;
    let fields = AssistantFields {
        name: input.name,
        instructions: input.instructions,
        model: input.model,
        fallback_models: input.fallback_models,
        temperature: input.temperature,
        max_output_tokens: input.max_output_tokens,
        moderation: input.moderation.unwrap_or(ModerationMode::Off),
        retention_days: input.retention_days,
        metadata: input.metadata.unwrap_or_else(|| serde_json::json!({})),
        knowledge_base_ids: input.knowledge_base_ids,
    };
    let a = db::assistants::create(&state.pool, &fields).await.map_err(map_write_error)?;
    Ok((StatusCode::CREATED, Json(a.into())))
}

/// List assistants: all of them for keys; for a user token, the public view of the
/// assistants it is bound to.
#[utoipa::path(get, path = "/v1/assistants", tag = "assistants", params(PageQuery),
    responses((status = 200, body = List<AssistantView>)))]
pub async fn list_assistants(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<PageQuery>,
) -> Result<Json<List<AssistantView>>, ApiError> {
    let limit = q.limit()?;
    let page = match &principal.token {
        None => db::assistants::list(&state.pool, q.after, limit).await?,
        Some(grant) => {
            let mut ids: Vec<Uuid> = grant.assistants.iter().copied().filter(|id| q.after < Some(*id)).collect();
            ids.sort();
            ids.dedup();
            let mut rows = Vec::new();
            for id in ids {
                if let Some(a) = db::assistants::get(&state.pool, id).await? {
                    rows.push(a);
                }
            }
            let has_more = rows.len() > limit as usize;
            rows.truncate(limit as usize);
            db::Page { rows, has_more }
        }
    };
    Ok(Json(List::new(page, |a| a.id, |a| AssistantView::for_caller(&principal, a))))
}

/// Get an assistant. A user token sees the public view of an assistant it is bound to, and
/// 404 for any other.
#[utoipa::path(get, path = "/v1/assistants/{id}", tag = "assistants", params(("id" = Uuid, Path)),
    responses((status = 200, body = AssistantView), (status = 404)))]
pub async fn get_assistant(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<AssistantView>, ApiError> {
    if !principal.may_choose_assistant(id) {
        return Err(ApiError::NotFound("assistant"));
    }
    let a = db::assistants::get(&state.pool, id).await?.ok_or(ApiError::NotFound("assistant"))?;
    Ok(Json(AssistantView::for_caller(&principal, a)))
}

/// Change an assistant.
#[utoipa::path(patch, path = "/v1/assistants/{id}", tag = "assistants", params(("id" = Uuid, Path)),
    request_body = AssistantPatch, responses((status = 200, body = AssistantOut), (status = 404),
        (status = 422, description = "invalid_request, or model_not_served: a model no provider serves")))]
pub async fn update_assistant(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    Json(patch): Json<AssistantPatch>,
) -> Result<Json<AssistantOut>, ApiError> {
    principal.require_admin()?;
    let a = db::assistants::get(&state.pool, id).await?.ok_or(ApiError::NotFound("assistant"))?;
    let fields = AssistantFields {
        name: patch.name.unwrap_or(a.name),
        instructions: patch.instructions.unwrap_or(a.instructions),
        model: patch.model.unwrap_or(a.model),
        fallback_models: patch.fallback_models.unwrap_or(a.fallback_models),
        temperature: patch.temperature.unwrap_or(a.temperature),
        max_output_tokens: patch.max_output_tokens.unwrap_or(a.max_output_tokens),
        moderation: patch.moderation.unwrap_or(a.moderation),
        retention_days: patch.retention_days.unwrap_or(a.retention_days),
        metadata: patch.metadata.unwrap_or(a.metadata),
        knowledge_base_ids: patch.knowledge_base_ids.unwrap_or(a.knowledge_base_ids),
    };
    check_served(&state, &fields.model, &fields.fallback_models)?;
    let a = db::assistants::update(&state.pool, id, &fields)
        .await
        .map_err(map_write_error)?
        .ok_or(ApiError::NotFound("assistant"))?;
    Ok(Json(a.into()))
}

/// Delete an assistant. Its threads keep their history; new runs with it are refused.
#[utoipa::path(delete, path = "/v1/assistants/{id}", tag = "assistants", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 404)))]
pub async fn delete_assistant(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    principal.require_admin()?;
    if db::assistants::delete(&state.pool, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("assistant"))
    }
}
