//! [`maestro_core::LedgerStore`] on both backends. Reads (balances, holds, pages, the
//! audit) are the same SQL, expanded per store type by [`impl_ledger_queries!`] (like
//! `shared.rs`); a posting is written the way each backend does it fastest, by
//! `ledger_apply` (one posting inside a transaction, as units of work use it),
//! `ledger_post_one` and `ledger_post_many` below.
//!
//! **Postgres: one statement per posting.** `ledger_post` (migration 0017) does all of a
//! posting server-side: the idempotency check (same key, same request fingerprint → a
//! replay; another request → a conflict), the reversal and hold checks, the conditional
//! balance update that never overdraws, the hold, the transaction row and its entries,
//! answering the new balance or the refusal with the balance. Called on its own it is the
//! whole (autocommit) transaction, with `synchronous_commit = on` set inside: one round
//! trip, one durable commit. It takes arrays, so a batch of postings is also one
//! statement and one commit (group commit, `post_batch`). A refusal writes nothing; an
//! SQL error (a key or reversal committed concurrently) fails the call, and each posting
//! is then answered on its own: the key is looked up again and an earlier outcome wins.
//! Postings of two legs with one tenant account and no hold, reversal or cap (debits,
//! grants, purchases: nearly all of them) go instead, when a call holds only such, to
//! `ledger_post_set` (migration 0018), which answers the same way at a fraction of the
//! server time per posting: it locks the batch's balance rows, looks all keys up at once,
//! decides each posting in memory in order (a debit passes iff the running balance
//! covers it), then writes with one update of the changed balances and one insert each of
//! transactions and entries. Wallet debits, alone or in a batch each of another tenant
//! (paid calls), are one plain data-modifying statement instead ([`PG_LONE_DEBIT`],
//! [`PG_LONE_DEBITS`]), which leaves to `ledger_post_set` only the debits it did not
//! write, to say why.
//!
//! Postings keep connections of their own between them, one per lane
//! ([`LedgerConnections`]): a posting takes the one used last and puts it back when done,
//! never going through the pool. The pool pings a connection before handing it out
//! (`test_before_acquire`) and again, in a task of its own, whenever one is given back, and
//! hands out whichever is idle, so a posting through it paid two round trips and ran on a
//! different server process each time, whose caches `ledger_post` then found cold: ~200 µs
//! of a lone debit's ~470 against ~280 on a kept connection, measured beside each other. A
//! kept connection is unchecked: one the server closed while it waited fails the one
//! statement, which is retried once on a connection the pool checked. That retry is safe
//! because a posting is idempotent by its key, and the retry recognises its own transaction
//! id if the first attempt committed before the connection died (then it is no replay).
//! Only a connection whose posting ran to its end is kept; one whose caller's future was
//! dropped mid-statement goes back through the pool, which checks it.
//!
//! **SQLite: a write transaction per posting or per batch.** `BEGIN IMMEDIATE` takes
//! the write lock; every check (reversal, hold, capped amount, every debit of several
//! tenant accounts) is a read before the first write, so a refused posting writes
//! nothing and a batch shares one transaction and one commit (one fsync) however many of
//! its postings are refused. SQLite has one writer at a time, so the group commit runs
//! one lane on it (`SqliteStore::POSTING_LANES`): concurrent postings join the next
//! batch instead of waiting for each other's lock.
//!
//! A lone debit (a tenant account to a platform account: every paid call) is posted in one
//! command to the connection's worker thread, where sqlx-sqlite runs each statement (a
//! hand-off there and back, ~35 µs for a trivial statement on a two-core machine): one
//! string from `BEGIN IMMEDIATE` to `COMMIT` whose conditional update is the only check
//! (unused key, not reversed before, enough balance), whose later writes run only when the
//! one before wrote (`changes() = 1`), and whose last row says what happened, so a refusal
//! writes nothing and is answered without another hop. A batch of such debits with distinct
//! keys (paying callers at once) is one command too, per 16 debits: the same statements one
//! debit after another, with their arguments renumbered, each seeing the debits before it.
//! Postings keep their connection between them ([`LedgerConnections`], as on Postgres), so
//! its page cache stays current; a connection is kept (or goes back to the pool) only when
//! the whole command ran: after an error, or when the caller's future is dropped, it is
//! closed, which rolls back what the command left open.
//!
//! Only tenant accounts have a cached balance row: platform accounts (revenue, clearing,
//! promotions) are unconstrained, so their balances are sums of entries, and postings of
//! different tenants share no row. Rows are locked in one order everywhere (holds to
//! close, then balances by account key), so concurrent postings cannot deadlock.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use maestro_core::ledger::{HoldEffect, Leg, TransactionId};
use maestro_core::{
    Account, Balance, Hold, HoldId, HoldState, IdempotencyKey, LedgerError, Posted, Posting, StoreError, TenantId,
    Transaction, TransactionKind,
};
use sqlx::pool::PoolConnection;

use super::postgres::PostgresStore;
use super::sqlite::SqliteStore;
/// Columns of a transaction joined with one of its entries, read by name into [`TxRow`].
macro_rules! tx_columns {
    () => {
        "t.seq, t.id, t.tenant_id, t.kind, t.amount, t.memo, t.idempotency_key, t.hold_id, t.reverses, \
         t.created_at, t.available_after, t.held_after, t.fingerprint, e.account AS entry_account, \
         e.amount AS entry_amount"
    };
}
pub(super) use tx_columns;

/// Columns of `ledger_holds`, read by name into [`HoldRow`].
macro_rules! hold_columns {
    () => {
        "id, tenant_id, amount, expires_at, state, settled_amount, created_at, closed_at"
    };
}
pub(super) use hold_columns;

/// A transaction row joined with one entry.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct TxRow {
    seq: i64,
    id: String,
    tenant_id: String,
    kind: String,
    amount: i64,
    memo: String,
    idempotency_key: String,
    hold_id: Option<String>,
    reverses: Option<String>,
    created_at: DateTime<Utc>,
    available_after: i64,
    held_after: i64,
    fingerprint: String,
    entry_account: String,
    entry_amount: i64,
}

/// A raw `ledger_holds` row.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct HoldRow {
    id: String,
    tenant_id: String,
    amount: i64,
    expires_at: DateTime<Utc>,
    state: String,
    settled_amount: Option<i64>,
    created_at: DateTime<Utc>,
    closed_at: Option<DateTime<Utc>>,
}

/// A stored transaction with what the cursor and replays need.
pub(super) struct StoredTx {
    pub(super) seq: i64,
    pub(super) transaction: Transaction,
    pub(super) balance_after: Balance,
    pub(super) fingerprint: String,
}

/// Groups joined rows (ordered by transaction, then entry) into transactions.
pub(super) fn transactions_from_rows(rows: Vec<TxRow>) -> Result<Vec<StoredTx>, StoreError> {
    let mut out: Vec<StoredTx> = Vec::new();
    for row in rows {
        let id = row.id;
        let account = row.entry_account;
        let leg = Leg {
            account: Account::parse(&account).ok_or_else(|| corrupt(format!("transaction {id}: account {account}")))?,
            amount: row.entry_amount,
        };
        if let Some(last) = out.last_mut()
            && last.seq == row.seq
        {
            last.transaction.entries.push(leg);
            continue;
        }
        let key = row.idempotency_key;
        let transaction = Transaction {
            id: TransactionId::parse(&id).map_err(|e| corrupt(e.to_string()))?,
            kind: TransactionKind::parse(&row.kind)
                .ok_or_else(|| corrupt(format!("transaction {id}: kind {}", row.kind)))?,
            tenant: TenantId::parse(&row.tenant_id).map_err(|e| corrupt(e.to_string()))?,
            entries: vec![leg],
            amount: row.amount,
            memo: row.memo,
            idempotency_key: IdempotencyKey::parse(&key).map_err(|e| corrupt(format!("transaction {id}: {e}")))?,
            hold: row.hold_id.map(|h| HoldId::parse(&h)).transpose().map_err(|e| corrupt(e.to_string()))?,
            reverses: row.reverses.map(|r| TransactionId::parse(&r)).transpose().map_err(|e| corrupt(e.to_string()))?,
            created_at: row.created_at,
        };
        out.push(StoredTx {
            seq: row.seq,
            transaction,
            balance_after: Balance { available: row.available_after, held: row.held_after },
            fingerprint: row.fingerprint,
        });
    }
    for stored in &mut out {
        stored.transaction.entries.sort_by_key(|l| l.account.key());
    }
    Ok(out)
}

pub(super) fn hold_from_row(row: HoldRow) -> Result<Hold, StoreError> {
    let id = row.id;
    Ok(Hold {
        state: HoldState::parse(&row.state).ok_or_else(|| corrupt(format!("hold {id}: state {}", row.state)))?,
        id: HoldId::parse(&id).map_err(|e| corrupt(e.to_string()))?,
        tenant: TenantId::parse(&row.tenant_id).map_err(|e| corrupt(e.to_string()))?,
        amount: row.amount,
        expires_at: row.expires_at,
        settled_amount: row.settled_amount,
        created_at: row.created_at,
        closed_at: row.closed_at,
    })
}

/// A tenant's balance from `(account, balance)` rows.
pub(super) fn balance_from_rows(tenant: &TenantId, rows: Vec<(String, i64)>) -> Balance {
    let balances: HashMap<String, i64> = rows.into_iter().collect();
    Balance {
        available: balances.get(&Account::Wallet(tenant.clone()).key()).copied().unwrap_or(0),
        held: balances.get(&Account::Held(tenant.clone()).key()).copied().unwrap_or(0),
    }
}

/// The cursor (a sequence number) as text, and back.
pub(super) fn parse_cursor(cursor: Option<&str>) -> Result<i64, StoreError> {
    cursor.map_or(Ok(0), |c| c.parse::<i64>().map_err(|_| StoreError::NotFound(format!("cursor `{c}`"))))
}

/// The kinds to bind to the nine `kind IN (…)` placeholders: the requested ones padded
/// with `None` (which matches nothing), or all of them.
pub(super) fn kind_params(kinds: &[TransactionKind]) -> [Option<&'static str>; 9] {
    if kinds.is_empty() {
        return TransactionKind::ALL.map(|k| Some(k.as_str()));
    }
    TransactionKind::ALL.map(|k| kinds.contains(&k).then_some(k.as_str()))
}

fn corrupt(message: String) -> StoreError {
    StoreError::Corrupt(message)
}

/// The hold a posting opens or closes.
fn hold_of(posting: &Posting) -> Option<HoldId> {
    posting.hold.as_ref().map(|effect| match effect {
        HoldEffect::Open { hold, .. } | HoldEffect::Close { hold, .. } => hold.clone(),
    })
}

/// A posting applied: its transaction with the legs it moved (`amount` in all; fewer
/// than asked for when it takes at most what is available).
fn applied(posting: &Posting, amount: i64, balance_after: Balance, at: DateTime<Utc>) -> Posted {
    let legs = if posting.capped_account().is_some() { posting.capped_legs(amount) } else { posting.legs.clone() };
    Posted { transaction: posting.transaction(legs, amount, hold_of(posting), at), balance_after, replayed: false }
}

