-- PostgreSQL only (its rate windows are unlogged); SQLite has one host and
-- never writes this table. Kept so both directories list the same versions.
SELECT 1;
