//! [`maestro_core::ports::PassageStore`] on both backends (migration 0012): passages of
//! messages and documents with their vectors, and the one follower position every
//! replica shares.
//!
//! Searches take the same road as memories' (`memories.rs` explains it): **Postgres**
//! keeps vectors in a `vector` column without a fixed dimension with a partial HNSW
//! index per common dimension on `embedding::halfvec(D)` (m 32, ef_construction 128);
//! a tenant large enough (by [`EXACT_SCAN_BELOW`](super::memories::EXACT_SCAN_BELOW) and [`INDEX_SHARE`](super::memories::INDEX_SHARE), its count kept
//! by triggers in `passage_counts`) is searched through the index with the memories'
//! per-transaction settings (iterative scan, `ef_search` sized to `k`) and its rows
//! re-sorted by their full-precision distance; a smaller one, or a dimension without an
//! index, exactly. **SQLite** keeps f32 BLOBs
//! and scans a tenant's vectors in process, cached while its `passage_epochs` row
//! (moved by triggers on every write) is unchanged and brought forward by the rows
//! changed since after a write (`vector_cache.rs`, migration 0014).
//!
//! [`PassageStore::write_passages`] is the follower's only write: one transaction that
//! first moves the position with a compare-and-set (`UPDATE passage_follower … WHERE
//! txid = expected AND id = expected`, which on Postgres also locks the row until
//! commit, so a concurrent writer waits and then finds the position moved), then
//! replaces the named objects' passages.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use maestro_core::embed::EmbedderInfo;
use maestro_core::memory::{vector_from_bytes, vector_to_bytes};
use maestro_core::passage::{FollowerState, Passage, PassageFilter, PassageHit, PassageWrite, StoredPassage};
use maestro_core::ports::PassageStore;
use maestro_core::run::SessionId;
use maestro_core::search::{OutboxPosition, SearchKind};
use maestro_core::{StoreError, TenantId};
use sqlx::Row as _;

use super::memories::{VectorTable, nearest_order};
use super::postgres::PostgresStore;
use super::sqlite::SqliteStore;
use super::vector_cache::{CachedRow, TenantCache};
use super::{backend_err, map_err};

/// A raw `passages` row (without its vector).
#[derive(Debug, sqlx::FromRow)]
struct PassageRow {
    tenant_id: String,
    kind: String,
    object_id: String,
    chunk: i32,
    session_id: Option<String>,
    author: Option<String>,
    at: DateTime<Utc>,
    text: String,
    provider: String,
    model: String,
    dims: i32,
}

impl TryFrom<PassageRow> for (Passage, EmbedderInfo) {
    type Error = StoreError;

    fn try_from(row: PassageRow) -> Result<Self, StoreError> {
        let what = format!("passage {}#{}", row.object_id, row.chunk);
        let corrupt = |e: &dyn std::fmt::Display| StoreError::Corrupt(format!("{what}: {e}"));
        let kind = match SearchKind::parse(&row.kind) {
            Some(kind @ (SearchKind::Message | SearchKind::Document)) => kind,
            _ => return Err(corrupt(&format!("kind {}", row.kind))),
        };
        let passage = Passage {
            tenant: TenantId::parse(&row.tenant_id).map_err(|e| corrupt(&e))?,
            kind,
            chunk: u32::try_from(row.chunk).map_err(|e| corrupt(&e))?,
            session: row.session_id.as_deref().map(SessionId::parse).transpose().map_err(|e| corrupt(&e))?,
            author: row.author,
            at: row.at,
            text: row.text,
            object: row.object_id,
        };
        let embedder = EmbedderInfo {
            provider: row.provider,
            model: row.model,
            dimensions: u32::try_from(row.dims).map_err(|e| corrupt(&e))?,
        };
        Ok((passage, embedder))
    }
}

const COLUMNS: &str = "tenant_id, kind, object_id, chunk, session_id, author, at, text, provider, model, dims";

