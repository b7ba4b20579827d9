-- SQLite's in-process vector caches (storage/memories.rs, storage/passages.rs) refresh
-- by delta instead of reading a tenant's whole set again after any write.
--
-- A tenant's epoch (`memory_epochs`, `passage_epochs`, 0010 and 0012) is its change
-- counter: every write of a row that a search sees moves it by one, and the row's new
-- `seq` is the epoch that write moved it to, so `seq` increases per tenant and a
-- row's `seq` is the last change to it (rowids are reused after deletes, so they say
-- nothing). A deletion leaves a tombstone (`memory_deletions`, `passage_deletions`)
-- with the epoch it moved to. A cache loaded at epoch E reads the tombstones and the
-- rows with a `seq` above E (one read transaction), drops those keys and adds the rows
-- back. Tombstones within the last 1,024 changes of their tenant are kept, older ones
-- pruned by the delete trigger: a cache further behind than that reads the whole set
-- (the code's `DELTA_MAX` is this window), so it never needs a pruned tombstone.
-- Existing rows start at `seq` 0 (each cache starts with a full load).

ALTER TABLE memories ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE passages ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
CREATE INDEX memories_by_tenant_seq ON memories (tenant_id, seq);
CREATE INDEX passages_by_tenant_seq ON passages (tenant_id, seq);

CREATE TABLE memory_deletions (
    tenant_id  TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    id         TEXT NOT NULL,
    PRIMARY KEY (tenant_id, seq)
) STRICT, WITHOUT ROWID;

CREATE TABLE passage_deletions (
    tenant_id  TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    object_id  TEXT NOT NULL,
    chunk      INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, seq)
) STRICT, WITHOUT ROWID;

-- The epoch triggers of 0010 and 0012 are replaced by ones that also stamp `seq` and
-- write tombstones (in one trigger each, so the order of the steps is fixed). The
-- stamping UPDATE names only `seq`, which no update trigger follows.
DROP TRIGGER memories_epoch_insert;
DROP TRIGGER memories_epoch_update;
DROP TRIGGER memories_epoch_delete;
DROP TRIGGER passages_epoch_insert;
DROP TRIGGER passages_epoch_update;
DROP TRIGGER passages_epoch_delete;

CREATE TRIGGER memories_epoch_insert AFTER INSERT ON memories
BEGIN
    INSERT INTO memory_epochs (tenant_id, epoch) VALUES (NEW.tenant_id, 1)
        ON CONFLICT (tenant_id) DO UPDATE SET epoch = epoch + 1;
    UPDATE memories SET seq = (SELECT epoch FROM memory_epochs WHERE tenant_id = NEW.tenant_id)
        WHERE rowid = NEW.rowid;
END;

CREATE TRIGGER memories_epoch_update
AFTER UPDATE OF tenant_id, scope, persona, session_id, text, tags, created_at, provider, model, dims, embedding
ON memories
BEGIN
    -- A row moved to another tenant is a deletion for the old one.
    INSERT INTO memory_epochs (tenant_id, epoch) SELECT OLD.tenant_id, 1 WHERE OLD.tenant_id <> NEW.tenant_id
        ON CONFLICT (tenant_id) DO UPDATE SET epoch = epoch + 1;
    INSERT INTO memory_deletions (tenant_id, seq, id)
        SELECT OLD.tenant_id, epoch, OLD.id FROM memory_epochs
        WHERE tenant_id = OLD.tenant_id AND OLD.tenant_id <> NEW.tenant_id;
    INSERT INTO memory_epochs (tenant_id, epoch) VALUES (NEW.tenant_id, 1)
        ON CONFLICT (tenant_id) DO UPDATE SET epoch = epoch + 1;
    UPDATE memories SET seq = (SELECT epoch FROM memory_epochs WHERE tenant_id = NEW.tenant_id)
        WHERE rowid = NEW.rowid;
END;

CREATE TRIGGER memories_epoch_delete AFTER DELETE ON memories
BEGIN
    INSERT INTO memory_epochs (tenant_id, epoch) VALUES (OLD.tenant_id, 1)
        ON CONFLICT (tenant_id) DO UPDATE SET epoch = epoch + 1;
    INSERT INTO memory_deletions (tenant_id, seq, id)
        SELECT OLD.tenant_id, epoch, OLD.id FROM memory_epochs WHERE tenant_id = OLD.tenant_id;
    DELETE FROM memory_deletions WHERE tenant_id = OLD.tenant_id
        AND seq <= (SELECT epoch FROM memory_epochs WHERE tenant_id = OLD.tenant_id) - 1024;
END;

CREATE TRIGGER passages_epoch_insert AFTER INSERT ON passages
BEGIN
    INSERT INTO passage_epochs (tenant_id, epoch) VALUES (NEW.tenant_id, 1)
        ON CONFLICT (tenant_id) DO UPDATE SET epoch = epoch + 1;
    UPDATE passages SET seq = (SELECT epoch FROM passage_epochs WHERE tenant_id = NEW.tenant_id)
        WHERE rowid = NEW.rowid;
END;

CREATE TRIGGER passages_epoch_update
AFTER UPDATE OF tenant_id, kind, object_id, chunk, session_id, author, at, text, provider, model, dims, embedding
ON passages
BEGIN
    -- The old key (another tenant's, or another kind, object or chunk) is deleted.
    INSERT INTO passage_epochs (tenant_id, epoch) VALUES (OLD.tenant_id, 1)
        ON CONFLICT (tenant_id) DO UPDATE SET epoch = epoch + 1;
    INSERT INTO passage_deletions (tenant_id, seq, kind, object_id, chunk)
        SELECT OLD.tenant_id, epoch, OLD.kind, OLD.object_id, OLD.chunk FROM passage_epochs
        WHERE tenant_id = OLD.tenant_id;
    INSERT INTO passage_epochs (tenant_id, epoch) VALUES (NEW.tenant_id, 1)
        ON CONFLICT (tenant_id) DO UPDATE SET epoch = epoch + 1;
    UPDATE passages SET seq = (SELECT epoch FROM passage_epochs WHERE tenant_id = NEW.tenant_id)
        WHERE rowid = NEW.rowid;
END;

CREATE TRIGGER passages_epoch_delete AFTER DELETE ON passages
BEGIN
    INSERT INTO passage_epochs (tenant_id, epoch) VALUES (OLD.tenant_id, 1)
        ON CONFLICT (tenant_id) DO UPDATE SET epoch = epoch + 1;
    INSERT INTO passage_deletions (tenant_id, seq, kind, object_id, chunk)
        SELECT OLD.tenant_id, epoch, OLD.kind, OLD.object_id, OLD.chunk FROM passage_epochs
        WHERE tenant_id = OLD.tenant_id;
    DELETE FROM passage_deletions WHERE tenant_id = OLD.tenant_id
        AND seq <= (SELECT epoch FROM passage_epochs WHERE tenant_id = OLD.tenant_id) - 1024;
END;
