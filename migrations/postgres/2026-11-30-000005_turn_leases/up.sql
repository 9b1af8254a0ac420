-- Which host is answering a message, while it does (PostgreSQL, where
-- several hosts share one database): a resend that reaches another host is
-- told `in_progress` instead of being answered a second time. The holder
-- renews its lease while the turn runs; a host that dies stops renewing,
-- the lease expires, and the message can be taken again (its stored
-- partial reply is then replayed).
CREATE TABLE turn_leases (
    message_id BIGINT PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
    holder     TEXT   NOT NULL,
    expires_at BIGINT NOT NULL
);
