-- no-transaction
-- A run may wait for the user's answer to a question (`waiting_input`: no worker, no
-- lease, no open hold) and end `expired` when the answer does not come in time. The
-- question, its choices and its deadline are the `clarification.requested` event; the
-- expiry is a job scheduled at the deadline.
--
-- 0005 is released and SQLite cannot alter a CHECK constraint: the `runs` table is
-- rebuilt by SQLite's documented procedure (https://sqlite.org/lang_altertable.html,
-- "Making Other Kinds Of Table Schema Changes"). Foreign keys are off while the table is
-- swapped (`run_events` references `runs`; the pragma is a no-op inside a transaction,
-- hence `no-transaction` above) and the swap itself is one transaction. `runs` has no
-- triggers or views; its one index is recreated.

PRAGMA foreign_keys = OFF;

BEGIN IMMEDIATE;

CREATE TABLE runs_0007 (
    id                TEXT PRIMARY KEY,
    session_id        TEXT NOT NULL,
    tenant_id         TEXT NOT NULL,
    trigger_message   TEXT NOT NULL REFERENCES messages (id),
    key_id            TEXT NOT NULL,
    role              TEXT NOT NULL CHECK (role IN ('admin', 'member', 'viewer')),
    state             TEXT NOT NULL CHECK (state IN ('queued', 'running', 'completed', 'failed', 'cancelled',
                                                     'waiting_input', 'expired')),
    strategy          TEXT NOT NULL CHECK (strategy IN ('router', 'round_robin', 'sequence', 'parallel')),
    -- JSON `RunLimits`, `RunTotals` and `RunError`.
    limits            TEXT NOT NULL,
    totals            TEXT NOT NULL,
    error             TEXT,
    cancel_requested  INTEGER NOT NULL DEFAULT 0 CHECK (cancel_requested IN (0, 1)),
    -- The last event's `seq` (0 before the first).
    last_seq          INTEGER NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    created_at        TEXT NOT NULL,
    started_at        TEXT,
    finished_at       TEXT,
    -- A run belongs to its session's tenant.
    FOREIGN KEY (session_id, tenant_id) REFERENCES sessions (id, tenant_id),
    -- Target of the events' (run, session) reference.
    UNIQUE (id, session_id)
) STRICT;

INSERT INTO runs_0007 (id, session_id, tenant_id, trigger_message, key_id, role, state, strategy, limits, totals,
                       error, cancel_requested, last_seq, created_at, started_at, finished_at)
SELECT id, session_id, tenant_id, trigger_message, key_id, role, state, strategy, limits, totals,
       error, cancel_requested, last_seq, created_at, started_at, finished_at
FROM runs;

DROP TABLE runs;
ALTER TABLE runs_0007 RENAME TO runs;

-- A session's runs, newest first.
CREATE INDEX runs_by_session ON runs (session_id, created_at, id);

COMMIT;

PRAGMA foreign_keys = ON;
