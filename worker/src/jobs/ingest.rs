//! `IngestDocument`: extract and chunk (in the extractor child) → embed → index one document. Idempotent: only a
//! `queued` (or crashed `processing`) document is claimed, every write is fenced on the
//! attempt, and one transaction replaces the chunks and marks the document `ready`.

use std::time::{Duration, Instant};

use apalis::prelude::{BoxDynError, Data};
use chatq_common::{
    config::Config,
    db::{self, knowledge::NewChunk, usage::NewUsage},
    domain::{DocumentErrorCode, DocumentStatus, UsageKind, UsageOutcome},
    jobs::IngestDocument,
    pricing::TokenUsage,
    retrieval::normalize,
};
use chrono::Utc;
use uuid::Uuid;

use crate::{
    WorkerCtx,
    ingest::{self, ChildLimits, Chunked, Chunking, ExtractError, Piece},
    jobs::{Job, JobError},
    metrics::NO_ASSISTANT,
};

impl Job for IngestDocument {
    fn concurrency(config: &Config) -> usize {
        config.worker.ingest_concurrency
    }

    fn poll_interval(config: &Config) -> Duration {
        config.worker.chat_poll_interval.max(Duration::from_millis(50))
    }

    async fn recover(ctx: &WorkerCtx) -> Result<usize, sqlx::Error> {
        crate::reconciler::recover_documents(ctx).await
    }
}

/// apalis entry point: only infrastructure errors go back to apalis for redelivery.
#[tracing::instrument(skip_all, fields(job.queue = %ctx.queues.ingest_docs()))]
pub async fn handle(job: IngestDocument, ctx: Data<WorkerCtx>) -> Result<(), BoxDynError> {
    let result = execute(&ctx, job.document_id).await;
    // The document (and maybe its batch) may have finished, with webhook deliveries to send.
    super::webhook::push_unpushed(&ctx).await;
    result.map_err(|e| {
        tracing::warn!(document.id = %job.document_id, error = %e, "ingestion interrupted by an infrastructure error");
        Box::new(e) as BoxDynError
    })
}

/// Ingests one document if it can be claimed.
#[tracing::instrument(skip_all, fields(document.id = %document_id, attempt = tracing::field::Empty))]
pub async fn execute(ctx: &WorkerCtx, document_id: Uuid) -> Result<(), sqlx::Error> {
    let max_attempts = ctx.config.knowledge.ingest_max_attempts;
    let Some(doc) = db::knowledge::claim_document(&ctx.pool, document_id, max_attempts).await? else {
        tracing::debug!("document not claimable (done, failed, deleted or out of attempts); skipping");
        return Ok(());
    };
    tracing::Span::current().record("attempt", doc.attempt);
    let started = Instant::now();
    let Some(kb) = db::knowledge::get_kb(&ctx.pool, doc.knowledge_base_id).await? else {
        return Ok(());
    };
    let Some(bytes) = db::knowledge::document_bytes(&ctx.pool, doc.id).await? else {
        db::knowledge::fail_document(
            &ctx.pool,
            doc.id,
            doc.attempt,
            DocumentErrorCode::MissingContent,
            "the upload is missing",
        )
        .await?;
        return Ok(());
    };
    let limits = ChildLimits {
        bin: ctx.config.knowledge.extractor_bin.clone().or_else(|| std::env::current_exe().ok()).unwrap_or_default(),
        timeout: ctx.config.knowledge.extract_timeout,
        memory_mb: ctx.config.knowledge.extract_memory_mb,
        max_output_bytes: ctx.config.knowledge.extract_max_output_bytes,
    };
    let chunking = Chunking {
        max_tokens: ctx.config.knowledge.chunk_tokens,
        overlap_tokens: ctx.config.knowledge.chunk_overlap_tokens,
    };
    let Chunked { pieces, pages } = match ingest::extract(&doc.media_type, bytes, chunking, &limits).await {
        Ok(c) => c,
        Err(e) => return fail(ctx, &doc, &e).await,
    };
    let vectors = match embed(ctx, &kb.embedding_model, kb.embedding_dims as usize, doc.id, &pieces).await {
        Ok(v) => v,
        Err(JobError::Permanent(e)) => return fail(ctx, &doc, &e).await,
        Err(JobError::Transient(e)) => return Err(e),
    };
    let chunks: Vec<NewChunk> = pieces
        .into_iter()
        .zip(vectors)
        .map(|(p, embedding)| NewChunk {
            content: p.content,
            token_count: p.tokens as i32,
            char_start: p.char_start as i32,
            char_end: p.char_end as i32,
            location: p.location,
            embedding,
        })
        .collect();
    let n = chunks.len();
    if db::knowledge::complete_document(&ctx.pool, &doc, &chunks).await? {
        ctx.metrics.documents_ingested.with_label_values(&[DocumentStatus::Ready]).inc();
        ctx.metrics.chunks_indexed.inc_by(n as u64);
        ctx.metrics.pages_extracted.inc_by(pages as u64);
        tracing::info!(chunks = n, pages, ms = started.elapsed().as_millis() as u64, "document ready");
    } else {
        tracing::info!("document deleted or re-claimed while ingesting; nothing written");
    }
    Ok(())
}

