-- Fewer pages written per posting. Under WAL a commit writes every page it changed as a
-- frame of its own (page size + a 24-byte header, two writes), so a posting's cost on
-- the embedded store is mostly how many pages it touches: a lone debit touched ~10.4
-- against the single page of a bare balance update, and its commit was ~65% of its time
-- (the lone-debit statements alone, `synchronous = NORMAL`: 69 of ~105 µs). Two of those pages guarded nothing:
--
--   * `AUTOINCREMENT` on both ledger tables: every insert also rewrote `sqlite_sequence`.
--     It only forbids reusing the rowid of a deleted last row, and ledger rows are never
--     deleted (the immutability triggers), so a plain `INTEGER PRIMARY KEY` gives the
--     same increasing `seq` and entry ids (the largest + 1, under the write lock).
--   * The unique constraint on `reverses` indexed every transaction's NULL too; most
--     reverse nothing. A partial unique index keeps the rule (at most one reversal of a
--     transaction) and skips them, as Postgres 0018 did.
--
-- A lone debit now writes ~8.3 pages (41.5 → 33 KiB of WAL) and its statements take
-- ~20% less time. SQLite cannot change a column's constraints in place, so both tables
-- are rebuilt with their rows, ids and `seq` kept: the old ones are renamed first (which
-- points the entries' foreign key at the renamed table, so nothing dangles while both
-- exist), the new ones filled in order, the old ones dropped, and then the indexes and
-- the immutability triggers of 0002 made again on the new tables.
ALTER TABLE ledger_entries RENAME TO ledger_entries_old;
ALTER TABLE ledger_transactions RENAME TO ledger_transactions_old;

CREATE TABLE ledger_transactions (
    seq                INTEGER PRIMARY KEY,
    id                 TEXT NOT NULL UNIQUE,
    tenant_id          TEXT NOT NULL,
    kind               TEXT NOT NULL CHECK (kind IN ('grant', 'purchase', 'purchase_reversal', 'debit', 'refund',
                                                     'reserve', 'settle', 'void', 'expire')),
    amount             INTEGER NOT NULL CHECK (amount > 0),
    memo               TEXT NOT NULL,
    idempotency_key    TEXT NOT NULL,
    -- SHA-256 of the request, so a reused key with another request is refused.
    fingerprint        TEXT NOT NULL,
    hold_id            TEXT,
    -- The transaction this one reverses (refunds); each is reversed at most once (the
    -- partial unique index below).
    reverses           TEXT REFERENCES ledger_transactions (id),
    -- The tenant's balance right after posting, returned again on replays.
    available_after    INTEGER NOT NULL,
    held_after         INTEGER NOT NULL,
    created_at         TEXT NOT NULL,
    UNIQUE (tenant_id, idempotency_key)
) STRICT;
INSERT INTO ledger_transactions (seq, id, tenant_id, kind, amount, memo, idempotency_key, fingerprint, hold_id,
                                 reverses, available_after, held_after, created_at)
SELECT seq, id, tenant_id, kind, amount, memo, idempotency_key, fingerprint, hold_id,
       reverses, available_after, held_after, created_at
  FROM ledger_transactions_old ORDER BY seq;

CREATE TABLE ledger_entries (
    id              INTEGER PRIMARY KEY,
    transaction_id  TEXT NOT NULL REFERENCES ledger_transactions (id),
    account         TEXT NOT NULL,
    amount          INTEGER NOT NULL CHECK (amount <> 0)
) STRICT;
INSERT INTO ledger_entries (id, transaction_id, account, amount)
SELECT id, transaction_id, account, amount FROM ledger_entries_old ORDER BY id;

DROP TABLE ledger_entries_old;
DROP TABLE ledger_transactions_old;

CREATE UNIQUE INDEX ledger_transactions_reverses ON ledger_transactions (reverses) WHERE reverses IS NOT NULL;
CREATE INDEX ledger_transactions_by_tenant ON ledger_transactions (tenant_id, seq);
CREATE INDEX ledger_entries_by_transaction ON ledger_entries (transaction_id);

CREATE TRIGGER ledger_entries_no_update BEFORE UPDATE ON ledger_entries
BEGIN SELECT RAISE(ABORT, 'ledger entries are immutable'); END;
CREATE TRIGGER ledger_entries_no_delete BEFORE DELETE ON ledger_entries
BEGIN SELECT RAISE(ABORT, 'ledger entries are immutable'); END;
CREATE TRIGGER ledger_transactions_no_update BEFORE UPDATE ON ledger_transactions
BEGIN SELECT RAISE(ABORT, 'ledger transactions are immutable'); END;
CREATE TRIGGER ledger_transactions_no_delete BEFORE DELETE ON ledger_transactions
BEGIN SELECT RAISE(ABORT, 'ledger transactions are immutable'); END;
