//! Full-text search: a Tantivy index under the data directory over every tenant's
//! messages, current document versions and memories, fed from the search outbox (the
//! only module that uses tantivy).
//!
//! [`FullText`] is the use-case: it owns the index, its reader, and (in a server or an
//! offline rebuild) the single `IndexWriter` (1 thread, a fixed memory budget).
//! [`FullText::spawn_indexer`] starts the one task that follows the outbox
//! (`indexer.rs`): it reads settled rows past its watermark, fetches the objects'
//! current content, deletes by key and re-adds, and commits on a cadence (every
//! `commit_interval`, or at `commit_batch` changes) only when something changed, with
//! the watermark in the commit's payload; the reader is reloaded right after each
//! commit. At start a missing, unreadable or foreign-schema index, or one whose
//! watermark fell behind the outbox's pruning, is rebuilt from the tables.
//!
//! [`FullText::full_text`] answers queries (`query.rs`): the user's text parsed
//! leniently (length-capped, control characters blanked, no regexes, no fuzzy terms)
//! and ANDed, outside it, with a constant-score term on the caller's tenant and the
//! filters; BM25 top-k with snippets.

mod filtered;
mod ids;
mod indexer;
mod query;
mod schema;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use maestro_core::ports::SearchStore;
use maestro_core::run::SessionId;
use maestro_core::search::{OutboxPosition, SearchKind};
use maestro_core::{Clock, StoreError, TenantId};
use serde::{Deserialize, Serialize};
use tantivy::directory::MmapDirectory;
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument};
use tokio::sync::watch;

pub use ids::IndexedObject;
use schema::Fields;

/// The file whose presence asks a running server's indexer to rebuild
/// (`maestro index rebuild` while the server holds the writer).
pub const REBUILD_REQUEST: &str = "rebuild.request";

/// The index's settings (`[search]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchSettings {
    /// The index directory (default `<data_dir>/index`).
    pub dir: PathBuf,
    /// Commit at most this often while changes arrive.
    pub commit_interval: Duration,
    /// Or as soon as this many changes are waiting.
    pub commit_batch: usize,
    /// How often the indexer looks for new outbox rows when idle.
    pub poll_interval: Duration,
    /// The writer's memory budget.
    pub writer_memory_bytes: usize,
    /// Outbox rows older than this are pruned.
    pub outbox_retention: Duration,
    /// Longest accepted query, in characters.
    pub max_query_chars: usize,
    /// The recency decay a hybrid search applies after fusion unless the request says
    /// otherwise (`None`: no decay).
    pub half_life: Option<Duration>,
}

impl SearchSettings {
    /// The defaults, with the index under `data_dir`.
    pub fn under(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("index"),
            commit_interval: Duration::from_secs(1),
            commit_batch: 1000,
            poll_interval: Duration::from_millis(200),
            writer_memory_bytes: 50_000_000,
            outbox_retention: Duration::from_secs(7 * 24 * 3600),
            max_query_chars: 1024,
            half_life: None,
        }
    }
}

