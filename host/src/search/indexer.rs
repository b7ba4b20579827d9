//! The one task that writes the index: follows the outbox, applies changes, commits on
//! a cadence with the watermark in the payload, reloads the reader, prunes the outbox,
//! and rebuilds from the tables when asked or when it cannot follow.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use maestro_core::search::{OutboxEntry, OutboxPosition, SearchKind, Searchable};
use tokio_util::sync::CancellationToken;

use super::{FullText, IndexStatus, Payload, REBUILD_REQUEST, SearchError, schema};

/// Objects read per page during a rebuild.
const REBUILD_PAGE: u32 = 500;
/// How often the outbox is pruned and the watermark checked against the pruning.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

pub(super) struct Indexer {
    index: FullText,
    /// Applied through here (committed or not).
    applied: OutboxPosition,
    /// Changes applied since the last commit.
    uncommitted: usize,
    last_commit: Instant,
}

impl Indexer {
    pub(super) fn new(index: FullText) -> Self {
        let applied = index.status().watermark.unwrap_or_default();
        Self { index, applied, uncommitted: 0, last_commit: Instant::now() }
    }

    /// Follows the outbox until `stop`.
    pub(super) async fn run(mut self, stop: CancellationToken) {
        let mut last_prune: Option<Instant> = None;
        let mut failures = 0u32;
        while !stop.is_cancelled() {
            if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                last_prune = Some(Instant::now());
                if let Err(err) = self.prune_and_check().await {
                    tracing::warn!(error = %err, "cannot prune the search outbox");
                }
            }
            let rebuild_file = self.index.inner.settings.dir.join(REBUILD_REQUEST);
            if rebuild_file.exists() {
                self.index.request_rebuild();
                let _ = std::fs::remove_file(&rebuild_file);
            }
            let step = if self.index.needs_rebuild() { self.rebuild().await.map(|()| true) } else { self.step().await };
            let idle = match step {
                Ok(more) => {
                    failures = 0;
                    !more
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %err, failures, "the search indexer failed; retrying");
                    true
                }
            };
            if idle {
                let wait = self.index.inner.settings.poll_interval.saturating_mul(failures.clamp(1, 25));
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
        if self.uncommitted > 0
            && let Err(err) = self.commit().await
        {
            tracing::warn!(error = %err, "cannot commit the search index at shutdown");
        }
        // Let running merges finish and write their metas before the process moves on.
        let index = self.index.clone();
        let finished = blocking(move || {
            let taken = writer(&index.inner)?.take();
            match taken {
                Some(writer) => writer.wait_merging_threads().map_err(SearchError::from),
                None => Ok(()),
            }
        })
        .await;
        if let Err(err) = finished {
            tracing::warn!(error = %err, "the search index's merges failed at shutdown");
        }
    }

    /// Applies one batch and commits when due; returns whether more rows are waiting.
    async fn step(&mut self) -> Result<bool, SearchError> {
        let settings = &self.index.inner.settings;
        let batch = u32::try_from(settings.commit_batch.max(1)).unwrap_or(u32::MAX);
        let entries = self.index.inner.store.outbox_after(self.applied, batch).await?;
        let full = entries.len() == batch as usize;
        if let Some(last) = entries.last() {
            let last = last.position;
            self.apply(&entries).await?;
            self.applied = last;
            self.uncommitted += entries.len();
        }
        let due = self.last_commit.elapsed() >= settings.commit_interval || self.uncommitted >= settings.commit_batch;
        if self.uncommitted > 0 && due {
            self.commit().await?;
        }
        Ok(full)
    }

    /// Catches up with the outbox and commits.
    pub(super) async fn catch_up(&mut self) -> Result<(), SearchError> {
        if self.index.needs_rebuild() {
            return self.rebuild().await;
        }
        while self.step().await? {}
        if self.uncommitted > 0 {
            self.commit().await?;
        }
        Ok(())
    }

    /// Fetches the changed objects' current content and replaces them in the writer.
    async fn apply(&self, entries: &[OutboxEntry]) -> Result<(), SearchError> {
        let mut ids: HashMap<SearchKind, Vec<String>> = HashMap::new();
        let mut keys: Vec<(SearchKind, String)> = Vec::new();
        let mut seen = HashSet::new();
        for entry in entries {
            let key = (entry.change.kind, entry.change.object.clone());
            if seen.insert(key.clone()) {
                ids.entry(key.0).or_default().push(key.1.clone());
                keys.push(key);
            }
        }
        let mut found: HashMap<(SearchKind, String), Searchable> = HashMap::new();
        for (kind, ids) in ids {
            for object in self.index.inner.store.searchables(kind, &ids).await? {
                found.insert((object.kind, object.id.clone()), object);
            }
        }
        let index = self.index.clone();
        blocking(move || {
            let inner = &index.inner;
            let mut guard = writer(inner)?;
            let writer = open_writer(&mut guard)?;
            for key in keys {
                writer.delete_term(schema::key(&inner.fields, key.0.as_str(), &key.1));
                if let Some(object) = found.get(&key) {
                    writer.add_document(schema::document(&inner.fields, object))?;
                }
            }
            Ok(())
        })
        .await
    }

