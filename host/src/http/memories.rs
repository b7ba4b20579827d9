//! `/v1/memories`: what a tenant's people and agents asked to be remembered. People see,
//! edit and delete it here. Viewers read and search; members and admins write; platform
//! keys are refused like documents'; another tenant's memories answer 404. Without a
//! configured embedder, or when it fails, the routes answer 503 `embedder_unavailable`.

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use maestro_core::memory::{MAX_TAGS, Memory, MemoryFilter, MemoryHit, MemoryId, MemoryScope, TagMatch};
use maestro_core::run::{MAX_PAGE, SessionId};
use maestro_core::{Caller, Role};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody, ErrorCode};
use super::extract::{StrictJson, StrictQuery};
use super::sessions::tenant_principal;
use super::{AppState, Shared};
use crate::memory::{Memories, MemoriesError, MemoryEdit, NewMemory};
use crate::tools::Principal;

/// Default page size of memory lists.
const DEFAULT_PAGE: u32 = 50;
/// Default number of search hits.
const DEFAULT_K: u32 = 10;

/// Body of `POST /v1/memories`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMemory {
    /// What to remember: 1 to 4096 bytes (trimmed), no control characters but newlines
    /// and tabs.
    pub text: String,
    /// `tenant` (default), `persona` (with `persona`) or `session` (with `session`).
    #[serde(default)]
    pub scope: Option<String>,
    /// The persona's qualified name (`plugin.persona`) of a `persona` scope.
    pub persona: Option<String>,
    /// The session (`ses_…`) of a `session` scope.
    pub session: Option<String>,
    /// Up to 16 tags of 1 to 64 bytes (letters, digits, `-_.:/`; lowercased).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Exempt from recency decay in searches.
    #[serde(default)]
    pub pinned: bool,
}

/// Body of `PATCH /v1/memories/{id}`: absent fields stay.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchMemory {
    /// A new text (re-embedded).
    pub text: Option<String>,
    /// New tags (replacing the old ones).
    pub tags: Option<Vec<String>>,
    /// Pinned or not.
    pub pinned: Option<bool>,
}

/// Body of `POST /v1/memories/search`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchMemories {
    /// What to look for (embedded; 1 to 4096 bytes).
    pub query: String,
    /// How many hits, 1 to 100 (default 10).
    pub k: Option<u32>,
    /// Only this scope kind: `tenant`, `persona` or `session`.
    pub scope: Option<String>,
    /// Only this persona's memories.
    pub persona: Option<String>,
    /// Only this session's memories.
    pub session: Option<String>,
    /// Only memories carrying any (or all, with `tags_match`) of these tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// `any` (default) or `all`.
    #[schema(value_type = Option<String>)]
    pub tags_match: Option<TagMatch>,
    /// Created at or after.
    pub created_from: Option<DateTime<Utc>>,
    /// Created before.
    pub created_to: Option<DateTime<Utc>>,
}

/// Query of `GET /v1/memories`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct MemoriesQuery {
    /// Only this scope kind: `tenant`, `persona` or `session`.
    pub scope: Option<String>,
    /// Only this persona's memories.
    pub persona: Option<String>,
    /// Only this session's memories (`ses_…`).
    pub session: Option<String>,
    /// Comma-separated tags: memories carrying any of them (all, with `tags_match=all`).
    pub tags: Option<String>,
    /// `any` (default) or `all`.
    #[param(value_type = Option<String>)]
    pub tags_match: Option<TagMatch>,
    /// Created at or after (RFC 3339).
    pub created_from: Option<DateTime<Utc>>,
    /// Created before (RFC 3339).
    pub created_to: Option<DateTime<Utc>>,
    /// Continue with memories older than this cursor (`next` of the previous page).
    pub before: Option<String>,
    /// Page size, 1 to 200 (default 50).
    pub limit: Option<u32>,
}

/// The run and step an agent's memory came from.
#[derive(Debug, Serialize, ToSchema)]
pub struct SourceView {
    /// The run (`run_…`).
    pub run: String,
    /// The step of the run.
    pub step: u32,
}

/// A memory.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemoryView {
    /// Its id (`mem_…`).
    pub id: String,
    /// `tenant`, `persona` or `session`.
    pub scope: &'static str,
    /// The persona of a `persona` scope.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persona: Option<String>,
    /// The session of a `session` scope.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// What is remembered.
    pub text: String,
    /// Its tags.
    pub tags: Vec<String>,
    /// Exempt from recency decay.
    pub pinned: bool,
    /// The run and step that made it, when an agent did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceView>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When a search last returned it.
    pub last_used_at: Option<DateTime<Utc>>,
    /// The embedder of its vector (`provider/model@dimensions`).
    pub embedder: String,
}

impl From<Memory> for MemoryView {
    fn from(m: Memory) -> Self {
        let (persona, session) = match &m.scope {
            MemoryScope::Tenant => (None, None),
            MemoryScope::Persona(name) => (Some(name.clone()), None),
            MemoryScope::Session(id) => (None, Some(id.to_string())),
        };
        Self {
            id: m.id.to_string(),
            scope: m.scope.kind(),
            persona,
            session,
            text: m.text,
            tags: m.tags,
            pinned: m.pinned,
            source: m.source.map(|s| SourceView { run: s.run.to_string(), step: s.step }),
            created_at: m.created_at,
            updated_at: m.updated_at,
            last_used_at: m.last_used_at,
            embedder: m.embedder.key(),
        }
    }
}

