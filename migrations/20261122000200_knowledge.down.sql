DROP INDEX IF EXISTS chunks_document_idx;
ALTER TABLE ingestion_batches DROP COLUMN IF EXISTS duplicate_count;
ALTER TABLE knowledge_bases DROP COLUMN IF EXISTS embeddings_version;
