//! Ledger benchmark: durable debits with the balance check through `Credits::debit`, next
//! to a raw single-statement SQL debit on the same store in the same run. Prints figures
//! and ratios, never asserts timings.
//!
//! `cargo bench -p maestro-host --bench ledger` (Postgres runs when `TEST_DATABASE_URL`
//! names a server: the bench creates a fresh database on it and leaves it there). The
//! figures are durable only when the server runs with `fsync = on`: the bench prints the
//! server's `fsync`, `synchronous_commit` and `full_page_writes` and says so when they are
//! not (the test instance of `scripts/pg.sh` runs with `fsync = off`; for durable figures
//! start one and `ALTER SYSTEM SET fsync = on; SELECT pg_reload_conf()`).
//!
//! `LEDGER_BENCH_ONLY=normal` (or `full`, `postgres`, `sqlite`) runs only the backends
//! whose label contains it.
//!
//! Method notes:
//! - Ours: `Credits::debit(tenant, 10, unique key, memo)`, i.e. the whole posting
//!   (idempotency check, conditional wallet update, transaction and entry rows, balance
//!   after) durably committed; concurrent debits of one tenant go through the group
//!   commit (one statement and one commit per batch). Each tenant is granted the maximum
//!   amount first, so the wallet never runs out.
//! - Raw: `UPDATE ledger_balances SET balance = balance - 10 WHERE account = $1 AND
//!   balance >= 10` on its own accounts in the same `ledger_balances` table, autocommit,
//!   through a sqlx pool of the store's size and durability (SQLite: WAL, run once per
//!   `[store] durability`, `synchronous=FULL` and `NORMAL`; Postgres: `synchronous_commit = on`) without the pool's
//!   per-acquire ping, so the floor is the statement alone.
//! - Raw ×100 (the ceiling): one statement debiting 100 rows (`account = ANY($1)`), so
//!   one commit per 100 debits; counted as 100 debits.
//! - Callers are tokio tasks, each issuing one debit after another. Layouts: every caller
//!   on its own tenant (different rows), all callers on one tenant (one row).
//! - A case runs `ROUNDS` rounds, ours and raw alternating (ours first in even rounds,
//!   raw first in odd ones), so a busy moment of the shared machine hits both alike. A
//!   round runs a short warm-up, then counts the debits that start within the window;
//!   latency is one debit's wall time at the caller. Each row is the round with the
//!   median rate; `ours/raw` is the median of the rounds' ratios of cost per debit (the
//!   inverse ratio of throughputs; goal ≤ 1.25), printed with their range.

mod common;

use std::path::Path;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use maestro_core::TenantId;
use maestro_host::accounts::SystemClock;
use maestro_host::credits::Credits;
use maestro_host::storage::{Durability, StoreLocation, StoreSettings, open_with};

