//! `POST /v1/search`: full-text search over the caller's tenant's messages and
//! documents (mode `text`; the hybrid mode joins with memories). Every tenant key may
//! search (viewers included, like reading documents); the tenant comes from the key,
//! never from the request.

use axum::Extension;
use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use maestro_core::Caller;
use maestro_core::run::SessionId;
use maestro_core::search::SearchKind;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::extract::StrictJson;
use super::sessions::tenant_principal;
use crate::search::{SearchError, TextFilters, TextHit};

/// Hits returned when `limit` is absent.
const DEFAULT_LIMIT: usize = 10;
/// The most hits one request returns.
const MAX_LIMIT: usize = 100;

/// How to search.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SearchMode {
    /// BM25 over the full-text index.
    #[default]
    Text,
}

/// Body of `POST /v1/search`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// The words to look for. Query syntax is accepted leniently (`"a phrase"`,
    /// `+must -not`, `title:word`); what cannot be parsed is searched as text or
    /// ignored, never an error.
    pub query: String,
    /// `text` (the default).
    #[serde(default)]
    pub mode: SearchMode,
    /// Only these kinds: `message`, `document`, `memory` (default: all).
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Only objects of this session (`ses_…`).
    pub session: Option<String>,
    /// Only objects written by this persona (`plugin.persona`) or key id.
    pub author: Option<String>,
    /// Written at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Written before this time.
    pub until: Option<DateTime<Utc>>,
    /// Hits to return, 1 to 100 (default 10).
    pub limit: Option<usize>,
}

/// One hit.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchHit {
    /// `message`, `document` or `memory`.
    pub kind: String,
    /// Its id (`msg_…`, `doc_…`).
    pub id: String,
    /// Its BM25 score.
    pub score: f32,
    /// Its position in the results, from 1.
    pub rank: usize,
    /// A fragment of its text around the matched words.
    pub snippet: String,
    /// Where the matched words are in `snippet`.
    pub highlights: Vec<Highlight>,
    /// Its session.
    pub session: Option<String>,
    /// Its title (documents).
    pub title: Option<String>,
    /// Who wrote it (a persona's name or a key id).
    pub author: Option<String>,
    /// When it was written (a document: its current version).
    pub at: DateTime<Utc>,
}

/// A matched word in a snippet: bytes `start..end`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Highlight {
    /// Its first byte.
    pub start: usize,
    /// The byte after its last.
    pub end: usize,
}

impl From<TextHit> for SearchHit {
    fn from(hit: TextHit) -> Self {
        Self {
            kind: hit.kind.as_str().to_owned(),
            id: hit.id,
            score: hit.score,
            rank: hit.rank,
            snippet: hit.snippet,
            highlights: hit.highlights.into_iter().map(|(start, end)| Highlight { start, end }).collect(),
            session: hit.session,
            title: hit.title,
            author: hit.author,
            at: hit.at,
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

/// Searches the caller's tenant.
#[utoipa::path(post, path = "/v1/search", tag = "search", request_body = SearchRequest, security(("bearer" = [])),
    responses((status = 200, body = SearchResults), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "empty or over-long query, unknown kind, bad session or limit"),
        (status = 503, body = ErrorBody, description = "this server keeps no search index")))]
pub(super) async fn search(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    StrictJson(body): StrictJson<SearchRequest>,
) -> Result<Json<SearchResults>, ApiError> {
    let principal = tenant_principal(&state, &caller).await?;
    let invalid = |message: String| ApiError::new(ErrorCode::InvalidRequest, message);
    let limit = body.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(invalid(format!("limit must be between 1 and {MAX_LIMIT}")));
    }
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
    let Some(index) = &state.search else {
        return Err(ApiError::new(ErrorCode::Unavailable, "search is not available on this server"));
    };
    let filters = TextFilters {
        kinds,
        session,
        author: body.author,
        since: body.since,
        until: body.until,
        exclude_session: None,
    };
    let hits = index.full_text(&principal.tenant_id, &body.query, &filters, limit).await?;
    Ok(Json(SearchResults { mode: body.mode, hits: hits.into_iter().map(SearchHit::from).collect() }))
}