/// The filter's conditions, with its parameters numbered from `$first`: messages
/// wanted, documents wanted, session, excluded session, author, since, until (bound by
/// [`bind_filter!`] in that order). The same SQL on both backends.
fn filter_sql(first: usize) -> String {
    let p = |i: usize| format!("${}", first + i);
    format!(
        " AND ((kind = 'message' AND {m}) OR (kind = 'document' AND {d})) \
         AND ({s} IS NULL OR session_id = {s}) AND ({x} IS NULL OR session_id IS NULL OR session_id <> {x}) \
         AND ({a} IS NULL OR author = {a}) AND ({f} IS NULL OR at >= {f}) AND ({u} IS NULL OR at < {u})",
        m = p(0),
        d = p(1),
        s = p(2),
        x = p(3),
        a = p(4),
        f = p(5),
        u = p(6),
    )
}

/// Whether `filter` lets passages of `kind` through.
fn wants(filter: &PassageFilter, kind: SearchKind) -> bool {
    filter.kinds.is_empty() || filter.kinds.contains(&kind)
}

/// Binds a [`PassageFilter`]'s seven parameters (see [`filter_sql`]).
macro_rules! bind_filter {
    ($query:expr, $filter:expr) => {
        $query
            .bind(wants($filter, SearchKind::Message))
            .bind(wants($filter, SearchKind::Document))
            .bind($filter.session.as_ref().map(|s| s.as_str()))
            .bind($filter.exclude_session.as_ref().map(|s| s.as_str()))
            .bind($filter.author.as_deref())
            .bind($filter.since.map(ms))
            .bind($filter.until.map(ms))
    };
}

fn ms(at: DateTime<Utc>) -> DateTime<Utc> {
    super::runs::ms(at)
}

fn dims(info: &EmbedderInfo) -> i32 {
    i32::try_from(info.dimensions).unwrap_or(i32::MAX)
}

/// Checks that every passage of `write` is of a named object, with a vector of the
/// embedder's dimension.
fn check_write(write: &PassageWrite) -> Result<(), StoreError> {
    for (passage, vector) in &write.passages {
        let named = write.objects.iter().any(|(kind, id)| *kind == passage.kind && *id == passage.object);
        if !named || vector.len() != write.embedder.dimensions as usize {
            return Err(StoreError::Corrupt(format!(
                "passage {}#{}: not of a replaced object, or a vector of {} numbers for an embedder of {}",
                passage.object,
                passage.chunk,
                vector.len(),
                write.embedder.dimensions
            )));
        }
    }
    Ok(())
}

/// Moves the follower's position from `expected` to `next` unless it moved or (for a
/// write following the outbox) pruning passed `expected`; $5 is when.
const MOVE: &str = "UPDATE passage_follower SET txid = $3, id = $4, updated_at = $5 \
     WHERE txid = $1 AND id = $2 AND (NOT $6 OR NOT EXISTS \
     (SELECT 1 FROM search_outbox_pruned p WHERE (p.txid, p.id) > ($1, $2)))";
const STATE: &str = "SELECT f.txid, f.id, p.txid AS pruned_txid, p.id AS pruned_id \
     FROM passage_follower f CROSS JOIN search_outbox_pruned p";
/// The ids of objects of kind $1 with passages, after $2 and through $3 when bound
/// (only the bounds given are in the SQL, so that both stay index range bounds).
fn objects_between(after: bool, through: bool) -> String {
    let (mut sql, mut n) = ("SELECT DISTINCT object_id FROM passages WHERE kind = $1".to_owned(), 1);
    for (bound, op) in [(after, ">"), (through, "<=")] {
        if bound {
            n += 1;
            sql.push_str(&format!(" AND object_id {op} ${n}"));
        }
    }
    sql + " ORDER BY object_id"
}
const STALE: &str =
    "SELECT EXISTS (SELECT 1 FROM passages WHERE NOT (provider = $1 AND model = $2 AND dims = $3)) AS stale";
const INSERT: &str = "INSERT INTO passages (tenant_id, kind, object_id, chunk, session_id, author, at, text, \
     provider, model, dims, embedding) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";
const PG_INSERT: &str = "INSERT INTO passages (tenant_id, kind, object_id, chunk, session_id, author, at, text, \
     provider, model, dims, embedding) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::real[]::vector)";

