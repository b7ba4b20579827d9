//! [`maestro_core::ports::MemoryStore`] on both backends. The SQL differs where the
//! vectors and tags do, so each backend has its own implementation here (both read rows
//! into one row type, tags as a JSON array text).
//!
//! **Postgres** keeps vectors in a pgvector `vector` column without a fixed dimension
//! and an HNSW index per common dimension, built on the expression
//! `embedding::halfvec(D)` (half precision: half the pages to read) in a partial index
//! `WHERE dims = D`, with `m = 32, ef_construction = 128` (migration 0013; 0010's
//! sparser graph found too few of the true neighbours at any `ef_search`). Triggers keep
//! how many vectors each tenant holds per embedder (`memory_counts`), so choosing the
//! path is one key lookup, and the store reuses its choice for [`SEARCH_PATH_TTL`]. A
//! search in an indexed dimension, for a tenant holding at least [`EXACT_SCAN_BELOW`]
//! vectors of the query's embedder and at least one row in [`INDEX_SHARE`] of the
//! table, runs in a transaction opened with its settings in the same round trip
//! (`BEGIN; SET LOCAL …`, see [`PostgresStore::search_begin`]):
//! `hnsw.iterative_scan = relaxed_order` and `hnsw.ef_search` sized to `k`. The index
//! hands out neighbours of every tenant, the tenant and filter conditions drop the
//! others, and the scan goes on past the first `ef_search` candidates until `k` rows
//! pass (up to pgvector's `hnsw.max_scan_tuples`, 20,000 by default). The nearest rows
//! come out of a `MATERIALIZED` CTE with their full-precision distance and are re-sorted
//! by it (relaxed order, and half precision, may emit them slightly out of order). A
//! smaller tenant, or a dimension without an index, is scanned exactly: the `ORDER BY`
//! names the uncast column, which no index matches, so the planner takes the tenant's
//! rows through `memories_by_tenant` and sorts them (one statement, without a
//! transaction, under [`EXACT_SCAN_BELOW`] rows). A search only reads, so it never
//! waits for a COMMIT: its transaction is dropped, and the pool sends the ROLLBACK as
//! it takes the connection back. Round trips cost more than the search itself on a
//! loaded machine (`benches/memory.rs` times each step): a search through the index
//! makes two (BEGIN with its settings, the search) besides the pool's ping on acquiring
//! a connection, where it made five (count lookup, BEGIN, settings, search, COMMIT) and
//! two pings.
//!
//! **SQLite** keeps vectors as BLOBs of f32 little-endian numbers. A search reads the
//! tenant's vectors of the query's embedder into memory once (the `VectorCache`) and
//! reuses them while the tenant's `memory_epochs` row is unchanged (triggers move it on
//! every write that changes what a search sees, whichever connection or process
//! writes), after a write reading only the rows changed since and the deletions'
//! tombstones (`vector_cache.rs`, migration 0014); the scan applies the filter ([`MemoryFilter::matches`]) on a blocking
//! thread and, over a few hundred rows, first ranks every row by an int8 copy of its
//! vector (a quarter of the bytes to read) and keeps the best ten per hit asked for,
//! then takes the exact f32 inner product ([`maestro_core::embed::dot`]) of those,
//! keeps the best `k` in a heap, and reads those rows. Streaming every row through the
//! driver instead costs about 30× the in-memory scan (`benches/memory.rs`).

use chrono::{DateTime, Utc};
use maestro_core::embed::EmbedderInfo;
use maestro_core::ledger::HoldId;
use maestro_core::memory::{
    Memory, MemoryFilter, MemoryHit, MemoryId, MemoryPatch, MemoryScope, MemorySource, TagMatch, vector_to_bytes,
};
use maestro_core::ports::{Distillation, MemoryStore, StaleMemory};
use maestro_core::run::{RunId, SessionId};
use maestro_core::search::{ChangeOp, SearchChange, SearchKind};
use maestro_core::{StoreError, TenantId};
use sqlx::Row as _;

use super::postgres::PostgresStore;
use super::sqlite::SqliteStore;
use super::vector_cache::{CachedRow, TenantCache};
use super::{backend_err, map_err};

/// Below this many vectors of the query's embedder, a Postgres tenant is searched
/// exactly rather than through the HNSW index: measured with `benches/memory.rs` (an
/// exact scan of 1,000 384-dimension vectors in the shared table took 1.0 ms p50, of
/// 2,000 1.7 ms, of 4,000 3.9 ms; a search of a 100,000-vector tenant through the index
/// 4.9 ms in the same run, on a loaded machine: 2,000 exact costs less, and is exact).
pub const EXACT_SCAN_BELOW: i64 = 2_000;

/// A tenant goes through the HNSW index only when it holds at least one row in this
/// many of the table: measured with `benches/memory.rs`, tenants of 2,000 and 4,000
/// vectors in a 117,000-row table found under half of their true top 10 through the
/// index (the iterative scan stops at 20,000 tuples) in 26–32 ms, where an exact scan
/// of 1,000 took 2.2 ms.
pub const INDEX_SHARE: i64 = 10;

/// `hnsw.ef_search` for a search through the index: this many candidates per hit
/// asked for, and at least [`EF_SEARCH_MIN`].
pub const EF_SEARCH_PER_HIT: u32 = 4;

/// The least `hnsw.ef_search`. Measured with `benches/memory.rs` on 100,000 × 384
/// clustered vectors (one tenant, k = 10, the indexes of migration 0013), queries near
/// a stored vector: recall@10 0.96–0.98 at 40 (pgvector's default), 0.985–0.995 at 64,
/// 0.99 at 100, p50 2.1 ms at 40 and at 64, 2.4 ms at 100 (pgvector alone): 64 keeps a
/// margin over 0.95 for little more work than 40.
pub const EF_SEARCH_MIN: u32 = 64;

/// The dimensions migrations 0010 and 0013 build an HNSW index for.
pub const INDEXED_DIMENSIONS: [u32; 4] = [384, 768, 1024, 1536];

/// A raw `memories` row (tags as a JSON array of strings).
#[derive(Debug, sqlx::FromRow)]
struct MemoryRow {
    id: String,
    tenant_id: String,
    scope: String,
    persona: Option<String>,
    session_id: Option<String>,
    text: String,
    tags: String,
    pinned: bool,
    source_run: Option<String>,
    source_step: Option<i64>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
    provider: String,
    model: String,
    dims: i32,
}

impl TryFrom<MemoryRow> for Memory {
    type Error = StoreError;

