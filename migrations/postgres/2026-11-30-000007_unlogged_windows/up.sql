-- The fleet's minute counts are not worth a WAL record and a disk flush per
-- message: an unlogged table writes none, so the statement that counts a
-- message commits without waiting for the disk. What it gives up is fine
-- for one-minute counters: after a crash of PostgreSQL the table is
-- emptied, and a promoted standby starts it empty (the counts start over
-- for at most a minute).
ALTER TABLE rate_windows SET UNLOGGED;
