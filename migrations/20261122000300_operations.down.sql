DROP INDEX IF EXISTS runs_user_message_idx;
DROP INDEX IF EXISTS messages_run_idx;
DROP INDEX IF EXISTS maintenance_jobs_one_active;
DROP INDEX IF EXISTS usage_records_model_at_idx;
DROP INDEX IF EXISTS documents_deleted_idx;
DROP INDEX IF EXISTS runs_completed_at_idx;