    fn try_from(row: MemoryRow) -> Result<Self, StoreError> {
        let what = format!("memory {}", row.id);
        let corrupt = |e: &dyn std::fmt::Display| StoreError::Corrupt(format!("{what}: {e}"));
        let scope = match (row.scope.as_str(), row.persona, row.session_id) {
            ("tenant", None, None) => MemoryScope::Tenant,
            ("persona", Some(name), None) => MemoryScope::Persona(name),
            ("session", None, Some(id)) => MemoryScope::Session(SessionId::parse(&id).map_err(|e| corrupt(&e))?),
            (scope, _, _) => return Err(corrupt(&format!("scope {scope} with the wrong columns"))),
        };
        let source = match (row.source_run, row.source_step) {
            (None, None) => None,
            (Some(run), Some(step)) => Some(MemorySource {
                run: RunId::parse(&run).map_err(|e| corrupt(&e))?,
                step: u32::try_from(step).map_err(|e| corrupt(&e))?,
            }),
            _ => return Err(corrupt(&"partial source")),
        };
        Ok(Memory {
            id: MemoryId::parse(&row.id).map_err(|e| corrupt(&e))?,
            tenant: TenantId::parse(&row.tenant_id).map_err(|e| corrupt(&e))?,
            scope,
            text: row.text,
            tags: serde_json::from_str(&row.tags).map_err(|e| corrupt(&e))?,
            pinned: row.pinned,
            source,
            created_at: row.created_at,
            updated_at: row.updated_at,
            last_used_at: row.last_used_at,
            embedder: EmbedderInfo {
                provider: row.provider,
                model: row.model,
                dimensions: u32::try_from(row.dims).map_err(|e| corrupt(&e))?,
            },
        })
    }
}

/// The row's columns; `tags` is the expression that reads them as JSON text.
fn columns(tags: &str) -> String {
    format!(
        "id, tenant_id, scope, persona, session_id, text, {tags} AS tags, pinned, source_run, source_step, \
         created_at, updated_at, last_used_at, provider, model, dims"
    )
}

const SQLITE_TAGS: &str = "tags";
const PG_TAGS: &str = "to_json(tags)::text";

/// The filter's conditions, with its parameters numbered from `$first`: scope kind,
/// persona, session, created from, created to, tags, all tags (bound by
/// [`bind_filter!`] in that order).
fn filter_sql(first: usize, postgres: bool) -> String {
    let p = |i: usize| format!("${}", first + i);
    let tags = if postgres {
        format!(
            "(cardinality({t}::text[]) = 0 OR CASE WHEN {all} THEN tags @> {t}::text[] ELSE tags && {t}::text[] END)",
            t = p(5),
            all = p(6)
        )
    } else {
        format!(
            "({t} = '[]' OR CASE WHEN {all} \
             THEN NOT EXISTS (SELECT 1 FROM json_each({t}) f WHERE f.value NOT IN (SELECT value FROM json_each(memories.tags))) \
             ELSE EXISTS (SELECT 1 FROM json_each(memories.tags) m WHERE m.value IN (SELECT value FROM json_each({t}))) END)",
            t = p(5),
            all = p(6)
        )
    };
    format!(
        " AND ({k} IS NULL OR scope = {k}) AND ({pe} IS NULL OR persona = {pe}) AND ({s} IS NULL OR session_id = {s}) \
         AND ({f} IS NULL OR created_at >= {f}) AND ({t} IS NULL OR created_at < {t}) AND {tags}",
        k = p(0),
        pe = p(1),
        s = p(2),
        f = p(3),
        t = p(4),
    )
}

/// Binds a [`MemoryFilter`]'s seven parameters (see [`filter_sql`]); `$tags` is the
/// tags' bound form (a JSON text on SQLite, a `Vec<String>` on Postgres).
macro_rules! bind_filter {
    ($query:expr, $filter:expr, $tags:expr) => {
        $query
            .bind($filter.scope_kind)
            .bind($filter.persona.as_deref())
            .bind($filter.session.as_ref().map(|s| s.as_str()))
            .bind($filter.created_from)
            .bind($filter.created_to)
            .bind($tags)
            .bind($filter.tag_match == TagMatch::All)
    };
}

fn tags_json(tags: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(tags).map_err(backend_err)
}

fn ms(at: DateTime<Utc>) -> DateTime<Utc> {
    super::runs::ms(at)
}

fn dims(info: &EmbedderInfo) -> i32 {
    i32::try_from(info.dimensions).unwrap_or(i32::MAX)
}

/// The scope's `(scope, persona, session_id)` columns.
fn scope_columns(scope: &MemoryScope) -> (&'static str, Option<&str>, Option<&str>) {
    match scope {
        MemoryScope::Tenant => ("tenant", None, None),
        MemoryScope::Persona(name) => ("persona", Some(name), None),
        MemoryScope::Session(id) => ("session", None, Some(id.as_str())),
    }
}

fn check_vector(memory: &Memory, vector: &[f32]) -> Result<(), StoreError> {
    if vector.len() != memory.embedder.dimensions as usize {
        return Err(StoreError::Corrupt(format!(
            "memory {}: a vector of {} numbers for an embedder of {}",
            memory.id,
            vector.len(),
            memory.embedder.dimensions
        )));
    }
    Ok(())
}

/// The search outbox row of a memory's change: the full-text index follows it (written
/// in the transaction that changes the memory).
fn search_change(tenant: &TenantId, id: &MemoryId, op: ChangeOp, at: DateTime<Utc>) -> SearchChange {
    SearchChange { tenant: tenant.clone(), kind: SearchKind::Memory, object: id.as_str().to_owned(), op, at }
}

const INSERT: &str = "INSERT INTO memories (id, tenant_id, scope, persona, session_id, text, tags, pinned, \
     source_run, source_step, created_at, updated_at, last_used_at, provider, model, dims, embedding) VALUES \
     ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)";
const PG_INSERT: &str = "INSERT INTO memories (id, tenant_id, scope, persona, session_id, text, tags, pinned, \
     source_run, source_step, created_at, updated_at, last_used_at, provider, model, dims, embedding) VALUES \
     ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17::real[]::vector)";

/// Binds a memory's seventeen insert parameters; `$tags` and `$vector` in the backend's
/// bound forms.
macro_rules! bind_insert {
    ($query:expr, $memory:expr, $tags:expr, $vector:expr) => {{
        let (scope, persona, session) = scope_columns(&$memory.scope);
        $query
            .bind($memory.id.as_str())
            .bind($memory.tenant.as_str())
            .bind(scope)
            .bind(persona)
            .bind(session)
            .bind(&$memory.text)
            .bind($tags)
            .bind($memory.pinned)
            .bind($memory.source.as_ref().map(|s| s.run.as_str()))
            .bind($memory.source.as_ref().map(|s| i64::from(s.step)))
            .bind(ms($memory.created_at))
            .bind(ms($memory.updated_at))
            .bind($memory.last_used_at.map(ms))
            .bind(&$memory.embedder.provider)
            .bind(&$memory.embedder.model)
            .bind(dims(&$memory.embedder))
            .bind($vector)
    }};
}

/// Puts rows in the order of `ranked` (id, score), dropping ids no row has.
fn in_order(ranked: Vec<(f32, String)>, rows: Vec<MemoryRow>) -> Result<Vec<MemoryHit>, StoreError> {
    let mut by_id: std::collections::HashMap<String, MemoryRow> = rows.into_iter().map(|r| (r.id.clone(), r)).collect();
    ranked
        .into_iter()
        .filter_map(|(score, id)| by_id.remove(&id).map(|row| (score, row)))
        .map(|(score, row)| Ok(MemoryHit { memory: Memory::try_from(row)?, score }))
        .collect()
}

