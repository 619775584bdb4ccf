DROP TABLE IF EXISTS maintenance_jobs, usage_records, chunks, document_blobs, documents, ingestion_batches,
    run_events, messages, runs, threads, assistant_knowledge_bases, knowledge_bases, assistants, api_keys CASCADE;
DROP FUNCTION IF EXISTS chatq_set_updated_at();
