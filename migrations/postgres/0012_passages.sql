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
-- Vectors are unit length; the HNSW indexes are per dimension on an expression cast to
-- it, partial on `dims = D`, exactly like memories' (migration 0010, and
-- storage/memories.rs for how a search uses them). A tenant's rows go with the tenant,
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

CREATE INDEX passages_hnsw_384 ON passages USING hnsw ((embedding::vector(384)) vector_ip_ops) WHERE dims = 384;
CREATE INDEX passages_hnsw_768 ON passages USING hnsw ((embedding::vector(768)) vector_ip_ops) WHERE dims = 768;
CREATE INDEX passages_hnsw_1024 ON passages USING hnsw ((embedding::vector(1024)) vector_ip_ops) WHERE dims = 1024;
CREATE INDEX passages_hnsw_1536 ON passages USING hnsw ((embedding::vector(1536)) vector_ip_ops) WHERE dims = 1536;

-- The outbox position the passages follow through (one row, shared by every replica).
CREATE TABLE passage_follower (
    singleton   BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    txid        BIGINT NOT NULL,
    id          BIGINT NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);
INSERT INTO passage_follower (singleton, txid, id, updated_at) VALUES (TRUE, 0, 0, now());
