//! `/v1/knowledge-bases/{id}/search`: hybrid search in one knowledge base, to debug retrieval.

use std::time::Instant;

use axum::extract::State;
use chatq_common::{
    db::{self, usage::NewUsage},
    domain::{UsageKind, UsageOutcome},
    pricing::TokenUsage,
    retrieval,
};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::live_kb;
use crate::{
    auth::Principal,
    error::ApiError,
    extract::{Json, Path},
    state::AppState,
    validate::{Problems, Validate},
};

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(search))
}

/// A search.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchIn {
    /// The question or keywords.
    #[schema(min_length = 1, max_length = 8192)]
    pub query: String,
    /// Results wanted, 1 to 50 (default 5).
    #[schema(minimum = 1, maximum = 50)]
    pub k: Option<usize>,
    /// `hybrid` (the default: what answers use), `keyword` (BM25 only) or `vector` (embeddings
    /// only), to see what each side contributes.
    #[serde(default)]
    pub mode: SearchMode,
}

/// Which rankings a search uses.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SearchMode {
    /// BM25 and vectors, fused with the configured weights.
    #[default]
    Hybrid,
    /// BM25 only.
    Keyword,
    /// Vectors only.
    Vector,
}

impl Validate for SearchIn {
    fn validate(&self, p: &mut Problems) {
        p.text("query", &self.query, 1, 8192);
        p.range("k", self.k, 1, 50);
    }
}

/// A ranked chunk.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResult {
    /// Chunk id.
    pub chunk_id: Uuid,
    /// Document id.
    pub document_id: Uuid,
    /// File name.
    pub filename: String,
    /// Page or heading path.
    pub location: Option<String>,
    /// Text.
    pub content: String,
    /// Weighted reciprocal-rank-fusion score (higher is better).
    pub score: f32,
}

/// Search results, best first.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchOut {
    /// The results.
    pub results: Vec<SearchResult>,
}

/// Hybrid search (BM25 + vectors, fused by weighted reciprocal rank) in one knowledge base, to
/// debug retrieval.
#[utoipa::path(post, path = "/v1/knowledge-bases/{id}/search", tag = "knowledge", params(("id" = Uuid, Path)),
    request_body = SearchIn, responses((status = 200, body = SearchOut), (status = 404), (status = 422)))]
pub async fn search(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    Json(input): Json<SearchIn>,
) -> Result<Json<SearchOut>, ApiError> {
    principal.require_admin()?;
    let k = input.k.unwrap_or(5);
    let kb = live_kb(&state, id).await?;
    let started = Instant::now();
    let model = (kb.embedding_model.as_str(), kb.embedding_dims as usize);
    let fusion = match input.mode {
        SearchMode::Hybrid => state.config.knowledge.fusion,
        SearchMode::Keyword => retrieval::Fusion::KEYWORD,
        SearchMode::Vector => retrieval::Fusion::VECTOR,
    };
    let (sources, stats) = retrieval::search(
        &state.pool,
        &state.provider,
        &state.vectors,
        &[kb.id],
        model,
        &input.query,
        (k, None),
        fusion,
    )
    .await
    .map_err(|e| match e {
        retrieval::RetrievalError::Db(e) => ApiError::from(e),
        e => ApiError::Internal(e.into()),
    })?;
    let usage = TokenUsage { input: stats.embedding_tokens, cached_input: 0, output: 0 };
    let pricing_cost = state.pricing.cost(&kb.embedding_model, Utc::now().date_naive(), usage);
    let record = NewUsage {
        id: chatq_common::new_id(),
        kind: UsageKind::Embedding,
        model: kb.embedding_model.clone(),
        api_key_id: Some(principal.key_id),
        assistant_id: None,
        run_id: None,
        document_id: None,
        input_tokens: stats.embedding_tokens as i64,
        cached_input_tokens: 0,
        output_tokens: 0,
        cost_usd: pricing_cost,
        outcome: stats.embedding_error.as_ref().map_or(UsageOutcome::Ok, |e| e.code.into()),
        latency_ms: started.elapsed().as_millis() as i64,
        estimated: false,
        upstream: None,
    };
    db::usage::insert(&state.pool, &record).await?;
    let results = sources
        .into_iter()
        .map(|s| SearchResult {
            chunk_id: s.chunk.chunk_id,
            document_id: s.chunk.document_id,
            filename: s.chunk.filename,
            location: s.chunk.location,
            content: s.chunk.content,
            score: s.score,
        })
        .collect();
    Ok(Json(SearchOut { results }))
}
