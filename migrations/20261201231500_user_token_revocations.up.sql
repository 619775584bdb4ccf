-- Per end-user revocation of user tokens: the tokens a key issued for `end_user` before
-- `revoked_before` are refused. One row per key and user; a later revocation moves it forward.
CREATE TABLE user_token_revocations (
    api_key_id     uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    end_user       text NOT NULL,
    revoked_before timestamptz NOT NULL,
    CONSTRAINT user_token_revocations_pkey PRIMARY KEY (api_key_id, end_user)
);
