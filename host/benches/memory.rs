//! Memory search benchmark. Prints figures beside a floor measured in the same run;
//! never asserts timings.
//!
//! `cargo bench -p maestro-host --bench memory` (Postgres too when `TEST_DATABASE_URL`
//! names a pgvector server; a fresh database is created on it). Sizes default to 10,000
//! and 100,000 vectors of 384 dimensions; `MEMORY_BENCH_SIZES=10000` picks others,
//! `MEMORY_BENCH_QUERIES=50` fewer queries (200), `MEMORY_BENCH_BACKENDS=postgres` one
//! backend (both).
//!
//! Vectors are unit length, drawn around 64 random centres (like embeddings of texts
//! on a few topics). Two sets of queries: **near** ones, a stored vector moved a little
//! (cosine about 0.83 to it, as a question is to the memory that answers it), and
//! **far** ones, a stored vector drowned in noise (cosine about 0.28): their true top 10
//! differ from the rest by little more than noise, the worst case for a graph index.
//! For each size, one tenant holds every vector, and:
//!
//! - floor: a raw in-memory exact scan (`dot` over one flat `Vec<f32>`, top 10 in a
//!   heap): the least any exact search can cost, and the reference for recall;
//! - SQLite: `MemoryStore::search_memories`, the exact scan over the tenant's BLOBs
//!   (goal: ≤ 40 ms per query at 100,000, i.e. ≥ 0.5× the memory-bandwidth floor);
//! - Postgres: the same call, through the HNSW index when the tenant is large enough
//!   (the path is read from the plan), with recall@10 against the floor (goal: p50 ≤ 2
//!   ms at recall ≥ 0.95); pgvector alone (one SQL statement) at several `ef_search`;
//!   Postgres's own exact scan; and the exact scan of smaller tenants (500 to 4,000
//!   vectors), the figures `EXACT_SCAN_BELOW` was chosen from. Rows are loaded with
//!   `COPY` and the HNSW index built once after (its definition read from the catalog),
//!   as a restore would.

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
use maestro_host::storage::memories::{EF_SEARCH_MIN, EF_SEARCH_PER_HIT, EXACT_SCAN_BELOW, ExplainOptions, SearchRoad};
use maestro_host::storage::postgres::PostgresStore;
use maestro_host::storage::{self, StoreLocation};
use sqlx::Connection as _;

const DIMS: usize = 384;
const K: usize = 10;
/// Queries per set (`MEMORY_BENCH_QUERIES` picks another count).
fn queries_per_set() -> usize {
    std::env::var("MEMORY_BENCH_QUERIES").ok().and_then(|q| q.parse().ok()).filter(|q| *q >= 10).unwrap_or(200)
}
const CENTRES: usize = 64;
/// Noise added to a stored unit vector, per component: near and far queries.
const NEAR: f32 = 0.06;
const FAR: f32 = 0.3;

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

/// `n` clustered unit vectors, and their flat copy.
struct Data {
    vectors: Vec<Vec<f32>>,
    flat: Vec<f32>,
}

fn data(n: usize, seed: u64) -> Data {
    let mut rng = Rng(seed);
    let centres: Vec<Vec<f32>> = (0..CENTRES).map(|_| (0..DIMS).map(|_| rng.next()).collect()).collect();
    let vectors: Vec<Vec<f32>> = (0..n).map(|i| rng.near(&centres[i % CENTRES], 0.8)).collect();
    let flat = vectors.iter().flatten().copied().collect();
    Data { vectors, flat }
}

/// [`queries_per_set`] queries, each a stored vector moved by `spread`, and their exact top 10
/// (indices) with the floor's time for each.
struct Queries {
    name: &'static str,
    vectors: Vec<Vec<f32>>,
    exact: Vec<Vec<usize>>,
    floor: Vec<Duration>,
}

