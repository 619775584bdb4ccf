-- Issue 4: knowledge bases. A per-base counter bumped whenever its chunks change, so workers
-- know when their in-memory vectors are stale; and the duplicates an upload reported.
ALTER TABLE knowledge_bases ADD COLUMN embeddings_version bigint NOT NULL DEFAULT 0;
ALTER TABLE ingestion_batches ADD COLUMN duplicate_count integer NOT NULL DEFAULT 0;
CREATE INDEX chunks_document_idx ON chunks (document_id);
