//! Use-cases for living documents (see [`maestro_core::document`]): create, read, list,
//! history, edit / replace / roll back against a base version, and diff. Shared by the
//! HTTP API and the `documents.*` host tools; every operation is scoped to a tenant
//! (another tenant's document is [`DocumentsError::NotFound`]).
//!
//! Writes name the version they were made against (the *base*). A base that is not the
//! current version, or that another writer moved past while this one worked, writes
//! nothing and answers [`DocumentsError::Stale`] with the document as it now stands, so
//! the writer can redo its edit on the current text. Search-and-replace edits are
//! applied to the base's content; one that does not apply writes nothing either
//! ([`DocumentsError::Rejected`], with the current text).

use std::sync::Arc;

use maestro_core::document::{
    Appended, DocAuthor, Document, DocumentError, DocumentId, DocumentKind, DocumentScope, DocumentVersion, Edit,
    TextEdit, VersionSummary, apply_edits, unified_diff, validate_content, validate_title,
};
use maestro_core::run::{MAX_PAGE, SessionId};
use maestro_core::{Clock, DocumentNotice, DocumentStore, EventSignal, StoreError, TenantId};

use crate::random::random_bytes;

/// A document with the content of its current version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    /// The document (its `version` is the content's).
    pub document: Document,
    /// The content of that version.
    pub content: String,
}

/// What a new document holds.
#[derive(Debug, Clone)]
pub struct NewDocument {
    /// Its title.
    pub title: String,
    /// Markdown or JSON.
    pub kind: DocumentKind,
    /// The first version's content.
    pub content: String,
    /// The session it is attached to; `None`: shared across the tenant.
    pub session: Option<SessionId>,
}

/// Why a document operation did nothing.
#[derive(Debug, thiserror::Error)]
pub enum DocumentsError {
    /// No such document (or another tenant's).
    #[error("document not found")]
    NotFound,
    /// The document exists but not this version.
    #[error("version {0} not found")]
    VersionNotFound(i64),
    /// The session to attach a new document to is not the tenant's.
    #[error("session not found")]
    SessionNotFound,
    /// The title or content is refused.
    #[error("{0}")]
    Invalid(DocumentError),
    /// An edit does not apply to the base's content (or its result is refused);
    /// nothing was written.
    #[error("{reason}; nothing was written (the document is at version {})", current.document.version)]
    Rejected {
        /// Why.
        reason: DocumentError,
        /// The document as it now stands.
        current: Box<Current>,
    },
    /// The base is not the current version; nothing was written.
    #[error(
        "version {base} is not the current version {}; nothing was written (edit the current version)",
        current.document.version
    )]
    Stale {
        /// The base the writer named.
        base: i64,
        /// The document as it now stands.
        current: Box<Current>,
    },
    /// The store failed.
    #[error("the document store failed")]
    Store(#[source] StoreError),
}

impl From<StoreError> for DocumentsError {
    fn from(err: StoreError) -> Self {
        DocumentsError::Store(err)
    }
}

/// The document use-cases.
#[derive(Debug, Clone)]
pub struct Documents {
    store: Arc<dyn DocumentStore>,
    clock: Arc<dyn Clock>,
    changes: tokio::sync::broadcast::Sender<DocumentChanged>,
    /// Carries this process's versions to the other replicas (Postgres), and theirs here.
    signal: Option<Arc<dyn EventSignal>>,
}

/// A version written (created or appended), by this process or, with a signal, by
/// another replica, as [`Documents::changes`] announces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentChanged {
    /// The document's tenant.
    pub tenant: TenantId,
    /// The document.
    pub document: DocumentId,
    /// The version written.
    pub version: i64,
}

/// Changes buffered for a slow listener before it lags (and is told to re-read).
const CHANGES_BUFFER: usize = 256;

