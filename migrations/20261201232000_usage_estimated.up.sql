-- A usage record counted with the tokenizer because the provider sent no usage (a cancelled,
-- cut or abandoned call). Such records count towards budgets and reports like the others, and
-- `/v1/usage` shows them apart so an operator can see how much of the spend is estimated.
ALTER TABLE usage_records ADD COLUMN estimated boolean NOT NULL DEFAULT false;
