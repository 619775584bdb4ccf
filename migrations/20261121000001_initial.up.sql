-- chatq schema, first version: the whole data model of DESIGN §3.
-- Every constraint is named so the API can map a violation to an error code.

CREATE FUNCTION chatq_set_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at = now();
    RETURN NEW;
END
$$;

CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    role        text NOT NULL CONSTRAINT api_keys_role_check CHECK (role IN ('admin', 'client')),
    key_hash    bytea NOT NULL CONSTRAINT api_keys_key_hash_key UNIQUE,
    -- The first characters of the key ("cq_client_ab12"), so an operator can tell keys apart.
    key_prefix  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE assistants (
    id                uuid PRIMARY KEY,
    name              text NOT NULL,
    instructions      text NOT NULL DEFAULT '',
    model             text NOT NULL,
    temperature       real CONSTRAINT assistants_temperature_check CHECK (temperature IS NULL OR (temperature >= 0 AND temperature <= 2)),
    max_output_tokens integer CONSTRAINT assistants_max_output_tokens_check CHECK (max_output_tokens IS NULL OR max_output_tokens > 0),
    moderation        text NOT NULL DEFAULT 'off' CONSTRAINT assistants_moderation_check CHECK (moderation IN ('off', 'input')),
    retention_days    integer CONSTRAINT assistants_retention_days_check CHECK (retention_days IS NULL OR retention_days > 0),
    metadata          jsonb NOT NULL DEFAULT '{}',
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    deleted_at        timestamptz
);
CREATE TRIGGER assistants_set_updated_at BEFORE UPDATE ON assistants
    FOR EACH ROW EXECUTE FUNCTION chatq_set_updated_at();
CREATE INDEX assistants_live_idx ON assistants (id) WHERE deleted_at IS NULL;

