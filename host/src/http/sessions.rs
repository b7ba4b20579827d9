//! `/v1/sessions`: conversations of a tenant's users with a team of personas, their
//! messages (posting one starts a run), and one event stream for everything happening
//! in a session. Members create and post; viewers read; platform keys are refused like
//! tool calls; another tenant's sessions answer 404.

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use maestro_core::Caller;
use maestro_core::run::{Author, MAX_PAGE, Message, RunLimits, Session, SessionId, Strategy};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody, ErrorCode};
use super::events::{EventsQuery, Positions};
use super::extract::{StrictJson, StrictQuery};
use super::runs::RunView;
use super::tools::{call_error, principal_of};
use super::{AppState, Shared};
use crate::orchestrator::NewSession;
use crate::tools::{CallError, Principal};

/// Default page size of session and message lists.
const DEFAULT_PAGE: u32 = 50;

/// Limits of each run of a session; omitted fields take their defaults.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsBody {
    /// Most steps per run, 1 to 100 (default 8).
    pub max_steps: Option<u32>,
    /// Most tool calls within one step, 0 to 64 (default 8).
    pub max_tool_calls_per_step: Option<u32>,
    /// Most credits one run may spend (default: the wallet is the only bound).
    pub credits_budget: Option<i64>,
    /// Wall-clock seconds a run may take, 1 to 86400 (default 600); time spent waiting
    /// for the user's answers is not counted.
    pub deadline_secs: Option<u64>,
    /// Seconds a run's question to the user waits for its answer before the run expires
    /// (default: the server's `[runs] wait_timeout`).
    pub wait_timeout_secs: Option<u64>,
}

impl From<LimitsBody> for RunLimits {
    fn from(body: LimitsBody) -> Self {
        let default = RunLimits::default();
        RunLimits {
            max_steps: body.max_steps.unwrap_or(default.max_steps),
            max_tool_calls_per_step: body.max_tool_calls_per_step.unwrap_or(default.max_tool_calls_per_step),
            credits_budget: body.credits_budget.or(default.credits_budget),
            deadline_secs: body.deadline_secs.unwrap_or(default.deadline_secs),
            wait_timeout_secs: body.wait_timeout_secs.or(default.wait_timeout_secs),
        }
    }
}

/// Body of `POST /v1/sessions`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// A title, at most 200 characters (default: none).
    #[serde(default)]
    pub title: String,
    /// The team: 1 to 16 distinct `plugin.persona` names the caller may use, in order.
    pub personas: Vec<String>,
    /// `router` (default), `round_robin`, `sequence` or `parallel`.
    #[serde(default = "default_strategy")]
    #[schema(value_type = String)]
    pub strategy: Strategy,
    /// Limits of each run.
    pub limits: Option<LimitsBody>,
}

fn default_strategy() -> Strategy {
    Strategy::Router
}

/// Limits of each run of a session.
#[derive(Debug, Serialize, ToSchema)]
pub struct LimitsView {
    /// Most steps per run.
    pub max_steps: u32,
    /// Most tool calls within one step.
    pub max_tool_calls_per_step: u32,
    /// Most credits one run may spend (absent: the wallet is the only bound).
    pub credits_budget: Option<i64>,
    /// Wall-clock seconds a run may take.
    pub deadline_secs: u64,
    /// Seconds a question to the user waits (absent: the server's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_timeout_secs: Option<u64>,
}

impl From<RunLimits> for LimitsView {
    fn from(limits: RunLimits) -> Self {
        Self {
            max_steps: limits.max_steps,
            max_tool_calls_per_step: limits.max_tool_calls_per_step,
            credits_budget: limits.credits_budget,
            deadline_secs: limits.deadline_secs,
            wait_timeout_secs: limits.wait_timeout_secs,
        }
    }
}

/// A session.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    /// Its id (`ses_…`).
    pub id: String,
    /// Its title.
    pub title: String,
    /// The team, in order.
    pub personas: Vec<String>,
    /// How the next speaker is picked.
    pub strategy: String,
    /// Limits of each run.
    pub limits: LimitsView,
    /// The key that created it.
    pub created_by: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

impl From<Session> for SessionView {
    fn from(session: Session) -> Self {
        Self {
            id: session.id.to_string(),
            title: session.title,
            personas: session.personas,
            strategy: session.strategy.as_str().to_owned(),
            limits: session.limits.into(),
            created_by: session.created_by,
            created_at: session.created_at,
        }
    }
}

