-- Nothing to change on SQLite: its processes share one host, and the store tells them
-- about key writes through the sidecar file `<database>-keys` (see storage/sqlite.rs).
-- Kept so that both backends carry the same migration numbers.
SELECT 1;
