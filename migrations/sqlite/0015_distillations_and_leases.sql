-- A completed run's distillation answer, recorded once before any of its facts is
-- written: a retried `memory.distil` job reuses it instead of calling the model (and
-- charging) again. `hold_id` and `charged` name the hold the call was paid from and its
-- settled amount (NULL when the call cost nothing), so a retry after a crash between
-- the record and the settlement settles the same hold for the same amount (the ledger
-- replays a settlement already posted under its key).
CREATE TABLE memory_distillations (
    run_id      TEXT PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    answer      TEXT NOT NULL,
    hold_id     TEXT,
    charged     INTEGER CHECK (charged >= 0),
    created_at  TEXT NOT NULL,
    CHECK ((hold_id IS NULL) = (charged IS NULL))
) STRICT;

-- Written once: its answer never changes (a run's deletion still removes it).
CREATE TRIGGER memory_distillations_no_update BEFORE UPDATE ON memory_distillations
BEGIN SELECT RAISE(ABORT, 'a distillation record is immutable'); END;

-- Leases: named work one replica does at a time (the passage follower). The holder
-- renews its row before `expires_at`; another replica takes the row over only once it
-- expired.
CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  TEXT NOT NULL
) STRICT;
