//! [`maestro_core::LedgerStore`]: the same SQL on both backends, expanded per store type
//! by [`impl_ledger_queries!`] (like `shared.rs`). The backend supplies `begin_ledger`
//! (SQLite: `BEGIN IMMEDIATE`; Postgres: `SET LOCAL synchronous_commit = on`),
//! `begin_audit` (a consistent read snapshot) and the row-lock clause appended to reads
//! that precede a write (` FOR UPDATE` on Postgres, nothing on SQLite, whose write
//! transaction already excludes every other writer).
//!
//! A posting runs in one transaction: hold check and update, one
//! conditional `UPDATE ledger_balances … WHERE balance + $n >= 0` per debited tenant
//! account (rows affected = 0 means insufficient credits) and an upsert per credited
//! one, then the transaction row (its unique `(tenant_id, idempotency_key)` settles races
//! between replays, concurrent or not: replays are answered after the rollback) and its
//! entries. Only tenant accounts have a cached
//! balance row: platform accounts (revenue, clearing, promotions) are unconstrained, so
//! their balances are sums of entries, and postings of different tenants share no row.
//! Balance rows are updated in account-key order, so concurrent postings take row locks
//! in one order and cannot deadlock. When anything fails, the transaction is
//! rolled back and the key looked up again: a concurrent request with the same key may
//! have committed meanwhile, and its outcome is then the answer.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use maestro_core::ledger::{Leg, TransactionId};
use maestro_core::{
    Account, Balance, Hold, HoldId, HoldState, IdempotencyKey, StoreError, TenantId, Transaction, TransactionKind,
};

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

/// Implements [`maestro_core::LedgerStore`] for a store type with a `pool` field and
/// `begin_ledger`/`begin_audit` methods; `$lock` is appended to reads that precede
/// writes of the same rows.
macro_rules! impl_ledger_queries {
    ($store:ty, $lock:literal) => {
        impl $store {
            /// Everything a posting does, inside `tx`. `Ok(Err(posted))` is a replay.
            async fn ledger_apply(
                conn: &mut <<$store as super::Backend>::Db as sqlx::Database>::Connection,
                posting: &maestro_core::Posting,
                fingerprint: &str,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<maestro_core::Posted, maestro_core::LedgerError> {
                use maestro_core::LedgerError;
                use maestro_core::ledger::HoldEffect;
                let be = super::backend_err;

                // No up-front replay lookup: a reused key fails on the unique
                // `(tenant_id, idempotency_key)` (or earlier), and `post` then answers
                // with the earlier posting after rolling this one back.
                Self::ledger_check_not_reversed(&mut *conn, posting).await?;
                if let Some(HoldEffect::Close { hold, state, settled }) = &posting.hold {
                    let sql = concat!(
                        "SELECT ",
                        super::ledger::hold_columns!(),
                        " FROM ledger_holds WHERE id = $1 AND tenant_id = $2",
                        $lock
                    );
                    let stored = sqlx::query_as::<_, super::ledger::HoldRow>(sql)
                        .bind(hold.as_str())
                        .bind(posting.tenant.as_str())
                        .fetch_optional(&mut *conn)
                        .await
                        .map_err(be)?
                        .map(super::ledger::hold_from_row)
                        .transpose()?
                        .ok_or_else(|| LedgerError::NotFound(format!("hold {hold}")))?;
                    stored.check_close(*state, at)?;
                    let held = maestro_core::Account::Held(posting.tenant.clone());
                    if !posting.legs.iter().any(|l| l.account == held && l.amount == -stored.amount) {
                        return Err(LedgerError::Unbalanced(format!("posting does not release all of hold {hold}")));
                    }
                    let settled = (*state == maestro_core::HoldState::Settled).then_some(*settled);
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
                        return Err(LedgerError::HoldClosed { hold: hold.clone(), state: stored.state });
                    }
                }

                let mut legs = posting.legs.clone();
                if let Some(account) = posting.capped_account() {
                    let sql = concat!("SELECT balance FROM ledger_balances WHERE account = $1", $lock);
                    let available = sqlx::query_scalar::<_, i64>(sql)
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
                // Only tenant accounts carry a cached balance (they must stay at or above
                // zero); platform accounts are unconstrained and computed from entries, so
                // no posting waits on another tenant's posting for a shared platform row.
                for leg in legs.iter().filter(|l| l.account.is_constrained()) {
                    let key = leg.account.key();
                    let updated = if leg.amount < 0 {
                        sqlx::query(
                            "UPDATE ledger_balances SET balance = balance + $2 WHERE account = $1 AND balance + $2 >= 0",
                        )
                        .bind(&key)
                        .bind(leg.amount)
                        .execute(&mut *conn)
                        .await
                        .map_err(be)?
                        .rows_affected()
                    } else {
                        sqlx::query(
                            "INSERT INTO ledger_balances (account, class, tenant_id, balance) VALUES ($1, $2, $3, $4) \
                             ON CONFLICT (account) DO UPDATE SET balance = ledger_balances.balance + excluded.balance",
                        )
                        .bind(&key)
                        .bind(leg.account.class())
                        .bind(leg.account.tenant().map(|t| t.as_str()))
                        .bind(leg.amount)
                        .execute(&mut *conn)
                        .await
                        .map_err(be)?
                        .rows_affected()
                    };
                    if updated != 1 {
                        let available =
                            sqlx::query_scalar::<_, i64>("SELECT balance FROM ledger_balances WHERE account = $1")
                                .bind(&key)
                                .fetch_optional(&mut *conn)
                                .await
                                .map_err(be)?
                                .unwrap_or(0);
                        return Err(LedgerError::Insufficient { available, needed: -leg.amount });
                    }
                }
                let amount: i64 = legs.iter().filter(|l| l.amount > 0).map(|l| l.amount).sum();

                let hold_id = match &posting.hold {
                    None => None,
                    Some(HoldEffect::Close { hold, .. }) => Some(hold.clone()),
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
                        Some(hold.clone())
                    }
                };

                let balance_after = Self::ledger_balance(&mut *conn, &posting.tenant).await?;
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
                .bind(hold_id.as_ref().map(|h| h.as_str()))
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
                let transaction = posting.transaction(legs, amount, hold_id, at);
                Ok(maestro_core::Posted { transaction, balance_after, replayed: false })
            }

            /// Refuses a posting that reverses a transaction already reversed.
            async fn ledger_check_not_reversed(
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
            async fn ledger_after_failure(
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
            async fn ledger_replay<'e, E>(
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

            async fn ledger_balance<'e, E>(
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
            async fn post(
                &self,
                posting: &maestro_core::Posting,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<maestro_core::Posted, maestro_core::LedgerError> {
                posting.check()?;
                let fingerprint = posting.fingerprint();
                let mut tx = self.begin_ledger().await?;
                let outcome = Self::ledger_apply(&mut *tx, posting, &fingerprint, at).await;
                let outcome = match outcome {
                    Ok(posted) if posted.replayed => {
                        tx.rollback().await.map_err(super::backend_err)?;
                        return Ok(posted);
                    }
                    Ok(posted) => tx.commit().await.map(|()| posted).map_err(|e| super::backend_err(e).into()),
                    Err(err) => {
                        tx.rollback().await.map_err(super::backend_err)?;
                        Err(err)
                    }
                };
                let Err(err) = outcome else { return outcome };
                let mut conn = self.pool.acquire().await.map_err(super::backend_err)?;
                Self::ledger_after_failure(&mut conn, posting, &fingerprint, err).await
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
                })
            }
        }
    };
}

pub(super) use impl_ledger_queries;
