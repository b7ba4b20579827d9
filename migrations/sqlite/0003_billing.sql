-- Stripe top-ups: the tenant <-> customer mapping, checkout sessions Maestro created,
-- charges' refund state, and webhook events already processed. Amounts are integers in
-- the currency's smallest unit; credits are integers.

CREATE TABLE stripe_customers (
    tenant_id    TEXT PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    customer_id  TEXT NOT NULL UNIQUE,
    created_at   TEXT NOT NULL
) STRICT;

CREATE TABLE stripe_checkouts (
    id                TEXT PRIMARY KEY,
    tenant_id         TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    pack              TEXT NOT NULL,
    credits           INTEGER NOT NULL CHECK (credits > 0),
    amount            INTEGER NOT NULL CHECK (amount > 0),
    currency          TEXT NOT NULL,
    paid              INTEGER NOT NULL DEFAULT 0 CHECK (paid IN (0, 1)),
    payment_intent    TEXT UNIQUE,
    -- Credits taken back for refunds (claimed step by step), and the value before the
    -- latest step, so the latest reversal can be re-posted after a crash.
    reversed_credits  INTEGER NOT NULL DEFAULT 0 CHECK (reversed_credits BETWEEN 0 AND credits),
    reversed_from     INTEGER NOT NULL DEFAULT 0 CHECK (reversed_from BETWEEN 0 AND reversed_credits),
    created_at        TEXT NOT NULL
) STRICT;

CREATE INDEX stripe_checkouts_by_tenant ON stripe_checkouts (tenant_id, created_at);

-- One row per refunded charge; amount_refunded only grows (events are cumulative and
-- may arrive before the completion of the session they refund).
CREATE TABLE stripe_refunds (
    payment_intent   TEXT PRIMARY KEY,
    charge_id        TEXT NOT NULL,
    customer_id      TEXT,
    amount           INTEGER NOT NULL,
    amount_refunded  INTEGER NOT NULL,
    updated_at       TEXT NOT NULL
) STRICT;

CREATE TABLE stripe_events (
    id           TEXT PRIMARY KEY,
    type         TEXT NOT NULL,
    received_at  TEXT NOT NULL,
    outcome      TEXT NOT NULL
) STRICT;
