-- Nothing changes on Postgres. SQLite 0019 drops `AUTOINCREMENT` (its `sqlite_sequence`
-- row rewritten by every insert) and indexes `reverses` only where it is set; Postgres
-- has no such sequence table and made that index partial in 0018. This file keeps the
-- two backends' migration numbers in step.
SELECT 1;
