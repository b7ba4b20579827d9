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
pub mod tools;

pub use runner::{Runner, RunnerError, RunnerPorts, RunnerSettings};

use std::sync::Arc;

use chrono::{DateTime, Utc};
use maestro_core::run::{
    ASK_USER_TOOL, AnswerAction, Asker, Author, EventBody, Message, MessageId, NewEvent, Question, Run, RunEvent,
    RunId, RunInputError, RunLimits, RunState, RunTotals, Session, SessionId, Strategy, ToolResultBody,
    validate_message,
};
use maestro_core::{Clock, Job, NewJob, Role, RunStore, StoreError, UnitOfWork};

use crate::random::random_bytes;
use crate::tools::{Principal, Tools};

/// The job kind that executes a run (payload `{"run": "run_…"}`, key `run:<id>`).
pub const RUN_JOB: &str = "run.execute";

/// Attempts of a run's job: each takeover after a dead worker is one; on the last, a run
/// that was interrupted before fails with `worker_lost` rather than resuming again.
pub const RUN_JOB_ATTEMPTS: u32 = 10;

/// The job kind that expires a run's unanswered question at its deadline (payload
/// `{"run": "run_…", "wait": n}`, key `run:<id>:wait:<n>:expire`).
pub const EXPIRE_WAIT_JOB: &str = "run.expire_wait";

/// The job that expires wait number `wait` of `run` at `at` (`None` only if the key
/// could not be valid, which run ids rule out).
pub(crate) fn expiry_job(run: &RunId, wait: u32, at: DateTime<Utc>) -> Option<NewJob> {
    let payload = serde_json::json!({ "run": run, "wait": wait });
    NewJob::new(EXPIRE_WAIT_JOB, &format!("run:{run}:wait:{wait}:expire"), &payload, at).ok()
}

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
    /// The run is not waiting for an answer (it never asked, was answered, ended or
    /// expired).
    #[error("run {run} is not waiting for an answer (it is {state})")]
    NotWaiting {
        /// The run.
        run: RunId,
        /// Its state.
        state: &'static str,
    },
    /// The answer is not one of the question's choices and free text is not accepted.
    #[error(transparent)]
    InvalidAnswer(RunInputError),
    /// A run of the session waits for an answer: answer it (or cancel it) first.
    #[error("run {0} of this session waits for an answer: answer it at /v1/runs/{0}/answer, or cancel it")]
    RunWaiting(RunId),
}

/// The open question of a waiting run, as clients show it.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingQuestion {
    /// Who asks.
    pub asker: Asker,
    /// The question.
    pub question: String,
    /// The answers to choose from.
    pub choices: Vec<String>,
    /// Whether an answer outside the choices is accepted.
    pub free_text: bool,
    /// When it was asked.
    pub asked_at: DateTime<Utc>,
    /// When the wait expires.
    pub expires_at: DateTime<Utc>,
}

