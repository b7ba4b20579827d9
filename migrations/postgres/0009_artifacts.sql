-- Artifacts: files Maestro produced for a tenant (document exports), addressed by the
-- SHA-256 of their bytes. The bytes live once in the blob store (disk or S3), shared;
-- this table says which tenant may read which digest, and what it is. One row per
-- tenant and digest; a row never changes (content-addressed), so UPDATE is refused.
-- (DELETE stays possible for a future garbage collection of unused blobs.)

CREATE TABLE artifacts (
    tenant_id     TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    sha256        TEXT NOT NULL CHECK (length(sha256) = 64),
    size          BIGINT NOT NULL CHECK (size >= 0),
    content_type  TEXT NOT NULL,
    -- The export this is (all three set, or none).
    document_id   TEXT,
    version       BIGINT,
    format        TEXT CHECK (format IN ('md', 'html', 'pdf')),
    created_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, sha256),
    CHECK ((document_id IS NULL) = (version IS NULL) AND (version IS NULL) = (format IS NULL))
);

-- The export cache: a tenant's artifact for a document version in a format.
CREATE INDEX artifacts_by_export ON artifacts (tenant_id, document_id, version, format);

CREATE FUNCTION artifacts_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'artifacts are immutable';
END;
$$;

CREATE TRIGGER artifacts_no_update BEFORE UPDATE ON artifacts
    FOR EACH ROW EXECUTE FUNCTION artifacts_immutable();