    /// Commits what was applied, with the watermark, and reloads the reader.
    async fn commit(&mut self) -> Result<(), SearchError> {
        let index = self.index.clone();
        let payload = Payload { watermark: self.applied, committed_at: index.inner.clock.now().timestamp_millis() };
        let docs = blocking(move || {
            let inner = &index.inner;
            let mut guard = writer(inner)?;
            let writer = open_writer(&mut guard)?;
            let text = serde_json::to_string(&payload).map_err(|e| SearchError::Io(std::io::Error::other(e)))?;
            let mut prepared = writer.prepare_commit()?;
            prepared.set_payload(&text);
            prepared.commit()?;
            inner.reader.reload()?;
            Ok(inner.reader.searcher().num_docs())
        })
        .await?;
        self.uncommitted = 0;
        self.last_commit = Instant::now();
        let at = self.index.inner.clock.now();
        let watermark = self.applied;
        self.index.inner.status.send_modify(|status| {
            status.docs = docs;
            status.watermark = Some(watermark);
            status.last_commit = Some(at);
        });
        Ok(())
    }

    /// Replaces the index's content with every object in the store, then follows the
    /// outbox from the position settled before the tables were read.
    pub(super) async fn rebuild(&mut self) -> Result<(), SearchError> {
        let inner = &self.index.inner;
        inner.status.send_modify(|status| status.rebuilding = true);
        let result = self.rebuild_inner().await;
        self.index.inner.status.send_modify(|status: &mut IndexStatus| {
            status.rebuilding = false;
            if result.is_ok() {
                status.rebuilds += 1;
            }
        });
        result
    }

    async fn rebuild_inner(&mut self) -> Result<(), SearchError> {
        let started = Instant::now();
        let settled = self.index.inner.store.outbox_settled().await?;
        let index = self.index.clone();
        blocking(move || {
            open_writer(&mut writer(&index.inner)?)?.delete_all_documents()?;
            Ok(())
        })
        .await?;
        let mut objects = 0usize;
        for kind in SearchKind::ALL {
            let mut after: Option<String> = None;
            loop {
                let page = self.index.inner.store.searchable_page(kind, after.as_deref(), REBUILD_PAGE).await?;
                let Some(last) = page.last() else { break };
                after = Some(last.id.clone());
                let full = page.len() == REBUILD_PAGE as usize;
                objects += page.len();
                let index = self.index.clone();
                blocking(move || {
                    let inner = &index.inner;
                    let mut guard = writer(inner)?;
                    let writer = open_writer(&mut guard)?;
                    for object in &page {
                        writer.add_document(schema::document(&inner.fields, object))?;
                    }
                    Ok(())
                })
                .await?;
                if !full {
                    break;
                }
            }
        }
        self.applied = settled;
        self.commit().await?;
        self.index.inner.needs_rebuild.store(false, Ordering::SeqCst);
        tracing::info!(objects, elapsed_ms = started.elapsed().as_millis() as u64, "rebuilt the search index");
        Ok(())
    }

    /// Prunes old outbox rows, and asks for a rebuild when the watermark is below what
    /// was pruned (changes were missed).
    async fn prune_and_check(&mut self) -> Result<(), SearchError> {
        let inner = &self.index.inner;
        let retention = chrono::Duration::from_std(inner.settings.outbox_retention).unwrap_or(chrono::Duration::MAX);
        let before =
            inner.clock.now().checked_sub_signed(retention).unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        let pruned = inner.store.prune_outbox(before).await?;
        if pruned > 0 {
            tracing::info!(rows = pruned, "pruned the search outbox");
        }
        let status = inner.store.outbox_status(self.applied).await?;
        if !self.index.needs_rebuild() && self.applied < status.pruned_through {
            tracing::warn!(
                watermark = %self.applied,
                pruned_through = %status.pruned_through,
                "the search index fell behind the outbox's pruning; rebuilding it"
            );
            self.index.request_rebuild();
        }
        Ok(())
    }
}

/// The writer (the index was opened for writing).
type Writer = tantivy::IndexWriter<tantivy::TantivyDocument>;

/// The writer in its guard, unless it was shut down.
fn open_writer<'a>(guard: &'a mut std::sync::MutexGuard<'_, Option<Writer>>) -> Result<&'a mut Writer, SearchError> {
    guard.as_mut().ok_or_else(|| {
        SearchError::Index(tantivy::TantivyError::InvalidArgument("the index writer was shut down".to_owned()))
    })
}

fn writer(inner: &super::Inner) -> Result<std::sync::MutexGuard<'_, Option<Writer>>, SearchError> {
    let writer = inner.writer.as_ref().ok_or_else(|| {
        SearchError::Index(tantivy::TantivyError::InvalidArgument("the index was opened read-only".to_owned()))
    })?;
    // A panic while writing poisons the lock; the writer itself stays usable.
    Ok(writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
}

/// Runs index work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, SearchError> + Send + 'static,
) -> Result<T, SearchError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| SearchError::Io(std::io::Error::other(e.to_string())))?
}
