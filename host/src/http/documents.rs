//! `/v1/documents`: a tenant's living documents, their history, diffs, replacement
//! against a version (`If-Match`) and rollback. Viewers read; members and admins write;
//! platform keys are refused like tool calls; another tenant's documents answer 404.
//!
//! Reads of a document carry `ETag: "<version>"`. `PUT` needs `If-Match: "<version>"`
//! (or the bare number): without it 428 `precondition_required`; when the document has
//! moved on, 412 `stale_version` with the current version and content in `details`.
//! The diff is `text/x-diff` (a unified diff with `---`/`+++` headers naming
//! `<id>@v<n>`; empty when the versions are equal).

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use maestro_core::document::{DocAuthor, Document, DocumentId, DocumentKind, DocumentScope, Edit, VersionSummary};
use maestro_core::run::{MAX_PAGE, SessionId};
use maestro_core::{Caller, Role};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody, ErrorCode};
use super::extract::{StrictJson, StrictQuery};
use super::sessions::tenant_principal;
use super::{AppState, Shared};
use crate::documents::{Current, DocumentsError, NewDocument};
use crate::tools::Principal;

/// Default page size of document and version lists.
const DEFAULT_PAGE: u32 = 50;

/// Body of `POST /v1/documents`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDocument {
    /// A title, 1 to 256 bytes, no control characters.
    pub title: String,
    /// `markdown` or `json` (a JSON document's content must parse, in every version).
    #[schema(value_type = String)]
    pub kind: DocumentKind,
    /// The first version's content, at most 1 MiB (within the server's body limit).
    #[serde(default)]
    pub content: String,
    /// The session to attach it to (`ses_…`); absent: shared across the tenant.
    pub session: Option<String>,
}

/// Body of `PUT /v1/documents/{id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutDocument {
    /// The new content (a full replacement).
    pub content: String,
}

/// Body of `POST /v1/documents/{id}/rollback`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rollback {
    /// The version whose content becomes the new version's.
    pub version: i64,
}

/// Who wrote a version: a persona in a run's step, or a key.
#[derive(Debug, Serialize, ToSchema)]
pub struct DocAuthorView {
    /// `persona` or `user`.
    pub kind: &'static str,
    /// The persona's name (`persona`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The run (`persona`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// The step of the run (`persona`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
    /// The key's id (`user`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl From<DocAuthor> for DocAuthorView {
    fn from(author: DocAuthor) -> Self {
        match author {
            DocAuthor::Persona { name, run, step } => {
                Self { kind: "persona", name: Some(name), run: Some(run.to_string()), step: Some(step), key: None }
            }
            DocAuthor::User { key } => Self { kind: "user", name: None, run: None, step: None, key: Some(key) },
        }
    }
}

/// A document (with its current content when read alone).
#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentView {
    /// Its id (`doc_…`).
    pub id: String,
    /// Its title.
    pub title: String,
    /// `markdown` or `json`.
    pub kind: &'static str,
    /// The session it is attached to; absent: shared across the tenant.
    pub session: Option<String>,
    /// The current version, from 1 (also the `ETag`).
    pub version: i64,
    /// Who created it.
    pub created_by: DocAuthorView,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its last version was written.
    pub updated_at: DateTime<Utc>,
    /// The current version's content (absent in lists).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

impl DocumentView {
    fn new(document: Document, content: Option<String>) -> Self {
        Self {
            id: document.id.to_string(),
            title: document.title,
            kind: document.kind.as_str(),
            session: document.session.map(|s| s.to_string()),
            version: document.version,
            created_by: document.created_by.into(),
            created_at: document.created_at,
            updated_at: document.updated_at,
            content,
        }
    }
}

/// A page of documents, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentList {
    /// The documents (without content).
    pub documents: Vec<DocumentView>,
    /// Cursor of the next (older) page, for `before`; absent on the last page.
    pub next: Option<String>,
}

/// A version of a document.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionView {
    /// The version, from 1.
    pub version: i64,
    /// The edit that produced it: `{"op":"create"}`, `{"op":"replace"}`,
    /// `{"op":"patch","edits":[{"old","new"}]}` or `{"op":"rollback","to":n}`.
    #[schema(value_type = Object)]
    pub edit: Edit,
    /// Who wrote it.
    pub author: DocAuthorView,
    /// When.
    pub at: DateTime<Utc>,
    /// The content's size in bytes (lists).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<i64>,
    /// The content (one version).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

