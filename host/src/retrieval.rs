//! Hybrid retrieval over a tenant's messages, documents and memories: the use-case
//! behind `POST /v1/search`.
//!
//! Three modes:
//!
//! - **text**: BM25 over the full-text index ([`FullText`]) alone;
//! - **vector**: the query embedded once by the configured [`Embedder`], then the
//!   nearest memories ([`MemoryStore::search_memories`]) and message and document
//!   passages ([`PassageStore::search_passages`], the best passage per object) by
//!   cosine similarity, merged into one ranking (both sides compare vectors of the same
//!   embedder, so their similarities are comparable);
//! - **hybrid**: both rankings, each `max(50, 4 × limit)` candidates long, fused by
//!   reciprocal rank ([`maestro_core::retrieval::fuse`], k = 60) keyed by (kind, id),
//!   then an optional recency decay ([`maestro_core::retrieval::decay`]; pinned
//!   memories exempt). Each hit keeps its rank on each side.
//!
//! Filters apply on both sides before candidates are taken, so neither side fills its
//! candidates with rows the filters drop. `scope`, `persona` and `tags` describe
//! memories: setting one keeps only memories. When the embedder is loading or
//! unavailable a hybrid search answers from the index alone and says so
//! ([`Results::degraded`]); when the server keeps no index it answers from the vectors
//! alone, likewise.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use maestro_core::embed::{EmbedError, Embedder, EmbedderStatus};
use maestro_core::memory::{MemoryError, MemoryFilter, MemoryHit, MemoryId, MemoryScope, TagMatch, normalise_tags};
use maestro_core::passage::{PassageFilter, PassageHit};
use maestro_core::ports::{MemoryStore, PassageStore};
use maestro_core::retrieval::{RRF_K, decay, fuse};
use maestro_core::run::SessionId;
use maestro_core::search::SearchKind;
use maestro_core::{Clock, StoreError, TenantId};

use crate::search::{FullText, SearchError, TextCandidates, TextFilters, TextHit};

/// Most hits one search returns.
pub const MAX_LIMIT: usize = 100;
/// Fewest candidates each side of a hybrid search contributes.
pub const MIN_CANDIDATES: usize = 50;
/// Characters of a snippet cut from a vector hit's text.
const SNIPPET_CHARS: usize = 200;

/// How to search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// BM25 over the full-text index.
    Text,
    /// Nearest vectors of memories and passages.
    Vector,
    /// Both, fused by reciprocal rank.
    Hybrid,
}

impl Mode {
    /// The mode's name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Text => "text",
            Mode::Vector => "vector",
            Mode::Hybrid => "hybrid",
        }
    }
}

/// What to search for and how.
#[derive(Debug, Clone)]
pub struct Query {
    /// The words (parsed leniently by the index; embedded as they are).
    pub text: String,
    /// The mode.
    pub mode: Mode,
    /// Which objects qualify.
    pub filters: Filters,
    /// Hits to return, 1 to [`MAX_LIMIT`].
    pub limit: usize,
    /// Recency decay after fusion (hybrid only): `None` takes the configured default,
    /// `Some(None)` turns it off.
    pub half_life: Option<Option<Duration>>,
}

/// Which objects a search considers. Every field narrows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filters {
    /// Only these kinds (empty: all).
    pub kinds: Vec<SearchKind>,
    /// Only objects of this session (a session-scoped memory's session).
    pub session: Option<SessionId>,
    /// Only objects written by this persona or key (a persona-scoped memory's persona).
    pub author: Option<String>,
    /// Written (a memory: created) at or after.
    pub since: Option<DateTime<Utc>>,
    /// Written (a memory: created) before.
    pub until: Option<DateTime<Utc>>,
    /// Only memories of this scope kind (`tenant`, `persona`, `session`).
    pub scope: Option<String>,
    /// Only memories scoped to this persona.
    pub persona: Option<String>,
    /// Only memories carrying these tags (normalised on the way in).
    pub tags: Vec<String>,
    /// All of `tags` rather than any.
    pub all_tags: bool,
}