/// A run's recorded distillation: run, tenant, answer, hold, charged, created.
type DistillationRow = (String, String, String, Option<String>, Option<i64>, DateTime<Utc>);
const DISTILLATION: &str =
    "SELECT run_id, tenant_id, answer, hold_id, charged, created_at FROM memory_distillations WHERE run_id = $1";
const RECORD_DISTILLATION: &str = "INSERT INTO memory_distillations (run_id, tenant_id, answer, hold_id, charged, \
     created_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (run_id) DO NOTHING";

/// Binds a [`Distillation`]'s six parameters (see [`RECORD_DISTILLATION`]).
macro_rules! bind_distillation {
    ($query:expr, $d:expr) => {
        $query
            .bind($d.run.as_str())
            .bind($d.tenant.as_str())
            .bind(&$d.answer)
            .bind($d.charge.as_ref().map(|(hold, _)| hold.as_str()))
            .bind($d.charge.as_ref().map(|(_, amount)| *amount))
            .bind(ms($d.at))
    };
}

/// A [`Distillation`] from its row.
fn distillation_from_row(
    (run, tenant, answer, hold, charged, at): DistillationRow,
) -> Result<Distillation, StoreError> {
    let corrupt = |e: &dyn std::fmt::Display| StoreError::Corrupt(format!("distillation of run {run}: {e}"));
    let charge = match (hold, charged) {
        (Some(hold), Some(amount)) => Some((HoldId::parse(&hold).map_err(|e| corrupt(&e))?, amount)),
        _ => None,
    };
    Ok(Distillation {
        run: RunId::parse(&run).map_err(|e| corrupt(&e))?,
        tenant: TenantId::parse(&tenant).map_err(|e| corrupt(&e))?,
        answer,
        charge,
        at,
    })
}

#[async_trait::async_trait]
impl MemoryStore for SqliteStore {
    async fn insert_memories(&self, memories: &[(Memory, Vec<f32>)]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(backend_err)?;
        for (memory, vector) in memories {
            check_vector(memory, vector)?;
            let tags = tags_json(&memory.tags)?;
            bind_insert!(sqlx::query(INSERT), memory, tags, vector_to_bytes(vector))
                .execute(&mut *tx)
                .await
                .map_err(map_err(&format!("memory {}", memory.id)))?;
            let change = search_change(&memory.tenant, &memory.id, ChangeOp::Upsert, memory.created_at);
            SqliteStore::search_record(&mut tx, &change).await?;
        }
        tx.commit().await.map_err(backend_err)
    }

