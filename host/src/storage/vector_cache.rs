//! SQLite's in-process vector caches: memories' and passages' exact scans read a
//! tenant's vectors of one embedder into memory ([`TenantVectors`]) and keep them in a
//! [`TenantCache`] while the tenant's epoch (`memory_epochs`, `passage_epochs`) is
//! unchanged.
//!
//! After a write the cache is brought up to date **by delta** (migration 0014): every
//! write moves the tenant's epoch by one and stamps the written row's `seq` with it, and
//! a deletion leaves a tombstone with its epoch. One read transaction reads the epoch,
//! the tombstones and the rows with a `seq` above the cache's epoch; their keys are
//! dropped from the cache and the rows still of the cache's embedder added back (the
//! int8 codes with them). A cache more than [`DELTA_MAX`] changes behind, or none, is
//! read whole. One loader ([`SqliteStore::tenant_vectors`]) serves both tables through
//! [`CachedRow`].

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::hash::Hash;
use std::sync::Arc;

use maestro_core::embed::EmbedderInfo;
use maestro_core::memory::vector_from_bytes;
use maestro_core::{StoreError, TenantId};
use sqlx::sqlite::SqliteRow;

use super::backend_err;
use super::sqlite::SqliteStore;

/// Most vector numbers a cache holds across tenants (256 MiB of f32 and 64 MiB of
/// their int8 codes, e.g. one tenant of 160,000 384-dimension vectors): a tenant larger
/// than this alone is scanned but not kept.
const CACHE_MAX_FLOATS: usize = 64 * 1024 * 1024;

/// The most changes a cache is brought forward by delta; further behind, it is read
/// whole. Migration 0014's delete triggers keep the tombstones of a tenant's last 1,024
/// changes: this must not exceed that window, so no tombstone a delta needs is pruned.
pub(super) const DELTA_MAX: i64 = 1024;

/// A row kind a [`TenantVectors`] holds (memories, passages): how SQLite's loader
/// reads it.
pub(super) trait CachedRow: Sized + Clone + Send + Sync + 'static {
    /// What names a row within its tenant (the order breaks ties between equal scores).
    type Key: Clone + Eq + Hash + Ord + Send + Sync + std::fmt::Debug;
    /// Whether the rows' vectors get int8 codes, for a prefilter over large sets.
    const QUANTIZED: bool;
    /// The tenant's epoch: `SELECT epoch … WHERE tenant_id = $1`.
    const EPOCH: &'static str;
    /// The keys of tenant $1 deleted after epoch $2 (read by [`CachedRow::deleted`]).
    const DELETED: &'static str;
    /// `SELECT <columns>, embedding FROM <table> WHERE tenant_id = $1` (text left out).
    fn select() -> String;
    /// The row's key.
    fn key(&self) -> Self::Key;
    /// The row of a [`CachedRow::select`] row and the embedder of its vector.
    fn decode(row: &SqliteRow) -> Result<(Self, EmbedderInfo), StoreError>;
    /// The key of a [`CachedRow::DELETED`] row.
    fn deleted(row: &SqliteRow) -> Result<Self::Key, StoreError>;
}

/// Keeps [`TenantVectors`] per (tenant, embedder key), at most [`CACHE_MAX_FLOATS`]
/// numbers in all.
#[derive(Debug)]
pub(super) struct TenantCache<T: CachedRow> {
    tenants: std::sync::Mutex<HashMap<CacheKey, Arc<TenantVectors<T>>>>,
}

/// (tenant id, embedder key).
type CacheKey = (String, String);

impl<T: CachedRow> Default for TenantCache<T> {
    fn default() -> Self {
        Self { tenants: std::sync::Mutex::default() }
    }
}

impl<T: CachedRow> TenantCache<T> {
    fn get(&self, key: &CacheKey) -> Option<Arc<TenantVectors<T>>> {
        self.tenants.lock().ok()?.get(key).cloned()
    }

