-- The credits ledger: append-only double entry. Amounts are integer credits.
-- Ledger transactions run with `SET LOCAL synchronous_commit = on`.

-- One row per posting. `seq` orders transactions for cursors.
CREATE TABLE ledger_transactions (
    seq                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                 TEXT NOT NULL UNIQUE,
    tenant_id          TEXT NOT NULL,
    kind               TEXT NOT NULL CHECK (kind IN ('grant', 'purchase', 'purchase_reversal', 'debit', 'refund',
                                                     'reserve', 'settle', 'void', 'expire')),
    amount             BIGINT NOT NULL CHECK (amount > 0),
    memo               TEXT NOT NULL,
    idempotency_key    TEXT NOT NULL,
    -- SHA-256 of the request, so a reused key with another request is refused.
    fingerprint        TEXT NOT NULL,
    hold_id            TEXT,
    -- The transaction this one reverses (refunds); each is reversed at most once.
    reverses           TEXT UNIQUE REFERENCES ledger_transactions (id),
    -- The tenant's balance right after posting, returned again on replays.
    available_after    BIGINT NOT NULL,
    held_after         BIGINT NOT NULL,
    created_at         TIMESTAMPTZ NOT NULL,
    UNIQUE (tenant_id, idempotency_key)
);

CREATE INDEX ledger_transactions_by_tenant ON ledger_transactions (tenant_id, seq);

-- Immutable legs: a positive amount adds to the account's balance.
CREATE TABLE ledger_entries (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id  TEXT NOT NULL REFERENCES ledger_transactions (id),
    account         TEXT NOT NULL,
    amount          BIGINT NOT NULL CHECK (amount <> 0)
);

CREATE INDEX ledger_entries_by_transaction ON ledger_entries (transaction_id);
CREATE INDEX ledger_entries_by_account ON ledger_entries (account);

CREATE FUNCTION ledger_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger rows are immutable';
END
$$;
CREATE TRIGGER ledger_entries_immutable BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_immutable();
CREATE TRIGGER ledger_transactions_immutable BEFORE UPDATE OR DELETE ON ledger_transactions
    FOR EACH ROW EXECUTE FUNCTION ledger_immutable();

-- Cached balance per tenant account (the sum of its entries). Tenant accounts may never
-- be negative: the conditional update refuses first, this CHECK is the second line.
-- Platform accounts (unconstrained sources and sinks) have no row: their balances are
-- sums of `ledger_entries`, so postings of different tenants share no row to lock.
CREATE TABLE ledger_balances (
    account    TEXT PRIMARY KEY,
    class      TEXT NOT NULL CHECK (class IN ('wallet', 'held')),
    tenant_id  TEXT NOT NULL,
    balance    BIGINT NOT NULL CHECK (balance >= 0)
);

CREATE TABLE ledger_holds (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    amount          BIGINT NOT NULL CHECK (amount > 0),
    expires_at      TIMESTAMPTZ NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('open', 'settled', 'voided', 'expired')),
    settled_amount  BIGINT CHECK (settled_amount >= 0 AND settled_amount <= amount),
    created_at      TIMESTAMPTZ NOT NULL,
    closed_at       TIMESTAMPTZ
);

CREATE INDEX ledger_holds_open_by_expiry ON ledger_holds (expires_at) WHERE state = 'open';
