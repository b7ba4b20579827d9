//! Full-text search benchmark (SQLite store). Prints figures beside a floor measured in
//! the same run; never asserts timings.
//!
//! `cargo bench -p maestro-host --bench search` (`SEARCH_BENCH_DOCS`, default 200,000).
//!
//! 1. Indexing throughput (documents per second): the indexer catching up with an
//!    outbox of N messages (outbox reads, content fetched from the store, delete-by-key
//!    and add, commits every `commit_batch`), and a rebuild from the tables. Floor: a
//!    bare tantivy index (same schema shape and tokenizer, 1 thread, 50 MB) fed the
//!    same texts in memory, one commit.
//! 2. Query latency, top-10 p50/p99 over N documents of one tenant among two:
//!    `FullText::full_text` (lenient parse, tenant filter, BM25, snippets, the blocking
//!    hop). Floor: the same parsed queries run on the bare index (no filter, no snippet).
//! 3. Write-to-searchable latency at the default cadence (commit every second, poll
//!    every 200 ms): a message committed, then searched until found.
//! 4. Hybrid search, top-10 p50/p99 (`Retrieval::search`, mode `hybrid`): 50 BM25
//!    candidates from the same index, 50 vector candidates from `MEMORIES` memories
//!    of the tenant (SQLite exact scan) and its passages, fused, snippets for the hits.
//!    The query is embedded by a hashing embedder (microseconds): the offline model's
//!    own cost per query is `benches/embed.rs`'s. Floor: the two sides alone, one after
//!    the other (`FullText::candidates` and `MemoryStore::search_memories`).

#[path = "common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{micros, millis, percentile};
use maestro_core::embed::{EmbedError, Embedder, EmbedderInfo};
use maestro_core::id::{Id, IdKind};
use maestro_core::memory::{Memory, MemoryFilter, MemoryScope};
use maestro_core::run::{Author, Message, RunLimits, Session, SessionId, Strategy};
use maestro_core::{Clock, Store, Tenant, TenantId, TenantName};
use maestro_host::accounts::SystemClock;
use maestro_host::retrieval::{Filters, Mode, Query, Retrieval};
use maestro_host::search::{Access, FullText, SearchSettings, TextFilters};
use maestro_host::storage::StoreLocation;
use tantivy::collector::TopDocs;
use tantivy::query::QueryParser;
use tantivy::schema::{STORED, STRING, Schema, TEXT};
use tantivy::{Index, TantivyDocument};

const QUERIES: usize = 2000;
const LATENCY_SAMPLES: usize = 15;
const WORDS: usize = 5000;
/// Memories of the tenant in the hybrid measurement.
const MEMORIES: usize = 10_000;
/// Hybrid queries measured.
const HYBRID_QUERIES: usize = 500;

fn main() {
    let docs: usize = std::env::var("SEARCH_BENCH_DOCS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    println!(
        "full-text search benchmark: {docs} documents, cores {}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average before the run: {}", load.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    runtime.block_on(run(docs));
}

/// A deterministic generator (xorshift) so every run indexes the same texts.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A word rank skewed towards frequent words (roughly Zipf).
    fn word(&mut self) -> usize {
        let u = (self.next() % 1_000_000) as f64 / 1_000_000.0;
        ((WORDS as f64).powf(u) as usize).saturating_sub(1).min(WORDS - 1)
    }
}

fn vocabulary() -> Vec<String> {
    let syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "gu", "de"];
    (0..WORDS)
        .map(|i| {
            let (a, b, c) = (i % 12, (i / 12) % 12, (i / 144) % 12);
            format!("{}{}{}{}", syllables[a], syllables[b], syllables[c], i / 1728)
        })
        .collect()
}

fn texts(n: usize, words: &[String], rng: &mut Rng) -> Vec<String> {
    (0..n)
        .map(|_| {
            let len = 8 + (rng.next() % 40) as usize;
            (0..len).map(|_| words[rng.word()].as_str()).collect::<Vec<_>>().join(" ")
        })
        .collect()
}

fn fresh<K: IdKind>(rng: &mut Rng) -> Id<K> {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&rng.next().to_le_bytes());
    bytes[8..].copy_from_slice(&rng.next().to_le_bytes());
    Id::from_random(bytes)
}