/// A replay found after a retry whose first attempt may have committed: a transaction
/// with this posting's own (freshly drawn) id is that attempt, not an earlier request.
fn own_attempt(posting: &Posting, outcome: Result<Posted, LedgerError>) -> Result<Posted, LedgerError> {
    outcome.map(|mut posted| {
        if posted.replayed && posted.transaction.id == posting.id {
            posted.replayed = false;
        }
        posted
    })
}

/// Whether a Postgres error says the connection is gone (closed while idle in the pool,
/// or the server went away): the statement may be retried on another connection.
fn connection_lost(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) => true,
        // Connection exceptions (08…) and operator intervention (57P01 admin shutdown,
        // 57P02 crash shutdown, 57P03 cannot connect now).
        sqlx::Error::Database(db) => db.code().is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
        _ => false,
    }
}

/// `ledger_post`: one row per posting (see migration 0017).
const PG_POST: &str = "SELECT r_status, r_available, r_held, r_amount, r_detail FROM ledger_post(\
     $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)";

/// One answer of `ledger_post`: status, available, held, amount, detail.
type PgAnswer = (String, Option<i64>, Option<i64>, Option<i64>, Option<String>);

/// `ledger_post`'s arguments: one element per posting, legs flattened.
#[derive(Debug, Default)]
struct PgPostArgs {
    ids: Vec<String>,
    tenants: Vec<String>,
    kinds: Vec<String>,
    memos: Vec<String>,
    keys: Vec<String>,
    fingerprints: Vec<String>,
    leg_counts: Vec<i32>,
    leg_accounts: Vec<String>,
    leg_classes: Vec<String>,
    leg_amounts: Vec<i64>,
    cap_accounts: Vec<Option<String>>,
    hold_ops: Vec<Option<String>>,
    hold_ids: Vec<Option<String>>,
    hold_expires: Vec<Option<DateTime<Utc>>>,
    hold_states: Vec<Option<String>>,
    hold_settled: Vec<Option<i64>>,
    reverses: Vec<Option<String>>,
}

impl PgPostArgs {
    fn new<'a>(postings: impl IntoIterator<Item = (&'a Posting, &'a str)>) -> Self {
        let mut args = Self::default();
        for (posting, fingerprint) in postings {
            args.ids.push(posting.id.to_string());
            args.tenants.push(posting.tenant.to_string());
            args.kinds.push(posting.kind.as_str().to_owned());
            args.memos.push(posting.memo.clone());
            args.keys.push(posting.key.as_str().to_owned());
            args.fingerprints.push(fingerprint.to_owned());
            // `Posting::check` bounds legs to distinct accounts: a handful.
            args.leg_counts.push(i32::try_from(posting.legs.len()).unwrap_or(i32::MAX));
            for leg in &posting.legs {
                args.leg_accounts.push(leg.account.key());
                args.leg_classes.push(leg.account.class().to_owned());
                args.leg_amounts.push(leg.amount);
            }
            args.cap_accounts.push(posting.capped_account().map(Account::key));
            let (op, hold, expires, state, settled) = match &posting.hold {
                None => (None, None, None, None, None),
                Some(HoldEffect::Open { hold, expires_at }) => {
                    (Some("open"), Some(hold), Some(*expires_at), None, None)
                }
                Some(HoldEffect::Close { hold, state, settled }) => {
                    (Some("close"), Some(hold), None, Some(state.as_str()), Some(*settled))
                }
            };
            args.hold_ops.push(op.map(str::to_owned));
            args.hold_ids.push(hold.map(|h| h.to_string()));
            args.hold_expires.push(expires);
            args.hold_states.push(state.map(str::to_owned));
            args.hold_settled.push(settled);
            args.reverses.push(posting.reverses.as_ref().map(|t| t.to_string()));
        }
        args
    }

    /// Runs `ledger_post` on `conn` (its own transaction unless one is open there).
    async fn call(self, conn: &mut sqlx::PgConnection, at: DateTime<Utc>) -> Result<Vec<PgAnswer>, sqlx::Error> {
        sqlx::query_as::<_, PgAnswer>(PG_POST)
            .bind(self.ids)
            .bind(self.tenants)
            .bind(self.kinds)
            .bind(self.memos)
            .bind(self.keys)
            .bind(self.fingerprints)
            .bind(self.leg_counts)
            .bind(self.leg_accounts)
            .bind(self.leg_classes)
            .bind(self.leg_amounts)
            .bind(self.cap_accounts)
            .bind(self.hold_ops)
            .bind(self.hold_ids)
            .bind(self.hold_expires)
            .bind(self.hold_states)
            .bind(self.hold_settled)
            .bind(self.reverses)
            .bind(at)
            .fetch_all(&mut *conn)
            .await
    }
}

/// `ledger_post_set`: the set-based batch of simple postings (see migration 0018).
const PG_POST_SET: &str = "SELECT r_status, r_available, r_held, r_amount, r_detail FROM ledger_post_set(\
     $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";

/// A posting `ledger_post_set` takes: two legs, one of them a tenant account, no hold,
/// no reversal, no cap (debits, grants, purchases). Returns the tenant leg.
fn simple_leg(posting: &Posting) -> Option<&Leg> {
    if posting.hold.is_some() || posting.reverses.is_some() || posting.up_to_available {
        return None;
    }
    match posting.legs.as_slice() {
        [a, b] if a.account.is_constrained() != b.account.is_constrained() => {
            Some(if a.account.is_constrained() { a } else { b })
        }
        _ => None,
    }
}

/// `ledger_post_set`'s arguments: one element per posting (two per posting for legs).
#[derive(Debug, Default)]
struct PgSetArgs {
    ids: Vec<String>,
    tenants: Vec<String>,
    kinds: Vec<String>,
    memos: Vec<String>,
    keys: Vec<String>,
    fingerprints: Vec<String>,
    accounts: Vec<String>,
    classes: Vec<String>,
    deltas: Vec<i64>,
    leg_accounts: Vec<String>,
    leg_amounts: Vec<i64>,
}

impl PgSetArgs {
    /// The arguments, when every posting is simple ([`simple_leg`]).
    fn new<'a>(postings: impl IntoIterator<Item = (&'a Posting, &'a str)>) -> Option<Self> {
        let mut args = Self::default();
        for (posting, fingerprint) in postings {
            let leg = simple_leg(posting)?;
            args.ids.push(posting.id.to_string());
            args.tenants.push(posting.tenant.to_string());
            args.kinds.push(posting.kind.as_str().to_owned());
            args.memos.push(posting.memo.clone());
            args.keys.push(posting.key.as_str().to_owned());
            args.fingerprints.push(fingerprint.to_owned());
            args.accounts.push(leg.account.key());
            args.classes.push(leg.account.class().to_owned());
            args.deltas.push(leg.amount);
            for leg in &posting.legs {
                args.leg_accounts.push(leg.account.key());
                args.leg_amounts.push(leg.amount);
            }
        }
        Some(args)
    }

    /// Runs `ledger_post_set` on `conn` (its own transaction unless one is open there).
    async fn call(self, conn: &mut sqlx::PgConnection, at: DateTime<Utc>) -> Result<Vec<PgAnswer>, sqlx::Error> {
        sqlx::query_as::<_, PgAnswer>(PG_POST_SET)
            .bind(self.ids)
            .bind(self.tenants)
            .bind(self.kinds)
            .bind(self.memos)
            .bind(self.keys)
            .bind(self.fingerprints)
            .bind(self.accounts)
            .bind(self.classes)
            .bind(self.deltas)
            .bind(self.leg_accounts)
            .bind(self.leg_amounts)
            .bind(at)
            .fetch_all(&mut *conn)
            .await
    }
}

/// A lone debit of a tenant's wallet (every paid call) in one plain statement, without
/// `ledger_post_set`'s procedural steps (~100 µs of server time of a lone debit's ~190
/// on this machine, measured with pgbench beside it): it locks the tenant's held
/// balance row first, if any (the lock order of 0017: account key order), then takes
/// the amount from the wallet only when the key is unused and the wallet covers it,
/// and only then writes the transaction (with both balances after) and its two
/// entries. It answers the balances after, or nothing when it wrote nothing (the key
/// used, the wallet short): `ledger_post_set` then answers that posting exactly (a
/// replay, a conflict, or the refusal with the balance under its lock). A key
/// committed meanwhile by another posting fails the statement on the unique key, as
/// `ledger_post_set` does. `$1` id, `$2` tenant, `$3` kind, `$4` memo, `$5` key, `$6`
/// fingerprint, `$7` the amount, `$8` the wallet, `$9` the held account, `$10`/`$11`
/// both legs, `$12` the time.
const PG_LONE_DEBIT: &str = "\
    WITH sync AS (SELECT set_config('synchronous_commit', 'on', true)), \
    held AS (SELECT balance FROM ledger_balances WHERE account = $9 FOR UPDATE), \
    debited AS ( \
        UPDATE ledger_balances SET balance = balance - $7 \
         WHERE account = $8 AND balance >= $7 \
           AND NOT EXISTS (SELECT 1 FROM ledger_transactions WHERE tenant_id = $2 AND idempotency_key = $5) \
           AND (SELECT count(*) FROM held) >= 0 \
        RETURNING balance), \
    tx AS ( \
        INSERT INTO ledger_transactions (id, tenant_id, kind, amount, memo, idempotency_key, fingerprint, \
                                         available_after, held_after, created_at) \
        SELECT $1, $2, $3, $7, $4, $5, $6, d.balance, coalesce((SELECT balance FROM held), 0), $12 \
          FROM debited d \
        RETURNING available_after, held_after), \
    entries AS ( \
        INSERT INTO ledger_entries (transaction_id, account, amount) \
        SELECT $1, e.account, e.amount FROM tx, unnest($10::text[], $11::bigint[]) WITH ORDINALITY AS e (account, amount, n) \
         ORDER BY e.n) \
    SELECT tx.available_after, tx.held_after FROM sync LEFT JOIN tx ON true";

