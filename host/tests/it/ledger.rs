//! The credits ledger on both stores: posting rules, idempotency (sequential and
//! concurrent), holds, no overdraft under concurrency, the audit, pagination, a
//! model-based test comparing the store with `maestro_core::ledger::Model`, and group
//! commit: batches answered as if posted one by one (a property test against the model),
//! one tenant's concurrent callers sharing commits, and the Postgres posting statement.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use maestro_core::ledger::{HoldId, Model, TransactionId};
use maestro_core::{
    Account, Balance, Clock as _, HoldState, LedgerError, Posting, Store, TenantId, TransactionKind, TransactionQuery,
};
use maestro_host::credits::{Credits, CreditsError};
use sqlx::Connection as _;

use crate::harness::{Backend, ManualClock, TestDb, backend_tests};

backend_tests!(
    grants_and_debits_move_credits_between_accounts,
    rejects_invalid_amounts_and_keys_without_writing,
    debit_of_zero_succeeds_without_writing,
    insufficient_debit_reports_available_and_needed_and_writes_nothing,
    replaying_a_key_returns_the_original_posting,
    reusing_a_key_for_another_request_is_a_conflict,
    concurrent_replays_of_one_key_post_once,
    concurrent_debits_never_overdraw,
    concurrent_mixed_operations_keep_the_ledger_consistent,
    holds_settle_for_the_actual_cost_and_release_the_rest,
    holds_void_and_expire_back_to_the_wallet,
    refunds_a_debit_exactly_once,
    purchase_reversal_takes_back_only_what_is_available,
    audit_detects_a_tampered_cached_balance,
    audit_detects_entries_without_their_transaction,
    paginates_transactions_with_a_cursor_and_filters,
    store_matches_the_model_under_random_operations,
    a_batch_answers_each_posting_in_arrival_order_as_if_posted_alone,
    a_batch_of_debits_of_different_tenants_answers_each_as_if_posted_alone,
    a_long_batch_of_one_tenants_debits_pays_in_order_until_the_wallet_runs_out,
    batches_match_the_model_posting_one_by_one,
    concurrent_callers_of_one_tenant_share_commits_and_never_overdraw,
    batches_of_grants_debits_and_replays_match_the_model_posting_one_by_one,
);

struct Fixture {
    db: TestDb,
    store: Arc<dyn Store>,
    clock: Arc<ManualClock>,
    credits: Credits,
}

async fn fixture(backend: Backend) -> Fixture {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    let clock = ManualClock::new();
    let credits = Credits::new(store.clone(), clock.clone());
    Fixture { db, store, clock, credits }
}

fn tenant(seed: u8) -> TenantId {
    TenantId::from_random([seed; 16])
}

async fn assert_clean(credits: &Credits) {
    let report = credits.audit().await.expect("audit");
    assert!(report.is_clean(), "{report:?}");
}

async fn grants_and_debits_move_credits_between_accounts(backend: Backend) {
    let f = fixture(backend).await;
    let acme = tenant(1);
    let granted = f.credits.grant(&acme, 500, "welcome", "welcome credits").await.expect("grant");
    assert_eq!(granted.balance_after, Balance { available: 500, held: 0 });
    assert!(!granted.replayed);
    assert!(granted.transaction.id.as_str().starts_with("tx_"));
    assert_eq!(granted.transaction.kind, TransactionKind::Grant);
    assert_eq!(granted.transaction.memo, "welcome credits");

    f.credits.purchase(&acme, 1000, "checkout-1", "pack").await.expect("purchase");
    let debited = f.credits.debit(&acme, 300, "call-1", "calc.add").await.expect("debit").expect("posted");
    assert_eq!(debited.balance_after, Balance { available: 1200, held: 0 });
    assert_eq!(
        debited.transaction.entries.iter().map(|e| (e.account.clone(), e.amount)).collect::<Vec<_>>(),
        vec![(Account::Revenue, 300), (Account::Wallet(acme.clone()), -300)]
    );
    assert_eq!(f.credits.balance(&acme).await.expect("balance"), Balance { available: 1200, held: 0 });
    assert_eq!(f.credits.balance(&tenant(2)).await.expect("balance"), Balance::default(), "other tenant untouched");
    let report = f.credits.audit().await.expect("audit");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!((report.transactions, report.entries), (3, 6));
}

async fn rejects_invalid_amounts_and_keys_without_writing(backend: Backend) {
    let f = fixture(backend).await;
    let acme = tenant(1);
    for amount in [0, -5, 1_000_000_000_001] {
        let err = f.credits.grant(&acme, amount, "k", "").await.expect_err("invalid amount");
        assert!(matches!(err, CreditsError::InvalidAmount(a) if a == amount), "{err:?}");
    }
    assert!(matches!(f.credits.debit(&acme, -1, "k", "").await, Err(CreditsError::InvalidAmount(-1))));
    for key in ["", "new\nline", &"k".repeat(201)] {
        assert!(matches!(f.credits.grant(&acme, 5, key, "").await, Err(CreditsError::InvalidKey)), "{key:?}");
    }
    let report = f.credits.audit().await.expect("audit");
    assert_eq!(report.transactions, 0, "nothing written");
}

async fn debit_of_zero_succeeds_without_writing(backend: Backend) {
    let f = fixture(backend).await;
    let acme = tenant(1);
    assert!(f.credits.debit(&acme, 0, "free-call", "").await.expect("no-op").is_none());
    assert_eq!(f.credits.audit().await.expect("audit").transactions, 0);
    // The key stays free for a real debit later.
    f.credits.grant(&acme, 5, "g", "").await.expect("grant");
    assert!(f.credits.debit(&acme, 5, "free-call", "").await.expect("debit").is_some());
}

async fn insufficient_debit_reports_available_and_needed_and_writes_nothing(backend: Backend) {
    let f = fixture(backend).await;
    let acme = tenant(1);
    f.credits.grant(&acme, 40, "g", "").await.expect("grant");
    let err = f.credits.debit(&acme, 41, "too-much", "").await.expect_err("insufficient");
    assert!(matches!(err, CreditsError::Insufficient { available: 40, needed: 41 }), "{err:?}");
    let err = f.credits.reserve(&acme, 50, Duration::minutes(1), "hold", "").await.expect_err("insufficient");
    assert!(matches!(err, CreditsError::Insufficient { available: 40, needed: 50 }), "{err:?}");
    assert_eq!(f.credits.balance(&acme).await.expect("balance"), Balance { available: 40, held: 0 });
    assert!(f.store.transaction_by_key(&acme, "too-much").await.expect("lookup").is_none());
    let report = f.credits.audit().await.expect("audit");
    assert_eq!(report.transactions, 1);
    assert!(report.is_clean(), "{report:?}");
    // The refused key was not consumed.
    f.credits.grant(&acme, 1, "g2", "").await.expect("grant");
    f.credits.debit(&acme, 41, "too-much", "").await.expect("now it fits");
}

async fn replaying_a_key_returns_the_original_posting(backend: Backend) {
    let f = fixture(backend).await;
    let acme = tenant(1);
    f.credits.grant(&acme, 100, "g", "").await.expect("grant");
    let first = f.credits.debit(&acme, 30, "call-7", "m").await.expect("debit").expect("posted");
    f.clock.advance(Duration::seconds(5));
    f.credits.debit(&acme, 10, "call-8", "m").await.expect("debit");
    let replay = f.credits.debit(&acme, 30, "call-7", "m").await.expect("replay").expect("posted");
    assert!(replay.replayed);
    assert_eq!(replay.transaction, first.transaction, "the original transaction, timestamp included");
    assert_eq!(replay.balance_after, first.balance_after, "the balance as it was then");
    assert_eq!(f.credits.balance(&acme).await.expect("balance").available, 60);
    // Keys are per tenant: another tenant may use the same one.
    let globex = tenant(2);
    assert!(!f.credits.grant(&globex, 30, "call-7", "m").await.expect("grant").replayed);
    assert_clean(&f.credits).await;
}

async fn reusing_a_key_for_another_request_is_a_conflict(backend: Backend) {
    let f = fixture(backend).await;
    let acme = tenant(1);
    f.credits.grant(&acme, 100, "k", "").await.expect("grant");
    for attempt in [
        f.credits.grant(&acme, 101, "k", "").await.map(|_| ()),
        f.credits.grant(&acme, 100, "k", "other memo").await.map(|_| ()),
        f.credits.purchase(&acme, 100, "k", "").await.map(|_| ()),
        f.credits.debit(&acme, 100, "k", "").await.map(|_| ()),
    ] {
        assert!(matches!(attempt, Err(CreditsError::IdempotencyConflict { ref key }) if key == "k"), "{attempt:?}");
    }
    assert_eq!(f.credits.balance(&acme).await.expect("balance").available, 100);
    assert_eq!(f.credits.audit().await.expect("audit").transactions, 1);
}

async fn concurrent_replays_of_one_key_post_once(backend: Backend) {
    let f = fixture(backend).await;
    let acme = tenant(1);
    f.credits.grant(&acme, 100, "g", "").await.expect("grant");
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (credits, acme) = (f.credits.clone(), acme.clone());
            tokio::spawn(async move { credits.debit(&acme, 100, "one-call", "").await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("task").expect("every replay succeeds").expect("posted"));
    }
    assert_eq!(outcomes.iter().filter(|p| !p.replayed).count(), 1, "exactly one posting");
    assert!(outcomes.iter().all(|p| p.transaction == outcomes[0].transaction));
    assert_eq!(f.credits.balance(&acme).await.expect("balance").available, 0);
    let report = f.credits.audit().await.expect("audit");
    assert_eq!(report.transactions, 2);
    assert!(report.is_clean(), "{report:?}");
}

