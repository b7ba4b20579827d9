//! The storage conformance suite: every backend must behave the same for every port.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use maestro_core::{ApiKey, KeyId, KeyScope, KeyToken, Role, Store, StoreError, Tenant, TenantId, TenantName};

use crate::harness::{Backend, TestDb, backend_tests};

backend_tests!(
    creates_and_finds_tenants,
    rejects_duplicate_tenant_names,
    round_trips_platform_and_tenant_keys,
    rejects_keys_for_missing_tenants_and_duplicate_prefixes,
    lists_keys_per_tenant_oldest_first,
    revokes_keys_within_tenant_scope_once,
    bootstrap_inserts_only_on_an_empty_store,
    concurrent_bootstraps_insert_exactly_one_key,
    data_survives_reopening_the_store,
    reports_backend_and_answers_ping,
    a_unit_of_work_writes_a_posting_and_a_job_together_or_not_at_all,
    a_refused_posting_leaves_the_unit_of_work_usable,
);

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).expect("valid time")
}

fn seeded<const N: usize>(seed: u64) -> [u8; N] {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    std::array::from_fn(|_| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state.to_le_bytes()[0]
    })
}

fn tenant(name: &str, seed: u64, at: DateTime<Utc>) -> Tenant {
    Tenant {
        id: TenantId::from_random(seeded(seed)),
        name: TenantName::parse(name).expect("valid name"),
        created_at: at,
    }
}

fn key(scope: KeyScope, seed: u64, at: DateTime<Utc>) -> (ApiKey, KeyToken) {
    let token = KeyToken::from_random(seeded(seed));
    let key = ApiKey::issue(KeyId::from_random(seeded(seed + 1000)), scope, format!("key {seed}"), &token, at, None);
    (key, token)
}

async fn store(backend: Backend) -> (TestDb, Arc<dyn Store>) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    (db, store)
}

async fn creates_and_finds_tenants(backend: Backend) {
    let (_db, store) = store(backend).await;
    let t0 = now();
    let acme = tenant("acme", 1, t0);
    let globex = tenant("globex", 2, t0 + Duration::milliseconds(5));
    store.create_tenant(&globex).await.expect("create globex");
    store.create_tenant(&acme).await.expect("create acme");

    assert_eq!(store.tenant(&acme.id).await.expect("get"), Some(acme.clone()));
    assert_eq!(store.tenant_by_name(&globex.name).await.expect("by name"), Some(globex.clone()));
    assert_eq!(store.tenant(&TenantId::from_random(seeded(99))).await.expect("get"), None);
    assert_eq!(store.tenant_by_name(&TenantName::parse("nobody").expect("name")).await.expect("by name"), None);
    assert_eq!(store.list_tenants().await.expect("list"), vec![acme, globex], "oldest first");
}

async fn rejects_duplicate_tenant_names(backend: Backend) {
    let (_db, store) = store(backend).await;
    store.create_tenant(&tenant("acme", 1, now())).await.expect("first");
    let err = store.create_tenant(&tenant("acme", 2, now())).await.expect_err("duplicate name");
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(store.list_tenants().await.expect("list").len(), 1, "nothing written");
}

async fn round_trips_platform_and_tenant_keys(backend: Backend) {
    let (_db, store) = store(backend).await;
    let acme = tenant("acme", 1, now());
    store.create_tenant(&acme).await.expect("tenant");
    let (platform, _) = key(KeyScope::Platform, 10, now());
    let (mut member, token) = key(KeyScope::Tenant { tenant_id: acme.id.clone(), role: Role::Member }, 11, now());
    member.expires_at = Some(now() + Duration::days(30));
    store.insert_key(&platform).await.expect("platform key");
    store.insert_key(&member).await.expect("member key");

    let found = store.key_by_prefix(token.lookup_prefix()).await.expect("lookup").expect("found");
    assert_eq!(found, member, "every field round-trips, timestamps to the millisecond");
    assert_eq!(store.key_by_prefix(&platform.prefix).await.expect("lookup"), Some(platform));
    assert_eq!(store.key_by_prefix("zzzzzzzz").await.expect("lookup"), None);
}

async fn rejects_keys_for_missing_tenants_and_duplicate_prefixes(backend: Backend) {
    let (_db, store) = store(backend).await;
    let ghost = KeyScope::Tenant { tenant_id: TenantId::from_random(seeded(5)), role: Role::Admin };
    let err = store.insert_key(&key(ghost, 1, now()).0).await.expect_err("no such tenant");
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");

    let (first, _) = key(KeyScope::Platform, 2, now());
    store.insert_key(&first).await.expect("first");
    let (mut clash, _) = key(KeyScope::Platform, 3, now());
    clash.prefix = first.prefix.clone();
    let err = store.insert_key(&clash).await.expect_err("same prefix");
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(store.list_keys(None).await.expect("list"), vec![first], "nothing else written");
}

