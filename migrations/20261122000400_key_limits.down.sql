DROP INDEX IF EXISTS usage_records_key_at_idx;
ALTER TABLE api_keys DROP COLUMN IF EXISTS runs_per_minute, DROP COLUMN IF EXISTS monthly_budget_usd;