async fn concurrent_debits_never_overdraw(backend: Backend) {
    const CLIENTS: usize = 64;
    const DEBITS: usize = 60;
    let f = fixture(backend).await;
    let acme = tenant(1);
    f.credits.grant(&acme, 1_000, "g", "").await.expect("grant");
    let started = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (credits, acme) = (f.credits.clone(), acme.clone());
            tokio::spawn(async move {
                let (mut ok, mut refused) = (0usize, 0usize);
                for i in 0..DEBITS {
                    match credits.debit(&acme, 10, &format!("c{client}-{i}"), "").await {
                        Ok(Some(posted)) => {
                            assert!(posted.balance_after.available >= 0);
                            ok += 1;
                        }
                        Err(CreditsError::Insufficient { available, needed: 10 }) => {
                            assert!((0..10).contains(&available), "refused with {available} available");
                            refused += 1;
                        }
                        other => panic!("unexpected outcome {other:?}"),
                    }
                }
                (ok, refused)
            })
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for task in tasks {
        let (o, r) = task.await.expect("task");
        ok += o;
        refused += r;
    }
    let elapsed = started.elapsed();
    println!("{backend:?}: {CLIENTS}x{DEBITS} debits in {elapsed:?} ({ok} succeeded, {refused} refused)");
    assert_eq!(ok, 100, "exactly the balance's worth succeeds");
    assert_eq!(refused, CLIENTS * DEBITS - 100);
    assert_eq!(f.credits.balance(&acme).await.expect("balance"), Balance { available: 0, held: 0 });
    let report = f.credits.audit().await.expect("audit");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!((report.transactions, report.entries), (101, 202));
}

async fn concurrent_mixed_operations_keep_the_ledger_consistent(backend: Backend) {
    let f = fixture(backend).await;
    let tenants = [tenant(1), tenant(2), tenant(3)];
    for t in &tenants {
        f.credits.grant(t, 300, "seed", "").await.expect("grant");
    }
    let tasks: Vec<_> = (0..16u64)
        .map(|client| {
            let (credits, tenants) = (f.credits.clone(), tenants.clone());
            tokio::spawn(async move {
                let mut rng = Rng(0xA076_1D64_78BD_642F ^ (client + 1));
                for i in 0..30 {
                    let t = &tenants[rng.below(3) as usize];
                    let key = format!("c{client}-{i}");
                    let amount = 1 + rng.below(40) as i64;
                    let outcome = match rng.below(5) {
                        0 => credits.grant(t, amount, &key, "").await.map(|_| ()),
                        1 | 2 => credits.debit(t, amount, &key, "").await.map(|_| ()),
                        3 => {
                            credits.refund_debit(t, &format!("c{client}-{}", i.max(1) - 1), &key, "").await.map(|_| ())
                        }
                        _ => match credits.reserve(t, amount, Duration::minutes(1), &key, "").await {
                            Ok(reserved) => {
                                let settle = format!("{key}-settle");
                                if rng.below(2) == 0 {
                                    credits.settle(t, &reserved.hold.id, amount / 2, &settle).await.map(|_| ())
                                } else {
                                    credits.void(t, &reserved.hold.id, &settle).await.map(|_| ())
                                }
                            }
                            Err(err) => Err(err),
                        },
                    };
                    match outcome {
                        Ok(()) | Err(CreditsError::Insufficient { .. } | CreditsError::NotFound(_)) => {}
                        Err(err) => panic!("unexpected error {err:?}"),
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    for t in &tenants {
        let balance = f.credits.balance(t).await.expect("balance");
        assert!(balance.available >= 0 && balance.held == 0, "{balance:?}");
    }
    assert_clean(&f.credits).await;
}

async fn holds_settle_for_the_actual_cost_and_release_the_rest(backend: Backend) {
    let f = fixture(backend).await;
    let acme = tenant(1);
    f.credits.grant(&acme, 100, "g", "").await.expect("grant");
    let reserved = f.credits.reserve(&acme, 70, Duration::minutes(10), "run-1", "agent run").await.expect("reserve");
    assert!(reserved.hold.id.as_str().starts_with("hold_"));
    assert_eq!(reserved.hold.state, HoldState::Open);
    assert_eq!(reserved.hold.amount, 70);
    assert_eq!(reserved.posted.balance_after, Balance { available: 30, held: 70 });
    let again = f.credits.reserve(&acme, 70, Duration::minutes(10), "run-1", "agent run").await.expect("replay");
    assert_eq!(again.hold, reserved.hold, "a replayed reserve returns the original hold");
    assert!(again.posted.replayed);

    let err = f.credits.settle(&acme, &reserved.hold.id, 71, "settle-1").await.expect_err("too much");
    assert!(matches!(err, CreditsError::ExceedsHold { held: 70, actual: 71 }), "{err:?}");
    let err = f.credits.settle(&tenant(2), &reserved.hold.id, 10, "settle-1").await.expect_err("other tenant");
    assert!(matches!(err, CreditsError::NotFound(_)), "{err:?}");

    let settled = f.credits.settle(&acme, &reserved.hold.id, 45, "settle-1").await.expect("settle");
    assert_eq!(settled.balance_after, Balance { available: 55, held: 0 });
    assert_eq!(settled.transaction.kind, TransactionKind::Settle);
    let replay = f.credits.settle(&acme, &reserved.hold.id, 45, "settle-1").await.expect("replay");
    assert!(replay.replayed);
    let hold = f.credits.hold(&acme, &reserved.hold.id).await.expect("hold");
    assert_eq!((hold.state, hold.settled_amount), (HoldState::Settled, Some(45)));
    assert!(hold.closed_at.is_some());
    let err = f.credits.void(&acme, &reserved.hold.id, "void-1").await.expect_err("closed");
    assert!(matches!(err, CreditsError::HoldClosed { state: HoldState::Settled, .. }), "{err:?}");
    assert_eq!(f.store.audit().await.expect("audit").transactions, 3);
    assert_clean(&f.credits).await;
}

async fn holds_void_and_expire_back_to_the_wallet(backend: Backend) {
    let f = fixture(backend).await;
    let acme = tenant(1);
    f.credits.grant(&acme, 100, "g", "").await.expect("grant");
    let voided = f.credits.reserve(&acme, 30, Duration::minutes(1), "a", "").await.expect("reserve").hold;
    let expiring = f.credits.reserve(&acme, 20, Duration::minutes(1), "b", "").await.expect("reserve").hold;
    let late = f.credits.reserve(&acme, 10, Duration::minutes(5), "c", "").await.expect("reserve").hold;
    assert_eq!(f.credits.balance(&acme).await.expect("balance"), Balance { available: 40, held: 60 });

    let posted = f.credits.void(&acme, &voided.id, "void-a").await.expect("void");
    assert_eq!(posted.balance_after, Balance { available: 70, held: 30 });
    assert_eq!(f.credits.expire_holds().await.expect("sweep"), 0, "nothing due yet");

    f.clock.advance(Duration::minutes(1));
    let err = f.credits.settle(&acme, &expiring.id, 5, "settle-b").await.expect_err("past expiry");
    assert!(matches!(err, CreditsError::HoldClosed { state: HoldState::Expired, .. }), "{err:?}");
    assert_eq!(f.credits.expire_holds().await.expect("sweep"), 1);
    assert_eq!(f.credits.expire_holds().await.expect("sweep"), 0, "expired once");
    assert_eq!(f.credits.hold(&acme, &expiring.id).await.expect("hold").state, HoldState::Expired);
    assert_eq!(f.credits.hold(&acme, &late.id).await.expect("hold").state, HoldState::Open);
    assert_eq!(f.credits.balance(&acme).await.expect("balance"), Balance { available: 90, held: 10 });

    f.clock.advance(Duration::minutes(4));
    assert_eq!(f.credits.expire_holds().await.expect("sweep"), 1);
    assert_eq!(f.credits.balance(&acme).await.expect("balance"), Balance { available: 100, held: 0 });
    assert_clean(&f.credits).await;
}

async fn refunds_a_debit_exactly_once(backend: Backend) {
    let f = fixture(backend).await;
    let acme = tenant(1);
    f.credits.grant(&acme, 100, "g", "").await.expect("grant");
    f.credits.debit(&acme, 40, "call-1", "").await.expect("debit");
    let refunded = f.credits.refund_debit(&acme, "call-1", "refund-1", "failed call").await.expect("refund");
    assert_eq!(refunded.transaction.amount, 40);
    assert_eq!(refunded.balance_after.available, 100);
    assert!(f.credits.refund_debit(&acme, "call-1", "refund-1", "failed call").await.expect("replay").replayed);
    let err = f.credits.refund_debit(&acme, "call-1", "refund-2", "again").await.expect_err("once");
    assert!(matches!(err, CreditsError::AlreadyRefunded(_)), "{err:?}");
    let err = f.credits.refund_debit(&acme, "g", "refund-3", "").await.expect_err("not a debit");
    assert!(matches!(err, CreditsError::NotFound(_)), "{err:?}");
    let err = f.credits.refund_debit(&tenant(2), "call-1", "refund-4", "").await.expect_err("other tenant");
    assert!(matches!(err, CreditsError::NotFound(_)), "{err:?}");
    assert_eq!(f.credits.balance(&acme).await.expect("balance").available, 100);
    assert_clean(&f.credits).await;
}

async fn purchase_reversal_takes_back_only_what_is_available(backend: Backend) {
    let f = fixture(backend).await;
    let acme = tenant(1);
    f.credits.purchase(&acme, 100, "buy", "").await.expect("purchase");
    f.credits.debit(&acme, 70, "spend", "").await.expect("debit");
    let reversal = f.credits.reverse_purchase(&acme, 100, "chargeback", "dispute").await.expect("reverse");
    assert_eq!((reversal.reversed, reversal.unrecovered), (30, 70));
    assert_eq!(f.credits.balance(&acme).await.expect("balance").available, 0);
    let replay = f.credits.reverse_purchase(&acme, 100, "chargeback", "dispute").await.expect("replay");
    assert!(replay.posted.expect("posted").replayed);
    let nothing = f.credits.reverse_purchase(&acme, 10, "chargeback-2", "").await.expect("empty wallet");
    assert_eq!((nothing.posted, nothing.reversed, nothing.unrecovered), (None, 0, 10));
    assert_clean(&f.credits).await;
}

/// Entries are written only with their transaction (by the posting functions on
/// Postgres, which has no foreign key from entries to transactions since migration
/// 0018): an entry naming no stored transaction is a violation the audit reports.
async fn audit_detects_entries_without_their_transaction(backend: Backend) {
    let f = fixture(backend).await;
    let acme = tenant(1);
    f.credits.grant(&acme, 100, "g", "").await.expect("grant");
    assert_clean(&f.credits).await;
    // A balanced pair on platform accounts: nothing else in the audit is off.
    let stray = "INSERT INTO ledger_entries (transaction_id, account, amount) \
                 VALUES ('tx_stray', 'platform:revenue', 5), ('tx_stray', 'platform:promotions', -5)";
    match backend {
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&f.db.url).await.expect("connect");
            sqlx::query("PRAGMA foreign_keys = OFF").execute(&mut conn).await.expect("pragma");
            sqlx::query(stray).execute(&mut conn).await.expect("tamper");
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&f.db.url).await.expect("connect");
            sqlx::query(stray).execute(&mut conn).await.expect("tamper");
        }
    }
    let report = f.credits.audit().await.expect("audit");
    assert!(!report.is_clean(), "{report:?}");
    assert_eq!(report.orphaned, vec!["tx_stray".to_owned()]);
    assert!(report.imbalanced.is_empty() && report.mismatches.is_empty() && report.negative.is_empty(), "{report:?}");
}

async fn audit_detects_a_tampered_cached_balance(backend: Backend) {
    let f = fixture(backend).await;
    let acme = tenant(1);
    f.credits.grant(&acme, 100, "g", "").await.expect("grant");
    f.credits.reserve(&acme, 10, Duration::minutes(1), "r", "").await.expect("reserve");
    assert_clean(&f.credits).await;
    let wallet = Account::Wallet(acme.clone()).key();
    let held = Account::Held(acme.clone()).key();
    let tamper = "UPDATE ledger_balances SET balance = balance + 5 WHERE account = $1 OR account = $2";
    match backend {
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&f.db.url).await.expect("connect");
            sqlx::query(tamper).bind(&wallet).bind(&held).execute(&mut conn).await.expect("tamper");
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&f.db.url).await.expect("connect");
            sqlx::query(tamper).bind(&wallet).bind(&held).execute(&mut conn).await.expect("tamper");
        }
    }
    let report = f.credits.audit().await.expect("audit");
    assert!(!report.is_clean());
    let mut accounts: Vec<_> = report.mismatches.iter().map(|m| (m.account.clone(), m.cached, m.computed)).collect();
    accounts.sort();
    let mut expected = vec![(held.clone(), 15, 10), (wallet, 95, 90)];
    expected.sort();
    assert_eq!(accounts, expected);
    assert_eq!(report.holds_mismatched.len(), 1, "{report:?}");
    assert_eq!(report.holds_mismatched[0].account, held);
    assert!(report.imbalanced.is_empty() && report.negative.is_empty());
}

