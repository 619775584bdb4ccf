-- Assistants may moderate their answers too: `output` checks the answer, `both` the question
-- and the answer.
ALTER TABLE assistants DROP CONSTRAINT assistants_moderation_check;
ALTER TABLE assistants ADD CONSTRAINT assistants_moderation_check
    CHECK (moderation IN ('off', 'input', 'output', 'both'));
