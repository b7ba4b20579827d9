-- Postgres 0018 adds `ledger_post_set` (the set-based batch of simple postings), which
-- has no SQLite counterpart (a lone debit is already one command to the connection's
-- worker there). Like Postgres, drop the index of entries by account: no query reads
-- entries by account (the audit scans them all), and every debit paid for it with a
-- WAL page.
DROP INDEX ledger_entries_by_account;