impl Filters {
    fn memories_only(&self) -> bool {
        self.scope.is_some() || self.persona.is_some() || !self.tags.is_empty()
    }

    fn wants(&self, kind: SearchKind) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&kind)) && (kind == SearchKind::Memory || !self.memories_only())
    }
}

/// A hit's rank on each side (from 1; `None` where that side did not return it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ranks {
    /// In the BM25 ranking.
    pub text: Option<u32>,
    /// In the vector ranking.
    pub vector: Option<u32>,
}

/// One hit.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// What it is.
    pub kind: SearchKind,
    /// Its id (`msg_…`, `doc_…`, `mem_…`).
    pub id: String,
    /// Its score: BM25 (text), cosine similarity (vector), or the fused reciprocal-rank
    /// score after decay (hybrid).
    pub score: f64,
    /// Its position in the results, from 1.
    pub rank: usize,
    /// Its rank on each side.
    pub ranks: Ranks,
    /// A fragment of its text: around the matched words when the index found it, else
    /// the start of the matching passage or memory.
    pub snippet: String,
    /// Byte ranges of the matched words in `snippet`.
    pub highlights: Vec<(usize, usize)>,
    /// Its session.
    pub session: Option<String>,
    /// Its title (documents found by the index).
    pub title: Option<String>,
    /// Who wrote it (a memory: its persona).
    pub author: Option<String>,
    /// When it was written (a memory: created).
    pub at: DateTime<Utc>,
    /// A memory's tags.
    pub tags: Vec<String>,
    /// A memory's scope kind.
    pub scope: Option<String>,
    /// A pinned memory (exempt from decay).
    pub pinned: bool,
}

/// The answer of a search.
#[derive(Debug, Clone, PartialEq)]
pub struct Results {
    /// The mode used.
    pub mode: Mode,
    /// The hits, best first.
    pub hits: Vec<Hit>,
    /// Why only one side answered (a hybrid search without an embedder or an index).
    pub degraded: Option<String>,
}