async fn paginates_transactions_with_a_cursor_and_filters(backend: Backend) {
    let f = fixture(backend).await;
    let acme = tenant(1);
    let start = f.clock.now();
    f.credits.grant(&acme, 1000, "g", "").await.expect("grant");
    for i in 0..7 {
        f.clock.advance(Duration::seconds(1));
        f.credits.debit(&acme, 1 + i, &format!("d{i}"), "").await.expect("debit");
    }
    f.credits.grant(&tenant(2), 5, "other", "").await.expect("other tenant");

    let mut seen = Vec::new();
    let mut query = TransactionQuery { limit: 3, ..TransactionQuery::default() };
    let mut pages = 0;
    loop {
        let page = f.credits.transactions(&acme, &query).await.expect("page");
        pages += 1;
        assert!(page.transactions.len() <= 3);
        seen.extend(page.transactions.iter().map(|t| t.idempotency_key.to_string()));
        match page.next {
            Some(cursor) => query.after = Some(cursor),
            None => break,
        }
    }
    assert_eq!(seen, ["g", "d0", "d1", "d2", "d3", "d4", "d5", "d6"]);
    assert_eq!(pages, 3);

    let debits = TransactionQuery { kinds: vec![TransactionKind::Debit], limit: 100, ..TransactionQuery::default() };
    let page = f.credits.transactions(&acme, &debits).await.expect("page");
    assert_eq!(page.transactions.len(), 7);
    assert!(page.transactions.iter().all(|t| t.kind == TransactionKind::Debit && t.entries.len() == 2));
    assert_eq!(page.next, None);

    let window = TransactionQuery {
        since: Some(start + Duration::seconds(2)),
        until: Some(start + Duration::seconds(4)),
        ..TransactionQuery::default()
    };
    let keys: Vec<_> = f
        .credits
        .transactions(&acme, &window)
        .await
        .expect("page")
        .transactions
        .into_iter()
        .map(|t| t.idempotency_key.to_string())
        .collect();
    assert_eq!(keys, ["d1", "d2"]);
}

/// A small deterministic generator (xorshift64*), so a failure names its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self) -> [u8; 16] {
        let (a, b) = (self.next(), self.next());
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&a.to_le_bytes());
        out[8..].copy_from_slice(&b.to_le_bytes());
        out
    }
}

fn describe(outcome: &Result<maestro_core::Posted, LedgerError>) -> String {
    match outcome {
        Ok(posted) => format!("{posted:?}"),
        Err(err) => format!("error: {err}"),
    }
}

async fn store_matches_the_model_under_random_operations(backend: Backend) {
    let (sequences, ops) = match backend {
        Backend::Sqlite => (12, 60),
        Backend::Postgres => (6, 60),
    };
    let (mut posted, mut replayed, mut refused) = (0, 0, 0);
    for seed in 1..=sequences {
        let f = fixture(backend).await;
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ seed);
        let tenants = [tenant(1), tenant(2)];
        let mut model = Model::new();
        let mut now: DateTime<Utc> = f.clock.now();
        let mut holds: Vec<HoldId> = Vec::new();
        let mut postings: Vec<Posting> = Vec::new();
        for step in 0..ops {
            let t = tenants[rng.below(2) as usize].clone();
            let id = TransactionId::from_random(rng.bytes());
            let key = format!("k{}", rng.below(40));
            let amount = rng.below(120) as i64;
            let posting = match rng.below(10) {
                0 | 1 => Posting::grant(id, t, amount + 1, &key, ""),
                2 => Posting::purchase_reversal(id, t, amount + 1, &key, ""),
                3 | 4 => Posting::debit(id, t, amount, &key, ""),
                5 => {
                    let hold = HoldId::from_random(rng.bytes());
                    holds.push(hold.clone());
                    let expires = now + Duration::seconds(1 + rng.below(5) as i64);
                    Posting::reserve(id, t, hold, amount, expires, &key, "")
                }
                6 => match holds.get(rng.below(holds.len() as u64 + 1) as usize).and_then(|h| model.hold(h)) {
                    Some(hold) => Posting::settle(id, &hold.clone(), amount.min(hold.amount), &key, ""),
                    None => continue,
                },
                7 => match holds.get(rng.below(holds.len() as u64 + 1) as usize).and_then(|h| model.hold(h)) {
                    Some(hold) => Posting::void(id, &hold.clone(), &key, ""),
                    None => continue,
                },
                8 => {
                    now += Duration::seconds(rng.below(4) as i64);
                    let due = model.due_holds(now);
                    let stored = f.store.due_holds(now, 1000).await.expect("due holds");
                    assert_eq!(stored, due, "seed {seed} step {step}: due holds");
                    for hold in due {
                        let posting = Posting::expire(TransactionId::from_random(rng.bytes()), &hold).expect("valid");
                        let expected = describe(&model.post(&posting, now));
                        assert_eq!(describe(&f.store.post(&posting, now).await), expected, "seed {seed} step {step}");
                    }
                    continue;
                }
                _ => {
                    let debits: Vec<_> = model.transactions().filter(|t| t.kind == TransactionKind::Debit).collect();
                    match debits.get(rng.below(debits.len() as u64 + 1) as usize) {
                        Some(original) => Posting::refund(id, &(*original).clone(), &key, ""),
                        None => match postings.get(rng.below(postings.len() as u64 + 1) as usize) {
                            Some(earlier) => Ok(earlier.clone()),
                            None => continue,
                        },
                    }
                }
            };
            let Ok(posting) = posting else { continue };
            let expected = model.post(&posting, now);
            if matches!(&expected, Ok(p) if !p.replayed) {
                postings.push(posting.clone());
            }
            let actual = f.store.post(&posting, now).await;
            assert_eq!(describe(&actual), describe(&expected), "seed {seed} step {step}: {posting:?}");
            match expected {
                Ok(p) if p.replayed => replayed += 1,
                Ok(_) => posted += 1,
                Err(_) => refused += 1,
            }
        }
        for t in &tenants {
            assert_eq!(f.store.balance(t).await.expect("balance"), model.balance(t), "seed {seed}");
        }
        let report = f.store.audit().await.expect("audit");
        assert!(report.is_clean(), "seed {seed}: {report:?}");
        assert_eq!(report.transactions, model.audit().transactions, "seed {seed}");
        let total: i64 = model.transactions().flat_map(|t| &t.entries).map(|e| e.amount).sum();
        assert_eq!(total, 0);
    }
    println!("{backend:?}: model test posted {posted}, replayed {replayed}, refused {refused}");
    assert!(posted > 0 && replayed > 0 && refused > 0, "the sequences exercise every outcome");
}

