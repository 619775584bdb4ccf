//! Knowledge bases, their documents and upload batches, and `/search` (admin only).

use std::time::Instant;

use axum::{
    extract::{DefaultBodyLimit, FromRequest, Multipart, Request, State},
    http::{StatusCode, header},
};
use chatq_common::{
    db::{
        self,
        knowledge::{Document, KnowledgeBase, NewDocument, Stored},
        usage::NewUsage,
    },
    domain::{DocumentErrorCode, DocumentStatus, UsageKind, UsageOutcome},
    media,
    pricing::TokenUsage,
    retrieval,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
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
    OpenApiRouter::new()
        .routes(routes!(create_kb, list_kbs))
        .routes(routes!(get_kb, delete_kb))
        // The upload enforces its own per-file and per-request limits while streaming.
        .merge(
            OpenApiRouter::new().routes(routes!(upload_documents, list_documents)).layer(DefaultBodyLimit::disable()),
        )
        .routes(routes!(get_document, delete_document))
        .routes(routes!(get_batch))
        .routes(routes!(search))
}

/// A new knowledge base.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KnowledgeBaseIn {
    /// Display name (1-200 characters).
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
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
            created_at: k.created_at,
        }
    }
}

/// Why a document failed.
#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentError {
    /// Stable code.
    pub code: DocumentErrorCode,
    /// What went wrong.
    pub message: String,
}

/// A document and its ingestion state.
#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentOut {
    /// Id.
    pub id: Uuid,
    /// Always `document`.
    pub object: &'static str,
    /// Its knowledge base.
    pub knowledge_base_id: Uuid,
    /// The upload it came with.
    pub batch_id: Option<Uuid>,
    /// File name given at upload.
    pub filename: String,
    /// Detected from the extension.
    pub media_type: String,
    /// Size of the upload.
    pub size_bytes: i64,
    /// SHA-256 of the content, hex.
    pub sha256: String,
    /// Where ingestion is.
    pub status: DocumentStatus,
    /// Why it failed, when it did.
    pub error: Option<DocumentError>,
    /// Chunks indexed.
    pub chunk_count: i32,
    /// Tokens of those chunks.
    pub token_count: i32,
    /// Upload time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl From<Document> for DocumentOut {
    fn from(d: Document) -> Self {
        let error = d.error_code.map(|code| DocumentError { code, message: d.error_message.unwrap_or_default() });
        Self {
            id: d.id,
            object: "document",
            knowledge_base_id: d.knowledge_base_id,
            batch_id: d.batch_id,
            filename: d.filename,
            media_type: d.media_type,
            size_bytes: d.size_bytes,
            sha256: hex::encode(&d.sha256),
            status: d.status,
            error,
            chunk_count: d.chunk_count,
            token_count: d.token_count,
            created_at: d.created_at,
            updated_at: d.updated_at,
        }
    }
}

/// One file of an upload.
#[derive(Debug, Serialize, ToSchema)]
pub struct UploadedDocument {
    /// The new document, or for a duplicate the existing one with the same content.
    pub id: Uuid,
    /// File name.
    pub filename: String,
    /// `queued`, or `duplicate` when the base already holds this content (not embedded again).
    pub status: &'static str,
}

/// What an upload stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct UploadOut {
    /// The batch, for `GET /v1/ingestion-batches/{id}`.
    pub batch_id: Uuid,
    /// One entry per file, in upload order.
    pub documents: Vec<UploadedDocument>,
}

/// Documents of a batch by status.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct BatchCounts {
    /// Waiting for a worker.
    pub queued: i64,
    /// Being ingested.
    pub processing: i64,
    /// Searchable.
    pub ready: i64,
    /// Failed (see each document's error).
    pub failed: i64,
    /// Files reported as duplicates at upload.
    pub duplicate: i64,
    /// All files of the upload.
    pub total: i64,
}

/// An upload batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchOut {
    /// Id.
    pub id: Uuid,
    /// Its knowledge base.
    pub knowledge_base_id: Uuid,
    /// Counts by status.
    pub counts: BatchCounts,
    /// Its documents (duplicates are not listed: they were not stored).
    pub documents: Vec<DocumentOut>,
}

/// A search.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchIn {
    /// The question or keywords.
    pub query: String,
    /// Results wanted, 1 to 50 (default 5).
    pub k: Option<usize>,
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
    /// Reciprocal-rank-fusion score (higher is better).
    pub score: f32,
}

/// Search results, best first.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchOut {
    /// The results.
    pub results: Vec<SearchResult>,
}

