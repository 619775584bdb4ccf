-- Provider fallback: an assistant names the models to try after its own, in order; a run keeps
-- the list it was submitted with, which route (model on an upstream) it is on and since which
-- attempt, and the upstream that answered. `runs.model` becomes the model of the current route,
-- so a finished run names the model that produced its answer.
ALTER TABLE assistants ADD COLUMN fallback_models text[] NOT NULL DEFAULT '{}';

ALTER TABLE runs
    ADD COLUMN models text[] NOT NULL DEFAULT '{}',
    ADD COLUMN route integer NOT NULL DEFAULT 0,
    ADD COLUMN route_attempt integer NOT NULL DEFAULT 1,
    ADD COLUMN upstream text;

-- The upstream a chat call went to (NULL for records written before upstreams existed and for
-- calls that are not chat: embeddings and moderation use the default upstream).
ALTER TABLE usage_records ADD COLUMN upstream text;
