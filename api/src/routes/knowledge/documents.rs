//! A knowledge base's documents: the streaming multipart upload
//! (`POST /v1/knowledge-bases/{id}/documents`), listing, and `/v1/documents/{id}`.

use axum::{
    extract::{DefaultBodyLimit, FromRequest, Multipart, Request, State},
    http::{StatusCode, header},
};
use chatq_common::{
    db::{
        self,
        knowledge::{ChunkRow, Document, NewDocument, Stored},
    },
    domain::{DocumentErrorCode, DocumentStatus},
    jobs, media,
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::live_kb;
use crate::{
    auth::Principal,
    error::{ApiError, ApiErrorCode},
    extract::{Json, Path, Query},
    routes::{List, PageQuery},
    state::AppState,
};

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        // The upload enforces its own per-file and per-request limits while streaming.
        .merge(
            OpenApiRouter::new().routes(routes!(upload_documents, list_documents)).layer(DefaultBodyLimit::disable()),
        )
        .routes(routes!(get_document, delete_document))
        .routes(routes!(retry_document))
        .routes(routes!(list_chunks))
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
    /// What happened to the file.
    pub status: UploadStatus,
}

/// What an upload did with one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UploadStatus {
    /// Stored and queued for ingestion.
    Queued,
    /// The base already holds this content: reported, not stored or embedded again.
    Duplicate,
}

/// What an upload stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct UploadOut {
    /// The batch, for `GET /v1/ingestion-batches/{id}`.
    pub batch_id: Uuid,
    /// One entry per file, in upload order.
    pub documents: Vec<UploadedDocument>,
}

/// The multipart body of an upload: one part per file, each named `files` and carrying a
/// file name whose extension gives its type (`.pdf`, `.md`, `.html`, `.txt`, ...).
#[derive(ToSchema)]
#[allow(dead_code)] // Describes the body for the OpenAPI document; the handler streams it.
pub struct UploadForm {
    /// The files (at most `CHATQ_MAX_UPLOAD_FILE_BYTES` each, `CHATQ_MAX_UPLOAD_REQUEST_BYTES`
    /// in all).
    #[schema(value_type = Vec<String>, format = Binary, min_items = 1)]
    files: Vec<Vec<u8>>,
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge("the upload is too large".into())
    } else {
        ApiError::BadRequest { code: ApiErrorCode::InvalidMultipart, message: e.body_text() }
    }
}

/// Upload documents: a multipart body with one or more parts named `files`. Each file is
/// streamed to Postgres (one file in memory at a time), checked against the size limits and
/// the supported types, and queued for ingestion; content the base already holds is reported
/// as `duplicate` and not embedded again.
#[utoipa::path(post, path = "/v1/knowledge-bases/{id}/documents", tag = "knowledge", params(("id" = Uuid, Path)),
    request_body(content = UploadForm, content_type = "multipart/form-data", description = "one or more parts named `files`"),
    responses((status = 202, body = UploadOut), (status = 403), (status = 404), (status = 413), (status = 415),
              (status = 422), (status = 429, description = "quota_exceeded (the base's documents or bytes), or rate_limited (the key's daily upload bytes)")))]
pub async fn upload_documents(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    request: Request,
) -> Result<(StatusCode, Json<UploadOut>), ApiError> {
    principal.require_admin()?;
    let kb = live_kb(&state, id).await?;
    let (file_limit, request_limit) =
        (state.config.limits.max_upload_file_bytes, state.config.limits.max_upload_request_bytes);
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
        if filename.is_empty() || filename.len() > 255 || filename.contains('\0') {
            return Err(ApiError::invalid_fields(vec![crate::validate::Problem {
                field: "files".into(),
                message: "every file needs a file name of 1 to 255 bytes without the NUL character".into(),
            }]));
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
                documents.push(UploadedDocument { id, filename, status: UploadStatus::Queued });
            }
            Stored::Duplicate(id) => {
                duplicates += 1;
                documents.push(UploadedDocument { id, filename, status: UploadStatus::Duplicate });
            }
        }
    }
    if documents.is_empty() {
        return Err(ApiError::invalid("the upload has no parts named `files`"));
    }
    db::knowledge::set_batch_duplicates(&mut tx, batch_id, duplicates).await?;
    within_kb_quota(&state, &mut tx, kb.id).await?;
    // Over the daily quota the transaction is dropped: nothing of this upload is stored.
    crate::ratelimit::admit_upload(&state, &principal, total as u64).await?;
    tx.commit().await?;
    for id in queued {
        if let Err(e) =
            jobs::push(&state.ingest_queue, jobs::IngestDocument { document_id: id }, jobs::fresh_task_id(id)).await
        {
            // The document stays `queued`; the worker's reconciler pushes it again.
            tracing::warn!(document.id = %id, error = %e, "cannot enqueue ingestion");
        }
    }
    tracing::info!(kb.id = %kb.id, batch.id = %batch_id, files = documents.len(), duplicates, "documents uploaded");
    Ok((StatusCode::ACCEPTED, Json(UploadOut { batch_id, documents })))
}