/// What can go wrong in search.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The query is empty (after blanking control characters).
    #[error("the query is empty")]
    EmptyQuery,
    /// The query is longer than allowed.
    #[error("the query is longer than {max} characters")]
    QueryTooLong {
        /// The cap.
        max: usize,
    },
    /// A filter is invalid.
    #[error("invalid filter: {0}")]
    InvalidFilter(String),
    /// The query parsed but cannot run on this index (e.g. `field:*` on a field that
    /// keeps no column).
    #[error("the query cannot run: {0}")]
    UnsupportedQuery(String),
    /// Another process holds the index writer (a server on this data directory).
    #[error("the index at {0} is in use by another process")]
    Locked(PathBuf),
    /// The index failed.
    #[error("the search index failed")]
    Index(#[source] tantivy::TantivyError),
    /// The store failed.
    #[error("the store failed while indexing")]
    Store(#[from] StoreError),
    /// Reading or writing the index directory failed.
    #[error("cannot use the index directory")]
    Io(#[source] std::io::Error),
}

impl From<tantivy::TantivyError> for SearchError {
    fn from(err: tantivy::TantivyError) -> Self {
        SearchError::Index(err)
    }
}

/// Filters of a query (all optional).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TextFilters {
    /// Only these kinds (empty: every kind).
    pub kinds: Vec<SearchKind>,
    /// Only objects of this session.
    pub session: Option<SessionId>,
    /// Only objects written by this persona or key.
    pub author: Option<String>,
    /// Written at or after.
    pub since: Option<DateTime<Utc>>,
    /// Written before.
    pub until: Option<DateTime<Utc>>,
    /// Never objects of this session (the session a run is in, when recalling earlier
    /// sessions); objects of no session still match.
    pub exclude_session: Option<SessionId>,
    /// Only memories of this scope kind (`tenant`, `persona`, `session`).
    pub scope: Option<String>,
    /// Only memories carrying these tags (any or all, by `all_tags`); empty: no filter.
    pub tags: Vec<String>,
    /// Every tag of `tags` rather than any.
    pub all_tags: bool,
}

impl TextFilters {
    /// Whether a filter that only memories can pass is set (scope or tags).
    pub fn memories_only(&self) -> bool {
        self.scope.is_some() || !self.tags.is_empty()
    }
}

/// One hit of [`FullText::full_text`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TextHit {
    /// What it is.
    pub kind: SearchKind,
    /// Its id (`msg_…`, `doc_…`).
    pub id: String,
    /// BM25 score.
    pub score: f32,
    /// Position in the results, from 1.
    pub rank: usize,
    /// A fragment of its text around the matched words.
    pub snippet: String,
    /// Byte ranges of the matched words in `snippet`.
    pub highlights: Vec<(usize, usize)>,
    /// Its session.
    pub session: Option<String>,
    /// Its title (documents).
    pub title: Option<String>,
    /// Who wrote it.
    pub author: Option<String>,
    /// When it was written (a memory: created).
    pub at: DateTime<Utc>,
    /// A memory's tags.
    pub tags: Vec<String>,
    /// A memory's scope kind.
    pub scope: Option<String>,
    /// A pinned memory.
    pub pinned: bool,
}

/// The index as it stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IndexStatus {
    /// Documents searchable now.
    pub docs: u64,
    /// The outbox position the last commit applied through (`None`: never committed).
    pub watermark: Option<OutboxPosition>,
    /// When the last commit was made.
    pub last_commit: Option<DateTime<Utc>>,
    /// Whether a rebuild is under way.
    pub rebuilding: bool,
    /// Rebuilds this process made.
    pub rebuilds: u64,
}

/// What a commit stores in its payload.
#[derive(Debug, Serialize, Deserialize)]
struct Payload {
    /// The outbox position applied through.
    watermark: OutboxPosition,
    /// When the commit was made (ms since the epoch).
    committed_at: i64,
}

/// How [`FullText::open`] opens the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Holds the writer (a server, an offline rebuild); an unreadable index is replaced.
    Write,
    /// Reads only (`maestro index status`).
    Read,
}

/// The full-text index and its use-cases.
#[derive(Clone)]
pub struct FullText {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FullText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FullText").field("dir", &self.inner.settings.dir).finish_non_exhaustive()
    }
}

struct Inner {
    index: Index,
    reader: IndexReader,
    fields: Fields,
    settings: SearchSettings,
    /// `None` inside once the indexer shut it down (merges finished).
    writer: Option<Mutex<Option<IndexWriter<TantivyDocument>>>>,
    /// Set when the index must be rebuilt before following the outbox.
    needs_rebuild: AtomicBool,
    status: watch::Sender<IndexStatus>,
    store: Arc<dyn SearchStore>,
    clock: Arc<dyn Clock>,
}