fn now() -> chrono::DateTime<chrono::Utc> {
    SystemClock.now()
}

async fn tenant(store: &Arc<dyn Store>, name: &str, rng: &mut Rng) -> TenantId {
    let tenant = Tenant { id: fresh(rng), name: TenantName::parse(name).expect("name"), created_at: now() };
    store.create_tenant(&tenant).await.expect("tenant");
    tenant.id
}

async fn session(store: &Arc<dyn Store>, tenant: &TenantId, rng: &mut Rng) -> SessionId {
    let session = Session {
        id: fresh(rng),
        tenant: tenant.clone(),
        title: "bench".into(),
        personas: vec!["team.writer".into()],
        strategy: Strategy::RoundRobin,
        limits: RunLimits {
            max_steps: 1,
            max_tool_calls_per_step: 1,
            credits_budget: None,
            deadline_secs: 60,
            wait_timeout_secs: None,
        },
        created_by: "key_bench".into(),
        created_at: now(),
    };
    store.create_session(&session).await.expect("session");
    session.id
}

async fn write(store: &Arc<dyn Store>, session: &SessionId, texts: &[String], rng: &mut Rng) {
    for chunk in texts.chunks(1000) {
        let mut tx = store.begin().await.expect("begin");
        for text in chunk {
            let message = Message {
                id: fresh(rng),
                session: session.clone(),
                seq: 0,
                author: Author::Persona { name: "team.writer".into() },
                content: text.clone(),
                run: None,
                at: now(),
            };
            tx.insert_message(&message).await.expect("insert");
        }
        tx.commit().await.expect("commit");
    }
}

async fn caught_up(store: &Arc<dyn Store>, index: &FullText) {
    let mut status = index.watch();
    loop {
        let now = status.borrow_and_update().clone();
        if let Some(w) = now.watermark
            && !now.rebuilding
            && !index.needs_rebuild()
            && store.outbox_status(w).await.expect("status").pending == 0
        {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_millis(20), status.changed()).await;
    }
}

