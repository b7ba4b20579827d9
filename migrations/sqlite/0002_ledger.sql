-- The credits ledger: append-only double entry. Amounts are integer credits.
-- Timestamps are RFC 3339 text in UTC with millisecond precision.

-- One row per posting. `seq` orders transactions for cursors.
CREATE TABLE ledger_transactions (
    seq                INTEGER PRIMARY KEY AUTOINCREMENT,
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
    -- The transaction this one reverses (refunds); each is reversed at most once.
    reverses           TEXT UNIQUE REFERENCES ledger_transactions (id),
    -- The tenant's balance right after posting, returned again on replays.
    available_after    INTEGER NOT NULL,
    held_after         INTEGER NOT NULL,
    created_at         TEXT NOT NULL,
    UNIQUE (tenant_id, idempotency_key)
) STRICT;

CREATE INDEX ledger_transactions_by_tenant ON ledger_transactions (tenant_id, seq);

-- Immutable legs: a positive amount adds to the account's balance.
CREATE TABLE ledger_entries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    transaction_id  TEXT NOT NULL REFERENCES ledger_transactions (id),
    account         TEXT NOT NULL,
    amount          INTEGER NOT NULL CHECK (amount <> 0)
) STRICT;

CREATE INDEX ledger_entries_by_transaction ON ledger_entries (transaction_id);
CREATE INDEX ledger_entries_by_account ON ledger_entries (account);

CREATE TRIGGER ledger_entries_no_update BEFORE UPDATE ON ledger_entries
BEGIN SELECT RAISE(ABORT, 'ledger entries are immutable'); END;
CREATE TRIGGER ledger_entries_no_delete BEFORE DELETE ON ledger_entries
BEGIN SELECT RAISE(ABORT, 'ledger entries are immutable'); END;
CREATE TRIGGER ledger_transactions_no_update BEFORE UPDATE ON ledger_transactions
BEGIN SELECT RAISE(ABORT, 'ledger transactions are immutable'); END;
CREATE TRIGGER ledger_transactions_no_delete BEFORE DELETE ON ledger_transactions
BEGIN SELECT RAISE(ABORT, 'ledger transactions are immutable'); END;

-- Cached balance per tenant account (the sum of its entries). Tenant accounts may never
-- be negative: the conditional update refuses first, this CHECK is the second line.
-- Platform accounts (unconstrained sources and sinks) have no row: their balances are
-- sums of `ledger_entries`, so postings of different tenants share no row to lock.
CREATE TABLE ledger_balances (
    account    TEXT PRIMARY KEY,
    class      TEXT NOT NULL CHECK (class IN ('wallet', 'held')),
    tenant_id  TEXT NOT NULL,
    balance    INTEGER NOT NULL CHECK (balance >= 0)
) STRICT;

CREATE TABLE ledger_holds (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    amount          INTEGER NOT NULL CHECK (amount > 0),
    expires_at      TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('open', 'settled', 'voided', 'expired')),
    settled_amount  INTEGER CHECK (settled_amount >= 0 AND settled_amount <= amount),
    created_at      TEXT NOT NULL,
    closed_at       TEXT
) STRICT;

CREATE INDEX ledger_holds_open_by_expiry ON ledger_holds (expires_at) WHERE state = 'open';
