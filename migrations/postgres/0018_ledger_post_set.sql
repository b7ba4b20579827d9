-- A set-based path for the common postings, so a batch costs a few statements instead
-- of a few per posting. `ledger_post_set` takes postings of two legs: one tenant account
-- (wallet or held) and one platform account, with no hold, no reversal and no cap —
-- debits, grants and purchases; everything else still goes through `ledger_post` (0017).
-- It answers exactly like `ledger_post` (one row per posting, in order, same statuses)
-- and decides exactly as if the postings were posted one after another, in order:
--
--   1. lock the balance rows of every tenant in the batch (wallet and held, by account
--      key: the lock order of 0017), creating a missing one that the batch credits;
--   2. one idempotency lookup for all keys (after the locks, so a concurrent posting of
--      the same tenant has committed and is seen);
--   3. the decisions in memory, in order: a replay or conflict (a key used before, or
--      earlier in this batch), else a debit is accepted iff the running balance covers
--      it; each answer carries the tenant's balance after it;
--   4. one UPDATE of the balance rows that changed, one INSERT of all transactions and
--      one of all entries (in order, so `seq` follows arrival).
--
-- A refused posting writes nothing. Like `ledger_post`, an SQL error (a key committed
-- concurrently by a posting of another path) aborts the whole call, and the caller then
-- answers each posting on its own.
--
-- Arguments: per posting p_ids … p_fingerprints as in 0017; p_accounts/p_classes the
-- tenant leg's account and class, p_deltas its signed amount; p_leg_accounts and
-- p_leg_amounts both legs in the posting's order (two per posting), for the entries.
CREATE FUNCTION ledger_post_set(
    p_ids           TEXT[],
    p_tenants       TEXT[],
    p_kinds         TEXT[],
    p_memos         TEXT[],
    p_keys          TEXT[],
    p_fingerprints  TEXT[],
    p_accounts      TEXT[],
    p_classes       TEXT[],
    p_deltas        BIGINT[],
    p_leg_accounts  TEXT[],
    p_leg_amounts   BIGINT[],
    p_at            TIMESTAMPTZ
) RETURNS TABLE (r_status TEXT, r_available BIGINT, r_held BIGINT, r_amount BIGINT, r_detail TEXT)
LANGUAGE plpgsql
AS $$
DECLARE
    v_n           INT := coalesce(cardinality(p_ids), 0);
    -- The balance rows, locked: account, balance now (running), balance before.
    v_acc         TEXT[];
    v_bal         BIGINT[];
    v_before      BIGINT[];
    -- Keys seen: stored before (with their fingerprints) or posted earlier in the batch.
    v_seen        TEXT[];
    v_seen_fp     TEXT[];
    -- What to write: the posted postings' indexes and balances after.
    v_posted      INT[] := '{}';
    v_avail_after BIGINT[] := '{}';
    v_held_after  BIGINT[] := '{}';
    v_entry_tx    TEXT[] := '{}';
    v_entry_acc   TEXT[] := '{}';
    v_entry_amt   BIGINT[] := '{}';
    v_seen_at     INT;
    v_at          INT;
    v_wallet_at   INT;
    v_held_at     INT;
    v_delta       BIGINT;
    v_balance     BIGINT;
    v_tenant      TEXT;
    v_key         TEXT;
