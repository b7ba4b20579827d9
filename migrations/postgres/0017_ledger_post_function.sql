-- Postings in one round trip. `ledger_post` applies a batch of postings (one or many)
-- in order, each exactly as if posted alone one after another, inside the caller's
-- transaction: called on its own (autocommit) the call is the whole transaction, so a
-- posting costs one statement and one durable commit, and a batch shares one commit.
--
-- Each posting is an index `i` into the parallel arrays; its legs (sorted by account,
-- as `Posting` keeps them) are the next `p_leg_counts[i]` elements of the `p_leg_*`
-- arrays. The answer is one row per posting, in order:
--   posted        r_available/r_held: the tenant's balance after; r_amount: moved
--   replay        the key was used before for the same request (the caller reads it)
--   conflict      the key was used before for another request
--   reversed      the transaction to reverse already was
--   hold_missing  no such hold of this tenant
--   hold_closed   r_detail: the hold's state as the refusal names it
--   hold_unreleased  the legs do not release all of the hold
--   insufficient  r_available: what the account holds; r_amount: what was needed
-- A refusal writes nothing: every check comes before the first write. An SQL error (a
-- concurrent request committed the same key or reversal meanwhile, a tampered row)
-- aborts the whole call; the caller then answers each posting on its own.
--
-- Row locks follow one order everywhere: holds to close (by id), then tenant balances
-- (by account key), so postings and batches of one tenant cannot deadlock.
CREATE FUNCTION ledger_post(
    p_ids             TEXT[],
    p_tenants         TEXT[],
    p_kinds           TEXT[],
    p_memos           TEXT[],
    p_keys            TEXT[],
    p_fingerprints    TEXT[],
    p_leg_counts      INT[],
    p_leg_accounts    TEXT[],
    p_leg_classes     TEXT[],
    p_leg_amounts     BIGINT[],
    -- The debited account of an `up_to_available` posting (NULL otherwise).
    p_cap_accounts    TEXT[],
    -- 'open', 'close' or NULL; the hold's id; for an open, its expiry; for a close, the
    -- new state and (settled) the amount charged.
    p_hold_ops        TEXT[],
    p_hold_ids        TEXT[],
    p_hold_expires    TIMESTAMPTZ[],
    p_hold_states     TEXT[],
    p_hold_settled    BIGINT[],
    p_reverses        TEXT[],
    p_at              TIMESTAMPTZ
) RETURNS TABLE (r_status TEXT, r_available BIGINT, r_held BIGINT, r_amount BIGINT, r_detail TEXT)
LANGUAGE plpgsql AS $$
DECLARE
    v_n            INT := coalesce(cardinality(p_ids), 0);
    v_next_leg     INT := 1;
    v_legs         INT;
    v_accounts     TEXT[];
    v_classes      TEXT[];
    v_amounts      BIGINT[];
    v_fingerprint  TEXT;
    v_hold         RECORD;
    v_balance      BIGINT;
    v_moved        BIGINT;
    v_debits       INT;
    v_constrained  INT;
    v_refused      BOOLEAN;
    v_tenant       TEXT;
    v_id           TEXT;
    v_hold_op      TEXT;
    v_hold_id      TEXT;
    v_hold_state   TEXT;
    v_other        BIGINT;
    v_after        BOOLEAN;