    /// Removes and returns the entry (so that, when no search holds it, it can be
    /// brought forward in place).
    fn take(&self, key: &CacheKey) -> Option<Arc<TenantVectors<T>>> {
        self.tenants.lock().ok()?.remove(key)
    }

    /// Keeps `value`, evicting the others when the cache would hold too many numbers;
    /// a value larger than the whole cache is not kept.
    fn put(&self, key: CacheKey, value: Arc<TenantVectors<T>>) {
        let Ok(mut tenants) = self.tenants.lock() else { return };
        if value.flat.len() > CACHE_MAX_FLOATS {
            tenants.remove(&key);
            return;
        }
        let held: usize = tenants.iter().filter(|(k, _)| **k != key).map(|(_, v)| v.flat.len()).sum();
        if held + value.flat.len() > CACHE_MAX_FLOATS {
            tenants.clear();
        }
        tenants.insert(key, value);
    }
}

/// One tenant's rows of one embedder with their vectors, as of `epoch`.
#[derive(Debug, Clone)]
pub(super) struct TenantVectors<T: CachedRow> {
    epoch: i64,
    dims: usize,
    /// The rows (without their text), for the filter.
    rows: Vec<T>,
    /// Their keys, in the same order.
    keys: Vec<T::Key>,
    /// Where each key is.
    at: HashMap<T::Key, usize>,
    /// Their vectors, one after the other.
    flat: Vec<f32>,
    /// The same vectors in 8 bits (see [`quantize`]), when [`CachedRow::QUANTIZED`].
    codes: Vec<i8>,
    /// Each vector's scale: its numbers are about `code × scale`.
    scales: Vec<f32>,
}

impl<T: CachedRow> TenantVectors<T> {
    pub(super) fn new(epoch: i64, dims: usize, capacity: usize) -> Self {
        let codes = if T::QUANTIZED { capacity * dims } else { 0 };
        Self {
            epoch,
            dims,
            rows: Vec::with_capacity(capacity),
            keys: Vec::with_capacity(capacity),
            at: HashMap::with_capacity(capacity),
            flat: Vec::with_capacity(capacity * dims),
            codes: Vec::with_capacity(codes),
            scales: Vec::with_capacity(if T::QUANTIZED { capacity } else { 0 }),
        }
    }

    /// The rows, in scan order ([`TenantVectors::top_k`]'s indexes).
    pub(super) fn rows(&self) -> &[T] {
        &self.rows
    }

    /// Adds `row` with `vector` (of `dims` numbers), replacing a row of the same key.
    pub(super) fn push(&mut self, row: T, vector: &[f32]) {
        let key = row.key();
        self.remove(&key);
        self.at.insert(key.clone(), self.rows.len());
        self.keys.push(key);
        self.rows.push(row);
        self.flat.extend_from_slice(vector);
        if T::QUANTIZED {
            let scale = quantize(vector, &mut self.codes);
            self.scales.push(scale);
        }
    }

    /// Drops the row of `key`, if any: the last row takes its place.
    pub(super) fn remove(&mut self, key: &T::Key) {
        let Some(i) = self.at.remove(key) else { return };
        let (last, d) = (self.rows.len() - 1, self.dims);
        self.rows.swap_remove(i);
        self.keys.swap_remove(i);
        if i != last {
            self.at.insert(self.keys[i].clone(), i);
            self.flat.copy_within(last * d..(last + 1) * d, i * d);
            if T::QUANTIZED {
                self.codes.copy_within(last * d..(last + 1) * d, i * d);
            }
        }
        self.flat.truncate(last * d);
        if T::QUANTIZED {
            self.codes.truncate(last * d);
            self.scales.swap_remove(i);
        }
    }