/// A page of memories, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemoryList {
    /// The memories.
    pub memories: Vec<MemoryView>,
    /// Cursor of the next (older) page, for `before`; absent on the last page.
    pub next: Option<String>,
}

/// A search hit.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemoryHitView {
    /// The memory.
    pub memory: MemoryView,
    /// Its cosine similarity to the query, in `[-1, 1]`.
    pub score: f32,
}

/// Search hits, best first.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemoryHits {
    /// The hits.
    pub hits: Vec<MemoryHitView>,
}

impl From<MemoryHit> for MemoryHitView {
    fn from(hit: MemoryHit) -> Self {
        Self { memory: hit.memory.into(), score: hit.score }
    }
}

impl From<MemoriesError> for ApiError {
    fn from(err: MemoriesError) -> Self {
        match err {
            MemoriesError::NotFound | MemoriesError::SessionNotFound => {
                ApiError::new(ErrorCode::NotFound, err.to_string())
            }
            MemoriesError::Invalid(_) => ApiError::new(ErrorCode::InvalidRequest, err.to_string()),
            MemoriesError::Embedding(_) => ApiError::internal(ErrorCode::EmbedderUnavailable, &err),
            MemoriesError::Store(ref store) => match store {
                maestro_core::StoreError::Backend(_) => ApiError::internal(ErrorCode::Unavailable, &err),
                _ => ApiError::internal(ErrorCode::Internal, &err),
            },
        }
    }
}

/// The caller as a tenant principal, and the memory use-cases.
async fn reader<'a>(state: &'a AppState, caller: &Caller) -> Result<(Principal, &'a Memories), ApiError> {
    let principal = tenant_principal(state, caller).await?;
    let memories = state.memories.as_deref().ok_or_else(|| {
        ApiError::client_safe(
            ErrorCode::EmbedderUnavailable,
            "memory needs an embedder; none is configured on this server",
        )
    })?;
    Ok((principal, memories))
}

/// The same, for members and admins.
async fn writer<'a>(state: &'a AppState, caller: &Caller) -> Result<(Principal, &'a Memories), ApiError> {
    let (principal, memories) = reader(state, caller).await?;
    if !principal.role.includes(Role::Member) {
        return Err(ApiError::new(ErrorCode::Forbidden, "changing memories needs the member role"));
    }
    Ok((principal, memories))
}

/// A memory id from a path; a malformed one is simply not found.
fn memory_id(raw: &str) -> Result<MemoryId, ApiError> {
    MemoryId::parse(raw).map_err(|_| ApiError::new(ErrorCode::NotFound, "memory not found"))
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidRequest, message)
}

/// A filter from its parts, every value checked.
fn filter(
    scope: Option<&str>,
    persona: Option<String>,
    session: Option<&str>,
    tags: Vec<String>,
    tags_match: Option<TagMatch>,
    created: (Option<DateTime<Utc>>, Option<DateTime<Utc>>),
) -> Result<MemoryFilter, ApiError> {
    let scope_kind = match scope {
        None => None,
        Some("tenant") => Some("tenant"),
        Some("persona") => Some("persona"),
        Some("session") => Some("session"),
        Some(other) => {
            let other: String = other.chars().take(32).collect();
            return Err(invalid(format!("unknown scope `{other}` (tenant, persona or session)")));
        }
    };
    if let Some(name) = &persona {
        MemoryScope::parse("persona", Some(name)).map_err(|e| invalid(e.to_string()))?;
    }
    let session = session
        .map(|raw| SessionId::parse(raw).map_err(|_| invalid(format!("`{}` is not a session id", truncate(raw)))))
        .transpose()?;
    if tags.len() > MAX_TAGS {
        return Err(invalid(format!("at most {MAX_TAGS} tags")));
    }
    let tags = maestro_core::memory::normalise_tags(&tags).map_err(|e| invalid(e.to_string()))?;
    Ok(MemoryFilter {
        scope_kind,
        persona,
        session,
        tags,
        tag_match: tags_match.unwrap_or_default(),
        created_from: created.0,
        created_to: created.1,
    })
}

fn truncate(raw: &str) -> String {
    raw.chars().take(64).collect()
}

/// Remembers something (members and admins): 201 with the memory.
#[utoipa::path(post, path = "/v1/memories", tag = "memories", request_body = CreateMemory, security(("bearer" = [])),
    responses((status = 201, body = MemoryView), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "the session of a session scope is not the tenant's"),
        (status = 422, body = ErrorBody, description = "empty or too long text, bad tags, unknown scope"),
        (status = 503, body = ErrorBody, description = "`embedder_unavailable`: no embedder, or it failed")))]