/// A batch of lone wallet debits of different tenants ([`lone_wallet_debits`]) in one
/// plain statement, as [`PG_LONE_DEBIT`] does one: it locks the batch's balance rows
/// (wallets and held, in account key order: the lock order of 0017 and
/// `ledger_post_set`), keeps the debits whose key is unused and whose wallet covers
/// them, takes their amounts from the wallets and writes their transactions (in the
/// batch's order, so `seq` follows arrival) and entries. Tenants are distinct, so each
/// debit is decided on its own wallet as if posted alone. It answers one row per
/// posting, in order: the balances after, or nothing when that posting wrote nothing
/// (`ledger_post_set` then answers it exactly). Against `ledger_post_set` on a batch
/// of 16 it costs 5–15% less server time (pgbench, one client). `$1` ids, `$2`
/// tenants, `$3` kinds, `$4` memos, `$5` keys, `$6` fingerprints, `$7` amounts, `$8`
/// wallets, `$9` held accounts, `$10`/`$11` the legs (two per posting), `$12` the
/// time.
const PG_LONE_DEBITS: &str = "\
    WITH sync AS (SELECT set_config('synchronous_commit', 'on', true)), \
    p AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
                               $7::bigint[], $8::text[], $9::text[]) \
            WITH ORDINALITY AS p (id, tenant, kind, memo, key, fingerprint, amount, wallet, held, o)), \
    locked AS (SELECT b.account, b.balance FROM ledger_balances b \
                WHERE b.account = ANY ($8::text[] || $9::text[]) ORDER BY b.account FOR UPDATE), \
    go AS ( \
        SELECT p.*, w.balance - p.amount AS available, coalesce(h.balance, 0) AS held_balance \
          FROM p JOIN locked w ON w.account = p.wallet LEFT JOIN locked h ON h.account = p.held \
         WHERE w.balance >= p.amount \
           AND NOT EXISTS (SELECT 1 FROM ledger_transactions t \
                            WHERE t.tenant_id = p.tenant AND t.idempotency_key = p.key)), \
    debited AS (UPDATE ledger_balances b SET balance = g.available FROM go g WHERE b.account = g.wallet), \
    tx AS ( \
        INSERT INTO ledger_transactions (id, tenant_id, kind, amount, memo, idempotency_key, fingerprint, \
                                         available_after, held_after, created_at) \
        SELECT g.id, g.tenant, g.kind, g.amount, g.memo, g.key, g.fingerprint, g.available, g.held_balance, $12 \
          FROM go g ORDER BY g.o), \
    entries AS ( \
        INSERT INTO ledger_entries (transaction_id, account, amount) \
        SELECT g.id, l.account, l.amount \
          FROM go g JOIN unnest($10::text[], $11::bigint[]) WITH ORDINALITY AS l (account, amount, n) \
            ON (l.n + 1) / 2 = g.o \
         ORDER BY l.n) \
    SELECT g.available, g.held_balance FROM sync CROSS JOIN p LEFT JOIN go g ON g.o = p.o ORDER BY p.o";

/// The wallet leg of a posting [`PG_LONE_DEBIT`] takes: a simple posting
/// ([`simple_leg`]) taking credits from the tenant's wallet.
fn lone_wallet_debit(posting: &Posting) -> Option<&Leg> {
    simple_leg(posting).filter(|leg| leg.amount < 0 && matches!(leg.account, Account::Wallet(_)))
}

/// Runs [`PG_LONE_DEBIT`]: `ledger_post`'s answer when it posted, `None` when it wrote
/// nothing.
async fn pg_lone_debit(
    conn: &mut sqlx::PgConnection,
    posting: &Posting,
    fingerprint: &str,
    wallet: &Leg,
    at: DateTime<Utc>,
) -> Result<Option<PgAnswer>, sqlx::Error> {
    let amount = -wallet.amount;
    let (legs, amounts): (Vec<String>, Vec<i64>) = posting.legs.iter().map(|l| (l.account.key(), l.amount)).unzip();
    let (available, held) = sqlx::query_as::<_, (Option<i64>, Option<i64>)>(PG_LONE_DEBIT)
        .bind(posting.id.as_str())
        .bind(posting.tenant.as_str())
        .bind(posting.kind.as_str())
        .bind(&posting.memo)
        .bind(posting.key.as_str())
        .bind(fingerprint)
        .bind(amount)
        .bind(wallet.account.key())
        .bind(Account::Held(posting.tenant.clone()).key())
        .bind(legs)
        .bind(amounts)
        .bind(at)
        .fetch_one(&mut *conn)
        .await?;
    Ok(available.map(|available| ("posted".to_owned(), Some(available), held, Some(amount), None)))
}

/// The wallet legs of a batch [`PG_LONE_DEBITS`] takes: lone wallet debits
/// ([`lone_wallet_debit`]), each of another tenant.
fn lone_wallet_debits<'a>(postings: &[(&'a Posting, &str)]) -> Option<Vec<&'a Leg>> {
    let mut tenants = std::collections::HashSet::with_capacity(postings.len());
    postings
        .iter()
        .map(|(posting, _)| lone_wallet_debit(posting).filter(|_| tenants.insert(posting.tenant.as_str())))
        .collect()
}

/// Runs [`PG_LONE_DEBITS`]: per posting, in order, `ledger_post`'s answer when it
/// posted, `None` when it wrote nothing.
async fn pg_lone_debits(
    conn: &mut sqlx::PgConnection,
    postings: &[(&Posting, &str)],
    wallets: &[&Leg],
    at: DateTime<Utc>,
) -> Result<Vec<Option<PgAnswer>>, sqlx::Error> {
    let n = postings.len();
    let (mut ids, mut tenants, mut kinds, mut memos, mut keys, mut fingerprints) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut amounts, mut wallet_accounts, mut held_accounts) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut leg_accounts, mut leg_amounts) = (Vec::with_capacity(2 * n), Vec::with_capacity(2 * n));
    for ((posting, fingerprint), wallet) in postings.iter().zip(wallets) {
        ids.push(posting.id.as_str());
        tenants.push(posting.tenant.as_str());
        kinds.push(posting.kind.as_str());
        memos.push(posting.memo.as_str());
        keys.push(posting.key.as_str());
        fingerprints.push(*fingerprint);
        amounts.push(-wallet.amount);
        wallet_accounts.push(wallet.account.key());
        held_accounts.push(Account::Held(posting.tenant.clone()).key());
        for leg in &posting.legs {
            leg_accounts.push(leg.account.key());
            leg_amounts.push(leg.amount);
        }
    }
    let rows = sqlx::query_as::<_, (Option<i64>, Option<i64>)>(PG_LONE_DEBITS)
        .bind(ids)
        .bind(tenants)
        .bind(kinds)
        .bind(memos)
        .bind(keys)
        .bind(fingerprints)
        .bind(&amounts)
        .bind(wallet_accounts)
        .bind(held_accounts)
        .bind(leg_accounts)
        .bind(leg_amounts)
        .bind(at)
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows
        .into_iter()
        .zip(amounts)
        .map(|((available, held), amount)| {
            available.map(|available| ("posted".to_owned(), Some(available), held, Some(amount), None))
        })
        .collect())
}

/// Posts `postings` in one statement: a lone wallet debit with [`PG_LONE_DEBIT`], lone
/// wallet debits of different tenants with [`PG_LONE_DEBITS`] (and, for those that
/// wrote nothing, `ledger_post_set` to say why, a second statement), else
/// `ledger_post_set` when all are simple, else `ledger_post`. Each answers one row per
/// posting, in order. An `Err` after the first statement leaves that one's postings
/// committed (the caller's fallback recognises them by their own transaction ids).
async fn pg_post_call(
    conn: &mut sqlx::PgConnection,
    postings: &[(&Posting, &str)],
    at: DateTime<Utc>,
) -> Result<Vec<PgAnswer>, sqlx::Error> {
    if let [(posting, fingerprint)] = postings
        && let Some(wallet) = lone_wallet_debit(posting)
        && let Some(answer) = pg_lone_debit(conn, posting, fingerprint, wallet, at).await?
    {
        return Ok(vec![answer]);
    }
    if postings.len() > 1
        && let Some(wallets) = lone_wallet_debits(postings)
    {
        let answers = pg_lone_debits(conn, postings, &wallets, at).await?;
        let unwritten: Vec<(&Posting, &str)> =
            postings.iter().zip(&answers).filter(|(_, answer)| answer.is_none()).map(|(p, _)| *p).collect();
        let mut why = match PgSetArgs::new(unwritten.iter().copied()) {
            Some(args) if !unwritten.is_empty() => args.call(conn, at).await?.into_iter(),
            _ => Vec::new().into_iter(),
        };
        return Ok(answers.into_iter().map_while(|answer| answer.or_else(|| why.next())).collect());
    }
    match PgSetArgs::new(postings.iter().copied()) {
        Some(args) => args.call(conn, at).await,
        None => PgPostArgs::new(postings.iter().copied()).call(conn, at).await,
    }
}

/// What a failed `ledger_post` call means for a posting: a unique violation names the
/// posting (its key, hold or reversal was taken meanwhile), anything else is the backend.
fn pg_call_error(posting: &Posting, err: sqlx::Error) -> LedgerError {
    super::map_err(&format!("transaction {}", posting.key))(err).into()
}

/// A kept connection's posting counts at which its session's cached plans are dropped
/// (`DISCARD PLANS`), so `ledger_post`'s statements are planned again for the tables as
/// they are now. Plans are made once per session (migration 0018) and kept until the
/// server invalidates them, which an `ANALYZE` does; but a plan made while the ledger was
/// young, before autovacuum first analysed it (a minute at the least), costs a tenant's
/// key lookup as one row by either index on `tenant_id` and may take
/// `ledger_transactions_by_tenant`, which then reads the tenant's whole history on every
/// posting: the ledger bench's fresh database read 85 million rows that way, and one
/// tenant's debits fell to ~700 a second. Replanned at these counts, the plans follow
/// the tables' growth through their young minutes; afterwards the statistics do.
const REPLAN_AT_POSTINGS: [u64; 3] = [64, 1_024, 16_384];

/// The pool's connections that postings keep between them (at most one per lane of the
/// group commit, [`maestro_core::LedgerStore::posting_lanes`]), the one used last on
/// top, each with how many postings it ran. They stay checked out of the pool (and count
/// in its size) while kept here. On both backends a posting through the pool paid for
/// it: Postgres pings a connection on its way out and back, and an SQLite connection
/// handed out in turn finds its page cache stale (another connection wrote since) and
/// reads every page again (~30–50 µs of a lone debit's ~110 on 8 connections in turn).
pub(super) struct LedgerConnections<DB: sqlx::Database> {
    kept: std::sync::Mutex<Vec<(PoolConnection<DB>, u64)>>,
    capacity: usize,
}

impl<DB: sqlx::Database> std::fmt::Debug for LedgerConnections<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerConnections").field("kept", &self.lock().len()).field("capacity", &self.capacity).finish()
    }
}

/// A pooled connection given back to the pool is pinged by a task the pool spawns, which
/// needs a Tokio runtime: when the store goes away outside one (its last handle dropped
/// after its runtime stopped), the kept connections are detached from the pool and just
/// closed instead, without a panic.
impl<DB: sqlx::Database> Drop for LedgerConnections<DB> {
    fn drop(&mut self) {
        if tokio::runtime::Handle::try_current().is_err() {
            for (conn, _) in self.lock().drain(..) {
                drop(conn.detach());
            }
        }
    }
}

impl<DB: sqlx::Database> LedgerConnections<DB> {
    /// Keeps at most `capacity` connections.
    pub(super) fn new(capacity: usize) -> Self {
        Self { kept: std::sync::Mutex::default(), capacity }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(PoolConnection<DB>, u64)>> {
        // Each step under the lock is one push or pop: the list is whole after a panic.
        self.kept.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The connection kept last, with its posting count.
    fn take(&self) -> Option<(PoolConnection<DB>, u64)> {
        self.lock().pop()
    }

    /// Keeps `conn` for the next posting, or hands it back when enough are kept.
    fn keep(&self, conn: PoolConnection<DB>, postings: u64) -> Option<PoolConnection<DB>> {
        let mut kept = self.lock();
        if kept.len() < self.capacity {
            kept.push((conn, postings));
            return None;
        }
        Some(conn)
    }
}

/// A posting's connection: kept for the next posting once [`LedgerConnection::keep`]
/// says its statements ran to their end, else given back to the pool (which checks it)
/// or, after [`LedgerConnection::close`], closed.
struct LedgerConnection<'a> {
    conn: Option<PoolConnection<sqlx::Postgres>>,
    home: &'a LedgerConnections<sqlx::Postgres>,
    /// Postings run on it while kept.
    postings: u64,
    /// Its statements so far ran to their end: kept when dropped.
    keep: bool,
    /// A statement on it failed in the backend, or it is closing: never kept.
    spoiled: bool,
}

impl<'a> LedgerConnection<'a> {
    fn new(conn: PoolConnection<sqlx::Postgres>, postings: u64, home: &'a LedgerConnections<sqlx::Postgres>) -> Self {
        Self { conn: Some(conn), home, postings, keep: false, spoiled: false }
    }