/// The price table for query-embedding costs, loaded once per process.
fn pricing(state: &AppState) -> Option<&'static chatq_common::pricing::Pricing> {
    static PRICING: std::sync::OnceLock<Option<chatq_common::pricing::Pricing>> = std::sync::OnceLock::new();
    PRICING.get_or_init(|| chatq_common::pricing::Pricing::load(state.config.pricing_file.as_deref()).ok()).as_ref()
}

async fn live_kb(state: &AppState, id: Uuid) -> Result<KnowledgeBase, ApiError> {
    db::knowledge::get_kb(&state.pool, id).await?.ok_or(ApiError::NotFound("knowledge base"))
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
    if input.name.trim().is_empty() || input.name.chars().count() > 200 {
        return Err(ApiError::invalid("name must be 1 to 200 characters"));
    }
    if input.description.len() > 16_384 {
        return Err(ApiError::invalid("description must be at most 16 KiB"));
    }
    let c = &state.config;
    let kb = db::knowledge::create_kb(
        &state.pool,
        input.name.trim(),
        &input.description,
        &c.embedding_model,
        c.embedding_dims as i32,
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

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge("the upload is too large".into())
    } else {
        ApiError::BadRequest { code: "invalid_multipart", message: e.body_text() }
    }
}

/// Upload documents: a multipart body with one or more parts named `files`. Each file is
/// streamed to Postgres (one file in memory at a time), checked against the size limits and
/// the supported types, and queued for ingestion; content the base already holds is reported
/// as `duplicate` and not embedded again.
#[utoipa::path(post, path = "/v1/knowledge-bases/{id}/documents", tag = "knowledge", params(("id" = Uuid, Path)),
    request_body(content_type = "multipart/form-data", description = "one or more parts named `files`"),
    responses((status = 202, body = UploadOut), (status = 403), (status = 404), (status = 413), (status = 415)))]
pub async fn upload_documents(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    request: Request,
) -> Result<(StatusCode, Json<UploadOut>), ApiError> {
    principal.require_admin()?;
    let kb = live_kb(&state, id).await?;
    let (file_limit, request_limit) = (state.config.max_upload_file_bytes, state.config.max_upload_request_bytes);
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > request_limit) {
        return Err(ApiError::PayloadTooLarge(format!("an upload request may carry at most {request_limit} bytes")));
    }
    let mut multipart = Multipart::from_request(request, &state).await.map_err(|e| {
        ApiError::UnsupportedMediaType(format!("expected a multipart/form-data body with parts named `files`: {e}"))
    })?;
    let mut tx = state.pool.begin().await?;
    let batch_id = db::knowledge::create_batch(&mut tx, kb.id).await?;
    let mut documents = Vec::new();
    let mut queued = Vec::new();
    let mut duplicates = 0;
    let mut total = 0usize;
    while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
        if field.name() != Some("files") {
            return Err(ApiError::invalid(format!(
                "unexpected multipart part {:?}; files go in parts named `files`",
                field.name().unwrap_or("")
            )));
        }
        let filename =
            field.file_name().map(|f| f.rsplit(['/', '\\']).next().unwrap_or(f).to_string()).unwrap_or_default();
        if filename.is_empty() || filename.len() > 255 {
            return Err(ApiError::invalid("every file needs a file name of 1 to 255 bytes"));
        }
        let Some(media_type) = media::media_type_for(&filename) else {
            return Err(ApiError::UnsupportedMediaType(format!(
                "{filename}: unsupported document type; supported: {}",
                media::supported_list()
            )));
        };
        let mut bytes = Vec::new();
        let mut hasher = Sha256::new();
        while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
            total += chunk.len();
            if total > request_limit {
                return Err(ApiError::PayloadTooLarge(format!(
                    "an upload request may carry at most {request_limit} bytes"
                )));
            }
            if bytes.len() + chunk.len() > file_limit {
                return Err(ApiError::PayloadTooLarge(format!(
                    "{filename}: a file may have at most {file_limit} bytes"
                )));
            }
            hasher.update(&chunk);
            bytes.extend_from_slice(&chunk);
        }
        let sha = hasher.finalize();
        let doc = NewDocument { kb_id: kb.id, batch_id, filename: &filename, media_type, sha256: &sha, bytes: &bytes };
        match db::knowledge::insert_document(&mut tx, &doc).await? {
            Stored::Queued(id) => {
                queued.push(id);
                documents.push(UploadedDocument { id, filename, status: "queued" });
            }
            Stored::Duplicate(id) => {
                duplicates += 1;
                documents.push(UploadedDocument { id, filename, status: "duplicate" });
            }
        }
    }
    if documents.is_empty() {
        return Err(ApiError::invalid("the upload has no parts named `files`"));
    }
    db::knowledge::set_batch_duplicates(&mut tx, batch_id, duplicates).await?;
    // Over the daily quota the transaction is dropped: nothing of this upload is stored.
    crate::ratelimit::admit_upload(&state, &principal, total as u64).await?;
    tx.commit().await?;
    for id in queued {
        if let Err(e) = chatq_common::jobs::push_ingest(&state.ingest_queue, id).await {
            // The document stays `queued`; the worker's reconciler pushes it again.
            tracing::warn!(document.id = %id, error = %e, "cannot enqueue ingestion");
        }
    }
    tracing::info!(kb.id = %kb.id, batch.id = %batch_id, files = documents.len(), duplicates, "documents uploaded");
    Ok((StatusCode::ACCEPTED, Json(UploadOut { batch_id, documents })))
}

