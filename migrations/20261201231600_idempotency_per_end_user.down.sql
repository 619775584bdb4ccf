ALTER TABLE runs DROP CONSTRAINT runs_idempotency_key_key;
ALTER TABLE runs ADD CONSTRAINT runs_idempotency_key_key UNIQUE (api_key_id, idempotency_key);
ALTER TABLE runs DROP COLUMN idempotency_user;