fn queries(data: &Data, name: &'static str, spread: f32, seed: u64) -> Queries {
    let mut rng = Rng(seed);
    let n = data.vectors.len();
    let count = queries_per_set();
    let vectors: Vec<Vec<f32>> = (0..count).map(|i| rng.near(&data.vectors[(i * 7919) % n], spread)).collect();
    let mut floor = Vec::with_capacity(count);
    let exact = vectors
        .iter()
        .map(|q| {
            let start = Instant::now();
            let top = floor_top_k(&data.flat, q);
            floor.push(start.elapsed());
            top
        })
        .collect();
    floor.sort();
    Queries { name, vectors, exact, floor }
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

/// Stores `vectors` for `tenant` through the port; returns their ids in order.
async fn fill(store: &Arc<dyn Store>, tenant: &TenantId, vectors: &[Vec<f32>]) -> Vec<MemoryId> {
    let now = Utc::now();
    let mut ids = Vec::with_capacity(vectors.len());
    for chunk in vectors.chunks(1000) {
        let rows: Vec<(Memory, Vec<f32>)> = chunk
            .iter()
            .map(|v| {
                let memory = Memory {
                    id: MemoryId::from_random(random_bytes()),
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

/// Stores `vectors` for `tenant` with one `COPY`; returns their ids in order.
async fn copy_fill(conn: &mut sqlx::PgConnection, tenant: &TenantId, vectors: &[Vec<f32>]) -> Vec<MemoryId> {
    let now = Utc::now().format("%Y-%m-%d %H:%M:%S%.3f+00").to_string();
    let info = embedder();
    let mut ids = Vec::with_capacity(vectors.len());
    let mut copy = conn
        .copy_in_raw(
            "COPY memories (id, tenant_id, scope, text, created_at, updated_at, provider, model, dims, embedding) \
             FROM STDIN",
        )
        .await
        .expect("copy");
    for chunk in vectors.chunks(2000) {
        let mut text = String::with_capacity(chunk.len() * DIMS * 12);
        for v in chunk {
            let id = MemoryId::from_random(random_bytes());
            let numbers: Vec<String> = v.iter().map(|x| x.to_string()).collect();
            text.push_str(&format!(
                "{}\t{}\ttenant\tbenchmark memory\t{now}\t{now}\t{}\t{}\t{}\t[{}]\n",
                id.as_str(),
                tenant.as_str(),
                info.provider,
                info.model,
                info.dimensions,
                numbers.join(",")
            ));
            ids.push(id);
        }
        copy.send(text.as_bytes()).await.expect("copy rows");
    }
    copy.finish().await.expect("copy done");
    ids
}

fn recall_of(found: &[MemoryId], expected: &[usize], ids: &[MemoryId]) -> f64 {
    expected.iter().filter(|i| found.contains(&ids[**i])).count() as f64 / expected.len() as f64
}

/// Times `search_memories` over the queries; returns samples and mean recall@10
/// against the floor's exact answers.
async fn time_search(
    store: &Arc<dyn Store>,
    tenant: &TenantId,
    queries: &Queries,
    ids: &[MemoryId],
) -> (Vec<Duration>, f64) {
    let filter = MemoryFilter::default();
    for q in queries.vectors.iter().take(10) {
        store.search_memories(tenant, &embedder(), q, &filter, K as u32).await.expect("warm up");
    }
    let mut samples = Vec::with_capacity(queries.vectors.len());
    let mut recall = 0.0;
    for (q, expected) in queries.vectors.iter().zip(&queries.exact) {
        let start = Instant::now();
        let hits = store.search_memories(tenant, &embedder(), q, &filter, K as u32).await.expect("search");
        samples.push(start.elapsed());
        let found: Vec<MemoryId> = hits.into_iter().map(|h| h.memory.id).collect();
        recall += recall_of(&found, expected, ids);
    }
    (samples, recall / queries.vectors.len() as f64)
}

/// pgvector alone: one statement through the index at `ef` (iterative scan, as the
/// store sets it), or an exact scan of the tenant's rows when `ef` is `None`; over the
/// first `limit` queries.
async fn time_sql(
    conn: &mut sqlx::PgConnection,
    tenant: &TenantId,
    queries: &Queries,
    ids: &[MemoryId],
    ef: Option<u32>,
    limit: usize,
) -> (Vec<Duration>, f64) {
    let order = match ef {
        Some(_) => format!("embedding::halfvec({DIMS}) <#> $2::real[]::halfvec({DIMS})"),
        None => "embedding <#> $2::real[]::vector".to_owned(),
    };
    let sql = format!(
        "SELECT id FROM memories WHERE dims = {DIMS} AND tenant_id = $1 AND provider = 'bench' ORDER BY {order} LIMIT {K}"
    );
    let settings = format!(
        "SET hnsw.iterative_scan = relaxed_order; SET hnsw.ef_search = {}; SET enable_sort = {}",
        ef.unwrap_or(EF_SEARCH_MIN),
        if ef.is_some() { "off" } else { "on" }
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(settings)).execute(&mut *conn).await.expect("settings");
    let mut samples = Vec::new();
    let mut recall = 0.0;
    let picked: Vec<_> = queries.vectors.iter().zip(&queries.exact).take(limit).collect();
    for (q, _) in picked.iter().take(10) {
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(tenant.as_str())
            .bind(q.as_slice())
            .fetch_all(&mut *conn)
            .await
            .expect("warm up");
    }
    for (q, expected) in &picked {
        let start = Instant::now();
        let rows: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .bind(tenant.as_str())
            .bind(q.as_slice())
            .fetch_all(&mut *conn)
            .await
            .expect("search");
        samples.push(start.elapsed());
        let found: Vec<MemoryId> = rows.into_iter().map(|(id,)| MemoryId::parse(&id).expect("id")).collect();
        recall += recall_of(&found, expected, ids);
    }
    sqlx::raw_sql("RESET hnsw.iterative_scan; RESET hnsw.ef_search; RESET enable_sort")
        .execute(&mut *conn)
        .await
        .expect("reset");
    (samples, recall / picked.len() as f64)
}

/// Where a search through the store goes: each statement the store sends, timed on its
/// own on a pool with the store's options, over the first `limit` near queries of a
/// tenant searched through the index. "before" is the sequence the store sent until
/// this bench's change (count lookup; BEGIN; settings; search; COMMIT), "now" the one
/// it sends (BEGIN with the settings in one round trip; search; the transaction dropped,
/// its ROLLBACK sent as the pool takes the connection back). Each pool acquire pings the
/// connection (sqlx's `test_before_acquire`, on by default): a round trip of its own.
async fn time_steps(url: &str, who: &TenantId, queries: &Queries, limit: usize) {
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(16).connect(url).await.expect("pool");
    let info = embedder();
    let search_sql = PostgresStore::memory_search_sql(DIMS as u32, true, K as u32);
    let count_sql = "SELECT COALESCE((SELECT n FROM memory_counts WHERE tenant_id = $1 AND provider = $2 AND model = $3 \
                     AND dims = $4), 0), COALESCE((SELECT reltuples FROM pg_class WHERE oid = 'memories'::regclass), -1)";
    let ef = (K as u32 * EF_SEARCH_PER_HIT).max(EF_SEARCH_MIN).to_string();
    let begin = PostgresStore::search_begin(SearchRoad::Index, K as u32).expect("the index road opens a transaction");
    let search = |q: &[f32]| {
        sqlx::query(sqlx::AssertSqlSafe(search_sql.clone()))
            .bind(who.as_str())
            .bind(None::<&str>)
            .bind(None::<&str>)
            .bind(None::<&str>)
            .bind(None::<chrono::DateTime<Utc>>)
            .bind(None::<chrono::DateTime<Utc>>)
            .bind(Vec::<String>::new())
            .bind(false)
            .bind(info.provider.clone())
            .bind(info.model.clone())
            .bind(q.to_vec())
    };
    const STEPS: [&str; 10] = [
        "acquire a pooled connection (its ping)",
        "one bare round trip (SELECT 1)",
        "before: count lookup (acquire + query)",
        "before: BEGIN (acquire + BEGIN)",
        "before: set_config",
        "before: search",
        "before: COMMIT",
        "now: BEGIN with the settings (acquire + one round trip)",
        "now: search",
        "now: drop the transaction",
    ];
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); STEPS.len()];
    let mut totals: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for (round, q) in queries.vectors.iter().take(limit + 10).enumerate() {
        let mut took = [Duration::ZERO; STEPS.len()];
        let start = Instant::now();
        let mut conn = pool.acquire().await.expect("acquire");
        took[0] = start.elapsed();
        let start = Instant::now();
        sqlx::query("SELECT 1").execute(&mut *conn).await.expect("select 1");
        took[1] = start.elapsed();
        drop(conn);

        // Each sequence runs first in every other round: the second reads pages the
        // first brought into the buffers.
        let order = if round % 2 == 0 { [true, false] } else { [false, true] };
        for before in order {
            if before {
                let start = Instant::now();
                let _: (i64, f32) = sqlx::query_as(count_sql)
                    .bind(who.as_str())
                    .bind(&info.provider)
                    .bind(&info.model)
                    .bind(DIMS as i32)
                    .fetch_one(&pool)
                    .await
                    .expect("count");
                took[2] = start.elapsed();
                let start = Instant::now();
                let mut tx = pool.begin().await.expect("begin");
                took[3] = start.elapsed();
                let start = Instant::now();
                sqlx::query(
                    "SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true), \
                     set_config('hnsw.ef_search', $1, true), set_config('enable_sort', 'off', true)",
                )
                .bind(&ef)
                .execute(&mut *tx)
                .await
                .expect("settings");
                took[4] = start.elapsed();
                let start = Instant::now();
                let rows = search(q).fetch_all(&mut *tx).await.expect("search");
                took[5] = start.elapsed();
                assert_eq!(rows.len(), K);
                let start = Instant::now();
                tx.commit().await.expect("commit");
                took[6] = start.elapsed();
            } else {
                let start = Instant::now();
                let mut tx = pool.begin_with(sqlx::AssertSqlSafe(begin.clone())).await.expect("begin with");
                took[7] = start.elapsed();
                let start = Instant::now();
                let rows = search(q).fetch_all(&mut *tx).await.expect("search");
                took[8] = start.elapsed();
                assert_eq!(rows.len(), K);
                let start = Instant::now();
                drop(tx);
                took[9] = start.elapsed();
            }
        }
        if round >= 10 {
            for (all, one) in samples.iter_mut().zip(took) {
                all.push(one);
            }
            totals[0].push(took[2..7].iter().sum());
            totals[1].push(took[7..10].iter().sum());
        }
    }
    for (name, mut all) in STEPS.iter().zip(samples) {
        report(&format!("  step: {name}"), &mut all, "");
    }
    report("  steps: before, in all", &mut totals[0], "");
    report("  steps: now, in all (without the count lookup: cached)", &mut totals[1], "");
    pool.close().await;
}

/// `EXPLAIN (ANALYZE, BUFFERS)` of the store's search for `who` with its settings: the
/// lines that say where the server's time goes (planning, execution, JIT, buffers).
async fn analyze(pg: &PostgresStore, who: &TenantId, query: &[f32]) {
    let plan = pg
        .explain_memory_search_with(
            ExplainOptions::AnalyzeBuffers,
            who,
            &embedder(),
            query,
            &MemoryFilter::default(),
            K as u32,
        )
        .await
        .expect("explain analyze");
    for line in plan.iter().filter(|l| {
        l.contains("Planning Time")
            || l.contains("Execution Time")
            || l.contains("JIT")
            || l.trim_start().starts_with("Buffers")
            || l.contains("Scan")
    }) {
        println!("    | {}", line.chars().take(140).collect::<String>());
    }
}

struct Sized {
    n: usize,
    data: Data,
    near: Queries,
    far: Queries,
}

fn bandwidth(sized: &Sized) -> f64 {
    (sized.data.flat.len() * 4) as f64 / percentile(&sized.near.floor, 0.5).as_secs_f64() / 1e9
}

async fn bench_sqlite(sets: &[Sized]) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = storage::open(&StoreLocation::Sqlite(dir.path().join("bench.db"))).await.expect("store");
    println!("sqlite:");
    for (round, set) in sets.iter().enumerate() {
        let n = set.n;
        let mut floor = set.near.floor.clone();
        report(
            &format!("{n} × {DIMS}: floor (in-memory exact dot loop)"),
            &mut floor,
            &format!("  ({:.1} GB/s)", bandwidth(set)),
        );
        let who = tenant(&store, &format!("bench-{round}")).await;
        let start = Instant::now();
        let ids = fill(&store, &who, &set.data.vectors).await;
        println!("  {:<52} {:>8.1} s", format!("{n} × {DIMS}: insert"), start.elapsed().as_secs_f64());
        let (mut samples, recall) = time_search(&store, &who, &set.near, &ids).await;
        report(
            &format!("{n} × {DIMS}: search (int8 prefilter, exact rerank)"),
            &mut samples,
            &format!("  recall@10 {recall:.3}"),
        );
    }
}

async fn bench_postgres(server: &str, sets: &[Sized]) {
    let url = &common::fresh_postgres_database(server, "maestro_bench_memory").await;
    let store = storage::open(&StoreLocation::Postgres(url.clone())).await.expect("store");
    let pg = PostgresStore::open(url).await.expect("store");
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    println!("postgres:");
    // Load every tenant first, then build the index once (its definition from the
    // catalog, so that it is exactly the migration's).
    let (definition,): (String,) =
        sqlx::query_as("SELECT indexdef FROM pg_indexes WHERE indexname = 'memories_hnsw_384'")
            .fetch_one(&mut conn)
            .await
            .expect("the index definition");
    sqlx::raw_sql("DROP INDEX memories_hnsw_384").execute(&mut conn).await.expect("drop");
    let start = Instant::now();
    let mut tenants = Vec::new();
    for (round, set) in sets.iter().enumerate() {
        let who = tenant(&store, &format!("bench-{round}")).await;
        let ids = copy_fill(&mut conn, &who, &set.data.vectors).await;
        tenants.push((who, ids));
    }
    let small_sizes = [500usize, 1000, 2000, 4000];
    let mut smalls = Vec::new();
    for (i, n) in small_sizes.iter().enumerate() {
        let data = data(*n, 7 + *n as u64);
        let near = queries(&data, "near", NEAR, 11 + *n as u64);
        let who = tenant(&store, &format!("small-{i}")).await;
        let ids = copy_fill(&mut conn, &who, &data.vectors).await;
        smalls.push((*n, who, ids, near));
    }
    let rows: usize = sets.iter().map(|s| s.n).sum::<usize>() + small_sizes.iter().sum::<usize>();
    println!("  {:<52} {:>8.1} s", format!("COPY {rows} rows"), start.elapsed().as_secs_f64());
    let start = Instant::now();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET maintenance_work_mem = '1GB'; {definition}; RESET maintenance_work_mem; ANALYZE memories"
    )))
    .execute(&mut conn)
    .await
    .expect("build the index");
    let (size,): (String,) = sqlx::query_as("SELECT pg_size_pretty(pg_relation_size('memories_hnsw_384'))")
        .fetch_one(&mut conn)
        .await
        .expect("size");
    println!(
        "  {:<52} {:>8.1} s  ({size})",
        "build memories_hnsw_384 (halfvec, m 32, ef_construction 128)",
        start.elapsed().as_secs_f64()
    );

    let ef = (K as u32 * EF_SEARCH_PER_HIT).max(EF_SEARCH_MIN);
    for (set, (who, ids)) in sets.iter().zip(&tenants) {
        let n = set.n;
        let plan = pg
            .explain_memory_search(who, &embedder(), &set.near.vectors[0], &MemoryFilter::default(), K as u32)
            .await
            .expect("explain")
            .join("\n");
        let path = if plan.contains("hnsw") { format!("HNSW, ef_search {ef}") } else { "exact".to_owned() };
        let mut floor = set.near.floor.clone();
        report(&format!("{n} × {DIMS}: floor (in-memory exact dot loop)"), &mut floor, "");
        for queries in [&set.near, &set.far] {
            let (mut samples, recall) = time_search(&store, who, queries, ids).await;
            report(
                &format!("{n} × {DIMS}: search, {} queries ({path})", queries.name),
                &mut samples,
                &format!("  recall@10 {recall:.3}"),
            );
        }
        if plan.contains("hnsw") {
            println!("  {n} × {DIMS}: the store's search step by step (100 near queries):");
            time_steps(url, who, &set.near, 100).await;
            println!("  {n} × {DIMS}: EXPLAIN (ANALYZE, BUFFERS) of the store's search, twice:");
            analyze(&pg, who, &set.near.vectors[0]).await;
            analyze(&pg, who, &set.near.vectors[1]).await;
            for queries in [&set.near, &set.far] {
                for ef in [40, 64, 100, 200] {
                    let (mut samples, recall) = time_sql(&mut conn, who, queries, ids, Some(ef), usize::MAX).await;
                    report(
                        &format!("{n} × {DIMS}: pgvector alone, {} queries, ef {ef}", queries.name),
                        &mut samples,
                        &format!("  recall@10 {recall:.3}"),
                    );
                }
            }
        }
        let (mut samples, recall) = time_sql(&mut conn, who, &set.near, ids, None, 20).await;
        report(
            &format!("{n} × {DIMS}: Postgres exact scan (20 queries)"),
            &mut samples,
            &format!("  recall@10 {recall:.3}"),
        );
    }
    // Small tenants go exact (under EXACT_SCAN_BELOW, or under a tenth of the table):
    // their cost by size.
    for (n, who, ids, near) in &smalls {
        let (mut samples, recall) = time_search(&store, who, near, ids).await;
        let plan = pg
            .explain_memory_search(who, &embedder(), &near.vectors[0], &MemoryFilter::default(), K as u32)
            .await
            .expect("explain")
            .join("\n");
        let path = if plan.contains("hnsw") { "HNSW" } else { "exact" };
        report(
            &format!("tenant of {n} in the shared table ({path})"),
            &mut samples,
            &format!("  recall@10 {recall:.3}"),
        );
        analyze(&pg, who, &near.vectors[0]).await;
    }
    println!("  (a tenant goes through the index from {EXACT_SCAN_BELOW} vectors and a tenth of the table)");
    drop((store, pg));
    conn.close().await.ok();
    drop_database(server, url).await;
}