pub(super) async fn create(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    StrictJson(body): StrictJson<CreateMemory>,
) -> Result<Response, ApiError> {
    let (principal, memories) = writer(&state, &caller).await?;
    let kind = body.scope.as_deref().unwrap_or("tenant");
    let target = match kind {
        "persona" => body.persona.as_deref(),
        "session" => body.session.as_deref(),
        _ => body.persona.as_deref().or(body.session.as_deref()),
    };
    let scope = MemoryScope::parse(kind, target).map_err(|e| invalid(e.to_string()))?;
    let new = NewMemory { scope, text: body.text, tags: body.tags, pinned: body.pinned, source: None };
    let memory = memories.store(&principal.tenant_id, new).await?;
    Ok((StatusCode::CREATED, Json(MemoryView::from(memory))).into_response())
}

/// Lists the tenant's memories, newest first, with filters and cursor pagination.
#[utoipa::path(get, path = "/v1/memories", tag = "memories", params(MemoriesQuery), security(("bearer" = [])),
    responses((status = 200, body = MemoryList), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "`embedder_unavailable`: no embedder is configured")))]
pub(super) async fn list(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    StrictQuery(query): StrictQuery<MemoriesQuery>,
) -> Result<Json<MemoryList>, ApiError> {
    let (principal, memories) = reader(&state, &caller).await?;
    let limit = match query.limit {
        None => DEFAULT_PAGE,
        Some(limit) if (1..=MAX_PAGE).contains(&limit) => limit,
        Some(_) => return Err(invalid(format!("limit must be between 1 and {MAX_PAGE}"))),
    };
    let before = query
        .before
        .as_deref()
        .map(|raw| MemoryId::parse(raw).map_err(|_| invalid(format!("invalid cursor `{}`", truncate(raw)))))
        .transpose()?;
    let tags: Vec<String> = query
        .tags
        .as_deref()
        .map(|t| t.split(',').filter(|t| !t.trim().is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    let filter = filter(
        query.scope.as_deref(),
        query.persona,
        query.session.as_deref(),
        tags,
        query.tags_match,
        (query.created_from, query.created_to),
    )?;
    let found = memories.list(&principal.tenant_id, &filter, before.as_ref(), limit).await?;
    let next = (found.len() == limit as usize).then(|| found.last().map(|m| m.id.to_string())).flatten();
    Ok(Json(MemoryList { memories: found.into_iter().map(MemoryView::from).collect(), next }))
}

/// The tenant's memories nearest in meaning to a query, best first.
#[utoipa::path(post, path = "/v1/memories/search", tag = "memories", request_body = SearchMemories, security(("bearer" = [])),
    responses((status = 200, body = MemoryHits), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "`embedder_unavailable`: no embedder, or it failed")))]
pub(super) async fn search(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    StrictJson(body): StrictJson<SearchMemories>,
) -> Result<Json<MemoryHits>, ApiError> {
    let (principal, memories) = reader(&state, &caller).await?;
    let filter = filter(
        body.scope.as_deref(),
        body.persona,
        body.session.as_deref(),
        body.tags,
        body.tags_match,
        (body.created_from, body.created_to),
    )?;
    let hits = memories.search(&principal.tenant_id, &body.query, &filter, body.k.unwrap_or(DEFAULT_K)).await?;
    Ok(Json(MemoryHits { hits: hits.into_iter().map(MemoryHitView::from).collect() }))
}

/// One memory.
#[utoipa::path(get, path = "/v1/memories/{id}", tag = "memories", security(("bearer" = [])),
    params(("id" = String, Path, description = "memory id (mem_…)")),
    responses((status = 200, body = MemoryView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "`embedder_unavailable`: no embedder is configured")))]
pub(super) async fn get_one(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<MemoryView>, ApiError> {
    let (principal, memories) = reader(&state, &caller).await?;
    Ok(Json(memories.get(&principal.tenant_id, &memory_id(&id)?).await?.into()))
}

/// Edits a memory (members and admins): a new text is re-embedded.
#[utoipa::path(patch, path = "/v1/memories/{id}", tag = "memories", request_body = PatchMemory, security(("bearer" = [])),
    params(("id" = String, Path, description = "memory id (mem_…)")),
    responses((status = 200, body = MemoryView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "empty or too long text, bad tags"),
        (status = 503, body = ErrorBody, description = "`embedder_unavailable`: no embedder, or it failed")))]
pub(super) async fn patch(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    StrictJson(body): StrictJson<PatchMemory>,
) -> Result<Json<MemoryView>, ApiError> {
    let (principal, memories) = writer(&state, &caller).await?;
    let edit = MemoryEdit { text: body.text, tags: body.tags, pinned: body.pinned };
    Ok(Json(memories.edit(&principal.tenant_id, &memory_id(&id)?, edit).await?.into()))
}

/// Forgets a memory (members and admins): 204.
#[utoipa::path(delete, path = "/v1/memories/{id}", tag = "memories", security(("bearer" = [])),
    params(("id" = String, Path, description = "memory id (mem_…)")),
    responses((status = 204, description = "deleted"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "`embedder_unavailable`: no embedder is configured")))]
pub(super) async fn delete_one(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (principal, memories) = writer(&state, &caller).await?;
    memories.delete(&principal.tenant_id, &memory_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}
