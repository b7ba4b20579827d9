//! Maestro, the orchestrator: sessions, messages and runs (use-cases over ports).
//!
//! Posting a message stores it, creates a run and enqueues the job that executes it
//! (kind [`RUN_JOB`], keyed by the run id) in one unit of work; a worker on any replica
//! claims the job, and the runner (`runner.rs`) drives the run: the strategy picks who
//! acts, each step renders the persona, calls its model with the tools persona and
//! policy allow, runs tool calls through the same pipeline as HTTP and MCP, and records
//! every response and result as run events before moving on. Events are published to
//! the [`hub::EventHub`] after each commit; clients read them through
//! [`hub::EventHub::run_feed`] and [`hub::EventHub::session_feed`] (replay from the
//! store, then live).
//!
//! Holds only ports and use-cases (`Arc<dyn RunStore>`, `Arc<dyn UnitOfWork>`,
//! `Arc<dyn ModelProvider>`, `Tools`, `Credits`), never adapter types.
//!
//! Files: `runner.rs` (the job handler: lifecycle, cancel, deadline, units of work and
//! holds), `step.rs` (turns per strategy, steps, model calls, tool calls, resuming),
//! `strategy.rs` (the router's contract and the fixed rules), `context.rs` (what a
//! model sees: messages, trimming, persona arguments, tool globs), `pricing.rs` (holds,
//! budgets, settlements), `record.rs` (a run's state rebuilt from its events), `hub.rs`
//! (live events and cancel signals).

mod context;
pub mod hub;
pub(crate) mod pricing;
mod record;
pub mod runner;
mod step;
mod strategy;

pub use runner::{Runner, RunnerError, RunnerPorts, RunnerSettings};

use std::sync::Arc;

use maestro_core::run::{
    Author, Message, MessageId, Run, RunId, RunInputError, RunLimits, RunState, RunTotals, Session, SessionId,
    Strategy, validate_message,
};
use maestro_core::{Clock, NewJob, Role, RunStore, StoreError, UnitOfWork};

use crate::random::random_bytes;
use crate::tools::{Principal, Tools};

/// The job kind that executes a run (payload `{"run": "run_…"}`, key `run:<id>`).
pub const RUN_JOB: &str = "run.execute";

/// Attempts of a run's job: each takeover after a dead worker is one; on the last, a run
/// that was interrupted before fails with `worker_lost` rather than resuming again.
pub const RUN_JOB_ATTEMPTS: u32 = 10;

