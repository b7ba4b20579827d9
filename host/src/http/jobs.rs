//! `/v1/jobs`: the background jobs of every replica, for platform admins.

use axum::Extension;
use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use maestro_core::{Caller, Job, JobQuery, JobState, StoreError};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::Shared;
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::extract::StrictQuery;

/// Query of `GET /v1/jobs`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct JobsQuery {
    /// Only jobs in this state: queued, running, succeeded, failed, dead, cancelled.
    pub state: Option<String>,
    /// Only jobs of this kind (e.g. `credits.expire_holds`).
    pub kind: Option<String>,
    /// Continue with jobs older than this cursor (`next` of the previous page).
    pub before: Option<String>,
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<u32>,
}

/// A background job.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    /// Id, increasing with enqueue order.
    pub id: i64,
    /// Idempotency key.
    pub key: String,
    /// Which handler runs it.
    pub kind: String,
    /// queued, running, succeeded, failed, dead or cancelled.
    pub state: String,
    /// Attempts started.
    pub attempts: u32,
    /// Attempts before the job is dead.
    pub max_attempts: u32,
    /// Not run before this time.
    pub run_at: DateTime<Utc>,
    /// The worker holding it, or that last held it.
    pub lease_owner: Option<String>,
    /// When the running worker's lease ends.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// The last failed attempt's error.
    pub last_error: Option<String>,
    /// Enqueued at.
    pub created_at: DateTime<Utc>,
    /// Last changed at.
    pub updated_at: DateTime<Utc>,
}

impl From<Job> for JobView {
    fn from(job: Job) -> Self {
        Self {
            id: job.id,
            key: job.key,
            kind: job.kind,
            state: job.state.to_string(),
            attempts: job.attempts,
            max_attempts: job.max_attempts,
            run_at: job.run_at,
            lease_owner: job.lease_owner,
            lease_expires_at: job.lease_expires_at,
            last_error: job.last_error,
            created_at: job.created_at,
            updated_at: job.updated_at,
        }
    }
}

/// A page of jobs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    /// The jobs.
    pub jobs: Vec<JobView>,
    /// Cursor of the next (older) page; absent on the last page.
    pub next: Option<String>,
}

/// Lists background jobs, newest first, with cursor pagination (platform admins).
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(JobsQuery), security(("bearer" = [])),
    responses((status = 200, body = JobList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "unknown cursor"), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub(super) async fn list(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    StrictQuery(query): StrictQuery<JobsQuery>,
) -> Result<Json<JobList>, ApiError> {
    caller.require_platform_admin()?;
    let job_state = query
        .state
        .as_deref()
        .map(|s| {
            JobState::parse(s)
                .ok_or_else(|| ApiError::new(ErrorCode::InvalidRequest, format!("unknown job state `{s}`")))
        })
        .transpose()?;
    if query.limit.is_some_and(|l| !(1..=500).contains(&l)) {
        return Err(ApiError::new(ErrorCode::InvalidRequest, "limit must be between 1 and 500"));
    }
    let query = JobQuery { state: job_state, kind: query.kind, before: query.before, limit: query.limit };
    let page = state.jobs.list(&query).await.map_err(|err| match err {
        StoreError::NotFound(what) => ApiError::new(ErrorCode::NotFound, format!("{what} not found")),
        other => ApiError::internal(ErrorCode::Unavailable, &other),
    })?;
    Ok(Json(JobList { jobs: page.jobs.into_iter().map(JobView::from).collect(), next: page.next }))
}
