-- Nothing changes on SQLite: memories are searched by an exact in-process scan of f32
-- vectors (storage/memories.rs). Postgres 0013 rebuilds its HNSW indexes on
-- half-precision vectors with a denser graph and counts each tenant's vectors; this
-- file keeps the two backends' migration numbers in step.
SELECT 1;