    fn get(&mut self) -> &mut sqlx::PgConnection {
        self.conn.as_deref_mut().expect("a ledger connection is present until dropped")
    }

    /// Counts a posting about to run on it, first dropping the session's cached plans
    /// when the count is one of [`REPLAN_AT_POSTINGS`]. A failure here is the
    /// connection's, and the posting's statement then meets it.
    async fn count_posting(&mut self) {
        self.postings += 1;
        if REPLAN_AT_POSTINGS.contains(&self.postings)
            && let Err(err) = sqlx::query("DISCARD PLANS").execute(self.get()).await
        {
            tracing::debug!(error = %err, "cannot drop a ledger connection's cached plans");
        }
    }

    /// The posting's statements ran to their end: the connection may serve the next one.
    fn keep(&mut self) {
        self.keep = !self.spoiled;
    }

    /// Kept after `outcome`, unless the backend failed in it (a lost connection, a
    /// timeout, a statement cut off): such a connection goes back to the pool, which
    /// checks it before anyone uses it again.
    fn keep_unless_lost<T>(&mut self, outcome: &Result<T, LedgerError>) {
        if matches!(outcome, Err(LedgerError::Store(_))) {
            self.spoiled = true;
        }
        self.keep();
    }

    /// The connection failed: close it instead of keeping it or giving it back.
    fn close(&mut self) {
        self.spoiled = true;
        self.keep = false;
        if let Some(conn) = &mut self.conn {
            conn.close_on_drop();
        }
    }
}

impl Drop for LedgerConnection<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        let unkept = if self.keep { self.home.keep(conn, self.postings) } else { Some(conn) };
        drop(unkept);
    }
}

impl PostgresStore {
    /// Postings in flight at once ([`maestro_core::LedgerStore::posting_lanes`]): one.
    /// A batch's cost is mostly per batch (the round trip, the statement's start, the
    /// commit), so while one is in flight the postings arriving meanwhile are cheaper
    /// joined into the next than sent side by side in smaller batches, which only
    /// compete for the server's CPU. The ledger bench (two cores, durable commits) with
    /// 16 callers on their own tenants costs 1.17× the raw statement with one lane,
    /// 1.38× with two, 1.48× with three and 1.71× with four; with 64 callers 0.58–0.64×
    /// whatever the count. One process's ceiling is then one server process's CPU per
    /// posting in a batch (~20,000 postings a second here); replicas add their own.
    pub(super) const POSTING_LANES: usize = 1;

    /// A connection for a posting: the one a posting kept last, else one from the pool
    /// (an idle one without its liveness ping, `try_acquire`, when there is one);
    /// `true` when it was not checked.
    async fn ledger_connection(&self) -> Result<(LedgerConnection<'_>, bool), StoreError> {
        let home = &*self.ledger_connections;
        let kept = home.take();
        let (conn, postings, unchecked) = match kept.or_else(|| self.pool.try_acquire().map(|conn| (conn, 0))) {
            Some((conn, postings)) => (conn, postings, true),
            None => (self.pool.acquire().await.map_err(super::backend_err)?, 0, false),
        };
        let mut conn = LedgerConnection::new(conn, postings, home);
        conn.count_posting().await;
        Ok((conn, unchecked))
    }

    /// A connection the pool checked, for the retry of a posting whose unchecked one
    /// failed.
    async fn ledger_checked_connection(&self) -> Result<LedgerConnection<'_>, StoreError> {
        let conn = self.pool.acquire().await.map_err(super::backend_err)?;
        Ok(LedgerConnection::new(conn, 0, &self.ledger_connections))
    }

    /// The outcome of one of `ledger_post`'s answers, read on `conn` (a replay is the
    /// stored original).
    async fn ledger_answer(
        conn: &mut sqlx::PgConnection,
        posting: &Posting,
        fingerprint: &str,
        answer: PgAnswer,
        at: DateTime<Utc>,
    ) -> Result<Posted, LedgerError> {
        let (status, available, held, amount, detail) = answer;
        let hold = || hold_of(posting).map_or_else(|| "-".to_owned(), |h| h.to_string());
        match status.as_str() {
            "posted" => {
                let balance = Balance { available: available.unwrap_or(0), held: held.unwrap_or(0) };
                Ok(applied(posting, amount.unwrap_or_else(|| posting.amount()), balance, at))
            }
            "replay" | "conflict" => match Self::ledger_replay(&mut *conn, posting, fingerprint).await? {
                Some(posted) => Ok(posted),
                None => Err(StoreError::Corrupt(format!("transaction {} vanished", posting.key)).into()),
            },
            "reversed" => {
                let original =
                    posting.reverses.clone().ok_or_else(|| corrupt("reversal without an original".into()))?;
                Err(LedgerError::AlreadyReversed(original))
            }
            "hold_missing" => Err(LedgerError::NotFound(format!("hold {}", hold()))),
            "hold_closed" => {
                let state = detail.as_deref().and_then(HoldState::parse);
                let state = state.ok_or_else(|| corrupt(format!("hold {}: state {detail:?}", hold())))?;
                let hold = hold_of(posting).ok_or_else(|| corrupt("hold refusal without a hold".into()))?;
                Err(LedgerError::HoldClosed { hold, state })
            }
            "hold_unreleased" => {
                Err(LedgerError::Unbalanced(format!("posting does not release all of hold {}", hold())))
            }
            "insufficient" => Err(LedgerError::Insufficient {
                available: available.unwrap_or(0),
                needed: amount.unwrap_or_else(|| posting.amount()),
            }),
            other => Err(corrupt(format!("ledger_post answered `{other}`")).into()),
        }
    }

    /// One posting inside `conn`'s open transaction (a unit of work): one statement.
    pub(super) async fn ledger_apply(
        conn: &mut sqlx::PgConnection,
        posting: &Posting,
        fingerprint: &str,
        at: DateTime<Utc>,
    ) -> Result<Posted, LedgerError> {
        let answers = PgPostArgs::new([(posting, fingerprint)])
            .call(&mut *conn, at)
            .await
            .map_err(|e| pg_call_error(posting, e))?;
        let answer = answers.into_iter().next().ok_or_else(|| corrupt("ledger_post answered nothing".into()))?;
        Self::ledger_answer(conn, posting, fingerprint, answer, at).await
    }

    /// One posting in its own transaction: one statement, one round trip (see the
    /// module notes for the unchecked connection and its one retry). `retried` says the
    /// posting may have committed in an attempt whose answer was lost.
    async fn ledger_post_one(
        &self,
        posting: &Posting,
        at: DateTime<Utc>,
        retried: bool,
    ) -> Result<Posted, LedgerError> {
        posting.check()?;
        let fingerprint = posting.fingerprint();
        let (mut conn, unchecked) = self.ledger_connection().await?;
        let mut retried = retried;
        let one = [(posting, fingerprint.as_str())];
        let mut result = pg_post_call(conn.get(), &one, at).await;
        if unchecked && result.as_ref().is_err_and(connection_lost) {
            conn.close();
            drop(conn);
            conn = self.ledger_checked_connection().await?;
            retried = true;
            result = pg_post_call(conn.get(), &one, at).await;
        }
        let outcome = match result {
            Ok(answers) => match answers.into_iter().next() {
                Some(answer) => Self::ledger_answer(conn.get(), posting, &fingerprint, answer, at).await,
                None => Err(corrupt("ledger_post answered nothing".into()).into()),
            },
            Err(err) => {
                if connection_lost(&err) {
                    conn.close();
                }
                let err = pg_call_error(posting, err);
                Self::ledger_after_failure(conn.get(), posting, &fingerprint, err).await
            }
        };
        conn.keep_unless_lost(&outcome);
        if retried { own_attempt(posting, outcome) } else { outcome }
    }

    /// Postings in one statement and one commit; each answered as if posted alone, in
    /// order. When the call fails as a whole, each posting is posted on its own.
    pub(super) async fn ledger_post_many(
        &self,
        postings: &[Posting],
        at: DateTime<Utc>,
    ) -> Vec<Result<Posted, LedgerError>> {
        if postings.len() < 2 {
            let mut outcomes = Vec::new();
            for posting in postings {
                outcomes.push(self.ledger_post_one(posting, at, false).await);
            }
            return outcomes;
        }
        let checked: Vec<Result<String, LedgerError>> =
            postings.iter().map(|p| p.check().map(|()| p.fingerprint())).collect();
        let valid = || postings.iter().zip(&checked).filter_map(|(p, f)| Some((p, f.as_ref().ok()?.as_str())));
        let Ok((mut conn, _)) = self.ledger_connection().await else {
            return self.ledger_post_each(postings, at, false).await;
        };
        let batch: Vec<(&Posting, &str)> = valid().collect();
        let answers = match pg_post_call(conn.get(), &batch, at).await {
            Ok(answers) if answers.len() == batch.len() => answers,
            // Answered in part, or failed: the batch rolled back, unless the connection
            // died after its commit or a first statement committed before a second
            // failed, so each posting on its own may find its own transaction (which is
            // no replay, `own_attempt`).
            Ok(_) => return self.ledger_post_each(postings, at, true).await,
            Err(err) => {
                if connection_lost(&err) {
                    conn.close();
                } else {
                    conn.keep();
                }
                drop(conn);
                return self.ledger_post_each(postings, at, true).await;
            }
        };
        let mut answers = answers.into_iter();
        let mut outcomes = Vec::with_capacity(postings.len());
        for (posting, fingerprint) in postings.iter().zip(checked) {
            let outcome = match (fingerprint, answers.next()) {
                (Err(err), _) => Err(err),
                (Ok(fingerprint), Some(answer)) => {
                    Self::ledger_answer(conn.get(), posting, &fingerprint, answer, at).await
                }
                (Ok(_), None) => Err(corrupt("ledger_post answered too few".into()).into()),
            };
            conn.keep_unless_lost(&outcome);
            outcomes.push(outcome);
        }
        outcomes
    }

    /// One posting in its own transaction.
    pub(super) async fn ledger_post(&self, posting: &Posting, at: DateTime<Utc>) -> Result<Posted, LedgerError> {
        self.ledger_post_one(posting, at, false).await
    }

    /// The fallback of a failed batch: each posting on its own, in order.
    async fn ledger_post_each(
        &self,
        postings: &[Posting],
        at: DateTime<Utc>,
        retried: bool,
    ) -> Vec<Result<Posted, LedgerError>> {
        let mut outcomes = Vec::with_capacity(postings.len());
        for posting in postings {
            outcomes.push(self.ledger_post_one(posting, at, retried).await);
        }
        outcomes
    }
}

