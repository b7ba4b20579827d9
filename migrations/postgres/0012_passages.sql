-- Passages: the pieces of messages and documents (their current version) that carry a
-- vector, so search finds them by meaning (see maestro_core::passage). A message is
-- one passage or a few; a document's current version is cut into overlapping passages,
-- its title in front of the first. `provider`, `model` and `dims` name the embedder
-- that made the vector: vectors of different embedders are never compared, and a
-- change of embedder re-embeds every passage in the background.
--
-- Rows follow the search outbox (the feed the full-text index follows), written by the
-- passage follower (host/src/passages.rs). Vectors live in the shared database, so
-- there is one follower position for every replica (`passage_follower`): a batch's
-- passages and the position's advance are written in one transaction that first
-- moves the position from the value the follower read (compare-and-set), so two
-- replicas following at once never both write a batch, nor move the position back.
--
-- Vectors are unit length; the HNSW indexes are per dimension on the vectors cast to
-- half precision, partial on `dims = D`, with m = 32 and ef_construction = 128, exactly
-- like memories' after migration 0013 (which says why; storage/memories.rs for how a
-- search uses them). A tenant's rows go with the tenant,
-- a session's with the session; a deleted message or document loses its rows when the
-- follower meets its outbox row (the object is gone), or at the next reconcile.

CREATE TABLE passages (
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kind        TEXT NOT NULL CHECK (kind IN ('message', 'document')),
    object_id   TEXT NOT NULL,
    chunk       INTEGER NOT NULL CHECK (chunk >= 0),
    session_id  TEXT,
    author      TEXT,
    at          TIMESTAMPTZ NOT NULL,
    text        TEXT NOT NULL,
    provider    TEXT NOT NULL,
    model       TEXT NOT NULL,
    dims        INTEGER NOT NULL CHECK (dims > 0),
    embedding   vector NOT NULL CHECK (vector_dims(embedding) = dims),
    PRIMARY KEY (kind, object_id, chunk),
    FOREIGN KEY (session_id, tenant_id) REFERENCES sessions (id, tenant_id) ON DELETE CASCADE
);

-- The exact scan of a small tenant; filters by time.
CREATE INDEX passages_by_tenant ON passages (tenant_id, at);
-- A session's rows (the cascade from sessions).
CREATE INDEX passages_by_session ON passages (session_id);
-- Re-embedding: rows of another embedder than the configured one.
CREATE INDEX passages_by_embedder ON passages (provider, model, dims);

CREATE INDEX passages_hnsw_384 ON passages USING hnsw ((embedding::halfvec(384)) halfvec_ip_ops)
    WITH (m = 32, ef_construction = 128) WHERE dims = 384;
CREATE INDEX passages_hnsw_768 ON passages USING hnsw ((embedding::halfvec(768)) halfvec_ip_ops)
    WITH (m = 32, ef_construction = 128) WHERE dims = 768;
CREATE INDEX passages_hnsw_1024 ON passages USING hnsw ((embedding::halfvec(1024)) halfvec_ip_ops)
    WITH (m = 32, ef_construction = 128) WHERE dims = 1024;
CREATE INDEX passages_hnsw_1536 ON passages USING hnsw ((embedding::halfvec(1536)) halfvec_ip_ops)
    WITH (m = 32, ef_construction = 128) WHERE dims = 1536;

-- The outbox position the passages follow through (one row, shared by every replica).
CREATE TABLE passage_follower (
    singleton   BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    txid        BIGINT NOT NULL,
    id          BIGINT NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);
INSERT INTO passage_follower (singleton, txid, id, updated_at) VALUES (TRUE, 0, 0, now());

-- How many passages each tenant holds of each embedder, kept by statement triggers
-- (migration 0013 keeps `memory_counts` with the same function): choosing between the
-- index and an exact scan is one key lookup instead of counting the tenant's rows.
CREATE TABLE passage_counts (
    tenant_id  TEXT NOT NULL,
    provider   TEXT NOT NULL,
    model      TEXT NOT NULL,
    dims       INTEGER NOT NULL,
    n          BIGINT NOT NULL CHECK (n >= 0),
    PRIMARY KEY (tenant_id, provider, model, dims)
);

-- Adds each statement's net change per (tenant, embedder) to the counts table named by
-- the trigger's argument; keys in order, so that two transactions never wait on each
-- other's rows in opposite orders. Rows are never negative; a key whose count falls to
-- 0 is removed. (The transition tables are visible to the dynamic statements.)
CREATE FUNCTION vector_counts_follow() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    counts TEXT := TG_ARGV[0];
BEGIN
    IF TG_OP = 'INSERT' THEN
        EXECUTE format(
            'INSERT INTO %1$I AS c (tenant_id, provider, model, dims, n)
             SELECT tenant_id, provider, model, dims, count(*) FROM new_rows
             GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
             ON CONFLICT (tenant_id, provider, model, dims) DO UPDATE SET n = c.n + EXCLUDED.n', counts);
    ELSIF TG_OP = 'DELETE' THEN
        EXECUTE format(
            'UPDATE %1$I AS c SET n = c.n - gone.n
             FROM (SELECT tenant_id, provider, model, dims, count(*) AS n FROM old_rows
                   GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4) AS gone
             WHERE (c.tenant_id, c.provider, c.model, c.dims) = (gone.tenant_id, gone.provider, gone.model, gone.dims)',
            counts);
        EXECUTE format('DELETE FROM %1$I WHERE n = 0 AND tenant_id IN (SELECT tenant_id FROM old_rows)', counts);
    ELSE
        -- Gains are upserted, losses subtracted (a CHECK applies to the row an INSERT
        -- proposes, before it meets the conflict).
        EXECUTE format(
            'INSERT INTO %1$I AS c (tenant_id, provider, model, dims, n)
             SELECT tenant_id, provider, model, dims, sum(d) FROM (
                 SELECT tenant_id, provider, model, dims, 1 AS d FROM new_rows
                 UNION ALL
                 SELECT tenant_id, provider, model, dims, -1 AS d FROM old_rows
             ) AS moved
             GROUP BY 1, 2, 3, 4 HAVING sum(d) > 0 ORDER BY 1, 2, 3, 4
             ON CONFLICT (tenant_id, provider, model, dims) DO UPDATE SET n = c.n + EXCLUDED.n', counts);
        EXECUTE format(
            'UPDATE %1$I AS c SET n = c.n + lost.n
             FROM (SELECT tenant_id, provider, model, dims, sum(d) AS n FROM (
                       SELECT tenant_id, provider, model, dims, 1 AS d FROM new_rows
                       UNION ALL
                       SELECT tenant_id, provider, model, dims, -1 AS d FROM old_rows
                   ) AS moved
                   GROUP BY 1, 2, 3, 4 HAVING sum(d) < 0 ORDER BY 1, 2, 3, 4) AS lost
             WHERE (c.tenant_id, c.provider, c.model, c.dims) = (lost.tenant_id, lost.provider, lost.model, lost.dims)',
            counts);
        EXECUTE format('DELETE FROM %1$I WHERE n = 0 AND tenant_id IN (SELECT tenant_id FROM old_rows)', counts);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER passage_counts_insert AFTER INSERT ON passages
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION vector_counts_follow('passage_counts');
CREATE TRIGGER passage_counts_delete AFTER DELETE ON passages
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION vector_counts_follow('passage_counts');
CREATE TRIGGER passage_counts_update AFTER UPDATE ON passages
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION vector_counts_follow('passage_counts');
