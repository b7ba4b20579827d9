//! Memory search benchmark. Prints figures beside a floor measured in the same run;
//! never asserts timings.
//!
//! `cargo bench -p maestro-host --bench memory` (Postgres too when `TEST_DATABASE_URL`
//! names a pgvector server; a fresh database is created on it). Sizes default to 10,000
//! and 100,000 vectors of 384 dimensions; `MEMORY_BENCH_SIZES=10000` picks others.
//!
//! Vectors are unit length, drawn around 64 random centres (like embeddings of texts
//! on a few topics); queries are near stored vectors. For each size, one tenant holds
//! every vector, and:
//!
//! - floor: a raw in-memory exact scan (`dot` over one flat `Vec<f32>`, top 10 in a
//!   heap): the least any exact search can cost, and the reference for recall;
//! - SQLite: `MemoryStore::search_memories`, the exact scan over the tenant's BLOBs
//!   (goal: ≤ 40 ms per query at 100,000, i.e. ≥ 0.5× the memory-bandwidth floor);
//! - Postgres: the same call, through the HNSW index (`hnsw.iterative_scan`,
//!   `ef_search` 40 for k = 10), with recall@10 against the floor (goal: p50 ≤ 2 ms at
//!   recall ≥ 0.95); and the exact scan of smaller tenants (500 to 4,000 vectors), the
//!   figures `EXACT_SCAN_BELOW` was chosen from.

#[path = "common/mod.rs"]
mod common;

use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{millis, percentile};
use maestro_core::embed::{EmbedderInfo, dot, normalise};
use maestro_core::memory::{Memory, MemoryFilter, MemoryId, MemoryScope};
use maestro_core::{Store, Tenant, TenantId, TenantName};
use maestro_host::storage::{self, StoreLocation};

const DIMS: usize = 384;
const K: usize = 10;
const QUERIES: usize = 200;
const CENTRES: usize = 64;

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

