-- What hosts sharing one database (PostgreSQL) agree on per turn and per
-- minute. Unused on SQLite, where there is one host.
--
-- Which host is answering a message, while it does: a resend that reaches
-- another host is told `in_progress` instead of being answered a second
-- time. The holder renews its lease while the turn runs; a host that dies
-- stops renewing, the lease expires, and the message can be taken again
-- (its stored partial reply is then replayed). A user's live leases are
-- their turns in flight across the fleet.
CREATE TABLE turn_leases (
    message_id BIGINT PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
    user_id    BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    holder     TEXT   NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX turn_leases_user ON turn_leases (user_id, expires_at);

-- Messages per minute, per user and per address, counted by the fleet:
-- one row per subject and minute.
CREATE TABLE rate_windows (
    subject      TEXT    NOT NULL,
    window_start BIGINT  NOT NULL,
    hits         INTEGER NOT NULL,
    PRIMARY KEY (subject, window_start)
);