async fn a_batch_answers_each_posting_in_arrival_order_as_if_posted_alone(backend: Backend) {
    let f = fixture(backend).await;
    let acme = tenant(1);
    f.credits.grant(&acme, 25, "g", "").await.expect("grant");
    let now = f.clock.now();
    let debit = |key: &str, amount| Posting::debit(tx_id(), acme.clone(), amount, key, "").expect("valid");
    let batch = [
        debit("a", 10),
        debit("b", 10),
        debit("c", 10),
        debit("d", 5),
        debit("a", 10),
        debit("b", 11),
        debit("c", 1),
        Posting::debit(tx_id(), tenant(2), 1, "a", "").expect("valid"),
    ];
    let outcomes = f.store.post_batch(&batch, now).await;
    assert_eq!(
        summarize(&outcomes),
        [
            "a 15/0",
            "b 5/0",
            "insufficient 5/10",
            "d 0/0",
            "a 15/0 replay",
            "conflict b",
            "insufficient 0/1",
            "insufficient 0/1",
        ],
        "the wallet runs out half-way: the first callers are paid, the rest refused, keys kept per posting"
    );
    let first = outcomes[0].as_ref().expect("posted");
    assert_eq!(outcomes[4].as_ref().expect("replay").transaction, first.transaction);
    assert!(f.store.transaction_by_key(&acme, "c").await.expect("lookup").is_none(), "a refusal writes nothing");
    assert_eq!(f.credits.balance(&acme).await.expect("balance"), Balance { available: 0, held: 0 });
    let report = f.credits.audit().await.expect("audit");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.transactions, 4);
}

/// Each outcome of a batch in a line: the key and the balances after (`available/held`,
/// and whether it was a replay), or the refusal.
fn summarize(outcomes: &[Result<maestro_core::Posted, LedgerError>]) -> Vec<String> {
    outcomes
        .iter()
        .map(|o| match o {
            Ok(p) => format!(
                "{} {}/{}{}",
                p.transaction.idempotency_key,
                p.balance_after.available,
                p.balance_after.held,
                if p.replayed { " replay" } else { "" }
            ),
            Err(LedgerError::Insufficient { available, needed }) => format!("insufficient {available}/{needed}"),
            Err(LedgerError::IdempotencyConflict { key }) => format!("conflict {key}"),
            Err(err) => format!("{err}"),
        })
        .collect()
}

/// A batch of lone debits, each of another tenant (Postgres posts it with one plain
/// statement and answers those it did not write with a second): every outcome of a
/// debit in one batch, each exact and independent of the others.
async fn a_batch_of_debits_of_different_tenants_answers_each_as_if_posted_alone(backend: Backend) {
    let f = fixture(backend).await;
    let [paid, short, unfunded, replayed, conflicted, holding] = [11, 12, 13, 14, 15, 16].map(tenant);
    f.credits.grant(&paid, 100, "g", "").await.expect("grant");
    f.credits.grant(&short, 5, "g", "").await.expect("grant");
    for t in [&replayed, &conflicted] {
        f.credits.grant(t, 50, "g", "").await.expect("grant");
    }
    let original = f.credits.debit(&replayed, 20, "used", "m").await.expect("debit").expect("posted");
    f.credits.debit(&conflicted, 20, "used", "m").await.expect("debit").expect("posted");
    f.credits.grant(&holding, 100, "g", "").await.expect("grant");
    f.credits.reserve(&holding, 20, Duration::minutes(5), "r", "").await.expect("reserve");
    let now = f.clock.now();
    let debit = |t: &TenantId, amount, key: &str| Posting::debit(tx_id(), t.clone(), amount, key, "m").expect("valid");
    let batch = [
        debit(&paid, 30, "a"),
        debit(&short, 10, "a"),
        debit(&unfunded, 1, "a"),
        debit(&replayed, 20, "used"),
        debit(&conflicted, 21, "used"),
        debit(&holding, 30, "a"),
    ];
    let outcomes = f.store.post_batch(&batch, now).await;
    assert_eq!(
        summarize(&outcomes),
        ["a 70/0", "insufficient 5/10", "insufficient 0/1", "used 30/0 replay", "conflict used", "a 50/20"]
    );
    assert_eq!(outcomes[3].as_ref().expect("replay").transaction, original.transaction);
    for (posting, outcome) in batch.iter().zip(&outcomes).filter(|(_, o)| o.as_ref().is_ok_and(|p| !p.replayed)) {
        let stored = f.store.transaction_by_key(&posting.tenant, "a").await.expect("lookup").expect("stored");
        assert_eq!(stored, outcome.as_ref().expect("posted").transaction);
        assert_eq!((&stored.id, &stored.entries, stored.created_at), (&posting.id, &posting.legs, now));
    }
    for t in [&short, &unfunded] {
        assert!(f.store.transaction_by_key(t, "a").await.expect("lookup").is_none(), "a refusal writes nothing");
    }
    let mut balances = Vec::new();
    for t in [&paid, &short, &unfunded, &replayed, &conflicted, &holding] {
        balances.push(f.credits.balance(t).await.expect("balance"));
    }
    let expected = [(70, 0), (5, 0), (0, 0), (30, 0), (30, 0), (50, 20)];
    assert_eq!(balances, expected.map(|(available, held)| Balance { available, held }));
    let report = f.credits.audit().await.expect("audit");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.transactions, 5 + 2 + 1 + 2, "grants, the used keys, the reserve, the two debits");
}

/// A batch of many debits of one tenant, each with its own key (SQLite runs them in
/// commands of several debits each): paid in order until the wallet runs out, then
/// refused; a key used before the batch is answered with its posting.
async fn a_long_batch_of_one_tenants_debits_pays_in_order_until_the_wallet_runs_out(backend: Backend) {
    let f = fixture(backend).await;
    let acme = tenant(30);
    f.credits.grant(&acme, 100, "g", "").await.expect("grant");
    let used = f.credits.debit(&acme, 4, "used", "m").await.expect("debit").expect("posted");
    let now = f.clock.now();
    let mut batch: Vec<Posting> =
        (0..40).map(|i| Posting::debit(tx_id(), acme.clone(), 3, &format!("k{i}"), "m").expect("valid")).collect();
    batch.insert(20, Posting::debit(tx_id(), acme.clone(), 4, "used", "m").expect("valid"));
    let outcomes = f.store.post_batch(&batch, now).await;
    assert_eq!(outcomes.len(), 41);
    let mut available = 96;
    for (i, (posting, outcome)) in batch.iter().zip(&outcomes).enumerate() {
        if i == 20 {
            let replay = outcome.as_ref().expect("replay");
            assert!(replay.replayed && replay.transaction == used.transaction, "{outcome:?}");
            continue;
        }
        if available >= 3 {
            available -= 3;
            let posted = outcome.as_ref().expect("posted");
            assert_eq!(
                (posted.transaction.id.clone(), posted.balance_after.available),
                (posting.id.clone(), available)
            );
        } else {
            assert!(
                matches!(outcome, Err(LedgerError::Insufficient { available: 0, needed: 3 })),
                "debit {i}: {outcome:?}"
            );
        }
    }
    assert_eq!(f.credits.balance(&acme).await.expect("balance"), Balance { available: 0, held: 0 });
    let report = f.credits.audit().await.expect("audit");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.transactions, 2 + 32, "the grant, the used key, 32 debits of 3");
}

fn tx_id() -> TransactionId {
    TransactionId::from_random(rand_bytes())
}

fn rand_bytes() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("random");
    bytes
}

