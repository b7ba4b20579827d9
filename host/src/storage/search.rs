//! [`maestro_core::SearchStore`] and the outbox writes: the search outbox (migration
//! 0011) and the indexed objects' current content, read by each replica's full-text
//! index. The same SQL on both backends but for one condition, expanded per store type
//! by [`impl_search_queries!`]: on Postgres a reader takes only rows whose writer's
//! transaction id is below its snapshot's xmin (see `maestro_core::search`).
//!
//! Writers record their change in their own transaction: a message by `OUTBOX_MESSAGE`
//! (its tenant from its session's row), a document version by `OUTBOX_DOCUMENT`, a
//! memory's insert, update or delete by `OUTBOX_INSERT` (`storage/memories.rs`), any
//! other kind by `OUTBOX_INSERT` through [`maestro_core::Tx::record_search_change`].

use chrono::{DateTime, Utc};
use maestro_core::document::DocAuthor;
use maestro_core::run::SessionId;
use maestro_core::search::{ChangeOp, OutboxEntry, OutboxPosition, SearchChange, SearchKind, Searchable};
use maestro_core::{StoreError, TenantId};

/// Records a change ($1 tenant, $2 kind, $3 object, $4 op, $5 at).
pub(super) const OUTBOX_INSERT: &str =
    "INSERT INTO search_outbox (tenant_id, kind, object_id, op, at) VALUES ($1, $2, $3, $4, $5)";
/// Records a message ($2) of a session ($1) written at $3.
pub(super) const OUTBOX_MESSAGE: &str = "INSERT INTO search_outbox (tenant_id, kind, object_id, op, at) \
     SELECT tenant_id, 'message', $2, 'upsert', $3 FROM sessions WHERE id = $1";
/// Records a new current version of a document ($1) written at $2.
pub(super) const OUTBOX_DOCUMENT: &str = "INSERT INTO search_outbox (tenant_id, kind, object_id, op, at) \
     SELECT tenant_id, 'document', id, 'upsert', $2 FROM documents WHERE id = $1";

/// Columns of `search_outbox`, read by name into [`OutboxRow`].
macro_rules! outbox_columns {
    () => {
        "SELECT txid, id, tenant_id, kind, object_id, op, at FROM search_outbox"
    };
}
pub(super) use outbox_columns;

/// Rows after ($1, $2), settled or not.
pub(super) const OUTBOX_PENDING: &str = "SELECT COUNT(*) FROM search_outbox WHERE (txid, id) > ($1, $2)";
/// The last position pruning deleted through.
pub(super) const OUTBOX_PRUNED: &str = "SELECT txid, id FROM search_outbox_pruned";
/// Raises the pruned position to ($1, $2).
pub(super) const OUTBOX_MARK_PRUNED: &str =
    "UPDATE search_outbox_pruned SET txid = $1, id = $2 WHERE (txid, id) < ($1, $2)";
/// Messages by id, with their tenant (the ids are bound as $1…$n).
const MESSAGES: &str = "SELECT m.id, s.tenant_id, m.session_id, m.author_kind, m.author_name, m.content, m.at \
     FROM messages m JOIN sessions s ON s.id = m.session_id";
/// Documents by id, with their current version's content.
const DOCUMENTS: &str = "SELECT d.id, d.tenant_id, d.session_id, d.title, v.content, v.author, d.updated_at \
     FROM documents d JOIN document_versions v ON v.document_id = d.id AND v.version = d.version";

/// Memories by id (`{tags}`: the backend's expression reading tags as a JSON array
/// text). A memory's session and persona come from its scope.
const MEMORIES: &str = "SELECT m.id, m.tenant_id, m.scope, m.persona, m.session_id, m.text, {tags} AS tags, \
     m.pinned, m.created_at FROM memories m";

/// The most ids one `searchables` query binds.
pub(super) const IDS_PER_QUERY: usize = 500;