async fn fail(ctx: &WorkerCtx, doc: &db::knowledge::Document, e: &ExtractError) -> Result<(), sqlx::Error> {
    tracing::info!(code = %e.code, "document failed");
    ctx.metrics.documents_ingested.with_label_values(&[DocumentStatus::Failed]).inc();
    db::knowledge::fail_document(&ctx.pool, doc.id, doc.attempt, e.code, &e.message).await?;
    Ok(())
}

/// Embeds the pieces in batches bounded by input count and tokens; one usage record per
/// request. Fails for good (`embedding_failed`) when the provider keeps failing.
async fn embed(
    ctx: &WorkerCtx,
    model: &str,
    dims: usize,
    document_id: Uuid,
    pieces: &[Piece],
) -> Result<Vec<Vec<f32>>, JobError<ExtractError>> {
    let cfg = &ctx.config;
    let mut out = Vec::with_capacity(pieces.len());
    let mut start = 0;
    while start < pieces.len() {
        let mut end = start;
        let mut tokens = 0;
        while end < pieces.len()
            && end - start < cfg.knowledge.embedding_batch_inputs
            && (end == start || tokens + pieces[end].tokens <= cfg.knowledge.embedding_batch_tokens)
        {
            tokens += pieces[end].tokens;
            end += 1;
        }
        let inputs: Vec<String> = pieces[start..end].iter().map(Piece::indexed_text).collect();
        let began = Instant::now();
        let result = ctx.provider.embed_with_retries(model, dims, &inputs, 5).await;
        let latency_ms = began.elapsed().as_millis() as i64;
        let (billed, outcome) = match &result {
            Ok(e) => (e.tokens, UsageOutcome::Ok),
            Err(e) => (0, e.code.into()),
        };
        let usage = TokenUsage { input: billed, cached_input: 0, output: 0 };
        db::usage::insert(
            &ctx.pool,
            &NewUsage {
                id: chatq_common::new_id(),
                kind: UsageKind::Embedding,
                model: model.to_string(),
                api_key_id: None,
                assistant_id: None,
                run_id: None,
                document_id: Some(document_id),
                input_tokens: billed as i64,
                cached_input_tokens: 0,
                output_tokens: 0,
                cost_usd: result.is_ok().then(|| ctx.pricing.cost(model, Utc::now().date_naive(), usage)).flatten(),
                outcome,
                latency_ms,
                estimated: false,
                upstream: None,
            },
        )
        .await?;
        match result {
            Ok(e) => {
                ctx.metrics.tokens.with_label_values(&[model, "input", NO_ASSISTANT]).inc_by(e.tokens);
                for mut v in e.vectors {
                    normalize(&mut v);
                    out.push(v);
                }
            }
            Err(e) => {
                tracing::warn!(code = %e.code, detail = %e.detail, "embedding failed");
                let message = format!("the embeddings provider failed: {}", e.message);
                return Err(JobError::Permanent(ExtractError::new(DocumentErrorCode::EmbeddingFailed, message)));
            }
        }
        start = end;
    }
    Ok(out)
}