/// One step of a batched run: a posting (built from the model's state at its place in the
/// serial order), the end of a batch, or the clock moving on (which ends the batch too).
#[derive(Debug, Clone)]
enum Step {
    Grant(i64),
    Debit(i64),
    Reversal(i64),
    Reserve(i64, i64),
    Settle(usize, i64),
    Void(usize),
    ExpireDue,
    Refund(usize),
    Replay(usize),
    Cut,
    Advance(i64),
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        2 => (1i64..80).prop_map(Step::Grant),
        4 => (1i64..60).prop_map(Step::Debit),
        1 => (1i64..60).prop_map(Step::Reversal),
        2 => ((1i64..60), (1i64..4)).prop_map(|(a, s)| Step::Reserve(a, s)),
        2 => ((0usize..6), (0i64..60)).prop_map(|(h, a)| Step::Settle(h, a)),
        1 => (0usize..6).prop_map(Step::Void),
        1 => Just(Step::ExpireDue),
        1 => (0usize..10).prop_map(Step::Refund),
        2 => (0usize..10).prop_map(Step::Replay),
        2 => Just(Step::Cut),
        1 => (0i64..3).prop_map(Step::Advance),
    ]
}

/// Runs `steps` for two fresh tenants (every third step is the second's, so batches mix
/// tenants as group commit's lanes do): postings go to the model one by one and to the
/// store in batches; every outcome and the balances must agree.
async fn run_batched(
    store: &Arc<dyn Store>,
    start: DateTime<Utc>,
    tenants: [TenantId; 2],
    steps: Vec<Step>,
) -> Result<(), String> {
    let mut model = Model::new();
    let mut now = start;
    let mut holds: Vec<HoldId> = Vec::new();
    let mut postings: Vec<Posting> = Vec::new();
    let mut batch: Vec<(Posting, String)> = Vec::new();
    let mut batches = 0;
    for (i, step) in steps.into_iter().chain([Step::Cut]).enumerate() {
        let key = format!("k{}", i % 23);
        let acme = tenants[usize::from(i % 3 == 2)].clone();
        let new: Vec<Result<Posting, LedgerError>> = match step {
            Step::Grant(a) => vec![Posting::grant(tx_id(), acme.clone(), a, &key, "")],
            Step::Debit(a) => vec![Posting::debit(tx_id(), acme.clone(), a, &key, "")],
            Step::Reversal(a) => vec![Posting::purchase_reversal(tx_id(), acme.clone(), a, &key, "")],
            Step::Reserve(a, secs) => {
                let hold = HoldId::from_random(rand_bytes());
                holds.push(hold.clone());
                vec![Posting::reserve(tx_id(), acme.clone(), hold, a, now + Duration::seconds(secs), &key, "")]
            }
            Step::Settle(h, a) => match holds.get(h).and_then(|h| model.hold(h)) {
                Some(hold) => vec![Posting::settle(tx_id(), &hold.clone(), a.min(hold.amount), &key, "")],
                None => continue,
            },
            Step::Void(h) => match holds.get(h).and_then(|h| model.hold(h)) {
                Some(hold) => vec![Posting::void(tx_id(), &hold.clone(), &key, "")],
                None => continue,
            },
            Step::ExpireDue => model.due_holds(now).iter().map(|h| Posting::expire(tx_id(), h)).collect(),
            Step::Refund(j) => {
                let debits: Vec<_> = model.transactions().filter(|t| t.kind == TransactionKind::Debit).collect();
                match debits.get(j) {
                    Some(original) => vec![Posting::refund(tx_id(), &(*original).clone(), &key, "")],
                    None => continue,
                }
            }
            Step::Replay(j) => match postings.get(j) {
                Some(earlier) => vec![Ok(earlier.clone())],
                None => continue,
            },
            Step::Cut | Step::Advance(_) => {
                if !batch.is_empty() {
                    batches += 1;
                    let sent: Vec<Posting> = batch.iter().map(|(p, _)| p.clone()).collect();
                    let outcomes = store.post_batch(&sent, now).await;
                    if outcomes.len() != batch.len() {
                        return Err(format!(
                            "batch {batches}: {} outcomes for {} postings",
                            outcomes.len(),
                            batch.len()
                        ));
                    }
                    for ((posting, expected), actual) in batch.drain(..).zip(outcomes) {
                        if describe(&actual) != expected {
                            return Err(format!(
                                "batch {batches}: {posting:?}\n  store: {}\n  model: {expected}",
                                describe(&actual)
                            ));
                        }
                    }
                }
                if let Step::Advance(secs) = step {
                    now += Duration::seconds(secs);
                }
                continue;
            }
        };
        for posting in new.into_iter().flatten() {
            let expected = model.post(&posting, now);
            if matches!(&expected, Ok(p) if !p.replayed) {
                postings.push(posting.clone());
            }
            batch.push((posting, describe(&expected)));
        }
    }
    for tenant in &tenants {
        let balance = store.balance(tenant).await.map_err(|e| e.to_string())?;
        if balance != model.balance(tenant) {
            return Err(format!("balance {balance:?}, model {:?}", model.balance(tenant)));
        }
    }
    Ok(())
}

async fn batches_match_the_model_posting_one_by_one(backend: Backend) {
    let f = fixture(backend).await;
    let cases = match backend {
        Backend::Sqlite => 48,
        Backend::Postgres => 24,
    };
    // Every case (and every shrinking attempt) gets tenants of its own.
    check_batches_against_the_model(&f, cases, proptest::collection::vec(step(), 1..50), [0xBA, 0xBB]).await;
}

/// Runs `cases` sequences of steps from `strategy`, each posted in batches and checked
/// against the model by `run_batched`, on fresh tenants per case (tagged `tags`), then
/// audits the store.
async fn check_batches_against_the_model(
    f: &Fixture,
    cases: u32,
    strategy: impl proptest::strategy::Strategy<Value = Vec<Step>>,
    tags: [u8; 2],
) {
    use proptest::test_runner::{Config, TestRunner};
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    let next_tenant = std::sync::atomic::AtomicU64::new(0);
    let handle = tokio::runtime::Handle::current();
    let start = f.clock.now();
    let result = tokio::task::block_in_place(|| {
        TestRunner::new(config).run(&strategy, |steps| {
            let n = next_tenant.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let tenant = |which: u8| {
                let mut seed = [0u8; 16];
                seed[..8].copy_from_slice(&n.to_be_bytes());
                seed[8] = which;
                TenantId::from_random(seed)
            };
            handle
                .block_on(run_batched(&f.store, start, [tenant(tags[0]), tenant(tags[1])], steps))
                .map_err(proptest::test_runner::TestCaseError::fail)
        })
    });
    if let Err(err) = result {
        panic!("{err}");
    }
    let report = f.store.audit().await.expect("audit");
    assert!(report.is_clean(), "{report:?}");
    assert!(report.transactions > 0);
}

/// The real store, counting how its postings reach it.
#[derive(Debug)]
struct Counted {
    inner: Arc<dyn Store>,
    alone: std::sync::atomic::AtomicUsize,
    batches: std::sync::atomic::AtomicUsize,
    batched: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl maestro_core::LedgerStore for Counted {
    async fn post(&self, posting: &Posting, at: DateTime<Utc>) -> Result<maestro_core::Posted, LedgerError> {
        self.alone.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.post(posting, at).await
    }
    async fn post_batch(
        &self,
        postings: &[Posting],
        at: DateTime<Utc>,
    ) -> Vec<Result<maestro_core::Posted, LedgerError>> {
        self.batches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.batched.fetch_add(postings.len(), std::sync::atomic::Ordering::Relaxed);
        self.inner.post_batch(postings, at).await
    }
    async fn balance(&self, tenant: &TenantId) -> Result<Balance, maestro_core::StoreError> {
        self.inner.balance(tenant).await
    }
    async fn hold(
        &self,
        id: &HoldId,
        tenant: Option<&TenantId>,
    ) -> Result<Option<maestro_core::Hold>, maestro_core::StoreError> {
        self.inner.hold(id, tenant).await
    }
    async fn due_holds(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<maestro_core::Hold>, maestro_core::StoreError> {
        self.inner.due_holds(now, limit).await
    }
    async fn transaction_by_key(
        &self,
        tenant: &TenantId,
        key: &str,
    ) -> Result<Option<maestro_core::Transaction>, maestro_core::StoreError> {
        self.inner.transaction_by_key(tenant, key).await
    }
    async fn transactions(
        &self,
        tenant: &TenantId,
        query: &TransactionQuery,
    ) -> Result<maestro_core::TransactionPage, maestro_core::StoreError> {
        self.inner.transactions(tenant, query).await
    }
    async fn audit(&self) -> Result<maestro_core::AuditReport, maestro_core::StoreError> {
        self.inner.audit().await
    }
}

async fn concurrent_callers_of_one_tenant_share_commits_and_never_overdraw(backend: Backend) {
    const CALLERS: usize = 64;
    const DEBITS: usize = 20;
    let f = fixture(backend).await;
    let counted = Arc::new(Counted {
        inner: f.store.clone(),
        alone: Default::default(),
        batches: Default::default(),
        batched: Default::default(),
    });
    let credits = Credits::new(counted.clone(), f.clock.clone());
    let acme = tenant(1);
    f.credits.grant(&acme, 5_000, "g", "").await.expect("grant");
    // A caller alone posts at once, on its own.
    credits.debit(&acme, 10, "first", "").await.expect("debit").expect("posted");
    assert_eq!(counted.alone.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(counted.batches.load(std::sync::atomic::Ordering::Relaxed), 0);

    let tasks: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let (credits, acme) = (credits.clone(), acme.clone());
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for i in 0..DEBITS {
                    // Amounts vary so that refusals report what is left.
                    let amount = 1 + ((caller * 7 + i * 3) % 10) as i64;
                    let key = format!("c{caller}-{i}");
                    outcomes.push((amount, key.clone(), credits.debit(&acme, amount, &key, "").await));
                }
                outcomes
            })
        })
        .collect();
    let (mut paid, mut refused) = (0i64, 0usize);
    for task in tasks {
        for (amount, key, outcome) in task.await.expect("caller") {
            match outcome {
                Ok(Some(posted)) => {
                    assert!(!posted.replayed, "{key}");
                    assert!(posted.balance_after.available >= 0);
                    assert_eq!(posted.transaction.amount, amount);
                    paid += amount;
                }
                Err(CreditsError::Insufficient { available, needed }) => {
                    assert_eq!(needed, amount);
                    assert!(available < amount, "refused {key} with {available} available for {amount}");
                    refused += 1;
                }
                other => panic!("{key}: unexpected outcome {other:?}"),
            }
        }
    }
    let balance = f.credits.balance(&acme).await.expect("balance");
    assert_eq!(balance.available, 5_000 - 10 - paid, "every credit accounted for");
    assert!(balance.available < 10, "the wallet ran dry before the callers stopped: {balance:?}");
    assert!(refused > 0);
    let report = f.credits.audit().await.expect("audit");
    assert!(report.is_clean(), "{report:?}");
    let alone = counted.alone.load(std::sync::atomic::Ordering::Relaxed);
    let (batches, batched) = (
        counted.batches.load(std::sync::atomic::Ordering::Relaxed),
        counted.batched.load(std::sync::atomic::Ordering::Relaxed),
    );
    println!(
        "{backend:?}: {} debits in {} commits ({alone} alone, {batches} batches of {batched})",
        CALLERS * DEBITS + 1,
        alone + batches
    );
    assert_eq!(alone + batched, CALLERS * DEBITS + 1, "each posting reached the store once");
    assert!(batches > 0 && alone + batches < CALLERS * DEBITS, "concurrent callers shared commits");
}