impl FullText {
    /// Opens the index under `settings.dir`, creating it when missing. With
    /// [`Access::Write`] it takes the writer ([`SearchError::Locked`] when another
    /// process holds it) and replaces an index it cannot read (the indexer then
    /// rebuilds it from the store).
    pub fn open(
        settings: SearchSettings,
        store: Arc<dyn SearchStore>,
        clock: Arc<dyn Clock>,
        access: Access,
    ) -> Result<Self, SearchError> {
        let (schema, fields) = schema::schema();
        std::fs::create_dir_all(&settings.dir).map_err(SearchError::Io)?;
        let opened = open_existing(&settings.dir, &schema);
        let (index, reader, fresh) = match (opened, access) {
            (Ok(Some((index, reader))), _) => (index, reader, false),
            (Ok(None), _) => {
                let (index, reader) = create(&settings.dir, schema)?;
                (index, reader, true)
            }
            (Err(err), Access::Read) => return Err(err),
            (Err(err), Access::Write) => {
                tracing::warn!(dir = %settings.dir.display(), error = %err, "the search index is unreadable; rebuilding it");
                clear_dir(&settings.dir)?;
                let (index, reader) = create(&settings.dir, schema)?;
                (index, reader, true)
            }
        };
        let writer = match access {
            Access::Read => None,
            Access::Write => match index.writer_with_num_threads(1, settings.writer_memory_bytes) {
                Ok(writer) => Some(Mutex::new(Some(writer))),
                Err(tantivy::TantivyError::LockFailure(..)) => return Err(SearchError::Locked(settings.dir.clone())),
                Err(err) => return Err(err.into()),
            },
        };
        let payload = read_payload(&index);
        let status = IndexStatus {
            docs: reader.searcher().num_docs(),
            watermark: payload.as_ref().map(|p| p.watermark),
            last_commit: payload.as_ref().and_then(|p| DateTime::from_timestamp_millis(p.committed_at)),
            rebuilding: false,
            rebuilds: 0,
        };
        let needs_rebuild = fresh || payload.is_none();
        Ok(Self {
            inner: Arc::new(Inner {
                index,
                reader,
                fields,
                settings,
                writer,
                needs_rebuild: AtomicBool::new(needs_rebuild),
                status: watch::Sender::new(status),
                store,
                clock,
            }),
        })
    }

    /// The settings it was opened with.
    pub fn settings(&self) -> &SearchSettings {
        &self.inner.settings
    }

    /// The index as it stands now.
    pub fn status(&self) -> IndexStatus {
        self.inner.status.borrow().clone()
    }

    /// Follows the status: every commit and rebuild publishes a new one.
    pub fn watch(&self) -> watch::Receiver<IndexStatus> {
        self.inner.status.subscribe()
    }

    /// The index directory's size in bytes.
    pub fn size_bytes(&self) -> u64 {
        dir_size(&self.inner.settings.dir)
    }

    /// Asks the indexer to rebuild from the store before following the outbox again.
    pub fn request_rebuild(&self) {
        self.inner.needs_rebuild.store(true, Ordering::SeqCst);
    }

    /// Whether the index will be rebuilt before it follows the outbox.
    pub fn needs_rebuild(&self) -> bool {
        self.inner.needs_rebuild.load(Ordering::SeqCst)
    }

    /// Starts the indexer (needs [`Access::Write`]): it follows the outbox until `stop`,
    /// then commits what it applied and ends.
    pub fn spawn_indexer(&self, stop: tokio_util::sync::CancellationToken) -> tokio::task::JoinHandle<()> {
        let indexer = indexer::Indexer::new(self.clone());
        tokio::spawn(indexer.run(stop))
    }

    /// Rebuilds the index from the store now and commits (an offline `maestro index
    /// rebuild`; needs [`Access::Write`]). Returns the documents indexed.
    pub async fn rebuild(&self) -> Result<u64, SearchError> {
        indexer::Indexer::new(self.clone()).rebuild().await?;
        Ok(self.status().docs)
    }

    /// Catches up with the outbox once and commits (offline use and tests; a server's
    /// indexer does this continuously).
    pub async fn catch_up(&self) -> Result<IndexStatus, SearchError> {
        indexer::Indexer::new(self.clone()).catch_up().await?;
        Ok(self.status())
    }

    /// The tenant's best `k` matches for `query` (at most 100), BM25-ranked, with
    /// snippets. The query is parsed leniently: malformed syntax searches what it can;
    /// only an empty or over-long query is refused.
    pub async fn full_text(
        &self,
        tenant: &TenantId,
        query: &str,
        filters: &TextFilters,
        k: usize,
    ) -> Result<Vec<TextHit>, SearchError> {
        let prepared = query::prepare(query, self.inner.settings.max_query_chars)?;
        let this = self.clone();
        let tenant = tenant.clone();
        let filters = filters.clone();
        blocking(move || query::candidates(&this.inner, &tenant, &prepared, &filters, k.clamp(1, 100))?.into_hits())
            .await
    }