/// What a posting's checks decided on SQLite: the legs to write (scaled down when it
/// takes at most what is available) and the total they move.
struct Plan {
    legs: Vec<Leg>,
    amount: i64,
}

/// A lone debit's statements (see [`SqliteStore::ledger_post`]), to run under the write
/// lock: the conditional update is the only check, refusing (writing nothing) when the
/// key was used before, the reversed transaction is already reversed, or the account
/// would go below zero; each later write runs only when the one before it wrote
/// (`changes() = 1`); the last row says what happened (written, key used, reversed,
/// the wallet and held balances). Parameters: `$1` the debited account, `$2` the
/// (negative) amount, `$3` the tenant, `$4` the key, `$5` what it reverses, `$6` the
/// wallet, `$7` the held account, `$8` the transaction id, `$9` its kind, `$10` the
/// amount moved, `$11` the memo, `$12` the fingerprint, `$13` the time, `$14`–`$17` the
/// two legs.
macro_rules! lone_debit_body {
    () => {
        "UPDATE ledger_balances SET balance = balance + $2 WHERE account = $1 AND balance + $2 >= 0 \
         AND NOT EXISTS (SELECT 1 FROM ledger_transactions WHERE tenant_id = $3 AND idempotency_key = $4) \
         AND ($5 IS NULL OR NOT EXISTS (SELECT 1 FROM ledger_transactions WHERE reverses = $5)); \
         INSERT INTO ledger_transactions (id, tenant_id, kind, amount, memo, idempotency_key, fingerprint, \
         hold_id, reverses, available_after, held_after, created_at) \
         SELECT $8, $3, $9, $10, $11, $4, $12, NULL, $5, \
         COALESCE((SELECT balance FROM ledger_balances WHERE account = $6), 0), \
         COALESCE((SELECT balance FROM ledger_balances WHERE account = $7), 0), $13 \
         WHERE changes() = 1; \
         INSERT INTO ledger_entries (transaction_id, account, amount) \
         SELECT $8, column1, column2 FROM (VALUES ($14, $15), ($16, $17)) WHERE changes() = 1; \
         SELECT changes() > 0, \
         EXISTS (SELECT 1 FROM ledger_transactions WHERE tenant_id = $3 AND idempotency_key = $4), \
         $5 IS NOT NULL AND EXISTS (SELECT 1 FROM ledger_transactions WHERE reverses = $5), \
         COALESCE((SELECT balance FROM ledger_balances WHERE account = $6), 0), \
         COALESCE((SELECT balance FROM ledger_balances WHERE account = $7), 0)"
    };
}

/// The arguments of one [`lone_debit_body!`].
const LONE_DEBIT_ARGUMENTS: usize = 17;