/// A dead pooled connection (closed by the server while idle) costs a posting one retry,
/// never its outcome: the pool's per-acquire ping is skipped for postings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_posting_survives_connections_the_server_closed_while_idle_on_postgres() {
    let f = fixture(Backend::Postgres).await;
    let acme = tenant(1);
    f.credits.grant(&acme, 100, "g", "").await.expect("grant");
    f.credits.debit(&acme, 10, "d1", "").await.expect("debit");
    let mut admin = sqlx::PgConnection::connect(&f.db.url).await.expect("connect");
    let closed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = 'idle'",
    )
    .fetch_all(&mut admin)
    .await
    .expect("terminate the pool's connections");
    assert!(!closed.is_empty(), "the pool held idle connections");
    let posted = f.credits.debit(&acme, 10, "d2", "").await.expect("debit after the server closed connections");
    let posted = posted.expect("posted");
    assert!(!posted.replayed);
    assert_eq!(posted.balance_after.available, 80);
    let replay = f.credits.debit(&acme, 10, "d2", "").await.expect("replay").expect("posted");
    assert!(replay.replayed);
    assert_eq!(f.credits.balance(&acme).await.expect("balance").available, 80);
    assert_clean(&f.credits).await;
}

/// `ledger_post` makes its own commit durable whatever the session's default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_posting_statement_commits_synchronously_whatever_the_session_says_on_postgres() {
    let f = fixture(Backend::Postgres).await;
    let mut conn = sqlx::PgConnection::connect(&f.db.url).await.expect("connect");
    sqlx::query("SET synchronous_commit = off").execute(&mut conn).await.expect("session default");
    let mut tx = conn.begin().await.expect("begin");
    let empty: Vec<String> = Vec::new();
    let answers: Vec<(String,)> = sqlx::query_as(
        "SELECT r_status FROM ledger_post($1, $1, $1, $1, $1, $1, '{}', $1, $1, '{}', $1, $1, $1, '{}', $1, '{}', $1, now())",
    )
    .bind(&empty)
    .fetch_all(&mut *tx)
    .await
    .expect("an empty batch");
    assert!(answers.is_empty());
    let setting: String =
        sqlx::query_scalar("SELECT current_setting('synchronous_commit')").fetch_one(&mut *tx).await.expect("setting");
    assert_eq!(setting, "on", "the transaction that posted waits for its WAL flush");
    tx.rollback().await.expect("rollback");
}

/// A lone debit (one statement of its own, not `ledger_post_set`) also makes its commit
/// durable whatever the session's default: on a database whose sessions default to
/// `synchronous_commit = off`, the posting's own server process writes the WAL at each
/// debit's commit (an asynchronous commit leaves that to the WAL writer), as its
/// per-process I/O statistics show (20 debits, at least 10 writes: the WAL writer may
/// have written some first; asynchronous commits write none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_debit_commits_synchronously_whatever_the_session_says_on_postgres() {
    let db = TestDb::new(Backend::Postgres).await;
    let mut admin = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    sqlx::query(
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET synchronous_commit = off', current_database()); END $$",
    )
    .execute(&mut admin)
    .await
    .expect("sessions default to asynchronous commits");
    let credits = Credits::new(db.open().await, ManualClock::new());
    let acme = tenant(1);
    credits.grant(&acme, 1_000, "g", "").await.expect("grant");
    credits.debit(&acme, 1, "first", "").await.expect("debit").expect("posted");
    let pid: i32 = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() \
         AND query LIKE '%INSERT INTO ledger_entries%'",
    )
    .fetch_one(&mut admin)
    .await
    .expect("the posting's server process");
    let setting: String = sqlx::query_scalar(
        "SELECT setting FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase, unnest(s.setconfig) AS setting \
         WHERE d.datname = current_database()",
    )
    .fetch_one(&mut admin)
    .await
    .expect("the database's default");
    assert_eq!(setting, "synchronous_commit=off");
    // A process's I/O statistics reach the shared ones within a second or so of a commit.
    async fn wal_writes(admin: &mut sqlx::PgConnection, pid: i32) -> i64 {
        sqlx::query_scalar(
            "SELECT coalesce(sum(writes), 0)::bigint FROM pg_stat_get_backend_io($1) WHERE object = 'wal'",
        )
        .bind(pid)
        .fetch_one(admin)
        .await
        .expect("statistics")
    }
    let before = wal_writes(&mut admin, pid).await;
    for n in 0..20 {
        credits.debit(&acme, 1, &format!("d{n}"), "").await.expect("debit").expect("posted");
    }
    // A process flushes its statistics at the end of a transaction when a second has
    // passed since its last flush (else ten seconds later): post once more after one.
    let mut written = 0;
    for n in 0..10 {
        tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
        credits.debit(&acme, 1, &format!("flush-{n}"), "").await.expect("debit").expect("posted");
        written = wal_writes(&mut admin, pid).await - before;
        if written >= 10 {
            break;
        }
    }
    assert!(written >= 10, "20 debits' commits wrote the WAL {written} times from their own process");
    assert_clean(&credits).await;
}

/// A batch of lone debits of different tenants is one plain statement on Postgres:
/// `ledger_post_set` runs only for the debits that statement did not write (to say
/// why), counted by the server's function statistics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_debits_of_different_tenants_is_one_plain_statement_on_postgres() {
    let db = TestDb::new(Backend::Postgres).await;
    let mut admin = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    sqlx::query("DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET track_functions = pl', current_database()); END $$")
        .execute(&mut admin)
        .await
        .expect("count function calls");
    let store = db.open().await;
    let clock = ManualClock::new();
    let credits = Credits::new(store.clone(), clock.clone());
    let tenants: Vec<TenantId> = (20..24).map(tenant).collect();
    for t in &tenants {
        credits.grant(t, 100, "g", "").await.expect("grant");
    }
    // A process flushes its statistics at the end of a transaction a second after its
    // last flush: a lone debit (no function) ends one after a second's wait.
    let mut flushes = 0;
    let mut calls = async |credits: &Credits, admin: &mut sqlx::PgConnection| -> i64 {
        tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
        flushes += 1;
        credits.debit(&tenants[0], 1, &format!("flush-{flushes}"), "").await.expect("debit").expect("posted");
        sqlx::query_scalar(
            "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_user_functions WHERE funcname = 'ledger_post_set'",
        )
        .fetch_one(admin)
        .await
        .expect("function statistics")
    };
    let before = calls(&credits, &mut admin).await;
    assert!(before >= 4, "the grants' calls were counted: {before}");
    let debit = |t: &TenantId, amount, key: &str| Posting::debit(tx_id(), t.clone(), amount, key, "").expect("valid");
    let batch: Vec<Posting> = tenants.iter().map(|t| debit(t, 10, "a")).collect();
    let outcomes = store.post_batch(&batch, clock.now()).await;
    assert!(outcomes.iter().all(|o| o.as_ref().is_ok_and(|p| !p.replayed)), "{outcomes:?}");
    assert_eq!(calls(&credits, &mut admin).await, before, "four debits posted, no function called");
    let batch = [debit(&tenants[1], 10, "b"), debit(&tenants[2], 1_000, "b"), debit(&tenants[3], 10, "b")];
    let outcomes = store.post_batch(&batch, clock.now()).await;
    assert!(matches!(outcomes[1], Err(LedgerError::Insufficient { available: 90, needed: 1_000 })), "{outcomes:?}");
    assert!(outcomes[0].is_ok() && outcomes[2].is_ok(), "{outcomes:?}");
    assert_eq!(calls(&credits, &mut admin).await, before + 1, "one call, for the refused debit");
    assert_clean(&credits).await;
}

