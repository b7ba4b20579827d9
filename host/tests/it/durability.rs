//! The embedded store's durability settings (`[store] durability`): what each one sets
//! on SQLite, the flusher that bounds `normal`'s power-loss window, and a real
//! `maestro serve` killed with SIGKILL under a load of paid calls — after which the
//! ledger's audit is clean and every call that returned a result is debited, exactly.
//! (A power loss cannot be simulated here; what `normal` risks then is stated from
//! SQLite's documented semantics in the README.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use maestro_core::{KeyScope, Role, TransactionKind, TransactionQuery};
use maestro_host::accounts::{Accounts, SystemClock};
use maestro_host::credits::Credits;
use maestro_host::storage::sqlite::SqliteStore;
use maestro_host::storage::{Durability, StoreSettings};
use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{Backend, TestDb};
use crate::server::{Server, maestro};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_durability_sets_its_synchronous_mode_and_normal_flushes_the_wal() {
    let db = TestDb::new(Backend::Sqlite).await;
    let path = db.dir().join("maestro.db");
    for (durability, expected) in [(Durability::Full, 2i64), (Durability::Normal, 1)] {
        let settings = StoreSettings { durability, flush_interval: Duration::from_millis(5) };
        let store = SqliteStore::open_with(&path, &settings).await.expect("opens");
        assert_eq!(store.synchronous().await.expect("pragma"), expected, "{durability:?}");
        match durability {
            Durability::Full => assert_eq!(store.wal_syncs(), None, "no flusher under full"),
            Durability::Normal => {
                let before = store.wal_syncs().expect("a flusher under normal");
                let accounts = Accounts::new(Arc::new(store.clone()), Arc::new(SystemClock));
                accounts.create_tenant("acme").await.expect("a commit");
                // The key write itself is fsynced before it returns; a tenant is left to
                // the flusher, which syncs within its interval.
                let deadline = Instant::now() + Duration::from_secs(30);
                while store.wal_syncs().expect("flusher") == before {
                    assert!(Instant::now() < deadline, "the flusher never synced the WAL");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }
}

/// Commits do not checkpoint the WAL on their own path (SQLite's automatic checkpoint
/// is only a backstop at 10,000 pages): the store's background checkpointer copies the
/// WAL into the database file, which, in WAL mode, nothing else writes. Under both
/// durabilities.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_is_checkpointed_in_the_background_under_each_durability() {
    for durability in [Durability::Full, Durability::Normal] {
        let db = TestDb::new(Backend::Sqlite).await;
        let path = db.dir().join("maestro.db");
        let settings = StoreSettings { durability, ..StoreSettings::default() };
        let store = SqliteStore::open_with(&path, &settings).await.expect("opens");
        let size = || std::fs::metadata(&path).expect("database file").len();
        let before = size();
        let credits = Credits::new(Arc::new(store.clone()), Arc::new(SystemClock));
        let tenant = maestro_core::TenantId::from_random([7; 16]);
        credits.grant(&tenant, 1_000_000, "g", "").await.expect("grant");
        let memo = "m".repeat(1000);
        for i in 0..200 {
            credits.debit(&tenant, 1, &format!("d{i}"), &memo).await.expect("debit").expect("posted");
        }
        // ~200 KiB of new rows: 2,000+ WAL pages, below the backstop.
        let deadline = Instant::now() + Duration::from_secs(30);
        while size() <= before {
            assert!(Instant::now() < deadline, "{durability:?}: the database file never grew from {before} bytes");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(credits.audit().await.expect("audit").is_clean());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paid_calls_survive_a_sigkill_of_the_server_with_every_credit_exact() {
    const PRICE: i64 = 3;
    const GRANT: i64 = 1_000_000;
    const CLIENTS: u64 = 8;
    let db = TestDb::new(Backend::Sqlite).await;
    let (plugins, policies) = (db.dir().join("plugins"), db.dir().join("policies"));
    std::fs::create_dir_all(&policies).expect("policies");
    crate::fixtures::install(&plugins, "calc");
    let policy = format!(
        "version = 1\n[[grant]]\nname = \"paid\"\nsubjects = [\"tenant:acme\"]\ntools = [\"calc.*\"]\ncredits = {PRICE}\n"
    );
    std::fs::write(policies.join("p.toml"), policy).expect("policy");

    // The server's own store file, set up in process before it starts.
    let path = db.dir().join("data/maestro.db");
    let location = maestro_host::storage::StoreLocation::Sqlite(path.clone());
    let store = maestro_host::storage::open(&location).await.expect("store");
    let accounts = Accounts::new(store.clone(), Arc::new(SystemClock));
    let credits = Credits::new(store.clone(), Arc::new(SystemClock));
    let tenant = accounts.create_tenant("acme").await.expect("tenant");
    let scope = KeyScope::Tenant { tenant_id: tenant.id.clone(), role: Role::Member };
    let token = accounts.create_key(scope, "load".into(), None).await.expect("key").token;
    credits.grant(&tenant.id, GRANT, "grant:start", "start").await.expect("grant");
    drop((accounts, credits, store));

    let mut command = maestro(&db, Backend::Sqlite);
    command
        .env("MAESTRO_PLUGIN_DIR", &plugins)
        .env("MAESTRO_POLICY_DIR", &policies)
        .env("MAESTRO_LOG", "warn")
        .env("MAESTRO_STORE_DURABILITY", "normal");
    let mut server = Server::start(command, &db.dir(), 1).await;

    let (returned, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let url = format!("{}/v1/tools/calc.evaluate/call", server.base);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (returned, stop, url, token) =
                (returned.clone(), stop.clone(), url.clone(), token.expose_secret().to_owned());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                while !stop.load(Ordering::SeqCst) {
                    let body = json!({ "arguments": { "expression": "6 * 7" } });
                    let Ok(reply) = client.post(&url).bearer_auth(&token).json(&body).send().await else { break };
                    if reply.status() != StatusCode::OK {
                        break;
                    }
                    // A result reached the caller: it must be paid for.
                    match reply.json::<serde_json::Value>().await {
                        Ok(answer) if answer["metering"]["credits"] == PRICE && answer["content"].is_array() => {
                            returned.fetch_add(1, Ordering::SeqCst);
                        }
                        _ => break,
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while returned.load(Ordering::SeqCst) < 300 {
        assert!(Instant::now() < deadline, "the load never reached 300 calls");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // SIGKILL mid-load: no shutdown, no checkpoint, calls in flight cut.
    server.child.kill().expect("sigkill");
    server.child.wait().expect("reaped");
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.expect("client task");
    }
    let returned = returned.load(Ordering::SeqCst);

    let store = maestro_host::storage::open(&location).await.expect("the store reopens after the kill");
    let credits = Credits::new(store.clone(), Arc::new(SystemClock));
    let audit = credits.audit().await.expect("audit");
    assert!(audit.is_clean(), "{audit:?}");
    let mut debits = 0i64;
    let mut query = TransactionQuery { kinds: vec![TransactionKind::Debit], limit: 500, ..Default::default() };
    loop {
        let page = credits.transactions(&tenant.id, &query).await.expect("page");
        debits += i64::try_from(page.transactions.len()).expect("small");
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
    }
    let returned = i64::try_from(returned).expect("small");
    assert!(debits >= returned, "every call that returned a result is debited: {debits} debits, {returned} results");
    assert!(
        debits <= returned + i64::try_from(CLIENTS).expect("small"),
        "only calls in flight at the kill may be debited without a result: {debits} debits, {returned} results"
    );
    let balance = credits.balance(&tenant.id).await.expect("balance");
    assert_eq!(balance.available, GRANT - PRICE * debits, "every credit exact");
    assert_eq!(balance.held, 0);
}