/// `MESSAGES`/`DOCUMENTS`/`MEMORIES` for `ids` ids (`… WHERE x.id IN ($1, …)`), or a
/// page (`… WHERE x.id > $1 ORDER BY x.id LIMIT $2`, or without the cursor when `after`
/// is false); `memory_tags` is the backend's expression of a memory's tags as JSON text.
/// Only placeholders and that constant are formatted in, never values.
pub(super) fn select(kind: SearchKind, shape: Shape, memory_tags: &str) -> Option<String> {
    let memories;
    let (base, alias) = match kind {
        SearchKind::Message => (MESSAGES, "m"),
        SearchKind::Document => (DOCUMENTS, "d"),
        SearchKind::Memory => {
            memories = MEMORIES.replace("{tags}", memory_tags);
            (memories.as_str(), "m")
        }
    };
    Some(match shape {
        Shape::Ids(n) => {
            let list: Vec<String> = (1..=n).map(|i| format!("${i}")).collect();
            format!("{base} WHERE {alias}.id IN ({})", list.join(", "))
        }
        Shape::First => format!("{base} ORDER BY {alias}.id LIMIT $1"),
        Shape::After => format!("{base} WHERE {alias}.id > $1 ORDER BY {alias}.id LIMIT $2"),
    })
}

/// Which rows [`select`] reads.
#[derive(Debug, Clone, Copy)]
pub(super) enum Shape {
    /// These many ids.
    Ids(usize),
    /// The first page.
    First,
    /// The page after an id.
    After,
}

/// A raw `search_outbox` row.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct OutboxRow {
    txid: i64,
    id: i64,
    tenant_id: String,
    kind: String,
    object_id: String,
    op: String,
    at: DateTime<Utc>,
}

impl TryFrom<OutboxRow> for OutboxEntry {
    type Error = StoreError;

    fn try_from(row: OutboxRow) -> Result<Self, StoreError> {
        let what = format!("search outbox row {}", row.id);
        Ok(OutboxEntry {
            position: OutboxPosition { txid: row.txid, id: row.id },
            change: SearchChange {
                tenant: TenantId::parse(&row.tenant_id).map_err(|e| corrupt(&what, e))?,
                kind: SearchKind::parse(&row.kind).ok_or_else(|| corrupt(&what, format!("kind {}", row.kind)))?,
                object: row.object_id,
                op: ChangeOp::parse(&row.op).ok_or_else(|| corrupt(&what, format!("op {}", row.op)))?,
                at: row.at,
            },
        })
    }
}

/// A message as the index reads it.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct MessageRow {
    id: String,
    tenant_id: String,
    session_id: String,
    author_kind: String,
    author_name: String,
    content: String,
    at: DateTime<Utc>,
}

impl TryFrom<MessageRow> for Searchable {
    type Error = StoreError;

    fn try_from(row: MessageRow) -> Result<Self, StoreError> {
        let what = format!("message {}", row.id);
        let author = match row.author_kind.as_str() {
            "persona" | "user" => row.author_name,
            other => return Err(corrupt(&what, format!("author kind {other}"))),
        };
        Ok(Searchable {
            tenant: TenantId::parse(&row.tenant_id).map_err(|e| corrupt(&what, e))?,
            kind: SearchKind::Message,
            session: Some(SessionId::parse(&row.session_id).map_err(|e| corrupt(&what, e))?),
            author: Some(author),
            title: String::new(),
            text: row.content,
            at: row.at,
            tags: Vec::new(),
            scope: None,
            pinned: false,
            id: row.id,
        })
    }
}

/// A document with its current content as the index reads it.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct DocumentRow {
    id: String,
    tenant_id: String,
    session_id: Option<String>,
    title: String,
    content: String,
    author: String,
    updated_at: DateTime<Utc>,
}

impl TryFrom<DocumentRow> for Searchable {
    type Error = StoreError;

    fn try_from(row: DocumentRow) -> Result<Self, StoreError> {
        let what = format!("document {}", row.id);
        let author = match serde_json::from_str::<DocAuthor>(&row.author) {
            Ok(DocAuthor::Persona { name, .. }) => Some(name),
            Ok(DocAuthor::User { key }) => Some(key),
            Err(e) => return Err(corrupt(&what, format!("author: {e}"))),
        };
        Ok(Searchable {
            tenant: TenantId::parse(&row.tenant_id).map_err(|e| corrupt(&what, e))?,
            kind: SearchKind::Document,
            session: row.session_id.as_deref().map(SessionId::parse).transpose().map_err(|e| corrupt(&what, e))?,
            author,
            title: row.title,
            text: row.content,
            at: row.updated_at,
            tags: Vec::new(),
            scope: None,
            pinned: false,
            id: row.id,
        })
    }
}

