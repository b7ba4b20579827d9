//! [`maestro_core::DocumentStore`]: documents and their append-only versions. The same
//! SQL on both backends, expanded per store type by [`impl_document_queries!`] (like
//! `shared.rs` and `runs.rs`); rows decode into `FromRow` structs converted to domain
//! types here.
//!
//! Appending a version is one write transaction (the backend's `begin_write`: SQLite
//! `BEGIN IMMEDIATE`): a conditional update moves the document from the base version to
//! the next (`… WHERE version = $base`) and only then is the version row inserted. On
//! Postgres a concurrent writer waits for the first one's row lock and then re-checks
//! the condition against the committed row, so it finds the base gone and writes
//! nothing; on SQLite writers are serialised outright.

use chrono::{DateTime, Utc};
use maestro_core::document::{DocAuthor, Document, DocumentId, DocumentKind, DocumentVersion, Edit, VersionSummary};
use maestro_core::run::SessionId;
use maestro_core::{StoreError, TenantId};

/// Columns of `documents`, read by name into [`DocumentRow`].
macro_rules! document_columns {
    () => {
        "id, tenant_id, session_id, title, kind, version, created_by, created_at, updated_at"
    };
}

pub(super) const INSERT_DOCUMENT: &str = "INSERT INTO documents (id, tenant_id, session_id, title, kind, version, \
     created_by, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
pub(super) const INSERT_VERSION: &str = "INSERT INTO document_versions (document_id, version, content, bytes, edit, \
     author, at) VALUES ($1, $2, $3, $4, $5, $6, $7)";
/// A document ($1) of a tenant ($2).
pub(super) const DOCUMENT: &str =
    concat!("SELECT ", document_columns!(), " FROM documents WHERE id = $1 AND tenant_id = $2");
/// The scope of a listing: a tenant ($1); every document when $2 is NULL, else those of
/// session $2, and the shared ones too when $3.
macro_rules! documents_where {
    () => {
        " FROM documents WHERE tenant_id = $1 AND ($2 IS NULL OR session_id = $2 OR ($3 AND session_id IS NULL))"
    };
}
/// A tenant's newest documents in scope, at most $4.
pub(super) const DOCUMENTS: &str =
    concat!("SELECT ", document_columns!(), documents_where!(), " ORDER BY created_at DESC, id DESC LIMIT $4");
/// The same, older than one of the tenant's documents ($5). A cursor that is not one of
/// the tenant's documents compares with NULL: an empty page.
pub(super) const DOCUMENTS_BEFORE: &str = concat!(
    "SELECT ",
    document_columns!(),
    documents_where!(),
    " AND (created_at, id) < (SELECT created_at, id FROM documents WHERE id = $5 AND tenant_id = $1)",
    " ORDER BY created_at DESC, id DESC LIMIT $4"
);
/// A document's ($1, of tenant $2) versions after $3, at most $4, without content.
pub(super) const VERSIONS: &str = "SELECT version, bytes, edit, author, at FROM document_versions \
     WHERE document_id = $1 AND version > $3 \
     AND EXISTS (SELECT 1 FROM documents WHERE id = $1 AND tenant_id = $2) ORDER BY version LIMIT $4";
/// One version ($3) of a document ($1, of tenant $2).
pub(super) const VERSION: &str = "SELECT document_id, version, content, edit, author, at FROM document_versions \
     WHERE document_id = $1 AND version = $3 \
     AND EXISTS (SELECT 1 FROM documents WHERE id = $1 AND tenant_id = $2)";
/// Moves a document ($1, of tenant $2) from version $3 to $3 + 1 at $4.
pub(super) const ADVANCE: &str = concat!(
    "UPDATE documents SET version = version + 1, updated_at = $4 ",
    "WHERE id = $1 AND tenant_id = $2 AND version = $3 RETURNING ",
    document_columns!()
);
/// A document's ($1, of tenant $2) current version.
pub(super) const CURRENT: &str = "SELECT version FROM documents WHERE id = $1 AND tenant_id = $2";

