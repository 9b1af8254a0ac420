-- One account per name whatever its case: "alice" and "Alice" are the same
-- person to everyone reading a chat. Login looks names up the same way.
-- (Fails if two accounts already differ only in case: rename one first.)
CREATE UNIQUE INDEX users_username_lower ON users (lower(username));