impl From<VersionSummary> for VersionView {
    fn from(v: VersionSummary) -> Self {
        Self {
            version: v.version,
            edit: v.edit,
            author: v.author.into(),
            at: v.at,
            bytes: Some(v.bytes),
            content: None,
        }
    }
}

/// A page of a document's versions, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionList {
    /// The versions (without content).
    pub versions: Vec<VersionView>,
    /// Cursor of the next page, for `after`; absent on the last page.
    pub next: Option<i64>,
}

/// Query of `GET /v1/documents`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DocumentsQuery {
    /// Only the documents attached to this session (`ses_…`).
    pub session: Option<String>,
    /// Continue with documents older than this cursor (`next` of the previous page).
    pub before: Option<String>,
    /// Page size, 1 to 200 (default 50).
    pub limit: Option<u32>,
}

/// Query of `GET /v1/documents/{id}/versions`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct VersionsQuery {
    /// Versions after this one (`next` of the previous page; default 0).
    pub after: Option<i64>,
    /// Page size, 1 to 200 (default 50).
    pub limit: Option<u32>,
}

/// Query of `GET /v1/documents/{id}/diff`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DiffQuery {
    /// The older side's version.
    pub from: i64,
    /// The newer side's version.
    pub to: i64,
}

impl From<DocumentsError> for ApiError {
    fn from(err: DocumentsError) -> Self {
        match err {
            DocumentsError::NotFound | DocumentsError::VersionNotFound(_) | DocumentsError::SessionNotFound => {
                ApiError::new(ErrorCode::NotFound, err.to_string())
            }
            DocumentsError::Invalid(_) => ApiError::new(ErrorCode::InvalidRequest, err.to_string()),
            DocumentsError::Rejected { ref current, .. } => {
                let details = json!({ "current_version": current.document.version });
                ApiError::new(ErrorCode::InvalidRequest, err.to_string()).with_details(details)
            }
            DocumentsError::Stale { ref current, .. } => {
                let details = json!({ "current_version": current.document.version, "content": current.content });
                ApiError::new(ErrorCode::StaleVersion, err.to_string()).with_details(details)
            }
            DocumentsError::Store(ref store) => match store {
                maestro_core::StoreError::Backend(_) => ApiError::internal(ErrorCode::Unavailable, &err),
                _ => ApiError::internal(ErrorCode::Internal, &err),
            },
        }
    }
}

/// The caller as a tenant principal that may write documents (members and admins).
async fn writer(state: &AppState, caller: &Caller) -> Result<Principal, ApiError> {
    let principal = tenant_principal(state, caller).await?;
    if !principal.role.includes(Role::Member) {
        return Err(ApiError::new(ErrorCode::Forbidden, "writing documents needs the member role"));
    }
    Ok(principal)
}

fn author(principal: &Principal) -> DocAuthor {
    DocAuthor::User { key: principal.key_id.clone() }
}

/// A document id from a path; a malformed one is simply not found.
fn document_id(raw: &str) -> Result<DocumentId, ApiError> {
    DocumentId::parse(raw).map_err(|_| ApiError::new(ErrorCode::NotFound, "document not found"))
}

fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(limit) if (1..=MAX_PAGE).contains(&limit) => Ok(limit),
        Some(_) => Err(ApiError::new(ErrorCode::InvalidRequest, format!("limit must be between 1 and {MAX_PAGE}"))),
    }
}

/// The `ETag` of a version: its number, quoted.
fn etag(version: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("a quoted number is a valid header value")
}

/// A document with its content and `ETag`.
fn with_etag(status: StatusCode, current: Current) -> Response {
    let tag = etag(current.document.version);
    let view = DocumentView::new(current.document, Some(current.content));
    let mut response = (status, Json(view)).into_response();
    response.headers_mut().insert(header::ETAG, tag);
    response
}

