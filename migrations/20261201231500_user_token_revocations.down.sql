DROP TABLE IF EXISTS user_token_revocations;
