//! Schedules: use-cases over the [`ScheduleStore`] port, the recurring tick that finds
//! due schedules, and the job that posts a fire's message.
//!
//! Exactly once however many replicas run: every replica enqueues the tick once per
//! slot ([`TICK_JOB`], keyed by slot like the other recurring jobs). The tick reads the
//! due schedules and, per schedule, in one unit of work, advances `next_fire_at` by
//! compare-and-set (of two ticks racing, one advances it) and enqueues the fire's job
//! keyed `schedule:<id>:<fire time>` (the unique key makes it exist once whatever
//! happens). The fire job ([`FIRE_JOB`]) posts the message as the schedule's owner —
//! into its session, or into a new session from its template — and starts a run, in
//! one unit of work that also records the fire: a retried job finds the record and
//! posts nothing again. A paused schedule does not fire; a deleted one's pending fire
//! does nothing; nor does the fire of a schedule whose owner key was revoked or expired.
//!
//! Holds only ports and use-cases (`Arc<dyn ScheduleStore>`, `Arc<dyn RunStore>`,
//! `Arc<dyn UnitOfWork>`, `Arc<dyn KeyStore>`, `Tools`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use maestro_core::run::{RunLimits, Session, SessionId, Strategy};
use maestro_core::schedule::{
    CatchUp, CronSpec, FIRE_JOB, Schedule, ScheduleError, ScheduleFire, ScheduleId, ScheduleTarget, SessionTemplate,
    fire_job_key, validate_target,
};
use maestro_core::{Clock, Job, KeyStore, NewJob, Role, RunStore, ScheduleStore, StoreError, UnitOfWork};

use crate::jobs::{JobError, JobHandler};
use crate::orchestrator::queued_run;
use crate::random::random_bytes;
use crate::tools::{Principal, Tools};

/// The kind of the recurring tick that fires due schedules.
pub const TICK_JOB: &str = "schedules.tick";

/// Due schedules handled per tick (the rest wait for the next one).
const TICK_BATCH: u32 = 100;

/// Upcoming fires shown with a schedule.
pub const UPCOMING: usize = 5;

/// Past fires shown with a schedule.
pub const RECENT_FIRES: u32 = 20;

/// How schedules run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleSettings {
    /// How often every replica looks for due schedules (one tick per slot overall).
    pub tick: Duration,
    /// The shortest period a schedule may have.
    pub min_period: Duration,
    /// How late a fire may run and still count as on time; older fires were missed
    /// (downtime) and follow the schedule's catch-up policy.
    pub catch_up_grace: Duration,
}

impl Default for ScheduleSettings {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(15),
            min_period: maestro_core::schedule::DEFAULT_MIN_PERIOD,
            catch_up_grace: Duration::from_secs(120),
        }
    }
}