/// A raw `documents` row.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct DocumentRow {
    id: String,
    tenant_id: String,
    session_id: Option<String>,
    title: String,
    kind: String,
    version: i64,
    created_by: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<DocumentRow> for Document {
    type Error = StoreError;

    fn try_from(row: DocumentRow) -> Result<Self, StoreError> {
        let what = format!("document {}", row.id);
        Ok(Document {
            id: DocumentId::parse(&row.id).map_err(|e| corrupt(&what, e))?,
            tenant: TenantId::parse(&row.tenant_id).map_err(|e| corrupt(&what, e))?,
            session: row.session_id.as_deref().map(SessionId::parse).transpose().map_err(|e| corrupt(&what, e))?,
            title: row.title,
            kind: DocumentKind::parse(&row.kind).ok_or_else(|| corrupt(&what, format!("kind {}", row.kind)))?,
            version: row.version,
            created_by: from_json::<DocAuthor>(&what, "created_by", &row.created_by)?,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

/// A raw `document_versions` row without content.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct SummaryRow {
    version: i64,
    bytes: i64,
    edit: String,
    author: String,
    at: DateTime<Utc>,
}

impl TryFrom<SummaryRow> for VersionSummary {
    type Error = StoreError;

    fn try_from(row: SummaryRow) -> Result<Self, StoreError> {
        let what = format!("document version {}", row.version);
        Ok(VersionSummary {
            version: row.version,
            bytes: row.bytes,
            edit: from_json::<Edit>(&what, "edit", &row.edit)?,
            author: from_json::<DocAuthor>(&what, "author", &row.author)?,
            at: row.at,
        })
    }
}

/// A raw `document_versions` row.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct VersionRow {
    document_id: String,
    version: i64,
    content: String,
    edit: String,
    author: String,
    at: DateTime<Utc>,
}

impl TryFrom<VersionRow> for DocumentVersion {
    type Error = StoreError;

    fn try_from(row: VersionRow) -> Result<Self, StoreError> {
        let what = format!("version {} of document {}", row.version, row.document_id);
        Ok(DocumentVersion {
            document: DocumentId::parse(&row.document_id).map_err(|e| corrupt(&what, e))?,
            version: row.version,
            content: row.content,
            edit: from_json::<Edit>(&what, "edit", &row.edit)?,
            author: from_json::<DocAuthor>(&what, "author", &row.author)?,
            at: row.at,
        })
    }
}

/// A content's size as stored.
pub(super) fn bytes(content: &str) -> i64 {
    i64::try_from(content.len()).unwrap_or(i64::MAX)
}

fn from_json<T: serde::de::DeserializeOwned>(what: &str, column: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| corrupt(what, format!("{column}: {e}")))
}

fn corrupt(what: &str, err: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {err}"))
}

/// Implements [`maestro_core::DocumentStore`] for a store type with a `pool` field and
/// a `begin_write` method.
macro_rules! impl_document_queries {
    ($store:ty) => {
        impl $store {
            /// Inserts a version row on the writer's connection.
            async fn document_insert_version(
                conn: &mut <<$store as super::Backend>::Db as sqlx::Database>::Connection,
                version: &maestro_core::document::DocumentVersion,
            ) -> Result<(), maestro_core::StoreError> {
                sqlx::query(super::documents::INSERT_VERSION)
                    .bind(version.document.as_str())
                    .bind(version.version)
                    .bind(&version.content)
                    .bind(super::documents::bytes(&version.content))
                    .bind(super::runs::to_json(&version.edit)?)
                    .bind(super::runs::to_json(&version.author)?)
                    .bind(super::runs::ms(version.at))
                    .execute(&mut *conn)
                    .await
                    .map_err(super::map_err(&format!(
                        "version {} of document {}",
                        version.version, version.document
                    )))?;
                Self::search_record_document(&mut *conn, version).await?;
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl maestro_core::DocumentStore for $store {
            async fn create_document(
                &self,
                document: &maestro_core::document::Document,
                first: &maestro_core::document::DocumentVersion,
            ) -> Result<(), maestro_core::StoreError> {
                let mut tx = self.begin_write().await?;
                sqlx::query(super::documents::INSERT_DOCUMENT)
                    .bind(document.id.as_str())
                    .bind(document.tenant.as_str())
                    .bind(document.session.as_ref().map(|s| s.as_str()))
                    .bind(&document.title)
                    .bind(document.kind.as_str())
                    .bind(first.version)
                    .bind(super::runs::to_json(&document.created_by)?)
                    .bind(super::runs::ms(document.created_at))
                    .bind(super::runs::ms(document.updated_at))
                    .execute(&mut *tx)
                    .await
                    .map_err(super::map_err(&format!("document {}", document.id)))?;
                Self::document_insert_version(&mut tx, first).await?;
                tx.commit().await.map_err(super::backend_err)?;
                Ok(())
            }

            async fn document(
                &self,
                tenant: &maestro_core::TenantId,
                id: &maestro_core::document::DocumentId,
            ) -> Result<Option<maestro_core::document::Document>, maestro_core::StoreError> {
                sqlx::query_as::<_, super::documents::DocumentRow>(super::documents::DOCUMENT)
                    .bind(id.as_str())
                    .bind(tenant.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(super::backend_err)?
                    .map(maestro_core::document::Document::try_from)
                    .transpose()
            }

            async fn documents(
                &self,
                tenant: &maestro_core::TenantId,
                scope: &maestro_core::document::DocumentScope,
                before: Option<&maestro_core::document::DocumentId>,
                limit: u32,
            ) -> Result<Vec<maestro_core::document::Document>, maestro_core::StoreError> {
                use maestro_core::document::DocumentScope;
                let (session, shared) = match scope {
                    DocumentScope::All => (None, false),
                    DocumentScope::Session(s) => (Some(s.as_str()), false),
                    DocumentScope::SessionAndShared(s) => (Some(s.as_str()), true),
                };
                let sql =
                    if before.is_some() { super::documents::DOCUMENTS_BEFORE } else { super::documents::DOCUMENTS };
                let mut query = sqlx::query_as::<_, super::documents::DocumentRow>(sql)
                    .bind(tenant.as_str())
                    .bind(session)
                    .bind(shared)
                    .bind(super::runs::page(limit));
                if let Some(before) = before {
                    query = query.bind(before.as_str());
                }
                let rows = query.fetch_all(&self.pool).await.map_err(super::backend_err)?;
                super::runs::from_rows(rows)
            }

            async fn versions(
                &self,
                tenant: &maestro_core::TenantId,
                id: &maestro_core::document::DocumentId,
                after: i64,
                limit: u32,
            ) -> Result<Vec<maestro_core::document::VersionSummary>, maestro_core::StoreError> {
                let rows = sqlx::query_as::<_, super::documents::SummaryRow>(super::documents::VERSIONS)
                    .bind(id.as_str())
                    .bind(tenant.as_str())
                    .bind(after)
                    .bind(super::runs::page(limit))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(super::backend_err)?;
                super::runs::from_rows(rows)
            }

            async fn version(
                &self,
                tenant: &maestro_core::TenantId,
                id: &maestro_core::document::DocumentId,
                version: i64,
            ) -> Result<Option<maestro_core::document::DocumentVersion>, maestro_core::StoreError> {
                sqlx::query_as::<_, super::documents::VersionRow>(super::documents::VERSION)
                    .bind(id.as_str())
                    .bind(tenant.as_str())
                    .bind(version)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(super::backend_err)?
                    .map(maestro_core::document::DocumentVersion::try_from)
                    .transpose()
            }

            async fn append_version(
                &self,
                tenant: &maestro_core::TenantId,
                base: i64,
                version: &maestro_core::document::DocumentVersion,
            ) -> Result<maestro_core::document::Appended, maestro_core::StoreError> {
                use maestro_core::document::{Appended, Document};
                let id = &version.document;
                if version.version != base.saturating_add(1) {
                    return Err(maestro_core::StoreError::Conflict(format!(
                        "version {} of document {id} on base {base}",
                        version.version
                    )));
                }
                let mut tx = self.begin_write().await?;
                let advanced = sqlx::query_as::<_, super::documents::DocumentRow>(super::documents::ADVANCE)
                    .bind(id.as_str())
                    .bind(tenant.as_str())
                    .bind(base)
                    .bind(super::runs::ms(version.at))
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(super::backend_err)?;
                let Some(row) = advanced else {
                    let current = sqlx::query_scalar::<_, i64>(super::documents::CURRENT)
                        .bind(id.as_str())
                        .bind(tenant.as_str())
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(super::backend_err)?;
                    tx.rollback().await.map_err(super::backend_err)?;
                    return match current {
                        Some(current) => Ok(Appended::Stale { current }),
                        None => Err(maestro_core::StoreError::NotFound(format!("document {id}"))),
                    };
                };
                let document = Document::try_from(row)?;
                Self::document_insert_version(&mut tx, version).await?;
                tx.commit().await.map_err(super::backend_err)?;
                Ok(Appended::Written(document))
            }
        }
    };
}
pub(super) use impl_document_queries;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every read and the conditional update search an index on SQLite (no table scan,
    /// no sort step): listings and histories stay fast however many documents and
    /// versions a tenant has.
    #[tokio::test]
    async fn every_read_searches_an_index_on_sqlite() {
        let reads = [
            ("DOCUMENT", DOCUMENT),
            ("DOCUMENTS", DOCUMENTS),
            ("DOCUMENTS_BEFORE", DOCUMENTS_BEFORE),
            ("VERSIONS", VERSIONS),
            ("VERSION", VERSION),
            ("ADVANCE", ADVANCE),
            ("CURRENT", CURRENT),
        ];
        crate::storage::assert_indexed_on_sqlite(&reads).await;
    }
}