/// An answer to a waiting run's question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerInput {
    /// Text: one of the choices, or free text when the question accepts it.
    Text(String),
    /// One of the choices, by its text (never free text).
    Choice(String),
    /// A plugin's question answered as MCP elicitation answers: accepted with a form (a
    /// JSON object fitting the question's schema), declined, or dismissed.
    Form {
        /// What the person did.
        action: AnswerAction,
        /// The accepted answer (required to accept, refused otherwise).
        form: Option<serde_json::Value>,
    },
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
        // A question waits: the message would race its answer (answer or cancel first).
        // Runs are refused while one waits, so a waiting run is among the newest.
        let recent = self.runs.runs(&principal.tenant_id, &session.id, 32).await?;
        if let Some(waiting) = recent.iter().find(|r| r.state == RunState::WaitingInput) {
            return Err(OrchestratorError::RunWaiting(waiting.id.clone()));
        }
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
        if run.state == RunState::WaitingInput {
            // No worker holds a waiting run: it ends here.
            let totals = run.totals;
            if let Some(ended) = self.end_wait(&run, RunState::Cancelled, EventBody::RunCancelled { totals }).await? {
                return Ok(ended);
            }
            return self.run(principal, id).await;
        }
        Ok(run)
    }

    /// The open question of a waiting run (`None` when it waits for nothing).
    pub async fn pending_question(&self, run: &Run) -> Result<Option<PendingQuestion>, OrchestratorError> {
        if run.state != RunState::WaitingInput {
            return Ok(None);
        }
        let events = self.all_events(&run.id).await?;
        Ok(record::pending(&events).map(|p| PendingQuestion {
            asker: p.asker,
            question: p.question.question,
            choices: p.question.choices,
            free_text: p.question.free_text,
            asked_at: p.asked_at,
            expires_at: p.expires_at,
        }))
    }

    /// Answers a waiting run's question (members and admins of the run's tenant) and
    /// resumes it: in ONE unit of work, `clarification.answered`, the answer as the
    /// `ask_user` call's `tool.result` (a router's question: the answer is given to its
    /// next decision), the run `queued`, and a `run.execute` job keyed by this wait. The
    /// run then resumes from its record: nothing recorded is asked or run again.
    /// Refused: a run not waiting (or whose question expired), an answer that is not one
    /// of the choices when free text is not accepted.
    pub async fn answer(
        &self,
        principal: &Principal,
        id: &RunId,
        input: AnswerInput,
    ) -> Result<Run, OrchestratorError> {
        require(principal, Role::Member)?;
        let run = self.run(principal, id).await?;
        let not_waiting = |run: &Run| OrchestratorError::NotWaiting { run: run.id.clone(), state: run.state.as_str() };
        if run.state != RunState::WaitingInput {
            return Err(not_waiting(&run));
        }
        let events = self.all_events(&run.id).await?;
        let Some(pending) = record::pending(&events) else {
            return Err(StoreError::Corrupt(format!("run {id} waits without a question")).into());
        };
        let now = self.clock.now();
        if now >= pending.expires_at {
            let totals = run.totals;
            let ended = self.end_wait(&run, RunState::Expired, EventBody::RunExpired { totals }).await?;
            return Err(not_waiting(&ended.unwrap_or(Run { state: RunState::Expired, ..run })));
        }
        let (text, choice, form, action) = match &pending.asker {
            Asker::Tool { schema, .. } => tool_answer(&pending.question, schema, input)?,
            Asker::Persona { .. } | Asker::Router { .. } => {
                let (text, choice) = match input {
                    AnswerInput::Text(text) => pending.question.accept(&text),
                    AnswerInput::Choice(choice) => {
                        let only_choices = Question { free_text: false, ..pending.question.clone() };
                        only_choices.accept(&choice)
                    }
                    AnswerInput::Form { .. } => Err(RunInputError::Invalid {
                        field: "form",
                        reason: "this question is answered with text (`answer`) or a choice (`choice`)".into(),
                    }),
                }
                .map_err(OrchestratorError::InvalidAnswer)?;
                (text, choice, None, AnswerAction::Accept)
            }
        };
        let mut events = vec![EventBody::ClarificationAnswered {
            answer: text.clone(),
            choice,
            key_id: principal.key_id.clone(),
            at: now,
            form,
            action,
        }];
        let mut next = Run { state: RunState::Queued, ..run.clone() };
        if let Asker::Persona { step, call_id, .. } = &pending.asker {
            let waited = (now - pending.asked_at).num_milliseconds();
            events.push(EventBody::ToolResult(ToolResultBody {
                step: *step,
                call_id: call_id.clone(),
                tool: ASK_USER_TOOL.to_owned(),
                ok: true,
                content: text,
                error: None,
                credits: 0,
                duration_ms: u64::try_from(waited).unwrap_or(0),
            }));
            next.totals.tool_calls += 1;
        }
        let key = runner::current_job_key(id, pending.wait);
        let mut job = NewJob::new(RUN_JOB, &key, &serde_json::json!({ "run": id }), now)
            .map_err(|err| StoreError::Corrupt(err.to_string()))?;
        job.max_attempts = RUN_JOB_ATTEMPTS;
        let mut tx = self.unit.begin().await?;
        if !tx.update_run_if(&next, RunState::WaitingInput).await? {
            // Answered, cancelled or expired meanwhile.
            tx.rollback().await?;
            let now_run = self.run(principal, id).await?;
            return Err(not_waiting(&now_run));
        }
        let stored = self.append(&mut *tx, &run, events).await?;
        tx.enqueue(&job, now).await?;
        tx.commit().await?;
        self.hub.publish(&stored);
        next.last_seq = stored.last().map_or(run.last_seq, |e| e.seq);
        Ok(next)
    }

    /// Expires wait number `wait` of a run if it still waits on it (the job scheduled at
    /// the question's deadline); returns whether it did.
    pub async fn expire_wait(&self, id: &RunId, wait: u32) -> Result<bool, OrchestratorError> {
        let Some(run) = self.runs.run(None, id).await? else {
            return Ok(false);
        };
        if run.state != RunState::WaitingInput {
            return Ok(false);
        }
        let events = self.all_events(id).await?;
        match record::pending(&events) {
            Some(pending) if pending.wait == wait && self.clock.now() >= pending.expires_at => {
                let totals = run.totals;
                Ok(self.end_wait(&run, RunState::Expired, EventBody::RunExpired { totals }).await?.is_some())
            }
            _ => Ok(false),
        }
    }

    /// Ends a waiting run with `state` and its terminal `event`, unless it stopped
    /// waiting meanwhile (`None`).
    async fn end_wait(&self, run: &Run, state: RunState, event: EventBody) -> Result<Option<Run>, StoreError> {
        let now = self.clock.now();
        let mut next = Run { state, finished_at: Some(now), ..run.clone() };
        let mut tx = self.unit.begin().await?;
        if !tx.update_run_if(&next, RunState::WaitingInput).await? {
            tx.rollback().await?;
            return Ok(None);
        }
        let stored = self.append(&mut *tx, run, vec![event]).await?;
        tx.commit().await?;
        self.hub.publish(&stored);
        next.last_seq = stored.last().map_or(run.last_seq, |e| e.seq);
        Ok(Some(next))
    }

    async fn append(
        &self,
        tx: &mut dyn maestro_core::Tx,
        run: &Run,
        bodies: Vec<EventBody>,
    ) -> Result<Vec<RunEvent>, StoreError> {
        let at = self.clock.now();
        let mut stored = Vec::with_capacity(bodies.len());
        for body in bodies {
            stored.push(
                tx.append_event(&NewEvent { run: run.id.clone(), session: run.session.clone(), at, body }).await?,
            );
        }
        Ok(stored)
    }

    async fn all_events(&self, id: &RunId) -> Result<Vec<RunEvent>, StoreError> {
        const PAGE: u32 = 1000;
        let mut events = Vec::new();
        loop {
            let after = events.last().map_or(0, |e: &RunEvent| e.seq);
            let page = self.runs.run_events(id, after, PAGE).await?;
            let done = page.len() < PAGE as usize;
            events.extend(page);
            if done {
                return Ok(events);
            }
        }
    }
}