/// Why a session or run request was refused.
#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    /// No such session or run is visible to the caller (another tenant's included).
    #[error("{0} not found")]
    NotFound(String),
    /// The caller's role may not do this (viewers read; members post).
    #[error("this needs the `{0}` role")]
    Forbidden(Role),
    /// The input is invalid.
    #[error(transparent)]
    Invalid(#[from] RunInputError),
    /// A persona of the team is not loaded, or policy does not let the caller use it.
    #[error("persona `{0}` is not available to this tenant")]
    UnknownPersona(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What `POST /v1/sessions` asks for.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// A title (default: empty).
    pub title: String,
    /// The team, in order.
    pub personas: Vec<String>,
    /// How the next speaker is picked.
    pub strategy: Strategy,
    /// Limits of each run (default: [`RunLimits::default`]).
    pub limits: Option<RunLimits>,
}

/// A posted message and the run it started.
#[derive(Debug, Clone)]
pub struct Posted {
    /// The message as stored.
    pub message: Message,
    /// The run, queued.
    pub run: Run,
}

/// The orchestrator's use-cases.
#[derive(Debug, Clone)]
pub struct Orchestrator {
    runs: Arc<dyn RunStore>,
    unit: Arc<dyn UnitOfWork>,
    clock: Arc<dyn Clock>,
    tools: Arc<Tools>,
    hub: Arc<hub::EventHub>,
}

impl Orchestrator {
    /// The use-cases over the run store, units of work, a clock, the tool pipeline and
    /// the event hub.
    pub fn new(
        runs: Arc<dyn RunStore>,
        unit: Arc<dyn UnitOfWork>,
        clock: Arc<dyn Clock>,
        tools: Arc<Tools>,
        hub: Arc<hub::EventHub>,
    ) -> Self {
        Self { runs, unit, clock, tools, hub }
    }

    /// The live event hub.
    pub fn hub(&self) -> &Arc<hub::EventHub> {
        &self.hub
    }

    /// Creates a session; members and admins only. Every persona of the team must be
    /// loaded and visible to the caller under policy.
    pub async fn create_session(&self, principal: &Principal, new: NewSession) -> Result<Session, OrchestratorError> {
        require(principal, Role::Member)?;
        let session = Session {
            id: SessionId::from_random(random_bytes()),
            tenant: principal.tenant_id.clone(),
            title: new.title.trim().to_owned(),
            personas: new.personas,
            strategy: new.strategy,
            limits: new.limits.unwrap_or_default(),
            created_by: principal.key_id.clone(),
            created_at: self.clock.now(),
        };
        session.validate()?;
        let visible = self.tools.visible_personas(principal);
        if let Some(missing) = session.personas.iter().find(|name| !visible.iter().any(|p| &p.name == *name)) {
            return Err(OrchestratorError::UnknownPersona(missing.clone()));
        }
        self.runs.create_session(&session).await?;
        Ok(session)
    }

    /// A page of the caller's tenant's sessions, newest first.
    pub async fn sessions(
        &self,
        principal: &Principal,
        before: Option<&SessionId>,
        limit: u32,
    ) -> Result<Vec<Session>, OrchestratorError> {
        Ok(self.runs.sessions(&principal.tenant_id, before, limit.clamp(1, maestro_core::run::MAX_PAGE)).await?)
    }

    /// A session of the caller's tenant.
    pub async fn session(&self, principal: &Principal, id: &SessionId) -> Result<Session, OrchestratorError> {
        self.runs
            .session(&principal.tenant_id, id)
            .await?
            .ok_or_else(|| OrchestratorError::NotFound(format!("session {id}")))
    }

    /// A page of a session's messages with `seq > after`, oldest first.
    pub async fn messages(
        &self,
        principal: &Principal,
        id: &SessionId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Message>, OrchestratorError> {
        self.session(principal, id).await?;
        Ok(self.runs.messages(&principal.tenant_id, id, after, limit.clamp(1, maestro_core::run::MAX_PAGE)).await?)
    }

    /// Posts a user's message and starts a run answering it: the message, the run and
    /// its job are written in one unit of work. Members and admins only.
    pub async fn post_message(
        &self,
        principal: &Principal,
        id: &SessionId,
        content: String,
    ) -> Result<Posted, OrchestratorError> {
        require(principal, Role::Member)?;
        validate_message(&content)?;
        let session = self.session(principal, id).await?;
        let now = self.clock.now();
        let run_id = RunId::from_random(random_bytes());
        let message = Message {
            id: MessageId::from_random(random_bytes()),
            session: session.id.clone(),
            seq: 0,
            author: Author::User { key_id: principal.key_id.clone() },
            content,
            run: Some(run_id.clone()),
            at: now,
        };
        let run = Run {
            id: run_id.clone(),
            session: session.id.clone(),
            tenant: principal.tenant_id.clone(),
            trigger: message.id.clone(),
            key_id: principal.key_id.clone(),
            role: principal.role,
            state: RunState::Queued,
            strategy: session.strategy,
            limits: session.limits,
            totals: RunTotals::default(),
            error: None,
            cancel_requested: false,
            last_seq: 0,
            created_at: now,
            started_at: None,
            finished_at: None,
        };
        let mut job = NewJob::new(RUN_JOB, &format!("run:{run_id}"), &serde_json::json!({ "run": run_id }), now)
            .map_err(|err| StoreError::Corrupt(err.to_string()))?;
        job.max_attempts = RUN_JOB_ATTEMPTS;
        let mut tx = self.unit.begin().await?;
        let message = tx.insert_message(&message).await?;
        tx.insert_run(&run).await?;
        tx.enqueue(&job, now).await?;
        tx.commit().await?;
        Ok(Posted { message, run })
    }

    /// A run of the caller's tenant.
    pub async fn run(&self, principal: &Principal, id: &RunId) -> Result<Run, OrchestratorError> {
        self.runs
            .run(Some(&principal.tenant_id), id)
            .await?
            .ok_or_else(|| OrchestratorError::NotFound(format!("run {id}")))
    }

    /// Asks a run to stop (idempotent; a finished run is returned as it is). The worker
    /// executing it stops the model stream and any tool call in flight, voids its
    /// holds and ends it with `run.cancelled`. Members and admins only.
    pub async fn cancel(&self, principal: &Principal, id: &RunId) -> Result<Run, OrchestratorError> {
        require(principal, Role::Member)?;
        let run = self
            .runs
            .request_cancel(&principal.tenant_id, id)
            .await?
            .ok_or_else(|| OrchestratorError::NotFound(format!("run {id}")))?;
        self.hub.cancel(&run.id);
        Ok(run)
    }
}

fn require(principal: &Principal, role: Role) -> Result<(), OrchestratorError> {
    if principal.role >= role { Ok(()) } else { Err(OrchestratorError::Forbidden(role)) }
}