    /// The best `k` (score, index into [`TenantVectors::rows`]) of the rows `passes`
    /// lets through (`everything`: all of them), best first, ties by key. Over more
    /// than twice [`prefilter_size`] rows of a [`CachedRow::QUANTIZED`] kind, an int8
    /// prefilter picks that many candidates (a quarter of the memory traffic of f32),
    /// which are then scored exactly; otherwise every row is scored exactly.
    pub(super) fn top_k(
        &self,
        query: &[f32],
        everything: bool,
        passes: impl Fn(&T) -> bool,
        k: usize,
    ) -> Vec<(f32, usize)> {
        let passes = |row: &T| everything || passes(row);
        let candidates = prefilter_size(k);
        let mut best = TopK::new(k);
        if !T::QUANTIZED || self.rows.len() <= candidates.saturating_mul(2) {
            for (i, (row, vector)) in self.rows.iter().zip(self.flat.chunks_exact(self.dims)).enumerate() {
                if !passes(row) {
                    continue;
                }
                let score = maestro_core::embed::dot(query, vector);
                if best.admits(score) {
                    best.push(score, (&self.keys[i], i));
                }
            }
            return best.into_sorted().into_iter().map(|(score, (_, i))| (score, i)).collect();
        }
        let mut query_codes = Vec::with_capacity(self.dims);
        quantize(query, &mut query_codes);
        let mut approximate: Vec<(f32, usize)> = Vec::with_capacity(self.rows.len());
        let coded = self.codes.chunks_exact(self.dims).zip(&self.scales);
        for (i, (row, (codes, scale))) in self.rows.iter().zip(coded).enumerate() {
            if passes(row) {
                approximate.push((dot_i8(codes, &query_codes) as f32 * scale, i));
            }
        }
        if approximate.len() > candidates {
            approximate.select_nth_unstable_by(candidates - 1, |a, b| b.0.total_cmp(&a.0));
            approximate.truncate(candidates);
        }
        for (_, i) in approximate {
            let vector = &self.flat[i * self.dims..(i + 1) * self.dims];
            let score = maestro_core::embed::dot(query, vector);
            if best.admits(score) {
                best.push(score, (&self.keys[i], i));
            }
        }
        best.into_sorted().into_iter().map(|(score, (_, i))| (score, i)).collect()
    }
}

impl SqliteStore {
    /// The tenant's rows of `embedder` with their vectors: the cached ones while the
    /// tenant's epoch is unchanged, else brought forward by delta or read anew (epoch
    /// and rows in one read transaction).
    pub(super) async fn tenant_vectors<T: CachedRow>(
        &self,
        cache: &TenantCache<T>,
        tenant: &TenantId,
        embedder: &EmbedderInfo,
    ) -> Result<Arc<TenantVectors<T>>, StoreError> {
        let key = (tenant.as_str().to_owned(), embedder.key());
        let epoch: Option<i64> =
            sqlx::query_scalar(T::EPOCH).bind(tenant.as_str()).fetch_optional(&self.pool).await.map_err(backend_err)?;
        if let Some(cached) = cache.get(&key).filter(|c| c.epoch == epoch.unwrap_or(0)) {
            return Ok(cached);
        }
        let base = cache.take(&key);
        let mut tx = self.pool.begin().await.map_err(backend_err)?;
        let epoch: i64 = sqlx::query_scalar(T::EPOCH)
            .bind(tenant.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend_err)?
            .unwrap_or(0);
        let dims = embedder.dimensions as usize;
        let base = base.filter(|b| b.epoch <= epoch && epoch - b.epoch <= DELTA_MAX);
        let loaded = if let Some(base) = base {
            let deleted = sqlx::query(T::DELETED)
                .bind(tenant.as_str())
                .bind(base.epoch)
                .fetch_all(&mut *tx)
                .await
                .map_err(backend_err)?;
            let changed = sqlx::query(sqlx::AssertSqlSafe(format!("{} AND seq > $2", T::select())))
                .bind(tenant.as_str())
                .bind(base.epoch)
                .fetch_all(&mut *tx)
                .await
                .map_err(backend_err)?;
            tx.commit().await.map_err(backend_err)?;
            // In place when no search holds it any more.
            let mut set = Arc::try_unwrap(base).unwrap_or_else(|shared| (*shared).clone());
            for row in &deleted {
                set.remove(&T::deleted(row)?);
            }
            for row in &changed {
                let (item, of) = T::decode(row)?;
                set.remove(&item.key());
                if of == *embedder
                    && let Some(vector) = embedding(row, dims)?
                {
                    set.push(item, &vector);
                }
            }
            set.epoch = epoch;
            set
        } else {
            let sql = format!("{} AND provider = $2 AND model = $3 AND dims = $4", T::select());
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(tenant.as_str())
                .bind(&embedder.provider)
                .bind(&embedder.model)
                .bind(i32::try_from(embedder.dimensions).unwrap_or(i32::MAX))
                .fetch_all(&mut *tx)
                .await
                .map_err(backend_err)?;
            tx.commit().await.map_err(backend_err)?;
            let mut set = TenantVectors::new(epoch, dims, rows.len());
            for row in &rows {
                if let Some(vector) = embedding(row, dims)? {
                    set.push(T::decode(row)?.0, &vector);
                }
            }
            set
        };
        let loaded = Arc::new(loaded);
        cache.put(key, loaded.clone());
        Ok(loaded)
    }
}

