-- Issue 12: a language per knowledge base, the name of a Postgres text search configuration
-- (stemming and stop words; checked against pg_ts_config by the API), and each chunk's
-- full-text vector built in its base's language. The vector indexes the heading path (weight A,
-- without the "page N" / "line N" part of the location) and the text; common::lexical ranks
-- chunks by BM25 over these vectors.
ALTER TABLE knowledge_bases ADD COLUMN language text NOT NULL DEFAULT 'english';
ALTER TABLE chunks ADD COLUMN language regconfig NOT NULL DEFAULT 'english';
DROP INDEX chunks_tsv_idx;
ALTER TABLE chunks DROP COLUMN tsv;
ALTER TABLE chunks ADD COLUMN tsv tsvector GENERATED ALWAYS AS (
    setweight(to_tsvector(language, regexp_replace(coalesce(location, ''), '^(page|line) [0-9]+( > )?', '')), 'A')
    || to_tsvector(language, content)) STORED;
CREATE INDEX chunks_tsv_idx ON chunks USING gin (tsv);
