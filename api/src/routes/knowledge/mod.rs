//! Knowledge bases, their documents and upload batches, and `/search` (admin only), one file
//! per resource.

pub mod bases;
pub mod batches;
pub mod documents;
pub mod search;

pub use bases::{KnowledgeBaseIn, KnowledgeBaseOut};
pub use batches::{BatchCounts, BatchOut};
use chatq_common::db::{self, knowledge::KnowledgeBase};
pub use documents::{DocumentError, DocumentOut, UploadOut, UploadStatus, UploadedDocument};
pub use search::{SearchIn, SearchOut, SearchResult};
use utoipa_axum::router::OpenApiRouter;
use uuid::Uuid;

use crate::{error::ApiError, state::AppState};

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(bases::router())
        .merge(documents::router())
        .merge(batches::router())
        .merge(search::router())
}

/// The knowledge base `id`, or 404 when it does not exist or was deleted.
async fn live_kb(state: &AppState, id: Uuid) -> Result<KnowledgeBase, ApiError> {
    db::knowledge::get_kb(&state.pool, id).await?.ok_or(ApiError::NotFound("knowledge base"))
}