/// A page of sessions, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionList {
    /// The sessions.
    pub sessions: Vec<SessionView>,
    /// Cursor of the next (older) page, for `before`; absent on the last page.
    pub next: Option<String>,
}

/// Query of `GET /v1/sessions`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SessionsQuery {
    /// Continue with sessions older than this cursor (`next` of the previous page).
    pub before: Option<String>,
    /// Page size, 1 to 200 (default 50).
    pub limit: Option<u32>,
}

/// Who wrote a message.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuthorView {
    /// `user` or `persona`.
    pub kind: &'static str,
    /// The user's key id (`user`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The persona's name (`persona`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A message of a session.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageView {
    /// Its id (`msg_…`).
    pub id: String,
    /// Its session.
    pub session: String,
    /// Position in the session, dense from 1.
    pub seq: i64,
    /// Who wrote it.
    pub author: AuthorView,
    /// The text.
    pub content: String,
    /// The run it started (a user's message) or was written in (a persona's).
    pub run: Option<String>,
    /// When it was written.
    pub at: DateTime<Utc>,
}

impl From<Message> for MessageView {
    fn from(message: Message) -> Self {
        let author = match message.author {
            Author::User { key_id } => AuthorView { kind: "user", key_id: Some(key_id), name: None },
            Author::Persona { name } => AuthorView { kind: "persona", key_id: None, name: Some(name) },
        };
        Self {
            id: message.id.to_string(),
            session: message.session.to_string(),
            seq: message.seq,
            author,
            content: message.content,
            run: message.run.map(|run| run.to_string()),
            at: message.at,
        }
    }
}

/// A page of messages, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageList {
    /// The messages.
    pub messages: Vec<MessageView>,
    /// Cursor of the next page, for `after`; absent on the last page.
    pub next: Option<i64>,
}

/// Query of `GET /v1/sessions/{id}/messages`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct MessagesQuery {
    /// Messages with a `seq` greater than this (`next` of the previous page; default 0).
    pub after: Option<i64>,
    /// Page size, 1 to 200 (default 50).
    pub limit: Option<u32>,
}

/// Body of `POST /v1/sessions/{id}/messages`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostMessage {
    /// The text, not blank, at most 64 KiB.
    pub content: String,
}

/// Answer of `POST /v1/sessions/{id}/messages`: the message and the run answering it.
#[derive(Debug, Serialize, ToSchema)]
pub struct PostedView {
    /// The message as stored.
    pub message: MessageView,
    /// The run it started (queued), with links to it and its events.
    pub run: RunView,
}

/// The caller as a tenant principal; platform keys are refused as for tool calls.
pub(super) async fn tenant_principal(state: &AppState, caller: &Caller) -> Result<Principal, ApiError> {
    principal_of(state, caller).await?.ok_or_else(|| call_error(CallError::NotATenant))
}

fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(limit) if (1..=MAX_PAGE).contains(&limit) => Ok(limit),
        Some(_) => Err(ApiError::new(ErrorCode::InvalidRequest, format!("limit must be between 1 and {MAX_PAGE}"))),
    }
}

/// A session id from a path; a malformed one is simply not found.
fn session_id(raw: &str) -> Result<SessionId, ApiError> {
    SessionId::parse(raw).map_err(|_| ApiError::new(ErrorCode::NotFound, format!("session {raw} not found")))
}

/// Creates a session (members and admins).
#[utoipa::path(post, path = "/v1/sessions", tag = "sessions", request_body = CreateSession, security(("bearer" = [])),
    responses((status = 201, body = SessionView), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "invalid title, team or limits, or `unknown_persona`")))]
pub(super) async fn create(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    StrictJson(body): StrictJson<CreateSession>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = tenant_principal(&state, &caller).await?;
    let new = NewSession {
        title: body.title,
        personas: body.personas,
        strategy: body.strategy,
        limits: body.limits.map(RunLimits::from),
    };
    let session = state.orchestrator.create_session(&principal, new).await?;
    Ok((StatusCode::CREATED, Json(SessionView::from(session))))
}