/// Why a search did not answer.
#[derive(Debug, thiserror::Error)]
pub enum RetrievalError {
    /// The query or a filter is refused.
    #[error("{0}")]
    Invalid(String),
    /// The index refused or failed.
    #[error(transparent)]
    Search(#[from] SearchError),
    /// The mode needs the full-text index and this server keeps none.
    #[error("full-text search is not available on this server")]
    NoIndex,
    /// The mode needs the embedder and it cannot embed now.
    #[error("the embedder is unavailable")]
    Embedder(#[source] EmbedError),
    /// The store failed.
    #[error("the store failed while searching")]
    Store(#[from] StoreError),
}

impl From<MemoryError> for RetrievalError {
    fn from(err: MemoryError) -> Self {
        RetrievalError::Invalid(err.to_string())
    }
}

/// The hybrid retrieval use-case.
#[derive(Debug, Clone)]
pub struct Retrieval {
    index: Option<FullText>,
    memories: Arc<dyn MemoryStore>,
    passages: Arc<dyn PassageStore>,
    embedder: Arc<dyn Embedder>,
    clock: Arc<dyn Clock>,
    half_life: Option<Duration>,
}

/// A candidate of the vector side.
#[derive(Debug)]
enum Near {
    Memory(MemoryHit),
    Passage(PassageHit),
}

impl Near {
    fn key(&self) -> (SearchKind, String) {
        match self {
            Near::Memory(hit) => (SearchKind::Memory, hit.memory.id.as_str().to_owned()),
            Near::Passage(hit) => (hit.passage.kind, hit.passage.object.clone()),
        }
    }

    fn score(&self) -> f32 {
        match self {
            Near::Memory(hit) => hit.score,
            Near::Passage(hit) => hit.score,
        }
    }

    /// The hit as shown when the index did not find it.
    fn hit(&self) -> Hit {
        let (kind, id) = self.key();
        let base = Hit {
            kind,
            id,
            score: f64::from(self.score()),
            rank: 0,
            ranks: Ranks::default(),
            snippet: String::new(),
            highlights: Vec::new(),
            session: None,
            title: None,
            author: None,
            at: DateTime::default(),
            tags: Vec::new(),
            scope: None,
            pinned: false,
        };
        match self {
            Near::Memory(hit) => {
                let memory = &hit.memory;
                let (session, author) = match &memory.scope {
                    MemoryScope::Tenant => (None, None),
                    MemoryScope::Persona(name) => (None, Some(name.clone())),
                    MemoryScope::Session(id) => (Some(id.to_string()), None),
                };
                Hit {
                    snippet: prefix(&memory.text, SNIPPET_CHARS),
                    session,
                    author,
                    at: memory.created_at,
                    tags: memory.tags.clone(),
                    scope: Some(memory.scope.kind().to_owned()),
                    pinned: memory.pinned,
                    ..base
                }
            }
            Near::Passage(hit) => {
                let passage = &hit.passage;
                Hit {
                    snippet: prefix(&passage.text, SNIPPET_CHARS),
                    session: passage.session.as_ref().map(ToString::to_string),
                    author: passage.author.clone(),
                    at: passage.at,
                    ..base
                }
            }
        }
    }
}

fn text_hit(hit: &TextHit) -> Hit {
    Hit {
        kind: hit.kind,
        id: hit.id.clone(),
        score: f64::from(hit.score),
        rank: 0,
        ranks: Ranks::default(),
        snippet: hit.snippet.clone(),
        highlights: hit.highlights.clone(),
        session: hit.session.clone(),
        title: hit.title.clone(),
        author: hit.author.clone(),
        at: hit.at,
        tags: hit.tags.clone(),
        scope: hit.scope.clone(),
        pinned: hit.pinned,
    }
}

impl Retrieval {
    /// The use-case over the index (`None`: this process keeps none), the memory and
    /// passage ports, the configured embedder, and the default half-life.
    pub fn new(
        index: Option<FullText>,
        memories: Arc<dyn MemoryStore>,
        passages: Arc<dyn PassageStore>,
        embedder: Arc<dyn Embedder>,
        clock: Arc<dyn Clock>,
        half_life: Option<Duration>,
    ) -> Self {
        Self { index, memories, passages, embedder, clock, half_life }
    }

    /// Searches `tenant`'s objects.
    pub async fn search(&self, tenant: &TenantId, query: &Query) -> Result<Results, RetrievalError> {
        if !(1..=MAX_LIMIT).contains(&query.limit) {
            return Err(RetrievalError::Invalid(format!("limit must be between 1 and {MAX_LIMIT}")));
        }
        if query.half_life.is_some() && query.mode != Mode::Hybrid {
            return Err(RetrievalError::Invalid("half_life applies to hybrid searches only".into()));
        }
        let filters = self.checked(&query.filters)?;
        if query.text.trim().is_empty() {
            return Err(SearchError::EmptyQuery.into());
        }
        if let Some(index) = &self.index {
            index.check_query(&query.text)?;
        }
        let results = match query.mode {
            Mode::Text => self.text(tenant, query, &filters).await,
            Mode::Vector => {
                let vector = self.embed(&query.text).await.map_err(RetrievalError::Embedder)?;
                let near = self.nearest(tenant, &vector, &filters, query.limit).await?;
                let hits = near
                    .iter()
                    .take(query.limit)
                    .enumerate()
                    .map(|(i, near)| Hit {
                        rank: i + 1,
                        ranks: Ranks { text: None, vector: Some(rank(i)) },
                        ..near.hit()
                    })
                    .collect();
                Ok(Results { mode: Mode::Vector, hits, degraded: None })
            }
            Mode::Hybrid => self.hybrid(tenant, query, &filters).await,
        }?;
        self.note_use(tenant, &results).await;
        Ok(results)
    }

    /// Notes when the memories a search returned were used (as `/v1/memories/search`
    /// does): recency bookkeeping only, a failure is logged, never the search's.
    async fn note_use(&self, tenant: &TenantId, results: &Results) {
        let ids: Vec<MemoryId> = results
            .hits
            .iter()
            .filter(|hit| hit.kind == SearchKind::Memory)
            .filter_map(|hit| MemoryId::parse(&hit.id).ok())
            .collect();
        if ids.is_empty() {
            return;
        }
        if let Err(err) = self.memories.touch_memories(tenant, &ids, self.clock.now()).await {
            tracing::warn!(error = %err, "cannot note when memories were used");
        }
    }

    /// The filters with tags normalised and the scope and persona checked.
    fn checked(&self, filters: &Filters) -> Result<Filters, RetrievalError> {
        let mut filters = filters.clone();
        filters.tags = normalise_tags(&filters.tags)?;
        if let Some(scope) = &filters.scope
            && !matches!(scope.as_str(), "tenant" | "persona" | "session")
        {
            return Err(RetrievalError::Invalid(format!(
                "unknown scope `{}` (tenant, persona or session)",
                prefix(scope, 32)
            )));
        }
        if let Some(persona) = &filters.persona {
            MemoryScope::parse("persona", Some(persona))?;
        }
        Ok(filters)
    }

    async fn text(&self, tenant: &TenantId, query: &Query, filters: &Filters) -> Result<Results, RetrievalError> {
        let Some(index) = &self.index else { return Err(RetrievalError::NoIndex) };
        let Some(text_filters) = text_filters(filters) else {
            return Ok(Results { mode: Mode::Text, hits: Vec::new(), degraded: None });
        };
        let found = index.full_text(tenant, &query.text, &text_filters, query.limit).await?;
        let hits = found
            .iter()
            .enumerate()
            .map(|(i, hit)| Hit { rank: i + 1, ranks: Ranks { text: Some(rank(i)), vector: None }, ..text_hit(hit) })
            .collect();
        Ok(Results { mode: Mode::Text, hits, degraded: None })
    }

    async fn hybrid(&self, tenant: &TenantId, query: &Query, filters: &Filters) -> Result<Results, RetrievalError> {
        let candidates = MIN_CANDIDATES.max(4 * query.limit);
        let mut degraded = None;
        // The vector side: embedded once; without an embedder the index answers alone.
        let vector = match self.embed(&query.text).await {
            Ok(vector) => Some(vector),
            Err(err) => {
                tracing::warn!(error = %err, "hybrid search without vectors: the embedder cannot embed now");
                degraded = Some(format!("{err}; these are full-text results only"));
                None
            }
        };
        if self.index.is_none() && vector.is_none() {
            return Err(RetrievalError::NoIndex);
        }
        let text_side = async {
            match (&self.index, text_filters(filters)) {
                (Some(index), Some(text_filters)) => {
                    index.candidates(tenant, &query.text, &text_filters, candidates).await.map(Some)
                }
                _ => Ok(None),
            }
        };
        let vector_side = async {
            match &vector {
                Some(vector) => self.nearest(tenant, vector, filters, candidates).await,
                None => Ok(Vec::new()),
            }
        };
        let (lexical, near) = tokio::join!(text_side, vector_side);
        let (lexical, near): (Option<TextCandidates>, Vec<Near>) = (lexical?, near?);
        if self.index.is_none() {
            degraded = Some("this server keeps no full-text index; these are vector results only".into());
        }

        let lexical_hits: &[TextHit] = lexical.as_ref().map_or(&[], |c| c.hits.as_slice());
        let lexical_keys: Vec<(SearchKind, String)> = lexical_hits.iter().map(|h| (h.kind, h.id.clone())).collect();
        let near_keys: Vec<(SearchKind, String)> = near.iter().map(Near::key).collect();
        let mut fused = fuse(&lexical_keys, &near_keys, RRF_K);

        let lexical_at: HashMap<&(SearchKind, String), usize> =
            lexical_keys.iter().enumerate().map(|(i, k)| (k, i)).collect();
        let near_at: HashMap<&(SearchKind, String), usize> =
            near_keys.iter().enumerate().map(|(i, k)| (k, i)).collect();
        let half_life = query.half_life.unwrap_or(self.half_life).filter(|d| !d.is_zero());
        if let Some(half_life) = half_life {
            let half_life = chrono::Duration::from_std(half_life).unwrap_or(chrono::Duration::MAX);
            decay(&mut fused, self.clock.now(), half_life, |key| {
                if let Some(&i) = lexical_at.get(key) {
                    let hit = &lexical_hits[i];
                    return Some((hit.at, hit.pinned));
                }
                near_at.get(key).map(|&i| {
                    let hit = near[i].hit();
                    (hit.at, hit.pinned)
                })
            });
        }
        fused.truncate(query.limit);

        // Snippets from the index where it found the hit.
        let wanted: Vec<usize> = fused.iter().filter_map(|f| lexical_at.get(&f.key).copied()).collect();
        let mut snippets: HashMap<usize, (String, Vec<(usize, usize)>)> = HashMap::new();
        if let Some(lexical) = &lexical
            && !wanted.is_empty()
        {
            let found = lexical.snippets(wanted.clone()).await?;
            snippets = wanted.into_iter().zip(found).collect();
        }
        let hits = fused
            .into_iter()
            .enumerate()
            .map(|(i, fused)| {
                let mut hit = match lexical_at.get(&fused.key) {
                    Some(&at) => {
                        let mut hit = text_hit(&lexical_hits[at]);
                        if let Some((snippet, highlights)) = snippets.remove(&at) {
                            hit.snippet = snippet;
                            hit.highlights = highlights;
                        }
                        hit
                    }
                    None => near_at.get(&fused.key).map(|&at| near[at].hit()).unwrap_or_else(|| Hit {
                        kind: fused.key.0,
                        id: fused.key.1.clone(),
                        score: 0.0,
                        rank: 0,
                        ranks: Ranks::default(),
                        snippet: String::new(),
                        highlights: Vec::new(),
                        session: None,
                        title: None,
                        author: None,
                        at: DateTime::default(),
                        tags: Vec::new(),
                        scope: None,
                        pinned: false,
                    }),
                };
                hit.score = fused.score;
                hit.rank = i + 1;
                hit.ranks = Ranks { text: fused.lexical_rank, vector: fused.vector_rank };
                hit
            })
            .collect();
        Ok(Results { mode: Mode::Hybrid, hits, degraded })
    }

    /// The query's vector; a loading or unavailable embedder answers at once (a search
    /// never waits for a model to load).
    async fn embed(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        match self.embedder.status() {
            EmbedderStatus::Ready => {}
            EmbedderStatus::Loading => return Err(EmbedError::Unavailable("the embedding model is loading".into())),
            EmbedderStatus::Unavailable(reason) => return Err(EmbedError::Unavailable(reason)),
        }
        let mut vectors = self.embedder.embed(&[text.to_owned()]).await?;
        let dimensions = self.embedder.info().dimensions as usize;
        vectors
            .pop()
            .filter(|v| v.len() == dimensions)
            .ok_or_else(|| EmbedError::Failed("the embedder answered no vector of its dimension".into()))
    }

    /// The `k` nearest memories and passages (best passage per object) passing
    /// `filters`, nearest first.
    async fn nearest(
        &self,
        tenant: &TenantId,
        vector: &[f32],
        filters: &Filters,
        k: usize,
    ) -> Result<Vec<Near>, RetrievalError> {
        let k32 = u32::try_from(k).unwrap_or(u32::MAX);
        let info = self.embedder.info();
        let memories = async {
            match memory_filter(filters) {
                Some(filter) if filters.wants(SearchKind::Memory) => {
                    self.memories.search_memories(tenant, info, vector, &filter, k32).await
                }
                _ => Ok(Vec::new()),
            }
        };
        let passages = async {
            let kinds: Vec<SearchKind> =
                [SearchKind::Message, SearchKind::Document].into_iter().filter(|k| filters.wants(*k)).collect();
            if kinds.is_empty() {
                return Ok(Vec::new());
            }
            let filter = PassageFilter {
                kinds,
                session: filters.session.clone(),
                exclude_session: None,
                author: filters.author.clone(),
                since: filters.since,
                until: filters.until,
            };
            // Several passages may come from one object: ask for more than `k`.
            self.passages.search_passages(tenant, info, vector, &filter, k32.saturating_mul(2)).await
        };
        let (memories, passages) = tokio::join!(memories, passages);
        let mut near: Vec<Near> = memories?.into_iter().map(Near::Memory).collect();
        let mut seen = std::collections::HashSet::new();
        for hit in passages? {
            if seen.insert((hit.passage.kind, hit.passage.object.clone())) {
                near.push(Near::Passage(hit));
            }
        }
        near.sort_by(|a, b| b.score().total_cmp(&a.score()).then_with(|| a.key().cmp(&b.key())));
        near.truncate(k);
        Ok(near)
    }
}

/// The index's filters, or `None` when no object can pass them (a persona and an
/// author that differ).
fn text_filters(filters: &Filters) -> Option<TextFilters> {
    let author = match (&filters.persona, &filters.author) {
        (Some(persona), Some(author)) if persona != author => return None,
        (Some(persona), _) => Some(persona.clone()),
        (None, author) => author.clone(),
    };
    let kinds = if filters.memories_only() {
        if !filters.wants(SearchKind::Memory) {
            return None;
        }
        vec![SearchKind::Memory]
    } else {
        filters.kinds.clone()
    };
    Some(TextFilters {
        kinds,
        session: filters.session.clone(),
        author,
        since: filters.since,
        until: filters.until,
        exclude_session: None,
        scope: filters.scope.clone(),
        tags: filters.tags.clone(),
        all_tags: filters.all_tags,
    })
}

/// The memory store's filter, or `None` when no memory can pass them.
fn memory_filter(filters: &Filters) -> Option<MemoryFilter> {
    let persona = match (&filters.persona, &filters.author) {
        (Some(persona), Some(author)) if persona != author => return None,
        (Some(persona), _) => Some(persona.clone()),
        (None, author) => author.clone(),
    };
    let scope_kind = match filters.scope.as_deref() {
        None => None,
        Some("tenant") => Some("tenant"),
        Some("persona") => Some("persona"),
        Some("session") => Some("session"),
        Some(_) => return None,
    };
    // A persona-scoped memory has no session, a session-scoped one no persona.
    if persona.is_some() && filters.session.is_some() {
        return None;
    }
    Some(MemoryFilter {
        scope_kind,
        persona,
        session: filters.session.clone(),
        tags: filters.tags.clone(),
        tag_match: if filters.all_tags { TagMatch::All } else { TagMatch::Any },
        created_from: filters.since,
        created_to: filters.until,
    })
}

fn rank(index: usize) -> u32 {
    u32::try_from(index + 1).unwrap_or(u32::MAX)
}

/// The first `chars` characters of `text`.
fn prefix(text: &str, chars: usize) -> String {
    text.chars().take(chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_only_filters_keep_the_text_side_to_memories_and_conflicts_find_nothing() {
        let filters = Filters { tags: vec!["red".into()], ..Filters::default() };
        assert_eq!(text_filters(&filters).expect("passable").kinds, vec![SearchKind::Memory]);
        assert!(!filters.wants(SearchKind::Message));
        assert!(filters.wants(SearchKind::Memory));
        let documents_only = Filters { kinds: vec![SearchKind::Document], ..filters.clone() };
        assert!(text_filters(&documents_only).is_none(), "tags on documents: nothing can pass");
        let conflict = Filters { persona: Some("a.b".into()), author: Some("c.d".into()), ..Filters::default() };
        assert!(text_filters(&conflict).is_none());
        assert!(memory_filter(&conflict).is_none());
        let by_author = Filters { author: Some("a.b".into()), ..Filters::default() };
        assert_eq!(memory_filter(&by_author).expect("passable").persona.as_deref(), Some("a.b"));
        assert!(by_author.wants(SearchKind::Message), "an author filter alone keeps every kind");
    }
}