/// `sql` with every numbered argument `$n` made `$(n + offset)`.
fn renumbered(sql: &str, offset: usize) -> String {
    let mut out = String::with_capacity(sql.len() + sql.len() / 16);
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        match rest[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&(n + offset).to_string()),
            Err(_) => out.push_str(&rest[..digits]),
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

/// What a lone debit's command decided.
enum LoneDebit {
    /// Written.
    Posted(Posted),
    /// Nothing written: the key was used before (a replay or a conflict).
    KeyUsed,
    /// Nothing written: the refusal.
    Refused(LedgerError),
}

impl SqliteStore {
    /// A connection for a posting: the one a posting kept last (its page cache still
    /// current when no other connection wrote since), else one from the pool.
    async fn ledger_connection(&self) -> Result<ClosedUnlessSettled<'_>, StoreError> {
        let home = &*self.ledger_connections;
        let conn = match home.take() {
            Some((conn, _)) => conn,
            None => self.pool.acquire().await.map_err(super::backend_err)?,
        };
        Ok(ClosedUnlessSettled::new(conn, home))
    }

    /// Postings in flight at once ([`maestro_core::LedgerStore::posting_lanes`]): one.
    /// SQLite has one writer at a time, so a second batch in flight only waits for the
    /// write lock (in `busy_timeout`'s sleeps) while its postings could have joined the
    /// next batch. With four lanes the ledger bench's 16 callers on their own tenants
    /// cost 1.85× the raw statement under `durability = full` (4.5× under `normal`);
    /// with one, 0.81× (2.9×).
    pub(super) const POSTING_LANES: usize = 1;

    /// A lone debit in one worker command ([`SqliteStore::ledger_post`]'s fast path):
    /// the write transaction around [`lone_debit_body!`] (the conditional update, the
    /// transaction row, its entries and the outcome), then the commit.
    const ONE_COMMAND_DEBIT: &'static str = concat!("BEGIN IMMEDIATE; ", lone_debit_body!(), "; COMMIT");

    /// [`lone_debit_body!`] alone, for a debit in a batch's open write transaction.
    const LONE_DEBIT_BODY: &'static str = lone_debit_body!();

    /// Lone debits one batch command holds at most ([`Self::lone_debits_command`]).
    /// Each count is a statement of its own in the connection's cache (sqlx keeps 100),
    /// twice (with and without its transaction).
    const LONE_DEBITS_PER_COMMAND: usize = 16;

    /// `n` (1 to [`Self::LONE_DEBITS_PER_COMMAND`]) copies of [`lone_debit_body!`], one
    /// after another, the `i`th (from 0) with its arguments renumbered `$(17i + 1)` to
    /// `$(17i + 17)`; between `BEGIN IMMEDIATE` and `COMMIT` when `whole`. Made once.
    fn lone_debits_command(n: usize, whole: bool) -> &'static str {
        static COMMANDS: std::sync::OnceLock<Vec<[String; 2]>> = std::sync::OnceLock::new();
        let commands = COMMANDS.get_or_init(|| {
            (1..=SqliteStore::LONE_DEBITS_PER_COMMAND)
                .map(|n| {
                    let bodies: Vec<String> =
                        (0..n).map(|i| renumbered(SqliteStore::LONE_DEBIT_BODY, LONE_DEBIT_ARGUMENTS * i)).collect();
                    let bodies = bodies.join("; ");
                    let whole = format!("BEGIN IMMEDIATE; {bodies}; COMMIT");
                    [bodies, whole]
                })
                .collect()
        });
        commands[n - 1][usize::from(whole)].as_str()
    }

    /// The debited leg, then both legs in order, when `posting` takes the one-command
    /// path: two legs, one of them a debit of a tenant account and the other a platform
    /// account, no hold, not capped at what is available.
    fn ledger_lone_debit(posting: &Posting) -> Option<(&Leg, &Leg, &Leg)> {
        let [a, b] = posting.legs.as_slice() else { return None };
        if posting.hold.is_some() || posting.capped_account().is_some() {
            return None;
        }
        match (a.account.is_constrained(), b.account.is_constrained()) {
            (true, false) if a.amount < 0 => Some((a, a, b)),
            (false, true) if b.amount < 0 => Some((b, a, b)),
            _ => None,
        }
    }

    /// Runs `sql` (the one-command debit, or [`lone_debit_body!`] inside an open write
    /// transaction) for a lone debit on `conn`: one hop to its worker thread. `Err` is
    /// the command's failure (it may have stopped half-way); otherwise the outcome,
    /// where a used key still needs [`Self::ledger_replay`].
    async fn ledger_run_lone_debit(
        conn: &mut sqlx::SqliteConnection,
        sql: &'static str,
        posting: &Posting,
        debit: &Leg,
        legs: [&Leg; 2],
        fingerprint: &str,
        at: DateTime<Utc>,
    ) -> Result<LoneDebit, sqlx::Error> {
        let query = Self::bind_lone_debit(sqlx::query(sql), posting, debit, legs, fingerprint, at);
        let rows = query.fetch_all(conn).await?;
        let row = rows.first().ok_or(sqlx::Error::RowNotFound)?;
        Self::lone_debit_outcome(row, posting, debit, at)
    }

    /// `query` with the arguments of [`lone_debit_body!`] for `posting` added (its
    /// `$1`–`$17`, or the next 17 when several bodies share a command).
    fn bind_lone_debit<'q>(
        query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
        posting: &'q Posting,
        debit: &Leg,
        [a, b]: [&Leg; 2],
        fingerprint: &'q str,
        at: DateTime<Utc>,
    ) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
        let (wallet, held) = (Account::Wallet(posting.tenant.clone()), Account::Held(posting.tenant.clone()));
        query
            .bind(debit.account.key())
            .bind(debit.amount)
            .bind(posting.tenant.as_str())
            .bind(posting.key.as_str())
            .bind(posting.reverses.as_ref().map(|t| t.as_str()))
            .bind(wallet.key())
            .bind(held.key())
            .bind(posting.id.as_str())
            .bind(posting.kind.as_str())
            .bind(-debit.amount)
            .bind(&posting.memo)
            .bind(fingerprint)
            .bind(at)
            .bind(a.account.key())
            .bind(a.amount)
            .bind(b.account.key())
            .bind(b.amount)
    }

    /// What a lone debit's statements decided, from the row the last of them answered.
    fn lone_debit_outcome(
        row: &sqlx::sqlite::SqliteRow,
        posting: &Posting,
        debit: &Leg,
        at: DateTime<Utc>,
    ) -> Result<LoneDebit, sqlx::Error> {
        use sqlx::Row as _;
        let amount = -debit.amount;
        let column = |i: usize| row.try_get::<i64, _>(i);
        let (written, key_used, reversed) = (column(0)? != 0, column(1)? != 0, column(2)? != 0);
        let balance_after = Balance { available: column(3)?, held: column(4)? };
        Ok(if written {
            let transaction = posting.transaction(posting.legs.clone(), amount, None, at);
            LoneDebit::Posted(Posted { transaction, balance_after, replayed: false })
        } else if key_used {
            LoneDebit::KeyUsed
        } else if let (true, Some(original)) = (reversed, &posting.reverses) {
            LoneDebit::Refused(LedgerError::AlreadyReversed(original.clone()))
        } else {
            let wallet = matches!(debit.account, Account::Wallet(_));
            let available = if wallet { balance_after.available } else { balance_after.held };
            LoneDebit::Refused(LedgerError::Insufficient { available, needed: amount })
        })
    }

    /// Posts a lone debit with [`Self::ONE_COMMAND_DEBIT`]: one hop to the connection's
    /// worker thread (the pool does not ping, see `sqlite.rs`). The connection goes back
    /// to the pool only when the whole command ran, so it never carries an open
    /// transaction: after an error, or when this future is dropped mid-command, it is
    /// closed instead, which rolls back whatever the command left open.
    async fn ledger_post_lone_debit(
        &self,
        posting: &Posting,
        debit: &Leg,
        legs: [&Leg; 2],
        fingerprint: &str,
        at: DateTime<Utc>,
    ) -> Result<Posted, LedgerError> {
        let be = super::backend_err;
        let mut conn = self.ledger_connection().await?;
        let outcome =
            Self::ledger_run_lone_debit(conn.get(), Self::ONE_COMMAND_DEBIT, posting, debit, legs, fingerprint, at)
                .await;
        match outcome {
            Ok(outcome) => {
                conn.settle();
                Self::ledger_answer_lone_debit(conn.get(), posting, fingerprint, outcome).await
            }
            Err(err) => {
                drop(conn);
                let err = super::map_err(&format!("transaction {}", posting.key))(err);
                let mut conn = self.pool.acquire().await.map_err(be)?;
                Self::ledger_after_failure(&mut conn, posting, fingerprint, err.into()).await
            }
        }
    }

    /// A lone debit's answer: a used key is answered by the posting that used it (a
    /// replay, or a conflict for another request).
    async fn ledger_answer_lone_debit(
        conn: &mut sqlx::SqliteConnection,
        posting: &Posting,
        fingerprint: &str,
        outcome: LoneDebit,
    ) -> Result<Posted, LedgerError> {
        match outcome {
            LoneDebit::Posted(posted) => Ok(posted),
            LoneDebit::Refused(err) => Err(err),
            LoneDebit::KeyUsed => Self::ledger_replay(conn, posting, fingerprint)
                .await?
                .ok_or_else(|| corrupt(format!("key {} used by no transaction", posting.key)).into()),
        }
    }

    /// A posting's checks, all reads: the refusals ([`LedgerError`] other than `Store`)
    /// come from here, before anything is written. The write lock is held.
    async fn ledger_check(
        conn: &mut sqlx::SqliteConnection,
        posting: &Posting,
        at: DateTime<Utc>,
    ) -> Result<Plan, LedgerError> {
        let be = super::backend_err;
        Self::ledger_check_not_reversed(&mut *conn, posting).await?;
        if let Some(HoldEffect::Close { hold, state, .. }) = &posting.hold {
            let sql = concat!("SELECT ", hold_columns!(), " FROM ledger_holds WHERE id = $1 AND tenant_id = $2");
            let stored = sqlx::query_as::<_, HoldRow>(sql)
                .bind(hold.as_str())
                .bind(posting.tenant.as_str())
                .fetch_optional(&mut *conn)
                .await
                .map_err(be)?
                .map(hold_from_row)
                .transpose()?
                .ok_or_else(|| LedgerError::NotFound(format!("hold {hold}")))?;
            stored.check_close(*state, at)?;
            let held = Account::Held(posting.tenant.clone());
            if !posting.legs.iter().any(|l| l.account == held && l.amount == -stored.amount) {
                return Err(LedgerError::Unbalanced(format!("posting does not release all of hold {hold}")));
            }
        }
        let mut legs = posting.legs.clone();
        if let Some(account) = posting.capped_account() {
            let available = sqlx::query_scalar::<_, i64>("SELECT balance FROM ledger_balances WHERE account = $1")
                .bind(account.key())
                .fetch_optional(&mut *conn)
                .await
                .map_err(be)?
                .unwrap_or(0);
            let amount = posting.amount().min(available);
            if amount <= 0 {
                return Err(LedgerError::Insufficient { available, needed: posting.amount() });
            }
            legs = posting.capped_legs(amount);
        }
        let constrained = legs.iter().filter(|l| l.account.is_constrained()).count();
        if constrained > 1 && legs.iter().any(|l| l.account.is_constrained() && l.amount < 0) {
            // Several tenant accounts (a wallet and a held account): every debit is checked
            // before the first write. A lone debit is checked by its conditional update.
            let balance = Self::ledger_balance(&mut *conn, &posting.tenant).await?;
            for leg in legs.iter().filter(|l| l.amount < 0) {
                let available = match leg.account {
                    Account::Wallet(_) => balance.available,
                    Account::Held(_) => balance.held,
                    _ => continue,
                };
                if available + leg.amount < 0 {
                    return Err(LedgerError::Insufficient { available, needed: -leg.amount });
                }
            }
        }
        let amount = legs.iter().filter(|l| l.amount > 0).map(|l| l.amount).sum();
        Ok(Plan { legs, amount })
    }

    /// Writes a checked posting. The one refusal left is a lone debit's conditional
    /// update, its first write; any other error is the store's.
    async fn ledger_write(
        conn: &mut sqlx::SqliteConnection,
        posting: &Posting,
        fingerprint: &str,
        plan: Plan,
        at: DateTime<Utc>,
    ) -> Result<Posted, LedgerError> {
        let be = super::backend_err;
        let Plan { legs, amount } = plan;
        let constrained: Vec<&Leg> = legs.iter().filter(|l| l.account.is_constrained()).collect();
        let mut balance_after = None;
        if let [debit] = constrained.as_slice()
            && debit.amount < 0
        {
            // The lone debit: update, check and read the balance after in one statement.
            let (wallet, held) = (Account::Wallet(posting.tenant.clone()), Account::Held(posting.tenant.clone()));
            let other = if debit.account == wallet { held.key() } else { wallet.key() };
            let row = sqlx::query_as::<_, (i64, Option<i64>)>(
                "UPDATE ledger_balances SET balance = balance + $2 WHERE account = $1 AND balance + $2 >= 0 \
                 RETURNING balance, (SELECT balance FROM ledger_balances WHERE account = $3)",
            )
            .bind(debit.account.key())
            .bind(debit.amount)
            .bind(other)
            .fetch_optional(&mut *conn)
            .await
            .map_err(be)?;
            let Some((debited, other)) = row else {
                let available = sqlx::query_scalar::<_, i64>("SELECT balance FROM ledger_balances WHERE account = $1")
                    .bind(debit.account.key())
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(be)?
                    .unwrap_or(0);
                return Err(LedgerError::Insufficient { available, needed: -debit.amount });
            };
            let other = other.unwrap_or(0);
            balance_after = Some(if debit.account == wallet {
                Balance { available: debited, held: other }
            } else {
                Balance { available: other, held: debited }
            });
        } else {
            for leg in constrained {
                let updated = if leg.amount < 0 {
                    sqlx::query(
                        "UPDATE ledger_balances SET balance = balance + $2 WHERE account = $1 AND balance + $2 >= 0",
                    )
                    .bind(leg.account.key())
                    .bind(leg.amount)
                    .execute(&mut *conn)
                    .await
                } else {
                    sqlx::query(
                        "INSERT INTO ledger_balances (account, class, tenant_id, balance) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (account) DO UPDATE SET balance = ledger_balances.balance + excluded.balance",
                    )
                    .bind(leg.account.key())
                    .bind(leg.account.class())
                    .bind(posting.tenant.as_str())
                    .bind(leg.amount)
                    .execute(&mut *conn)
                    .await
                }
                .map_err(be)?
                .rows_affected();
                if updated != 1 {
                    return Err(corrupt(format!("balance {} changed under the write lock", leg.account)).into());
                }
            }
        }

        match &posting.hold {
            None => {}
            Some(HoldEffect::Close { hold, state, settled }) => {
                let settled = (*state == HoldState::Settled).then_some(*settled);
                let closed = sqlx::query(
                    "UPDATE ledger_holds SET state = $2, settled_amount = $3, closed_at = $4 \
                     WHERE id = $1 AND state = 'open'",
                )
                .bind(hold.as_str())
                .bind(state.as_str())
                .bind(settled)
                .bind(at)
                .execute(&mut *conn)
                .await
                .map_err(be)?
                .rows_affected();
                if closed != 1 {
                    return Err(corrupt(format!("hold {hold} closed under the write lock")).into());
                }
            }
            Some(HoldEffect::Open { hold, expires_at }) => {
                sqlx::query(
                    "INSERT INTO ledger_holds (id, tenant_id, amount, expires_at, state, created_at) \
                     VALUES ($1, $2, $3, $4, 'open', $5)",
                )
                .bind(hold.as_str())
                .bind(posting.tenant.as_str())
                .bind(amount)
                .bind(*expires_at)
                .bind(at)
                .execute(&mut *conn)
                .await
                .map_err(super::map_err(&format!("hold {hold}")))?;
            }
        }

        let balance_after = match balance_after {
            Some(balance) => balance,
            None => Self::ledger_balance(&mut *conn, &posting.tenant).await?,
        };
        let hold = hold_of(posting);
        sqlx::query(
            "INSERT INTO ledger_transactions (id, tenant_id, kind, amount, memo, idempotency_key, fingerprint, \
             hold_id, reverses, available_after, held_after, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(posting.id.as_str())
        .bind(posting.tenant.as_str())
        .bind(posting.kind.as_str())
        .bind(amount)
        .bind(&posting.memo)
        .bind(posting.key.as_str())
        .bind(fingerprint)
        .bind(hold.as_ref().map(|h| h.as_str()))
        .bind(posting.reverses.as_ref().map(|t| t.as_str()))
        .bind(balance_after.available)
        .bind(balance_after.held)
        .bind(at)
        .execute(&mut *conn)
        .await
        .map_err(super::map_err(&format!("transaction {}", posting.key)))?;
        if let [a, b] = legs.as_slice() {
            // The usual two legs in one statement.
            sqlx::query(
                "INSERT INTO ledger_entries (transaction_id, account, amount) VALUES ($1, $2, $3), ($1, $4, $5)",
            )
            .bind(posting.id.as_str())
            .bind(a.account.key())
            .bind(a.amount)
            .bind(b.account.key())
            .bind(b.amount)
            .execute(&mut *conn)
            .await
            .map_err(be)?;
        } else {
            for leg in &legs {
                sqlx::query("INSERT INTO ledger_entries (transaction_id, account, amount) VALUES ($1, $2, $3)")
                    .bind(posting.id.as_str())
                    .bind(leg.account.key())
                    .bind(leg.amount)
                    .execute(&mut *conn)
                    .await
                    .map_err(be)?;
            }
        }
        Ok(Posted { transaction: posting.transaction(legs, amount, hold, at), balance_after, replayed: false })
    }

    /// One posting inside `conn`'s open write transaction (a unit of work, or a batch).
    /// No up-front replay lookup: a reused key fails on the unique `(tenant_id,
    /// idempotency_key)` (or earlier), and the caller then answers with the earlier
    /// posting (`ledger_after_failure`).
    pub(super) async fn ledger_apply(
        conn: &mut sqlx::SqliteConnection,
        posting: &Posting,
        fingerprint: &str,
        at: DateTime<Utc>,
    ) -> Result<Posted, LedgerError> {
        let plan = Self::ledger_check(&mut *conn, posting, at).await?;
        Self::ledger_write(conn, posting, fingerprint, plan, at).await
    }

    /// One posting in its own write transaction.
    pub(super) async fn ledger_post(&self, posting: &Posting, at: DateTime<Utc>) -> Result<Posted, LedgerError> {
        posting.check()?;
        let fingerprint = posting.fingerprint();
        if let Some((debit, a, b)) = Self::ledger_lone_debit(posting) {
            return self.ledger_post_lone_debit(posting, debit, [a, b], &fingerprint, at).await;
        }
        let mut conn = self.ledger_connection().await?;
        let mut tx = Self::ledger_begin_on(conn.get()).await?;
        let outcome = match Self::ledger_apply(&mut tx, posting, &fingerprint, at).await {
            Ok(posted) => match tx.commit().await {
                Ok(()) => {
                    conn.settle();
                    Ok(posted)
                }
                // Unsettled: the connection is closed, whatever the failed commit left.
                Err(err) => Err(super::backend_err(err).into()),
            },
            Err(err) => {
                tx.rollback().await.map_err(super::backend_err)?;
                conn.settle();
                Err(err)
            }
        };
        drop(conn);
        let Err(err) = outcome else { return outcome };
        let mut conn = self.pool.acquire().await.map_err(super::backend_err)?;
        Self::ledger_after_failure(&mut conn, posting, &fingerprint, err).await
    }

    /// Postings in one write transaction and one commit, each answered as if posted
    /// alone, in order. When the transaction fails as a whole (a key used before the
    /// batch, the store), each posting is posted on its own instead.
    pub(super) async fn ledger_post_many(
        &self,
        postings: &[Posting],
        at: DateTime<Utc>,
    ) -> Vec<Result<Posted, LedgerError>> {
        if postings.len() > 1
            && let Ok(outcomes) = self.ledger_try_batch(postings, at).await
        {
            return outcomes;
        }
        let mut outcomes = Vec::with_capacity(postings.len());
        for posting in postings {
            outcomes.push(self.ledger_post(posting, at).await);
        }
        outcomes
    }

    /// The batch in one transaction; `Err` (rolled back) when it cannot be answered so.
    async fn ledger_try_batch(
        &self,
        postings: &[Posting],
        at: DateTime<Utc>,
    ) -> Result<Vec<Result<Posted, LedgerError>>, StoreError> {
        let debits: Option<Vec<_>> =
            postings.iter().map(|p| p.check().ok().and_then(|()| Self::ledger_lone_debit(p))).collect();
        let mut scopes = HashSet::with_capacity(postings.len());
        if let Some(debits) = debits
            && postings.iter().all(|p| scopes.insert((&p.tenant, &p.key)))
        {
            return self.ledger_post_lone_debits(postings, &debits, at).await;
        }
        let mut conn = self.ledger_connection().await?;
        let mut tx = Self::ledger_begin_on(conn.get()).await?;
        let mut posted_keys: HashSet<(&TenantId, &IdempotencyKey)> = HashSet::new();
        let mut outcomes = Vec::with_capacity(postings.len());
        for posting in postings {
            if let Err(err) = posting.check() {
                outcomes.push(Err(err));
                continue;
            }
            let fingerprint = posting.fingerprint();
            let scope = (&posting.tenant, &posting.key);
            if posted_keys.contains(&scope) {
                // Posted earlier in this batch: a replay or a conflict, as in a serial run.
                match Self::ledger_replay(&mut *tx, posting, &fingerprint).await {
                    Ok(Some(posted)) => outcomes.push(Ok(posted)),
                    Err(err @ LedgerError::IdempotencyConflict { .. }) => outcomes.push(Err(err)),
                    Ok(None) | Err(_) => return Err(StoreError::Corrupt("batch lost a posting".into())),
                }
                continue;
            }
            if let Some((debit, a, b)) = Self::ledger_lone_debit(posting) {
                // One hop per debit; a failed command voids the batch (rolled back).
                let sql = Self::LONE_DEBIT_BODY;
                let outcome = Self::ledger_run_lone_debit(&mut tx, sql, posting, debit, [a, b], &fingerprint, at)
                    .await
                    .map_err(super::map_err(&format!("transaction {}", posting.key)))?;
                match Self::ledger_answer_lone_debit(&mut tx, posting, &fingerprint, outcome).await {
                    Err(LedgerError::Store(err)) => return Err(err),
                    Ok(posted) if !posted.replayed => {
                        posted_keys.insert(scope);
                        outcomes.push(Ok(posted));
                    }
                    outcome => outcomes.push(outcome),
                }
                continue;
            }
            let outcome = match Self::ledger_check(&mut tx, posting, at).await {
                Ok(plan) => Self::ledger_write(&mut tx, posting, &fingerprint, plan, at).await,
                Err(err) => Err(err),
            };
            match outcome {
                Ok(posted) => {
                    posted_keys.insert(scope);
                    outcomes.push(Ok(posted));
                }
                // A failed write may have written part of the posting: the batch is void.
                Err(LedgerError::Store(err)) => return Err(err),
                // A refusal wrote nothing; an earlier request with the key wins, as alone.
                Err(refusal) => match Self::ledger_after_failure(&mut tx, posting, &fingerprint, refusal).await {
                    Err(LedgerError::Store(err)) => return Err(err),
                    outcome => outcomes.push(outcome),
                },
            }
        }
        tx.commit().await.map_err(super::backend_err)?;
        conn.settle();
        Ok(outcomes)
    }

    /// A batch of lone debits ([`Self::ledger_lone_debit`], all checked), each with
    /// another key, in one write transaction with one hop to the connection's worker per
    /// [`Self::LONE_DEBITS_PER_COMMAND`] debits ([`Self::lone_debits_command`]) instead
    /// of one per debit. Each debit's statements see the ones before them, so debits of
    /// one tenant are decided in order on its running balance, as if posted alone. A
    /// used key is answered after the commit. `Err` when the transaction failed: it was
    /// rolled back (the connection, unsettled, is closed).
    async fn ledger_post_lone_debits(
        &self,
        postings: &[Posting],
        debits: &[(&Leg, &Leg, &Leg)],
        at: DateTime<Utc>,
    ) -> Result<Vec<Result<Posted, LedgerError>>, StoreError> {
        let be = super::backend_err;
        let fingerprints: Vec<String> = postings.iter().map(Posting::fingerprint).collect();
        let mut conn = self.ledger_connection().await?;
        let whole = postings.len() <= Self::LONE_DEBITS_PER_COMMAND;
        if !whole {
            sqlx::query("BEGIN IMMEDIATE").execute(conn.get()).await.map_err(be)?;
        }
        let mut outcomes = Vec::with_capacity(postings.len());
        for start in (0..postings.len()).step_by(Self::LONE_DEBITS_PER_COMMAND) {
            let end = postings.len().min(start + Self::LONE_DEBITS_PER_COMMAND);
            let mut query = sqlx::query(Self::lone_debits_command(end - start, whole));
            for i in start..end {
                let (debit, a, b) = debits[i];
                query = Self::bind_lone_debit(query, &postings[i], debit, [a, b], &fingerprints[i], at);
            }
            let rows = query.fetch_all(conn.get()).await.map_err(be)?;
            if rows.len() != end - start {
                return Err(StoreError::Corrupt(format!("{} debits answered {} rows", end - start, rows.len())));
            }
            for (i, row) in (start..end).zip(&rows) {
                outcomes.push(Self::lone_debit_outcome(row, &postings[i], debits[i].0, at).map_err(be)?);
            }
        }
        if !whole {
            sqlx::query("COMMIT").execute(conn.get()).await.map_err(be)?;
        }
        conn.settle();
        let mut answers = Vec::with_capacity(postings.len());
        for ((posting, fingerprint), outcome) in postings.iter().zip(&fingerprints).zip(outcomes) {
            answers.push(Self::ledger_answer_lone_debit(conn.get(), posting, fingerprint, outcome).await);
        }
        Ok(answers)
    }

    /// A ledger write transaction on a posting's connection: `BEGIN IMMEDIATE`, as
    /// `begin_ledger`. Dropped unfinished, it queues its rollback on the connection, which
    /// is then closed (unsettled) anyway.
    async fn ledger_begin_on(
        conn: &mut sqlx::SqliteConnection,
    ) -> Result<sqlx::Transaction<'_, sqlx::Sqlite>, StoreError> {
        sqlx::Connection::begin_with(conn, "BEGIN IMMEDIATE").await.map_err(super::backend_err)
    }
}

