-- Passages: the pieces of messages and documents (their current version) that carry a
-- vector, so search finds them by meaning (see maestro_core::passage). A message is
-- one passage or a few; a document's current version is cut into overlapping passages,
-- its title in front of the first. `provider`, `model` and `dims` name the embedder
-- that made the vector: vectors of different embedders are never compared, and a
-- change of embedder re-embeds every passage in the background.
--
-- Rows follow the search outbox (the feed the full-text index follows), written by the
-- passage follower (host/src/passages.rs). There is one follower position in the
-- database (`passage_follower`): a batch's passages and the position's advance are
-- written in one transaction that first moves the position from the value the follower
-- read (compare-and-set), so two followers never both write a batch, nor move the
-- position back.
--
-- The vector is a BLOB of `dims` f32 little-endian numbers, unit length; search is an
-- exact scan in process over a tenant's rows of the query's embedder, cached while the
-- tenant's `passage_epochs` row is unchanged (as memories do). A tenant's rows go with
-- the tenant, a session's with the session; a deleted message or document loses its
-- rows when the follower meets its outbox row, or at the next reconcile.

CREATE TABLE passages (
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kind        TEXT NOT NULL CHECK (kind IN ('message', 'document')),
    object_id   TEXT NOT NULL,
    chunk       INTEGER NOT NULL CHECK (chunk >= 0),
    session_id  TEXT,
    author      TEXT,
    at          TEXT NOT NULL,
    text        TEXT NOT NULL,
    provider    TEXT NOT NULL,
    model       TEXT NOT NULL,
    dims        INTEGER NOT NULL CHECK (dims > 0),
    embedding   BLOB NOT NULL CHECK (length(embedding) = 4 * dims),
    PRIMARY KEY (kind, object_id, chunk),
    FOREIGN KEY (session_id, tenant_id) REFERENCES sessions (id, tenant_id) ON DELETE CASCADE
) STRICT;

-- The exact scan reads a tenant's rows; filters by time.
CREATE INDEX passages_by_tenant ON passages (tenant_id, at);
-- A session's rows (the cascade from sessions).
CREATE INDEX passages_by_session ON passages (session_id);
-- Re-embedding: rows of another embedder than the configured one.
CREATE INDEX passages_by_embedder ON passages (provider, model, dims);

-- A tenant's passage epoch: moved by every write of its passages, so the in-process
-- vector cache of a tenant is reused while the epoch it was loaded at is current.
CREATE TABLE passage_epochs (
    tenant_id  TEXT PRIMARY KEY,
    epoch      INTEGER NOT NULL
) STRICT;

CREATE TRIGGER passages_epoch_insert AFTER INSERT ON passages
BEGIN
    INSERT INTO passage_epochs (tenant_id, epoch) VALUES (NEW.tenant_id, 1)
        ON CONFLICT (tenant_id) DO UPDATE SET epoch = epoch + 1;
END;

CREATE TRIGGER passages_epoch_update AFTER UPDATE ON passages
BEGIN
    INSERT INTO passage_epochs (tenant_id, epoch) VALUES (NEW.tenant_id, 1)
        ON CONFLICT (tenant_id) DO UPDATE SET epoch = epoch + 1;
END;

CREATE TRIGGER passages_epoch_delete AFTER DELETE ON passages
BEGIN
    INSERT INTO passage_epochs (tenant_id, epoch) VALUES (OLD.tenant_id, 1)
        ON CONFLICT (tenant_id) DO UPDATE SET epoch = epoch + 1;
END;

-- The outbox position the passages follow through (one row).
CREATE TABLE passage_follower (
    singleton   INTEGER PRIMARY KEY CHECK (singleton = 1),
    txid        INTEGER NOT NULL,
    id          INTEGER NOT NULL,
    updated_at  TEXT NOT NULL
) STRICT;
INSERT INTO passage_follower (singleton, txid, id, updated_at)
    VALUES (1, 0, 0, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
