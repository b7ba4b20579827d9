-- The search outbox: one row per change the full-text index must apply (a message
-- written, a document's new current version, later memories), inserted in the same
-- transaction as the row it describes. Every replica's index follows it.
--
-- Identity values are taken at insert but transactions commit in any order, so a
-- follower reading `id > last seen` could pass a row that commits later. Each row
-- therefore records its transaction id (`txid`); a follower reads in (txid, id) order
-- and only rows whose transaction is below its snapshot's xmin: every such
-- transaction has ended, so no row can later appear before a position already read.

CREATE TABLE search_outbox (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    txid       BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    kind       TEXT NOT NULL CHECK (kind IN ('message', 'document', 'memory')),
    object_id  TEXT NOT NULL,
    op         TEXT NOT NULL CHECK (op IN ('upsert', 'delete')),
    at         TIMESTAMPTZ NOT NULL
);

-- Followers read in position order; pruning finds old rows by time.
CREATE INDEX search_outbox_by_position ON search_outbox (txid, id);
CREATE INDEX search_outbox_by_at ON search_outbox (at);

CREATE FUNCTION search_outbox_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'search outbox rows are immutable';
END
$$;
-- Rows are never changed; only pruning deletes them (oldest first).
CREATE TRIGGER search_outbox_immutable BEFORE UPDATE ON search_outbox
    FOR EACH ROW EXECUTE FUNCTION search_outbox_immutable();

-- The last position pruning deleted through: an index whose watermark is below it
-- missed changes and is rebuilt from the tables.
CREATE TABLE search_outbox_pruned (
    singleton  BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    txid       BIGINT NOT NULL,
    id         BIGINT NOT NULL
);
INSERT INTO search_outbox_pruned (singleton, txid, id) VALUES (TRUE, 0, 0);
