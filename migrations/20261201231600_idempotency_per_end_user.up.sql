-- Idempotency keys are scoped per API key and end user: two end users of one key (each with
-- a user token) may use the same Idempotency-Key without colliding. '' is the key's own scope
-- (requests made with the API key itself).
ALTER TABLE runs ADD COLUMN idempotency_user text NOT NULL DEFAULT '';
ALTER TABLE runs DROP CONSTRAINT runs_idempotency_key_key;
ALTER TABLE runs ADD CONSTRAINT runs_idempotency_key_key UNIQUE (api_key_id, idempotency_user, idempotency_key);