/// Lists the tenant's sessions, newest first, with cursor pagination.
#[utoipa::path(get, path = "/v1/sessions", tag = "sessions", params(SessionsQuery), security(("bearer" = [])),
    responses((status = 200, body = SessionList), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn list(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    StrictQuery(query): StrictQuery<SessionsQuery>,
) -> Result<Json<SessionList>, ApiError> {
    let principal = tenant_principal(&state, &caller).await?;
    let limit = page_limit(query.limit)?;
    let before = query
        .before
        .as_deref()
        .map(|raw| {
            SessionId::parse(raw)
                .map_err(|_| ApiError::new(ErrorCode::InvalidRequest, format!("invalid cursor `{raw}`")))
        })
        .transpose()?;
    let sessions = state.orchestrator.sessions(&principal, before.as_ref(), limit).await?;
    let next = (sessions.len() == limit as usize).then(|| sessions.last().map(|s| s.id.to_string())).flatten();
    Ok(Json(SessionList { sessions: sessions.into_iter().map(SessionView::from).collect(), next }))
}

/// A session of the caller's tenant.
#[utoipa::path(get, path = "/v1/sessions/{id}", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "session id (ses_…)")),
    responses((status = 200, body = SessionView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn get_one(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<SessionView>, ApiError> {
    let principal = tenant_principal(&state, &caller).await?;
    let session = state.orchestrator.session(&principal, &session_id(&id)?).await?;
    Ok(Json(session.into()))
}

/// A page of a session's messages, oldest first.
#[utoipa::path(get, path = "/v1/sessions/{id}/messages", tag = "sessions", params(MessagesQuery), security(("bearer" = [])),
    params(("id" = String, Path, description = "session id (ses_…)")),
    responses((status = 200, body = MessageList), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub(super) async fn messages(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    StrictQuery(query): StrictQuery<MessagesQuery>,
) -> Result<Json<MessageList>, ApiError> {
    let principal = tenant_principal(&state, &caller).await?;
    let limit = page_limit(query.limit)?;
    let after = query.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::new(ErrorCode::InvalidRequest, "after must not be negative"));
    }
    let messages = state.orchestrator.messages(&principal, &session_id(&id)?, after, limit).await?;
    let next = (messages.len() == limit as usize).then(|| messages.last().map(|m| m.seq)).flatten();
    Ok(Json(MessageList { messages: messages.into_iter().map(MessageView::from).collect(), next }))
}

/// Posts a message and starts a run answering it (members and admins): 202 with the
/// message and the queued run.
#[utoipa::path(post, path = "/v1/sessions/{id}/messages", tag = "sessions", request_body = PostMessage, security(("bearer" = [])),
    params(("id" = String, Path, description = "session id (ses_…)")),
    responses((status = 202, body = PostedView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub(super) async fn post_message(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    StrictJson(body): StrictJson<PostMessage>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = tenant_principal(&state, &caller).await?;
    let posted = state.orchestrator.post_message(&principal, &session_id(&id)?, body.content).await?;
    let view = PostedView { message: posted.message.into(), run: posted.run.into() };
    Ok((StatusCode::ACCEPTED, Json(view)))
}

/// Everything happening in a session, as server-sent events: `id:` is the session's
/// `session_seq`; resumes after `Last-Event-ID` (or `?after=`) from the store, then
/// follows live; never ends (heartbeat comments while idle).
#[utoipa::path(get, path = "/v1/sessions/{id}/events", tag = "sessions", params(EventsQuery), security(("bearer" = [])),
    params(("id" = String, Path, description = "session id (ses_…)"),
        ("Last-Event-ID" = Option<String>, Header, description = "resume after this session_seq")),
    responses(
        (status = 200, content_type = "text/event-stream", body = String,
            description = "`id: <session_seq>`, `event: <type>`, `data: <json: run, seq, session_seq, type, v, at, data>`"),
        (status = 400, body = ErrorBody, description = "`invalid_last_event_id`: malformed, or beyond the session's last event"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "unknown query parameter")))]
pub(super) async fn events(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    StrictQuery(query): StrictQuery<EventsQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = tenant_principal(&state, &caller).await?;
    let session = state.orchestrator.session(&principal, &session_id(&id)?).await?;
    let hub = state.orchestrator.hub();
    let head = hub.store().session_head(&session.id).await?;
    let after = super::events::resume_position(&headers, &query, head)?;
    let feed = hub.session_feed(&session.id, after);
    Ok(super::events::stream(feed, Positions::Session, hub.heartbeat_interval(), state.shutdown.clone()))
}
