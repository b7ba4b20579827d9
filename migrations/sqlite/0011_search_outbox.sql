-- The search outbox: one row per change the full-text index must apply (a message
-- written, a document's new current version, later memories), inserted in the same
-- transaction as the row it describes. Every replica's index follows it.
--
-- Writers are serialised (`BEGIN IMMEDIATE`), so ids commit in order; `txid` is always
-- 0 here and exists so that both backends read in the same (txid, id) order (Postgres
-- records the writer's transaction id there; see its migration).

CREATE TABLE search_outbox (
    -- AUTOINCREMENT: an id is never reused after pruning.
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    txid       INTEGER NOT NULL DEFAULT 0,
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    kind       TEXT NOT NULL CHECK (kind IN ('message', 'document', 'memory')),
    object_id  TEXT NOT NULL,
    op         TEXT NOT NULL CHECK (op IN ('upsert', 'delete')),
    at         TEXT NOT NULL
) STRICT;

-- Followers read in position order; pruning finds old rows by time.
CREATE INDEX search_outbox_by_position ON search_outbox (txid, id);
CREATE INDEX search_outbox_by_at ON search_outbox (at);

-- Rows are never changed; only pruning deletes them (oldest first).
CREATE TRIGGER search_outbox_no_update BEFORE UPDATE ON search_outbox
BEGIN SELECT RAISE(ABORT, 'search outbox rows are immutable'); END;

-- The last position pruning deleted through: an index whose watermark is below it
-- missed changes and is rebuilt from the tables.
CREATE TABLE search_outbox_pruned (
    singleton  INTEGER PRIMARY KEY CHECK (singleton = 1),
    txid       INTEGER NOT NULL,
    id         INTEGER NOT NULL
) STRICT;
INSERT INTO search_outbox_pruned (singleton, txid, id) VALUES (1, 0, 0);
