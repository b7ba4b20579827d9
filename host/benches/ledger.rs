//! Ledger benchmark: durable debits with the balance check through `Credits::debit`, next
//! to a raw single-statement SQL debit on the same store. Prints figures, never asserts
//! timings.
//!
//! `cargo bench -p maestro-host --bench ledger` (Postgres runs when `TEST_DATABASE_URL`
//! names a server: the bench creates a fresh database on it and leaves it there).
//!
//! Method notes:
//! - Ours: `Credits::debit(tenant, 10, unique key, memo)`, i.e. the whole posting (replay
//!   lookup, conditional wallet update, transaction and entry rows, balance read-back) in
//!   one durable transaction. Each tenant is granted the maximum amount first, so the
//!   wallet never runs out.
//! - Raw: `UPDATE ledger_balances SET balance = balance - 10 WHERE account = $1 AND
//!   balance >= 10` on its own accounts in the same `ledger_balances` table, through a
//!   sqlx pool of the store's size and durability (SQLite: WAL, `synchronous=FULL`,
//!   autocommit; Postgres: `synchronous_commit = on`).
//! - Callers are tokio tasks, each issuing one debit after another. Two layouts: every
//!   caller on its own tenant (different rows), and all callers on one tenant (one row).
//! - A case runs a short warm-up, then counts the debits that start within the window;
//!   latency is one debit's wall time at the caller. `ours/raw` is the ratio of cost per
//!   debit (the inverse ratio of throughputs; goal ≤ 1.25).

use std::path::Path;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use maestro_core::TenantId;
use maestro_host::accounts::SystemClock;
use maestro_host::credits::Credits;
use maestro_host::storage::{StoreLocation, open};
use sqlx::Connection as _;

const WARMUP: Duration = Duration::from_millis(300);
const WINDOW: Duration = Duration::from_millis(2500);
const CALLERS: [usize; 3] = [1, 16, 64];
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
    let path = dir.path().join("ledger.db");
    println!("cores: {}", std::thread::available_parallelism().map_or(0, |n| n.get()));
    println!("window {:?} per case after {:?} warm-up; debits of {AMOUNT} credits", WINDOW, WARMUP);
    {
        let raw = sqlite_raw_pool(&path).await;
        bench_backend("sqlite", StoreLocation::Sqlite(path.clone()), Raw::Sqlite(raw)).await;
    }
    match std::env::var("TEST_DATABASE_URL") {
        Ok(server) if !server.is_empty() => {
            let url = fresh_postgres_database(&server).await;
            let pool = postgres_raw_pool(&url).await;
            let settings: Vec<(String, String)> = sqlx::query_as(
                "SELECT name, setting FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit') ORDER BY name",
            )
            .fetch_all(&pool)
            .await
            .expect("server settings");
            // `synchronous_commit` is this session's (on); `fsync = off` makes no commit durable.
            println!("\npostgres server settings: {settings:?}");
            let raw = Raw::Postgres(pool);
            bench_backend("postgres", StoreLocation::Postgres(url), raw).await;
        }
        _ => println!("\npostgres: skipped (TEST_DATABASE_URL is not set; `scripts/pg.sh start` prints one)"),
    }
}

/// The raw statement's pool, like the store's: 8 connections, WAL, `synchronous=FULL`.
async fn sqlite_raw_pool(path: &Path) -> sqlx::SqlitePool {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
    // The store creates the file and its schema; the raw pool only needs to reach it.
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10));
    SqlitePoolOptions::new().max_connections(8).connect_lazy_with(options)
}

/// The raw statement's pool, like the store's: 16 connections, `synchronous_commit = on`.
async fn postgres_raw_pool(url: &str) -> sqlx::PgPool {
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
    let options = PgConnectOptions::from_str(url).expect("postgres url").options([("synchronous_commit", "on")]);
    PgPoolOptions::new().max_connections(16).connect_lazy_with(options)
}