/// List a knowledge base's documents with their status.
#[utoipa::path(get, path = "/v1/knowledge-bases/{id}/documents", tag = "knowledge",
    params(("id" = Uuid, Path), PageQuery), responses((status = 200, body = List<DocumentOut>), (status = 404)))]
pub async fn list_documents(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    Query(q): Query<PageQuery>,
) -> Result<Json<List<DocumentOut>>, ApiError> {
    principal.require_admin()?;
    live_kb(&state, id).await?;
    let page = db::knowledge::list_documents(&state.pool, id, q.after, q.limit()?).await?;
    Ok(Json(List::new(page, |d| d.id, DocumentOut::from)))
}

/// Get a document and its status (with the reason of a failure).
#[utoipa::path(get, path = "/v1/documents/{id}", tag = "knowledge", params(("id" = Uuid, Path)),
    responses((status = 200, body = DocumentOut), (status = 404)))]
pub async fn get_document(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<DocumentOut>, ApiError> {
    principal.require_admin()?;
    let d = db::knowledge::get_document(&state.pool, id).await?.ok_or(ApiError::NotFound("document"))?;
    Ok(Json(d.into()))
}

/// Delete a document: its chunks leave retrieval at once.
#[utoipa::path(delete, path = "/v1/documents/{id}", tag = "knowledge", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 404)))]
pub async fn delete_document(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    principal.require_admin()?;
    if db::knowledge::delete_document(&state.pool, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("document"))
    }
}

/// An upload batch: counts by status and its documents.
#[utoipa::path(get, path = "/v1/ingestion-batches/{id}", tag = "knowledge", params(("id" = Uuid, Path)),
    responses((status = 200, body = BatchOut), (status = 404)))]
pub async fn get_batch(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<BatchOut>, ApiError> {
    principal.require_admin()?;
    let (batch, docs) = db::knowledge::get_batch(&state.pool, id).await?.ok_or(ApiError::NotFound("batch"))?;
    let mut counts = BatchCounts { duplicate: batch.duplicate_count as i64, ..Default::default() };
    for d in &docs {
        match d.status {
            DocumentStatus::Queued => counts.queued += 1,
            DocumentStatus::Processing => counts.processing += 1,
            DocumentStatus::Ready => counts.ready += 1,
            DocumentStatus::Failed => counts.failed += 1,
        }
    }
    counts.total = docs.len() as i64 + counts.duplicate;
    Ok(Json(BatchOut {
        id: batch.id,
        knowledge_base_id: batch.knowledge_base_id,
        counts,
        documents: docs.into_iter().map(DocumentOut::from).collect(),
    }))
}

/// Hybrid search (full-text + vectors, fused by reciprocal rank) in one knowledge base, to
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
    if !(1..=50).contains(&k) {
        return Err(ApiError::invalid("k must be between 1 and 50"));
    }
    if input.query.trim().is_empty() || input.query.len() > 8192 {
        return Err(ApiError::invalid("query must be 1 to 8192 bytes"));
    }
    let kb = live_kb(&state, id).await?;
    let started = Instant::now();
    let model = (kb.embedding_model.as_str(), kb.embedding_dims as usize);
    let (sources, stats) =
        retrieval::search(&state.pool, &state.provider, &state.vectors, &[kb.id], model, &input.query, k, None)
            .await
            .map_err(|e| match e {
            retrieval::RetrievalError::Db(e) => ApiError::from(e),
            e => ApiError::Internal(e.into()),
        })?;
    let usage = TokenUsage { input: stats.embedding_tokens, cached_input: 0, output: 0 };
    let pricing_cost = pricing(&state).and_then(|p| p.cost(&kb.embedding_model, Utc::now().date_naive(), usage));
    let record = NewUsage {
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