async fn lists_keys_per_tenant_oldest_first(backend: Backend) {
    let (_db, store) = store(backend).await;
    let t0 = now();
    let (acme, globex) = (tenant("acme", 1, t0), tenant("globex", 2, t0));
    store.create_tenant(&acme).await.expect("acme");
    store.create_tenant(&globex).await.expect("globex");
    let scope = |t: &Tenant, role| KeyScope::Tenant { tenant_id: t.id.clone(), role };
    let a2 = key(scope(&acme, Role::Viewer), 2, t0 + Duration::seconds(2)).0;
    let a1 = key(scope(&acme, Role::Admin), 1, t0 + Duration::seconds(1)).0;
    let g1 = key(scope(&globex, Role::Admin), 3, t0).0;
    let p = key(KeyScope::Platform, 4, t0 + Duration::seconds(3)).0;
    for k in [&a2, &a1, &g1, &p] {
        store.insert_key(k).await.expect("insert");
    }
    assert_eq!(store.list_keys(Some(&acme.id)).await.expect("acme"), vec![a1.clone(), a2.clone()]);
    assert_eq!(store.list_keys(Some(&globex.id)).await.expect("globex"), vec![g1.clone()]);
    assert_eq!(store.list_keys(None).await.expect("all"), vec![g1, a1, a2, p]);
}

async fn revokes_keys_within_tenant_scope_once(backend: Backend) {
    let (_db, store) = store(backend).await;
    let (acme, globex) = (tenant("acme", 1, now()), tenant("globex", 2, now()));
    store.create_tenant(&acme).await.expect("acme");
    store.create_tenant(&globex).await.expect("globex");
    let (k, _) = key(KeyScope::Tenant { tenant_id: acme.id.clone(), role: Role::Member }, 7, now());
    store.insert_key(&k).await.expect("insert");

    let err = store.revoke_key(&k.id, Some(&globex.id), now()).await.expect_err("other tenant");
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert_eq!(store.key_by_prefix(&k.prefix).await.expect("get").expect("key").revoked_at, None);

    let first = now();
    let revoked = store.revoke_key(&k.id, Some(&acme.id), first).await.expect("revoke");
    assert_eq!(revoked.revoked_at, Some(first));
    let again = store.revoke_key(&k.id, None, first + Duration::hours(1)).await.expect("revoke again");
    assert_eq!(again.revoked_at, Some(first), "the first revocation time is kept");

    let err = store.revoke_key(&KeyId::from_random(seeded(9)), None, now()).await.expect_err("unknown");
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}

async fn bootstrap_inserts_only_on_an_empty_store(backend: Backend) {
    let (_db, store) = store(backend).await;
    let (first, _) = key(KeyScope::Platform, 1, now());
    assert!(store.insert_bootstrap_key(&first).await.expect("bootstrap"));
    let (second, _) = key(KeyScope::Platform, 2, now());
    assert!(!store.insert_bootstrap_key(&second).await.expect("bootstrap again"));
    assert_eq!(store.list_keys(None).await.expect("list"), vec![first]);

    // A store whose first key was created offline is never bootstrapped.
    let (_db2, store2) = self::store(backend).await;
    let (offline, _) = key(KeyScope::Platform, 3, now());
    store2.insert_key(&offline).await.expect("offline key");
    assert!(!store2.insert_bootstrap_key(&key(KeyScope::Platform, 4, now()).0).await.expect("bootstrap"));
    assert_eq!(store2.list_keys(None).await.expect("list"), vec![offline]);
}

async fn concurrent_bootstraps_insert_exactly_one_key(backend: Backend) {
    let (_db, store) = store(backend).await;
    let attempts = (0..8u64).map(|i| {
        let store = store.clone();
        tokio::spawn(async move { store.insert_bootstrap_key(&key(KeyScope::Platform, 100 + i, now()).0).await })
    });
    let mut inserted = 0;
    for attempt in attempts {
        if attempt.await.expect("task").expect("bootstrap") {
            inserted += 1;
        }
    }
    assert_eq!(inserted, 1);
    assert_eq!(store.list_keys(None).await.expect("list").len(), 1);
}

