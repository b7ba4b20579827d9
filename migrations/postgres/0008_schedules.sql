-- Schedules: a message posted on a cron schedule into a session or a new session from a
-- template, and the record of every fire. JSON columns are JSON text.
CREATE TABLE schedules (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants (id),
    cron          TEXT NOT NULL,
    time_zone     TEXT NOT NULL,
    -- JSON `ScheduleTarget`: `{"kind": "session", "session": …}` or a session template.
    target        TEXT NOT NULL,
    message       TEXT NOT NULL,
    catch_up      TEXT NOT NULL CHECK (catch_up IN ('once', 'skip')),
    paused        BOOLEAN NOT NULL DEFAULT FALSE,
    -- The next fire; NULL when the expression has none left. Advanced by compare-and-set.
    next_fire_at  TIMESTAMPTZ,
    -- The key that created it (fires post as this key) and its role then.
    created_by    TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'member', 'viewer')),
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL
);

-- A tenant's schedules, newest first.
CREATE INDEX schedules_by_tenant ON schedules (tenant_id, created_at, id);
-- What the tick scans: active schedules by next fire.
CREATE INDEX schedules_due ON schedules (next_fire_at) WHERE NOT paused AND next_fire_at IS NOT NULL;

-- Append-only: one row per fire that posted its message, written in the unit of work
-- that posts it, so a retried fire job finds it and posts nothing again.
CREATE TABLE schedule_fires (
    schedule_id  TEXT NOT NULL REFERENCES schedules (id) ON DELETE CASCADE,
    fire_at      TIMESTAMPTZ NOT NULL,
    session_id   TEXT NOT NULL,
    run_id       TEXT NOT NULL,
    at           TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (schedule_id, fire_at)
);

-- Fires are never changed; they go only with their schedule.
CREATE FUNCTION schedule_fires_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'schedule fires are immutable';
END
$$;
CREATE TRIGGER schedule_fires_immutable BEFORE UPDATE ON schedule_fires
    FOR EACH ROW EXECUTE FUNCTION schedule_fires_immutable();