/// The row's `embedding` when it holds `dims` numbers (a row of another length is left
/// out of the scan, as its embedder's dimension says it cannot be).
fn embedding(row: &SqliteRow, dims: usize) -> Result<Option<Vec<f32>>, StoreError> {
    use sqlx::Row as _;
    let bytes: &[u8] = row.try_get("embedding").map_err(backend_err)?;
    Ok(vector_from_bytes(bytes).filter(|v| v.len() == dims))
}

/// The best `k` (score, id) pairs seen so far: a min-heap on the score, ties by id.
pub(super) struct TopK<I: Ord> {
    k: usize,
    heap: BinaryHeap<Candidate<I>>,
}

struct Candidate<I> {
    score: f32,
    id: I,
}

impl<I: Ord> PartialEq for Candidate<I> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl<I: Ord> Eq for Candidate<I> {}
impl<I: Ord> PartialOrd for Candidate<I> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<I: Ord> Ord for Candidate<I> {
    /// Reversed, so the heap's top is the worst kept candidate (ties: the larger id).
    fn cmp(&self, other: &Self) -> Ordering {
        other.score.total_cmp(&self.score).then_with(|| self.id.cmp(&other.id))
    }
}

impl<I: Ord> TopK<I> {
    pub(super) fn new(k: usize) -> Self {
        Self { k, heap: BinaryHeap::with_capacity(k + 1) }
    }

    /// Whether a candidate with `score` would be kept (so its id is worth copying).
    pub(super) fn admits(&self, score: f32) -> bool {
        self.heap.len() < self.k || self.heap.peek().is_some_and(|worst| score > worst.score)
    }

    pub(super) fn push(&mut self, score: f32, id: I) {
        self.heap.push(Candidate { score, id });
        if self.heap.len() > self.k {
            self.heap.pop();
        }
    }

    /// Best first.
    pub(super) fn into_sorted(self) -> Vec<(f32, I)> {
        self.heap.into_sorted_vec().into_iter().map(|c| (c.score, c.id)).collect()
    }
}

/// Candidates the int8 prefilter keeps for a search of `k`, to be scored exactly: ten
/// per hit, at least 100. `benches/memory.rs` prints recall@10 against an exact scan.
fn prefilter_size(k: usize) -> usize {
    k.saturating_mul(10).max(100)
}

/// Appends `vector` in 8 bits (each number over the largest magnitude, times 127,
/// rounded) to `codes`; returns the scale that maps a code back to the number.
fn quantize(vector: &[f32], codes: &mut Vec<i8>) -> f32 {
    let largest = vector.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    if largest == 0.0 || !largest.is_finite() {
        codes.extend(std::iter::repeat_n(0, vector.len()));
        return 0.0;
    }
    let scale = largest / 127.0;
    codes.extend(vector.iter().map(|x| (x / scale).round().clamp(-127.0, 127.0) as i8));
    scale
}

