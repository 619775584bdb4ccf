//! Knowledge bases, ingestion batches, documents, their bytes and chunks. Statuses written are
//! bound [`DocumentStatus`] values; those in `WHERE` clauses stay literal so Postgres can match
//! them to the predicate of the partial index `documents_pending_idx`.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, QueryBuilder, Transaction};
use uuid::Uuid;

use super::Page;
use crate::domain::{DocumentErrorCode, DocumentStatus};

/// A knowledge base with its live document count.
#[derive(Debug, Clone)]
pub struct KnowledgeBase {
    /// Id.
    pub id: Uuid,
    /// Display name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Embedding model of its chunks.
    pub embedding_model: String,
    /// Embedding dimensions.
    pub embedding_dims: i32,
    /// Bumped whenever its chunks change.
    pub embeddings_version: i64,
    /// Postgres text search configuration of its full-text index (stemming, stop words).
    pub language: String,
    /// Live documents.
    pub document_count: i64,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// Whether `name` is a Postgres text search configuration (`english`, `simple`, `german`, …),
/// usable as a knowledge base's language.
pub async fn text_search_config_exists(pool: &PgPool, name: &str) -> Result<bool, sqlx::Error> {
    let exists = sqlx::query_scalar!(r#"SELECT EXISTS (SELECT 1 FROM pg_ts_config WHERE cfgname = $1) AS "e!""#, name)
        .fetch_one(pool)
        .await?;
    Ok(exists)
}

/// Creates a knowledge base in English.
pub async fn create_kb(
    pool: &PgPool,
    name: &str,
    description: &str,
    model: &str,
    dims: i32,
) -> Result<KnowledgeBase, sqlx::Error> {
    create_kb_in(pool, name, description, (model, dims), "english").await
}

/// Creates a knowledge base whose full-text index uses `language` (a text search
/// configuration: see [`text_search_config_exists`]).
pub async fn create_kb_in(
    pool: &PgPool,
    name: &str,
    description: &str,
    (model, dims): (&str, i32),
    language: &str,
) -> Result<KnowledgeBase, sqlx::Error> {
    let id = crate::new_id();
    sqlx::query!(
        "INSERT INTO knowledge_bases (id, name, description, embedding_model, embedding_dims, language)
         VALUES ($1, $2, $3, $4, $5, $6)",
        id,
        name,
        description,
        model,
        dims,
        language,
    )
    .execute(pool)
    .await?;
    Ok(get_kb(pool, id).await?.expect("just inserted"))
}

/// A live knowledge base.
pub async fn get_kb(pool: &PgPool, id: Uuid) -> Result<Option<KnowledgeBase>, sqlx::Error> {
    sqlx::query_as!(
        KnowledgeBase,
        r#"SELECT kb.id, kb.name, kb.description, kb.embedding_model, kb.embedding_dims, kb.embeddings_version, kb.language,
           (SELECT count(*) FROM documents d WHERE d.knowledge_base_id = kb.id AND d.deleted_at IS NULL)
             AS "document_count!",
           kb.created_at FROM knowledge_bases kb WHERE kb.id = $1 AND kb.deleted_at IS NULL"#,
        id,
    )
    .fetch_optional(pool)
    .await
}

/// Live knowledge bases, oldest first.
pub async fn list_kbs(pool: &PgPool, after: Option<Uuid>, limit: i64) -> Result<Page<KnowledgeBase>, sqlx::Error> {
    let rows = sqlx::query_as!(
        KnowledgeBase,
        r#"SELECT kb.id, kb.name, kb.description, kb.embedding_model, kb.embedding_dims, kb.embeddings_version, kb.language,
           (SELECT count(*) FROM documents d WHERE d.knowledge_base_id = kb.id AND d.deleted_at IS NULL)
             AS "document_count!",
           kb.created_at FROM knowledge_bases kb
         WHERE kb.deleted_at IS NULL AND ($1::uuid IS NULL OR kb.id > $1) ORDER BY kb.id LIMIT $2"#,
        after,
        limit + 1,
    )
    .fetch_all(pool)
    .await?;
    Ok(Page::from_overfetch(rows, limit))
}

/// Deletes a knowledge base: its chunks leave retrieval at once, its documents are marked
/// deleted and assistants stop using it. Returns whether it existed.
pub async fn delete_kb(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let hit = sqlx::query!(
        "UPDATE knowledge_bases SET deleted_at = now(), embeddings_version = embeddings_version + 1
         WHERE id = $1 AND deleted_at IS NULL",
        id,
    )
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if hit {
        sqlx::query!("DELETE FROM chunks WHERE knowledge_base_id = $1", id).execute(&mut *tx).await?;
        sqlx::query!("UPDATE documents SET deleted_at = now() WHERE knowledge_base_id = $1 AND deleted_at IS NULL", id)
            .execute(&mut *tx)
            .await?;
        sqlx::query!(
            "DELETE FROM document_blobs b USING documents d WHERE b.document_id = d.id AND d.knowledge_base_id = $1",
            id,
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!("DELETE FROM assistant_knowledge_bases WHERE knowledge_base_id = $1", id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(hit)
}

/// A document and its ingestion state.
#[derive(Debug, Clone)]
pub struct Document {
    /// Id.
    pub id: Uuid,
    /// Its knowledge base.
    pub knowledge_base_id: Uuid,
    /// The upload it came with.
    pub batch_id: Option<Uuid>,
    /// Name given at upload.
    pub filename: String,
    /// `application/pdf`, `text/markdown`, `text/html` or `text/plain`.
    pub media_type: String,
    /// Size of the upload.
    pub size_bytes: i64,
    /// SHA-256 of the bytes.
    pub sha256: Vec<u8>,
    /// Where ingestion is.
    pub status: DocumentStatus,
    /// Why it failed.
    pub error_code: Option<DocumentErrorCode>,
    /// Why it failed, for people.
    pub error_message: Option<String>,
    /// Chunks indexed.
    pub chunk_count: i32,
    /// Tokens of those chunks.
    pub token_count: i32,
    /// Ingestion attempts so far (the fence of the ingest job).
    pub attempt: i32,
    /// Upload time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// Starts an upload batch inside the upload transaction.
pub async fn create_batch(tx: &mut Transaction<'_, Postgres>, kb_id: Uuid) -> Result<Uuid, sqlx::Error> {
    let id = crate::new_id();
    sqlx::query!("INSERT INTO ingestion_batches (id, knowledge_base_id) VALUES ($1, $2)", id, kb_id)
        .execute(&mut **tx)
        .await?;
    Ok(id)
}

/// Counts the duplicates an upload reported.
pub async fn set_batch_duplicates(
    tx: &mut Transaction<'_, Postgres>,
    batch_id: Uuid,
    duplicates: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query!("UPDATE ingestion_batches SET duplicate_count = $2 WHERE id = $1", batch_id, duplicates)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A file of an upload.
#[derive(Debug)]
pub struct NewDocument<'a> {
    /// Target base.
    pub kb_id: Uuid,
    /// Upload batch.
    pub batch_id: Uuid,
    /// Name given by the client.
    pub filename: &'a str,
    /// Detected type.
    pub media_type: &'a str,
    /// SHA-256.
    pub sha256: &'a [u8],
    /// Content.
    pub bytes: &'a [u8],
}

/// What storing a file did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// A new `queued` document.
    Queued(Uuid),
    /// The base already holds this content: the existing document.
    Duplicate(Uuid),
}

/// Stores a file and its bytes as a `queued` document, unless the base already has the same
/// content (the unique live SHA-256 per base decides, also between concurrent uploads).
pub async fn insert_document(tx: &mut Transaction<'_, Postgres>, d: &NewDocument<'_>) -> Result<Stored, sqlx::Error> {
    let id = crate::new_id();
    let inserted = sqlx::query_scalar!(
        "INSERT INTO documents (id, knowledge_base_id, batch_id, filename, media_type, size_bytes, sha256)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (knowledge_base_id, sha256) WHERE deleted_at IS NULL DO NOTHING RETURNING id",
        id,
        d.kb_id,
        d.batch_id,
        d.filename,
        d.media_type,
        d.bytes.len() as i64,
        d.sha256,
    )
    .fetch_optional(&mut **tx)
    .await?;
    if inserted.is_none() {
        let existing = sqlx::query_scalar!(
            "SELECT id FROM documents WHERE knowledge_base_id = $1 AND sha256 = $2 AND deleted_at IS NULL",
            d.kb_id,
            d.sha256,
        )
        .fetch_one(&mut **tx)
        .await?;
        return Ok(Stored::Duplicate(existing));
    }
    sqlx::query!("INSERT INTO document_blobs (document_id, bytes) VALUES ($1, $2)", id, d.bytes)
        .execute(&mut **tx)
        .await?;
    Ok(Stored::Queued(id))
}

/// What a knowledge base holds: live documents and their bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KbUsage {
    /// Live documents.
    pub documents: i64,
    /// Their bytes.
    pub bytes: i64,
}

/// What the knowledge base holds in `tx`, counting the documents `tx` inserted. Locks the
/// base's row until `tx` ends, so two uploads cannot both fit under a quota only one fits: the
/// second one counts after the first has committed. `FOR NO KEY UPDATE`, because the upload's
/// own inserts already hold `FOR KEY SHARE` on the row (their foreign keys), which `FOR UPDATE`
/// would conflict with, deadlocking two concurrent uploads.
pub async fn lock_kb_usage(tx: &mut Transaction<'_, Postgres>, kb_id: Uuid) -> Result<KbUsage, sqlx::Error> {
    sqlx::query!(r#"SELECT 1 AS "locked!" FROM knowledge_bases WHERE id = $1 FOR NO KEY UPDATE"#, kb_id)
        .fetch_optional(&mut **tx)
        .await?;
    sqlx::query_as!(
        KbUsage,
        r#"SELECT count(*) AS "documents!", coalesce(sum(size_bytes), 0)::bigint AS "bytes!" FROM documents
           WHERE knowledge_base_id = $1 AND deleted_at IS NULL"#,
        kb_id,
    )
    .fetch_one(&mut **tx)
    .await
}

/// A live document.
pub async fn get_document(pool: &PgPool, id: Uuid) -> Result<Option<Document>, sqlx::Error> {
    sqlx::query_as!(
        Document,
        r#"SELECT id, knowledge_base_id, batch_id, filename, media_type, size_bytes, sha256,
           status AS "status: DocumentStatus",
           error_code AS "error_code: DocumentErrorCode", error_message, chunk_count, token_count, attempt, created_at,
           updated_at FROM documents WHERE id = $1 AND deleted_at IS NULL"#,
        id
    )
    .fetch_optional(pool)
    .await
}

/// Live documents of a base, oldest first.
pub async fn list_documents(
    pool: &PgPool,
    kb_id: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Page<Document>, sqlx::Error> {
    let rows = sqlx::query_as!(
        Document,
        r#"SELECT id, knowledge_base_id, batch_id, filename, media_type, size_bytes, sha256,
           status AS "status: DocumentStatus",
           error_code AS "error_code: DocumentErrorCode", error_message, chunk_count, token_count, attempt, created_at,
           updated_at FROM documents
         WHERE knowledge_base_id = $1 AND deleted_at IS NULL AND ($2::uuid IS NULL OR id > $2) ORDER BY id LIMIT $3"#,
        kb_id,
        after,
        limit + 1,
    )
    .fetch_all(pool)
    .await?;
    Ok(Page::from_overfetch(rows, limit))
}

/// Deletes a document: its chunks leave retrieval at once. Returns whether it existed.
pub async fn delete_document(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let kb = sqlx::query_scalar!(
        "UPDATE documents SET deleted_at = now() WHERE id = $1 AND deleted_at IS NULL RETURNING knowledge_base_id",
        id,
    )
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(kb) = kb {
        sqlx::query!("DELETE FROM chunks WHERE document_id = $1", id).execute(&mut *tx).await?;
        sqlx::query!("DELETE FROM document_blobs WHERE document_id = $1", id).execute(&mut *tx).await?;
        bump_version(&mut tx, kb).await?;
    }
    tx.commit().await?;
    Ok(kb.is_some())
}

/// Puts a `failed` document back to `queued` with its attempt counter at zero (so the attempt
/// cap applies afresh) and its error cleared. Atomic on the status: of concurrent retries only
/// one gets the document back, so only one pushes an ingest job. `None`: no live document in
/// status `failed` has this id.
pub async fn requeue_failed_document(pool: &PgPool, id: Uuid) -> Result<Option<Document>, sqlx::Error> {
    sqlx::query_as!(
        Document,
        r#"UPDATE documents SET status = $2, attempt = 0, error_code = NULL, error_message = NULL
         WHERE id = $1 AND deleted_at IS NULL AND status = 'failed'
         RETURNING id, knowledge_base_id, batch_id, filename, media_type, size_bytes, sha256,
           status AS "status: DocumentStatus",
           error_code AS "error_code: DocumentErrorCode", error_message, chunk_count, token_count, attempt, created_at,
           updated_at"#,
        id,
        DocumentStatus::Queued as _,
    )
    .fetch_optional(pool)
    .await
}

/// A stored chunk of a document, as an admin inspects it.
#[derive(Debug, Clone)]
pub struct ChunkRow {
    /// Id.
    pub id: Uuid,
    /// Position in the document, from 0.
    pub ordinal: i32,
    /// Page or heading path.
    pub location: Option<String>,
    /// Start of its character range in the extracted text of its page or document.
    pub char_start: i32,
    /// End of that range (exclusive).
    pub char_end: i32,
    /// Tokens of the text.
    pub token_count: i32,
    /// Text.
    pub content: String,
}

/// A document's chunks in document order, after the chunk `after` (a chunk id).
pub async fn list_chunks(
    pool: &PgPool,
    document_id: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Page<ChunkRow>, sqlx::Error> {
    let rows = sqlx::query_as!(
        ChunkRow,
        "SELECT id, ordinal, location, char_start, char_end, token_count, content FROM chunks
         WHERE document_id = $1
           AND ($2::uuid IS NULL OR ordinal > (SELECT ordinal FROM chunks WHERE id = $2 AND document_id = $1))
         ORDER BY ordinal LIMIT $3",
        document_id,
        after,
        limit + 1,
    )
    .fetch_all(pool)
    .await?;
    Ok(Page::from_overfetch(rows, limit))
}

async fn bump_version(tx: &mut Transaction<'_, Postgres>, kb_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query!("UPDATE knowledge_bases SET embeddings_version = embeddings_version + 1 WHERE id = $1", kb_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// An upload batch with its duplicate count.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Id.
    pub id: Uuid,
    /// Its base.
    pub knowledge_base_id: Uuid,
    /// Files reported as duplicates.
    pub duplicate_count: i32,
}

/// A batch and its live documents.
pub async fn get_batch(pool: &PgPool, id: Uuid) -> Result<Option<(Batch, Vec<Document>)>, sqlx::Error> {
    let batch = sqlx::query_as!(
        Batch,
        "SELECT b.id, b.knowledge_base_id, b.duplicate_count FROM ingestion_batches b
         JOIN knowledge_bases kb ON kb.id = b.knowledge_base_id AND kb.deleted_at IS NULL WHERE b.id = $1",
        id,
    )
    .fetch_optional(pool)
    .await?;
    let Some(batch) = batch else { return Ok(None) };
    let docs = sqlx::query_as!(
        Document,
        r#"SELECT id, knowledge_base_id, batch_id, filename, media_type, size_bytes, sha256,
           status AS "status: DocumentStatus",
           error_code AS "error_code: DocumentErrorCode", error_message, chunk_count, token_count, attempt, created_at,
           updated_at FROM documents WHERE batch_id = $1 AND deleted_at IS NULL ORDER BY id"#,
        id,
    )
    .fetch_all(pool)
    .await?;
    Ok(Some((batch, docs)))
}

// ---- ingestion ----

/// Claims a document for ingestion: `queued` (or `processing` left by a crashed attempt)
/// becomes `processing` with the next attempt number. `None`: deleted, ready, failed, or its
/// `max_attempts` attempts are used up ([`fail_exhausted_documents`] fails it).
pub async fn claim_document(pool: &PgPool, id: Uuid, max_attempts: i32) -> Result<Option<Document>, sqlx::Error> {
    sqlx::query_as!(
        Document,
        r#"UPDATE documents SET status = $2, attempt = attempt + 1, error_code = NULL, error_message = NULL
         WHERE id = $1 AND deleted_at IS NULL AND status IN ('queued', 'processing') AND attempt < $3
         RETURNING id, knowledge_base_id, batch_id, filename, media_type, size_bytes, sha256,
           status AS "status: DocumentStatus",
           error_code AS "error_code: DocumentErrorCode", error_message, chunk_count, token_count, attempt, created_at,
           updated_at"#,
        id,
        DocumentStatus::Processing as _,
        max_attempts,
    )
    .fetch_optional(pool)
    .await
}

/// The error code of a document whose ingestion attempts were all interrupted.
pub const EXHAUSTED_CODE: DocumentErrorCode = DocumentErrorCode::IngestionAttemptsExhausted;

/// Fails documents left `processing` for `processing_secs` after their last allowed attempt
/// (every attempt's worker died or lost the job): status `failed` with [`EXHAUSTED_CODE`] and
/// a message naming the attempts. Returns their ids.
pub async fn fail_exhausted_documents(
    pool: &PgPool,
    max_attempts: i32,
    processing_secs: f64,
    limit: i64,
) -> Result<Vec<Uuid>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let rows = sqlx::query!(
        "UPDATE documents SET status = $4, error_code = $5,
                error_message = format('ingestion was interrupted %s times (the worker stopped or lost the job while processing this file); it is not tried again', attempt)
         WHERE id IN (
             SELECT id FROM documents WHERE deleted_at IS NULL AND status = 'processing' AND attempt >= $1
                 AND updated_at < now() - make_interval(secs => $2)
             ORDER BY updated_at LIMIT $3 FOR UPDATE SKIP LOCKED)
         RETURNING id, batch_id",
        max_attempts,
        processing_secs,
        limit,
        DocumentStatus::Failed as _,
        EXHAUSTED_CODE as _,
    )
    .fetch_all(&mut *tx)
    .await?;
    for row in &rows {
        super::webhooks::record_document(&mut tx, "document.failed", row.id, row.batch_id).await?;
    }
    tx.commit().await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

/// The uploaded bytes of a document.
pub async fn document_bytes(pool: &PgPool, id: Uuid) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar!("SELECT bytes FROM document_blobs WHERE document_id = $1", id).fetch_optional(pool).await
}

/// Marks the attempt failed; does nothing if another attempt took over or it was deleted.
pub async fn fail_document(
    pool: &PgPool,
    id: Uuid,
    attempt: i32,
    code: DocumentErrorCode,
    message: &str,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let batch = sqlx::query_scalar!(
        "UPDATE documents SET status = $5, error_code = $3, error_message = $4
         WHERE id = $1 AND attempt = $2 AND deleted_at IS NULL AND status = 'processing'
         RETURNING batch_id",
        id,
        attempt,
        code as _,
        message,
        DocumentStatus::Failed as _,
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(batch) = batch else { return Ok(false) };
    super::webhooks::record_document(&mut tx, "document.failed", id, batch).await?;
    tx.commit().await?;
    Ok(true)
}

/// A chunk ready to index.
#[derive(Debug, Clone)]
pub struct NewChunk {
    /// Text.
    pub content: String,
    /// Tokens of the text.
    pub token_count: i32,
    /// Character range in the extracted text of its page or document.
    pub char_start: i32,
    /// End of that range (exclusive).
    pub char_end: i32,
    /// Page or heading path.
    pub location: Option<String>,
    /// Unit-length embedding.
    pub embedding: Vec<f32>,
}

/// In one transaction: replaces the document's chunks, marks it `ready` and bumps the base's
/// version. Fenced on the attempt: `false` (and nothing written) if the attempt lost the
/// document (deleted, or another attempt took over).
pub async fn complete_document(pool: &PgPool, doc: &Document, chunks: &[NewChunk]) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let tokens: i64 = chunks.iter().map(|c| c.token_count as i64).sum();
    let hit = sqlx::query!(
        "UPDATE documents SET status = $5, chunk_count = $3, token_count = $4, error_code = NULL, error_message = NULL
         WHERE id = $1 AND attempt = $2 AND deleted_at IS NULL AND status = 'processing'",
        doc.id,
        doc.attempt,
        chunks.len() as i32,
        tokens.min(i32::MAX as i64) as i32,
        DocumentStatus::Ready as _,
    )
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !hit {
        tx.rollback().await?;
        return Ok(false);
    }
    sqlx::query!("DELETE FROM chunks WHERE document_id = $1", doc.id).execute(&mut *tx).await?;
    // The chunks' full-text vectors are built in the base's language (a generated column).
    let language = sqlx::query_scalar!("SELECT language FROM knowledge_bases WHERE id = $1", doc.knowledge_base_id)
        .fetch_optional(&mut *tx)
        .await?
        .unwrap_or_else(|| "english".into());
    // Built at run time: one multi-row INSERT per 200 chunks, and the number of rows (hence of
    // placeholders) varies with the document.
    for (n, part) in chunks.chunks(200).enumerate() {
        let mut qb = QueryBuilder::<Postgres>::new(
            "INSERT INTO chunks (id, document_id, knowledge_base_id, ordinal, content, token_count, char_start, char_end, location, embedding, language) ",
        );
        qb.push_values(part.iter().enumerate(), |mut b, (i, c)| {
            b.push_bind(crate::new_id())
                .push_bind(doc.id)
                .push_bind(doc.knowledge_base_id)
                .push_bind((n * 200 + i) as i32)
                .push_bind(&c.content)
                .push_bind(c.token_count)
                .push_bind(c.char_start)
                .push_bind(c.char_end)
                .push_bind(&c.location)
                .push_bind(&c.embedding)
                .push_bind(&language)
                .push_unseparated("::regconfig");
        });
        qb.build().execute(&mut *tx).await?;
    }
    bump_version(&mut tx, doc.knowledge_base_id).await?;
    super::webhooks::record_document(&mut tx, "document.ready", doc.id, doc.batch_id).await?;
    tx.commit().await?;
    Ok(true)
}

// ---- retrieval ----

/// `(id, embeddings_version)` of the live bases among `ids`.
pub async fn kb_versions(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<(Uuid, i64)>, sqlx::Error> {
    let rows = sqlx::query!(
        "SELECT id, embeddings_version FROM knowledge_bases WHERE id = ANY($1) AND deleted_at IS NULL",
        ids,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.id, r.embeddings_version)).collect())
}

/// A read-only repeatable-read transaction and the base's `embeddings_version` in it (-1 when
/// the base is gone), so what is read next matches that version.
async fn snapshot_of(
    pool: &PgPool,
    kb_id: Uuid,
) -> Result<(sqlx::Transaction<'static, sqlx::Postgres>, i64), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query!("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut *tx).await?;
    let version = sqlx::query_scalar!("SELECT embeddings_version FROM knowledge_bases WHERE id = $1", kb_id)
        .fetch_optional(&mut *tx)
        .await?
        .unwrap_or(-1);
    Ok((tx, version))
}

/// Every chunk id and embedding of a base, with the base's version read in the same snapshot.
pub async fn load_vectors(pool: &PgPool, kb_id: Uuid) -> Result<(i64, Vec<(Uuid, Vec<f32>)>), sqlx::Error> {
    let (mut tx, version) = snapshot_of(pool, kb_id).await?;
    let rows = sqlx::query!("SELECT id, embedding FROM chunks WHERE knowledge_base_id = $1", kb_id)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((version, rows.into_iter().map(|r| (r.id, r.embedding)).collect()))
}

/// For each live base among `ids`: its `embeddings_version` and the lexemes of `query` in the
/// base's language (stemmed, stop words dropped), in query order.
pub async fn query_lexemes(
    pool: &PgPool,
    ids: &[Uuid],
    query: &str,
) -> Result<Vec<(Uuid, i64, Vec<String>)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT kb.id, kb.embeddings_version,
                  tsvector_to_array(to_tsvector(kb.language::regconfig, $2)) AS "terms!"
           FROM knowledge_bases kb WHERE kb.id = ANY($1) AND kb.deleted_at IS NULL"#,
        ids,
        query,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.id, r.embeddings_version, r.terms)).collect())
}

/// Every chunk id of a base with its full-text vector as text, and the base's version read in
/// the same snapshot.
pub async fn load_tsvectors(pool: &PgPool, kb_id: Uuid) -> Result<(i64, Vec<(Uuid, String)>), sqlx::Error> {
    let (mut tx, version) = snapshot_of(pool, kb_id).await?;
    let rows = sqlx::query!(r#"SELECT id, tsv::text AS "tsv!" FROM chunks WHERE knowledge_base_id = $1"#, kb_id)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((version, rows.into_iter().map(|r| (r.id, r.tsv)).collect()))
}

/// A retrieved chunk with what a citation needs.
#[derive(Debug, Clone)]
pub struct ChunkHit {
    /// Chunk id.
    pub id: Uuid,
    /// Its document.
    pub document_id: Uuid,
    /// The document's file name.
    pub filename: String,
    /// Page or heading path.
    pub location: Option<String>,
    /// Text.
    pub content: String,
    /// Tokens of the text.
    pub token_count: i32,
}

/// The chunks among `ids` whose documents and bases are live (deleted ones drop out here even
/// before a worker's vector cache notices).
pub async fn chunks_by_ids(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<ChunkHit>, sqlx::Error> {
    sqlx::query_as!(
        ChunkHit,
        "SELECT c.id, c.document_id, d.filename, c.location, c.content, c.token_count
         FROM chunks c JOIN documents d ON d.id = c.document_id AND d.deleted_at IS NULL
         JOIN knowledge_bases kb ON kb.id = c.knowledge_base_id AND kb.deleted_at IS NULL
         WHERE c.id = ANY($1)",
        ids,
    )
    .fetch_all(pool)
    .await
}

/// Documents whose ingestion job may be lost: `queued` for `queued_secs` or `processing` for
/// `processing_secs` without a change. Touches them (so the next pass skips them) and returns
/// their ids for a new push.
pub async fn take_stale_documents(
    pool: &PgPool,
    queued_secs: f64,
    processing_secs: f64,
    max_attempts: i32,
    limit: i64,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        "UPDATE documents SET updated_at = now() WHERE id IN (
             SELECT id FROM documents WHERE deleted_at IS NULL AND (
                 (status = 'queued' AND updated_at < now() - make_interval(secs => $1))
                 OR (status = 'processing' AND attempt < $4 AND updated_at < now() - make_interval(secs => $2)))
             ORDER BY updated_at LIMIT $3 FOR UPDATE SKIP LOCKED)
         RETURNING id",
        queued_secs,
        processing_secs,
        limit,
        max_attempts,
    )
    .fetch_all(pool)
    .await
}