async fn run(docs: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store =
        maestro_host::storage::open(&StoreLocation::Sqlite(dir.path().join("maestro.db"))).await.expect("store");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let words = vocabulary();
    let mine = texts(docs, &words, &mut rng);
    let theirs = texts(docs / 10, &words, &mut rng);
    let acme = tenant(&store, "acme", &mut rng).await;
    let globex = tenant(&store, "globex", &mut rng).await;
    let acme_session = session(&store, &acme, &mut rng).await;
    let globex_session = session(&store, &globex, &mut rng).await;

    // 1. Indexing: an index built at an empty outbox, then catching up with all of it.
    let settings = SearchSettings { commit_interval: Duration::from_secs(1), ..SearchSettings::under(dir.path()) };
    let index = FullText::open(settings.clone(), store.clone(), clock.clone(), Access::Write).expect("index");
    index.catch_up().await.expect("empty rebuild");
    let started = Instant::now();
    write(&store, &acme_session, &mine, &mut rng).await;
    write(&store, &globex_session, &theirs, &mut rng).await;
    let total = mine.len() + theirs.len();
    println!("\n1. indexing {total} messages");
    println!(
        "   store writes (units of 1000, durable):   {:>10.0} messages/s",
        total as f64 / started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let status = index.catch_up().await.expect("catch up");
    let elapsed = started.elapsed();
    assert_eq!(status.docs as usize, total);
    println!(
        "   indexer following the outbox:            {:>10.0} docs/s ({:.1} s)",
        total as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    index.request_rebuild();
    let started = Instant::now();
    index.rebuild().await.expect("rebuild");
    let elapsed = started.elapsed();
    println!(
        "   rebuild from the tables:                 {:>10.0} docs/s ({:.1} s)",
        total as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );

    let floor = tempfile::tempdir().expect("floor dir");
    let mut builder = Schema::builder();
    let tenant_field = builder.add_text_field("tenant", STRING | STORED);
    let id_field = builder.add_text_field("id", STRING | STORED);
    let text_field = builder.add_text_field("text", TEXT | STORED);
    let bare = Index::create_in_dir(floor.path(), builder.build()).expect("bare index");
    let started = Instant::now();
    {
        let mut writer = bare.writer_with_num_threads::<TantivyDocument>(1, 50_000_000).expect("writer");
        for (i, text) in mine.iter().chain(&theirs).enumerate() {
            let mut doc = TantivyDocument::default();
            doc.add_text(tenant_field, if i < mine.len() { "acme" } else { "globex" });
            doc.add_text(id_field, format!("msg_{i}"));
            doc.add_text(text_field, text);
            writer.add_document(doc).expect("add");
        }
        writer.commit().expect("commit");
    }
    let elapsed = started.elapsed();
    println!(
        "   floor: bare tantivy, in memory:          {:>10.0} docs/s ({:.1} s)",
        total as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );

    // 2. Queries: one or two words of the vocabulary, frequent and rare.
    let queries: Vec<String> = (0..QUERIES)
        .map(|i| {
            let a = &words[rng.word()];
            if i % 2 == 0 { a.clone() } else { format!("{a} {}", words[rng.word()]) }
        })
        .collect();
    let filters = TextFilters::default();
    for q in queries.iter().take(100) {
        index.full_text(&acme, q, &filters, 10).await.expect("warm up");
    }
    let mut ours = Vec::with_capacity(QUERIES);
    for q in &queries {
        let started = Instant::now();
        let hits = index.full_text(&acme, q, &filters, 10).await.expect("search");
        ours.push(started.elapsed());
        std::hint::black_box(hits);
    }
    let reader = bare.reader().expect("reader");
    let searcher = reader.searcher();
    let parser = QueryParser::for_index(&bare, vec![text_field]);
    let mut bare_times = Vec::with_capacity(QUERIES);
    for q in &queries {
        let started = Instant::now();
        let query = parser.parse_query_lenient(q).0;
        let top = searcher.search(&query, &TopDocs::with_limit(10).order_by_score()).expect("search");
        for (_, address) in &top {
            std::hint::black_box(searcher.doc::<TantivyDocument>(*address).expect("doc"));
        }
        bare_times.push(started.elapsed());
    }
    ours.sort();
    bare_times.sort();
    println!("\n2. top-10 queries over {} documents ({QUERIES} queries, one or two words)", status.docs);
    println!(
        "   FullText::full_text:   p50 {:>7.0} µs   p99 {:>7.0} µs",
        micros(percentile(&ours, 0.5)),
        micros(percentile(&ours, 0.99))
    );
    println!(
        "   floor: bare tantivy:   p50 {:>7.0} µs   p99 {:>7.0} µs   (no tenant filter, no snippets, no thread hop)",
        micros(percentile(&bare_times, 0.5)),
        micros(percentile(&bare_times, 0.99))
    );
    println!("   index size: {:.1} MB", index.size_bytes() as f64 / 1e6);

    // 4. Hybrid: memories (with vectors) join the index, then fused searches.
    hybrid(&store, &index, &acme, &words, &queries, &mut rng).await;
    drop(index);

    // 3. Write-to-searchable at the default cadence, with the indexer running.
    let index = FullText::open(SearchSettings::under(dir.path()), store.clone(), clock, Access::Write).expect("index");
    let stop = tokio_util::sync::CancellationToken::new();
    let task = index.spawn_indexer(stop.clone());
    caught_up(&store, &index).await;
    let mut latencies = Vec::with_capacity(LATENCY_SAMPLES);
    for i in 0..LATENCY_SAMPLES {
        let word = format!("freshword{i}x");
        let started = Instant::now();
        write(&store, &acme_session, std::slice::from_ref(&word), &mut rng).await;
        loop {
            if !index.full_text(&acme, &word, &filters, 1).await.expect("search").is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        latencies.push(started.elapsed());
        // Spread the writes over the commit cadence.
        tokio::time::sleep(Duration::from_millis(137 * (i as u64 % 7))).await;
    }
    latencies.sort();
    println!("\n3. write-to-searchable (commit every 1 s, poll every 200 ms), {LATENCY_SAMPLES} writes");
    println!(
        "   p50 {:>6.0} ms   max {:>6.0} ms",
        millis(percentile(&latencies, 0.5)),
        millis(*latencies.last().unwrap_or(&Duration::ZERO))
    );
    stop.cancel();
    task.await.expect("indexer ends");
}

/// A hashing embedder: each word to one of 384 dimensions with a sign, normalised
/// (texts sharing words get close vectors), costing microseconds.
#[derive(Debug)]
struct HashEmbedder(EmbedderInfo);

impl HashEmbedder {
    fn vector(text: &str) -> Vec<f32> {
        let mut vector = vec![0.0f32; 384];
        for word in text.split_whitespace() {
            let hash =
                word.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
            vector[(hash % 384) as usize] += if hash >> 63 == 0 { 1.0 } else { -1.0 };
        }
        maestro_core::embed::normalise(&mut vector);
        vector
    }
}

#[async_trait::async_trait]
impl Embedder for HashEmbedder {
    fn info(&self) -> &EmbedderInfo {
        &self.0
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        Ok(texts.iter().map(|t| Self::vector(t)).collect())
    }
}

async fn hybrid(
    store: &Arc<dyn Store>,
    index: &FullText,
    tenant: &TenantId,
    words: &[String],
    queries: &[String],
    rng: &mut Rng,
) {
    let embedder =
        Arc::new(HashEmbedder(EmbedderInfo { provider: "bench".into(), model: "hash".into(), dimensions: 384 }));
    let texts = texts(MEMORIES, words, rng);
    let at = now();
    for chunk in texts.chunks(500) {
        let batch: Vec<(Memory, Vec<f32>)> = chunk
            .iter()
            .map(|text| {
                let memory = Memory {
                    id: fresh(rng),
                    tenant: tenant.clone(),
                    scope: MemoryScope::Tenant,
                    text: text.clone(),
                    tags: Vec::new(),
                    pinned: false,
                    source: None,
                    created_at: at,
                    updated_at: at,
                    last_used_at: None,
                    embedder: embedder.0.clone(),
                };
                (memory, HashEmbedder::vector(text))
            })
            .collect();
        store.insert_memories(&batch).await.expect("memories");
    }
    let status = index.catch_up().await.expect("catch up");
    let retrieval = Retrieval::new(
        Some(index.clone()),
        store.clone(),
        store.clone(),
        embedder.clone(),
        Arc::new(SystemClock),
        None,
    );
    let query = |text: &str| Query {
        text: text.to_owned(),
        mode: Mode::Hybrid,
        filters: Filters::default(),
        limit: 10,
        half_life: None,
    };
    let queries = &queries[..HYBRID_QUERIES.min(queries.len())];
    for q in queries.iter().take(50) {
        retrieval.search(tenant, &query(q)).await.expect("warm up");
    }
    let (mut fused, mut both_sides) = (0usize, 0usize);
    let mut ours = Vec::with_capacity(queries.len());
    for q in queries {
        let started = Instant::now();
        let results = retrieval.search(tenant, &query(q)).await.expect("hybrid search");
        ours.push(started.elapsed());
        fused += results.hits.len();
        both_sides += results.hits.iter().filter(|h| h.ranks.text.is_some() && h.ranks.vector.is_some()).count();
    }
    let mut floor = Vec::with_capacity(queries.len());
    let filters = TextFilters::default();
    for q in queries {
        let started = Instant::now();
        let text = index.candidates(tenant, q, &filters, 50).await.expect("candidates");
        let vector = HashEmbedder::vector(q);
        let near =
            store.search_memories(tenant, &embedder.0, &vector, &MemoryFilter::default(), 50).await.expect("memories");
        floor.push(started.elapsed());
        std::hint::black_box((text, near));
    }
    ours.sort();
    floor.sort();
    println!(
        "\n4. hybrid top-10 over {} documents ({MEMORIES} of them memories with vectors), {} queries",
        status.docs,
        queries.len()
    );
    println!(
        "   Retrieval::search (hybrid):  p50 {:>7.0} µs   p99 {:>7.0} µs   ({:.1} hits/query, {:.1} from both sides)",
        micros(percentile(&ours, 0.5)),
        micros(percentile(&ours, 0.99)),
        fused as f64 / queries.len() as f64,
        both_sides as f64 / queries.len() as f64
    );
    println!(
        "   floor: the two sides alone:  p50 {:>7.0} µs   p99 {:>7.0} µs   (50 BM25 candidates + 50 nearest memories, one after the other)",
        micros(percentile(&floor, 0.5)),
        micros(percentile(&floor, 0.99))
    );
}