/// The inner product of two code vectors (at most 384 × 127² per 384 numbers: far
/// from overflowing).
fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(x, y)| i32::from(*x) * i32::from(*y)).sum()
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use maestro_core::memory::{Memory, MemoryFilter, MemoryId, MemoryScope};

    use super::*;

    #[test]
    fn top_k_keeps_the_best_scores_best_first() {
        let mut top = TopK::new(3);
        for (i, score) in [0.1f32, 0.9, 0.5, 0.7, 0.2, 0.95].iter().enumerate() {
            if top.admits(*score) {
                top.push(*score, format!("m{i}"));
            }
        }
        let got: Vec<(f32, String)> = top.into_sorted();
        assert_eq!(got.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![0.95, 0.9, 0.7]);
        assert_eq!(got[0].1, "m5");
    }

    #[test]
    fn quantized_vectors_keep_their_numbers_within_half_a_step() {
        let vector = [0.5f32, -0.25, 0.125, 0.0, -0.5];
        let mut codes = Vec::new();
        let scale = quantize(&vector, &mut codes);
        assert_eq!(codes, [127, -64, 32, 0, -127]);
        for (x, c) in vector.iter().zip(&codes) {
            assert!((x - f32::from(*c) * scale).abs() <= scale / 2.0);
        }
        let mut zeros = Vec::new();
        assert_eq!(quantize(&[0.0; 3], &mut zeros), 0.0);
        assert_eq!(zeros, [0, 0, 0]);
        assert_eq!(dot_i8(&[127, -64], &[127, 2]), 127 * 127 - 128);
    }

    /// Unit vectors near 16 random centres, like the benchmark's.
    fn clustered(n: usize, dims: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut state = seed;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        let centres: Vec<Vec<f32>> = (0..16).map(|_| (0..dims).map(|_| next()).collect()).collect();
        (0..n)
            .map(|i| {
                let mut v: Vec<f32> = centres[i % 16].iter().map(|c| c + 0.8 * next()).collect();
                maestro_core::embed::normalise(&mut v);
                v
            })
            .collect()
    }

    /// Memory `i` (tagged `third` when `i` is a multiple of 3).
    fn memory(i: usize, dims: usize) -> Memory {
        let embedder = EmbedderInfo { provider: "test".into(), model: "m".into(), dimensions: dims as u32 };
        let at = Utc::now();
        let mut id = [0u8; 16];
        id[8..].copy_from_slice(&(i as u64).to_be_bytes());
        Memory {
            id: MemoryId::from_random(id),
            tenant: TenantId::from_random([1; 16]),
            scope: MemoryScope::Tenant,
            text: String::new(),
            tags: if i.is_multiple_of(3) { vec!["third".into()] } else { Vec::new() },
            pinned: false,
            source: None,
            created_at: at,
            updated_at: at,
            last_used_at: None,
            embedder,
        }
    }

    fn tenant_vectors(vectors: &[Vec<f32>]) -> TenantVectors<Memory> {
        let dims = vectors[0].len();
        let mut loaded = TenantVectors::new(0, dims, vectors.len());
        for (i, vector) in vectors.iter().enumerate() {
            loaded.push(memory(i, dims), vector);
        }
        loaded
    }

    /// The ids of the best 10 of `set` for `query` (through `filter`).
    fn ids(set: &TenantVectors<Memory>, query: &[f32], filter: &MemoryFilter) -> Vec<String> {
        let everything = *filter == MemoryFilter::default();
        let ranked = set.top_k(query, everything, |m| filter.matches(m), 10);
        ranked.into_iter().map(|(_, i)| set.rows()[i].id.as_str().to_owned()).collect()
    }

    fn query(vectors: &[Vec<f32>], q: usize) -> Vec<f32> {
        let mut query: Vec<f32> = vectors[q * 37].iter().map(|x| x + 0.01 * ((q % 5) as f32 - 2.0)).collect();
        maestro_core::embed::normalise(&mut query);
        query
    }

    #[test]
    fn the_int8_prefilter_finds_the_exact_top_k_with_and_without_a_filter() {
        let vectors = clustered(3_000, 64, 0x2545_f491);
        let loaded = tenant_vectors(&vectors);
        assert!(loaded.rows().len() > 2 * prefilter_size(10), "the prefilter is used");
        let exact = |query: &[f32], keep: &dyn Fn(usize) -> bool| {
            let mut scored: Vec<(f32, usize)> = vectors
                .iter()
                .enumerate()
                .filter(|(i, _)| keep(*i))
                .map(|(i, v)| (maestro_core::embed::dot(query, v), i))
                .collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0));
            scored.into_iter().take(10).map(|(_, i)| loaded.rows()[i].id.as_str().to_owned()).collect::<Vec<_>>()
        };
        let third = MemoryFilter { tags: vec!["third".into()], ..Default::default() };
        for q in 0..20 {
            let query = query(&vectors, q);
            assert_eq!(ids(&loaded, &query, &MemoryFilter::default()), exact(&query, &|_| true), "query {q}");
            assert_eq!(ids(&loaded, &query, &third), exact(&query, &|i| i % 3 == 0), "filtered query {q}");
        }
    }

    #[test]
    fn removing_and_replacing_rows_keeps_vectors_codes_and_keys_in_step_with_a_fresh_load() {
        let (n, dims) = (1_000, 32);
        let vectors = clustered(n + 200, dims, 0x9e37_79b9);
        let mut changed = tenant_vectors(&vectors[..n]);
        // Rows the final set holds, by index into `vectors` (row i is memory i).
        let mut held: Vec<(usize, usize)> = (0..n).map(|i| (i, i)).collect();
        for step in 0..300 {
            let victim = (step * 7919) % n;
            match step % 3 {
                // Deleted (the last row takes its place).
                0 => {
                    changed.remove(&memory(victim, dims).id.as_str().to_owned());
                    held.retain(|(i, _)| *i != victim);
                }
                // Replaced: another vector under the same key.
                1 => {
                    let vector = n + step % 200;
                    changed.push(memory(victim, dims), &vectors[vector]);
                    held.retain(|(i, _)| *i != victim);
                    held.push((victim, vector));
                }
                // Added back (or anew): its own vector.
                _ => {
                    changed.push(memory(victim, dims), &vectors[victim]);
                    held.retain(|(i, _)| *i != victim);
                    held.push((victim, victim));
                }
            }
        }
        let mut fresh = TenantVectors::new(0, dims, held.len());
        for (i, vector) in &held {
            fresh.push(memory(*i, dims), &vectors[*vector]);
        }
        assert_eq!(changed.rows().len(), fresh.rows().len());
        assert_eq!((changed.flat.len(), changed.codes.len()), (fresh.flat.len(), fresh.codes.len()));
        for (i, key) in changed.keys.iter().enumerate() {
            assert_eq!(changed.at[key], i, "the position map follows the rows");
            assert_eq!(changed.rows()[i].id.as_str(), key);
            let j = fresh.at[key];
            let d = dims;
            assert_eq!(changed.flat[i * d..(i + 1) * d], fresh.flat[j * d..(j + 1) * d], "vector of {key}");
            assert_eq!(changed.codes[i * d..(i + 1) * d], fresh.codes[j * d..(j + 1) * d], "codes of {key}");
            assert_eq!(changed.scales[i], fresh.scales[j], "scale of {key}");
        }
        let third = MemoryFilter { tags: vec!["third".into()], ..Default::default() };
        for q in 0..20 {
            let query = query(&vectors, q);
            for filter in [MemoryFilter::default(), third.clone()] {
                assert_eq!(ids(&changed, &query, &filter), ids(&fresh, &query, &filter), "query {q}");
            }
        }
    }

    /// The memories' delta reads search an index (the passages' are checked in
    /// `passages.rs`).
    #[tokio::test]
    async fn memory_delta_reads_search_an_index_on_sqlite() {
        let delta = format!("{} AND seq > $2", Memory::select());
        crate::storage::assert_indexed_on_sqlite(&[("DELTA", delta.as_str()), ("DELETED", Memory::DELETED)]).await;
    }
}
