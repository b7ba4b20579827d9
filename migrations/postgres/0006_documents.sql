-- Living documents and their append-only versions. A document names its current
-- version; a writer moves it from a base version to base + 1 with a conditional
-- update (`… WHERE version = base`, which re-checks the row after waiting for a
-- concurrent writer's lock) in the transaction that inserts the version row, so of two
-- writers on one base exactly one succeeds.

CREATE TABLE documents (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    -- The session it is attached to; NULL: shared across the tenant.
    session_id  TEXT,
    title       TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('markdown', 'json')),
    -- The current version (the last row of document_versions).
    version     BIGINT NOT NULL CHECK (version >= 1),
    -- JSON `DocAuthor`.
    created_by  TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    -- A document's session is one of its tenant's (not checked when NULL).
    FOREIGN KEY (session_id, tenant_id) REFERENCES sessions (id, tenant_id)
);

-- A tenant's documents, newest first; a session's.
CREATE INDEX documents_by_tenant ON documents (tenant_id, created_at, id);
CREATE INDEX documents_by_session ON documents (session_id, created_at, id);

-- Append-only: a version is never changed or removed once committed.
CREATE TABLE document_versions (
    document_id  TEXT NOT NULL REFERENCES documents (id),
    version      BIGINT NOT NULL CHECK (version >= 1),
    content      TEXT NOT NULL,
    -- The content's size in bytes.
    bytes        BIGINT NOT NULL CHECK (bytes >= 0),
    -- JSON `Edit` and `DocAuthor`.
    edit         TEXT NOT NULL,
    author       TEXT NOT NULL,
    at           TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (document_id, version)
);

CREATE FUNCTION document_versions_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'document versions are immutable';
END
$$;
CREATE TRIGGER document_versions_immutable BEFORE UPDATE OR DELETE ON document_versions
    FOR EACH ROW EXECUTE FUNCTION document_versions_immutable();
CREATE TRIGGER document_versions_no_truncate BEFORE TRUNCATE ON document_versions
    FOR EACH STATEMENT EXECUTE FUNCTION document_versions_immutable();