/// The version an `If-Match` header names: `"3"`, `W/"3"` or `3`. `None` when absent.
fn if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else { return Ok(None) };
    let invalid = || ApiError::new(ErrorCode::InvalidRequest, "If-Match must name one version, e.g. \"3\"");
    let text = value.to_str().map_err(|_| invalid())?.trim();
    let text = text.strip_prefix("W/").unwrap_or(text);
    let text = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(text);
    let version = text.parse::<i64>().map_err(|_| invalid())?;
    if version < 1 {
        return Err(invalid());
    }
    Ok(Some(version))
}

/// Creates a document (members and admins): 201 with its first version.
#[utoipa::path(post, path = "/v1/documents", tag = "documents", request_body = CreateDocument, security(("bearer" = [])),
    responses((status = 201, body = DocumentView, headers(("ETag" = String, description = "the version, quoted"))),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody, description = "no such session"),
        (status = 422, body = ErrorBody, description = "invalid title or content (a JSON document's content must parse)")))]
pub(super) async fn create(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    StrictJson(body): StrictJson<CreateDocument>,
) -> Result<Response, ApiError> {
    let principal = writer(&state, &caller).await?;
    let session = body
        .session
        .as_deref()
        .map(|raw| SessionId::parse(raw).map_err(|_| ApiError::new(ErrorCode::NotFound, "session not found")))
        .transpose()?;
    let new = NewDocument { title: body.title, kind: body.kind, content: body.content, session };
    let current = state.documents.create(&principal.tenant_id, new, author(&principal)).await?;
    Ok(with_etag(StatusCode::CREATED, current))
}

/// Lists the tenant's documents (or a session's), newest first, with cursor pagination.
#[utoipa::path(get, path = "/v1/documents", tag = "documents", params(DocumentsQuery), security(("bearer" = [])),
    responses((status = 200, body = DocumentList), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn list(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    StrictQuery(query): StrictQuery<DocumentsQuery>,
) -> Result<Json<DocumentList>, ApiError> {
    let principal = tenant_principal(&state, &caller).await?;
    let limit = page_limit(query.limit)?;
    let invalid = |what: &str, raw: &str| ApiError::new(ErrorCode::InvalidRequest, format!("invalid {what} `{raw}`"));
    let before = query.before.as_deref().map(|raw| DocumentId::parse(raw).map_err(|_| invalid("cursor", raw)));
    let before = before.transpose()?;
    let scope = match query.session.as_deref() {
        None => DocumentScope::All,
        Some(raw) => DocumentScope::Session(SessionId::parse(raw).map_err(|_| invalid("session", raw))?),
    };
    let documents = state.documents.list(&principal.tenant_id, &scope, before.as_ref(), limit).await?;
    let next = (documents.len() == limit as usize).then(|| documents.last().map(|d| d.id.to_string())).flatten();
    let documents = documents.into_iter().map(|d| DocumentView::new(d, None)).collect();
    Ok(Json(DocumentList { documents, next }))
}

/// A document with its current content; `ETag` is its version.
#[utoipa::path(get, path = "/v1/documents/{id}", tag = "documents", security(("bearer" = [])),
    params(("id" = String, Path, description = "document id (doc_…)")),
    responses((status = 200, body = DocumentView, headers(("ETag" = String, description = "the version, quoted"))),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn get_one(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let principal = tenant_principal(&state, &caller).await?;
    let current = state.documents.get(&principal.tenant_id, &document_id(&id)?).await?;
    Ok(with_etag(StatusCode::OK, current))
}

/// Replaces the content against the version named by `If-Match` (members and admins):
/// the new version, or 412 with the current one when the document moved on.
#[utoipa::path(put, path = "/v1/documents/{id}", tag = "documents", request_body = PutDocument, security(("bearer" = [])),
    params(("id" = String, Path, description = "document id (doc_…)"),
        ("If-Match" = String, Header, description = "the version the new content replaces, e.g. \"3\"")),
    responses((status = 200, body = DocumentView, headers(("ETag" = String, description = "the new version, quoted"))),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 412, body = ErrorBody, description = "`stale_version`: `details` has `current_version` and `content`"),
        (status = 422, body = ErrorBody, description = "invalid content or If-Match"),
        (status = 428, body = ErrorBody, description = "`precondition_required`: no If-Match")))]
