//! `POST /v1/search`: search over the caller's tenant's messages, documents and
//! memories (`crate::retrieval`): `hybrid` (the default: words and meaning, fused),
//! `text` (BM25) or `vector`. Every tenant key may search (viewers included, like
//! reading documents); the tenant comes from the key, never from the request.

use axum::Extension;
use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use maestro_core::Caller;
use maestro_core::run::SessionId;
use maestro_core::search::SearchKind;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Shared;
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::extract::StrictJson;
use super::sessions::tenant_principal;
use crate::retrieval::{Filters, Hit, Mode, Query, RetrievalError};
use crate::search::SearchError;

/// Hits returned when `limit` is absent.
const DEFAULT_LIMIT: usize = 10;

/// How to search.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SearchMode {
    /// Words and meaning: BM25 and vector candidates fused by reciprocal rank (the
    /// default).
    #[default]
    Hybrid,
    /// BM25 over the full-text index only.
    Text,
    /// Nearest vectors (memories, message and document passages) only.
    Vector,
}

impl From<SearchMode> for Mode {
    fn from(mode: SearchMode) -> Self {
        match mode {
            SearchMode::Hybrid => Mode::Hybrid,
            SearchMode::Text => Mode::Text,
            SearchMode::Vector => Mode::Vector,
        }
    }
}

impl From<Mode> for SearchMode {
    fn from(mode: Mode) -> Self {
        match mode {
            Mode::Hybrid => SearchMode::Hybrid,
            Mode::Text => SearchMode::Text,
            Mode::Vector => SearchMode::Vector,
        }
    }
}

/// Whether a memory must carry any or all of the `tags` asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TagsMatch {
    /// Any of them (the default).
    #[default]
    Any,
    /// All of them.
    All,
}

/// Body of `POST /v1/search`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// The words to look for. Query syntax is accepted leniently by the full-text side
    /// (`"a phrase"`, `+must -not`, `title:word`); what cannot be parsed is searched as
    /// text or ignored, never an error. The vector side embeds the text as written.
    pub query: String,
    /// `hybrid` (the default), `text` or `vector`.
    #[serde(default)]
    pub mode: SearchMode,
    /// Only these kinds: `message`, `document`, `memory` (default: all).
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Only objects of this session (`ses_…`; memories scoped to it).
    pub session: Option<String>,
    /// Only objects written by this persona (`plugin.persona`) or key id (memories
    /// scoped to that persona).
    pub author: Option<String>,
    /// Written (memories: created) at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Written (memories: created) before this time.
    pub until: Option<DateTime<Utc>>,
    /// Only memories of this scope: `tenant`, `persona` or `session`.
    pub scope: Option<String>,
    /// Only memories scoped to this persona (`plugin.persona`).
    pub persona: Option<String>,
    /// Only memories carrying these tags (`tags_match`: any, the default, or all).
    #[serde(default)]
    pub tags: Vec<String>,
    /// `any` (default) or `all` of `tags`.
    #[serde(default)]
    pub tags_match: TagsMatch,
    /// Hybrid only: rank recent hits higher, halving a hit's fused score per this much
    /// age (`"30d"`, `"12h"`; `"0s"`: off); pinned memories are exempt. Default:
    /// `[search] half_life`.
    pub half_life: Option<String>,
    /// Hits to return, 1 to 100 (default 10).
    pub limit: Option<usize>,
}

/// One hit.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchHit {
    /// `message`, `document` or `memory`.
    pub kind: String,
    /// Its id (`msg_…`, `doc_…`, `mem_…`).
    pub id: String,
    /// Its score: BM25 (`text`), cosine similarity (`vector`), or the fused
    /// reciprocal-rank score after any decay (`hybrid`).
    pub score: f64,
    /// Its position in the results, from 1.
    pub rank: usize,
    /// Its rank on each side, for debugging (`null` where a side did not find it).
    pub ranks: SideRanks,
    /// A fragment of its text: around the matched words when the full-text side found
    /// it, else the start of the passage or memory that matched by meaning.
    pub snippet: String,
    /// Where the matched words are in `snippet`.
    pub highlights: Vec<Highlight>,
    /// Its session (a session-scoped memory's).
    pub session: Option<String>,
    /// Its title (documents).
    pub title: Option<String>,
    /// Who wrote it (a persona's name or a key id; a persona-scoped memory's persona).
    pub author: Option<String>,
    /// When it was written (a document: its current version; a memory: created).
    pub at: DateTime<Utc>,
    /// A memory's tags.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// A memory's scope: `tenant`, `persona` or `session`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// A pinned memory (exempt from recency decay).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub pinned: bool,
}

/// A hit's rank on each side of the search, from 1.
#[derive(Debug, Serialize, ToSchema)]
pub struct SideRanks {
    /// In the full-text (BM25) ranking.
    pub text: Option<u32>,
    /// In the vector ranking.
    pub vector: Option<u32>,
}