/// Binds a passage's twelve insert parameters; `$vector` in the backend's bound form.
macro_rules! bind_insert {
    ($query:expr, $passage:expr, $embedder:expr, $vector:expr) => {
        $query
            .bind($passage.tenant.as_str())
            .bind($passage.kind.as_str())
            .bind(&$passage.object)
            .bind(i32::try_from($passage.chunk).unwrap_or(i32::MAX))
            .bind($passage.session.as_ref().map(|s| s.as_str()))
            .bind($passage.author.as_deref())
            .bind(ms($passage.at))
            .bind(&$passage.text)
            .bind(&$embedder.provider)
            .bind(&$embedder.model)
            .bind(dims($embedder))
            .bind($vector)
    };
}

/// Runs the compare-and-set of `write` on a write transaction; whether it moved.
macro_rules! move_position {
    ($tx:expr, $write:expr, $now:expr) => {
        sqlx::query(MOVE)
            .bind($write.expected.txid)
            .bind($write.expected.id)
            .bind($write.next.txid)
            .bind($write.next.id)
            .bind($now)
            .bind($write.follows_outbox)
            .execute(&mut *$tx)
            .await
            .map_err(backend_err)?
            .rows_affected()
            == 1
    };
}

/// The follower's state from a [`STATE`] row.
fn follower_state<R: sqlx::Row>(row: &R) -> Result<FollowerState, StoreError>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let get = |column: &str| row.try_get::<i64, _>(column).map_err(backend_err);
    Ok(FollowerState {
        position: OutboxPosition { txid: get("txid")?, id: get("id")? },
        pruned_through: OutboxPosition { txid: get("pruned_txid")?, id: get("pruned_id")? },
    })
}

/// Object ids grouped by kind, as the deletes bind them.
fn objects_by_kind(write: &PassageWrite) -> HashMap<SearchKind, Vec<&str>> {
    let mut by_kind: HashMap<SearchKind, Vec<&str>> = HashMap::new();
    for (kind, id) in &write.objects {
        by_kind.entry(*kind).or_default().push(id.as_str());
    }
    by_kind
}

/// Puts rows in the order of `ranked` ((score, kind, object, chunk)), dropping those no
/// row has any more.
fn in_order(
    ranked: Vec<(f32, SearchKind, String, u32)>,
    rows: Vec<PassageRow>,
    filter: &PassageFilter,
) -> Result<Vec<PassageHit>, StoreError> {
    let mut by_key: HashMap<(SearchKind, String, u32), Passage> = HashMap::new();
    for row in rows {
        let (passage, _) = <(Passage, EmbedderInfo)>::try_from(row)?;
        by_key.insert((passage.kind, passage.object.clone(), passage.chunk), passage);
    }
    Ok(ranked
        .into_iter()
        .filter_map(|(score, kind, object, chunk)| by_key.remove(&(kind, object, chunk)).map(|p| (score, p)))
        // A row rewritten since the cache was read is checked again.
        .filter(|(_, passage)| filter.matches(passage))
        .map(|(score, passage)| PassageHit { passage, score })
        .collect())
}

/// SQLite's exact scan reads a tenant's passage vectors (of one embedder) into memory
/// once and brings them forward by delta after writes (`vector_cache.rs`; a cache of
/// its own, of the memories' cache's size).
pub(super) type PassageCache = TenantCache<Passage>;

impl CachedRow for Passage {
    type Key = (SearchKind, String, u32);
    const QUANTIZED: bool = false;
    const EPOCH: &'static str = "SELECT epoch FROM passage_epochs WHERE tenant_id = $1";
    const DELETED: &'static str =
        "SELECT kind, object_id, chunk FROM passage_deletions WHERE tenant_id = $1 AND seq > $2";

    fn select() -> String {
        format!("SELECT {}, embedding FROM passages WHERE tenant_id = $1", COLUMNS.replace("text,", "'' AS text,"))
    }

    fn key(&self) -> Self::Key {
        (self.kind, self.object.clone(), self.chunk)
    }

    fn decode(row: &sqlx::sqlite::SqliteRow) -> Result<(Self, EmbedderInfo), StoreError> {
        <(Passage, EmbedderInfo)>::try_from(<PassageRow as sqlx::FromRow<_>>::from_row(row).map_err(backend_err)?)
    }

