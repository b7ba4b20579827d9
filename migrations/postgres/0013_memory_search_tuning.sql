-- Memory search, tuned on 100,000 × 384 vectors (benches/memory.rs, see
-- storage/memories.rs):
--
-- 1. The HNSW indexes of 0010 (vector, m = 16, ef_construction = 64) found about 0.83 of
--    a query's true top 10 at ef_search 40, and no more than 0.95 at any ef_search: the
--    graph was too sparse. They are rebuilt with m = 32 and ef_construction = 128, on the
--    vectors cast to half precision (`halfvec`): half the size (130 MB instead of 195 MB
--    at 100,000 × 384, next to a 128 MB shared_buffers), so a search reads fewer pages.
--    Recall at ef_search 40 is then about 0.97. A search orders by the same expression
--    (`embedding::halfvec(D) <#> $q::halfvec(D)`) and reports, and re-sorts by, the
--    full-precision inner product of the few rows it returns.
-- 2. How many vectors each tenant holds of each embedder, kept by statement triggers:
--    the choice between the index and an exact scan used to count the tenant's rows on
--    every search (up to one in ten of the table), costing more than the search itself.
--    Rows are never negative; a key whose count falls to 0 is removed.

DROP INDEX memories_hnsw_384;
DROP INDEX memories_hnsw_768;
DROP INDEX memories_hnsw_1024;
DROP INDEX memories_hnsw_1536;

CREATE INDEX memories_hnsw_384 ON memories USING hnsw ((embedding::halfvec(384)) halfvec_ip_ops)
    WITH (m = 32, ef_construction = 128) WHERE dims = 384;
CREATE INDEX memories_hnsw_768 ON memories USING hnsw ((embedding::halfvec(768)) halfvec_ip_ops)
    WITH (m = 32, ef_construction = 128) WHERE dims = 768;
CREATE INDEX memories_hnsw_1024 ON memories USING hnsw ((embedding::halfvec(1024)) halfvec_ip_ops)
    WITH (m = 32, ef_construction = 128) WHERE dims = 1024;
CREATE INDEX memories_hnsw_1536 ON memories USING hnsw ((embedding::halfvec(1536)) halfvec_ip_ops)
    WITH (m = 32, ef_construction = 128) WHERE dims = 1536;

CREATE TABLE memory_counts (
    tenant_id  TEXT NOT NULL,
    provider   TEXT NOT NULL,
    model      TEXT NOT NULL,
    dims       INTEGER NOT NULL,
    n          BIGINT NOT NULL CHECK (n >= 0),
    PRIMARY KEY (tenant_id, provider, model, dims)
);

-- The function migration 0012 keeps `passage_counts` with.
CREATE TRIGGER memory_counts_insert AFTER INSERT ON memories
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION vector_counts_follow('memory_counts');
CREATE TRIGGER memory_counts_delete AFTER DELETE ON memories
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION vector_counts_follow('memory_counts');
CREATE TRIGGER memory_counts_update AFTER UPDATE ON memories
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION vector_counts_follow('memory_counts');

-- The memories already stored (writers wait until this migration commits).
LOCK TABLE memories IN SHARE MODE;
INSERT INTO memory_counts (tenant_id, provider, model, dims, n)
SELECT tenant_id, provider, model, dims, count(*) FROM memories GROUP BY 1, 2, 3, 4;
