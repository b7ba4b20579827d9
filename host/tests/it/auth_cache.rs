//! The verified-key cache of `Accounts::authenticate`: what it keeps, and that revocation
//! and expiry still take effect at once — a key revoked with the CLI in another process
//! is refused by a running `maestro serve` on the very next request, over REST and MCP,
//! on SQLite; on Postgres as soon as the key notice arrives.

use std::sync::Arc;
use std::time::{Duration, Instant};

use maestro_core::{AccountStore, KeyScope, KeyState, KeyToken, Role};
use maestro_host::accounts::{Accounts, AuthError, KeyCacheSettings};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Backend, ManualClock, TestDb, backend_tests};
use crate::server::{Server, maestro, run};

backend_tests!(
    a_key_revoked_with_the_cli_in_another_process_is_refused_by_the_server,
    a_cached_key_expires_at_the_exact_time,
    a_wrong_token_with_a_cached_prefix_is_refused,
    the_cache_stays_bounded_under_many_prefixes,
    a_key_revoked_through_another_store_handle_is_refused_next,
);

/// Waits until the store vouches for its key generation (at once on SQLite; once the
/// listener listens on Postgres), so that the cache is really used.
async fn generation_ready(store: &dyn AccountStore) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.key_generation().is_none() {
        assert!(Instant::now() < deadline, "the store never vouched for its key generation");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The status of the next request after a revocation in another process. On SQLite that
/// very request must be refused (the epoch moved before the CLI returned). On Postgres
/// the revocation reaches the server's cache by a notice that may arrive after the
/// request, so requests are repeated until one is refused, with a deadline.
async fn refused<F, Fut>(backend: Backend, request: F) -> StatusCode
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = StatusCode>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = request().await;
        if backend == Backend::Sqlite || status != StatusCode::OK || Instant::now() > deadline {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Accounts over a fresh store with a manual clock, the cache in use.
async fn accounts(backend: Backend, settings: KeyCacheSettings) -> (TestDb, Accounts, Arc<ManualClock>) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    let clock = ManualClock::new();
    let accounts = Accounts::new(store.clone(), clock.clone()).with_key_cache(settings);
    generation_ready(store.as_ref()).await;
    (db, accounts, clock)
}

async fn tenant_key(accounts: &Accounts, expires_in: Option<chrono::Duration>) -> KeyToken {
    let tenant = match accounts.tenant_named("acme").await {
        Ok(tenant) => tenant,
        Err(_) => accounts.create_tenant("acme").await.expect("tenant"),
    };
    let scope = KeyScope::Tenant { tenant_id: tenant.id, role: Role::Member };
    let expires_at = expires_in.map(|d| accounts.now() + d);
    accounts.create_key(scope, "k".into(), expires_at).await.expect("key").token
}

/// An MCP `tools/list` over the stateless revision on a real server; the HTTP status.
async fn mcp_status(server: &Server, token: &str) -> StatusCode {
    let body = json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": { "_meta": {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {} } } });
    reqwest::Client::new()
        .post(format!("{}/mcp", server.base))
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/list")
        .json(&body)
        .send()
        .await
        .expect("mcp request")
        .status()
}

async fn a_key_revoked_with_the_cli_in_another_process_is_refused_by_the_server(backend: Backend) {
    use reqwest::Method;
    let db = TestDb::new(backend).await;
    let cli = |args: &[&str]| {
        let mut command = maestro(&db, backend);
        command.env("MAESTRO_LOG", "warn").args(args);
        run(command)
    };
    cli(&["tenant", "create", "acme"]);
    let created = |role: &str| -> (String, String) {
        let out = cli(&["key", "create", "--tenant", "acme", "--role", role, "--json"]);
        let created: Value = serde_json::from_slice(&out.stdout).expect("json");
        (created["token"].as_str().expect("token").to_owned(), created["id"].as_str().expect("id").to_owned())
    };
    let (rest_token, rest_id) = created("admin");
    let (mcp_token, mcp_id) = created("member");

    let server = Server::start(maestro(&db, backend), &db.dir(), 1).await;
    // Keys created by the CLI are accepted, and stay accepted from the cache.
    for _ in 0..5 {
        assert_eq!(server.call(Method::GET, "/v1/keys", &rest_token, None).await.0, StatusCode::OK);
        assert_eq!(mcp_status(&server, &mcp_token).await, StatusCode::OK);
    }

    cli(&["key", "revoke", &rest_id]);
    let rest = || async { server.call(Method::GET, "/v1/keys", &rest_token, None).await.0 };
    assert_eq!(refused(backend, rest).await, StatusCode::UNAUTHORIZED, "the next REST request after the revocation");
    assert_eq!(mcp_status(&server, &mcp_token).await, StatusCode::OK, "other keys stay accepted");

    cli(&["key", "revoke", &mcp_id]);
    let mcp = || mcp_status(&server, &mcp_token);
    assert_eq!(refused(backend, mcp).await, StatusCode::UNAUTHORIZED, "the next MCP request after the revocation");

    // A key created by the CLI while the server runs is accepted at once.
    let (fresh, _) = created("admin");
    assert_eq!(server.call(Method::GET, "/v1/keys", &fresh, None).await.0, StatusCode::OK);
    server.stop().await;
}

async fn a_cached_key_expires_at_the_exact_time(backend: Backend) {
    let ttl = Duration::from_secs(3600);
    let (_db, accounts, clock) = accounts(backend, KeyCacheSettings { entries: 16, ttl }).await;
    let token = tenant_key(&accounts, Some(chrono::Duration::minutes(30))).await;
    assert!(accounts.authenticate(Some(token.expose_secret())).await.expect("store").is_ok());
    assert_eq!(accounts.cached_keys(), 1, "the key is cached");

    clock.advance(chrono::Duration::minutes(30) - chrono::Duration::milliseconds(1));
    assert!(accounts.authenticate(Some(token.expose_secret())).await.expect("store").is_ok(), "1 ms before");
    clock.advance(chrono::Duration::milliseconds(1));
    assert_eq!(
        accounts.authenticate(Some(token.expose_secret())).await.expect("store"),
        Err(AuthError::Inactive(KeyState::Expired)),
        "at the expiry time, from the cache"
    );
    assert_eq!(accounts.cached_keys(), 1, "still cached: the clock, not the store, said no");
}

async fn a_wrong_token_with_a_cached_prefix_is_refused(backend: Backend) {
    let (_db, accounts, _clock) = accounts(backend, KeyCacheSettings::default()).await;
    let token = tenant_key(&accounts, None).await;
    let secret = token.expose_secret();
    assert!(accounts.authenticate(Some(secret)).await.expect("store").is_ok());
    assert_eq!(accounts.cached_keys(), 1);

    // Same lookup prefix, different secret: last character changed, or all of the rest.
    let last = if secret.ends_with('a') { 'b' } else { 'a' };
    let wrong_tail = format!("{}{last}", &secret[..secret.len() - 1]);
    let wrong_body = format!("{}{}", &secret[..11], "Z".repeat(secret.len() - 11));
    for wrong in [wrong_tail, wrong_body, format!("{secret}0")] {
        assert_eq!(accounts.authenticate(Some(&wrong)).await.expect("store"), Err(AuthError::Invalid), "{wrong}");
    }
    assert!(accounts.authenticate(Some(secret)).await.expect("store").is_ok(), "the real token still works");
}

async fn the_cache_stays_bounded_under_many_prefixes(backend: Backend) {
    let settings = KeyCacheSettings { entries: 4, ttl: Duration::from_secs(3600) };
    let (_db, accounts, _clock) = accounts(backend, settings).await;
    // Unknown prefixes are never cached, however many there are.
    for i in 0..500u32 {
        let mut bytes = [0u8; KeyToken::GENERATED_LEN];
        getrandom::fill(&mut bytes).expect("random");
        bytes[0] = (i % 256) as u8;
        let random = KeyToken::from_random(bytes);
        assert_eq!(accounts.authenticate(Some(random.expose_secret())).await.expect("store"), Err(AuthError::Invalid));
    }
    assert_eq!(accounts.cached_keys(), 0, "misses fill nothing");

    // Real keys fill it up to its bound, and evicted keys still authenticate.
    let mut tokens = Vec::new();
    for _ in 0..12 {
        tokens.push(tenant_key(&accounts, None).await);
    }
    for _ in 0..2 {
        for token in &tokens {
            assert!(accounts.authenticate(Some(token.expose_secret())).await.expect("store").is_ok());
            assert!(accounts.cached_keys() <= 4, "bounded: {}", accounts.cached_keys());
        }
    }
    assert_eq!(accounts.cached_keys(), 4);
}

async fn a_key_revoked_through_another_store_handle_is_refused_next(backend: Backend) {
    // Two handles on one store, as two processes have: the revocation goes through the
    // second, the request through the first.
    let (db, first, _clock) = accounts(backend, KeyCacheSettings::default()).await;
    let second = Accounts::new(db.open().await, Arc::new(maestro_host::accounts::SystemClock));
    let token = tenant_key(&first, None).await;
    assert!(first.authenticate(Some(token.expose_secret())).await.expect("store").is_ok());
    assert_eq!(first.cached_keys(), 1);

    let id = second.list_keys(None).await.expect("keys")[0].id.to_string();
    second.revoke_key(&id, None).await.expect("revoked");
    let refused = if backend == Backend::Sqlite {
        // One host: the sidecar epoch moved before `revoke_key` returned.
        first.authenticate(Some(token.expose_secret())).await.expect("store")
    } else {
        // Several replicas: the notice arrives on the listener (normally well under a
        // millisecond after the commit); poll for it with a deadline.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = first.authenticate(Some(token.expose_secret())).await.expect("store");
            if answer.is_err() || Instant::now() > deadline {
                break answer;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    assert_eq!(refused, Err(AuthError::Inactive(KeyState::Revoked)));
}