    async fn memory(&self, tenant: &TenantId, id: &MemoryId) -> Result<Option<Memory>, StoreError> {
        let sql = format!("SELECT {} FROM memories WHERE tenant_id = $1 AND id = $2", columns(SQLITE_TAGS));
        let row = sqlx::query_as::<_, MemoryRow>(sqlx::AssertSqlSafe(sql))
            .bind(tenant.as_str())
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend_err)?;
        row.map(Memory::try_from).transpose()
    }

    async fn update_memory(
        &self,
        tenant: &TenantId,
        id: &MemoryId,
        patch: &MemoryPatch,
        at: DateTime<Utc>,
    ) -> Result<Option<Memory>, StoreError> {
        let sql = format!("{SQLITE_UPDATE} RETURNING {}", columns(SQLITE_TAGS));
        let tags = patch.tags.as_deref().map(tags_json).transpose()?;
        let text = patch.text.as_ref();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(backend_err)?;
        let row = sqlx::query_as::<_, MemoryRow>(sqlx::AssertSqlSafe(sql))
            .bind(tenant.as_str())
            .bind(id.as_str())
            .bind(text.map(|(t, _, _)| t.as_str()))
            .bind(tags)
            .bind(patch.pinned)
            .bind(ms(at))
            .bind(text.map(|(_, _, e)| e.provider.as_str()))
            .bind(text.map(|(_, _, e)| e.model.as_str()))
            .bind(text.map(|(_, _, e)| dims(e)))
            .bind(text.map(|(_, v, _)| vector_to_bytes(v)))
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err(&format!("memory {id}")))?;
        if row.is_some() {
            SqliteStore::search_record(&mut tx, &search_change(tenant, id, ChangeOp::Upsert, at)).await?;
        }
        tx.commit().await.map_err(backend_err)?;
        row.map(Memory::try_from).transpose()
    }

    async fn delete_memory(&self, tenant: &TenantId, id: &MemoryId) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(backend_err)?;
        let done = sqlx::query("DELETE FROM memories WHERE tenant_id = $1 AND id = $2")
            .bind(tenant.as_str())
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend_err)?;
        let deleted = done.rows_affected() > 0;
        if deleted {
            let change = search_change(tenant, id, ChangeOp::Delete, ms(Utc::now()));
            SqliteStore::search_record(&mut tx, &change).await?;
        }
        tx.commit().await.map_err(backend_err)?;
        Ok(deleted)
    }

    async fn memories(
        &self,
        tenant: &TenantId,
        filter: &MemoryFilter,
        before: Option<&MemoryId>,
        limit: u32,
    ) -> Result<Vec<Memory>, StoreError> {
        let sql = format!(
            "SELECT {} FROM memories WHERE tenant_id = $1{} AND ($9 IS NULL OR (created_at, id) < \
             (SELECT created_at, id FROM memories WHERE id = $9 AND tenant_id = $1)) \
             ORDER BY created_at DESC, id DESC LIMIT $10",
            columns(SQLITE_TAGS),
            filter_sql(2, false)
        );
        let query = sqlx::query_as::<_, MemoryRow>(sqlx::AssertSqlSafe(sql)).bind(tenant.as_str());
        let rows = bind_filter!(query, filter, tags_json(&filter.tags)?)
            .bind(before.map(|b| b.as_str()))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(backend_err)?;
        rows.into_iter().map(Memory::try_from).collect()
    }

    async fn search_memories(
        &self,
        tenant: &TenantId,
        embedder: &EmbedderInfo,
        query: &[f32],
        filter: &MemoryFilter,
        k: u32,
    ) -> Result<Vec<MemoryHit>, StoreError> {
        if k == 0 || query.len() != embedder.dimensions as usize {
            return Ok(Vec::new());
        }
        let vectors = self.tenant_vectors(&self.vectors, tenant, embedder).await?;
        let (query, filter) = (query.to_vec(), filter.clone());
        let ranked = tokio::task::spawn_blocking(move || {
            let everything = filter == MemoryFilter::default();
            let ranked = vectors.top_k(&query, everything, |memory| filter.matches(memory), k as usize);
            ranked.into_iter().map(|(score, i)| (score, vectors.rows()[i].id.as_str().to_owned())).collect::<Vec<_>>()
        })
        .await
        .map_err(backend_err)?;

        let ids: Vec<&str> = ranked.iter().map(|(_, id)| id.as_str()).collect();
        let sql = format!(
            "SELECT {} FROM memories WHERE tenant_id = $1 AND id IN (SELECT value FROM json_each($2))",
            columns(SQLITE_TAGS)
        );
        let found = sqlx::query_as::<_, MemoryRow>(sqlx::AssertSqlSafe(sql))
            .bind(tenant.as_str())
            .bind(serde_json::to_string(&ids).map_err(backend_err)?)
            .fetch_all(&self.pool)
            .await
            .map_err(backend_err)?;
        in_order(ranked, found)
    }

    async fn touch_memories(&self, tenant: &TenantId, ids: &[MemoryId], at: DateTime<Utc>) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
        sqlx::query(
            "UPDATE memories SET last_used_at = $3 WHERE tenant_id = $1 AND id IN (SELECT value FROM json_each($2))",
        )
        .bind(tenant.as_str())
        .bind(serde_json::to_string(&ids).map_err(backend_err)?)
        .bind(ms(at))
        .execute(&self.pool)
        .await
        .map_err(backend_err)?;
        Ok(())
    }

    async fn stale_memories(&self, current: &EmbedderInfo, limit: u32) -> Result<Vec<StaleMemory>, StoreError> {
        stale_rows(
            sqlx::query(STALE)
                .bind(&current.provider)
                .bind(&current.model)
                .bind(dims(current))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(backend_err)?,
        )
    }

    async fn replace_vector(
        &self,
        stale: &StaleMemory,
        vector: &[f32],
        embedder: &EmbedderInfo,
    ) -> Result<bool, StoreError> {
        if vector.len() != embedder.dimensions as usize {
            return Err(StoreError::Corrupt(format!("memory {}: a vector of the wrong dimension", stale.id)));
        }
        let done = sqlx::query(
            "UPDATE memories SET provider = $3, model = $4, dims = $5, embedding = $6 WHERE id = $1 AND text = $2",
        )
        .bind(stale.id.as_str())
        .bind(&stale.text)
        .bind(&embedder.provider)
        .bind(&embedder.model)
        .bind(dims(embedder))
        .bind(vector_to_bytes(vector))
        .execute(&self.pool)
        .await
        .map_err(backend_err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn remember_memory(
        &self,
        memory: &Memory,
        vector: &[f32],
        same_scope: &MemoryFilter,
        min_score: f32,
        restate: &(dyn for<'m> Fn(&'m Memory) -> MemoryPatch + Send + Sync),
    ) -> Result<(Memory, bool), StoreError> {
        check_vector(memory, vector)?;
        let tenant = &memory.tenant;
        for _ in 0..REMEMBER_ATTEMPTS {
            // The search reads through the vector cache (other connections); the write
            // transaction then proves nothing changed the tenant's memories since.
            let seen = Self::memory_epoch(&self.pool, tenant).await?;
            let nearest = self.search_memories(tenant, &memory.embedder, vector, same_scope, 1).await?;
            let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(backend_err)?;
            if Self::memory_epoch(&mut *tx, tenant).await? != seen {
                continue;
            }
            let remembered = match nearest.into_iter().find(|hit| hit.score >= min_score) {
                Some(hit) => {
                    let patch = restate(&hit.memory);
                    let sql = format!("{SQLITE_UPDATE} RETURNING {}", columns(SQLITE_TAGS));
                    let text = patch.text.as_ref();
                    let row = sqlx::query_as::<_, MemoryRow>(sqlx::AssertSqlSafe(sql))
                        .bind(tenant.as_str())
                        .bind(hit.memory.id.as_str())
                        .bind(text.map(|(t, _, _)| t.as_str()))
                        .bind(patch.tags.as_deref().map(tags_json).transpose()?)
                        .bind(patch.pinned)
                        .bind(ms(memory.updated_at))
                        .bind(text.map(|(_, _, e)| e.provider.as_str()))
                        .bind(text.map(|(_, _, e)| e.model.as_str()))
                        .bind(text.map(|(_, _, e)| dims(e)))
                        .bind(text.map(|(_, v, _)| vector_to_bytes(v)))
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(map_err(&format!("memory {}", hit.memory.id)))?;
                    // The epoch did not move, so the hit is still there.
                    let row = row.ok_or_else(|| StoreError::Corrupt(format!("memory {} vanished", hit.memory.id)))?;
                    let change = search_change(tenant, &hit.memory.id, ChangeOp::Upsert, memory.updated_at);
                    SqliteStore::search_record(&mut tx, &change).await?;
                    (Memory::try_from(row)?, true)
                }
                None => {
                    let tags = tags_json(&memory.tags)?;
                    bind_insert!(sqlx::query(INSERT), memory, tags, vector_to_bytes(vector))
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err(&format!("memory {}", memory.id)))?;
                    let change = search_change(tenant, &memory.id, ChangeOp::Upsert, memory.created_at);
                    SqliteStore::search_record(&mut tx, &change).await?;
                    (memory.clone(), false)
                }
            };
            tx.commit().await.map_err(backend_err)?;
            return Ok(remembered);
        }
        Err(StoreError::Conflict(format!("the memories of tenant {tenant} kept changing while remembering")))
    }

    async fn distillation(&self, run: &RunId) -> Result<Option<Distillation>, StoreError> {
        let row = sqlx::query_as::<_, DistillationRow>(DISTILLATION)
            .bind(run.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend_err)?;
        row.map(distillation_from_row).transpose()
    }

    async fn record_distillation(&self, distillation: &Distillation) -> Result<Distillation, StoreError> {
        bind_distillation!(sqlx::query(RECORD_DISTILLATION), distillation)
            .execute(&self.pool)
            .await
            .map_err(map_err(&format!("distillation of run {}", distillation.run)))?;
        self.distillation(&distillation.run)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("distillation of run {} vanished", distillation.run)))
    }
}

/// How often SQLite's [`MemoryStore::remember_memory`] searches again when another write
/// to the tenant's memories came between its search and its write (each round, one of
/// the concurrent writers gets through).
const REMEMBER_ATTEMPTS: usize = 64;

/// A memory's update by a [`MemoryPatch`] on SQLite (`update_memory`, and a restated
/// memory in `remember_memory`): tenant ($1), id ($2), the patch ($3–$5, $7–$10, each
/// kept when absent), the time ($6).
const SQLITE_UPDATE: &str = "UPDATE memories SET text = COALESCE($3, text), tags = COALESCE($4, tags), \
     pinned = COALESCE($5, pinned), updated_at = $6, provider = COALESCE($7, provider), \
     model = COALESCE($8, model), dims = COALESCE($9, dims), embedding = COALESCE($10, embedding) \
     WHERE tenant_id = $1 AND id = $2";

/// A memory's update by a [`MemoryPatch`] on Postgres, with the parameters of
/// [`SQLITE_UPDATE`].
const PG_UPDATE: &str = "UPDATE memories SET text = COALESCE($3, text), tags = COALESCE($4::text[], tags), \
     pinned = COALESCE($5, pinned), updated_at = $6, provider = COALESCE($7, provider), \
     model = COALESCE($8, model), dims = COALESCE($9, dims), \
     embedding = COALESCE($10::real[]::vector, embedding) WHERE tenant_id = $1 AND id = $2";

impl SqliteStore {
    /// The tenant's memory epoch (0 before its first memory), read through `conn`.
    async fn memory_epoch<'c>(
        conn: impl sqlx::Executor<'c, Database = sqlx::Sqlite>,
        tenant: &TenantId,
    ) -> Result<i64, StoreError> {
        let epoch: Option<i64> = sqlx::query_scalar("SELECT epoch FROM memory_epochs WHERE tenant_id = $1")
            .bind(tenant.as_str())
            .fetch_optional(conn)
            .await
            .map_err(backend_err)?;
        Ok(epoch.unwrap_or(0))
    }
}

