-- Assistants that moderated answers keep input moderation where they had it.
UPDATE assistants SET moderation = 'input' WHERE moderation = 'both';
UPDATE assistants SET moderation = 'off' WHERE moderation = 'output';
ALTER TABLE assistants DROP CONSTRAINT assistants_moderation_check;
ALTER TABLE assistants ADD CONSTRAINT assistants_moderation_check CHECK (moderation IN ('off', 'input'));