    fn deleted(row: &sqlx::sqlite::SqliteRow) -> Result<Self::Key, StoreError> {
        let kind: String = row.try_get("kind").map_err(backend_err)?;
        let object: String = row.try_get("object_id").map_err(backend_err)?;
        let chunk: i64 = row.try_get("chunk").map_err(backend_err)?;
        let corrupt = || StoreError::Corrupt(format!("passage tombstone {object}#{chunk}"));
        let kind = SearchKind::parse(&kind).ok_or_else(corrupt)?;
        Ok((kind, object.clone(), u32::try_from(chunk).map_err(|_| corrupt())?))
    }
}

#[async_trait::async_trait]
impl PassageStore for SqliteStore {
    async fn search_passages(
        &self,
        tenant: &TenantId,
        embedder: &EmbedderInfo,
        query: &[f32],
        filter: &PassageFilter,
        k: u32,
    ) -> Result<Vec<PassageHit>, StoreError> {
        let kinds_wanted = wants(filter, SearchKind::Message) || wants(filter, SearchKind::Document);
        if k == 0 || query.len() != embedder.dimensions as usize || !kinds_wanted {
            return Ok(Vec::new());
        }
        let passages = self.tenant_vectors(&self.passage_vectors, tenant, embedder).await?;
        let (query, owned_filter, scan) = (query.to_vec(), filter.clone(), passages.clone());
        let ranked = tokio::task::spawn_blocking(move || {
            let everything = owned_filter == PassageFilter::default();
            scan.top_k(&query, everything, |passage| owned_filter.matches(passage), k as usize)
        })
        .await
        .map_err(backend_err)?;
        let ranked: Vec<(f32, SearchKind, String, u32)> = ranked
            .into_iter()
            .map(|(score, i)| {
                let p = &passages.rows()[i];
                (score, p.kind, p.object.clone(), p.chunk)
            })
            .collect();
        let mut objects: Vec<&str> = ranked.iter().map(|(_, _, object, _)| object.as_str()).collect();
        objects.dedup();
        // Both kinds named, and the tenant's index ruled out (`+`), so that the primary
        // key finds the few rows rather than a walk through the tenant's.
        let sql = format!(
            "SELECT {COLUMNS} FROM passages WHERE kind IN ('message', 'document') \
             AND object_id IN (SELECT value FROM json_each($2)) AND +tenant_id = $1"
        );
        let rows = sqlx::query_as::<_, PassageRow>(sqlx::AssertSqlSafe(sql))
            .bind(tenant.as_str())
            .bind(serde_json::to_string(&objects).map_err(backend_err)?)
            .fetch_all(&self.pool)
            .await
            .map_err(backend_err)?;
        in_order(ranked, rows, filter)
    }

    async fn passage_follower(&self) -> Result<FollowerState, StoreError> {
        let row = sqlx::query(STATE).fetch_one(&self.pool).await.map_err(backend_err)?;
        follower_state(&row)
    }

