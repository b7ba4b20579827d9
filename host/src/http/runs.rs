//! `/v1/runs/{id}`: a run's state, usage, credits and timings; cancelling it; and its
//! events as server-sent events (replayed from the store, then live, ending after the
//! terminal event). Viewers read; members cancel; another tenant's runs answer 404.

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use maestro_core::Caller;
use maestro_core::run::{AnswerAction, Asker, Run, RunId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody, ErrorCode};
use super::events::{EventsQuery, Positions};
use super::extract::{StrictJson, StrictQuery};
use super::sessions::{LimitsView, tenant_principal};
use super::{AppState, Shared};
use crate::orchestrator::{AnswerInput, PendingQuestion};

/// Tokens as providers reported them.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageView {
    /// Prompt tokens (cached and cache-writing ones included).
    pub input_tokens: u64,
    /// Completion tokens (reasoning tokens included).
    pub output_tokens: u64,
    /// Of the input, tokens read from the provider's prompt cache.
    pub cached_input_tokens: u64,
    /// Of the input, tokens written to the provider's prompt cache.
    pub cache_write_tokens: u64,
    /// Of the output, reasoning tokens.
    pub reasoning_tokens: u64,
}

/// What a run used.
#[derive(Debug, Serialize, ToSchema)]
pub struct TotalsView {
    /// Steps taken.
    pub steps: u32,
    /// Model calls answered.
    pub model_calls: u32,
    /// Tool calls run.
    pub tool_calls: u32,
    /// Tokens.
    pub usage: UsageView,
    /// Credits spent (model settlements and tool charges).
    pub credits: i64,
}

/// Why a run failed.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunErrorView {
    /// A stable code (`no_model_provider`, `insufficient_credits`, `budget_exceeded`, …).
    pub code: String,
    /// What happened.
    pub message: String,
}

/// Where to read a run and its events.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunLinks {
    /// `GET` this run.
    #[serde(rename = "self")]
    pub this: String,
    /// Its events as server-sent events.
    pub events: String,
    /// `POST` to cancel it.
    pub cancel: String,
    /// `POST` the answer to its open question (while it is `waiting_input`).
    pub answer: String,
}

/// Who asked a run's open question.
#[derive(Debug, Serialize, ToSchema)]
pub struct AskerView {
    /// `persona` (through the `ask_user` tool) or `router` (deciding a turn).
    pub kind: String,
    /// The persona (`plugin.persona`), when a persona asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persona: Option<String>,
    /// The step, when a persona asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
    /// The model's tool call id, when a persona asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    /// The turn being decided, when the router asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turn: Option<u32>,
    /// The plugin tool (`plugin.tool`), when a tool a persona called asked (`kind`
    /// `tool`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// The JSON Schema of the answer a tool asks for (an object of primitive and enum
    /// fields): answer with `form`, or with `answer` when it has one field.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub schema: Option<serde_json::Value>,
}

/// The open question of a `waiting_input` run.
#[derive(Debug, Serialize, ToSchema)]
pub struct PendingQuestionView {
    /// Who asks.
    pub asker: AskerView,
    /// The question.
    pub question: String,
    /// Answers to choose from (empty: free text only).
    pub choices: Vec<String>,
    /// Whether an answer outside `choices` is accepted.
    pub free_text: bool,
    /// When it was asked.
    pub asked_at: DateTime<Utc>,
    /// When the wait expires (the run then ends `expired`).
    pub expires_at: DateTime<Utc>,
}

impl From<PendingQuestion> for PendingQuestionView {
    fn from(pending: PendingQuestion) -> Self {
        let asker = match pending.asker {
            Asker::Persona { persona, step, call_id } => AskerView {
                kind: "persona".to_owned(),
                persona: Some(persona),
                step: Some(step),
                call_id: Some(call_id),
                turn: None,
                tool: None,
                schema: None,
            },
            Asker::Router { turn } => AskerView {
                kind: "router".to_owned(),
                persona: None,
                step: None,
                call_id: None,
                turn: Some(turn),
                tool: None,
                schema: None,
            },
            Asker::Tool { persona, step, call_id, tool, schema, .. } => AskerView {
                kind: "tool".to_owned(),
                persona: Some(persona),
                step: Some(step),
                call_id: Some(call_id),
                turn: None,
                tool: Some(tool),
                schema: Some(schema),
            },
        };
        Self {
            asker,
            question: pending.question,
            choices: pending.choices,
            free_text: pending.free_text,
            asked_at: pending.asked_at,
            expires_at: pending.expires_at,
        }
    }
}

