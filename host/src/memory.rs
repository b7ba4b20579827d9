//! Use-cases for memories (see [`maestro_core::memory`]): store (the text embedded
//! through the configured [`Embedder`]), get, edit (a new text is re-embedded), delete,
//! list with filters and a cursor, and search (the query embedded, then the nearest
//! memories of the tenant with filters; the hits' `last_used_at` is noted). Every
//! operation is scoped to a tenant: another tenant's memory is
//! [`MemoriesError::NotFound`].
//!
//! Agents (the `memory.store` tool) and the distillation of facts after runs go through
//! [`Memories::remember`]: a near-duplicate of a memory already held in the same scope
//! updates it instead of inserting another ([`Remembered`]).
//!
//! Changing the configured embedder leaves stored vectors of the old one, which are
//! never compared with the new one's: [`Memories::reembed`] re-embeds them in batches,
//! run by the [`REEMBED_JOB`] job ([`Reembed`]), which [`Memories::enqueue_reembed`]
//! enqueues at start when any exist. Until then, such memories are listed but not found
//! by search.

use std::sync::Arc;

use async_trait::async_trait;
use maestro_core::embed::{EmbedError, Embedder, EmbedderInfo};
use maestro_core::memory::{
    MAX_TOP_K, Memory, MemoryError, MemoryFilter, MemoryHit, MemoryId, MemoryPatch, MemoryScope, MemorySource,
    normalise_tags, validate_text,
};
use maestro_core::ports::{Distillation, MemoryStore};
use maestro_core::{Clock, EventSignal, Job, JobStore, MemoryNotice, NewJob, StoreError, TenantId};

use crate::jobs::{JobError, JobHandler};
use crate::random::random_bytes;

/// The kind of the job that re-embeds vectors made by another embedder.
pub const REEMBED_JOB: &str = "memory.reembed";
/// Memories re-embedded per batch (one embedder call, then one write per memory).
pub const REEMBED_BATCH: u32 = 64;
/// The cosine similarity from which [`Memories::remember`] takes a new text for a
/// restatement of a memory already held in the same scope, and updates that one.
pub const DUPLICATE_SIMILARITY: f32 = 0.95;

/// What [`Memories::remember`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remembered {
    /// Nothing near enough was held in the scope: a new memory.
    Inserted,
    /// A near-duplicate in the same scope was updated (new text and vector, tags
    /// merged, pinned if either was).
    Updated,
}

/// What a new memory holds.
#[derive(Debug, Clone)]
pub struct NewMemory {
    /// Who it is for.
    pub scope: MemoryScope,
    /// What to remember.
    pub text: String,
    /// Its tags (normalised on the way in).
    pub tags: Vec<String>,
    /// Exempt from recency decay.
    pub pinned: bool,
    /// The run and step that made it, when an agent did.
    pub source: Option<MemorySource>,
}

/// A change to a memory: fields left `None` stay.
#[derive(Debug, Clone, Default)]
pub struct MemoryEdit {
    /// A new text (re-embedded).
    pub text: Option<String>,
    /// New tags.
    pub tags: Option<Vec<String>>,
    /// Pinned or not.
    pub pinned: Option<bool>,
}

