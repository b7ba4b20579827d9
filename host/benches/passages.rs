//! Passage benchmark: vector search over a tenant's passages, and the follower's
//! throughput. Prints figures beside a floor measured in the same run; never asserts
//! timings.
//!
//! `cargo bench -p maestro-host --bench passages` (Postgres too when `TEST_DATABASE_URL`
//! names a pgvector server; a fresh database is created on it; the MiniLM figure when
//! `MAESTRO_EMBEDDINGS_MODEL_DIR` names the model). `PASSAGE_BENCH_SIZE` sets the
//! tenant's passages (default 20,000), `PASSAGE_BENCH_BACKENDS=postgres` one backend
//! (both).
//!
//! - search: one tenant of N clustered 384-dimension passages (messages and documents
//!   over 50 sessions) beside a second tenant of N/4, `PassageStore::search_passages`
//!   for k = 10 without a filter and with a session filter, recall@10 against an
//!   in-memory exact scan (the floor);
//! - follower: messages written to the outbox, then `PassageFollower::catch_up` timed:
//!   with a trivial embedder (what the store and the follower cost per passage) and with
//!   all-MiniLM-L6-v2 on this machine (passages per second end to end).

#[path = "common/mod.rs"]
mod common;

use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use common::{millis, percentile};
use maestro_core::embed::{EmbedError, Embedder, EmbedderInfo, dot, normalise};
use maestro_core::passage::{Passage, PassageFilter, PassageWrite};
use maestro_core::run::{Author, Message, RunLimits, Session, SessionId, Strategy};
use maestro_core::search::SearchKind;
use maestro_core::{Store, Tenant, TenantId, TenantName};
use maestro_host::passages::{FollowerSettings, PassageFollower};
use maestro_host::storage::{self, StoreLocation};

const DIMS: usize = 384;
const K: usize = 10;
const QUERIES: usize = 200;
const CENTRES: usize = 64;
const SESSIONS: usize = 50;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    fn near(&mut self, centre: &[f32], spread: f32) -> Vec<f32> {
        let mut v: Vec<f32> = centre.iter().map(|c| c + spread * self.next()).collect();
        normalise(&mut v);
        v
    }
}

fn info() -> EmbedderInfo {
    EmbedderInfo { provider: "bench".into(), model: "random".into(), dimensions: DIMS as u32 }
}

/// `n` clustered unit vectors and `QUERIES` queries near some of them.
fn data(n: usize, seed: u64) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let mut rng = Rng(seed);
    let centres: Vec<Vec<f32>> = (0..CENTRES).map(|_| (0..DIMS).map(|_| rng.next()).collect()).collect();
    let vectors: Vec<Vec<f32>> = (0..n).map(|i| rng.near(&centres[i % CENTRES], 0.8)).collect();
    let queries = (0..QUERIES).map(|i| rng.near(&vectors[(i * 7919) % n], 0.3)).collect();
    (vectors, queries)
}

/// The exact top-k indices among `vectors` passing `keep`.
fn floor_top_k(vectors: &[Vec<f32>], query: &[f32], keep: impl Fn(usize) -> bool) -> Vec<usize> {
    #[derive(PartialEq)]
    struct Worst(f32, usize);
    impl Eq for Worst {}
    impl PartialOrd for Worst {
        fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(other))
        }
    }
    impl Ord for Worst {
        fn cmp(&self, other: &Self) -> std::cmp::Ordering {
            other.0.total_cmp(&self.0)
        }
    }
    let mut heap = BinaryHeap::with_capacity(K + 1);
    for (i, v) in vectors.iter().enumerate().filter(|(i, _)| keep(*i)) {
        let score = dot(query, v);
        if heap.len() < K || heap.peek().is_some_and(|w: &Worst| score > w.0) {
            heap.push(Worst(score, i));
            if heap.len() > K {
                heap.pop();
            }
        }
    }
    heap.into_sorted_vec().into_iter().map(|w| w.1).collect()
}

fn report(name: &str, samples: &mut [Duration], extra: &str) {
    samples.sort();
    println!(
        "  {name:<52} p50 {:>8.3} ms  p95 {:>8.3} ms  p99 {:>8.3} ms{extra}",
        millis(percentile(samples, 0.5)),
        millis(percentile(samples, 0.95)),
        millis(percentile(samples, 0.99))
    );
}

fn random_bytes() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("random");
    bytes
}

async fn tenant(store: &Arc<dyn Store>, name: &str) -> TenantId {
    let t = Tenant {
        id: TenantId::from_random(random_bytes()),
        name: TenantName::parse(name).expect("name"),
        created_at: Utc::now(),
    };
    store.create_tenant(&t).await.expect("tenant");
    t.id
}

async fn session(store: &Arc<dyn Store>, tenant: &TenantId) -> SessionId {
    let session = Session {
        id: SessionId::from_random(random_bytes()),
        tenant: tenant.clone(),
        title: "bench".into(),
        personas: vec!["team.writer".into()],
        strategy: Strategy::RoundRobin,
        limits: RunLimits {
            max_steps: 5,
            max_tool_calls_per_step: 3,
            credits_budget: None,
            deadline_secs: 120,
            wait_timeout_secs: None,
        },
        created_by: "key_bench".into(),
        created_at: Utc::now(),
    };
    store.create_session(&session).await.expect("session");
    session.id
}