/// SQLite posts a lone debit in one command to its connection's worker (`BEGIN
/// IMMEDIATE` to `COMMIT`). When a statement in the middle fails (here the transaction
/// row, on a taken transaction id, after the wallet's update), the debit is rolled back
/// and the connection never goes back to the pool inside its open transaction: more
/// postings than the pool has connections all succeed, and an outside connection takes
/// the write lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_one_command_debit_writes_nothing_and_leaves_no_open_transaction_on_sqlite() {
    let f = fixture(Backend::Sqlite).await;
    let acme = tenant(1);
    f.credits.grant(&acme, 100, "g", "").await.expect("grant");
    let id = tx_id();
    let first = Posting::debit(id.clone(), acme.clone(), 10, "d1", "").expect("valid");
    f.store.post(&first, Utc::now()).await.expect("first debit");
    let clash = Posting::debit(id, acme.clone(), 10, "d2", "").expect("valid");
    let err = f.store.post(&clash, Utc::now()).await.expect_err("the transaction id is taken");
    assert!(matches!(err, LedgerError::Store(_)), "{err:?}");
    assert_eq!(f.credits.balance(&acme).await.expect("balance").available, 90, "the update was rolled back");
    assert!(f.store.transaction_by_key(&acme, "d2").await.expect("lookup").is_none());

    let debits = (0..16).map(|i| {
        let posting = Posting::debit(tx_id(), acme.clone(), 1, &format!("after-{i}"), "").expect("valid");
        let store = f.store.clone();
        async move { store.post(&posting, Utc::now()).await }
    });
    for outcome in futures_util::future::join_all(debits).await {
        assert!(!outcome.expect("a debit after the failure").replayed);
    }
    assert_eq!(f.credits.balance(&acme).await.expect("balance").available, 74);
    let mut outside = sqlx::SqliteConnection::connect(&f.db.url).await.expect("connect");
    sqlx::query("BEGIN IMMEDIATE").execute(&mut outside).await.expect("the write lock is free");
    sqlx::query("ROLLBACK").execute(&mut outside).await.expect("rollback");
    assert_clean(&f.credits).await;
}

/// A lone debit whose caller goes away while its command runs (the future dropped after
/// one to several polls) is posted whole or not at all, and leaves no open transaction
/// behind on SQLite: the connection is closed, not pooled, unless the command finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debit_dropped_mid_command_is_all_or_nothing_and_leaves_no_open_transaction_on_sqlite() {
    use std::future::Future as _;
    use std::task::{Context, Waker};
    let f = fixture(Backend::Sqlite).await;
    let acme = tenant(1);
    f.credits.grant(&acme, 1000, "g", "").await.expect("grant");
    for i in 0..40 {
        let posting = Posting::debit(tx_id(), acme.clone(), 1, &format!("dropped-{i}"), "").expect("valid");
        let mut post = Box::pin(f.store.post(&posting, Utc::now()));
        for _ in 0..=(i % 5) {
            if post.as_mut().poll(&mut Context::from_waker(Waker::noop())).is_ready() {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    for i in 0..16 {
        let posting = Posting::debit(tx_id(), acme.clone(), 1, &format!("after-{i}"), "").expect("valid");
        f.store.post(&posting, Utc::now()).await.expect("a debit after the dropped ones");
    }
    let mut posted = 16;
    for i in 0..40 {
        posted +=
            i64::from(f.store.transaction_by_key(&acme, &format!("dropped-{i}")).await.expect("lookup").is_some());
    }
    assert_eq!(f.credits.balance(&acme).await.expect("balance").available, 1000 - posted);
    let mut outside = sqlx::SqliteConnection::connect(&f.db.url).await.expect("connect");
    sqlx::query("BEGIN IMMEDIATE").execute(&mut outside).await.expect("the write lock is free");
    sqlx::query("ROLLBACK").execute(&mut outside).await.expect("rollback");
    assert_clean(&f.credits).await;
}

/// The one-command debit on SQLite answers like the general path: a replay returns the
/// original (balance after included), another request with the key is a conflict, a
/// refusal writes nothing and leaves its key free, and a second reversal of one
/// transaction is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_one_command_debit_replays_conflicts_and_refuses_like_any_posting_on_sqlite() {
    let f = fixture(Backend::Sqlite).await;
    let acme = tenant(1);
    f.credits.grant(&acme, 50, "g", "").await.expect("grant");
    let posted = f.credits.debit(&acme, 20, "call", "calc").await.expect("debit").expect("posted");
    assert_eq!(posted.balance_after, Balance { available: 30, held: 0 });
    let replay = f.credits.debit(&acme, 20, "call", "calc").await.expect("replay").expect("posted");
    assert!(replay.replayed);
    assert_eq!(replay.transaction.id, posted.transaction.id);
    assert_eq!(replay.balance_after, posted.balance_after);
    let err = f.credits.debit(&acme, 21, "call", "calc").await.expect_err("another request");
    assert!(matches!(err, CreditsError::IdempotencyConflict { .. }), "{err:?}");
    let err = f.credits.debit(&acme, 31, "big", "").await.expect_err("insufficient");
    assert!(matches!(err, CreditsError::Insufficient { available: 30, needed: 31 }), "{err:?}");
    assert!(f.store.transaction_by_key(&acme, "big").await.expect("lookup").is_none(), "the key stays free");
    // A debit that reverses a transaction (no first-party posting is one today; the
    // command checks it all the same), once only.
    let mut reversal = Posting::debit(tx_id(), acme.clone(), 5, "reversal-1", "").expect("valid");
    reversal.reverses = Some(posted.transaction.id.clone());
    let reversed = f.store.post(&reversal, Utc::now()).await.expect("first reversal");
    assert_eq!(reversed.transaction.reverses.as_ref(), Some(&posted.transaction.id));
    let mut again = Posting::debit(tx_id(), acme.clone(), 5, "reversal-2", "").expect("valid");
    again.reverses = Some(posted.transaction.id.clone());
    let err = f.store.post(&again, Utc::now()).await.expect_err("reversed already");
    assert!(matches!(&err, LedgerError::AlreadyReversed(id) if *id == posted.transaction.id), "{err:?}");
    assert!(f.store.transaction_by_key(&acme, "reversal-2").await.expect("lookup").is_none());
    assert_eq!(f.credits.balance(&acme).await.expect("balance"), Balance { available: 25, held: 0 });
    assert_clean(&f.credits).await;
}

/// Steps of postings the set-based batch path takes whole (grants, debits and
/// replays of them): batches of these never fall back to the general path.
fn simple_step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        2 => (1i64..80).prop_map(Step::Grant),
        6 => (1i64..60).prop_map(Step::Debit),
        2 => (0usize..10).prop_map(Step::Replay),
        1 => Just(Step::Cut),
    ]
}

async fn batches_of_grants_debits_and_replays_match_the_model_posting_one_by_one(backend: Backend) {
    let f = fixture(backend).await;
    // Fresh tenants every case: their first grant creates the wallet mid-batch, after
    // debits the empty wallet refused.
    check_batches_against_the_model(&f, 32, proptest::collection::vec(simple_step(), 1..60), [0xCA, 0xCB]).await;
}

/// Postings keep their connection between them: one after another, they all run on the
/// same server process (the pool would hand out whichever connection is idle, and ping
/// it twice per posting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postings_one_after_another_run_on_one_kept_connection_on_postgres() {
    let f = fixture(Backend::Postgres).await;
    let acme = tenant(1);
    f.credits.grant(&acme, 1_000, "g", "").await.expect("grant");
    // Other work on the pool meanwhile, so it holds more than one connection.
    let reads: Vec<_> = (0..8).map(|_| f.credits.balance(&acme)).collect();
    for read in futures_util::future::join_all(reads).await {
        read.expect("balance");
    }
    for n in 0..20 {
        f.credits.debit(&acme, 10, &format!("d{n}"), "").await.expect("debit").expect("posted");
    }
    let mut admin = sqlx::PgConnection::connect(&f.db.url).await.expect("connect");
    let posting: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() \
         AND (query LIKE '%FROM ledger_post_set(%' OR query LIKE '%INSERT INTO ledger_entries%')",
    )
    .fetch_all(&mut admin)
    .await
    .expect("the server's sessions");
    assert_eq!(posting.len(), 1, "the postings ran on server processes {posting:?}");
    assert_eq!(f.credits.balance(&acme).await.expect("balance").available, 800);
    assert_clean(&f.credits).await;
}

