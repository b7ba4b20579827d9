-- pgvector backs agent memory (a later migration adds the tables); creating the
-- extension first makes a server without pgvector fail at its first start, loudly,
-- instead of on the first memory write.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    -- NULL for platform-admin keys, which act across tenants.
    tenant_id   TEXT REFERENCES tenants (id) ON DELETE CASCADE,
    role        TEXT NOT NULL CHECK (role IN ('platform', 'admin', 'member', 'viewer')),
    name        TEXT NOT NULL,
    -- Public lookup prefix (8 characters after `mk_`); the token itself is never stored.
    prefix      TEXT NOT NULL UNIQUE,
    -- SHA-256 of the whole token.
    hash        BYTEA NOT NULL CHECK (length(hash) = 32),
    created_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ,
    revoked_at  TIMESTAMPTZ,
    CHECK ((role = 'platform') = (tenant_id IS NULL))
);

CREATE INDEX api_keys_by_tenant ON api_keys (tenant_id, created_at);

-- One row once the first platform-admin key has been created, so that two servers
-- starting on one empty store cannot both create one.
CREATE TABLE bootstrap (
    id       SMALLINT PRIMARY KEY CHECK (id = 1),
    done_at  TIMESTAMPTZ NOT NULL
);
