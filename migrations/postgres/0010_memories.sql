-- Memories: short texts a tenant's people and agents want recalled, each with the
-- embedding of its text (pgvector). Scoped to the tenant, a persona (its qualified
-- name) or a session. `provider`, `model` and `dims` name the embedder that made the
-- vector: vectors of different embedders are never compared, and a change of embedder
-- re-embeds in the background.
--
-- Vectors are unit length, so the inner product is the cosine similarity (`<#>` is the
-- negative inner product: smaller is closer). The column has no fixed dimension, so
-- the HNSW indexes are built per dimension on an expression cast to it, each a partial
-- index over the rows of that dimension; a query uses the very same expression
-- (`embedding::vector(384) <#> $q`) and the same `dims = 384` predicate. Dimensions
-- without an index are searched exactly. Tenants are filtered with
-- `hnsw.iterative_scan` set per transaction (see storage/memories.rs); small tenants are
-- scanned exactly through memories_by_tenant.

CREATE TABLE memories (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    scope         TEXT NOT NULL CHECK (scope IN ('tenant', 'persona', 'session')),
    persona       TEXT,
    session_id    TEXT,
    text          TEXT NOT NULL CHECK (length(text) BETWEEN 1 AND 4096),
    tags          TEXT[] NOT NULL DEFAULT '{}',
    pinned        BOOLEAN NOT NULL DEFAULT FALSE,
    source_run    TEXT,
    source_step   BIGINT,
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL,
    last_used_at  TIMESTAMPTZ,
    provider      TEXT NOT NULL,
    model         TEXT NOT NULL,
    dims          INTEGER NOT NULL CHECK (dims > 0),
    embedding     vector NOT NULL CHECK (vector_dims(embedding) = dims),
    CHECK ((scope = 'persona') = (persona IS NOT NULL)),
    CHECK ((scope = 'session') = (session_id IS NOT NULL)),
    CHECK ((source_run IS NULL) = (source_step IS NULL)),
    FOREIGN KEY (session_id, tenant_id) REFERENCES sessions (id, tenant_id) ON DELETE CASCADE
);

-- A tenant's memories newest first (listing, cursor); the exact scan of a small tenant.
CREATE INDEX memories_by_tenant ON memories (tenant_id, created_at, id);
-- Re-embedding: rows of another embedder than the configured one.
CREATE INDEX memories_by_embedder ON memories (provider, model, dims);

-- Approximate nearest neighbours per common dimension (all-MiniLM-L6-v2: 384; BERT
-- base, nomic: 768; bge-large, e5-large: 1024; text-embedding-3-small/ada-002: 1536).
CREATE INDEX memories_hnsw_384 ON memories USING hnsw ((embedding::vector(384)) vector_ip_ops) WHERE dims = 384;
CREATE INDEX memories_hnsw_768 ON memories USING hnsw ((embedding::vector(768)) vector_ip_ops) WHERE dims = 768;
CREATE INDEX memories_hnsw_1024 ON memories USING hnsw ((embedding::vector(1024)) vector_ip_ops) WHERE dims = 1024;
CREATE INDEX memories_hnsw_1536 ON memories USING hnsw ((embedding::vector(1536)) vector_ip_ops) WHERE dims = 1536;
