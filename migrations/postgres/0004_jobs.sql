-- Background jobs with leases. Workers of several replicas claim due jobs (state
-- 'queued', run_at passed) or jobs whose lease expired (their worker died) with
-- `FOR UPDATE SKIP LOCKED`, so each job is held by one worker at a time.
CREATE TABLE jobs (
    id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Idempotency: enqueueing an existing key returns the existing job.
    job_key           TEXT NOT NULL UNIQUE,
    kind              TEXT NOT NULL,
    -- JSON text.
    payload           TEXT NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'dead', 'cancelled')),
    attempts          BIGINT NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts      BIGINT NOT NULL CHECK (max_attempts >= 1),
    run_at            TIMESTAMPTZ NOT NULL,
    -- The worker holding (or, once finished, last holding) the job.
    lease_owner       TEXT,
    lease_expires_at  TIMESTAMPTZ,
    last_error        TEXT,
    created_at        TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL
);

-- What claimers scan: due queued jobs and running jobs by lease expiry.
CREATE INDEX jobs_queued_by_run_at ON jobs (run_at, id) WHERE state = 'queued';
CREATE INDEX jobs_running_by_lease ON jobs (lease_expires_at) WHERE state = 'running';
-- The admin listing filters by state and kind, newest first.
CREATE INDEX jobs_by_state ON jobs (state, id);
CREATE INDEX jobs_by_kind ON jobs (kind, id);
