-- Background jobs with leases. A worker claims due jobs (state 'queued', run_at passed)
-- or jobs whose lease expired (their worker died), inside `BEGIN IMMEDIATE`.
-- Timestamps are RFC 3339 text in UTC with millisecond precision.
CREATE TABLE jobs (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    -- Idempotency: enqueueing an existing key returns the existing job.
    job_key           TEXT NOT NULL UNIQUE,
    kind              TEXT NOT NULL,
    -- JSON text.
    payload           TEXT NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'dead', 'cancelled')),
    attempts          INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts      INTEGER NOT NULL CHECK (max_attempts >= 1),
    run_at            TEXT NOT NULL,
    -- The worker holding (or, once finished, last holding) the job.
    lease_owner       TEXT,
    lease_expires_at  TEXT,
    last_error        TEXT,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL
) STRICT;

-- What claimers scan: due queued jobs and running jobs by lease expiry.
CREATE INDEX jobs_queued_by_run_at ON jobs (run_at, id) WHERE state = 'queued';
CREATE INDEX jobs_running_by_lease ON jobs (lease_expires_at) WHERE state = 'running';
-- The admin listing filters by state and kind, newest first.
CREATE INDEX jobs_by_state ON jobs (state, id);
CREATE INDEX jobs_by_kind ON jobs (kind, id);
