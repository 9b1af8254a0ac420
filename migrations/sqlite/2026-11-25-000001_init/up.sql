-- The same schema as migrations/postgres, in SQLite's dialect: INTEGER PRIMARY KEY
-- is SQLite's 64-bit rowid, so ids read as BIGINT on both backends.
CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    username      TEXT      NOT NULL,
    password_hash TEXT      NOT NULL,
    role          TEXT      NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),
    created_at    BIGINT    NOT NULL
);
CREATE UNIQUE INDEX users_username ON users (username);

CREATE TABLE conversations (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    owner_id   BIGINT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    bot        TEXT      NOT NULL,
    title      TEXT      NOT NULL DEFAULT '',
    created_at BIGINT    NOT NULL,
    updated_at BIGINT    NOT NULL
);
-- "My conversations, most recently active first."
CREATE INDEX conversations_owner_updated ON conversations (owner_id, updated_at DESC, id DESC);

CREATE TABLE messages (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id   BIGINT    NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    role              TEXT      NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
    content           TEXT      NOT NULL,
    status            TEXT      NOT NULL CHECK (status IN ('complete', 'partial', 'failed')),
    client_msg_id     TEXT,
    reply_to          BIGINT    REFERENCES messages (id) ON DELETE CASCADE,
    prompt_tokens     INTEGER,
    completion_tokens INTEGER,
    created_at        BIGINT    NOT NULL,
    updated_at        BIGINT    NOT NULL
);
-- Idempotent sends: one message per client id in a conversation (NULLs,
-- the bot's replies, are distinct).
CREATE UNIQUE INDEX messages_client_msg_id ON messages (conversation_id, client_msg_id);
-- One reply per user message.
CREATE UNIQUE INDEX messages_reply_to ON messages (reply_to);
-- History pages and the bot's context window: newest first by key.
CREATE INDEX messages_conversation_id ON messages (conversation_id, id DESC);
