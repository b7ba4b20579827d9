-- Sessions, their messages, runs and run events (the agent runtime). JSON columns are
-- JSON text. Sequence numbers are allocated in the writer's transaction from the
-- counters below under row locks (`UPDATE … RETURNING`; always the run's row before
-- the session's), so they are dense (1, 2, 3, …) and commit in order.

CREATE TABLE sessions (
    id                TEXT PRIMARY KEY,
    tenant_id         TEXT NOT NULL REFERENCES tenants (id),
    title             TEXT NOT NULL,
    -- JSON array of `plugin.persona` names, in team order.
    personas          TEXT NOT NULL,
    strategy          TEXT NOT NULL CHECK (strategy IN ('router', 'round_robin', 'sequence', 'parallel')),
    -- JSON `RunLimits`.
    limits            TEXT NOT NULL,
    created_by        TEXT NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL,
    -- The last message's `seq` and the last event's `session_seq` (0 before the first).
    last_message_seq  BIGINT NOT NULL DEFAULT 0 CHECK (last_message_seq >= 0),
    last_event_seq    BIGINT NOT NULL DEFAULT 0 CHECK (last_event_seq >= 0),
    -- Target of the runs' (session, tenant) reference.
    UNIQUE (id, tenant_id)
);

-- A tenant's sessions, newest first.
CREATE INDEX sessions_by_tenant ON sessions (tenant_id, created_at, id);

CREATE TABLE messages (
    id           TEXT PRIMARY KEY,
    session_id   TEXT NOT NULL REFERENCES sessions (id),
    seq          BIGINT NOT NULL CHECK (seq >= 1),
    author_kind  TEXT NOT NULL CHECK (author_kind IN ('user', 'persona')),
    -- The key id of a user, the `plugin.persona` name of a persona.
    author_name  TEXT NOT NULL,
    content      TEXT NOT NULL,
    -- The run it started or was written in (no reference: a user's message is written
    -- before the run it starts).
    run_id       TEXT,
    at           TIMESTAMPTZ NOT NULL,
    UNIQUE (session_id, seq)
);

CREATE TABLE runs (
    id                TEXT PRIMARY KEY,
    session_id        TEXT NOT NULL,
    tenant_id         TEXT NOT NULL,
    trigger_message   TEXT NOT NULL REFERENCES messages (id),
    key_id            TEXT NOT NULL,
    role              TEXT NOT NULL CHECK (role IN ('admin', 'member', 'viewer')),
    state             TEXT NOT NULL CHECK (state IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    strategy          TEXT NOT NULL CHECK (strategy IN ('router', 'round_robin', 'sequence', 'parallel')),
    -- JSON `RunLimits`, `RunTotals` and `RunError`.
    limits            TEXT NOT NULL,
    totals            TEXT NOT NULL,
    error             TEXT,
    cancel_requested  BOOLEAN NOT NULL DEFAULT FALSE,
    -- The last event's `seq` (0 before the first).
    last_seq          BIGINT NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    created_at        TIMESTAMPTZ NOT NULL,
    started_at        TIMESTAMPTZ,
    finished_at       TIMESTAMPTZ,
    -- A run belongs to its session's tenant.
    FOREIGN KEY (session_id, tenant_id) REFERENCES sessions (id, tenant_id),
    -- Target of the events' (run, session) reference.
    UNIQUE (id, session_id)
);

-- A session's runs, newest first.
CREATE INDEX runs_by_session ON runs (session_id, created_at, id);

-- Append-only: an event is never changed or removed once committed.
CREATE TABLE run_events (
    run_id       TEXT NOT NULL,
    -- Dense per run, from 1.
    seq          BIGINT NOT NULL CHECK (seq >= 1),
    session_id   TEXT NOT NULL,
    -- Dense per session across its runs, from 1.
    session_seq  BIGINT NOT NULL CHECK (session_seq >= 1),
    type         TEXT NOT NULL,
    version      BIGINT NOT NULL,
    -- The body's fields as JSON text (without the `type` tag).
    payload      TEXT NOT NULL,
    at           TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (run_id, seq),
    UNIQUE (session_id, session_seq),
    FOREIGN KEY (run_id, session_id) REFERENCES runs (id, session_id)
);

CREATE FUNCTION run_events_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'run events are immutable';
END
$$;
CREATE TRIGGER run_events_immutable BEFORE UPDATE OR DELETE ON run_events
    FOR EACH ROW EXECUTE FUNCTION run_events_immutable();
CREATE TRIGGER run_events_no_truncate BEFORE TRUNCATE ON run_events
    FOR EACH STATEMENT EXECUTE FUNCTION run_events_immutable();
