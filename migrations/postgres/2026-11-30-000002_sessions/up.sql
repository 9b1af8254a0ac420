-- Sessions that can end before their token expires. A token carries the
-- user's token_generation at issue; every request compares it with this
-- column (cached for seconds), so bumping it (password change, "log out
-- everywhere", role change, disable) ends every older token on every host.
-- disabled_at (milliseconds since the epoch) refuses log-in and every
-- request while set.
ALTER TABLE users ADD COLUMN token_generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN disabled_at BIGINT;