/// Writes one passage per vector for `tenant` (a message in one of `sessions`, or
/// every fifth a document chunk without a session), in the follower's writes.
async fn fill(store: &Arc<dyn Store>, tenant: &TenantId, sessions: &[SessionId], vectors: &[Vec<f32>], tag: &str) {
    let at = Utc::now();
    for (c, chunk) in vectors.chunks(1000).enumerate() {
        let passages: Vec<(Passage, Vec<f32>)> = chunk
            .iter()
            .enumerate()
            .map(|(j, v)| {
                let i = c * 1000 + j;
                let document = i % 5 == 4;
                let passage = Passage {
                    tenant: tenant.clone(),
                    kind: if document { SearchKind::Document } else { SearchKind::Message },
                    object: format!("{}_{tag}{i:08}", if document { "doc" } else { "msg" }),
                    chunk: 0,
                    session: (!document).then(|| sessions[i % sessions.len()].clone()),
                    author: Some("team.writer".into()),
                    at,
                    text: format!("benchmark passage {i}"),
                };
                (passage, v.clone())
            })
            .collect();
        let position = store.passage_follower().await.expect("state").position;
        let write = PassageWrite {
            expected: position,
            next: position,
            follows_outbox: false,
            objects: passages.iter().map(|(p, _)| (p.kind, p.object.clone())).collect(),
            embedder: info(),
            passages,
        };
        assert!(store.write_passages(&write).await.expect("write"), "no other writer");
    }
}

async fn bench_search(backend: &str, store: &Arc<dyn Store>, n: usize) {
    println!("{backend}: search");
    let (vectors, queries) = data(n, 0x9e37_79b9_7f4a_7c15 + n as u64);
    let acme = tenant(store, &format!("bench-{n}")).await;
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        sessions.push(session(store, &acme).await);
    }
    let started = Instant::now();
    fill(store, &acme, &sessions, &vectors, "a").await;
    let other = tenant(store, &format!("other-{n}")).await;
    let other_sessions = vec![session(store, &other).await];
    let (noise, _) = data(n / 4, 17);
    fill(store, &other, &other_sessions, &noise, "b").await;
    println!("  {:<52} {:>8.1} s", format!("write {n} + {} passages", n / 4), started.elapsed().as_secs_f64());

    let mut floor = Vec::new();
    let exact: Vec<Vec<usize>> = queries
        .iter()
        .map(|q| {
            let start = Instant::now();
            let top = floor_top_k(&vectors, q, |_| true);
            floor.push(start.elapsed());
            top
        })
        .collect();
    report(&format!("{n} × {DIMS}: floor (in-memory exact dot loop)"), &mut floor, "");
    let filters = [
        ("no filter", PassageFilter::default(), None),
        (
            "one session of 50",
            PassageFilter { session: Some(sessions[3].clone()), ..Default::default() },
            Some(&sessions[3]),
        ),
    ];
    for (name, filter, only) in filters {
        let keep = |i: usize| only.is_none_or(|s| i % 5 != 4 && sessions[i % SESSIONS] == *s);
        let exact: Vec<Vec<usize>> = if only.is_none() {
            exact.clone()
        } else {
            queries.iter().map(|q| floor_top_k(&vectors, q, keep)).collect()
        };
        for q in queries.iter().take(10) {
            store.search_passages(&acme, &info(), q, &filter, K as u32).await.expect("warm up");
        }
        let mut samples = Vec::with_capacity(QUERIES);
        let mut recall = 0.0;
        for (q, expected) in queries.iter().zip(&exact) {
            let start = Instant::now();
            let hits = store.search_passages(&acme, &info(), q, &filter, K as u32).await.expect("search");
            samples.push(start.elapsed());
            assert!(hits.iter().all(|h| h.passage.tenant == acme), "another tenant's passage");
            let found = expected
                .iter()
                .filter(|i| {
                    let id = format!("{}_a{:08}", if *i % 5 == 4 { "doc" } else { "msg" }, i);
                    hits.iter().any(|h| h.passage.object == id)
                })
                .count();
            recall += found as f64 / expected.len().max(1) as f64;
        }
        let recall = recall / QUERIES as f64;
        report(&format!("{n} passages, k = {K}, {name}"), &mut samples, &format!("  recall@10 {recall:.3}"));
    }
    // A search right after a write of the tenant's (SQLite reloads the tenant's cache).
    let mut samples = Vec::new();
    for (i, q) in queries.iter().take(20).enumerate() {
        fill(store, &acme, &sessions, &vectors[i..=i], &format!("w{i}_")).await;
        let start = Instant::now();
        store.search_passages(&acme, &info(), q, &PassageFilter::default(), K as u32).await.expect("search");
        samples.push(start.elapsed());
    }
    report(&format!("{n} passages, k = {K}, right after a write"), &mut samples, "");
}

/// A trivial embedder: a stable vector per text, nearly free (the follower's own cost).
#[derive(Debug)]
struct Trivial(EmbedderInfo);