BEGIN
    -- Money: the commit waits for the WAL flush whatever the session's default (a
    -- transaction-local setting, so it holds until this transaction's commit).
    PERFORM set_config('synchronous_commit', 'on', true);
    IF v_n > 1 THEN
        PERFORM 1 FROM ledger_holds WHERE id = ANY (p_hold_ids) AND state = 'open' ORDER BY id FOR UPDATE;
        PERFORM 1 FROM ledger_balances WHERE account = ANY (p_leg_accounts) ORDER BY account FOR UPDATE;
    END IF;
    FOR i IN 1 .. v_n LOOP
        v_legs := p_leg_counts[i];
        v_accounts := p_leg_accounts[v_next_leg : v_next_leg + v_legs - 1];
        v_classes := p_leg_classes[v_next_leg : v_next_leg + v_legs - 1];
        v_amounts := p_leg_amounts[v_next_leg : v_next_leg + v_legs - 1];
        v_next_leg := v_next_leg + v_legs;
        -- Each element once: reading the i-th element of a text array walks the array.
        v_id := p_ids[i];
        v_tenant := p_tenants[i];
        v_hold_op := p_hold_ops[i];
        v_hold_id := p_hold_ids[i];
        v_hold_state := p_hold_states[i];
        r_status := NULL;
        r_available := NULL;
        r_held := NULL;
        r_amount := NULL;
        r_detail := NULL;

        SELECT t.fingerprint INTO v_fingerprint FROM ledger_transactions t
         WHERE t.tenant_id = v_tenant AND t.idempotency_key = p_keys[i];
        IF FOUND THEN
            r_status := CASE WHEN v_fingerprint = p_fingerprints[i] THEN 'replay' ELSE 'conflict' END;
            RETURN NEXT;
            CONTINUE;
        END IF;

        IF p_reverses[i] IS NOT NULL
           AND EXISTS (SELECT 1 FROM ledger_transactions t WHERE t.reverses = p_reverses[i]) THEN
            r_status := 'reversed';
            RETURN NEXT;
            CONTINUE;
        END IF;

        IF v_hold_op = 'close' THEN
            SELECT h.amount, h.state, h.expires_at INTO v_hold FROM ledger_holds h
             WHERE h.id = v_hold_id AND h.tenant_id = v_tenant FOR UPDATE;
            IF NOT FOUND THEN
                r_status := 'hold_missing';
                RETURN NEXT;
                CONTINUE;
            END IF;
            -- `Hold::check_close`: open, a settlement before the expiry, an expiry at or after it.
            r_detail := CASE
                WHEN v_hold.state <> 'open' THEN v_hold.state
                WHEN v_hold_state = 'settled' AND p_at >= v_hold.expires_at THEN 'expired'
                WHEN v_hold_state = 'expired' AND p_at < v_hold.expires_at THEN 'open'
            END;
            IF r_detail IS NOT NULL THEN
                r_status := 'hold_closed';
                RETURN NEXT;
                CONTINUE;
            END IF;
            IF NOT EXISTS (SELECT 1 FROM unnest(v_accounts, v_amounts) AS l (account, amount)
                            WHERE l.account = 'held:' || v_tenant AND l.amount = -v_hold.amount) THEN
                r_status := 'hold_unreleased';
                RETURN NEXT;
                CONTINUE;
            END IF;
        END IF;

        IF p_cap_accounts[i] IS NOT NULL THEN
            SELECT b.balance INTO v_balance FROM ledger_balances b WHERE b.account = p_cap_accounts[i] FOR UPDATE;
            v_balance := coalesce(v_balance, 0);
            v_moved := (SELECT sum(a) FROM unnest(v_amounts) AS a WHERE a > 0);
            IF least(v_moved, v_balance) <= 0 THEN
                r_status := 'insufficient';
                r_available := v_balance;
                r_amount := v_moved;
                RETURN NEXT;
                CONTINUE;
            END IF;
            v_moved := least(v_moved, v_balance);
            v_amounts := ARRAY(SELECT CASE WHEN l.a < 0 THEN -v_moved ELSE v_moved END
                                 FROM unnest(v_amounts) WITH ORDINALITY AS l (a, o) ORDER BY l.o);
        END IF;

        -- Tenant accounts may not go below zero (platform accounts have no balance row).
        v_debits := 0;
        v_constrained := 0;
        v_moved := 0;
        FOR k IN 1 .. v_legs LOOP
            IF v_amounts[k] > 0 THEN
                v_moved := v_moved + v_amounts[k];
            END IF;
            IF v_classes[k] <> 'platform' THEN
                v_constrained := v_constrained + 1;
                IF v_amounts[k] < 0 THEN
                    v_debits := v_debits + 1;
                END IF;
            END IF;
        END LOOP;
        v_refused := false;
        v_after := false;
        IF v_debits > 0 AND v_constrained > 1 THEN
            -- Several tenant accounts: lock them in key order, check every debit, then write.
            FOR k IN 1 .. v_legs LOOP
                CONTINUE WHEN v_classes[k] = 'platform';
                SELECT b.balance INTO v_balance FROM ledger_balances b WHERE b.account = v_accounts[k] FOR UPDATE;
                v_balance := coalesce(v_balance, 0);
                IF v_amounts[k] < 0 AND v_balance + v_amounts[k] < 0 THEN
                    r_status := 'insufficient';
                    r_available := v_balance;
                    r_amount := -v_amounts[k];
                    RETURN NEXT;
                    v_refused := true;
                    EXIT;
                END IF;
            END LOOP;
            CONTINUE WHEN v_refused;
        END IF;
        FOR k IN 1 .. v_legs LOOP
            CONTINUE WHEN v_classes[k] = 'platform';
            IF v_amounts[k] < 0 THEN
                -- The conditional update: a lone debit's check (nothing is written before it),
                -- reading the tenant's other balance with it.
                UPDATE ledger_balances b SET balance = b.balance + v_amounts[k]
                 WHERE b.account = v_accounts[k] AND b.balance + v_amounts[k] >= 0
                RETURNING b.balance,
                          (SELECT o.balance FROM ledger_balances o
                            WHERE o.account = CASE WHEN v_classes[k] = 'wallet' THEN 'held:' ELSE 'wallet:' END || v_tenant)
                     INTO v_balance, v_other;
                IF FOUND AND v_constrained = 1 THEN
                    r_available := CASE WHEN v_classes[k] = 'wallet' THEN v_balance ELSE coalesce(v_other, 0) END;
                    r_held := CASE WHEN v_classes[k] = 'wallet' THEN coalesce(v_other, 0) ELSE v_balance END;
                    v_after := true;
                END IF;
                IF NOT FOUND THEN
                    IF v_constrained > 1 THEN
                        RAISE EXCEPTION 'ledger balance % changed under its lock', v_accounts[k];
                    END IF;
                    SELECT b.balance INTO v_balance FROM ledger_balances b WHERE b.account = v_accounts[k];
                    r_status := 'insufficient';
                    r_available := coalesce(v_balance, 0);
                    r_amount := -v_amounts[k];
                    RETURN NEXT;
                    v_refused := true;
                    EXIT;
                END IF;
            ELSE
                INSERT INTO ledger_balances AS b (account, class, tenant_id, balance)
                VALUES (v_accounts[k], v_classes[k], v_tenant, v_amounts[k])
                ON CONFLICT (account) DO UPDATE SET balance = b.balance + excluded.balance;
            END IF;
        END LOOP;
        CONTINUE WHEN v_refused;

        IF v_hold_op = 'close' THEN
            UPDATE ledger_holds h
               SET state = v_hold_state,
                   settled_amount = CASE WHEN v_hold_state = 'settled' THEN p_hold_settled[i] END,
                   closed_at = p_at
             WHERE h.id = v_hold_id AND h.state = 'open';
            IF NOT FOUND THEN
                RAISE EXCEPTION 'hold % closed under its lock', v_hold_id;
            END IF;
        ELSIF v_hold_op = 'open' THEN
            INSERT INTO ledger_holds (id, tenant_id, amount, expires_at, state, created_at)
            VALUES (v_hold_id, v_tenant, v_moved, p_hold_expires[i], 'open', p_at);
        END IF;

        IF NOT v_after THEN
            SELECT coalesce(max(b.balance) FILTER (WHERE b.class = 'wallet'), 0),
                   coalesce(max(b.balance) FILTER (WHERE b.class = 'held'), 0)
              INTO r_available, r_held
              FROM ledger_balances b
             WHERE b.account IN ('wallet:' || v_tenant, 'held:' || v_tenant);
        END IF;
        INSERT INTO ledger_transactions (id, tenant_id, kind, amount, memo, idempotency_key, fingerprint, hold_id,
                                         reverses, available_after, held_after, created_at)
        VALUES (v_id, v_tenant, p_kinds[i], v_moved, p_memos[i], p_keys[i], p_fingerprints[i],
                CASE WHEN v_hold_op IS NOT NULL THEN v_hold_id END, p_reverses[i], r_available, r_held, p_at);
        IF v_legs = 2 THEN
            INSERT INTO ledger_entries (transaction_id, account, amount)
            VALUES (v_id, v_accounts[1], v_amounts[1]), (v_id, v_accounts[2], v_amounts[2]);
        ELSE
            INSERT INTO ledger_entries (transaction_id, account, amount)
            SELECT v_id, l.account, l.amount
              FROM unnest(v_accounts, v_amounts) WITH ORDINALITY AS l (account, amount, o)
             ORDER BY l.o;
        END IF;
        r_status := 'posted';
        r_amount := v_moved;
        RETURN NEXT;
    END LOOP;
END
$$;
