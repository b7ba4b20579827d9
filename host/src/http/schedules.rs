//! `/v1/schedules`: messages posted on a cron schedule (with a time zone) into a session
//! or into a new session from a template. Members create, pause, resume and delete;
//! viewers read; platform keys are refused like tool calls; another tenant's schedules
//! answer 404.

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use maestro_core::Caller;
use maestro_core::run::{MAX_PAGE, RunLimits, SessionId, Strategy};
use maestro_core::schedule::{CatchUp, Schedule, ScheduleFire, ScheduleId, ScheduleTarget};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::Shared;
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::extract::{StrictJson, StrictQuery};
use super::sessions::{LimitsBody, LimitsView, tenant_principal};
use crate::schedules::{NewSchedule, NewTarget, ScheduleDetail};

/// Default page size of schedule lists.
const DEFAULT_PAGE: u32 = 50;

/// A new session per fire.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateBody {
    /// The new session's title, at most 200 characters (default: none).
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

fn default_time_zone() -> String {
    "UTC".to_owned()
}

/// Body of `POST /v1/schedules`: exactly one of `session` and `template`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSchedule {
    /// Cron expression: 5 fields (`minute hour day-of-month month day-of-week`), or 6
    /// with seconds first. Fires at most once per `schedules.min_period` (default 1 min).
    pub cron: String,
    /// IANA time zone the expression is read in (default `UTC`), e.g. `Europe/Paris`.
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
    /// An existing session of the tenant (`ses_…`) to post into.
    pub session: Option<String>,
    /// Or a session made for each fire.
    pub template: Option<TemplateBody>,
    /// The message posted at each fire (not blank, at most 64 KiB).
    pub message: String,
    /// After downtime: `once` (default; the missed fires run as one) or `skip`.
    #[serde(default = "default_catch_up")]
    #[schema(value_type = String)]
    pub catch_up: CatchUp,
}

fn default_catch_up() -> CatchUp {
    CatchUp::Once
}

/// A session template.
#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateView {
    /// Title.
    pub title: String,
    /// The team, in order.
    pub personas: Vec<String>,
    /// How the next speaker is picked.
    pub strategy: String,
    /// Limits of each run.
    pub limits: LimitsView,
}

/// A schedule.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleView {
    /// Its id (`sch_…`).
    pub id: String,
    /// The cron expression.
    pub cron: String,
    /// The time zone it is read in.
    pub time_zone: String,
    /// The session it posts into (absent with a template).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The template of the session made per fire (absent with a session).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateView>,
    /// The message.
    pub message: String,
    /// `once` or `skip`.
    pub catch_up: &'static str,
    /// Whether it is paused.
    pub paused: bool,
    /// The next fire (absent when paused fires are pending resume, or none is left).
    pub next_fire_at: Option<DateTime<Utc>>,
    /// The key it posts as.
    pub created_by: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was last changed.
    pub updated_at: DateTime<Utc>,
}

impl From<Schedule> for ScheduleView {
    fn from(schedule: Schedule) -> Self {
        let (session, template) = match schedule.target {
            ScheduleTarget::Session { session } => (Some(session.to_string()), None),
            ScheduleTarget::Template(t) => (
                None,
                Some(TemplateView {
                    title: t.title,
                    personas: t.personas,
                    strategy: t.strategy.as_str().to_owned(),
                    limits: t.limits.into(),
                }),
            ),
        };
        Self {
            id: schedule.id.to_string(),
            cron: schedule.cron,
            time_zone: schedule.time_zone,
            session,
            template,
            message: schedule.message,
            catch_up: schedule.catch_up.as_str(),
            paused: schedule.paused,
            next_fire_at: if schedule.paused { None } else { schedule.next_fire_at },
            created_by: schedule.created_by,
            created_at: schedule.created_at,
            updated_at: schedule.updated_at,
        }
    }
}

/// A past fire.
#[derive(Debug, Serialize, ToSchema)]
pub struct FireView {
    /// The fire time it ran for.
    pub fire_at: DateTime<Utc>,
    /// The session the message went to.
    pub session: String,
    /// The run it started.
    pub run: String,
    /// When it was posted.
    pub at: DateTime<Utc>,
}

impl From<ScheduleFire> for FireView {
    fn from(fire: ScheduleFire) -> Self {
        Self { fire_at: fire.fire_at, session: fire.session.to_string(), run: fire.run.to_string(), at: fire.at }
    }
}

/// A schedule with its next fires and its latest ones.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleDetailView {
    /// The schedule.
    #[serde(flatten)]
    pub schedule: ScheduleView,
    /// The next fires (up to 5; empty while paused).
    pub upcoming: Vec<DateTime<Utc>>,
    /// The latest fires, newest first (up to 20).
    pub fires: Vec<FireView>,
}

impl From<ScheduleDetail> for ScheduleDetailView {
    fn from(detail: ScheduleDetail) -> Self {
        Self {
            schedule: detail.schedule.into(),
            upcoming: detail.upcoming,
            fires: detail.fires.into_iter().map(FireView::from).collect(),
        }
    }
}

/// A page of the tenant's schedules, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleList {
    /// The schedules.
    pub schedules: Vec<ScheduleView>,
    /// Cursor of the next (older) page, for `before`; absent on the last page.
    pub next: Option<String>,
}