pub(super) async fn put(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    StrictJson(body): StrictJson<PutDocument>,
) -> Result<Response, ApiError> {
    let principal = writer(&state, &caller).await?;
    let id = document_id(&id)?;
    let Some(base) = if_match(&headers)? else {
        return Err(ApiError::new(
            ErrorCode::PreconditionRequired,
            "If-Match with the version being replaced is required (read the document's ETag)",
        ));
    };
    let current = state.documents.put(&principal.tenant_id, &id, base, body.content, author(&principal)).await?;
    Ok(with_etag(StatusCode::OK, current))
}

/// A page of a document's versions (without content), oldest first.
#[utoipa::path(get, path = "/v1/documents/{id}/versions", tag = "documents", params(VersionsQuery), security(("bearer" = [])),
    params(("id" = String, Path, description = "document id (doc_…)")),
    responses((status = 200, body = VersionList), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub(super) async fn versions(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    StrictQuery(query): StrictQuery<VersionsQuery>,
) -> Result<Json<VersionList>, ApiError> {
    let principal = tenant_principal(&state, &caller).await?;
    let limit = page_limit(query.limit)?;
    let after = query.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::new(ErrorCode::InvalidRequest, "after must not be negative"));
    }
    let versions = state.documents.versions(&principal.tenant_id, &document_id(&id)?, after, limit).await?;
    let next = (versions.len() == limit as usize).then(|| versions.last().map(|v| v.version)).flatten();
    Ok(Json(VersionList { versions: versions.into_iter().map(VersionView::from).collect(), next }))
}

/// One version with its content.
#[utoipa::path(get, path = "/v1/documents/{id}/versions/{version}", tag = "documents", security(("bearer" = [])),
    params(("id" = String, Path, description = "document id (doc_…)"), ("version" = i64, Path, description = "the version")),
    responses((status = 200, body = VersionView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn version(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path((id, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let principal = tenant_principal(&state, &caller).await?;
    let id = document_id(&id)?;
    let number = version
        .parse::<i64>()
        .map_err(|_| ApiError::new(ErrorCode::NotFound, format!("version {version} not found")))?;
    let found = state.documents.version(&principal.tenant_id, &id, number).await?;
    let view = VersionView {
        version: found.version,
        edit: found.edit,
        author: found.author.into(),
        at: found.at,
        bytes: None,
        content: Some(found.content),
    };
    let mut response = Json(view).into_response();
    response.headers_mut().insert(header::ETAG, etag(found.version));
    Ok(response)
}

/// The unified diff between two versions, as `text/x-diff`.
#[utoipa::path(get, path = "/v1/documents/{id}/diff", tag = "documents", params(DiffQuery), security(("bearer" = [])),
    params(("id" = String, Path, description = "document id (doc_…)")),
    responses((status = 200, content_type = "text/x-diff", body = String,
            description = "a unified diff (`--- <id>@v<from>`, `+++ <id>@v<to>`, hunks with 3 lines of context); empty when equal"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn diff(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    StrictQuery(query): StrictQuery<DiffQuery>,
) -> Result<Response, ApiError> {
    let principal = tenant_principal(&state, &caller).await?;
    let diff = state.documents.diff(&principal.tenant_id, &document_id(&id)?, query.from, query.to).await?;
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("text/x-diff; charset=utf-8"))], diff).into_response())
}

/// Writes a new version holding an earlier version's content (members and admins);
/// history is kept. An `If-Match` header, when given, must name the current version.
#[utoipa::path(post, path = "/v1/documents/{id}/rollback", tag = "documents", request_body = Rollback, security(("bearer" = [])),
    params(("id" = String, Path, description = "document id (doc_…)"),
        ("If-Match" = Option<String>, Header, description = "the version being replaced, e.g. \"3\"")),
    responses((status = 200, body = DocumentView, headers(("ETag" = String, description = "the new version, quoted"))),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 412, body = ErrorBody, description = "`stale_version`: If-Match is not the current version")))]
pub(super) async fn rollback(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    StrictJson(body): StrictJson<Rollback>,
) -> Result<Response, ApiError> {
    let principal = writer(&state, &caller).await?;
    let id = document_id(&id)?;
    let base = if_match(&headers)?;
    let current = state.documents.rollback(&principal.tenant_id, &id, body.version, base, author(&principal)).await?;
    Ok(with_etag(StatusCode::OK, current))
}
