//! SQLite's vector cache after a write: a search right after one new passage, with the
//! cache brought forward by delta (migration 0014), beside the same search through a
//! store whose cache is empty (what every search after a write cost before: the whole
//! tenant read again) and a search with nothing changed (the cache as is). Prints
//! figures; never asserts timings.
//!
//! `cargo bench -p maestro-host --bench vector_cache`; `PASSAGE_BENCH_SIZE` sets the
//! tenant's passages (default 20,000).
//!
//! Measured 2026-11-29 at 20,000 passages, our crates at opt-level 3 (`--profile dev`
//! with `CARGO_PROFILE_DEV_OPT_LEVEL=3`; dependencies at the dev profile's 2, no LTO),
//! on 2 cores under a load average of 9–12: nothing changed p50 2.8 ms (p95 27 ms),
//! after one write by delta p50 1.7 ms (p95 11 ms), after one write read whole p50
//! 261 ms (p95 336 ms). In the plain dev profile: 159, 144 and 900 ms.

#[path = "common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{millis, percentile};
use maestro_core::embed::{EmbedderInfo, normalise};
use maestro_core::passage::{Passage, PassageFilter, PassageWrite};
use maestro_core::search::SearchKind;
use maestro_core::{Store, Tenant, TenantId, TenantName};
use maestro_host::storage::{self, StoreLocation};

const DIMS: usize = 384;
const ROUNDS: usize = 30;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    fn unit(&mut self) -> Vec<f32> {
        let mut v: Vec<f32> = (0..DIMS).map(|_| self.next()).collect();
        normalise(&mut v);
        v
    }
}

fn info() -> EmbedderInfo {
    EmbedderInfo { provider: "bench".into(), model: "random".into(), dimensions: DIMS as u32 }
}

fn report(name: &str, samples: &mut [Duration]) {
    samples.sort();
    println!(
        "  {name:<52} p50 {:>8.3} ms  p95 {:>8.3} ms",
        millis(percentile(samples, 0.5)),
        millis(percentile(samples, 0.95))
    );
}

/// Replaces the passages of documents `first..first + count` (one each), in one write.
async fn write(store: &Arc<dyn Store>, tenant: &TenantId, rng: &mut Rng, first: usize, count: usize) {
    let passages: Vec<(Passage, Vec<f32>)> = (first..first + count)
        .map(|i| {
            let passage = Passage {
                tenant: tenant.clone(),
                kind: SearchKind::Document,
                object: format!("doc_{i:08}"),
                chunk: 0,
                session: None,
                author: Some("team.writer".into()),
                at: Utc::now(),
                text: format!("benchmark passage {i}"),
            };
            (passage, rng.unit())
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

async fn search(store: &Arc<dyn Store>, tenant: &TenantId, query: &[f32]) -> Duration {
    let started = Instant::now();
    let hits = store.search_passages(tenant, &info(), query, &PassageFilter::default(), 10).await.expect("search");
    let elapsed = started.elapsed();
    assert_eq!(hits.len(), 10);
    elapsed
}

fn main() {
    let n: usize = std::env::var("PASSAGE_BENCH_SIZE").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(20_000);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let location = StoreLocation::Sqlite(dir.path().join("bench.db"));
        let store = storage::open(&location).await.expect("store");
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).expect("random");
        let tenant = Tenant {
            id: TenantId::from_random(bytes),
            name: TenantName::parse("acme").expect("name"),
            created_at: Utc::now(),
        };
        store.create_tenant(&tenant).await.expect("tenant");
        let t = &tenant.id;
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for first in (0..n).step_by(1000) {
            write(&store, t, &mut rng, first, 1000.min(n - first)).await;
        }
        println!("sqlite: a search right after one write, {n} passages of one tenant, k = 10");
        search(&store, t, &rng.unit()).await;
        let (mut unchanged, mut delta, mut full) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            unchanged.push(search(&store, t, &rng.unit()).await);
            // One new passage (a message's worth), then the same store's search.
            write(&store, t, &mut rng, n + round, 1).await;
            delta.push(search(&store, t, &rng.unit()).await);
            // One more, then a store with an empty cache: the tenant read whole.
            write(&store, t, &mut rng, n + ROUNDS + round, 1).await;
            let fresh = storage::open(&location).await.expect("store");
            full.push(search(&fresh, t, &rng.unit()).await);
        }
        report("nothing changed (the cache as is)", &mut unchanged);
        report("after one write, by delta", &mut delta);
        report("after one write, read whole (before 0014)", &mut full);
    });
}
