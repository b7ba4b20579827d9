-- Nothing changes on Postgres: it searches vectors in the database (pgvector). SQLite
-- 0014 gives its in-process vector caches a per-tenant change sequence and deletion
-- tombstones so that they refresh by delta; this file keeps the two backends'
-- migration numbers in step.
SELECT 1;