/// A pooled SQLite connection for a posting that is closed, not kept nor returned to the
/// pool, unless [`ClosedUnlessSettled::settle`] says the command sent on it ran to its
/// end. A command holding `BEGIN … COMMIT` that failed, or whose future was dropped, may
/// have left a transaction open: closing the connection rolls it back (its worker runs
/// the close after the command), and the pool opens a fresh one when it needs it. A
/// settled connection is kept for the next posting ([`LedgerConnections`]), or goes
/// back to the pool when one is kept already.
struct ClosedUnlessSettled<'a> {
    conn: Option<PoolConnection<sqlx::Sqlite>>,
    home: &'a LedgerConnections<sqlx::Sqlite>,
    settled: bool,
}

impl<'a> ClosedUnlessSettled<'a> {
    fn new(conn: PoolConnection<sqlx::Sqlite>, home: &'a LedgerConnections<sqlx::Sqlite>) -> Self {
        Self { conn: Some(conn), home, settled: false }
    }

    fn get(&mut self) -> &mut sqlx::SqliteConnection {
        self.conn.as_deref_mut().expect("a posting's connection is present until dropped")
    }

    /// The command ran to its end (its `COMMIT` included): the connection may be used
    /// again.
    fn settle(&mut self) {
        self.settled = true;
    }
}

impl Drop for ClosedUnlessSettled<'_> {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else { return };
        if !self.settled {
            conn.close_on_drop();
            return;
        }
        drop(self.home.keep(conn, 0));
    }
}