    /// The tenant's best `k` matches for `query` (at most [`MAX_CANDIDATES`]) as
    /// candidates of a fused ranking: BM25-ranked, without snippets until
    /// [`TextCandidates::snippets`] asks for the few it shows.
    pub async fn candidates(
        &self,
        tenant: &TenantId,
        query: &str,
        filters: &TextFilters,
        k: usize,
    ) -> Result<TextCandidates, SearchError> {
        let prepared = query::prepare(query, self.inner.settings.max_query_chars)?;
        let this = self.clone();
        let tenant = tenant.clone();
        let filters = filters.clone();
        let found =
            blocking(move || query::candidates(&this.inner, &tenant, &prepared, &filters, k.clamp(1, MAX_CANDIDATES)))
                .await?;
        Ok(TextCandidates { hits: found.hits().cloned().collect(), found: Arc::new(found) })
    }

    /// Checks a query as [`FullText::full_text`] would (empty, over-long), without
    /// searching.
    pub fn check_query(&self, query: &str) -> Result<(), SearchError> {
        query::prepare(query, self.inner.settings.max_query_chars).map(|_| ())
    }
}

/// The most candidates [`FullText::candidates`] returns.
pub const MAX_CANDIDATES: usize = 1000;

/// BM25 candidates of a fused ranking ([`FullText::candidates`]).
pub struct TextCandidates {
    /// The hits, best first, their snippets empty.
    pub hits: Vec<TextHit>,
    found: Arc<query::Candidates>,
}

impl std::fmt::Debug for TextCandidates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextCandidates").field("hits", &self.hits).finish_non_exhaustive()
    }
}

impl TextCandidates {
    /// The snippets (fragment, highlighted byte ranges) of the hits at these positions
    /// of [`TextCandidates::hits`], in that order (from the documents the search
    /// fetched: no index access).
    pub async fn snippets(&self, positions: Vec<usize>) -> Result<Vec<(String, Vec<(usize, usize)>)>, SearchError> {
        Ok(positions.into_iter().map(|i| self.found.snippet(i)).collect())
    }
}

/// Runs index work on a blocking thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, SearchError> + Send + 'static,
) -> Result<T, SearchError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| SearchError::Io(std::io::Error::other(e.to_string())))?
}

/// Opens an index in `dir`: `None` when there is none; an error when it cannot be read
/// or was built with another schema.
fn open_existing(dir: &Path, schema: &tantivy::schema::Schema) -> Result<Option<(Index, IndexReader)>, SearchError> {
    let directory = MmapDirectory::open(dir).map_err(|e| SearchError::Index(e.into()))?;
    if !Index::exists(&directory).map_err(|e| SearchError::Index(e.into()))? {
        return Ok(None);
    }
    let index = Index::open(directory)?;
    if &index.schema() != schema {
        return Err(SearchError::Index(tantivy::TantivyError::SchemaError(
            "the index was built with another schema".to_owned(),
        )));
    }
    schema::register_tokenizer(&index);
    // Opening the reader opens every segment's files: a torn or deleted one fails here.
    let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
    Ok(Some((index, reader)))
}

fn create(dir: &Path, schema: tantivy::schema::Schema) -> Result<(Index, IndexReader), SearchError> {
    let directory = MmapDirectory::open(dir).map_err(|e| SearchError::Index(e.into()))?;
    let index = Index::create(directory, schema, tantivy::IndexSettings::default())?;
    schema::register_tokenizer(&index);
    let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
    Ok((index, reader))
}

/// Removes every file of an unreadable index (the directory stays).
fn clear_dir(dir: &Path) -> Result<(), SearchError> {
    for entry in std::fs::read_dir(dir).map_err(SearchError::Io)? {
        let path = entry.map_err(SearchError::Io)?.path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path).map_err(SearchError::Io)?;
        } else {
            std::fs::remove_file(&path).map_err(SearchError::Io)?;
        }
    }
    Ok(())
}

fn read_payload(index: &Index) -> Option<Payload> {
    let metas = index.load_metas().ok()?;
    serde_json::from_str(metas.payload.as_deref()?).ok()
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