const WARMUP: Duration = Duration::from_millis(200);
const WINDOW: Duration = Duration::from_millis(800);
/// Interleaved rounds of ours and raw per case.
const ROUNDS: usize = 5;
/// (layout, callers) cases, in order.
const CASES: [(Layout, usize); 4] = [
    (Layout::TenantPerCaller, 1),
    (Layout::TenantPerCaller, 16),
    (Layout::TenantPerCaller, 64),
    (Layout::OneTenant, 64),
];
/// Rows one raw ×100 statement debits.
const BATCH: usize = 100;
const AMOUNT: i64 = 10;
const GOAL_RATIO: f64 = 1.25;
/// Largest single grant (`maestro_core::ledger::MAX_AMOUNT`): 10^11 debits of 10.
const GRANT: i64 = 1_000_000_000_000;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().expect("temp dir");
    println!("cores: {}", std::thread::available_parallelism().map_or(0, |n| n.get()));
    println!("window {:?} per case after {:?} warm-up; debits of {AMOUNT} credits", WINDOW, WARMUP);
    // The embedded store under each `[store] durability`, beside a raw pool with the same
    // `synchronous` (each on its own file).
    let only = std::env::var("LEDGER_BENCH_ONLY").unwrap_or_default();
    let wanted = |label: &str| label.contains(only.as_str());
    for durability in [Durability::Full, Durability::Normal] {
        let label = format!("sqlite durability={}", durability.as_str());
        if !wanted(&label) {
            continue;
        }
        let path = dir.path().join(format!("ledger-{}.db", durability.as_str()));
        let raw = sqlite_raw_pool(&path, durability).await;
        let settings = StoreSettings { durability, ..StoreSettings::default() };
        bench_backend(&label, StoreLocation::Sqlite(path), &settings, Raw::Sqlite(raw)).await;
    }
    match std::env::var("TEST_DATABASE_URL") {
        Ok(server) if !server.is_empty() && wanted("postgres") => {
            let url = common::fresh_postgres_database(&server, "maestro_bench_ledger").await;
            let pool = postgres_raw_pool(&url).await;
            let settings: Vec<(String, String)> = sqlx::query_as(
                "SELECT name, setting FROM pg_settings \
                 WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes', 'wal_sync_method') ORDER BY name",
            )
            .fetch_all(&pool)
            .await
            .expect("server settings");
            // `synchronous_commit` is this session's (on); `fsync = off` makes no commit durable.
            println!("\npostgres server settings: {settings:?}");
            let durable = settings.iter().any(|(n, v)| n == "fsync" && v == "on")
                && settings.iter().any(|(n, v)| n == "synchronous_commit" && v == "on");
            if !durable {
                println!("WARNING: fsync or synchronous_commit is off: these figures are NOT durable commits");
            }
            let raw = Raw::Postgres(pool);
            bench_backend("postgres", StoreLocation::Postgres(url), &StoreSettings::default(), raw).await;
        }
        _ if !wanted("postgres") => {}
        _ => println!("\npostgres: skipped (TEST_DATABASE_URL is not set; `scripts/pg.sh start` prints one)"),
    }
}

/// The raw statement's pool, like the store's: 8 connections, WAL, `synchronous=FULL` or
/// `NORMAL` as the store's durability; no ping before each statement. (Under `normal` the
/// store also runs its WAL flusher, which the raw pool does not: that is part of our cost.)
async fn sqlite_raw_pool(path: &Path, durability: Durability) -> sqlx::SqlitePool {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
    // The store creates the file and its schema; the raw pool only needs to reach it.
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(match durability {
            Durability::Full => SqliteSynchronous::Full,
            Durability::Normal => SqliteSynchronous::Normal,
        })
        .busy_timeout(Duration::from_secs(10));
    SqlitePoolOptions::new().max_connections(8).test_before_acquire(false).connect_lazy_with(options)
}

/// The raw statement's pool, like the store's: 16 connections, `synchronous_commit = on`;
/// no ping before each statement.
async fn postgres_raw_pool(url: &str) -> sqlx::PgPool {
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
    let options = PgConnectOptions::from_str(url).expect("postgres url").options([("synchronous_commit", "on")]);
    PgPoolOptions::new().max_connections(16).test_before_acquire(false).connect_lazy_with(options)
}

#[derive(Clone)]
enum Raw {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

const RAW_DEBIT: &str = "UPDATE ledger_balances SET balance = balance - 10 WHERE account = $1 AND balance >= 10";
/// Raw ×100: one statement (one commit) debiting each of its accounts.
const RAW_DEBIT_MANY_PG: &str =
    "UPDATE ledger_balances SET balance = balance - 10 WHERE account = ANY($1) AND balance >= 10";
const RAW_DEBIT_MANY_SQLITE: &str = "UPDATE ledger_balances SET balance = balance - 10 WHERE account IN (SELECT value FROM json_each($1)) AND balance >= 10";

impl Raw {
    async fn seed(&self, account: &str, tenant: &str) {
        let sql = "INSERT INTO ledger_balances (account, class, tenant_id, balance) VALUES ($1, 'wallet', $2, $3)";
        let done = match self {
            Self::Sqlite(pool) => sqlx::query(sql)
                .bind(account)
                .bind(tenant)
                .bind(i64::MAX / 2)
                .execute(pool)
                .await
                .map(|r| r.rows_affected()),
            Self::Postgres(pool) => sqlx::query(sql)
                .bind(account)
                .bind(tenant)
                .bind(i64::MAX / 2)
                .execute(pool)
                .await
                .map(|r| r.rows_affected()),
        };
        assert_eq!(done.expect("seed raw account"), 1);
    }