CREATE TABLE knowledge_bases (
    id              uuid PRIMARY KEY,
    name            text NOT NULL,
    description     text NOT NULL DEFAULT '',
    embedding_model text NOT NULL,
    embedding_dims  integer NOT NULL CONSTRAINT knowledge_bases_embedding_dims_check CHECK (embedding_dims > 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    deleted_at      timestamptz
);
CREATE TRIGGER knowledge_bases_set_updated_at BEFORE UPDATE ON knowledge_bases
    FOR EACH ROW EXECUTE FUNCTION chatq_set_updated_at();

CREATE TABLE assistant_knowledge_bases (
    assistant_id      uuid NOT NULL CONSTRAINT assistant_knowledge_bases_assistant_fkey REFERENCES assistants (id) ON DELETE CASCADE,
    knowledge_base_id uuid NOT NULL CONSTRAINT assistant_knowledge_bases_kb_fkey REFERENCES knowledge_bases (id) ON DELETE CASCADE,
    CONSTRAINT assistant_knowledge_bases_pkey PRIMARY KEY (assistant_id, knowledge_base_id)
);
CREATE INDEX assistant_knowledge_bases_kb_idx ON assistant_knowledge_bases (knowledge_base_id);

CREATE TABLE threads (
    id               uuid PRIMARY KEY,
    api_key_id       uuid NOT NULL CONSTRAINT threads_api_key_fkey REFERENCES api_keys (id),
    -- The end user this conversation belongs to (the `user` field); NULL for a key's own threads.
    end_user         text,
    assistant_id     uuid CONSTRAINT threads_assistant_fkey REFERENCES assistants (id),
    title            text,
    metadata         jsonb NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT now(),
    last_activity_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX threads_owner_idx ON threads (api_key_id, end_user, id);
CREATE INDEX threads_last_activity_idx ON threads (last_activity_at);

CREATE TABLE messages (
    id                uuid PRIMARY KEY,
    thread_id         uuid NOT NULL CONSTRAINT messages_thread_fkey REFERENCES threads (id) ON DELETE CASCADE,
    role              text NOT NULL CONSTRAINT messages_role_check CHECK (role IN ('user', 'assistant')),
    content           text NOT NULL,
    run_id            uuid,
    client_message_id text,
    citations         jsonb NOT NULL DEFAULT '[]',
    created_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT messages_client_message_id_key UNIQUE (thread_id, client_message_id)
);
CREATE INDEX messages_thread_idx ON messages (thread_id, id);
-- A run produces at most one answer, whatever the number of deliveries or attempts.
CREATE UNIQUE INDEX messages_one_answer_per_run ON messages (run_id) WHERE role = 'assistant';

CREATE TABLE runs (
    id                  uuid PRIMARY KEY,
    thread_id           uuid NOT NULL CONSTRAINT runs_thread_fkey REFERENCES threads (id) ON DELETE CASCADE,
    assistant_id        uuid NOT NULL CONSTRAINT runs_assistant_fkey REFERENCES assistants (id),
    api_key_id          uuid NOT NULL CONSTRAINT runs_api_key_fkey REFERENCES api_keys (id),
    user_message_id     uuid NOT NULL CONSTRAINT runs_user_message_fkey REFERENCES messages (id)
                        ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    status              text NOT NULL DEFAULT 'queued' CONSTRAINT runs_status_check
                        CHECK (status IN ('queued', 'in_progress', 'completed', 'failed', 'cancelled')),
    -- Incremented by every claim; every worker write is fenced on it.
    attempt             integer NOT NULL DEFAULT 0,
    lease_owner         text,
    lease_expires_at    timestamptz,
    next_attempt_at     timestamptz,
    waiting_reason      text,
    idempotency_key     text,
    model               text NOT NULL,
    output_text         text NOT NULL DEFAULT '',
    last_seq            bigint NOT NULL DEFAULT 0,
    finish_reason       text,
    error_code          text,
    error_message       text,
    input_tokens        integer,
    cached_input_tokens integer,
    output_tokens       integer,
    cost_usd            numeric(20, 10),
    created_at          timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    first_token_at      timestamptz,
    completed_at        timestamptz,
    cancel_requested_at timestamptz,
    -- Last time a job for this run was pushed; the reconciler re-pushes runs it finds stale.
    enqueued_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT runs_idempotency_key_key UNIQUE (api_key_id, idempotency_key)
);
CREATE UNIQUE INDEX runs_one_active_per_thread ON runs (thread_id) WHERE status IN ('queued', 'in_progress');
CREATE INDEX runs_thread_idx ON runs (thread_id, id);
CREATE INDEX runs_active_idx ON runs (status, next_attempt_at) WHERE status IN ('queued', 'in_progress');

ALTER TABLE messages ADD CONSTRAINT messages_run_fkey FOREIGN KEY (run_id) REFERENCES runs (id)
    ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED;

CREATE TABLE run_events (
    run_id     uuid NOT NULL CONSTRAINT run_events_run_fkey REFERENCES runs (id) ON DELETE CASCADE,
    seq        bigint NOT NULL,
    attempt    integer NOT NULL,
    kind       text NOT NULL,
    data       jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT run_events_pkey PRIMARY KEY (run_id, seq)
);

CREATE TABLE ingestion_batches (
    id                uuid PRIMARY KEY,
    knowledge_base_id uuid NOT NULL CONSTRAINT ingestion_batches_kb_fkey REFERENCES knowledge_bases (id) ON DELETE CASCADE,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ingestion_batches_kb_idx ON ingestion_batches (knowledge_base_id);

CREATE TABLE documents (
    id                uuid PRIMARY KEY,
    knowledge_base_id uuid NOT NULL CONSTRAINT documents_kb_fkey REFERENCES knowledge_bases (id) ON DELETE CASCADE,
    batch_id          uuid CONSTRAINT documents_batch_fkey REFERENCES ingestion_batches (id) ON DELETE SET NULL,
    filename          text NOT NULL,
    media_type        text NOT NULL,
    size_bytes        bigint NOT NULL,
    sha256            bytea NOT NULL,
    status            text NOT NULL DEFAULT 'queued' CONSTRAINT documents_status_check
                      CHECK (status IN ('queued', 'processing', 'ready', 'failed')),
    error_code        text,
    error_message     text,
    chunk_count       integer NOT NULL DEFAULT 0,
    token_count       integer NOT NULL DEFAULT 0,
    attempt           integer NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    deleted_at        timestamptz
);
CREATE TRIGGER documents_set_updated_at BEFORE UPDATE ON documents
    FOR EACH ROW EXECUTE FUNCTION chatq_set_updated_at();
CREATE INDEX documents_kb_idx ON documents (knowledge_base_id, id);
CREATE INDEX documents_batch_idx ON documents (batch_id);
-- One live copy of a content per knowledge base: a re-upload is reported as a duplicate.
CREATE UNIQUE INDEX documents_kb_sha256_key ON documents (knowledge_base_id, sha256) WHERE deleted_at IS NULL;
CREATE INDEX documents_pending_idx ON documents (status, updated_at) WHERE status IN ('queued', 'processing');

CREATE TABLE document_blobs (
    document_id uuid PRIMARY KEY CONSTRAINT document_blobs_document_fkey REFERENCES documents (id) ON DELETE CASCADE,
    bytes       bytea NOT NULL
);

CREATE TABLE chunks (
    id                uuid PRIMARY KEY,
    document_id       uuid NOT NULL CONSTRAINT chunks_document_fkey REFERENCES documents (id) ON DELETE CASCADE,
    knowledge_base_id uuid NOT NULL CONSTRAINT chunks_kb_fkey REFERENCES knowledge_bases (id) ON DELETE CASCADE,
    ordinal           integer NOT NULL,
    content           text NOT NULL,
    token_count       integer NOT NULL,
    char_start        integer NOT NULL,
    char_end          integer NOT NULL,
    -- Where the passage is, for citations: "page 3" or a heading path "Install > From CD".
    location          text,
    embedding         real[] NOT NULL,
    tsv               tsvector GENERATED ALWAYS AS
                      (setweight(to_tsvector('english', coalesce(location, '')), 'A') || to_tsvector('english', content)) STORED,
    CONSTRAINT chunks_document_ordinal_key UNIQUE (document_id, ordinal)
);
CREATE INDEX chunks_kb_idx ON chunks (knowledge_base_id);
CREATE INDEX chunks_tsv_idx ON chunks USING gin (tsv);

-- One row per provider call. No foreign keys on purpose: cost history outlives retention.
CREATE TABLE usage_records (
    id                  uuid PRIMARY KEY,
    at                  timestamptz NOT NULL DEFAULT now(),
    kind                text NOT NULL CONSTRAINT usage_records_kind_check CHECK (kind IN ('chat', 'embedding', 'moderation')),
    model               text NOT NULL,
    api_key_id          uuid,
    assistant_id        uuid,
    run_id              uuid,
    document_id         uuid,
    input_tokens        integer NOT NULL DEFAULT 0,
    cached_input_tokens integer NOT NULL DEFAULT 0,
    output_tokens       integer NOT NULL DEFAULT 0,
    cost_usd            numeric(20, 10),
    outcome             text NOT NULL,
    latency_ms          integer NOT NULL DEFAULT 0
);
CREATE INDEX usage_records_at_idx ON usage_records (at);
CREATE INDEX usage_records_run_idx ON usage_records (run_id) WHERE run_id IS NOT NULL;

CREATE TABLE maintenance_jobs (
    id           uuid PRIMARY KEY,
    kind         text NOT NULL,
    status       text NOT NULL CONSTRAINT maintenance_jobs_status_check CHECK (status IN ('queued', 'running', 'completed', 'failed')),
    dry_run      boolean NOT NULL DEFAULT false,
    stats        jsonb NOT NULL DEFAULT '{}',
    requested_by uuid,
    created_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);