/// A posting whose caller gave up mid-statement does not leave its connection to the
/// next posting in a broken state: every outcome stays exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postings_cut_off_mid_statement_leave_the_next_ones_exact_on_postgres() {
    let f = fixture(Backend::Postgres).await;
    let acme = tenant(1);
    f.credits.grant(&acme, 100_000, "g", "").await.expect("grant");
    let mut cut = 0;
    for n in 0..40u64 {
        let wait = std::time::Duration::from_micros(n * 25);
        if tokio::time::timeout(wait, f.credits.debit(&acme, 10, &format!("cut{n}"), "")).await.is_err() {
            cut += 1;
        }
    }
    // Whatever the cut-off ones did, each posts exactly once when asked again.
    for n in 0..40u64 {
        f.credits.debit(&acme, 10, &format!("cut{n}"), "").await.expect("debit").expect("posted");
        f.credits.debit(&acme, 10, &format!("after{n}"), "").await.expect("debit").expect("posted");
    }
    println!("{cut} of 40 postings cut off");
    assert_eq!(f.credits.balance(&acme).await.expect("balance").available, 100_000 - 80 * 10);
    assert_clean(&f.credits).await;
}

/// Plans made while the ledger was young do not stay: on a fresh database, once the
/// posting connection has been replanned, a tenant's postings look their keys up by the
/// key's unique index, never by reading the tenant's history through
/// `ledger_transactions_by_tenant` (which a plan made on the empty tables chose).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postings_on_a_young_ledger_stop_reading_the_tenants_history_on_postgres() {
    let f = fixture(Backend::Postgres).await;
    let acme = tenant(1);
    f.credits.grant(&acme, 1_000_000, "g", "").await.expect("grant");
    let mut admin = sqlx::PgConnection::connect(&f.db.url).await.expect("connect");
    // Rows read through the by-tenant index, as the server's statistics have them: a
    // backend reports its counts when it goes idle a second or more after its last report.
    let read_by_tenant = async |admin: &mut sqlx::PgConnection, next: &str| {
        tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
        f.credits.debit(&acme, 1, next, "").await.expect("debit").expect("posted");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        sqlx::query("SELECT pg_stat_clear_snapshot()").execute(&mut *admin).await.expect("fresh statistics");
        let read: i64 = sqlx::query_scalar(
            "SELECT idx_tup_read FROM pg_stat_user_indexes WHERE indexrelname = 'ledger_transactions_by_tenant'",
        )
        .fetch_one(&mut *admin)
        .await
        .expect("index statistics");
        read
    };
    for n in 0..1_100 {
        f.credits.debit(&acme, 1, &format!("young{n}"), "").await.expect("debit").expect("posted");
    }
    let before = read_by_tenant(&mut admin, "flush1").await;
    for n in 0..300 {
        f.credits.debit(&acme, 1, &format!("grown{n}"), "").await.expect("debit").expect("posted");
    }
    let after = read_by_tenant(&mut admin, "flush2").await;
    assert_eq!(after - before, 0, "postings read the tenant's history by tenant ({before} rows, then {after})");
    assert_clean(&f.credits).await;
}

/// A Postgres store whose postings kept connections may go away after its runtime has
/// stopped: the kept connections are closed, without the panic of a pooled connection
/// given back outside a runtime.
#[test]
fn a_store_with_kept_posting_connections_drops_outside_its_runtime_on_postgres() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (credits, db) = runtime.block_on(async {
        let f = fixture(Backend::Postgres).await;
        let acme = tenant(1);
        f.credits.grant(&acme, 100, "g", "").await.expect("grant");
        f.credits.debit(&acme, 10, "d", "").await.expect("debit").expect("posted");
        (f.credits, f.db)
    });
    drop(runtime);
    drop(credits);
    drop(db);
}

/// Migration 0019 rebuilds the SQLite ledger tables (no `AUTOINCREMENT`, reversals
/// indexed only where set): a ledger written before it keeps every transaction, entry,
/// `seq` and rule. Rows are written at 0018 with SQL (seq with gaps, as `AUTOINCREMENT`
/// leaves them), then the store opens the file and migrates it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_written_before_migration_19_keeps_its_rows_and_rules_on_sqlite() {
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("before-0019.db");
    let acme = tenant(1);
    let wallet = Account::Wallet(acme.clone()).key();
    let at = Utc::now();
    let (grant, debit, refund) = (tx_id(), tx_id(), tx_id());
    {
        let options = SqliteConnectOptions::new().filename(&path).create_if_missing(true).foreign_keys(true);
        let pool = SqlitePoolOptions::new().max_connections(1).connect_with(options).await.expect("open");
        maestro_host::storage::sqlite::MIGRATOR.run_to(18, &pool).await.expect("migrate to 0018");
        // A grant of 100, a debit of 30 and the debit's refund: the wallet holds 100.
        let rows = [
            (10, grant.as_str(), "grant", 100, "grant-1", None, 100, "platform:promotions"),
            (11, debit.as_str(), "debit", 30, "debit-1", None, 70, "platform:revenue"),
            (15, refund.as_str(), "refund", 30, "refund-1", Some(debit.as_str()), 100, "platform:revenue"),
        ];
        for (seq, id, kind, amount, key, reverses, after, platform) in rows {
            sqlx::query(
                "INSERT INTO ledger_transactions (seq, id, tenant_id, kind, amount, memo, idempotency_key, \
                 fingerprint, reverses, available_after, held_after, created_at) \
                 VALUES ($1, $2, $3, $4, $5, '', $6, 'f', $7, $8, 0, $9)",
            )
            .bind(seq)
            .bind(id)
            .bind(acme.as_str())
            .bind(kind)
            .bind(amount)
            .bind(key)
            .bind(reverses)
            .bind(after)
            .bind(at)
            .execute(&pool)
            .await
            .expect("transaction at 0018");
            let into_wallet = if kind == "debit" { -amount } else { amount };
            sqlx::query(
                "INSERT INTO ledger_entries (transaction_id, account, amount) VALUES ($1, $2, $3), ($1, $4, $5)",
            )
            .bind(id)
            .bind(&wallet)
            .bind(into_wallet)
            .bind(platform)
            .bind(-into_wallet)
            .execute(&pool)
            .await
            .expect("entries at 0018");
        }
        sqlx::query("INSERT INTO ledger_balances (account, class, tenant_id, balance) VALUES ($1, 'wallet', $2, 100)")
            .bind(&wallet)
            .bind(acme.as_str())
            .execute(&pool)
            .await
            .expect("balance at 0018");
        pool.close().await;
    }

    let location = maestro_host::storage::StoreLocation::Sqlite(path.clone());
    let store = maestro_host::storage::open_with(&location, &maestro_host::storage::StoreSettings::default())
        .await
        .expect("open and migrate");
    let credits = Credits::new(store, ManualClock::new());
    let page = credits.transactions(&acme, &TransactionQuery::default()).await.expect("transactions");
    let ids: Vec<&TransactionId> = page.transactions.iter().map(|t| &t.id).collect();
    assert_eq!(ids, [&grant, &debit, &refund]);
    assert_eq!(page.transactions[2].reverses.as_ref(), Some(&debit));
    assert_eq!(page.transactions[1].entries.len(), 2);
    assert_eq!(credits.balance(&acme).await.expect("balance"), Balance { available: 100, held: 0 });
    let report = credits.audit().await.expect("audit");
    assert!(report.is_clean() && report.transactions == 3, "{report:?}");

    // The rules hold on the new tables: a refund once only, keys unique per tenant.
    let err = credits.refund_debit(&acme, "debit-1", "refund-2", "").await.expect_err("refunded before");
    assert!(matches!(&err, CreditsError::AlreadyRefunded(id) if *id == debit), "{err:?}");
    let replay = credits.debit(&acme, 30, "debit-1", "").await;
    assert!(matches!(replay, Err(CreditsError::IdempotencyConflict { .. })), "{replay:?}");
    let posted = credits.debit(&acme, 25, "debit-2", "").await.expect("debit").expect("posted");
    assert_eq!(posted.balance_after.available, 75);
    let refund = credits.refund_debit(&acme, "debit-2", "refund-3", "").await.expect("refund");
    assert_eq!(refund.balance_after.available, 100);
    assert_clean(&credits).await;

    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.expect("connect");
    let seqs: Vec<i64> =
        sqlx::query_scalar("SELECT seq FROM ledger_transactions ORDER BY seq").fetch_all(&mut conn).await.expect("seq");
    assert_eq!(seqs, [10, 11, 15, 16, 17], "kept, then the largest + 1");
    let sequences: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_sequence WHERE name LIKE 'ledger_%'")
        .fetch_one(&mut conn)
        .await
        .expect("sqlite_sequence");
    assert_eq!(sequences, 0, "no AUTOINCREMENT left on the ledger");
    let parent: String = sqlx::query_scalar("SELECT \"table\" FROM pragma_foreign_key_list('ledger_entries')")
        .fetch_one(&mut conn)
        .await
        .expect("foreign key");
    assert_eq!(parent, "ledger_transactions");
    let err = sqlx::query("UPDATE ledger_entries SET amount = 1").execute(&mut conn).await.expect_err("immutable");
    assert!(err.to_string().contains("immutable"), "{err}");
    let err = sqlx::query("DELETE FROM ledger_transactions").execute(&mut conn).await.expect_err("immutable");
    assert!(err.to_string().contains("immutable"), "{err}");
}