/// A memory as the index reads it (tags as a JSON array text).
#[derive(Debug, sqlx::FromRow)]
pub(super) struct MemoryRow {
    id: String,
    tenant_id: String,
    scope: String,
    persona: Option<String>,
    session_id: Option<String>,
    text: String,
    tags: String,
    pinned: bool,
    created_at: DateTime<Utc>,
}

impl TryFrom<MemoryRow> for Searchable {
    type Error = StoreError;

    /// Its tags go in the title (searched, boosted), its scope's session and persona in
    /// `session` and `author`, its creation time in `at` (what the memory filters use).
    fn try_from(row: MemoryRow) -> Result<Self, StoreError> {
        let what = format!("memory {}", row.id);
        let tags: Vec<String> = serde_json::from_str(&row.tags).map_err(|e| corrupt(&what, e))?;
        Ok(Searchable {
            tenant: TenantId::parse(&row.tenant_id).map_err(|e| corrupt(&what, e))?,
            kind: SearchKind::Memory,
            session: row.session_id.as_deref().map(SessionId::parse).transpose().map_err(|e| corrupt(&what, e))?,
            author: row.persona,
            title: tags.join(" "),
            text: row.text,
            at: row.created_at,
            tags,
            scope: Some(row.scope),
            pinned: row.pinned,
            id: row.id,
        })
    }
}

fn corrupt(what: &str, err: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {err}"))
}

