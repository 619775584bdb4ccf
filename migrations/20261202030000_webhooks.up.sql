-- Webhook subscriptions and their outbox. A delivery row is written in the same transaction
-- that finishes the run, document or batch, so an event is never lost between the commit and
-- the queue push; the worker sends it, records each attempt and schedules the next one.
CREATE TABLE webhooks (
    id            uuid PRIMARY KEY,
    url           text NOT NULL,
    events        text[] NOT NULL,
    description   text,
    -- The signing secret sealed with AES-256-GCM (nonce ‖ ciphertext ‖ tag) under a key derived
    -- from CHATQ_TOKEN_SECRET: the worker needs it in clear to sign, so it cannot be a hash.
    secret_sealed bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhooks_events_idx ON webhooks USING gin (events);

-- One event for one subscription. `id` is the `webhook-id` header: stable across attempts, so
-- receivers deduplicate on it. `body` is frozen at the first attempt, so every attempt sends
-- (and signs) the same bytes.
CREATE TABLE webhook_deliveries (
    id               uuid PRIMARY KEY,
    webhook_id       uuid NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_type       text NOT NULL,
    subject_id       uuid NOT NULL,
    event_at         timestamptz NOT NULL DEFAULT now(),
    body             text,
    status           text NOT NULL DEFAULT 'pending',
    attempt          integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz,
    -- When a job was last pushed for it; NULL until the first push.
    enqueued_at      timestamptz,
    -- A worker sending it holds it until then, so two jobs for one delivery never both send.
    locked_until     timestamptz,
    last_status_code integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT webhook_deliveries_status_check CHECK (status IN ('pending', 'succeeded', 'failed'))
);
CREATE INDEX webhook_deliveries_webhook_idx ON webhook_deliveries (webhook_id, id);
CREATE INDEX webhook_deliveries_pending_idx ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';

-- Every attempt of a delivery, for `GET /v1/webhooks/{id}/deliveries`.
CREATE TABLE webhook_attempts (
    delivery_id uuid NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt     integer NOT NULL,
    status_code integer,
    latency_ms  integer NOT NULL,
    error       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT webhook_attempts_pkey PRIMARY KEY (delivery_id, attempt)
);

-- Set once, when the last document of the batch leaves queued/processing: batch.completed
-- fires once per batch.
ALTER TABLE ingestion_batches ADD COLUMN completed_at timestamptz;
