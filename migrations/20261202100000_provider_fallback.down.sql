ALTER TABLE usage_records DROP COLUMN upstream;
ALTER TABLE runs DROP COLUMN upstream, DROP COLUMN route_attempt, DROP COLUMN route, DROP COLUMN models;
ALTER TABLE assistants DROP COLUMN fallback_models;