impl Documents {
    /// Builds the use-cases over the document port.
    pub fn new(store: Arc<dyn DocumentStore>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock, changes: tokio::sync::broadcast::channel(CHANGES_BUFFER).0, signal: None }
    }

    /// Carries changes across replicas: every version this process writes is signalled
    /// after its commit, and the versions other replicas signal join [`changes`](Self::changes).
    /// Call once per process (the signal's listener is registered here).
    #[must_use]
    pub fn with_signal(mut self, signal: Arc<dyn EventSignal>) -> Self {
        let changes = self.changes.clone();
        signal.listen_documents(Arc::new(move |notice: DocumentNotice| {
            // No listener is not an error.
            let _ = changes.send(DocumentChanged {
                tenant: notice.tenant,
                document: notice.document,
                version: notice.version,
            });
        }));
        self.signal = Some(signal);
        self
    }

    /// The versions written from now on, whoever writes them (runs, HTTP, MCP): this
    /// process's at once, and, with [`with_signal`](Self::with_signal), other replicas'
    /// as their notices arrive (a lost notice is a missed change, never a wrong one).
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<DocumentChanged> {
        self.changes.subscribe()
    }

    /// Announces a committed version in process and to the other replicas.
    fn announce(&self, document: &Document) {
        let changed = DocumentChanged {
            tenant: document.tenant.clone(),
            document: document.id.clone(),
            version: document.version,
        };
        if let Some(signal) = &self.signal {
            signal.notify_document(DocumentNotice {
                tenant: changed.tenant.clone(),
                document: changed.document.clone(),
                version: changed.version,
            });
        }
        // No listener is not an error.
        let _ = self.changes.send(changed);
    }

    /// Creates a document of `tenant` with its first version.
    pub async fn create(
        &self,
        tenant: &TenantId,
        new: NewDocument,
        author: DocAuthor,
    ) -> Result<Current, DocumentsError> {
        validate_title(&new.title).map_err(DocumentsError::Invalid)?;
        validate_content(new.kind, &new.content).map_err(DocumentsError::Invalid)?;
        let now = self.clock.now();
        let document = Document {
            id: DocumentId::from_random(random_bytes()),
            tenant: tenant.clone(),
            session: new.session,
            title: new.title,
            kind: new.kind,
            version: 1,
            created_at: now,
            updated_at: now,
            created_by: author.clone(),
        };
        let first = DocumentVersion {
            document: document.id.clone(),
            version: 1,
            content: new.content,
            edit: Edit::Create,
            author,
            at: now,
        };
        match self.store.create_document(&document, &first).await {
            Ok(()) => {
                self.announce(&document);
                Ok(Current { document, content: first.content })
            }
            Err(StoreError::NotFound(_)) => Err(DocumentsError::SessionNotFound),
            Err(err) => Err(err.into()),
        }
    }

    /// A document with its current content.
    pub async fn get(&self, tenant: &TenantId, id: &DocumentId) -> Result<Current, DocumentsError> {
        let document = self.store.document(tenant, id).await?.ok_or(DocumentsError::NotFound)?;
        // Versions are immutable: the one the document names is read consistently even
        // if a newer one lands in between.
        let version = self.store.version(tenant, id, document.version).await?.ok_or(DocumentsError::NotFound)?;
        Ok(Current { document, content: version.content })
    }

    /// A page of a tenant's documents in `scope`, newest first, after the cursor
    /// `before`; at most `limit` (capped at [`MAX_PAGE`]).
    pub async fn list(
        &self,
        tenant: &TenantId,
        scope: &DocumentScope,
        before: Option<&DocumentId>,
        limit: u32,
    ) -> Result<Vec<Document>, DocumentsError> {
        Ok(self.store.documents(tenant, scope, before, limit.clamp(1, MAX_PAGE)).await?)
    }

    /// A page of a document's history (without content), oldest first.
    pub async fn versions(
        &self,
        tenant: &TenantId,
        id: &DocumentId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<VersionSummary>, DocumentsError> {
        let page = self.store.versions(tenant, id, after, limit.clamp(1, MAX_PAGE)).await?;
        if page.is_empty() && self.store.document(tenant, id).await?.is_none() {
            return Err(DocumentsError::NotFound);
        }
        Ok(page)
    }

    /// One version, with its content.
    pub async fn version(
        &self,
        tenant: &TenantId,
        id: &DocumentId,
        version: i64,
    ) -> Result<DocumentVersion, DocumentsError> {
        match self.store.version(tenant, id, version).await? {
            Some(found) => Ok(found),
            None => match self.store.document(tenant, id).await? {
                Some(_) => Err(DocumentsError::VersionNotFound(version)),
                None => Err(DocumentsError::NotFound),
            },
        }
    }

    /// Applies search-and-replace edits to version `base`, writing version `base + 1`.
    pub async fn edit(
        &self,
        tenant: &TenantId,
        id: &DocumentId,
        base: i64,
        edits: Vec<TextEdit>,
        author: DocAuthor,
    ) -> Result<Current, DocumentsError> {
        let current = self.base(tenant, id, base).await?;
        let content = match apply_edits(&current.content, &edits) {
            Ok(content) => content,
            Err(reason) => return Err(DocumentsError::Rejected { reason, current: Box::new(current) }),
        };
        self.write(tenant, current, content, Edit::Patch { edits }, author).await
    }

    /// Replaces version `base`'s content, writing version `base + 1`.
    pub async fn put(
        &self,
        tenant: &TenantId,
        id: &DocumentId,
        base: i64,
        content: String,
        author: DocAuthor,
    ) -> Result<Current, DocumentsError> {
        let current = self.base(tenant, id, base).await?;
        self.write(tenant, current, content, Edit::Replace, author).await
    }

    /// Writes a new version holding version `to`'s content (history is kept: the
    /// versions after `to` stay). `base` is the version the writer saw; `None`: the
    /// current one.
    pub async fn rollback(
        &self,
        tenant: &TenantId,
        id: &DocumentId,
        to: i64,
        base: Option<i64>,
        author: DocAuthor,
    ) -> Result<Current, DocumentsError> {
        let old = self.version(tenant, id, to).await?;
        let current = match base {
            Some(base) => self.base(tenant, id, base).await?,
            None => self.get(tenant, id).await?,
        };
        self.write(tenant, current, old.content, Edit::Rollback { to }, author).await
    }

    /// The unified diff from version `from` to version `to` (headers `<id>@v<n>`).
    pub async fn diff(&self, tenant: &TenantId, id: &DocumentId, from: i64, to: i64) -> Result<String, DocumentsError> {
        let old = self.version(tenant, id, from).await?;
        let new = self.version(tenant, id, to).await?;
        Ok(unified_diff(&old.content, &new.content, &format!("{id}@v{from}"), &format!("{id}@v{to}")))
    }

    /// The document at `base`, which must be its current version.
    async fn base(&self, tenant: &TenantId, id: &DocumentId, base: i64) -> Result<Current, DocumentsError> {
        let current = self.get(tenant, id).await?;
        if current.document.version != base {
            return Err(DocumentsError::Stale { base, current: Box::new(current) });
        }
        Ok(current)
    }

    /// Appends `content` on top of `current` (its version is the base).
    async fn write(
        &self,
        tenant: &TenantId,
        current: Current,
        content: String,
        edit: Edit,
        author: DocAuthor,
    ) -> Result<Current, DocumentsError> {
        if let Err(reason) = validate_content(current.document.kind, &content) {
            return Err(DocumentsError::Rejected { reason, current: Box::new(current) });
        }
        let base = current.document.version;
        let version = DocumentVersion {
            document: current.document.id.clone(),
            version: base + 1,
            content,
            edit,
            author,
            at: self.clock.now(),
        };
        match self.store.append_version(tenant, base, &version).await {
            Ok(Appended::Written(document)) => {
                self.announce(&document);
                Ok(Current { document, content: version.content })
            }
            Ok(Appended::Stale { .. }) => {
                let now = self.get(tenant, &current.document.id).await?;
                Err(DocumentsError::Stale { base, current: Box::new(now) })
            }
            Err(StoreError::NotFound(_)) => Err(DocumentsError::NotFound),
            Err(err) => Err(err.into()),
        }
    }
}
