-- "Log out" ends one session: its token's id (the `jti` claim) is kept
-- here until the token would have expired anyway. Sessions check it with
-- the account (cached 5 s), so it holds across restarts and hosts.
CREATE TABLE revoked_tokens (
    jti        TEXT   PRIMARY KEY,
    user_id    BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at BIGINT NOT NULL
);
CREATE INDEX revoked_tokens_user ON revoked_tokens (user_id);
