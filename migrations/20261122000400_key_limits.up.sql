-- Per-key overrides of the global rate limits, and an optional monthly cost budget.
ALTER TABLE api_keys
    ADD COLUMN runs_per_minute integer CONSTRAINT api_keys_runs_per_minute_check CHECK (runs_per_minute IS NULL OR runs_per_minute >= 0),
    ADD COLUMN monthly_budget_usd numeric(20, 6) CONSTRAINT api_keys_monthly_budget_check CHECK (monthly_budget_usd IS NULL OR monthly_budget_usd >= 0);

-- Monthly spend per key is summed from usage_records.
CREATE INDEX usage_records_key_at_idx ON usage_records (api_key_id, at);
