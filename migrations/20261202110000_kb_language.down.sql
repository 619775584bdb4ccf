DROP INDEX chunks_tsv_idx;
ALTER TABLE chunks DROP COLUMN tsv;
ALTER TABLE chunks DROP COLUMN language;
ALTER TABLE chunks ADD COLUMN tsv tsvector GENERATED ALWAYS AS
    (setweight(to_tsvector('english', coalesce(location, '')), 'A') || to_tsvector('english', content)) STORED;
CREATE INDEX chunks_tsv_idx ON chunks USING gin (tsv);
ALTER TABLE knowledge_bases DROP COLUMN language;