/// Query of `GET /v1/schedules`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SchedulesQuery {
    /// Continue with schedules older than this cursor (`next` of the previous page).
    pub before: Option<String>,
    /// Page size, 1 to 200 (default 50).
    pub limit: Option<u32>,
}

/// A schedule id from a path; a malformed one is simply not found.
fn schedule_id(raw: &str) -> Result<ScheduleId, ApiError> {
    ScheduleId::parse(raw).map_err(|_| ApiError::new(ErrorCode::NotFound, format!("schedule {raw} not found")))
}

/// Creates a schedule (members and admins).
#[utoipa::path(post, path = "/v1/schedules", tag = "schedules", request_body = CreateSchedule, security(("bearer" = [])),
    responses((status = 201, body = ScheduleView), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "the session is not the tenant's"),
        (status = 422, body = ErrorBody,
            description = "invalid cron expression or time zone, fires too often, invalid message or template, or `unknown_persona`")))]
pub(super) async fn create(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    StrictJson(body): StrictJson<CreateSchedule>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = tenant_principal(&state, &caller).await?;
    let target = match (body.session, body.template) {
        (Some(session), None) => NewTarget::Session(
            SessionId::parse(&session)
                .map_err(|_| ApiError::new(ErrorCode::NotFound, format!("session {session} not found")))?,
        ),
        (None, Some(t)) => NewTarget::Template {
            title: t.title,
            personas: t.personas,
            strategy: t.strategy,
            limits: t.limits.map(RunLimits::from),
        },
        _ => return Err(ApiError::new(ErrorCode::InvalidRequest, "name exactly one of `session` and `template`")),
    };
    let new = NewSchedule {
        cron: body.cron,
        time_zone: body.time_zone,
        target,
        message: body.message,
        catch_up: body.catch_up,
    };
    let schedule = state.schedules.create(&principal, new).await?;
    Ok((StatusCode::CREATED, Json(ScheduleView::from(schedule))))
}

/// Lists the tenant's schedules, newest first, with cursor pagination.
#[utoipa::path(get, path = "/v1/schedules", tag = "schedules", params(SchedulesQuery), security(("bearer" = [])),
    responses((status = 200, body = ScheduleList), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn list(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    StrictQuery(query): StrictQuery<SchedulesQuery>,
) -> Result<Json<ScheduleList>, ApiError> {
    let principal = tenant_principal(&state, &caller).await?;
    let limit = match query.limit {
        None => DEFAULT_PAGE,
        Some(limit) if (1..=MAX_PAGE).contains(&limit) => limit,
        Some(_) => {
            return Err(ApiError::new(ErrorCode::InvalidRequest, format!("limit must be between 1 and {MAX_PAGE}")));
        }
    };
    let before = query
        .before
        .as_deref()
        .map(|raw| {
            ScheduleId::parse(raw)
                .map_err(|_| ApiError::new(ErrorCode::InvalidRequest, format!("invalid cursor `{raw}`")))
        })
        .transpose()?;
    let schedules = state.schedules.list(&principal, before.as_ref(), limit).await?;
    let next = (schedules.len() == limit as usize).then(|| schedules.last().map(|s| s.id.to_string())).flatten();
    Ok(Json(ScheduleList { schedules: schedules.into_iter().map(ScheduleView::from).collect(), next }))
}

/// A schedule of the caller's tenant, with its next fires and its latest ones.
#[utoipa::path(get, path = "/v1/schedules/{id}", tag = "schedules", security(("bearer" = [])),
    params(("id" = String, Path, description = "schedule id (sch_…)")),
    responses((status = 200, body = ScheduleDetailView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn get_one(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<ScheduleDetailView>, ApiError> {
    let principal = tenant_principal(&state, &caller).await?;
    let detail = state.schedules.get(&principal, &schedule_id(&id)?).await?;
    Ok(Json(detail.into()))
}

/// Pauses a schedule (members and admins; idempotent): it does not fire until resumed.
#[utoipa::path(post, path = "/v1/schedules/{id}/pause", tag = "schedules", security(("bearer" = [])),
    params(("id" = String, Path, description = "schedule id (sch_…)")),
    responses((status = 200, body = ScheduleView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn pause(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    let principal = tenant_principal(&state, &caller).await?;
    Ok(Json(state.schedules.pause(&principal, &schedule_id(&id)?).await?.into()))
}

/// Resumes a schedule (members and admins): its next fire is the first after now; fires
/// missed while paused never run.
#[utoipa::path(post, path = "/v1/schedules/{id}/resume", tag = "schedules", security(("bearer" = [])),
    params(("id" = String, Path, description = "schedule id (sch_…)")),
    responses((status = 200, body = ScheduleView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn resume(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    let principal = tenant_principal(&state, &caller).await?;
    Ok(Json(state.schedules.resume(&principal, &schedule_id(&id)?).await?.into()))
}

/// Deletes a schedule and its fire history (members and admins); a fire already
/// enqueued then does nothing.
#[utoipa::path(delete, path = "/v1/schedules/{id}", tag = "schedules", security(("bearer" = [])),
    params(("id" = String, Path, description = "schedule id (sch_…)")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn delete_one(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let principal = tenant_principal(&state, &caller).await?;
    state.schedules.delete(&principal, &schedule_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}
