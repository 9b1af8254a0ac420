-- Full-text search over one's own messages (GET /api/v1/search): an FTS5
-- index of message text (unicode61: case and accents folded), kept by
-- triggers and holding no copy of the text (content='messages').
CREATE VIRTUAL TABLE messages_search USING fts5(content, content='messages', content_rowid='id');
INSERT INTO messages_search(messages_search) VALUES ('rebuild');
CREATE TRIGGER messages_search_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_search(rowid, content) VALUES (new.id, new.content);
END;
CREATE TRIGGER messages_search_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_search(messages_search, rowid, content) VALUES ('delete', old.id, old.content);
END;
CREATE TRIGGER messages_search_update AFTER UPDATE OF content ON messages BEGIN
    INSERT INTO messages_search(messages_search, rowid, content) VALUES ('delete', old.id, old.content);
    INSERT INTO messages_search(rowid, content) VALUES (new.id, new.content);
END;