/// Implements [`maestro_core::SearchStore`] and the outbox writes (`search_record`,
/// `search_record_message`, `search_record_document`, called on a writer's connection)
/// for a store type with a `pool` field and a `begin_write` method. `$settled` is the
/// condition that keeps a reader to rows no open transaction can precede (empty on
/// SQLite); `$xmin` the SQL of the oldest open transaction id, `None` on SQLite;
/// `$memory_tags` the expression reading a memory's tags as a JSON array text.
macro_rules! impl_search_queries {
    ($store:ty, $settled:literal, $xmin:expr, $memory_tags:literal) => {
        impl $store {
            /// Records a change on a writer's connection.
            pub(super) async fn search_record(
                conn: &mut <<$store as super::Backend>::Db as sqlx::Database>::Connection,
                change: &maestro_core::search::SearchChange,
            ) -> Result<(), maestro_core::StoreError> {
                sqlx::query(super::search::OUTBOX_INSERT)
                    .bind(change.tenant.as_str())
                    .bind(change.kind.as_str())
                    .bind(&change.object)
                    .bind(change.op.as_str())
                    .bind(super::runs::ms(change.at))
                    .execute(&mut *conn)
                    .await
                    .map_err(super::map_err("search change"))?;
                Ok(())
            }

            /// Records a message written on a writer's connection.
            pub(super) async fn search_record_message(
                conn: &mut <<$store as super::Backend>::Db as sqlx::Database>::Connection,
                message: &maestro_core::run::Message,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), maestro_core::StoreError> {
                sqlx::query(super::search::OUTBOX_MESSAGE)
                    .bind(message.session.as_str())
                    .bind(message.id.as_str())
                    .bind(at)
                    .execute(&mut *conn)
                    .await
                    .map_err(super::backend_err)?;
                Ok(())
            }

            /// Records a document's new current version on a writer's connection.
            pub(super) async fn search_record_document(
                conn: &mut <<$store as super::Backend>::Db as sqlx::Database>::Connection,
                version: &maestro_core::document::DocumentVersion,
            ) -> Result<(), maestro_core::StoreError> {
                sqlx::query(super::search::OUTBOX_DOCUMENT)
                    .bind(version.document.as_str())
                    .bind(super::runs::ms(version.at))
                    .execute(&mut *conn)
                    .await
                    .map_err(super::backend_err)?;
                Ok(())
            }

            async fn search_pruned(&self) -> Result<maestro_core::search::OutboxPosition, maestro_core::StoreError> {
                let (txid, id) = sqlx::query_as::<_, (i64, i64)>(super::search::OUTBOX_PRUNED)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(super::backend_err)?;
                Ok(maestro_core::search::OutboxPosition { txid, id })
            }
        }

        #[async_trait::async_trait]
        impl maestro_core::SearchStore for $store {
            async fn outbox_after(
                &self,
                after: maestro_core::search::OutboxPosition,
                limit: u32,
            ) -> Result<Vec<maestro_core::search::OutboxEntry>, maestro_core::StoreError> {
                const SQL: &str = concat!(
                    super::search::outbox_columns!(),
                    " WHERE (txid, id) > ($1, $2)",
                    $settled,
                    " ORDER BY txid, id LIMIT $3"
                );
                let rows = sqlx::query_as::<_, super::search::OutboxRow>(SQL)
                    .bind(after.txid)
                    .bind(after.id)
                    .bind(super::runs::page(limit))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(super::backend_err)?;
                super::runs::from_rows(rows)
            }

            async fn outbox_status(
                &self,
                after: maestro_core::search::OutboxPosition,
            ) -> Result<maestro_core::search::OutboxStatus, maestro_core::StoreError> {
                const HEAD: &str = concat!(
                    "SELECT txid, id FROM search_outbox WHERE TRUE",
                    $settled,
                    " ORDER BY txid DESC, id DESC LIMIT 1"
                );
                let head = sqlx::query_as::<_, (i64, i64)>(HEAD)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(super::backend_err)?
                    .map(|(txid, id)| maestro_core::search::OutboxPosition { txid, id });
                let pending = sqlx::query_scalar::<_, i64>(super::search::OUTBOX_PENDING)
                    .bind(after.txid)
                    .bind(after.id)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(super::backend_err)?;
                Ok(maestro_core::search::OutboxStatus {
                    head,
                    pending: u64::try_from(pending).unwrap_or(0),
                    pruned_through: self.search_pruned().await?,
                })
            }

            async fn outbox_settled(&self) -> Result<maestro_core::search::OutboxPosition, maestro_core::StoreError> {
                let xmin: Option<&'static str> = $xmin;
                match xmin {
                    // Every transaction below the oldest open one has ended: all of
                    // their rows are visible to a reader that starts after this.
                    Some(sql) => {
                        let xmin = sqlx::query_scalar::<_, i64>(sql)
                            .fetch_one(&self.pool)
                            .await
                            .map_err(super::backend_err)?;
                        Ok(maestro_core::search::OutboxPosition { txid: xmin.saturating_sub(1), id: i64::MAX })
                    }
                    // Writers are serialised: the last id taken (kept or pruned).
                    None => {
                        let id = sqlx::query_scalar::<_, i64>(
                            "SELECT MAX(m) FROM (SELECT COALESCE(MAX(id), 0) AS m FROM search_outbox \
                             UNION ALL SELECT id AS m FROM search_outbox_pruned) AS ids",
                        )
                        .fetch_one(&self.pool)
                        .await
                        .map_err(super::backend_err)?;
                        Ok(maestro_core::search::OutboxPosition { txid: 0, id })
                    }
                }
            }

            async fn prune_outbox(
                &self,
                before: chrono::DateTime<chrono::Utc>,
            ) -> Result<u64, maestro_core::StoreError> {
                const DELETE: &str =
                    concat!("DELETE FROM search_outbox WHERE at < $1", $settled, " RETURNING txid, id");
                let mut tx = self.begin_write().await?;
                let deleted = sqlx::query_as::<_, (i64, i64)>(DELETE)
                    .bind(super::runs::ms(before))
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(super::backend_err)?;
                if let Some((txid, id)) = deleted.iter().max() {
                    sqlx::query(super::search::OUTBOX_MARK_PRUNED)
                        .bind(*txid)
                        .bind(*id)
                        .execute(&mut *tx)
                        .await
                        .map_err(super::backend_err)?;
                }
                tx.commit().await.map_err(super::backend_err)?;
                Ok(deleted.len() as u64)
            }

            async fn searchables(
                &self,
                kind: maestro_core::search::SearchKind,
                ids: &[String],
            ) -> Result<Vec<maestro_core::search::Searchable>, maestro_core::StoreError> {
                use maestro_core::search::SearchKind;
                let mut found = Vec::with_capacity(ids.len());
                for chunk in ids.chunks(super::search::IDS_PER_QUERY) {
                    let Some(sql) = super::search::select(kind, super::search::Shape::Ids(chunk.len()), $memory_tags)
                    else {
                        return Ok(Vec::new());
                    };
                    match kind {
                        SearchKind::Message => {
                            let mut query =
                                sqlx::query_as::<_, super::search::MessageRow>(sqlx::AssertSqlSafe(sql.as_str()));
                            for id in chunk {
                                query = query.bind(id);
                            }
                            let rows = query.fetch_all(&self.pool).await.map_err(super::backend_err)?;
                            found.extend(super::runs::from_rows::<_, maestro_core::search::Searchable>(rows)?);
                        }
                        SearchKind::Document => {
                            let mut query =
                                sqlx::query_as::<_, super::search::DocumentRow>(sqlx::AssertSqlSafe(sql.as_str()));
                            for id in chunk {
                                query = query.bind(id);
                            }
                            let rows = query.fetch_all(&self.pool).await.map_err(super::backend_err)?;
                            found.extend(super::runs::from_rows::<_, maestro_core::search::Searchable>(rows)?);
                        }
                        SearchKind::Memory => {
                            let mut query =
                                sqlx::query_as::<_, super::search::MemoryRow>(sqlx::AssertSqlSafe(sql.as_str()));
                            for id in chunk {
                                query = query.bind(id);
                            }
                            let rows = query.fetch_all(&self.pool).await.map_err(super::backend_err)?;
                            found.extend(super::runs::from_rows::<_, maestro_core::search::Searchable>(rows)?);
                        }
                    }
                }
                Ok(found)
            }

            async fn searchable_page(
                &self,
                kind: maestro_core::search::SearchKind,
                after: Option<&str>,
                limit: u32,
            ) -> Result<Vec<maestro_core::search::Searchable>, maestro_core::StoreError> {
                use maestro_core::search::SearchKind;
                let shape = if after.is_some() { super::search::Shape::After } else { super::search::Shape::First };
                let Some(sql) = super::search::select(kind, shape, $memory_tags) else {
                    return Ok(Vec::new());
                };
                let limit = super::runs::page(limit);
                match kind {
                    SearchKind::Message => {
                        let mut query =
                            sqlx::query_as::<_, super::search::MessageRow>(sqlx::AssertSqlSafe(sql.as_str()));
                        if let Some(after) = after {
                            query = query.bind(after);
                        }
                        let rows = query.bind(limit).fetch_all(&self.pool).await.map_err(super::backend_err)?;
                        super::runs::from_rows(rows)
                    }
                    SearchKind::Document => {
                        let mut query =
                            sqlx::query_as::<_, super::search::DocumentRow>(sqlx::AssertSqlSafe(sql.as_str()));
                        if let Some(after) = after {
                            query = query.bind(after);
                        }
                        let rows = query.bind(limit).fetch_all(&self.pool).await.map_err(super::backend_err)?;
                        super::runs::from_rows(rows)
                    }
                    SearchKind::Memory => {
                        let mut query =
                            sqlx::query_as::<_, super::search::MemoryRow>(sqlx::AssertSqlSafe(sql.as_str()));
                        if let Some(after) = after {
                            query = query.bind(after);
                        }
                        let rows = query.bind(limit).fetch_all(&self.pool).await.map_err(super::backend_err)?;
                        super::runs::from_rows(rows)
                    }
                }
            }
        }
    };
}
pub(super) use impl_search_queries;

#[cfg(test)]
mod tests {
    use super::*;

    /// Followers and rebuild pages search an index on SQLite.
    #[tokio::test]
    async fn outbox_reads_search_an_index_on_sqlite() {
        let after = concat!(outbox_columns!(), " WHERE (txid, id) > ($1, $2) ORDER BY txid, id LIMIT 10");
        let pages = select(SearchKind::Message, Shape::After, "m.tags").expect("messages are searchable");
        let docs = select(SearchKind::Document, Shape::After, "m.tags").expect("documents are searchable");
        let memories = select(SearchKind::Memory, Shape::After, "m.tags").expect("memories are searchable");
        crate::storage::assert_indexed_on_sqlite(&[
            ("OUTBOX_AFTER", after),
            ("OUTBOX_PENDING", OUTBOX_PENDING),
            ("MESSAGES", pages.as_str()),
            ("DOCUMENTS", docs.as_str()),
            ("MEMORIES", memories.as_str()),
        ])
        .await;
    }
}