/// Creates `maestro_bench_ledger_<random>` on the server and returns its URL.
async fn fresh_postgres_database(server: &str) -> String {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).expect("random");
    let name = format!("maestro_bench_ledger_{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>());
    let mut admin = sqlx::PgConnection::connect(server).await.expect("connect to TEST_DATABASE_URL");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create bench database");
    admin.close().await.ok();
    // Replace the URL's path (the database name), keeping its query.
    let (base, query) = server.split_once('?').map_or((server, None), |(b, q)| (b, Some(q)));
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let prefix = base[authority_start..].find('/').map_or(base, |i| &base[..authority_start + i]);
    match query {
        Some(q) => format!("{prefix}/{name}?{q}"),
        None => format!("{prefix}/{name}"),
    }
}

#[derive(Clone)]
enum Raw {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

const RAW_DEBIT: &str = "UPDATE ledger_balances SET balance = balance - 10 WHERE account = $1 AND balance >= 10";

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

async fn bench_backend(label: &str, location: StoreLocation, raw: Raw) {
    let store = open(&location).await.expect("open store");
    let credits = Arc::new(Credits::new(store, Arc::new(SystemClock)));
    let max = CALLERS.iter().copied().max().unwrap_or(1);
    // Tenants 1..=max for ours, raw accounts on tenants 101..=100+max.
    let ours: Vec<TenantId> = (1..=max).map(|i| TenantId::from_random([i as u8; 16])).collect();
    let raws: Vec<String> =
        (1..=max).map(|i| format!("wallet:{}", TenantId::from_random([(100 + i) as u8; 16]))).collect();
    for tenant in &ours {
        credits.grant(tenant, GRANT, "bench-grant", "bench").await.expect("grant");
    }
    for (i, account) in raws.iter().enumerate() {
        raw.seed(account, &format!("raw-{i}")).await;
    }

    println!("\n{label}:");
    println!(
        "{:<18} {:>7} {:>5} {:>9} {:>7} {:>10} {:>9} {:>9} {:>8}",
        "layout", "callers", "impl", "debits", "seconds", "debits/s", "p50 µs", "p99 µs", "ours/raw"
    );
    let mut case = 0usize;
    for layout in [Layout::TenantPerCaller, Layout::OneTenant] {
        for callers in CALLERS {
            if layout == Layout::OneTenant && callers == 1 {
                continue;
            }
            case += 1;
            let ours_figures = measure(callers, {
                let credits = credits.clone();
                let tenants = ours.clone();
                move |caller, n| {
                    let credits = credits.clone();
                    let tenant = tenants[if layout == Layout::OneTenant { 0 } else { caller }].clone();
                    async move {
                        let key = format!("c{case}-{caller}-{n}");
                        credits.debit(&tenant, AMOUNT, &key, "bench").await.expect("debit").expect("posted");
                    }
                }
            })
            .await;
            let raw_figures = measure(callers, {
                let raw = raw.clone();
                let accounts = raws.clone();
                move |caller, _| {
                    let raw = raw.clone();
                    let account = accounts[if layout == Layout::OneTenant { 0 } else { caller }].clone();
                    async move { raw.debit(&account).await }
                }
            })
            .await;
            let ratio = raw_figures.rate() / ours_figures.rate();
            let name = match layout {
                Layout::TenantPerCaller => "tenant per caller",
                Layout::OneTenant => "one tenant",
            };
            for (which, f, r) in [("ours", &ours_figures, Some(ratio)), ("raw", &raw_figures, None)] {
                println!(
                    "{:<18} {:>7} {:>5} {:>9} {:>7.2} {:>10.0} {:>9.0} {:>9.0} {:>8}",
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
        }
    }
    let mut report = credits.audit().await.expect("audit");
    // The raw statement changes balances without entries: not the ledger's mismatches.
    report.mismatches.retain(|m| !raws.contains(&m.account));
    println!(
        "audit after the run (raw accounts aside): {} transactions, clean: {}",
        report.transactions,
        report.is_clean()
    );
}

/// Runs `callers` tasks issuing `debit(caller, n)` one after another: a warm-up, then the
/// debits that start within the window are counted and timed.
async fn measure<F, Fut>(callers: usize, debit: F) -> Figures
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
        debits: latencies.len(),
        seconds,
        p50: at(0.50).copied().unwrap_or_default(),
        p99: at(0.99).copied().unwrap_or_default(),
    }
}