    async fn debit(&self, account: &str) {
        let updated = match self {
            Self::Sqlite(pool) => sqlx::query(RAW_DEBIT).bind(account).execute(pool).await.map(|r| r.rows_affected()),
            Self::Postgres(pool) => sqlx::query(RAW_DEBIT).bind(account).execute(pool).await.map(|r| r.rows_affected()),
        };
        assert_eq!(updated.expect("raw debit"), 1, "raw debit refused");
    }

    /// Debits each of `accounts` in one statement.
    async fn debit_many(&self, accounts: &[String]) {
        let updated = match self {
            Self::Sqlite(pool) => {
                let list = format!("[{}]", accounts.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(","));
                sqlx::query(RAW_DEBIT_MANY_SQLITE).bind(list).execute(pool).await.map(|r| r.rows_affected())
            }
            Self::Postgres(pool) => {
                sqlx::query(RAW_DEBIT_MANY_PG).bind(accounts).execute(pool).await.map(|r| r.rows_affected())
            }
        };
        assert_eq!(updated.expect("raw debits"), accounts.len() as u64, "raw debit refused");
    }
}

/// One case's figures.
struct Figures {
    debits: usize,
    seconds: f64,
    p50: Duration,
    p99: Duration,
}

impl Figures {
    fn rate(&self) -> f64 {
        self.debits as f64 / self.seconds
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Layout {
    /// Every caller debits its own tenant.
    TenantPerCaller,
    /// All callers debit one tenant.
    OneTenant,
}

async fn bench_backend(label: &str, location: StoreLocation, settings: &StoreSettings, raw: Raw) {
    let store = open_with(&location, settings).await.expect("open store");
    let credits = Arc::new(Credits::new(store, Arc::new(SystemClock)));
    let max = CASES.iter().map(|(_, c)| *c).max().unwrap_or(1);
    // Tenants 1..=max for ours; raw accounts: one per caller, and BATCH per caller for ×100.
    let ours: Vec<TenantId> = (1..=max).map(|i| TenantId::from_random([i as u8; 16])).collect();
    let raws: Vec<String> =
        (1..=max).map(|i| format!("wallet:{}", TenantId::from_random([(100 + i) as u8; 16]))).collect();
    let batches: Vec<Vec<String>> =
        (0..max).map(|caller| (0..BATCH).map(|j| format!("wallet:raw-{caller}-{j}")).collect()).collect();
    for tenant in &ours {
        credits.grant(tenant, GRANT, "bench-grant", "bench").await.expect("grant");
    }
    for (i, account) in raws.iter().chain(batches.iter().flatten()).enumerate() {
        raw.seed(account, &format!("raw-{i}")).await;
    }

    println!("\n{label}:");
    println!(
        "{:<18} {:>7} {:>8} {:>9} {:>7} {:>10} {:>9} {:>9} {:>8}",
        "layout", "callers", "impl", "debits", "seconds", "debits/s", "p50 µs", "p99 µs", "ours/raw"
    );
    for (case, (layout, callers)) in CASES.into_iter().enumerate() {
        // Ours and raw alternate in rounds (ABAB, then BABA…), so both see the same
        // machine; each figure is the median of its rounds, the ratio the median of the
        // rounds' ratios.
        let mut ours_rounds = Vec::with_capacity(ROUNDS);
        let mut raw_rounds = Vec::with_capacity(ROUNDS);
        for round in 0..ROUNDS {
            let ours_round = || {
                measure(callers, 1, {
                    let credits = credits.clone();
                    let tenants = ours.clone();
                    move |caller, n| {
                        let credits = credits.clone();
                        let tenant = tenants[if layout == Layout::OneTenant { 0 } else { caller }].clone();
                        async move {
                            let key = format!("c{case}-r{round}-{caller}-{n}");
                            credits.debit(&tenant, AMOUNT, &key, "bench").await.expect("debit").expect("posted");
                        }
                    }
                })
            };
            let raw_round = || {
                measure(callers, 1, {
                    let raw = raw.clone();
                    let accounts = raws.clone();
                    move |caller, _| {
                        let raw = raw.clone();
                        let account = accounts[if layout == Layout::OneTenant { 0 } else { caller }].clone();
                        async move { raw.debit(&account).await }
                    }
                })
            };
            if round % 2 == 0 {
                ours_rounds.push(ours_round().await);
                raw_rounds.push(raw_round().await);
            } else {
                raw_rounds.push(raw_round().await);
                ours_rounds.push(ours_round().await);
            }
        }
        let mut ratios: Vec<f64> = ours_rounds.iter().zip(&raw_rounds).map(|(o, r)| r.rate() / o.rate()).collect();
        let ratio = median_f64(&mut ratios);
        let spread = (ratios.first().copied().unwrap_or(0.0), ratios.last().copied().unwrap_or(0.0));
        let ours_figures = median_figures(ours_rounds);
        let raw_figures = median_figures(raw_rounds);
        let name = match layout {
            Layout::TenantPerCaller => "tenant per caller",
            Layout::OneTenant => "one tenant",
        };
        let mut rows = vec![("ours", ours_figures, Some(ratio)), ("raw", raw_figures, None)];
        if callers == max && layout == Layout::TenantPerCaller {
            let ceiling = measure(callers, BATCH, {
                let raw = raw.clone();
                let batches = batches.clone();
                move |caller, _| {
                    let raw = raw.clone();
                    let accounts = batches[caller].clone();
                    async move { raw.debit_many(&accounts).await }
                }
            })
            .await;
            rows.push(("raw ×100", ceiling, None));
        }
        for (which, f, r) in rows {
            println!(
                "{:<18} {:>7} {:>8} {:>9} {:>7.2} {:>10.0} {:>9.0} {:>9.0} {:>8}",
                name,
                callers,
                which,
                f.debits,
                f.seconds,
                f.rate(),
                f.p50.as_secs_f64() * 1e6,
                f.p99.as_secs_f64() * 1e6,
                r.map_or(String::new(), |r| format!("{r:.2}{}", if r <= GOAL_RATIO { "" } else { " >goal" })),
            );
        }
        println!("{:<18} {:>7} ratios of {ROUNDS} rounds: {:.2}–{:.2}", "", "", spread.0, spread.1);
    }
    let mut report = credits.audit().await.expect("audit");
    // The raw statement changes balances without entries: not the ledger's mismatches.
    report.mismatches.retain(|m| !m.account.starts_with("wallet:raw-") && !raws.contains(&m.account));
    println!(
        "audit after the run (raw accounts aside): {} transactions, clean: {}",
        report.transactions,
        report.is_clean()
    );
}

/// The median of `values` (sorted in place).
fn median_f64(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// The round with the median rate.
fn median_figures(mut rounds: Vec<Figures>) -> Figures {
    rounds.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    let middle = rounds.len() / 2;
    rounds.swap_remove(middle)
}

/// Runs `callers` tasks issuing `debit(caller, n)` (each `per_call` debits) one after
/// another: a warm-up, then the calls that start within the window are counted and timed.
async fn measure<F, Fut>(callers: usize, per_call: usize, debit: F) -> Figures
where
    F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let start = Instant::now();
    let window_start = start + WARMUP;
    let window_end = window_start + WINDOW;
    let tasks: Vec<_> = (0..callers)
        .map(|caller| {
            let debit = debit.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = 0usize;
                loop {
                    let began = Instant::now();
                    if began >= window_end {
                        break;
                    }
                    debit(caller, n).await;
                    n += 1;
                    if began >= window_start {
                        latencies.push(began.elapsed());
                    }
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("caller"));
    }
    // Debits that started within the window, over the time until the last one ended.
    let seconds = window_start.elapsed().as_secs_f64();
    latencies.sort();
    let at = |q: f64| latencies.get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)));
    Figures {
        debits: latencies.len() * per_call,
        seconds,
        p50: at(0.50).copied().unwrap_or_default(),
        p99: at(0.99).copied().unwrap_or_default(),
    }
}