/// A run.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunView {
    /// Its id (`run_…`).
    pub id: String,
    /// Its session.
    pub session: String,
    /// The message that started it.
    pub trigger: String,
    /// queued, running, waiting_input, completed, failed, cancelled or expired.
    pub state: String,
    /// The strategy, fixed when it started.
    pub strategy: String,
    /// The limits, fixed when it started.
    pub limits: LimitsView,
    /// What it used.
    pub totals: TotalsView,
    /// Why it failed.
    pub error: Option<RunErrorView>,
    /// Whether someone asked to cancel it.
    pub cancel_requested: bool,
    /// The last event's `seq` (0 before the first).
    pub last_seq: i64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When a worker first started it.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Milliseconds from its start to its end (absent until it ends).
    pub duration_ms: Option<i64>,
    /// Where to read it and its events.
    pub links: RunLinks,
    /// The question it waits on (only while `waiting_input`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_question: Option<PendingQuestionView>,
}

impl From<Run> for RunView {
    fn from(run: Run) -> Self {
        let id = run.id.to_string();
        let usage = run.totals.usage;
        let duration_ms = run.started_at.zip(run.finished_at).map(|(start, end)| (end - start).num_milliseconds());
        Self {
            links: RunLinks {
                this: format!("/v1/runs/{id}"),
                events: format!("/v1/runs/{id}/events"),
                cancel: format!("/v1/runs/{id}/cancel"),
                answer: format!("/v1/runs/{id}/answer"),
            },
            pending_question: None,
            id,
            session: run.session.to_string(),
            trigger: run.trigger.to_string(),
            state: run.state.as_str().to_owned(),
            strategy: run.strategy.as_str().to_owned(),
            limits: run.limits.into(),
            totals: TotalsView {
                steps: run.totals.steps,
                model_calls: run.totals.model_calls,
                tool_calls: run.totals.tool_calls,
                usage: UsageView {
                    input_tokens: usage.input_tokens,
                    output_tokens: usage.output_tokens,
                    cached_input_tokens: usage.cached_input_tokens,
                    cache_write_tokens: usage.cache_write_tokens,
                    reasoning_tokens: usage.reasoning_tokens,
                },
                credits: run.totals.credits,
            },
            error: run.error.map(|e| RunErrorView { code: e.code, message: e.message }),
            cancel_requested: run.cancel_requested,
            last_seq: run.last_seq,
            created_at: run.created_at,
            started_at: run.started_at,
            finished_at: run.finished_at,
            duration_ms,
        }
    }
}

/// A run id from a path; a malformed one is simply not found.
fn run_id(raw: &str) -> Result<RunId, ApiError> {
    RunId::parse(raw).map_err(|_| ApiError::new(ErrorCode::NotFound, format!("run {raw} not found")))
}

/// A run of the caller's tenant: state, totals (tokens, calls, credits), timings, error.
#[utoipa::path(get, path = "/v1/runs/{id}", tag = "runs", security(("bearer" = [])),
    params(("id" = String, Path, description = "run id (run_…)")),
    responses((status = 200, body = RunView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn get_one(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<RunView>, ApiError> {
    let principal = tenant_principal(&state, &caller).await?;
    let run = state.orchestrator.run(&principal, &run_id(&id)?).await?;
    Ok(Json(view_with_question(&state, run).await?))
}

/// The run's view with its open question, if it waits on one.
async fn view_with_question(state: &AppState, run: Run) -> Result<RunView, ApiError> {
    let pending = state.orchestrator.pending_question(&run).await?;
    let mut view = RunView::from(run);
    view.pending_question = pending.map(Into::into);
    Ok(view)
}

/// The answer to a waiting run's question: `answer` (one of the choices, or free text
/// when the question accepts it) or `choice` (one of the choices), not both; a plugin
/// tool's question (asker `tool`) may instead be answered with `form` (a JSON object
/// fitting its schema) or `action` `decline` / `cancel`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnswerBody {
    /// The answer's text.
    #[serde(default)]
    pub answer: Option<String>,
    /// One of the question's choices, by its text.
    #[serde(default)]
    pub choice: Option<String>,
    /// A plugin tool's question: the answer as a JSON object fitting its schema.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub form: Option<serde_json::Value>,
    /// A plugin tool's question: `accept` (the default, with `form`), `decline` or
    /// `cancel` (without an answer).
    #[serde(default)]
    pub action: Option<String>,
}

/// Answers a `waiting_input` run's open question (members and admins) and resumes the
/// run from its record (no recorded model or tool call is made again): 202 with the run,
/// now `queued`. 409 `run_not_waiting` when it is not waiting (never asked, already
/// answered, ended or expired); 422 `invalid_answer` when the answer is not one of the
/// choices and free text is not accepted.
#[utoipa::path(post, path = "/v1/runs/{id}/answer", tag = "runs", request_body = AnswerBody, security(("bearer" = [])),
    params(("id" = String, Path, description = "run id (run_…)")),
    responses((status = 202, body = RunView, description = "answered; the run is queued to resume"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "`run_not_waiting`"),
        (status = 422, body = ErrorBody, description = "`invalid_answer`, or neither or both of `answer` and `choice`")))]