/// A matched word in a snippet: bytes `start..end`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Highlight {
    /// Its first byte.
    pub start: usize,
    /// The byte after its last.
    pub end: usize,
}

impl From<Hit> for SearchHit {
    fn from(hit: Hit) -> Self {
        Self {
            kind: hit.kind.as_str().to_owned(),
            id: hit.id,
            score: hit.score,
            rank: hit.rank,
            ranks: SideRanks { text: hit.ranks.text, vector: hit.ranks.vector },
            snippet: hit.snippet,
            highlights: hit.highlights.into_iter().map(|(start, end)| Highlight { start, end }).collect(),
            session: hit.session,
            title: hit.title,
            author: hit.author,
            at: hit.at,
            tags: hit.tags,
            scope: hit.scope,
            pinned: hit.pinned,
        }
    }
}

/// The answer of `POST /v1/search`, best first.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResults {
    /// The mode used.
    pub mode: SearchMode,
    /// The hits, best first.
    pub hits: Vec<SearchHit>,
    /// Present when a hybrid search could use only one side (the embedder loading or
    /// unavailable, or no full-text index on this server): why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
}

impl From<SearchError> for ApiError {
    fn from(err: SearchError) -> Self {
        match err {
            SearchError::EmptyQuery
            | SearchError::QueryTooLong { .. }
            | SearchError::InvalidFilter(_)
            | SearchError::UnsupportedQuery(_) => ApiError::new(ErrorCode::InvalidRequest, err.to_string()),
            SearchError::Store(_) | SearchError::Locked(_) => ApiError::internal(ErrorCode::Unavailable, &err),
            SearchError::Index(_) | SearchError::Io(_) => ApiError::internal(ErrorCode::Internal, &err),
        }
    }
}

impl From<RetrievalError> for ApiError {
    fn from(err: RetrievalError) -> Self {
        match err {
            RetrievalError::Invalid(message) => ApiError::new(ErrorCode::InvalidRequest, message),
            RetrievalError::Search(err) => err.into(),
            RetrievalError::NoIndex => ApiError::new(ErrorCode::Unavailable, "search is not available on this server"),
            RetrievalError::Embedder(_) => ApiError::internal(ErrorCode::EmbedderUnavailable, &err),
            RetrievalError::Store(_) => ApiError::internal(ErrorCode::Unavailable, &err),
        }
    }
}

/// Searches the caller's tenant.
#[utoipa::path(post, path = "/v1/search", tag = "search", request_body = SearchRequest, security(("bearer" = [])),
    responses((status = 200, body = SearchResults), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "empty or over-long query, unknown kind or scope, bad session, tags, half-life or limit"),
        (status = 503, body = ErrorBody, description = "`unavailable`: this server keeps no search index (text mode); `embedder_unavailable`: the embedder cannot embed now (vector mode)")))]
pub(super) async fn search(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    StrictJson(body): StrictJson<SearchRequest>,
) -> Result<Json<SearchResults>, ApiError> {
    let principal = tenant_principal(&state, &caller).await?;
    let invalid = |message: String| ApiError::new(ErrorCode::InvalidRequest, message);
    let kinds = body
        .kinds
        .iter()
        .map(|k| {
            SearchKind::parse(k).ok_or_else(|| invalid(format!("unknown kind `{k}`: use message, document or memory")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let session = body
        .session
        .as_deref()
        .map(|raw| SessionId::parse(raw).map_err(|_| invalid("invalid session id".to_owned())))
        .transpose()?;
    let half_life = body
        .half_life
        .as_deref()
        .map(|raw| {
            humantime::parse_duration(raw.trim())
                .map(|d| Some(d).filter(|d| !d.is_zero()))
                .map_err(|_| invalid("half_life must be a duration such as 30d or 12h (0s: off)".to_owned()))
        })
        .transpose()?;
    let Some(retrieval) = &state.retrieval else {
        return Err(ApiError::new(ErrorCode::Unavailable, "search is not available on this server"));
    };
    let query = Query {
        text: body.query,
        mode: body.mode.into(),
        filters: Filters {
            kinds,
            session,
            author: body.author,
            since: body.since,
            until: body.until,
            scope: body.scope,
            persona: body.persona,
            tags: body.tags,
            all_tags: body.tags_match == TagsMatch::All,
        },
        limit: body.limit.unwrap_or(DEFAULT_LIMIT),
        half_life,
    };
    let results = retrieval.search(&principal.tenant_id, &query).await?;
    Ok(Json(SearchResults {
        mode: results.mode.into(),
        hits: results.hits.into_iter().map(SearchHit::from).collect(),
        degraded: results.degraded,
    }))
}