/// Why a memory operation did nothing.
#[derive(Debug, thiserror::Error)]
pub enum MemoriesError {
    /// No such memory (or another tenant's).
    #[error("memory not found")]
    NotFound,
    /// A session-scoped memory names a session that is not the tenant's.
    #[error("session not found")]
    SessionNotFound,
    /// The text, tags, scope or a filter is refused.
    #[error("{0}")]
    Invalid(#[from] MemoryError),
    /// The embedder failed or is unavailable; nothing was written.
    #[error("the embedder failed")]
    Embedding(#[source] EmbedError),
    /// The store failed.
    #[error("the memory store failed")]
    Store(#[source] StoreError),
}

impl From<StoreError> for MemoriesError {
    fn from(err: StoreError) -> Self {
        MemoriesError::Store(err)
    }
}

/// A memory of a tenant changed (its text, tags or pin) or was deleted, by this process
/// or, with a signal, by another replica, as [`Memories::changes`] announces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryChanged {
    /// The memory's tenant.
    pub tenant: TenantId,
    /// The memory.
    pub memory: MemoryId,
}

/// Changes buffered for a slow listener before it lags (and is told to re-read).
const CHANGES_BUFFER: usize = 256;

/// The memory use-cases.
#[derive(Debug, Clone)]
pub struct Memories {
    store: Arc<dyn MemoryStore>,
    embedder: Arc<dyn Embedder>,
    clock: Arc<dyn Clock>,
    changes: tokio::sync::broadcast::Sender<MemoryChanged>,
    /// Carries this process's changes to the other replicas (Postgres), and theirs here.
    signal: Option<Arc<dyn EventSignal>>,
}

impl Memories {
    /// The use-cases over the memory port, embedding with `embedder`.
    pub fn new(store: Arc<dyn MemoryStore>, embedder: Arc<dyn Embedder>, clock: Arc<dyn Clock>) -> Self {
        Self { store, embedder, clock, changes: tokio::sync::broadcast::channel(CHANGES_BUFFER).0, signal: None }
    }

    /// Carries changes across replicas: every change this process makes is signalled
    /// after its commit, and the changes other replicas signal join
    /// [`changes`](Self::changes). Call once per process (the signal's listener is
    /// registered here).
    #[must_use]
    pub fn with_signal(mut self, signal: Arc<dyn EventSignal>) -> Self {
        let changes = self.changes.clone();
        signal.listen_memories(Arc::new(move |notice: MemoryNotice| {
            // No listener is not an error.
            let _ = changes.send(MemoryChanged { tenant: notice.tenant, memory: notice.memory });
        }));
        self.signal = Some(signal);
        self
    }

    /// The memories edited, updated as near-duplicates or deleted from now on: this
    /// process's at once, and, with [`with_signal`](Self::with_signal), other replicas'
    /// as their notices arrive (new memories are not announced: nobody can be subscribed
    /// to them yet).
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<MemoryChanged> {
        self.changes.subscribe()
    }

    fn announce(&self, tenant: &TenantId, memory: &MemoryId) {
        if let Some(signal) = &self.signal {
            signal.notify_memory(MemoryNotice { tenant: tenant.clone(), memory: memory.clone() });
        }
        // No listener is not an error.
        let _ = self.changes.send(MemoryChanged { tenant: tenant.clone(), memory: memory.clone() });
    }

    /// The embedder new vectors come from.
    pub fn embedder(&self) -> &EmbedderInfo {
        self.embedder.info()
    }

    /// One text's vector, checked to be of the embedder's dimension.
    async fn embed_one(&self, text: &str) -> Result<Vec<f32>, MemoriesError> {
        let mut vectors = self.embedder.embed(&[text.to_owned()]).await.map_err(MemoriesError::Embedding)?;
        let vector = vectors.pop().filter(|v| v.len() == self.embedder.info().dimensions as usize);
        vector.ok_or_else(|| {
            MemoriesError::Embedding(EmbedError::Failed("the embedder answered no vector of its dimension".into()))
        })
    }

    /// Stores a memory of `tenant` (its text embedded first; nothing is written when
    /// embedding fails).
    pub async fn store(&self, tenant: &TenantId, new: NewMemory) -> Result<Memory, MemoriesError> {
        let text = validate_text(&new.text)?;
        let tags = normalise_tags(&new.tags)?;
        let vector = self.embed_one(&text).await?;
        self.insert(tenant, NewMemory { text, tags, ..new }, vector).await
    }

    /// Remembers `new` for `tenant`: when a memory of the same scope is a near-duplicate
    /// (cosine similarity ≥ [`DUPLICATE_SIMILARITY`] between the vectors of the
    /// configured embedder), that one is updated instead of inserting: it takes the new
    /// text and vector, keeps its tags and adds the new ones (up to
    /// [`maestro_core::memory::MAX_TAGS`], the new ones first), stays pinned if it was,
    /// and keeps its id, creation time and source. Otherwise a new memory is stored, as
    /// by [`Memories::store`]. One embedding either way; nothing is written when it fails.
    ///
    /// The search and the write are one step against every other remembering in the
    /// same tenant and scope, in this replica or another
    /// ([`MemoryStore::remember_memory`]): concurrent calls with the same new text end as
    /// one memory, the first inserting it and the others updating it.
    pub async fn remember(&self, tenant: &TenantId, new: NewMemory) -> Result<(Memory, Remembered), MemoriesError> {
        let text = validate_text(&new.text)?;
        let tags = normalise_tags(&new.tags)?;
        let vector = self.embed_one(&text).await?;
        let same_scope = match &new.scope {
            MemoryScope::Tenant => MemoryFilter { scope_kind: Some("tenant"), ..MemoryFilter::default() },
            MemoryScope::Persona(name) => MemoryFilter { persona: Some(name.clone()), ..MemoryFilter::default() },
            MemoryScope::Session(id) => MemoryFilter { session: Some(id.clone()), ..MemoryFilter::default() },
        };
        let pinned = new.pinned;
        let restate = |held: &Memory| {
            let mut merged = tags.clone();
            merged.extend(held.tags.iter().filter(|t| !tags.contains(t)).cloned());
            merged.truncate(maestro_core::memory::MAX_TAGS);
            merged.sort();
            MemoryPatch {
                text: Some((text.clone(), vector.clone(), self.embedder.info().clone())),
                tags: Some(merged),
                pinned: (pinned && !held.pinned).then_some(true),
            }
        };
        let memory = self.new_memory(tenant, NewMemory { text: text.clone(), tags: tags.clone(), ..new });
        match self.store.remember_memory(&memory, &vector, &same_scope, DUPLICATE_SIMILARITY, &restate).await {
            Ok((updated, true)) => {
                self.announce(tenant, &updated.id);
                Ok((updated, Remembered::Updated))
            }
            Ok((inserted, false)) => Ok((inserted, Remembered::Inserted)),
            Err(StoreError::NotFound(_)) => Err(MemoriesError::SessionNotFound),
            Err(err) => Err(err.into()),
        }
    }

    /// A new memory of `tenant` made now from validated `new`, by the configured embedder.
    fn new_memory(&self, tenant: &TenantId, new: NewMemory) -> Memory {
        let now = self.clock.now();
        Memory {
            id: MemoryId::from_random(random_bytes()),
            tenant: tenant.clone(),
            scope: new.scope,
            text: new.text,
            tags: new.tags,
            pinned: new.pinned,
            source: new.source,
            created_at: now,
            updated_at: now,
            last_used_at: None,
            embedder: self.embedder.info().clone(),
        }
    }

    /// Inserts a new memory of validated `new` with its `vector`.
    async fn insert(&self, tenant: &TenantId, new: NewMemory, vector: Vec<f32>) -> Result<Memory, MemoriesError> {
        let memory = self.new_memory(tenant, new);
        match self.store.insert_memories(&[(memory.clone(), vector)]).await {
            Ok(()) => Ok(memory),
            Err(StoreError::NotFound(_)) => Err(MemoriesError::SessionNotFound),
            Err(err) => Err(err.into()),
        }
    }

    /// The distillation answer recorded for `run` (see `distil.rs`), if any.
    pub async fn distillation(&self, run: &maestro_core::run::RunId) -> Result<Option<Distillation>, MemoriesError> {
        Ok(self.store.distillation(run).await?)
    }

    /// Records a run's distillation answer unless one is recorded already; returns the
    /// one stored.
    pub async fn record_distillation(&self, distillation: &Distillation) -> Result<Distillation, MemoriesError> {
        Ok(self.store.record_distillation(distillation).await?)
    }

    /// A memory of `tenant`.
    pub async fn get(&self, tenant: &TenantId, id: &MemoryId) -> Result<Memory, MemoriesError> {
        self.store.memory(tenant, id).await?.ok_or(MemoriesError::NotFound)
    }

    /// Edits a memory of `tenant`: a new text is validated and re-embedded, tags
    /// normalised; an edit that changes nothing still moves `updated_at`.
    pub async fn edit(&self, tenant: &TenantId, id: &MemoryId, edit: MemoryEdit) -> Result<Memory, MemoriesError> {
        let tags = edit.tags.as_deref().map(normalise_tags).transpose()?;
        let text = match edit.text {
            Some(text) => {
                let text = validate_text(&text)?;
                // Not found before paying for an embedding.
                self.get(tenant, id).await?;
                let vector = self.embed_one(&text).await?;
                Some((text, vector, self.embedder.info().clone()))
            }
            None => None,
        };
        let patch = MemoryPatch { text, tags, pinned: edit.pinned };
        let edited =
            self.store.update_memory(tenant, id, &patch, self.clock.now()).await?.ok_or(MemoriesError::NotFound)?;
        self.announce(tenant, id);
        Ok(edited)
    }

    /// Deletes a memory of `tenant`.
    pub async fn delete(&self, tenant: &TenantId, id: &MemoryId) -> Result<(), MemoriesError> {
        if !self.store.delete_memory(tenant, id).await? {
            return Err(MemoriesError::NotFound);
        }
        self.announce(tenant, id);
        Ok(())
    }

    /// A page of a tenant's memories passing `filter`, newest first.
    pub async fn list(
        &self,
        tenant: &TenantId,
        filter: &MemoryFilter,
        before: Option<&MemoryId>,
        limit: u32,
    ) -> Result<Vec<Memory>, MemoriesError> {
        Ok(self.store.memories(tenant, filter, before, limit.clamp(1, maestro_core::run::MAX_PAGE)).await?)
    }

    /// The `k` memories of `tenant` passing `filter` nearest in meaning to `query`
    /// (best first, with their cosine similarity); notes their `last_used_at`.
    pub async fn search(
        &self,
        tenant: &TenantId,
        query: &str,
        filter: &MemoryFilter,
        k: u32,
    ) -> Result<Vec<MemoryHit>, MemoriesError> {
        self.search_any(tenant, query, std::slice::from_ref(filter), k).await
    }

    /// The `k` memories of `tenant` passing any of `filters` nearest in meaning to
    /// `query` (one embedding, one search per filter, merged best first without
    /// repeats); notes the `last_used_at` of those returned. No filter: no hits.
    pub async fn search_any(
        &self,
        tenant: &TenantId,
        query: &str,
        filters: &[MemoryFilter],
        k: u32,
    ) -> Result<Vec<MemoryHit>, MemoriesError> {
        let query = validate_text(query)?;
        if !(1..=MAX_TOP_K).contains(&k) {
            return Err(MemoryError::Filter(format!("k must be between 1 and {MAX_TOP_K}")).into());
        }
        if filters.is_empty() {
            return Ok(Vec::new());
        }
        let vector = self.embed_one(&query).await?;
        let mut hits: Vec<MemoryHit> = Vec::new();
        for filter in filters {
            for hit in self.store.search_memories(tenant, self.embedder.info(), &vector, filter, k).await? {
                if !hits.iter().any(|h| h.memory.id == hit.memory.id) {
                    hits.push(hit);
                }
            }
        }
        hits.sort_by(|a, b| b.score.total_cmp(&a.score));
        hits.truncate(k as usize);
        let ids: Vec<MemoryId> = hits.iter().map(|h| h.memory.id.clone()).collect();
        if let Err(err) = self.store.touch_memories(tenant, &ids, self.clock.now()).await {
            // Recency bookkeeping only: the search itself succeeded.
            tracing::warn!(error = %err, "cannot note when memories were used");
        }
        Ok(hits)
    }

    /// Re-embeds up to `batch` memories whose vectors another embedder made; returns how
    /// many it replaced (0: none left, or none whose text stayed put).
    pub async fn reembed(&self, batch: u32) -> Result<usize, MemoriesError> {
        let stale = self.store.stale_memories(self.embedder.info(), batch).await?;
        if stale.is_empty() {
            return Ok(0);
        }
        let texts: Vec<String> = stale.iter().map(|s| s.text.clone()).collect();
        let vectors = self.embedder.embed(&texts).await.map_err(MemoriesError::Embedding)?;
        if vectors.len() != stale.len() {
            return Err(MemoriesError::Embedding(EmbedError::Failed("the embedder answered too few vectors".into())));
        }
        let mut replaced = 0;
        for (memory, vector) in stale.iter().zip(&vectors) {
            // `false`: the text changed meanwhile, and its edit embedded it anew.
            if self.store.replace_vector(memory, vector, self.embedder.info()).await? {
                replaced += 1;
            }
        }
        Ok(replaced)
    }

    /// Enqueues a [`REEMBED_JOB`] when some stored vectors were made by another embedder
    /// than the configured one (called at start); returns whether it did.
    pub async fn enqueue_reembed(&self, jobs: &dyn JobStore) -> Result<bool, StoreError> {
        if self.store.stale_memories(self.embedder.info(), 1).await?.is_empty() {
            return Ok(false);
        }
        let now = self.clock.now();
        let space: String = self.embedder.info().key().chars().filter(|c| c.is_ascii_graphic()).take(120).collect();
        let key = format!("{REEMBED_JOB}:{space}:{}", now.timestamp_millis());
        let job = NewJob::new(REEMBED_JOB, &key, &serde_json::json!({}), now)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        jobs.enqueue(&job, now).await?;
        tracing::info!(embedder = %self.embedder.info(), "memories of another embedder found: re-embedding in the background");
        Ok(true)
    }
}

/// The [`REEMBED_JOB`] handler: re-embeds in batches of [`REEMBED_BATCH`] until none
/// is left. Idempotent: a memory already re-embedded is no longer stale.
#[derive(Debug, Clone)]
pub struct Reembed(pub Arc<Memories>);

#[async_trait]
impl JobHandler for Reembed {
    async fn handle(&self, _job: &Job) -> Result<(), JobError> {
        let mut done = 0usize;
        loop {
            match self.0.reembed(REEMBED_BATCH).await {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(MemoriesError::Embedding(EmbedError::Invalid(reason))) => {
                    return Err(JobError::Permanent(format!("cannot re-embed memories: {reason}")));
                }
                Err(err) => return Err(JobError::Retry(crate::telemetry::error_chain(&err))),
            }
        }
        tracing::info!(memories = done, embedder = %self.0.embedder(), "memories re-embedded");
        Ok(())
    }
}