/// Memories whose vectors another embedder than ($1, $2, $3) made, at most $4.
const STALE: &str = "SELECT id, text FROM memories WHERE NOT (provider = $1 AND model = $2 AND dims = $3) \
     ORDER BY id LIMIT $4";

fn stale_rows<R: sqlx::Row>(rows: Vec<R>) -> Result<Vec<StaleMemory>, StoreError>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    rows.into_iter()
        .map(|row| {
            let id: String = row.try_get("id").map_err(backend_err)?;
            Ok(StaleMemory {
                id: MemoryId::parse(&id).map_err(|e| StoreError::Corrupt(format!("memory {id}: {e}")))?,
                text: row.try_get("text").map_err(backend_err)?,
            })
        })
        .collect()
}

/// SQLite's exact scan reads a tenant's vectors (of one embedder) into memory once and
/// brings them forward by delta after writes (`vector_cache.rs`): the scan then runs at
/// memory speed instead of decoding every row through the driver.
pub(super) type VectorCache = TenantCache<Memory>;

impl CachedRow for Memory {
    type Key = String;
    const QUANTIZED: bool = true;
    const EPOCH: &'static str = "SELECT epoch FROM memory_epochs WHERE tenant_id = $1";
    const DELETED: &'static str = "SELECT id FROM memory_deletions WHERE tenant_id = $1 AND seq > $2";

    fn select() -> String {
        format!(
            "SELECT {}, embedding FROM memories WHERE tenant_id = $1",
            columns(SQLITE_TAGS).replace("text,", "'' AS text,")
        )
    }

    fn key(&self) -> String {
        self.id.as_str().to_owned()
    }

    fn decode(row: &sqlx::sqlite::SqliteRow) -> Result<(Self, EmbedderInfo), StoreError> {
        let memory = Memory::try_from(<MemoryRow as sqlx::FromRow<_>>::from_row(row).map_err(backend_err)?)?;
        let embedder = memory.embedder.clone();
        Ok((memory, embedder))
    }

    fn deleted(row: &sqlx::sqlite::SqliteRow) -> Result<String, StoreError> {
        row.try_get("id").map_err(backend_err)
    }
}

/// A Postgres table of vectors searched by the memories' rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum VectorTable {
    /// `memories` (counts in `memory_counts`).
    Memories,
    /// `passages` (counts in `passage_counts`).
    Passages,
}

/// How a Postgres vector search reads a tenant's rows: chosen from the tenant's count
/// of vectors in the query's embedder and the table's size (see the module's notes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchRoad {
    /// Fewer than [`EXACT_SCAN_BELOW`] vectors: one statement, an exact scan through the
    /// tenant's b-tree (too few rows for the planner to reach JIT's cost threshold).
    Small,
    /// An exact scan of a larger tenant (a small share of the table, or a dimension
    /// without an index), in a transaction with `jit = off`.
    Exact,
    /// Through the HNSW index, in a transaction with the settings of
    /// [`PostgresStore::search_begin`].
    Index,
}

/// How long a Postgres store reuses a tenant's [`SearchRoad`] in one embedder's space
/// before reading the counts again (`SearchPaths`). The store's own writes to the
/// table forget its choices at once; another replica's are seen within this time. The
/// choice only picks the faster road, both return the tenant's own rows: a stale one
/// costs time (or, through the index for a tenant that has just shrunk, some recall)
/// for at most this long.
pub const SEARCH_PATH_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// How many choices a [`SearchPaths`] holds before it drops the expired ones (all of
/// them, when none has expired).
const SEARCH_PATHS_MAX: usize = 10_000;

type PathKey = (VectorTable, String, String, String, u32);

/// The [`SearchRoad`]s of a Postgres store's recent vector searches, by table, tenant
/// and embedder, each for [`SEARCH_PATH_TTL`]: a search then costs no count lookup (a
/// pool acquire and a round trip, more than the search through the index itself on a
/// loaded machine, `benches/memory.rs`).
#[derive(Debug, Default)]
pub(crate) struct SearchPaths {
    chosen: std::sync::Mutex<std::collections::HashMap<PathKey, (SearchRoad, std::time::Instant)>>,
}

impl SearchPaths {
    fn get(&self, key: &PathKey) -> Option<SearchRoad> {
        let chosen = self.chosen.lock().ok()?;
        chosen.get(key).filter(|(_, at)| at.elapsed() < SEARCH_PATH_TTL).map(|(road, _)| *road)
    }

    fn put(&self, key: PathKey, road: SearchRoad) {
        let Ok(mut chosen) = self.chosen.lock() else { return };
        if chosen.len() >= SEARCH_PATHS_MAX {
            chosen.retain(|_, (_, at)| at.elapsed() < SEARCH_PATH_TTL);
            if chosen.len() >= SEARCH_PATHS_MAX {
                chosen.clear();
            }
        }
        chosen.insert(key, (road, std::time::Instant::now()));
    }

    /// Forgets every choice in `table` (after this store wrote to it).
    pub(super) fn forget(&self, table: VectorTable) {
        if let Ok(mut chosen) = self.chosen.lock() {
            chosen.retain(|key, _| key.0 != table);
        }
    }
}

/// The full-precision distance a vector search reports and the expression it orders by
/// (the query vector is `$11`, a `real[]`): `embedding::halfvec(D)` is the indexed
/// expression (migrations 0012 and 0013), the bare column is not, so `indexed` picks
/// the index and its absence an exact scan. Either way the rows come back with their
/// full-precision distance.
pub(super) fn nearest_order(dims: u32, indexed: bool) -> (&'static str, String) {
    let exact = "embedding <#> $11::real[]::vector";
    let order =
        if indexed { format!("embedding::halfvec({dims}) <#> $11::real[]::halfvec({dims})") } else { exact.to_owned() };
    (exact, order)
}

impl PostgresStore {
    /// The SQL of a memory search in dimension `dims` for `k` hits: through the HNSW
    /// index (`indexed`) or exact. Parameters: tenant ($1), the filter ($2–$8),
    /// provider ($9), model ($10), the query vector as `real[]` ($11). Either way the
    /// rows come back with their full-precision distance, and in its order.
    pub fn memory_search_sql(dims: u32, indexed: bool, k: u32) -> String {
        let (exact, order) = nearest_order(dims, indexed);
        format!(
            "WITH nearest AS MATERIALIZED (SELECT {cols}, ({exact}) AS distance FROM memories \
             WHERE dims = {dims} AND tenant_id = $1 AND provider = $9 AND model = $10{filter} \
             ORDER BY {order} LIMIT {k}) SELECT * FROM nearest ORDER BY distance, id",
            cols = columns(PG_TAGS),
            filter = filter_sql(2, true),
        )
    }