    async fn stored_passages(&self, kind: SearchKind, ids: &[String]) -> Result<Vec<StoredPassage>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS}, embedding FROM passages WHERE kind = $1 \
             AND object_id IN (SELECT value FROM json_each($2)) ORDER BY object_id, chunk"
        );
        let mut stored = Vec::new();
        for chunk in ids.chunks(500) {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(kind.as_str())
                .bind(serde_json::to_string(chunk).map_err(backend_err)?)
                .fetch_all(&self.pool)
                .await
                .map_err(backend_err)?;
            for row in &rows {
                let bytes: &[u8] = row.try_get("embedding").map_err(backend_err)?;
                let raw = <PassageRow as sqlx::FromRow<_>>::from_row(row).map_err(backend_err)?;
                let (passage, embedder) = <(Passage, EmbedderInfo)>::try_from(raw)?;
                let vector = vector_from_bytes(bytes)
                    .ok_or_else(|| StoreError::Corrupt(format!("passage {}: a malformed vector", passage.object)))?;
                stored.push(StoredPassage { passage, embedder, vector });
            }
        }
        Ok(stored)
    }

    async fn passage_objects_between(
        &self,
        kind: SearchKind,
        after: Option<&str>,
        through: Option<&str>,
    ) -> Result<Vec<String>, StoreError> {
        let sql = objects_between(after.is_some(), through.is_some());
        let mut query = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(kind.as_str());
        for bound in [after, through].into_iter().flatten() {
            query = query.bind(bound);
        }
        query.fetch_all(&self.pool).await.map_err(backend_err)
    }

    async fn write_passages(&self, write: &PassageWrite) -> Result<bool, StoreError> {
        check_write(write)?;
        // `BEGIN IMMEDIATE`: writers queue on the busy timeout.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(backend_err)?;
        if !move_position!(tx, write, ms(Utc::now())) {
            return Ok(false);
        }
        for (kind, ids) in objects_by_kind(write) {
            sqlx::query("DELETE FROM passages WHERE kind = $1 AND object_id IN (SELECT value FROM json_each($2))")
                .bind(kind.as_str())
                .bind(serde_json::to_string(&ids).map_err(backend_err)?)
                .execute(&mut *tx)
                .await
                .map_err(backend_err)?;
        }
        for (passage, vector) in &write.passages {
            bind_insert!(sqlx::query(INSERT), passage, &write.embedder, vector_to_bytes(vector))
                .execute(&mut *tx)
                .await
                .map_err(map_err(&format!("passage {}#{}", passage.object, passage.chunk)))?;
        }
        tx.commit().await.map_err(backend_err)?;
        Ok(true)
    }

    async fn has_stale_passages(&self, current: &EmbedderInfo) -> Result<bool, StoreError> {
        sqlx::query_scalar(STALE)
            .bind(&current.provider)
            .bind(&current.model)
            .bind(dims(current))
            .fetch_one(&self.pool)
            .await
            .map_err(backend_err)
    }
}

impl PostgresStore {
    /// The SQL of a passage search in dimension `dims` for `k` hits: through the HNSW
    /// index (`indexed`) or exact. Parameters: tenant ($1), provider ($2), model ($3),
    /// the filter ($4–$10), the query vector as `real[]` ($11).
    fn passage_search_sql(dims: u32, indexed: bool, k: u32) -> String {
        let (exact, order) = nearest_order(dims, indexed);
        format!(
            "WITH nearest AS MATERIALIZED (SELECT {COLUMNS}, ({exact}) AS distance FROM passages \
             WHERE dims = {dims} AND tenant_id = $1 AND provider = $2 AND model = $3{filter} \
             ORDER BY {order} LIMIT {k}) SELECT * FROM nearest ORDER BY distance, object_id, chunk",
            filter = filter_sql(4),
        )
    }

    /// The plan Postgres chooses for a passage search of `tenant` (`EXPLAIN` lines),
    /// with the same settings and SQL [`PassageStore::search_passages`] uses, the road
    /// chosen from the counts now.
    pub async fn explain_passage_search(
        &self,
        tenant: &TenantId,
        embedder: &EmbedderInfo,
        query: &[f32],
        filter: &PassageFilter,
        k: u32,
    ) -> Result<Vec<String>, StoreError> {
        let road = self.search_through_index(VectorTable::Passages, tenant, embedder).await?;
        let sql = format!(
            "EXPLAIN {}",
            Self::passage_search_sql(embedder.dimensions, road == super::memories::SearchRoad::Index, k)
        );
        let explain =
            sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant.as_str()).bind(&embedder.provider).bind(&embedder.model);
        let explain = bind_filter!(explain, filter).bind(query);
        self.explain_rows(road, k, explain).await
    }
}

