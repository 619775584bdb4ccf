//! `/v1/ingestion-batches/{id}`: the documents of one upload and their progress.

use axum::extract::State;
use chatq_common::{db, domain::DocumentStatus};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::documents::DocumentOut;
use crate::{
    auth::Principal,
    error::ApiError,
    extract::{Json, Path},
    state::AppState,
};

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_batch))
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