async fn data_survives_reopening_the_store(backend: Backend) {
    let db = TestDb::new(backend).await;
    let acme = tenant("acme", 1, now());
    let (k, _) = key(KeyScope::Tenant { tenant_id: acme.id.clone(), role: Role::Admin }, 2, now());
    {
        let store = db.open().await;
        store.create_tenant(&acme).await.expect("tenant");
        store.insert_key(&k).await.expect("key");
    }
    let reopened = db.open().await;
    assert_eq!(reopened.list_tenants().await.expect("tenants"), vec![acme]);
    assert_eq!(reopened.list_keys(None).await.expect("keys"), vec![k]);
}

async fn reports_backend_and_answers_ping(backend: Backend) {
    let (_db, store) = store(backend).await;
    store.ping().await.expect("ping");
    let expected = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    assert_eq!(store.backend(), expected);
}

#[tokio::test]
async fn postgres_migrations_create_the_vector_extension() {
    use sqlx::Connection as _;
    let db = TestDb::new(Backend::Postgres).await;
    db.open().await;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    let version: String = sqlx::query_scalar("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        .fetch_one(&mut conn)
        .await
        .expect("pgvector is installed by the first migration");
    assert!(!version.is_empty());
}

fn grant(tenant: &TenantId, amount: i64, key: &str, seed: u64) -> maestro_core::Posting {
    maestro_core::Posting::grant(
        maestro_core::TransactionId::from_random(seeded(seed)),
        tenant.clone(),
        amount,
        key,
        "",
    )
    .expect("valid grant")
}

fn job(key: &str, at: DateTime<Utc>) -> maestro_core::NewJob {
    maestro_core::NewJob::new("noop", key, &serde_json::json!({}), at).expect("valid job")
}

async fn a_unit_of_work_writes_a_posting_and_a_job_together_or_not_at_all(backend: Backend) {
    let (_db, store) = store(backend).await;
    let acme = TenantId::from_random(seeded(1));
    let t0 = now();

    let mut tx = store.begin().await.expect("begin");
    tx.post(&grant(&acme, 10, "g1", 10), t0).await.expect("post in tx");
    tx.enqueue(&job("j1", t0), t0).await.expect("enqueue in tx");
    tx.rollback().await.expect("rollback");
    assert_eq!(store.balance(&acme).await.expect("balance").available, 0, "rolled back: no credits");
    assert_eq!(store.job_by_key("j1").await.expect("job"), None, "rolled back: no job");

    let mut tx = store.begin().await.expect("begin");
    tx.post(&grant(&acme, 10, "g1", 11), t0).await.expect("post in tx");
    tx.enqueue(&job("j1", t0), t0).await.expect("enqueue in tx");
    drop(tx);
    assert_eq!(store.balance(&acme).await.expect("balance").available, 0, "dropped: no credits");
    assert_eq!(store.job_by_key("j1").await.expect("job"), None, "dropped: no job");

    let mut tx = store.begin().await.expect("begin");
    let posted = tx.post(&grant(&acme, 10, "g1", 12), t0).await.expect("post in tx");
    let enqueued = tx.enqueue(&job("j1", t0), t0).await.expect("enqueue in tx");
    assert!(enqueued.created && !posted.replayed);
    tx.commit().await.expect("commit");
    assert_eq!(store.balance(&acme).await.expect("balance").available, 10, "committed: credits");
    assert_eq!(store.job_by_key("j1").await.expect("job"), Some(enqueued.job), "committed: job");
    assert!(store.audit().await.expect("audit").is_clean());
}

async fn a_refused_posting_leaves_the_unit_of_work_usable(backend: Backend) {
    let (_db, store) = store(backend).await;
    let acme = TenantId::from_random(seeded(1));
    let t0 = now();
    store.post(&grant(&acme, 5, "g0", 20), t0).await.expect("grant");

    let mut tx = store.begin().await.expect("begin");
    let debit =
        maestro_core::Posting::debit(maestro_core::TransactionId::from_random(seeded(21)), acme.clone(), 50, "d1", "")
            .expect("valid debit");
    let err = tx.post(&debit, t0).await.expect_err("more than the wallet holds");
    assert!(matches!(err, maestro_core::LedgerError::Insufficient { available: 5, needed: 50 }), "{err:?}");
    let replay = tx.post(&grant(&acme, 5, "g0", 22), t0).await.expect("same key, same request");
    assert!(replay.replayed, "a replay inside a unit answers like the store");
    tx.post(&grant(&acme, 1, "g2", 23), t0).await.expect("the unit still writes");
    tx.enqueue(&job("after-refusal", t0), t0).await.expect("enqueue after a refusal");
    tx.commit().await.expect("commit");

    assert_eq!(store.balance(&acme).await.expect("balance").available, 6);
    assert!(store.job_by_key("after-refusal").await.expect("job").is_some());
    assert!(store.audit().await.expect("audit").is_clean(), "the refused debit left nothing behind");
}
