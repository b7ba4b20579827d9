//! Authentication and embedded-store durability benchmark. Prints figures, never
//! asserts timings.
//!
//! `cargo bench -p maestro-host --bench auth` (Postgres runs too when
//! `TEST_DATABASE_URL` names a server: a fresh database is created on it and left there).
//!
//! Method notes:
//! - `authenticate, cached`: `Accounts::authenticate` of one valid token, one call after
//!   another, with the key cache on: the store's key generation (SQLite: one `pread` of
//!   the sidecar epoch; Postgres: an atomic), a map lookup, SHA-256 and a constant-time
//!   compare, the expiry check. Beside it, the floor: the same token's parse and
//!   `ApiKey::verify` alone (no cache, no store), and `authenticate` with the cache off
//!   (one indexed read of the store per call, what every request paid before).
//! - `debit`: `Credits::debit` of 1 credit by one caller, one after another, on SQLite
//!   with `[store] durability = "full"` (an fsync per commit) and `"normal"` (the WAL
//!   fsynced by the flusher every 10 ms, and every second to show what the flusher
//!   itself costs), on fresh files in the same directory.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use maestro_core::{ApiKey, KeyId, KeyScope, KeyToken, Role, Store};
use maestro_host::accounts::{Accounts, KeyCacheSettings, SystemClock};
use maestro_host::credits::Credits;
use maestro_host::storage::{Durability, StoreLocation, StoreSettings, open_with};

const WINDOW: Duration = Duration::from_secs(2);

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().expect("temp dir");
    println!("cores: {}", std::thread::available_parallelism().map_or(0, |n| n.get()));
    println!("window {WINDOW:?} per case, one caller");
    floor();
    let location = StoreLocation::Sqlite(dir.path().join("auth.db"));
    authenticate("sqlite", open_with(&location, &StoreSettings::default()).await.expect("sqlite store")).await;
    match std::env::var("TEST_DATABASE_URL") {
        Ok(server) if !server.is_empty() => {
            let url = common::fresh_postgres_database(&server, "maestro_bench_auth").await;
            let store = open_with(&StoreLocation::Postgres(url), &StoreSettings::default()).await.expect("postgres");
            authenticate("postgres", store).await;
        }
        _ => println!("postgres: skipped (TEST_DATABASE_URL is not set)"),
    }
    let mut per_debit = Vec::new();
    let flush = StoreSettings::default().flush_interval;
    for (durability, flush_interval) in
        [(Durability::Full, flush), (Durability::Normal, flush), (Durability::Normal, Duration::from_secs(1))]
    {
        let name = format!("debit-{}-{}.db", durability.as_str(), flush_interval.as_millis());
        let location = StoreLocation::Sqlite(dir.path().join(name));
        let settings = StoreSettings { durability, flush_interval };
        let store = open_with(&location, &settings).await.expect("sqlite store");
        per_debit.push((durability, flush_interval, debit(store).await));
    }
    for (durability, flush_interval, cost) in &per_debit {
        let flush =
            if *durability == Durability::Normal { format!(", flush {flush_interval:?}") } else { String::new() };
        println!("sqlite debit, durability {}{flush:<12} {:>8.1} µs/debit", durability.as_str(), micros(*cost));
    }
    if let [(_, _, full), (_, _, normal), _] = per_debit.as_slice() {
        println!("sqlite debit: normal/full = {:.3}", normal.as_secs_f64() / full.as_secs_f64());
    }
}

/// Calls `op` one after another for the window; the mean time per call.
async fn per_call<F, Fut>(mut op: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..100 {
        op().await;
    }
    let (start, mut calls) = (Instant::now(), 0u32);
    while start.elapsed() < WINDOW {
        op().await;
        calls += 1;
    }
    start.elapsed() / calls.max(1)
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn floor() {
    let token = KeyToken::from_random([7; KeyToken::GENERATED_LEN]);
    let now = chrono::Utc::now();
    let key = ApiKey::issue(KeyId::from_random([1; 16]), KeyScope::Platform, "k".into(), &token, now, None);
    let secret = token.expose_secret().to_owned();
    let (start, mut calls) = (Instant::now(), 0u32);
    while start.elapsed() < WINDOW {
        let parsed = KeyToken::parse(std::hint::black_box(&secret)).expect("parses");
        assert!(matches!(key.verify(&parsed, now), Some(Ok(()))));
        calls += 1;
    }
    println!("floor: parse + verify (SHA-256, constant-time compare)  {:>8.2} µs", micros(start.elapsed() / calls));
}

async fn authenticate(backend: &str, store: Arc<dyn Store>) {
    let accounts = Accounts::new(store.clone(), Arc::new(SystemClock));
    let tenant = accounts.create_tenant("bench").await.expect("tenant");
    let scope = KeyScope::Tenant { tenant_id: tenant.id, role: Role::Member };
    let token = accounts.create_key(scope, "bench".into(), None).await.expect("key").token;
    let secret = token.expose_secret().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.key_generation().is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cached = per_call(|| {
        let (accounts, secret) = (&accounts, &secret);
        async move {
            assert!(accounts.authenticate(Some(secret)).await.expect("store").is_ok());
        }
    })
    .await;
    let uncached_accounts = Accounts::new(store.clone(), Arc::new(SystemClock))
        .with_key_cache(KeyCacheSettings { entries: 0, ..KeyCacheSettings::default() });
    let uncached = per_call(|| {
        let (accounts, secret) = (&uncached_accounts, &secret);
        async move {
            assert!(accounts.authenticate(Some(secret)).await.expect("store").is_ok());
        }
    })
    .await;
    let generation = per_call(|| {
        let store = &store;
        async move {
            std::hint::black_box(store.key_generation());
        }
    })
    .await;
    println!("{backend}: key generation read             {:>8.2} µs", micros(generation));
    println!("{backend}: authenticate, cached            {:>8.2} µs", micros(cached));
    println!("{backend}: authenticate, store read (before) {:>6.2} µs", micros(uncached));
    println!("{backend}: cached/store read = {:.3}", cached.as_secs_f64() / uncached.as_secs_f64());
}

async fn debit(store: Arc<dyn Store>) -> Duration {
    let accounts = Accounts::new(store.clone(), Arc::new(SystemClock));
    let credits = Credits::new(store.clone(), Arc::new(SystemClock));
    let tenant = accounts.create_tenant("bench").await.expect("tenant");
    credits.grant(&tenant.id, 1_000_000_000, "grant:bench", "bench").await.expect("grant");
    let mut n = 0u64;
    per_call(|| {
        n += 1;
        let (credits, tenant, key) = (&credits, &tenant.id, format!("debit:{n}"));
        async move {
            credits.debit(tenant, 1, &key, "bench").await.expect("debit");
        }
    })
    .await
}
