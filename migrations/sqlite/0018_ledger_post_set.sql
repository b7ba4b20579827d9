-- Nothing changes on SQLite: Postgres 0018 adds `ledger_post_set` (the set-based batch
-- of simple postings) and drops an unused index; this file keeps the two backends'
-- migration numbers in step.
SELECT 1;