pub(super) async fn answer(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    StrictJson(body): StrictJson<AnswerBody>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = tenant_principal(&state, &caller).await?;
    let action = match body.action.as_deref().map(AnswerAction::parse) {
        None => None,
        Some(Some(action)) => Some(action),
        Some(None) => {
            return Err(ApiError::new(ErrorCode::InvalidRequest, "`action` is one of accept, decline, cancel"));
        }
    };
    let input = match (body.answer, body.choice, body.form, action) {
        (Some(text), None, None, None | Some(AnswerAction::Accept)) => AnswerInput::Text(text),
        (None, Some(choice), None, None | Some(AnswerAction::Accept)) => AnswerInput::Choice(choice),
        (None, None, form @ Some(_), None | Some(AnswerAction::Accept)) => {
            AnswerInput::Form { action: AnswerAction::Accept, form }
        }
        (None, None, None, Some(action @ (AnswerAction::Decline | AnswerAction::Cancel))) => {
            AnswerInput::Form { action, form: None }
        }
        _ => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "give exactly one of `answer`, `choice` and `form`, or `action` decline or cancel alone",
            ));
        }
    };
    let run = state.orchestrator.answer(&principal, &run_id(&id)?, input).await?;
    Ok((StatusCode::ACCEPTED, Json(RunView::from(run))))
}

/// Asks a run to stop (members and admins; idempotent): 202 while it is stopping, 200
/// when it had already ended. The run ends with a `run.cancelled` event.
#[utoipa::path(post, path = "/v1/runs/{id}/cancel", tag = "runs", security(("bearer" = [])),
    params(("id" = String, Path, description = "run id (run_…)")),
    responses((status = 202, body = RunView, description = "cancel requested; the run is stopping"),
        (status = 200, body = RunView, description = "the run had already ended"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn cancel(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = tenant_principal(&state, &caller).await?;
    let run = state.orchestrator.cancel(&principal, &run_id(&id)?).await?;
    let status = if run.state.is_final() { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((status, Json(RunView::from(run))))
}

/// A run's events as server-sent events: `id:` is the event's `seq`; resumes after
/// `Last-Event-ID` (or `?after=`) from the store, then follows live; heartbeat comments
/// while idle; ends after the terminal event.
#[utoipa::path(get, path = "/v1/runs/{id}/events", tag = "runs", params(EventsQuery), security(("bearer" = [])),
    params(("id" = String, Path, description = "run id (run_…)"),
        ("Last-Event-ID" = Option<String>, Header, description = "resume after this seq")),
    responses(
        (status = 200, content_type = "text/event-stream", body = String,
            description = "`id: <seq>`, `event: <type>`, `data: <json: run, seq, session_seq, type, v, at, data>`"),
        (status = 400, body = ErrorBody, description = "`invalid_last_event_id`: malformed, or beyond the run's last event"),
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
    let run = state.orchestrator.run(&principal, &run_id(&id)?).await?;
    let after = super::events::resume_position(&headers, &query, run.last_seq)?;
    let hub = state.orchestrator.hub();
    let feed = hub.run_feed(&run.id, after);
    Ok(super::events::stream(feed, Positions::Run, hub.heartbeat_interval(), state.shutdown.clone()))
}