BEGIN
    -- Money: the commit waits for the WAL flush whatever the session's default.
    PERFORM set_config('synchronous_commit', 'on', true);

    -- 1. A balance row the batch credits must exist to be locked (a first grant).
    INSERT INTO ledger_balances AS b (account, class, tenant_id, balance)
    SELECT DISTINCT a.account, a.class, a.tenant, 0
      FROM unnest(p_accounts, p_classes, p_tenants, p_deltas) AS a (account, class, tenant, delta)
     WHERE a.delta > 0
       AND NOT EXISTS (SELECT 1 FROM ledger_balances x WHERE x.account = a.account)
    ON CONFLICT (account) DO NOTHING;
    SELECT coalesce(array_agg(l.account ORDER BY l.account), '{}'), coalesce(array_agg(l.balance ORDER BY l.account), '{}')
      INTO v_acc, v_bal
      FROM (SELECT b.account, b.balance FROM ledger_balances b
             WHERE b.account = ANY (ARRAY(SELECT 'wallet:' || t FROM unnest(p_tenants) AS t
                                          UNION SELECT 'held:' || t FROM unnest(p_tenants) AS t))
             ORDER BY b.account FOR UPDATE) AS l;
    v_before := v_bal;

    -- 2. Keys used before.
    SELECT coalesce(array_agg(t.tenant_id || ' ' || t.idempotency_key), '{}'), coalesce(array_agg(t.fingerprint), '{}')
      INTO v_seen, v_seen_fp
      FROM ledger_transactions t
      JOIN (SELECT DISTINCT k.tenant, k.key FROM unnest(p_tenants, p_keys) AS k (tenant, key)) AS k
        ON t.tenant_id = k.tenant AND t.idempotency_key = k.key;

    -- 3. The decisions, in order.
    FOR i IN 1 .. v_n LOOP
        v_tenant := p_tenants[i];
        v_key := v_tenant || ' ' || p_keys[i];
        r_available := NULL;
        r_held := NULL;
        r_amount := NULL;
        r_detail := NULL;
        v_seen_at := array_position(v_seen, v_key);
        IF v_seen_at IS NOT NULL THEN
            r_status := CASE WHEN v_seen_fp[v_seen_at] = p_fingerprints[i] THEN 'replay' ELSE 'conflict' END;
            RETURN NEXT;
            CONTINUE;
        END IF;
        v_delta := p_deltas[i];
        v_at := array_position(v_acc, p_accounts[i]);
        v_balance := coalesce(v_bal[v_at], 0);
        IF v_balance + v_delta < 0 THEN
            r_status := 'insufficient';
            r_available := v_balance;
            r_amount := -v_delta;
            RETURN NEXT;
            CONTINUE;
        END IF;
        -- A credit's row exists (created above); a covered debit's too (its balance > 0).
        IF v_at IS NULL THEN
            RAISE EXCEPTION 'ledger balance % missing under its lock', p_accounts[i];
        END IF;
        v_bal[v_at] := v_balance + v_delta;
        v_wallet_at := array_position(v_acc, 'wallet:' || v_tenant);
        v_held_at := array_position(v_acc, 'held:' || v_tenant);
        r_status := 'posted';
        r_available := coalesce(v_bal[v_wallet_at], 0);
        r_held := coalesce(v_bal[v_held_at], 0);
        r_amount := abs(v_delta);
        v_seen := v_seen || v_key;
        v_seen_fp := v_seen_fp || p_fingerprints[i];
        v_posted := v_posted || i;
        v_avail_after := v_avail_after || r_available;
        v_held_after := v_held_after || r_held;
        v_entry_tx := v_entry_tx || p_ids[i] || p_ids[i];
        v_entry_acc := v_entry_acc || p_leg_accounts[2 * i - 1] || p_leg_accounts[2 * i];
        v_entry_amt := v_entry_amt || p_leg_amounts[2 * i - 1] || p_leg_amounts[2 * i];
        RETURN NEXT;
    END LOOP;

    -- 4. The writes: balances that changed, transactions, entries.
    IF cardinality(v_posted) = 0 THEN
        RETURN;
    END IF;
    UPDATE ledger_balances b SET balance = u.balance
      FROM unnest(v_acc, v_bal, v_before) AS u (account, balance, before)
     WHERE b.account = u.account AND u.balance <> u.before;
    INSERT INTO ledger_transactions (id, tenant_id, kind, amount, memo, idempotency_key, fingerprint,
                                     available_after, held_after, created_at)
    SELECT p_ids[p.i], p_tenants[p.i], p_kinds[p.i], abs(p_deltas[p.i]), p_memos[p.i], p_keys[p.i],
           p_fingerprints[p.i], p.available, p.held, p_at
      FROM unnest(v_posted, v_avail_after, v_held_after) WITH ORDINALITY AS p (i, available, held, o)
     ORDER BY p.o;
    INSERT INTO ledger_entries (transaction_id, account, amount)
    SELECT e.tx, e.account, e.amount
      FROM unnest(v_entry_tx, v_entry_acc, v_entry_amt) WITH ORDINALITY AS e (tx, account, amount, o)
     ORDER BY e.o;
END
$$;

-- Nothing reads entries by account through an index: balances of tenant accounts are
-- cached rows, platform balances and the audit sum whole scans. Two index insertions
-- per posting saved.
DROP INDEX ledger_entries_by_account;

-- A reversal is unique per original, but most transactions reverse nothing: the unique
-- constraint indexed every row's NULL too. A partial unique index keeps the rule (at most
-- one reversal of each transaction) and skips those: one index insertion per posting saved.
ALTER TABLE ledger_transactions DROP CONSTRAINT ledger_transactions_reverses_key;
CREATE UNIQUE INDEX ledger_transactions_reverses ON ledger_transactions (reverses) WHERE reverses IS NOT NULL;

-- The entries' foreign key to their transaction cost a row-lock query per entry (a third
-- of `ledger_post_set`'s time for a batch of debits). Entries are only ever written by
-- `ledger_post` and `ledger_post_set`, in the same statement as their transaction row,
-- and neither table allows UPDATE or DELETE (the triggers of 0002), so no entry can lose
-- its transaction: the key guarded nothing those two functions do not.
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_transaction_id_fkey;

-- Plans made once per connection, and never sequential scans. PL/pgSQL caches each
-- statement's plan per session. Under the default `plan_cache_mode = auto` the
-- statements taking the array arguments (`unnest`, `= ANY`) were planned again on every
-- call, most of a lone posting's server time (~700 against ~220 µs on a loaded machine);
-- and whatever the mode, a plan made while the ledger was young (tables of a few rows,
-- never analysed) is a sequential scan of `ledger_transactions` or `ledger_balances`,
-- which the session kept as the tables grew: the ledger bench read 92 million rows in
-- 7,287 scans for 94,000 postings, and a lone debit cost 1 ms against the raw
-- statement's 0.17. Every statement here is a key lookup with an index to serve it, so
-- the functions plan generically once, with sequential scans off: the plans are index
-- lookups whatever the statistics said when they were made.
ALTER FUNCTION ledger_post SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION ledger_post SET enable_seqscan = off;
ALTER FUNCTION ledger_post_set SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION ledger_post_set SET enable_seqscan = off;
