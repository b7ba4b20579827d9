-- Living documents and their append-only versions. A document names its current
-- version; a writer moves it from a base version to base + 1 with a conditional
-- update in the transaction that inserts the version row (`BEGIN IMMEDIATE`
-- serialises writers), so of two writers on one base exactly one succeeds.

CREATE TABLE documents (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    -- The session it is attached to; NULL: shared across the tenant.
    session_id  TEXT,
    title       TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('markdown', 'json')),
    -- The current version (the last row of document_versions).
    version     INTEGER NOT NULL CHECK (version >= 1),
    -- JSON `DocAuthor`.
    created_by  TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    -- A document's session is one of its tenant's (not checked when NULL).
    FOREIGN KEY (session_id, tenant_id) REFERENCES sessions (id, tenant_id)
) STRICT;

-- A tenant's documents, newest first; a session's.
CREATE INDEX documents_by_tenant ON documents (tenant_id, created_at, id);
CREATE INDEX documents_by_session ON documents (session_id, created_at, id);

-- Append-only: a version is never changed or removed once committed.
CREATE TABLE document_versions (
    document_id  TEXT NOT NULL REFERENCES documents (id),
    version      INTEGER NOT NULL CHECK (version >= 1),
    content      TEXT NOT NULL,
    -- The content's size in bytes.
    bytes        INTEGER NOT NULL CHECK (bytes >= 0),
    -- JSON `Edit` and `DocAuthor`.
    edit         TEXT NOT NULL,
    author       TEXT NOT NULL,
    at           TEXT NOT NULL,
    PRIMARY KEY (document_id, version)
) STRICT;

CREATE TRIGGER document_versions_no_update BEFORE UPDATE ON document_versions
BEGIN SELECT RAISE(ABORT, 'document versions are immutable'); END;
CREATE TRIGGER document_versions_no_delete BEFORE DELETE ON document_versions
BEGIN SELECT RAISE(ABORT, 'document versions are immutable'); END;
