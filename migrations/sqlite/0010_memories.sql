-- Memories: short texts a tenant's people and agents want recalled, each with the
-- embedding of its text. Scoped to the tenant, a persona (its qualified name) or a
-- session. `provider`, `model` and `dims` name the embedder that made the vector:
-- vectors of different embedders are never compared, and a change of embedder
-- re-embeds in the background.
--
-- The vector is a BLOB of `dims` f32 little-endian numbers, unit length; search is an
-- exact scan in process over the tenant's rows of the query's embedder (through
-- memories_by_tenant). Tags are a JSON array of strings.

CREATE TABLE memories (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    scope         TEXT NOT NULL CHECK (scope IN ('tenant', 'persona', 'session')),
    persona       TEXT,
    session_id    TEXT,
    text          TEXT NOT NULL CHECK (length(text) BETWEEN 1 AND 4096),
    tags          TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(tags)),
    pinned        INTEGER NOT NULL DEFAULT 0 CHECK (pinned IN (0, 1)),
    source_run    TEXT,
    source_step   INTEGER,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    last_used_at  TEXT,
    provider      TEXT NOT NULL,
    model         TEXT NOT NULL,
    dims          INTEGER NOT NULL CHECK (dims > 0),
    embedding     BLOB NOT NULL CHECK (length(embedding) = 4 * dims),
    CHECK ((scope = 'persona') = (persona IS NOT NULL)),
    CHECK ((scope = 'session') = (session_id IS NOT NULL)),
    CHECK ((source_run IS NULL) = (source_step IS NULL)),
    FOREIGN KEY (session_id, tenant_id) REFERENCES sessions (id, tenant_id) ON DELETE CASCADE
) STRICT;

-- A tenant's memories newest first (listing, cursor); the exact scan.
CREATE INDEX memories_by_tenant ON memories (tenant_id, created_at, id);
-- Re-embedding: rows of another embedder than the configured one.
CREATE INDEX memories_by_embedder ON memories (provider, model, dims);

-- A tenant's memory epoch: moved by every write that changes what a search sees (not
-- by `last_used_at`), so the in-process vector cache of a tenant is reused while the
-- epoch it was loaded at is still current, and reloaded after any write by any
-- connection.
CREATE TABLE memory_epochs (
    tenant_id  TEXT PRIMARY KEY,
    epoch      INTEGER NOT NULL
) STRICT;

CREATE TRIGGER memories_epoch_insert AFTER INSERT ON memories
BEGIN
    INSERT INTO memory_epochs (tenant_id, epoch) VALUES (NEW.tenant_id, 1)
        ON CONFLICT (tenant_id) DO UPDATE SET epoch = epoch + 1;
END;

CREATE TRIGGER memories_epoch_update
AFTER UPDATE OF tenant_id, scope, persona, session_id, text, tags, created_at, provider, model, dims, embedding
ON memories
BEGIN
    INSERT INTO memory_epochs (tenant_id, epoch) VALUES (NEW.tenant_id, 1)
        ON CONFLICT (tenant_id) DO UPDATE SET epoch = epoch + 1;
END;

CREATE TRIGGER memories_epoch_delete AFTER DELETE ON memories
BEGIN
    INSERT INTO memory_epochs (tenant_id, epoch) VALUES (OLD.tenant_id, 1)
        ON CONFLICT (tenant_id) DO UPDATE SET epoch = epoch + 1;
END;