/// Implements [`maestro_core::LedgerStore`] for a store type with a `pool` field,
/// `begin_audit`, and the posting methods above (`ledger_post`, `ledger_post_many`).
macro_rules! impl_ledger_queries {
    ($store:ty) => {
        impl $store {
            /// Refuses a posting that reverses a transaction already reversed.
            pub(super) async fn ledger_check_not_reversed(
                conn: &mut <<$store as super::Backend>::Db as sqlx::Database>::Connection,
                posting: &maestro_core::Posting,
            ) -> Result<(), maestro_core::LedgerError> {
                if let Some(original) = &posting.reverses {
                    let taken =
                        sqlx::query_scalar::<_, String>("SELECT id FROM ledger_transactions WHERE reverses = $1")
                            .bind(original.as_str())
                            .fetch_optional(&mut *conn)
                            .await
                            .map_err(super::backend_err)?;
                    if taken.is_some() {
                        return Err(maestro_core::LedgerError::AlreadyReversed(original.clone()));
                    }
                }
                Ok(())
            }

            /// Answers a posting that failed (and was rolled back): a concurrent request
            /// with the same key (or reversing the same transaction) may have committed
            /// while this one ran, and its outcome wins; otherwise `err`.
            pub(super) async fn ledger_after_failure(
                conn: &mut <<$store as super::Backend>::Db as sqlx::Database>::Connection,
                posting: &maestro_core::Posting,
                fingerprint: &str,
                err: maestro_core::LedgerError,
            ) -> Result<maestro_core::Posted, maestro_core::LedgerError> {
                if let Some(posted) = Self::ledger_replay(&mut *conn, posting, fingerprint).await? {
                    return Ok(posted);
                }
                Self::ledger_check_not_reversed(&mut *conn, posting).await?;
                Err(err)
            }

            /// The outcome of an earlier posting with the same key: the original (as a
            /// replay) when the request matches, a conflict when it does not.
            pub(super) async fn ledger_replay<'e, E>(
                executor: E,
                posting: &maestro_core::Posting,
                fingerprint: &str,
            ) -> Result<Option<maestro_core::Posted>, maestro_core::LedgerError>
            where
                E: sqlx::Executor<'e, Database = <$store as super::Backend>::Db>,
            {
                let sql = concat!(
                    "SELECT ",
                    super::ledger::tx_columns!(),
                    " FROM ledger_transactions t JOIN ledger_entries e ON e.transaction_id = t.id ",
                    "WHERE t.tenant_id = $1 AND t.idempotency_key = $2 ORDER BY e.id"
                );
                let rows = sqlx::query_as::<_, super::ledger::TxRow>(sql)
                    .bind(posting.tenant.as_str())
                    .bind(posting.key.as_str())
                    .fetch_all(executor)
                    .await
                    .map_err(super::backend_err)?;
                let stored = super::ledger::transactions_from_rows(rows)?;
                if stored.first().is_some_and(|s| s.fingerprint != fingerprint) {
                    return Err(maestro_core::LedgerError::IdempotencyConflict { key: posting.key.to_string() });
                }
                Ok(stored.into_iter().next().map(|s| maestro_core::Posted {
                    transaction: s.transaction,
                    balance_after: s.balance_after,
                    replayed: true,
                }))
            }

            pub(super) async fn ledger_balance<'e, E>(
                executor: E,
                tenant: &maestro_core::TenantId,
            ) -> Result<maestro_core::Balance, maestro_core::StoreError>
            where
                E: sqlx::Executor<'e, Database = <$store as super::Backend>::Db>,
            {
                let rows = sqlx::query_as::<_, (String, i64)>(
                    "SELECT account, balance FROM ledger_balances WHERE account = $1 OR account = $2",
                )
                .bind(maestro_core::Account::Wallet(tenant.clone()).key())
                .bind(maestro_core::Account::Held(tenant.clone()).key())
                .fetch_all(executor)
                .await
                .map_err(super::backend_err)?;
                Ok(super::ledger::balance_from_rows(tenant, rows))
            }
        }

        #[async_trait::async_trait]
        impl maestro_core::LedgerStore for $store {
            fn posting_lanes(&self) -> usize {
                <$store>::POSTING_LANES
            }

            async fn post(
                &self,
                posting: &maestro_core::Posting,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<maestro_core::Posted, maestro_core::LedgerError> {
                self.ledger_post(posting, at).await
            }

            async fn post_batch(
                &self,
                postings: &[maestro_core::Posting],
                at: chrono::DateTime<chrono::Utc>,
            ) -> Vec<Result<maestro_core::Posted, maestro_core::LedgerError>> {
                self.ledger_post_many(postings, at).await
            }

            async fn balance(
                &self,
                tenant: &maestro_core::TenantId,
            ) -> Result<maestro_core::Balance, maestro_core::StoreError> {
                Self::ledger_balance(&self.pool, tenant).await
            }

            async fn hold(
                &self,
                id: &maestro_core::HoldId,
                tenant: Option<&maestro_core::TenantId>,
            ) -> Result<Option<maestro_core::Hold>, maestro_core::StoreError> {
                let sql = concat!(
                    "SELECT ",
                    super::ledger::hold_columns!(),
                    " FROM ledger_holds WHERE id = $1 AND ($2 IS NULL OR tenant_id = $2)"
                );
                sqlx::query_as::<_, super::ledger::HoldRow>(sql)
                    .bind(id.as_str())
                    .bind(tenant.map(|t| t.as_str()))
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(super::backend_err)?
                    .map(super::ledger::hold_from_row)
                    .transpose()
            }

            async fn due_holds(
                &self,
                now: chrono::DateTime<chrono::Utc>,
                limit: u32,
            ) -> Result<Vec<maestro_core::Hold>, maestro_core::StoreError> {
                let sql = concat!(
                    "SELECT ",
                    super::ledger::hold_columns!(),
                    " FROM ledger_holds WHERE state = 'open' AND expires_at <= $1 ORDER BY expires_at, id LIMIT $2"
                );
                sqlx::query_as::<_, super::ledger::HoldRow>(sql)
                    .bind(now)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(super::backend_err)?
                    .into_iter()
                    .map(super::ledger::hold_from_row)
                    .collect()
            }

            async fn transaction_by_key(
                &self,
                tenant: &maestro_core::TenantId,
                key: &str,
            ) -> Result<Option<maestro_core::Transaction>, maestro_core::StoreError> {
                let sql = concat!(
                    "SELECT ",
                    super::ledger::tx_columns!(),
                    " FROM ledger_transactions t JOIN ledger_entries e ON e.transaction_id = t.id ",
                    "WHERE t.tenant_id = $1 AND t.idempotency_key = $2 ORDER BY e.id"
                );
                let rows = sqlx::query_as::<_, super::ledger::TxRow>(sql)
                    .bind(tenant.as_str())
                    .bind(key)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(super::backend_err)?;
                Ok(super::ledger::transactions_from_rows(rows)?.into_iter().next().map(|s| s.transaction))
            }

            async fn transactions(
                &self,
                tenant: &maestro_core::TenantId,
                query: &maestro_core::TransactionQuery,
            ) -> Result<maestro_core::TransactionPage, maestro_core::StoreError> {
                let sql = concat!(
                    "SELECT ",
                    super::ledger::tx_columns!(),
                    " FROM ledger_transactions t JOIN ledger_entries e ON e.transaction_id = t.id ",
                    "WHERE t.seq IN (SELECT seq FROM ledger_transactions WHERE tenant_id = $1 AND seq > $2 ",
                    "AND ($3 IS NULL OR created_at >= $3) AND ($4 IS NULL OR created_at < $4) ",
                    "AND kind IN ($5, $6, $7, $8, $9, $10, $11, $12, $13) ORDER BY seq LIMIT $14) ",
                    "ORDER BY t.seq, e.id"
                );
                let limit = query.effective_limit();
                let mut q = sqlx::query_as::<_, super::ledger::TxRow>(sql)
                    .bind(tenant.as_str())
                    .bind(super::ledger::parse_cursor(query.after.as_deref())?)
                    .bind(query.since)
                    .bind(query.until);
                for kind in super::ledger::kind_params(&query.kinds) {
                    q = q.bind(kind);
                }
                let rows = q.bind(i64::from(limit)).fetch_all(&self.pool).await.map_err(super::backend_err)?;
                let stored = super::ledger::transactions_from_rows(rows)?;
                let next = (stored.len() == limit as usize).then(|| stored.last().map(|s| s.seq.to_string())).flatten();
                Ok(maestro_core::TransactionPage {
                    transactions: stored.into_iter().map(|s| s.transaction).collect(),
                    next,
                })
            }

            async fn audit(&self) -> Result<maestro_core::AuditReport, maestro_core::StoreError> {
                let be = super::backend_err;
                let mut tx = self.begin_audit().await?;
                let transactions = sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM ledger_transactions")
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(be)?;
                let entries = sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM ledger_entries")
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(be)?;
                let imbalanced = sqlx::query_as::<_, (String, i64)>(
                    "SELECT transaction_id, CAST(SUM(amount) AS BIGINT) FROM ledger_entries \
                     GROUP BY transaction_id HAVING SUM(amount) <> 0 ORDER BY transaction_id",
                )
                .fetch_all(&mut *tx)
                .await
                .map_err(be)?;
                let mismatches = sqlx::query_as::<_, (String, i64, i64)>(
                    "WITH sums AS (SELECT account, SUM(amount) AS total FROM ledger_entries \
                     WHERE account NOT LIKE 'platform:%' GROUP BY account) \
                     SELECT b.account, b.balance, CAST(COALESCE(s.total, 0) AS BIGINT) FROM ledger_balances b \
                     LEFT JOIN sums s ON s.account = b.account WHERE b.balance <> COALESCE(s.total, 0) \
                     UNION ALL \
                     SELECT s.account, CAST(0 AS BIGINT), CAST(s.total AS BIGINT) FROM sums s \
                     WHERE NOT EXISTS (SELECT 1 FROM ledger_balances b WHERE b.account = s.account) \
                     ORDER BY 1",
                )
                .fetch_all(&mut *tx)
                .await
                .map_err(be)?;
                let negative = sqlx::query_as::<_, (String, i64)>(
                    "SELECT account, balance FROM ledger_balances WHERE balance < 0 ORDER BY account",
                )
                .fetch_all(&mut *tx)
                .await
                .map_err(be)?;
                let holds = sqlx::query_as::<_, (String, i64, i64)>(
                    "WITH open AS (SELECT tenant_id, SUM(amount) AS total FROM ledger_holds WHERE state = 'open' \
                     GROUP BY tenant_id) \
                     SELECT b.account, b.balance, CAST(COALESCE(o.total, 0) AS BIGINT) FROM ledger_balances b \
                     LEFT JOIN open o ON o.tenant_id = b.tenant_id \
                     WHERE b.class = 'held' AND b.balance <> COALESCE(o.total, 0) ORDER BY b.account",
                )
                .fetch_all(&mut *tx)
                .await
                .map_err(be)?;
                let orphaned = sqlx::query_scalar::<_, String>(
                    "SELECT DISTINCT e.transaction_id FROM ledger_entries e WHERE NOT EXISTS \
                     (SELECT 1 FROM ledger_transactions t WHERE t.id = e.transaction_id) ORDER BY 1",
                )
                .fetch_all(&mut *tx)
                .await
                .map_err(be)?;
                tx.rollback().await.map_err(be)?;
                let mismatch =
                    |(account, cached, computed)| maestro_core::ledger::BalanceMismatch { account, cached, computed };
                Ok(maestro_core::AuditReport {
                    transactions: u64::try_from(transactions).unwrap_or_default(),
                    entries: u64::try_from(entries).unwrap_or_default(),
                    imbalanced,
                    mismatches: mismatches.into_iter().map(mismatch).collect(),
                    negative,
                    holds_mismatched: holds.into_iter().map(mismatch).collect(),
                    orphaned,
                })
            }
        }
    };
}

pub(super) use impl_ledger_queries;

#[cfg(test)]
mod tests {
    use maestro_core::{LedgerStore as _, Posting, TenantId};

    use super::*;
    use crate::credits::tx_id;

    /// Postings one after another on SQLite run on one kept connection, so its page
    /// cache stays current: that connection made every posting's changes
    /// (`total_changes()` counts a connection's own), none went through the pool's others.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postings_one_after_another_run_on_one_kept_connection_on_sqlite() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("ledger.db")).await.expect("store");
        let acme = TenantId::from_random([1; 16]);
        let grant = Posting::grant(tx_id(), acme.clone(), 1_000, "g", "").expect("valid");
        store.post(&grant, Utc::now()).await.expect("grant");
        let (conn, _) = store.ledger_connections.take().expect("the grant's connection is kept");
        let mut conn = ClosedUnlessSettled::new(conn, &store.ledger_connections);
        let before: i64 = sqlx::query_scalar("SELECT total_changes()").fetch_one(conn.get()).await.expect("changes");
        conn.settle();
        drop(conn);
        for i in 0..20 {
            let debit = Posting::debit(tx_id(), acme.clone(), 1, &format!("d{i}"), "").expect("valid");
            store.post(&debit, Utc::now()).await.expect("debit");
        }
        let batch: Vec<Posting> =
            (0..5).map(|i| Posting::debit(tx_id(), acme.clone(), 1, &format!("b{i}"), "").expect("valid")).collect();
        assert!(store.post_batch(&batch, Utc::now()).await.iter().all(Result::is_ok));
        let (mut conn, _) = store.ledger_connections.take().expect("kept after the postings");
        assert!(store.ledger_connections.take().is_none(), "one connection kept");
        let after: i64 = sqlx::query_scalar("SELECT total_changes()").fetch_one(&mut *conn).await.expect("changes");
        // Each debit changes its balance, its transaction and two entries.
        assert_eq!(after - before, 25 * 4, "every posting ran on the kept connection");
    }
}