fn embedder() -> EmbedderInfo {
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

/// The exact top-k indices of `flat` (n × DIMS) for `query`.
fn floor_top_k(flat: &[f32], query: &[f32]) -> Vec<usize> {
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
    for (i, v) in flat.chunks_exact(DIMS).enumerate() {
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
        "  {name:<44} p50 {:>8.3} ms  p95 {:>8.3} ms{extra}",
        millis(percentile(samples, 0.5)),
        millis(percentile(samples, 0.95))
    );
}

async fn tenant(store: &Arc<dyn Store>, name: &str) -> TenantId {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("random");
    let t = Tenant {
        id: TenantId::from_random(bytes),
        name: TenantName::parse(name).expect("name"),
        created_at: Utc::now(),
    };
    store.create_tenant(&t).await.expect("tenant");
    t.id
}

/// Stores `vectors` for `tenant`; returns their ids in order.
async fn fill(store: &Arc<dyn Store>, tenant: &TenantId, vectors: &[Vec<f32>]) -> Vec<MemoryId> {
    let now = Utc::now();
    let mut ids = Vec::with_capacity(vectors.len());
    for chunk in vectors.chunks(1000) {
        let rows: Vec<(Memory, Vec<f32>)> = chunk
            .iter()
            .map(|v| {
                let mut bytes = [0u8; 16];
                getrandom::fill(&mut bytes).expect("random");
                let memory = Memory {
                    id: MemoryId::from_random(bytes),
                    tenant: tenant.clone(),
                    scope: MemoryScope::Tenant,
                    text: "benchmark memory".into(),
                    tags: Vec::new(),
                    pinned: false,
                    source: None,
                    created_at: now,
                    updated_at: now,
                    last_used_at: None,
                    embedder: embedder(),
                };
                (memory, v.clone())
            })
            .collect();
        ids.extend(rows.iter().map(|(m, _)| m.id.clone()));
        store.insert_memories(&rows).await.expect("insert");
    }
    ids
}

/// Times `search_memories` over the queries; returns samples and mean recall@10
/// against the floor's exact answers.
async fn time_search(
    store: &Arc<dyn Store>,
    tenant: &TenantId,
    queries: &[Vec<f32>],
    ids: &[MemoryId],
    exact: &[Vec<usize>],
) -> (Vec<Duration>, f64) {
    let filter = MemoryFilter::default();
    for q in queries.iter().take(10) {
        store.search_memories(tenant, &embedder(), q, &filter, K as u32).await.expect("warm up");
    }
    let mut samples = Vec::with_capacity(queries.len());
    let mut recall = 0.0;
    for (q, expected) in queries.iter().zip(exact) {
        let start = Instant::now();
        let hits = store.search_memories(tenant, &embedder(), q, &filter, K as u32).await.expect("search");
        samples.push(start.elapsed());
        let found = expected.iter().filter(|i| hits.iter().any(|h| h.memory.id == ids[**i])).count();
        recall += found as f64 / expected.len() as f64;
    }
    (samples, recall / queries.len() as f64)
}

async fn bench_backend(backend: &str, location: &StoreLocation, sizes: &[usize]) {
    let store = storage::open(location).await.expect("store");
    println!("{backend}:");
    for (round, n) in sizes.iter().enumerate() {
        let (vectors, queries) = data(*n, 0x9e37_79b9_7f4a_7c15 + *n as u64);
        let flat: Vec<f32> = vectors.iter().flatten().copied().collect();
        let mut floor = Vec::with_capacity(QUERIES);
        let exact: Vec<Vec<usize>> = queries
            .iter()
            .map(|q| {
                let start = Instant::now();
                let top = floor_top_k(&flat, q);
                floor.push(start.elapsed());
                top
            })
            .collect();
        let bandwidth = (flat.len() * 4) as f64
            / percentile(
                &{
                    let mut f = floor.clone();
                    f.sort();
                    f
                },
                0.5,
            )
            .as_secs_f64()
            / 1e9;
        report(
            &format!("{n} × {DIMS}: floor (in-memory exact dot loop)"),
            &mut floor,
            &format!("  ({bandwidth:.1} GB/s)"),
        );
        let who = tenant(&store, &format!("bench-{round}")).await;
        let start = Instant::now();
        let ids = fill(&store, &who, &vectors).await;
        println!("  {:<44} {:>8.1} s", format!("{n} × {DIMS}: insert"), start.elapsed().as_secs_f64());
        let (mut samples, recall) = time_search(&store, &who, &queries, &ids, &exact).await;
        let how = if backend == "postgres" { "search (HNSW, iterative scan)" } else { "search (exact scan)" };
        report(&format!("{n} × {DIMS}: {how}"), &mut samples, &format!("  recall@10 {recall:.3}"));
    }
    if backend == "postgres" {
        // Small tenants go exact (under EXACT_SCAN_BELOW): their cost by size.
        for (i, n) in [500usize, 1000, 2000, 4000].iter().enumerate() {
            let (vectors, queries) = data(*n, 7 + *n as u64);
            let flat: Vec<f32> = vectors.iter().flatten().copied().collect();
            let exact: Vec<Vec<usize>> = queries.iter().map(|q| floor_top_k(&flat, q)).collect();
            let who = tenant(&store, &format!("small-{i}")).await;
            let ids = fill(&store, &who, &vectors).await;
            let (mut samples, recall) = time_search(&store, &who, &queries, &ids, &exact).await;
            let path = if (*n as i64) < maestro_host::storage::memories::EXACT_SCAN_BELOW { "exact" } else { "HNSW" };
            report(
                &format!("tenant of {n} in the shared table ({path})"),
                &mut samples,
                &format!("  recall@10 {recall:.3}"),
            );
        }
    }
}

fn main() {
    let sizes: Vec<usize> = std::env::var("MEMORY_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10_000, 100_000]);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        bench_backend("sqlite", &StoreLocation::Sqlite(dir.path().join("bench.db")), &sizes).await;
        if let Ok(server) = std::env::var("TEST_DATABASE_URL")
            && !server.is_empty()
        {
            let url = fresh_postgres_database(&server).await;
            bench_backend("postgres", &StoreLocation::Postgres(url), &sizes).await;
        }
    });
}

async fn fresh_postgres_database(server: &str) -> String {
    use sqlx::Connection as _;
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("random");
    let name = format!("maestro_bench_{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>());
    let mut admin = sqlx::PgConnection::connect(server).await.expect("connect to TEST_DATABASE_URL");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await.expect("create db");
    admin.close().await.ok();
    let (base, query) = server.split_once('?').map_or((server, None), |(b, q)| (b, Some(q)));
    let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}