/// Drops the benchmark's database (it holds hundreds of megabytes).
async fn drop_database(server: &str, url: &str) {
    let name = url.rsplit('/').next().unwrap_or_default().split('?').next().unwrap_or_default();
    let mut admin = sqlx::PgConnection::connect(server).await.expect("connect to TEST_DATABASE_URL");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
        .execute(&mut admin)
        .await
        .expect("drop db");
    admin.close().await.ok();
}

fn main() {
    let sizes: Vec<usize> = std::env::var("MEMORY_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10_000, 100_000]);
    let sets: Vec<Sized> = sizes
        .iter()
        .map(|n| {
            let data = data(*n, 0x9e37_79b9_7f4a_7c15 + *n as u64);
            let near = queries(&data, "near", NEAR, 0x51 + *n as u64);
            let far = queries(&data, "far", FAR, 0x52 + *n as u64);
            Sized { n: *n, data, near, far }
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let backends = std::env::var("MEMORY_BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".to_owned());
    runtime.block_on(async {
        if backends.contains("sqlite") {
            bench_sqlite(&sets).await;
        }
        if let Ok(server) = std::env::var("TEST_DATABASE_URL")
            && !server.is_empty()
            && backends.contains("postgres")
        {
            bench_postgres(&server, &sets).await;
        }
    });
}