    /// How a search of `tenant` in `embedder`'s space of `table` reads its rows, by the
    /// rule [`PostgresStore::search_through_index`] states, reusing a choice made less
    /// than [`SEARCH_PATH_TTL`] ago.
    pub(super) async fn search_road(
        &self,
        table: VectorTable,
        tenant: &TenantId,
        embedder: &EmbedderInfo,
    ) -> Result<SearchRoad, StoreError> {
        let key =
            (table, tenant.as_str().to_owned(), embedder.provider.clone(), embedder.model.clone(), embedder.dimensions);
        if let Some(road) = self.search_paths.get(&key) {
            return Ok(road);
        }
        let road = self.search_through_index(table, tenant, embedder).await?;
        self.search_paths.put(key, road);
        Ok(road)
    }

    /// How a search of `tenant` in `embedder`'s space of `table` reads its rows, from
    /// the counts now: through the HNSW index for an indexed dimension, at least
    /// [`EXACT_SCAN_BELOW`] vectors of the tenant, and at least one row in
    /// [`INDEX_SHARE`] of the table (by the planner's estimate, when it has one);
    /// otherwise exactly. A tenant holding a small share of a large shared index is
    /// scanned exactly: its neighbours lie among many other tenants' rows, and the
    /// iterative scan stops at `hnsw.max_scan_tuples` with few of them found
    /// (`benches/memory.rs`). The tenant's count is kept by triggers (`memory_counts`,
    /// `passage_counts`): one key lookup.
    pub(super) async fn search_through_index(
        &self,
        table: VectorTable,
        tenant: &TenantId,
        embedder: &EmbedderInfo,
    ) -> Result<SearchRoad, StoreError> {
        let (rows, counts) = match table {
            VectorTable::Memories => ("memories", "memory_counts"),
            VectorTable::Passages => ("passages", "passage_counts"),
        };
        let sql = format!(
            "SELECT COALESCE((SELECT n FROM {counts} WHERE tenant_id = $1 AND provider = $2 AND model = $3 \
             AND dims = $4), 0), COALESCE((SELECT reltuples FROM pg_class WHERE oid = '{rows}'::regclass), -1)"
        );
        let (held, table): (i64, f32) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(tenant.as_str())
            .bind(&embedder.provider)
            .bind(&embedder.model)
            .bind(dims(embedder))
            .fetch_one(&self.pool)
            .await
            .map_err(backend_err)?;
        if held < EXACT_SCAN_BELOW {
            return Ok(SearchRoad::Small);
        }
        let share_ok = table <= 0.0 || (held as f32) * INDEX_SHARE as f32 >= table;
        Ok(if share_ok && INDEXED_DIMENSIONS.contains(&embedder.dimensions) {
            SearchRoad::Index
        } else {
            SearchRoad::Exact
        })
    }

    /// The statement that opens a search's transaction, with the settings it runs
    /// under (`SET LOCAL`; the simple-query protocol runs them all in one round trip),
    /// or none for a [`SearchRoad::Small`] search (one statement, no transaction).
    /// Every transaction sets `jit = off`: an exact scan of a tenant of tens of
    /// thousands of rows passes JIT's cost threshold, and compiling costs tens of
    /// milliseconds. Through the index it also sets iterative index scans (so a
    /// tenant's filtered query still finds `k` rows in the shared index), an
    /// `ef_search` of [`EF_SEARCH_PER_HIT`] per hit asked for and at least
    /// [`EF_SEARCH_MIN`] (up to pgvector's maximum of 1,000), `enable_sort = off` inside
    /// the CTE's choice (the count of the tenant's vectors already chose the index, and
    /// the planner's row estimates for a tenant and filter, stale right after a bulk
    /// insert and blind to the clustering, must not turn it back into a sort of every
    /// row through a b-tree), and the generic plan (the index whatever the tenant: no
    /// planning after a connection's first search, about a third of a millisecond).
    pub fn search_begin(road: SearchRoad, k: u32) -> Option<String> {
        match road {
            SearchRoad::Small => None,
            SearchRoad::Exact => Some("BEGIN; SET LOCAL jit = off".to_owned()),
            SearchRoad::Index => {
                let ef = k.saturating_mul(EF_SEARCH_PER_HIT).clamp(EF_SEARCH_MIN, 1000);
                Some(format!(
                    "BEGIN; SET LOCAL jit = off; SET LOCAL hnsw.iterative_scan = relaxed_order; \
                     SET LOCAL hnsw.ef_search = {ef}; SET LOCAL enable_sort = off; \
                     SET LOCAL plan_cache_mode = force_generic_plan"
                ))
            }
        }
    }

    /// Runs a vector search's `query` under the settings of `road`
    /// ([`PostgresStore::search_begin`]) and returns its rows.
    pub(super) async fn search_rows<'q>(
        &self,
        road: SearchRoad,
        k: u32,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<Vec<sqlx::postgres::PgRow>, StoreError> {
        let Some(begin) = Self::search_begin(road, k) else {
            return query.fetch_all(&self.pool).await.map_err(backend_err);
        };
        let mut tx = self.pool.begin_with(sqlx::AssertSqlSafe(begin)).await.map_err(backend_err)?;
        let rows = query.fetch_all(&mut *tx).await.map_err(backend_err)?;
        // The search only reads: dropping its transaction queues the ROLLBACK, which
        // the pool sends as it takes the connection back, off the search's path (a
        // COMMIT would cost the caller one more round trip).
        drop(tx);
        Ok(rows)
    }

    /// The plan Postgres chooses for a vector search (`EXPLAIN` lines of `explain`, a
    /// search's SQL after `EXPLAIN`), under the settings of `road`.
    pub(super) async fn explain_rows<'q>(
        &self,
        road: SearchRoad,
        k: u32,
        explain: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<Vec<String>, StoreError> {
        let rows = self.search_rows(road, k, explain).await?;
        rows.iter().map(|r| r.try_get::<String, _>(0).map_err(backend_err)).collect()
    }

    /// The plan Postgres chooses for a memory search of `tenant` (`EXPLAIN` lines), with
    /// the same settings and SQL [`MemoryStore::search_memories`] uses, the road chosen
    /// from the counts now: tests check that a large tenant's search uses the HNSW index
    /// and a small one's does not.
    pub async fn explain_memory_search(
        &self,
        tenant: &TenantId,
        embedder: &EmbedderInfo,
        query: &[f32],
        filter: &MemoryFilter,
        k: u32,
    ) -> Result<Vec<String>, StoreError> {
        self.explain_memory_search_with(ExplainOptions::Plan, tenant, embedder, query, filter, k).await
    }

    /// [`PostgresStore::explain_memory_search`] with `EXPLAIN`'s `options`
    /// ([`ExplainOptions::AnalyzeBuffers`]: the search runs, and the plan tells where its
    /// time went).
    pub async fn explain_memory_search_with(
        &self,
        options: ExplainOptions,
        tenant: &TenantId,
        embedder: &EmbedderInfo,
        query: &[f32],
        filter: &MemoryFilter,
        k: u32,
    ) -> Result<Vec<String>, StoreError> {
        let road = self.search_through_index(VectorTable::Memories, tenant, embedder).await?;
        let sql = format!(
            "EXPLAIN {}{}",
            options.sql(),
            Self::memory_search_sql(embedder.dimensions, road == SearchRoad::Index, k)
        );
        let explain = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant.as_str());
        let explain =
            bind_filter!(explain, filter, &filter.tags).bind(&embedder.provider).bind(&embedder.model).bind(query);
        self.explain_rows(road, k, explain).await
    }
}