#[async_trait]
impl Embedder for Trivial {
    fn info(&self) -> &EmbedderInfo {
        &self.0
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        Ok(texts
            .iter()
            .map(|t| {
                let mut rng = Rng(t
                    .bytes()
                    .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
                    | 1);
                let mut v: Vec<f32> = (0..DIMS).map(|_| rng.next()).collect();
                normalise(&mut v);
                v
            })
            .collect())
    }
}

const TOPICS: [&str; 8] = [
    "The quarterly budget review moved to Thursday afternoon because finance needs more time",
    "Our deployment pipeline failed twice last night after the database migration ran",
    "Customers asked whether the mobile app will support offline mode in the next release",
    "The design team proposed a simpler onboarding flow with fewer steps and clearer copy",
    "Remember that the security audit requires every service to rotate its keys this month",
    "The marketing plan for the spring launch focuses on small businesses in three regions",
    "Latency on the search endpoint doubled after the index grew past ten million documents",
    "We agreed to hire two more support engineers to cover the weekend on-call rotation",
];

async fn bench_follower(backend: &str, store: &Arc<dyn Store>, embedder: Arc<dyn Embedder>, messages: usize) {
    let acme = tenant(store, &format!("follow-{}", embedder.info().model.to_lowercase().replace(['-', '_'], ""))).await;
    let session = session(store, &acme).await;
    let follower = PassageFollower::new(store.clone(), store.clone(), embedder.clone(), FollowerSettings::default());
    follower.catch_up().await.expect("first look");
    for i in 0..messages {
        let text = format!("{} (note {i}, {}).", TOPICS[i % TOPICS.len()], TOPICS[(i * 3 + 1) % TOPICS.len()]);
        let message = Message {
            id: maestro_core::run::MessageId::from_random(random_bytes()),
            session: session.clone(),
            seq: 0,
            author: Author::Persona { name: "team.writer".into() },
            content: text,
            run: None,
            at: Utc::now(),
        };
        let mut tx = store.begin().await.expect("begin");
        tx.insert_message(&message).await.expect("insert");
        tx.commit().await.expect("commit");
    }
    let before = follower.status().embedded;
    let started = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        follower.catch_up().await.expect("follow");
        let state = store.passage_follower().await.expect("state");
        if store.outbox_status(state.position).await.expect("outbox").pending == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let embedded = follower.status().embedded - before;
    println!(
        "  {:<52} {:>8.1} passages/s  ({embedded} in {:.2} s)",
        format!("{backend}: follower, {}", embedder.info()),
        embedded as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
}

async fn bench_backend(backend: &str, location: &StoreLocation, n: usize, minilm: Option<&Arc<dyn Embedder>>) {
    let store = storage::open(location).await.expect("store");
    bench_search(backend, &store, n).await;
    println!("{backend}: follower");
    let trivial: Arc<dyn Embedder> =
        Arc::new(Trivial(EmbedderInfo { provider: "bench".into(), model: "trivial".into(), dimensions: DIMS as u32 }));
    bench_follower(backend, &store, trivial, 2000).await;
    if let Some(model) = minilm {
        // A store of its own: the first follower's passages would be re-embedded first.
        let dir = tempfile::tempdir().expect("temp dir");
        let fresh = storage::open(&StoreLocation::Sqlite(dir.path().join("minilm.db"))).await.expect("store");
        bench_follower(backend, &fresh, model.clone(), 300).await;
    }
}

fn main() {
    let n: usize = std::env::var("PASSAGE_BENCH_SIZE").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(20_000);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let minilm: Option<Arc<dyn Embedder>> =
            std::env::var("MAESTRO_EMBEDDINGS_MODEL_DIR").ok().filter(|d| !d.trim().is_empty()).map(|dir| {
                let options = maestro_host::embed::MiniLmOptions::default();
                let model =
                    maestro_host::embed::MiniLm::load(std::path::Path::new(&dir), options).expect("the model loads");
                Arc::new(model) as Arc<dyn Embedder>
            });
        let backends = std::env::var("PASSAGE_BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".to_owned());
        let dir = tempfile::tempdir().expect("temp dir");
        if backends.contains("sqlite") {
            bench_backend("sqlite", &StoreLocation::Sqlite(dir.path().join("bench.db")), n, minilm.as_ref()).await;
        }
        if let Ok(server) = std::env::var("TEST_DATABASE_URL")
            && !server.is_empty()
            && backends.contains("postgres")
        {
            let url = common::fresh_postgres_database(&server, "maestro_bench_passages").await;
            bench_backend("postgres", &StoreLocation::Postgres(url.clone()), n, None).await;
            drop_database(&server, &url).await;
        }
    });
}

/// Drops the benchmark's database.
async fn drop_database(server: &str, url: &str) {
    use sqlx::Connection as _;
    let name = url.rsplit('/').next().unwrap_or_default().split('?').next().unwrap_or_default();
    let mut admin = sqlx::PgConnection::connect(server).await.expect("connect to TEST_DATABASE_URL");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
        .execute(&mut admin)
        .await
        .expect("drop db");
    admin.close().await.ok();
}