/// The handler of [`EXPIRE_WAIT_JOB`]: expires a run's question at its deadline when it
/// is still unanswered (an answered, cancelled or newer wait makes it a no-op).
#[derive(Debug, Clone)]
pub struct ExpireWaits(pub Arc<Orchestrator>);

#[async_trait::async_trait]
impl crate::jobs::JobHandler for ExpireWaits {
    async fn handle(&self, job: &Job) -> Result<(), crate::jobs::JobError> {
        #[derive(serde::Deserialize)]
        struct Payload {
            run: RunId,
            wait: u32,
        }
        let payload: Payload = serde_json::from_str(&job.payload)
            .map_err(|e| crate::jobs::JobError::Permanent(format!("invalid wait expiry payload: {e}")))?;
        match self.0.expire_wait(&payload.run, payload.wait).await {
            Ok(expired) => {
                tracing::debug!(run = %payload.run, wait = payload.wait, expired, "wait expiry checked");
                Ok(())
            }
            Err(err) => Err(crate::jobs::JobError::Retry(err.to_string())),
        }
    }
}

/// An answer to a plugin's question (its `schema`): text or a choice fills a form of one
/// field; a form is checked against the schema; declining or dismissing carries no form.
/// Returns the answer's text (as events and clients show it), the chosen choice, the
/// form and the action.
fn tool_answer(
    question: &Question,
    schema: &serde_json::Value,
    input: AnswerInput,
) -> Result<(String, Option<u32>, Option<serde_json::Value>, AnswerAction), OrchestratorError> {
    let invalid = OrchestratorError::InvalidAnswer;
    let (text, form) = match input {
        AnswerInput::Text(text) => {
            let form = maestro_core::run::form_from_text(schema, &text).map_err(invalid)?;
            (text.trim().to_owned(), form)
        }
        AnswerInput::Choice(choice) => {
            let only_choices = Question { free_text: false, ..question.clone() };
            let (text, _) = only_choices.accept(&choice).map_err(invalid)?;
            let form = maestro_core::run::form_from_text(schema, &text).map_err(invalid)?;
            (text, form)
        }
        AnswerInput::Form { action: AnswerAction::Accept, form: Some(form) } => {
            maestro_core::run::check_form(schema, &form).map_err(invalid)?;
            (form.to_string(), form)
        }
        AnswerInput::Form { action: AnswerAction::Accept, form: None } => {
            return Err(invalid(RunInputError::Invalid { field: "form", reason: "accepting needs the form".into() }));
        }
        AnswerInput::Form { action, form: Some(_) } => {
            let _ = action;
            return Err(invalid(RunInputError::Invalid {
                field: "form",
                reason: "a declined or dismissed question takes no form".into(),
            }));
        }
        AnswerInput::Form { action, form: None } => {
            let text = if action == AnswerAction::Decline { "(declined)" } else { "(dismissed)" };
            return Ok((text.to_owned(), None, None, action));
        }
    };
    let choice = question.choices.iter().position(|c| *c == text).and_then(|i| u32::try_from(i).ok());
    Ok((text, choice, Some(form), AnswerAction::Accept))
}