#[async_trait::async_trait]
impl PassageStore for PostgresStore {
    async fn search_passages(
        &self,
        tenant: &TenantId,
        embedder: &EmbedderInfo,
        query: &[f32],
        filter: &PassageFilter,
        k: u32,
    ) -> Result<Vec<PassageHit>, StoreError> {
        let kinds_wanted = wants(filter, SearchKind::Message) || wants(filter, SearchKind::Document);
        if k == 0 || query.len() != embedder.dimensions as usize || !kinds_wanted {
            return Ok(Vec::new());
        }
        let road = self.search_road(VectorTable::Passages, tenant, embedder).await?;
        let sql = Self::passage_search_sql(embedder.dimensions, road == super::memories::SearchRoad::Index, k);
        let search =
            sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant.as_str()).bind(&embedder.provider).bind(&embedder.model);
        let rows = self.search_rows(road, k, bind_filter!(search, filter).bind(query)).await?;
        rows.into_iter()
            .map(|row| {
                let distance: f64 = row.try_get("distance").map_err(backend_err)?;
                let raw = <PassageRow as sqlx::FromRow<_>>::from_row(&row).map_err(backend_err)?;
                let (passage, _) = <(Passage, EmbedderInfo)>::try_from(raw)?;
                // `<#>` is the negative inner product.
                Ok(PassageHit { passage, score: -distance as f32 })
            })
            .collect()
    }

    async fn passage_follower(&self) -> Result<FollowerState, StoreError> {
        let row = sqlx::query(STATE).fetch_one(&self.pool).await.map_err(backend_err)?;
        follower_state(&row)
    }

    async fn stored_passages(&self, kind: SearchKind, ids: &[String]) -> Result<Vec<StoredPassage>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS}, embedding::real[] AS vector FROM passages WHERE kind = $1 \
             AND object_id = ANY($2) ORDER BY object_id, chunk"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(kind.as_str())
            .bind(ids)
            .fetch_all(&self.pool)
            .await
            .map_err(backend_err)?;
        rows.iter()
            .map(|row| {
                let vector: Vec<f32> = row.try_get("vector").map_err(backend_err)?;
                let raw = <PassageRow as sqlx::FromRow<_>>::from_row(row).map_err(backend_err)?;
                let (passage, embedder) = <(Passage, EmbedderInfo)>::try_from(raw)?;
                Ok(StoredPassage { passage, embedder, vector })
            })
            .collect()
    }

    async fn passage_objects_between(
        &self,
        kind: SearchKind,
        after: Option<&str>,
        through: Option<&str>,
    ) -> Result<Vec<String>, StoreError> {
        let sql = objects_between(after.is_some(), through.is_some());
        let mut query = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(kind.as_str());
        for bound in [after, through].into_iter().flatten() {
            query = query.bind(bound);
        }
        query.fetch_all(&self.pool).await.map_err(backend_err)
    }

    async fn write_passages(&self, write: &PassageWrite) -> Result<bool, StoreError> {
        check_write(write)?;
        let mut tx = self.pool.begin().await.map_err(backend_err)?;
        if !move_position!(tx, write, ms(Utc::now())) {
            return Ok(false);
        }
        for (kind, ids) in objects_by_kind(write) {
            sqlx::query("DELETE FROM passages WHERE kind = $1 AND object_id = ANY($2)")
                .bind(kind.as_str())
                .bind(&ids)
                .execute(&mut *tx)
                .await
                .map_err(backend_err)?;
        }
        for (passage, vector) in &write.passages {
            bind_insert!(sqlx::query(PG_INSERT), passage, &write.embedder, vector.as_slice())
                .execute(&mut *tx)
                .await
                .map_err(map_err(&format!("passage {}#{}", passage.object, passage.chunk)))?;
        }
        tx.commit().await.map_err(backend_err)?;
        self.search_paths.forget(VectorTable::Passages);
        Ok(true)
    }

    async fn has_stale_passages(&self, current: &EmbedderInfo) -> Result<bool, StoreError> {
        sqlx::query_scalar(STALE)
            .bind(&current.provider)
            .bind(&current.model)
            .bind(dims(current))
            .fetch_one(&self.pool)
            .await
            .map_err(backend_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reconcile's range read and the cache's load search an index on SQLite (the
    /// reads by id list go through the primary key, beside a scan of the list itself).
    #[tokio::test]
    async fn passage_reads_search_an_index_on_sqlite() {
        let load = format!(
            "SELECT {COLUMNS}, embedding FROM passages WHERE tenant_id = $1 AND provider = $2 AND model = $3 AND dims = $4"
        );
        let (first, middle) = (objects_between(false, true), objects_between(true, true));
        let (delta, deleted) = (format!("{} AND seq > $2", Passage::select()), Passage::DELETED);
        crate::storage::assert_indexed_on_sqlite(&[
            ("OBJECTS_BETWEEN first", first.as_str()),
            ("OBJECTS_BETWEEN middle", middle.as_str()),
            ("LOAD", load.as_str()),
            ("DELTA", delta.as_str()),
            ("DELETED", deleted),
        ])
        .await;
    }
}
