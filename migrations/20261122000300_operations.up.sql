-- Operations (issue 5): indexes for batched retention cleanup, and at most one active cleanup.

-- Events of long-finished runs are dropped by completion time.
CREATE INDEX runs_completed_at_idx ON runs (completed_at) WHERE completed_at IS NOT NULL;
-- Deleted documents whose blobs and chunks are still to be purged.
CREATE INDEX documents_deleted_idx ON documents (deleted_at) WHERE deleted_at IS NOT NULL;
-- `/v1/usage` reads a time range and groups by model.
CREATE INDEX usage_records_model_at_idx ON usage_records (at, model);

-- Two triggers (cron ticks on every replica, an admin's POST) never run two cleanups at once:
-- the second one finds the active job and returns it.
CREATE UNIQUE INDEX maintenance_jobs_one_active ON maintenance_jobs (kind)
    WHERE status IN ('queued', 'running');

-- Deleting a thread cascades to its runs and messages, and the deferred foreign keys between
-- them (messages.run_id, runs.user_message_id) are checked per deleted row: without these
-- indexes each check scans the whole table, and a retention cleanup of many threads is quadratic.
CREATE INDEX messages_run_idx ON messages (run_id) WHERE run_id IS NOT NULL;
CREATE INDEX runs_user_message_idx ON runs (user_message_id);