fn require(principal: &Principal, role: Role) -> Result<(), OrchestratorError> {
    if principal.role >= role { Ok(()) } else { Err(OrchestratorError::Forbidden(role)) }
}

/// A user's message to `session` (as key `key_id` with `role`), the queued run answering
/// it and the run's job, as [`Orchestrator::post_message`] writes them; the caller
/// writes all three in one unit of work (schedules post this way).
pub fn queued_run(
    session: &Session,
    key_id: &str,
    role: Role,
    content: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(Message, Run, NewJob), StoreError> {
    let run_id = RunId::from_random(random_bytes());
    let message = Message {
        id: MessageId::from_random(random_bytes()),
        session: session.id.clone(),
        seq: 0,
        author: Author::User { key_id: key_id.to_owned() },
        content: content.to_owned(),
        run: Some(run_id.clone()),
        at: now,
    };
    let run = Run {
        id: run_id.clone(),
        session: session.id.clone(),
        tenant: session.tenant.clone(),
        trigger: message.id.clone(),
        key_id: key_id.to_owned(),
        role,
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
    let job = NewJob::new(RUN_JOB, &format!("run:{run_id}"), &serde_json::json!({ "run": run_id }), now)
        .and_then(|job| job.with_max_attempts(RUN_JOB_ATTEMPTS))
        .map_err(|err| StoreError::Corrupt(err.to_string()))?;
    Ok((message, run, job))
}
