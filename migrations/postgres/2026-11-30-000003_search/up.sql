-- Full-text search over one's own messages (GET /api/v1/search): words
-- lower-cased, no language stemming ('simple'), so every language is found
-- as written. The index is the expression the query uses.
CREATE INDEX messages_search ON messages USING GIN (to_tsvector('simple', content));
