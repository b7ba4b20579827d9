-- Schedules: a message posted on a cron schedule into a session or a new session from a
-- template, and the record of every fire. Timestamps are RFC 3339 text in UTC with
-- millisecond precision; JSON columns are JSON text.
CREATE TABLE schedules (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants (id),
    cron          TEXT NOT NULL,
    time_zone     TEXT NOT NULL,
    -- JSON `ScheduleTarget`: `{"kind": "session", "session": …}` or a session template.
    target        TEXT NOT NULL,
    message       TEXT NOT NULL,
    catch_up      TEXT NOT NULL CHECK (catch_up IN ('once', 'skip')),
    paused        INTEGER NOT NULL DEFAULT 0 CHECK (paused IN (0, 1)),
    -- The next fire; NULL when the expression has none left. Advanced by compare-and-set.
    next_fire_at  TEXT,
    -- The key that created it (fires post as this key) and its role then.
    created_by    TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'member', 'viewer')),
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
) STRICT;

-- A tenant's schedules, newest first.
CREATE INDEX schedules_by_tenant ON schedules (tenant_id, created_at, id);
-- What the tick scans: active schedules by next fire.
CREATE INDEX schedules_due ON schedules (next_fire_at) WHERE paused = FALSE AND next_fire_at IS NOT NULL;

-- Append-only: one row per fire that posted its message, written in the unit of work
-- that posts it, so a retried fire job finds it and posts nothing again.
CREATE TABLE schedule_fires (
    schedule_id  TEXT NOT NULL REFERENCES schedules (id) ON DELETE CASCADE,
    fire_at      TEXT NOT NULL,
    session_id   TEXT NOT NULL,
    run_id       TEXT NOT NULL,
    at           TEXT NOT NULL,
    PRIMARY KEY (schedule_id, fire_at)
) STRICT;

-- Fires are never changed; they go only with their schedule.
CREATE TRIGGER schedule_fires_no_update BEFORE UPDATE ON schedule_fires
BEGIN SELECT RAISE(ABORT, 'schedule fires are immutable'); END;
