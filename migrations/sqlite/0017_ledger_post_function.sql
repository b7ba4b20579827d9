-- Nothing changes on SQLite: it has no stored functions, and a posting's statements run
-- in process (storage/ledger.rs). Postgres 0017 creates `ledger_post`, which applies a
-- batch of postings in one statement; this file keeps the two backends' migration
-- numbers in step.
SELECT 1;