/// What `EXPLAIN` reports of a vector search ([`PostgresStore::explain_memory_search_with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExplainOptions {
    /// The plan only.
    Plan,
    /// `ANALYZE, BUFFERS`: the search runs, and each node reports its time and pages.
    AnalyzeBuffers,
}

impl ExplainOptions {
    fn sql(self) -> &'static str {
        match self {
            Self::Plan => "",
            Self::AnalyzeBuffers => "(ANALYZE, BUFFERS) ",
        }
    }
}

#[async_trait::async_trait]
impl MemoryStore for PostgresStore {
    async fn insert_memories(&self, memories: &[(Memory, Vec<f32>)]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(backend_err)?;
        for (memory, vector) in memories {
            check_vector(memory, vector)?;
            bind_insert!(sqlx::query(PG_INSERT), memory, &memory.tags, vector)
                .execute(&mut *tx)
                .await
                .map_err(map_err(&format!("memory {}", memory.id)))?;
            let change = search_change(&memory.tenant, &memory.id, ChangeOp::Upsert, memory.created_at);
            PostgresStore::search_record(&mut tx, &change).await?;
        }
        tx.commit().await.map_err(backend_err)?;
        self.search_paths.forget(VectorTable::Memories);
        Ok(())
    }

    async fn memory(&self, tenant: &TenantId, id: &MemoryId) -> Result<Option<Memory>, StoreError> {
        let sql = format!("SELECT {} FROM memories WHERE tenant_id = $1 AND id = $2", columns(PG_TAGS));
        let row = sqlx::query_as::<_, MemoryRow>(sqlx::AssertSqlSafe(sql))
            .bind(tenant.as_str())
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend_err)?;
        row.map(Memory::try_from).transpose()
    }

    async fn update_memory(
        &self,
        tenant: &TenantId,
        id: &MemoryId,
        patch: &MemoryPatch,
        at: DateTime<Utc>,
    ) -> Result<Option<Memory>, StoreError> {
        let sql = format!("{PG_UPDATE} RETURNING {}", columns(PG_TAGS));
        let text = patch.text.as_ref();
        let mut tx = self.pool.begin().await.map_err(backend_err)?;
        let row = sqlx::query_as::<_, MemoryRow>(sqlx::AssertSqlSafe(sql))
            .bind(tenant.as_str())
            .bind(id.as_str())
            .bind(text.map(|(t, _, _)| t.as_str()))
            .bind(patch.tags.as_deref())
            .bind(patch.pinned)
            .bind(ms(at))
            .bind(text.map(|(_, _, e)| e.provider.as_str()))
            .bind(text.map(|(_, _, e)| e.model.as_str()))
            .bind(text.map(|(_, _, e)| dims(e)))
            .bind(text.map(|(_, v, _)| v.as_slice()))
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err(&format!("memory {id}")))?;
        if row.is_some() {
            PostgresStore::search_record(&mut tx, &search_change(tenant, id, ChangeOp::Upsert, at)).await?;
        }
        tx.commit().await.map_err(backend_err)?;
        if text.is_some() {
            // A new text may come with another embedder: the counts moved.
            self.search_paths.forget(VectorTable::Memories);
        }
        row.map(Memory::try_from).transpose()
    }

    async fn delete_memory(&self, tenant: &TenantId, id: &MemoryId) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(backend_err)?;
        let done = sqlx::query("DELETE FROM memories WHERE tenant_id = $1 AND id = $2")
            .bind(tenant.as_str())
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend_err)?;
        let deleted = done.rows_affected() > 0;
        if deleted {
            let change = search_change(tenant, id, ChangeOp::Delete, ms(Utc::now()));
            PostgresStore::search_record(&mut tx, &change).await?;
        }
        tx.commit().await.map_err(backend_err)?;
        if deleted {
            self.search_paths.forget(VectorTable::Memories);
        }
        Ok(deleted)
    }

    async fn memories(
        &self,
        tenant: &TenantId,
        filter: &MemoryFilter,
        before: Option<&MemoryId>,
        limit: u32,
    ) -> Result<Vec<Memory>, StoreError> {
        let sql = format!(
            "SELECT {} FROM memories WHERE tenant_id = $1{} AND ($9::text IS NULL OR (created_at, id) < \
             (SELECT created_at, id FROM memories WHERE id = $9 AND tenant_id = $1)) \
             ORDER BY created_at DESC, id DESC LIMIT $10",
            columns(PG_TAGS),
            filter_sql(2, true)
        );
        let query = sqlx::query_as::<_, MemoryRow>(sqlx::AssertSqlSafe(sql)).bind(tenant.as_str());
        let rows = bind_filter!(query, filter, &filter.tags)
            .bind(before.map(|b| b.as_str()))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(backend_err)?;
        rows.into_iter().map(Memory::try_from).collect()
    }

    async fn search_memories(
        &self,
        tenant: &TenantId,
        embedder: &EmbedderInfo,
        query: &[f32],
        filter: &MemoryFilter,
        k: u32,
    ) -> Result<Vec<MemoryHit>, StoreError> {
        if k == 0 || query.len() != embedder.dimensions as usize {
            return Ok(Vec::new());
        }
        let road = self.search_road(VectorTable::Memories, tenant, embedder).await?;
        let sql = Self::memory_search_sql(embedder.dimensions, road == SearchRoad::Index, k);
        let search = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant.as_str());
        let search =
            bind_filter!(search, filter, &filter.tags).bind(&embedder.provider).bind(&embedder.model).bind(query);
        let rows = self.search_rows(road, k, search).await?;
        rows.into_iter()
            .map(|row| {
                let distance: f64 = row.try_get("distance").map_err(backend_err)?;
                let memory = Memory::try_from(<MemoryRow as sqlx::FromRow<_>>::from_row(&row).map_err(backend_err)?)?;
                // `<#>` is the negative inner product.
                Ok(MemoryHit { memory, score: -distance as f32 })
            })
            .collect()
    }

    async fn touch_memories(&self, tenant: &TenantId, ids: &[MemoryId], at: DateTime<Utc>) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
        sqlx::query("UPDATE memories SET last_used_at = $3 WHERE tenant_id = $1 AND id = ANY($2)")
            .bind(tenant.as_str())
            .bind(&ids)
            .bind(ms(at))
            .execute(&self.pool)
            .await
            .map_err(backend_err)?;
        Ok(())
    }

    async fn stale_memories(&self, current: &EmbedderInfo, limit: u32) -> Result<Vec<StaleMemory>, StoreError> {
        stale_rows(
            sqlx::query(STALE)
                .bind(&current.provider)
                .bind(&current.model)
                .bind(dims(current))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(backend_err)?,
        )
    }

    async fn replace_vector(
        &self,
        stale: &StaleMemory,
        vector: &[f32],
        embedder: &EmbedderInfo,
    ) -> Result<bool, StoreError> {
        if vector.len() != embedder.dimensions as usize {
            return Err(StoreError::Corrupt(format!("memory {}: a vector of the wrong dimension", stale.id)));
        }
        let done = sqlx::query(
            "UPDATE memories SET provider = $3, model = $4, dims = $5, embedding = $6::real[]::vector \
             WHERE id = $1 AND text = $2",
        )
        .bind(stale.id.as_str())
        .bind(&stale.text)
        .bind(&embedder.provider)
        .bind(&embedder.model)
        .bind(dims(embedder))
        .bind(vector)
        .execute(&self.pool)
        .await
        .map_err(backend_err)?;
        self.search_paths.forget(VectorTable::Memories);
        Ok(done.rows_affected() > 0)
    }

    async fn remember_memory(
        &self,
        memory: &Memory,
        vector: &[f32],
        same_scope: &MemoryFilter,
        min_score: f32,
        restate: &(dyn for<'m> Fn(&'m Memory) -> MemoryPatch + Send + Sync),
    ) -> Result<(Memory, bool), StoreError> {
        check_vector(memory, vector)?;
        let (tenant, embedder) = (&memory.tenant, &memory.embedder);
        let road = self.search_road(VectorTable::Memories, tenant, embedder).await?;
        let begin = Self::search_begin(road, 1).unwrap_or_else(|| "BEGIN".to_owned());
        let mut tx = self.pool.begin_with(sqlx::AssertSqlSafe(begin)).await.map_err(backend_err)?;
        // Every remember of this tenant and scope, in any replica, waits here until the
        // one before commits: the search below then sees what it wrote.
        let (scope, persona, session) = scope_columns(&memory.scope);
        let key = format!("memory.remember\u{1f}{tenant}\u{1f}{scope}\u{1f}{}", persona.or(session).unwrap_or(""));
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(key)
            .execute(&mut *tx)
            .await
            .map_err(backend_err)?;
        let indexed = road == SearchRoad::Index;
        let search = sqlx::query(sqlx::AssertSqlSafe(Self::memory_search_sql(embedder.dimensions, indexed, 1)))
            .bind(tenant.as_str());
        let nearest = bind_filter!(search, same_scope, &same_scope.tags)
            .bind(&embedder.provider)
            .bind(&embedder.model)
            .bind(vector)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend_err)?;
        let hit = match nearest {
            Some(row) => {
                let distance: f64 = row.try_get("distance").map_err(backend_err)?;
                let found = Memory::try_from(<MemoryRow as sqlx::FromRow<_>>::from_row(&row).map_err(backend_err)?)?;
                // `<#>` is the negative inner product.
                (-distance as f32 >= min_score).then_some(found)
            }
            None => None,
        };
        let remembered = match hit {
            Some(found) => {
                let patch = restate(&found);
                let sql = format!("{PG_UPDATE} RETURNING {}", columns(PG_TAGS));
                let text = patch.text.as_ref();
                let row = sqlx::query_as::<_, MemoryRow>(sqlx::AssertSqlSafe(sql))
                    .bind(tenant.as_str())
                    .bind(found.id.as_str())
                    .bind(text.map(|(t, _, _)| t.as_str()))
                    .bind(patch.tags.as_deref())
                    .bind(patch.pinned)
                    .bind(ms(memory.updated_at))
                    .bind(text.map(|(_, _, e)| e.provider.as_str()))
                    .bind(text.map(|(_, _, e)| e.model.as_str()))
                    .bind(text.map(|(_, _, e)| dims(e)))
                    .bind(text.map(|(_, v, _)| v.as_slice()))
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(map_err(&format!("memory {}", found.id)))?;
                match row {
                    Some(row) => {
                        let change = search_change(tenant, &found.id, ChangeOp::Upsert, memory.updated_at);
                        PostgresStore::search_record(&mut tx, &change).await?;
                        Some((Memory::try_from(row)?, true))
                    }
                    // Deleted since the search (deletes take no lock): inserted anew.
                    None => None,
                }
            }
            None => None,
        };
        let remembered = match remembered {
            Some(updated) => updated,
            None => {
                bind_insert!(sqlx::query(PG_INSERT), memory, &memory.tags, vector)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err(&format!("memory {}", memory.id)))?;
                let change = search_change(tenant, &memory.id, ChangeOp::Upsert, memory.created_at);
                PostgresStore::search_record(&mut tx, &change).await?;
                (memory.clone(), false)
            }
        };
        tx.commit().await.map_err(backend_err)?;
        self.search_paths.forget(VectorTable::Memories);
        Ok(remembered)
    }

    async fn distillation(&self, run: &RunId) -> Result<Option<Distillation>, StoreError> {
        let row = sqlx::query_as::<_, DistillationRow>(DISTILLATION)
            .bind(run.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend_err)?;
        row.map(distillation_from_row).transpose()
    }

    async fn record_distillation(&self, distillation: &Distillation) -> Result<Distillation, StoreError> {
        bind_distillation!(sqlx::query(RECORD_DISTILLATION), distillation)
            .execute(&self.pool)
            .await
            .map_err(map_err(&format!("distillation of run {}", distillation.run)))?;
        self.distillation(&distillation.run)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("distillation of run {} vanished", distillation.run)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_search_paths_are_kept_per_table_tenant_and_embedder_until_a_write_to_the_table() {
        let paths = SearchPaths::default();
        let key = |table, tenant: &str, dims| (table, tenant.to_owned(), "p".to_owned(), "m".to_owned(), dims);
        paths.put(key(VectorTable::Memories, "acme", 384), SearchRoad::Index);
        paths.put(key(VectorTable::Passages, "acme", 384), SearchRoad::Small);
        assert_eq!(paths.get(&key(VectorTable::Memories, "acme", 384)), Some(SearchRoad::Index));
        assert_eq!(paths.get(&key(VectorTable::Passages, "acme", 384)), Some(SearchRoad::Small));
        assert_eq!(paths.get(&key(VectorTable::Memories, "globex", 384)), None, "another tenant");
        assert_eq!(paths.get(&key(VectorTable::Memories, "acme", 768)), None, "another embedder");
        paths.forget(VectorTable::Memories);
        assert_eq!(paths.get(&key(VectorTable::Memories, "acme", 384)), None, "a write to memories forgets");
        assert_eq!(paths.get(&key(VectorTable::Passages, "acme", 384)), Some(SearchRoad::Small), "not passages'");
    }

    #[test]
    fn postgres_search_begins_with_its_settings_in_one_statement() {
        assert_eq!(PostgresStore::search_begin(SearchRoad::Small, 10), None, "a small tenant: one statement");
        assert_eq!(PostgresStore::search_begin(SearchRoad::Exact, 10).as_deref(), Some("BEGIN; SET LOCAL jit = off"));
        let index = PostgresStore::search_begin(SearchRoad::Index, 10).expect("a transaction");
        assert!(index.starts_with("BEGIN; ") && index.contains("hnsw.ef_search = 64"), "{index}");
        let many = PostgresStore::search_begin(SearchRoad::Index, 100).expect("a transaction");
        assert!(many.contains("hnsw.ef_search = 400"), "{many}");
        let most = PostgresStore::search_begin(SearchRoad::Index, 10_000).expect("a transaction");
        assert!(most.contains("hnsw.ef_search = 1000"), "pgvector's maximum: {most}");
    }
}