/// Why a schedule request was refused.
#[derive(Debug, thiserror::Error)]
pub enum SchedulesError {
    /// No such schedule (or session) is visible to the caller.
    #[error("{0} not found")]
    NotFound(String),
    /// The caller's role may not do this.
    #[error("this needs the `{0}` role")]
    Forbidden(Role),
    /// The expression, time zone, target or message is invalid.
    #[error(transparent)]
    Invalid(#[from] ScheduleError),
    /// A persona of the template is not loaded, or policy does not let the caller use it.
    #[error("persona `{0}` is not available to this tenant")]
    UnknownPersona(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What `POST /v1/schedules` asks for.
#[derive(Debug, Clone)]
pub struct NewSchedule {
    /// The cron expression (5 fields, or 6 with seconds first).
    pub cron: String,
    /// The IANA time zone (default `UTC`).
    pub time_zone: String,
    /// Where the message goes.
    pub target: NewTarget,
    /// The message.
    pub message: String,
    /// After downtime.
    pub catch_up: CatchUp,
}

/// The target as asked for.
#[derive(Debug, Clone)]
pub enum NewTarget {
    /// An existing session of the caller's tenant.
    Session(SessionId),
    /// A new session per fire.
    Template {
        /// Title.
        title: String,
        /// Team.
        personas: Vec<String>,
        /// Strategy.
        strategy: Strategy,
        /// Limits (default: [`RunLimits::default`]).
        limits: Option<RunLimits>,
    },
}

/// A schedule with what is coming and what happened.
#[derive(Debug, Clone)]
pub struct ScheduleDetail {
    /// The schedule.
    pub schedule: Schedule,
    /// Its next fires ([`UPCOMING`]; empty while paused).
    pub upcoming: Vec<DateTime<Utc>>,
    /// Its latest fires, newest first.
    pub fires: Vec<ScheduleFire>,
}

/// What a fire job did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fired {
    /// Posted the message and started a run.
    Posted(ScheduleFire),
    /// This fire had posted already (a retried job).
    Already,
    /// The schedule was deleted, is paused, its session is gone, or its owner key no
    /// longer works: nothing posted.
    Skipped(&'static str),
}

/// The schedule use-cases.
#[derive(Debug, Clone)]
pub struct Schedules {
    store: Arc<dyn ScheduleStore>,
    runs: Arc<dyn RunStore>,
    unit: Arc<dyn UnitOfWork>,
    keys: Arc<dyn KeyStore>,
    clock: Arc<dyn Clock>,
    tools: Arc<Tools>,
    settings: ScheduleSettings,
}

/// The ports schedules use.
#[derive(Debug, Clone)]
pub struct SchedulePorts {
    /// Schedules.
    pub store: Arc<dyn ScheduleStore>,
    /// Sessions (a target's, read and written).
    pub runs: Arc<dyn RunStore>,
    /// Units of work.
    pub unit: Arc<dyn UnitOfWork>,
    /// Keys (a fire checks its owner's key still works).
    pub keys: Arc<dyn KeyStore>,
    /// The time.
    pub clock: Arc<dyn Clock>,
    /// Personas visible to a caller.
    pub tools: Arc<Tools>,
}

impl Schedules {
    /// The use-cases over their ports.
    pub fn new(ports: SchedulePorts, settings: ScheduleSettings) -> Self {
        let SchedulePorts { store, runs, unit, keys, clock, tools } = ports;
        Self { store, runs, unit, keys, clock, tools, settings }
    }

    /// The settings.
    pub fn settings(&self) -> ScheduleSettings {
        self.settings
    }

    /// Creates a schedule; members and admins. The expression must parse in its time
    /// zone and fire at most once per minimum period; the session must be the tenant's,
    /// or the template's personas visible to the caller.
    pub async fn create(&self, principal: &Principal, new: NewSchedule) -> Result<Schedule, SchedulesError> {
        require(principal, Role::Member)?;
        let now = self.clock.now();
        let spec = CronSpec::parse(&new.cron, &new.time_zone)?;
        spec.check_period(now, self.settings.min_period)?;
        let target = match new.target {
            NewTarget::Session(id) => {
                if self.runs.session(&principal.tenant_id, &id).await?.is_none() {
                    return Err(SchedulesError::NotFound(format!("session {id}")));
                }
                ScheduleTarget::Session { session: id }
            }
            NewTarget::Template { title, personas, strategy, limits } => {
                let visible = self.tools.visible_personas(principal);
                if let Some(missing) = personas.iter().find(|name| !visible.iter().any(|p| &p.name == *name)) {
                    return Err(SchedulesError::UnknownPersona(missing.clone()));
                }
                ScheduleTarget::Template(SessionTemplate {
                    title: title.trim().to_owned(),
                    personas,
                    strategy,
                    limits: limits.unwrap_or_default(),
                })
            }
        };
        validate_target(&target, &new.message).map_err(ScheduleError::from)?;
        let schedule = Schedule {
            id: ScheduleId::from_random(random_bytes()),
            tenant: principal.tenant_id.clone(),
            cron: new.cron.trim().to_owned(),
            time_zone: new.time_zone.trim().to_owned(),
            target,
            message: new.message,
            catch_up: new.catch_up,
            paused: false,
            next_fire_at: spec.next_after(now),
            created_by: principal.key_id.clone(),
            role: principal.role,
            created_at: now,
            updated_at: now,
        };
        self.store.create_schedule(&schedule).await?;
        Ok(schedule)
    }

    /// A page of the tenant's schedules, newest first: those older than `before` (a
    /// schedule of the tenant; another one gives an empty page), at most `limit`.
    pub async fn list(
        &self,
        principal: &Principal,
        before: Option<&ScheduleId>,
        limit: u32,
    ) -> Result<Vec<Schedule>, SchedulesError> {
        let limit = limit.clamp(1, maestro_core::run::MAX_PAGE);
        Ok(self.store.schedules(&principal.tenant_id, before, limit).await?)
    }

    /// A schedule of the caller's tenant with its next and latest fires.
    pub async fn get(&self, principal: &Principal, id: &ScheduleId) -> Result<ScheduleDetail, SchedulesError> {
        let schedule = self.one(principal, id).await?;
        let upcoming = match (&schedule.next_fire_at, schedule.paused) {
            (Some(next), false) => {
                let spec = schedule.spec()?;
                let mut fires = vec![*next];
                fires.extend(spec.upcoming(*next, UPCOMING - 1));
                fires
            }
            _ => Vec::new(),
        };
        let fires = self.store.schedule_fires(id, RECENT_FIRES).await?;
        Ok(ScheduleDetail { schedule, upcoming, fires })
    }

    /// Pauses a schedule (idempotent); members and admins.
    pub async fn pause(&self, principal: &Principal, id: &ScheduleId) -> Result<Schedule, SchedulesError> {
        require(principal, Role::Member)?;
        self.store
            .set_schedule_paused(&principal.tenant_id, id, true, None, self.clock.now())
            .await?
            .ok_or_else(|| SchedulesError::NotFound(format!("schedule {id}")))
    }

    /// Resumes a schedule: its next fire is the first after now (fires missed while it
    /// was paused never run); members and admins.
    pub async fn resume(&self, principal: &Principal, id: &ScheduleId) -> Result<Schedule, SchedulesError> {
        require(principal, Role::Member)?;
        let schedule = self.one(principal, id).await?;
        let now = self.clock.now();
        let next = schedule.spec()?.next_after(now);
        self.store
            .set_schedule_paused(&principal.tenant_id, id, false, next, now)
            .await?
            .ok_or_else(|| SchedulesError::NotFound(format!("schedule {id}")))
    }

    /// Deletes a schedule; a fire already enqueued then does nothing. Members and admins.
    pub async fn delete(&self, principal: &Principal, id: &ScheduleId) -> Result<(), SchedulesError> {
        require(principal, Role::Member)?;
        if self.store.delete_schedule(&principal.tenant_id, id).await? {
            Ok(())
        } else {
            Err(SchedulesError::NotFound(format!("schedule {id}")))
        }
    }

    async fn one(&self, principal: &Principal, id: &ScheduleId) -> Result<Schedule, SchedulesError> {
        self.store
            .schedule(Some(&principal.tenant_id), id)
            .await?
            .ok_or_else(|| SchedulesError::NotFound(format!("schedule {id}")))
    }

    /// Advances every due schedule and enqueues its fire (see the module docs); returns
    /// how many fires this call enqueued.
    pub async fn tick(&self) -> Result<u32, StoreError> {
        let now = self.clock.now();
        let mut enqueued = 0;
        for schedule in self.store.due_schedules(now, TICK_BATCH).await? {
            let Some(from) = schedule.next_fire_at else { continue };
            let spec = match schedule.spec() {
                Ok(spec) => spec,
                Err(err) => {
                    tracing::error!(schedule = %schedule.id, error = %err, "a stored schedule no longer parses");
                    continue;
                }
            };
            let Some(firing) = schedule.due(&spec, now, self.settings.catch_up_grace, self.settings.min_period) else {
                continue;
            };
            let mut tx = self.unit.begin().await?;
            if !tx.advance_schedule(&schedule.id, from, firing.next, now).await? {
                // Another replica advanced it (or it was paused) meanwhile.
                tx.rollback().await?;
                continue;
            }
            match firing.fire_at {
                Some(fire_at) => {
                    let payload = serde_json::json!({ "schedule": schedule.id, "fire_at": fire_at });
                    let job = NewJob::new(FIRE_JOB, &fire_job_key(&schedule.id, fire_at), &payload, now)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    if tx.enqueue(&job, now).await?.created {
                        enqueued += 1;
                    }
                }
                None => tracing::info!(schedule = %schedule.id, missed_since = %from, "skipped missed fires"),
            }
            tx.commit().await?;
        }
        Ok(enqueued)
    }

    /// Posts one fire's message and starts its run (see the module docs).
    pub async fn fire(&self, id: &ScheduleId, fire_at: DateTime<Utc>) -> Result<Fired, StoreError> {
        let Some(schedule) = self.store.schedule(None, id).await? else {
            return Ok(Fired::Skipped("the schedule was deleted"));
        };
        if schedule.paused {
            return Ok(Fired::Skipped("the schedule is paused"));
        }
        let now = self.clock.now();
        let owner = self
            .keys
            .list_keys(Some(&schedule.tenant))
            .await?
            .into_iter()
            .find(|k| k.id.as_str() == schedule.created_by);
        let usable = owner.is_some_and(|k| k.revoked_at.is_none() && k.expires_at.is_none_or(|at| at > now));
        if !usable {
            return Ok(Fired::Skipped("the schedule's owner key was revoked, expired or deleted"));
        }
        let (session, new_session) = match &schedule.target {
            ScheduleTarget::Session { session } => match self.runs.session(&schedule.tenant, session).await? {
                Some(session) => (session, false),
                None => return Ok(Fired::Skipped("the schedule's session is gone")),
            },
            ScheduleTarget::Template(template) => (
                Session {
                    id: SessionId::from_random(random_bytes()),
                    tenant: schedule.tenant.clone(),
                    title: template.title.clone(),
                    personas: template.personas.clone(),
                    strategy: template.strategy,
                    limits: template.limits,
                    created_by: schedule.created_by.clone(),
                    created_at: now,
                },
                true,
            ),
        };
        let (message, run, job) = queued_run(&session, &schedule.created_by, schedule.role, &schedule.message, now)?;
        let fire = ScheduleFire {
            schedule: schedule.id.clone(),
            fire_at,
            session: session.id.clone(),
            run: run.id.clone(),
            at: now,
        };
        let mut tx = self.unit.begin().await?;
        match tx.record_fire(&fire).await {
            Ok(true) => {}
            Ok(false) => {
                tx.rollback().await?;
                return Ok(Fired::Already);
            }
            Err(StoreError::NotFound(_)) => {
                tx.rollback().await?;
                return Ok(Fired::Skipped("the schedule was deleted"));
            }
            Err(err) => return Err(err),
        }
        if new_session {
            tx.insert_session(&session).await?;
        }
        tx.insert_message(&message).await?;
        tx.insert_run(&run).await?;
        tx.enqueue(&job, now).await?;
        tx.commit().await?;
        Ok(Fired::Posted(fire))
    }
}

fn require(principal: &Principal, role: Role) -> Result<(), SchedulesError> {
    if principal.role >= role { Ok(()) } else { Err(SchedulesError::Forbidden(role)) }
}

/// [`TICK_JOB`]: fires due schedules.
#[derive(Debug)]
pub struct Tick(pub Arc<Schedules>);

#[async_trait]
impl JobHandler for Tick {
    async fn handle(&self, _job: &Job) -> Result<(), JobError> {
        match self.0.tick().await {
            Ok(0) => Ok(()),
            Ok(fires) => {
                tracing::info!(fires, "enqueued schedule fires");
                Ok(())
            }
            Err(err) => Err(JobError::Retry(format!("cannot fire due schedules: {err}"))),
        }
    }
}

/// [`FIRE_JOB`]: posts one fire's message.
#[derive(Debug)]
pub struct Fire(pub Arc<Schedules>);

#[async_trait]
impl JobHandler for Fire {
    async fn handle(&self, job: &Job) -> Result<(), JobError> {
        #[derive(serde::Deserialize)]
        struct Payload {
            schedule: String,
            fire_at: DateTime<Utc>,
        }
        let payload: Payload = serde_json::from_str(&job.payload)
            .map_err(|e| JobError::Permanent(format!("invalid schedule fire payload: {e}")))?;
        let id = ScheduleId::parse(&payload.schedule)
            .map_err(|e| JobError::Permanent(format!("invalid schedule fire payload: {e}")))?;
        match self.0.fire(&id, payload.fire_at).await {
            Ok(Fired::Posted(fire)) => {
                tracing::info!(schedule = %id, fire_at = %fire.fire_at, run = %fire.run, "schedule fired");
                Ok(())
            }
            Ok(Fired::Already) => Ok(()),
            Ok(Fired::Skipped(why)) => {
                tracing::info!(schedule = %id, why, "schedule fire skipped");
                Ok(())
            }
            Err(err) => Err(JobError::Retry(format!("cannot post the schedule's message: {err}"))),
        }
    }
}