/// Refuses the upload when the base would then hold more live documents or bytes than its
/// quota (`CHATQ_QUOTA_KB_DOCUMENTS`, `CHATQ_QUOTA_KB_BYTES`); the caller drops `tx`, so
/// nothing of the upload is stored.
async fn within_kb_quota(
    state: &AppState,
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    kb_id: Uuid,
) -> Result<(), ApiError> {
    let limits = &state.config.limits;
    if limits.kb_documents == 0 && limits.kb_bytes == 0 {
        return Ok(());
    }
    let usage = db::knowledge::lock_kb_usage(tx, kb_id).await?;
    let (documents, bytes) = (usage.documents.max(0) as u64, usage.bytes.max(0) as u64);
    if limits.kb_documents > 0 && documents > limits.kb_documents {
        return Err(ApiError::QuotaExceeded {
            message: format!(
                "a knowledge base may hold {} documents; this upload would make {documents}",
                limits.kb_documents
            ),
            limit: limits.kb_documents,
        });
    }
    if limits.kb_bytes > 0 && bytes > limits.kb_bytes {
        return Err(ApiError::QuotaExceeded {
            message: format!("a knowledge base may hold {} bytes; this upload would make {bytes}", limits.kb_bytes),
            limit: limits.kb_bytes,
        });
    }
    Ok(())
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

/// Retry a failed document: it goes back to `queued` with its attempts reset and its error
/// cleared, and is ingested again. Only a `failed` document can be retried (409
/// `document_not_failed` otherwise); of concurrent retries one re-queues it, the others get 409.
#[utoipa::path(post, path = "/v1/documents/{id}/retry", tag = "knowledge", params(("id" = Uuid, Path)),
    responses((status = 202, body = DocumentOut), (status = 403), (status = 404),
              (status = 409, description = "document_not_failed: the document is not in status `failed`")))]
pub async fn retry_document(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<(StatusCode, Json<DocumentOut>), ApiError> {
    principal.require_admin()?;
    let Some(doc) = db::knowledge::requeue_failed_document(&state.pool, id).await? else {
        let d = db::knowledge::get_document(&state.pool, id).await?.ok_or(ApiError::NotFound("document"))?;
        return Err(ApiError::Conflict {
            code: ApiErrorCode::DocumentNotFailed,
            message: "only a failed document can be retried".into(),
            details: serde_json::json!({ "status": d.status }),
        });
    };
    if let Err(e) =
        jobs::push(&state.ingest_queue, jobs::IngestDocument { document_id: id }, jobs::fresh_task_id(id)).await
    {
        // The document stays `queued`; the worker's reconciler pushes it again.
        tracing::warn!(document.id = %id, error = %e, "cannot enqueue ingestion");
    }
    tracing::info!(document.id = %id, kb.id = %doc.knowledge_base_id, "document retry queued");
    Ok((StatusCode::ACCEPTED, Json(doc.into())))
}

/// A chunk of a document: where it comes from, its size and its text.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChunkOut {
    /// Id.
    pub id: Uuid,
    /// Always `chunk`.
    pub object: &'static str,
    /// Position in the document, from 0.
    pub ordinal: i32,
    /// Page (`page 3`) or heading path (`Guide > Feeding`), when known.
    pub location: Option<String>,
    /// Start of its character range in the extracted text of its page (PDF) or document.
    pub char_start: i32,
    /// End of that range (exclusive).
    pub char_end: i32,
    /// Tokens of the text.
    pub token_count: i32,
    /// The indexed text.
    pub content: String,
}

impl From<ChunkRow> for ChunkOut {
    fn from(c: ChunkRow) -> Self {
        Self {
            id: c.id,
            object: "chunk",
            ordinal: c.ordinal,
            location: c.location,
            char_start: c.char_start,
            char_end: c.char_end,
            token_count: c.token_count,
            content: c.content,
        }
    }
}

/// List a document's chunks in document order, with their locations and token counts.
#[utoipa::path(get, path = "/v1/documents/{id}/chunks", tag = "knowledge", params(("id" = Uuid, Path), PageQuery),
    responses((status = 200, body = List<ChunkOut>), (status = 403), (status = 404)))]
pub async fn list_chunks(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    Query(q): Query<PageQuery>,
) -> Result<Json<List<ChunkOut>>, ApiError> {
    principal.require_admin()?;
    db::knowledge::get_document(&state.pool, id).await?.ok_or(ApiError::NotFound("document"))?;
    let page = db::knowledge::list_chunks(&state.pool, id, q.after, q.limit()?).await?;
    Ok(Json(List::new(page, |c| c.id, ChunkOut::from)))
}
