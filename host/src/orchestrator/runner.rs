//! The runner: executes a run as the [`JobHandler`] of [`super::RUN_JOB`].
//!
//! # Lifecycle
//! A worker claims the run's job under a lease; [`Runner::execute`] loads the run (a
//! finished run is left alone), its session, its tenant, every recorded event and the
//! session's messages, and rebuilds the run's record (`record.rs`) from the events (event sourcing:
//! the log is the record). A queued run becomes `running` with `run.started` (once,
//! `started_at` set); a run found `running` was interrupted (its worker died, or a store
//! failure made the job retry): `run.interrupted` is appended, naming the step that was in
//! progress, and the run continues from its record. A worker's lease that expires lets
//! another worker take the job over the same way.
//!
//! # Asking the user
//! A persona's `ask_user` call (or the router's `ask_user` decision) records
//! `clarification.requested`, the state `waiting_input` and the job that expires the
//! question in one unit of work, and ends the execution: the job completes, holding no
//! lease and no credits. The answer ([`super::Orchestrator::answer`]) queues the run with
//! a job keyed `run:<id>:wait:<n>:resume`; that execution takes the run by
//! compare-and-set (`queued` → `running`, no `run.interrupted`: nothing was cut) and
//! continues from its record, the answer being the call's result. Only the run's current
//! job executes it: an earlier one (the job that asked, retried after its worker died)
//! finds a newer key expected and does nothing. Time spent waiting is added to the
//! deadline.
//!
//! # Strategies
//! - `router`: each turn the router model (tier `RunnerSettings::router_tier`, `fast` by
//!   default) answers a typed decision (`{satisfied, next, instruction, reason}`, asked
//!   for with a response schema). An unparsable answer or a `next` outside the team is
//!   answered with the reason and asked once more; a second unusable answer falls back to
//!   the persona after the last speaker in team order (`turn.decided.fallback`).
//!   `satisfied` completes the run. Each turn is one step; reaching `max_steps`
//!   completes the run with the steps done (not a failure: the team answered that many
//!   times). The router's calls are paid like any model call and recorded as
//!   `message.completed` with persona `maestro`, step 0 and `call` numbering them across
//!   the run; they stream no deltas (their text is a decision, not an answer).
//! - `round_robin`: one step, by the persona after the one that spoke last in the session.
//! - `sequence`: every persona once, in team order (at most `max_steps` of them).
//! - `parallel`: one turn in which every persona (at most `max_steps`) answers the same
//!   context concurrently; their answers (session messages, `message.completed` of the
//!   final answers and `step.completed`) are committed in team order.
//!
//! # Limits
//! `max_steps` (above), `max_tool_calls_per_step` (see `step.rs`), the credits budget
//! (holds are sized to fit what remains of it: `budget_exceeded` when not even the prompt
//! fits, or a priced tool call would pass it), and the deadline from `started_at`
//! (`deadline_exceeded`, checked before every model and tool call and by a timer).
//!
//! # Cancel
//! The hub's token (a cancel on this process) or the store's `cancel_requested` (polled
//! every `cancel_poll`, a cancel on another replica) drops the run's work: the model
//! stream (closing its connection) and any tool call (cancelling the sandbox call). Open
//! holds are voided, `run.cancelled` is recorded and the run ends `cancelled`.
//!
//! # Memory
//! With [`Runner::with_memory`], personas recall before they answer (see `step.rs`),
//! and a completed run enqueues its distillation ([`crate::distil::DISTIL_JOB`]) in the
//! unit of work that records `run.completed`.
//!
//! # Failures
//! A model error fails the run with its code (`no_model_provider` says which settings to
//! add); a tenant that cannot cover a hold fails with `insufficient_credits` before the
//! model is called. A store failure leaves the run `running` and the job is retried: the
//! next attempt resumes it like a takeover.

use std::collections::HashMap;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use maestro_core::ledger::{Hold, HoldState, Posting};
use maestro_core::llm::{LlmError, ModelProvider};
use maestro_core::plugin::{ModelTier, PersonaSpec};
use maestro_core::run::{
    Author, EventBody, Message, NewEvent, Run, RunError, RunEvent, RunId, RunLimits, RunState, RunTotals, Session,
};
use maestro_core::{Clock, Job, LedgerError, NewJob, RunStore, StoreError, TenantStore, UnitOfWork};
use tokio_util::sync::CancellationToken;

use super::hub::EventHub;
use super::pricing::Pricing;
use super::record::Record;
use crate::config::ModelPrice;
use crate::credits::{Credits, CreditsError};
use crate::jobs::{JobError, JobHandler};
use crate::tools::{Principal, Tools};

/// How the runner behaves.
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    /// The tier of the router's model (`fast` by default).
    pub router_tier: ModelTier,
    /// Text deltas are coalesced into one `message.delta` event at least this often.
    pub delta_interval: Duration,
    /// … or once this many bytes of text are pending.
    pub delta_bytes: usize,
    /// How often the store's `cancel_requested` is checked (cancels from other replicas).
    pub cancel_poll: Duration,
    /// Holds expire this long after the run's deadline (the sweeper then returns what a
    /// dead worker left held).
    pub hold_grace: Duration,
    /// The largest answer asked of the router, in tokens.
    pub router_max_tokens: u32,
    /// How long a question to the user waits for its answer before the run expires
    /// (`[runs] wait_timeout`).
    pub wait_timeout: Duration,
}

impl Default for RunnerSettings {
    fn default() -> Self {
        Self {
            router_tier: ModelTier::Small,
            delta_interval: Duration::from_millis(50),
            delta_bytes: 2048,
            cancel_poll: Duration::from_secs(1),
            hold_grace: Duration::from_secs(600),
            router_max_tokens: 512,
            wait_timeout: Duration::from_secs(24 * 60 * 60),
        }
    }
}

/// What the runner works with: ports and use-cases only.
#[derive(Debug, Clone)]
pub struct RunnerPorts {
    /// Runs, sessions, messages and events.
    pub runs: Arc<dyn RunStore>,
    /// Units of work (events, settlements and messages commit together).
    pub unit: Arc<dyn UnitOfWork>,
    /// Tenants (a run's principal names its tenant, as policies do).
    pub tenants: Arc<dyn TenantStore>,
    /// The time.
    pub clock: Arc<dyn Clock>,
    /// The tool pipeline (persona rendering and tool calls, under policy).
    pub tools: Arc<Tools>,
    /// Credit holds.
    pub credits: Arc<Credits>,
    /// Model providers.
    pub models: Arc<dyn ModelProvider>,
    /// Model prices (`[[credits.models]]`).
    pub prices: Vec<ModelPrice>,
    /// Where committed events are published.
    pub hub: Arc<EventHub>,
}

/// Why a run could not be executed (the run itself records model and policy failures;
/// these are the job's).
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The job names a run that does not exist.
    #[error("run {0} not found")]
    NotFound(String),
    /// The job's payload or the stored run is unusable.
    #[error("invalid run job: {0}")]
    Invalid(String),
    /// The store failed; the job is retried and the run resumes from its record.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Executes runs.
#[derive(Debug, Clone)]
pub struct Runner {
    pub(super) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(super) struct Inner {
    pub(super) runs: Arc<dyn RunStore>,
    pub(super) unit: Arc<dyn UnitOfWork>,
    pub(super) tenants: Arc<dyn TenantStore>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) tools: Arc<Tools>,
    pub(super) credits: Arc<Credits>,
    pub(super) models: Arc<dyn ModelProvider>,
    pub(super) pricing: Pricing,
    pub(super) hub: Arc<EventHub>,
    pub(super) settings: RunnerSettings,
    /// What personas recall before answering (`None`: nothing).
    pub(super) recall: Option<Arc<crate::recall::Recall>>,
    /// Whether a completed run enqueues its distillation ([`crate::distil::DISTIL_JOB`]).
    pub(super) distil: bool,
}

/// Why the run's work stopped before completing.
#[derive(Debug)]
pub(super) enum Stop {
    /// The run fails with this error.
    Failed(RunError),
    /// Someone cancelled it.
    Cancelled,
    /// The store failed: the job is retried.
    Store(StoreError),
    /// The run asked the user a question: it is recorded `waiting_input` and this
    /// execution ends (the answer enqueues the next).
    Waiting,
    /// Another execution took the run first (a resume's compare-and-set lost): this
    /// one leaves it alone.
    Superseded,
}

impl Stop {
    pub(super) fn fail(code: &str, message: impl Into<String>) -> Self {
        Stop::Failed(RunError { code: code.to_owned(), message: message.into() })
    }
}

impl From<StoreError> for Stop {
    fn from(err: StoreError) -> Self {
        Stop::Store(err)
    }
}

impl From<LlmError> for Stop {
    fn from(err: LlmError) -> Self {
        Stop::fail(err.code(), err.to_string())
    }
}

impl From<CreditsError> for Stop {
    fn from(err: CreditsError) -> Self {
        match err {
            CreditsError::Insufficient { .. } => Stop::fail("insufficient_credits", err.to_string()),
            CreditsError::Store(err) => Stop::Store(err),
            other => Stop::fail("ledger_error", other.to_string()),
        }
    }
}

/// A settlement to post in the unit of work that records the answer.
#[derive(Debug, Clone)]
pub(super) struct Settle {
    pub(super) hold: Hold,
    pub(super) actual: i64,
    pub(super) key: String,
    pub(super) memo: String,
}

/// What one unit of work writes for a run.
#[derive(Debug, Default)]
pub(super) struct Commit {
    pub(super) events: Vec<EventBody>,
    pub(super) settle: Option<Settle>,
    pub(super) message: Option<Message>,
    /// Added to the run's totals.
    pub(super) add: RunTotals,
    /// The run's new state (and error), with `started_at`/`finished_at` set accordingly.
    pub(super) state: Option<(RunState, Option<RunError>)>,
    /// Jobs enqueued in the same unit (a wait's expiry).
    pub(super) jobs: Vec<NewJob>,
    /// Write the run only if it is still in this state (else the unit is rolled back and
    /// the commit answers [`Stop::Superseded`]).
    pub(super) expect: Option<RunState>,
}

impl Commit {
    pub(super) fn events(events: Vec<EventBody>) -> Self {
        Self { events, ..Self::default() }
    }
}

/// What a unit of work stored.
#[derive(Debug)]
pub(super) struct Committed {
    /// The session message, with its `seq`.
    pub(super) message: Option<Message>,
}

/// One execution of a run: what it was loaded with, and what it changes as it goes.
#[derive(Debug)]
pub(super) struct RunCtx {
    pub(super) id: RunId,
    pub(super) session: Session,
    pub(super) principal: Principal,
    pub(super) record: Record,
    /// This execution's number (1 + the run's interruptions): part of hold keys.
    pub(super) attempt: u32,
    pub(super) deadline: DateTime<Utc>,
    /// The run's limits, fixed when it was posted.
    pub(super) limits: RunLimits,
    /// The run as stored; the lock serialises this run's units of work.
    pub(super) run: tokio::sync::Mutex<Run>,
    /// The team's personas this principal may use, by name.
    pub(super) personas: HashMap<String, PersonaSpec>,
    /// Session messages up to the trigger, in order.
    pub(super) base: Vec<Message>,
    /// The trigger's text.
    pub(super) trigger: String,
    /// This run's answers: (turn, message).
    pub(super) answers: Mutex<Vec<(u32, Message)>>,
    /// Open holds by key base, and their total.
    pub(super) holds: Mutex<HashMap<String, Hold>>,
    /// The router's next call number.
    pub(super) router_calls: AtomicU32,
}

impl RunCtx {
    /// The context of a step of `turn`: the session up to the trigger, then this run's
    /// answers of earlier turns.
    pub(super) fn history(&self, turn: u32) -> Vec<Message> {
        let answers = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
        let mut mine: Vec<&Message> = answers.iter().filter(|(t, _)| *t < turn).map(|(_, m)| m).collect();
        mine.sort_by_key(|m| m.seq);
        self.base.iter().chain(mine).cloned().collect()
    }

    /// Credits held by this execution's open holds.
    pub(super) fn reserved(&self) -> i64 {
        self.holds.lock().unwrap_or_else(PoisonError::into_inner).values().map(|h| h.amount).sum()
    }

    pub(super) fn team(&self) -> &[String] {
        &self.session.personas
    }
}

/// Forgets the run's cancel token when the execution ends (or its future is dropped).
struct Release<'a>(&'a EventHub, &'a RunId);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.release(self.1);
    }
}

/// Messages are read in pages of this size.
const PAGE: u32 = 200;
/// Events are read in pages of this size.
const EVENT_PAGE: u32 = 1000;

impl Runner {
    /// A runner over its ports.
    pub fn new(ports: RunnerPorts, settings: RunnerSettings) -> Self {
        let RunnerPorts { runs, unit, tenants, clock, tools, credits, models, prices, hub } = ports;
        Self {
            inner: Arc::new(Inner {
                runs,
                unit,
                tenants,
                clock,
                tools,
                credits,
                models,
                pricing: Pricing::new(prices),
                hub,
                settings,
                recall: None,
                distil: false,
            }),
        }
    }

    /// The same runner, its personas recalling through `recall` before they answer, and
    /// its completed runs distilled into memories when `distil` (see `recall.rs` and
    /// `distil.rs`). Call it before the runner is cloned (a shared runner is left as it
    /// is, with a warning).
    #[must_use]
    pub fn with_memory(mut self, recall: Option<Arc<crate::recall::Recall>>, distil: bool) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => {
                inner.recall = recall;
                inner.distil = distil;
            }
            None => tracing::warn!("the runner is already shared: memory is not wired into it"),
        }
        self
    }

    /// Executes (or resumes) a run until it ends; returns its final state. `Err` leaves
    /// the run to be resumed by another attempt.
    pub async fn execute(&self, id: &RunId) -> Result<RunState, RunnerError> {
        self.execute_attempt(id, false, None).await
    }

    /// [`Runner::execute`] on the job's last attempt: a run that was already interrupted
    /// is not resumed again but fails with `worker_lost` (its workers keep dying, e.g.
    /// a crash loop), so it ends with a terminal event instead of staying `running`
    /// once its job is dead.
    async fn execute_attempt(
        &self,
        id: &RunId,
        last_attempt: bool,
        job_key: Option<&str>,
    ) -> Result<RunState, RunnerError> {
        let this = &self.inner;
        let Some(mut run) = this.runs.run(None, id).await? else {
            return Err(RunnerError::NotFound(id.to_string()));
        };
        if run.state.is_final() || run.state == RunState::WaitingInput {
            // A waiting run resumes on its answer's own job (a stale job of the run, e.g.
            // the one that asked, retried after its worker died, has nothing to do).
            return Ok(run.state);
        }
        let session = this
            .runs
            .session(&run.tenant, &run.session)
            .await?
            .ok_or_else(|| RunnerError::Invalid(format!("the session of run {id} is missing")))?;
        let tenant = this
            .tenants
            .tenant(&run.tenant)
            .await?
            .ok_or_else(|| RunnerError::Invalid(format!("the tenant of run {id} is missing")))?;
        let principal = Principal {
            tenant: tenant.name.to_string(),
            tenant_id: run.tenant.clone(),
            role: run.role,
            key_id: run.key_id.clone(),
        };
        let events = this.all_events(id).await?;
        let mut record = Record::replay(&events);
        if let Some(key) = job_key
            && key != current_job_key(id, record.waits)
        {
            // A job of an earlier part of the run (it ended asking the user; retried
            // after its worker died): the answer's own job carries the run on.
            tracing::info!(run = %id, job = key, "a stale job of the run; nothing to do");
            return Ok(run.state);
        }
        let messages = this.all_messages(&run, &session).await?;
        let Some(trigger) = messages.iter().find(|m| m.id == run.trigger).cloned() else {
            return Err(RunnerError::Invalid(format!("the message that started run {id} is missing")));
        };
        let token = this.hub.cancel_token(id);
        let _release = Release(&this.hub, id);
        let now = this.clock.now();

        // Start, or say that the run was interrupted and resumes here. A queued run that
        // started before resumes on the answer to its question: nothing was interrupted.
        let resumed = record.started;
        let answered = resumed && run.state == RunState::Queued;
        let first = if answered {
            None
        } else if resumed {
            Some(EventBody::RunInterrupted {
                step: record.open_step(),
                reason: "the run's worker stopped before it finished (taken over, or resumed after a failure); \
                         recorded answers and tool results are kept, an unfinished model call restarts"
                    .to_owned(),
            })
        } else {
            Some(EventBody::RunStarted {
                trigger: run.trigger.clone(),
                strategy: run.strategy,
                personas: session.personas.clone(),
                limits: run.limits,
            })
        };
        if !run.cancel_requested {
            if !resumed {
                run.started_at = Some(now);
            }
            run.state = RunState::Running;
        }
        if let Some(first) = &first {
            record.apply(first);
        }
        // Time spent waiting for the user's answers does not count against the deadline.
        let started_at = run.started_at.unwrap_or(now) + waited(&events);
        let deadline_secs = i64::try_from(run.limits.deadline_secs).unwrap_or(i64::MAX);
        let personas = this
            .tools
            .visible_personas(&principal)
            .into_iter()
            .filter(|p| session.personas.contains(&p.name))
            .map(|p| (p.name, p.spec))
            .collect();
        let answers = answers_of(&record, &messages, id);
        let base: Vec<Message> = messages.into_iter().filter(|m| m.seq <= trigger.seq).collect();
        let ctx = RunCtx {
            id: id.clone(),
            principal,
            attempt: record.interruptions + 1,
            router_calls: AtomicU32::new(u32::try_from(record.router_answers.len()).unwrap_or(u32::MAX)),
            record,
            deadline: started_at + chrono::Duration::seconds(deadline_secs),
            limits: run.limits,
            run: tokio::sync::Mutex::new(run.clone()),
            personas,
            base,
            trigger: trigger.content,
            answers: Mutex::new(answers),
            holds: Mutex::default(),
            session,
        };
        if resumed && !answered {
            // Whatever ends this execution, the holds the interrupted one left open go
            // back now, not when they expire.
            this.void_interrupted_calls(&ctx).await;
        }
        if run.cancel_requested {
            return this.finish(&ctx, Err(Stop::Cancelled)).await;
        }
        if resumed && last_attempt {
            let message = "the run's worker stopped before it finished on every attempt; it is not resumed again";
            return this.finish(&ctx, Err(Stop::fail("worker_lost", message))).await;
        }
        // A resume on an answer takes the queued run by compare-and-set: of two
        // executions (the answer's job, and a stale job of the run retried after its
        // worker died), one goes on.
        let expect = answered.then_some(RunState::Queued);
        let state_write = Commit {
            events: first.into_iter().collect(),
            state: Some((RunState::Running, None)),
            expect,
            ..Commit::default()
        };
        match this.commit(&ctx, state_write).await {
            Ok(_) => {}
            Err(Stop::Superseded) => {
                tracing::info!(run = %id, "another execution resumed the run first");
                return Ok(RunState::Running);
            }
            Err(stop) => return this.finish(&ctx, Err(stop)).await,
        }

        let remaining = (ctx.deadline - this.clock.now()).to_std().unwrap_or(Duration::ZERO);
        let outcome = tokio::select! {
            biased;
            () = this.cancelled(id, &token) => Err(Stop::Cancelled),
            () = tokio::time::sleep(remaining) => Err(deadline_exceeded()),
            outcome = this.drive(&ctx) => outcome,
        };
        this.finish(&ctx, outcome).await
    }
}

/// The key of the job that executes the run now: the posted run's, or the resume of its
/// last answered question's (see [`super::Orchestrator::answer`]).
pub(super) fn current_job_key(id: &RunId, waits: u32) -> String {
    if waits == 0 { format!("run:{id}") } else { format!("run:{id}:wait:{waits}:resume") }
}

/// How long the run waited for answers: from each `clarification.requested` to its
/// `clarification.answered`.
fn waited(events: &[RunEvent]) -> chrono::Duration {
    let mut asked = None;
    let mut total = chrono::Duration::zero();
    for event in events {
        match &event.body {
            EventBody::ClarificationRequested { .. } => asked = Some(event.at),
            EventBody::ClarificationAnswered { .. } => {
                if let Some(at) = asked.take() {
                    total += (event.at - at).max(chrono::Duration::zero());
                }
            }
            _ => {}
        }
    }
    total
}

pub(super) fn deadline_exceeded() -> Stop {
    Stop::fail("deadline_exceeded", "the run passed its deadline (limits.deadline_secs)")
}

/// This run's answers already in the session, with their turns (from the record).
fn answers_of(record: &Record, messages: &[Message], run: &RunId) -> Vec<(u32, Message)> {
    messages
        .iter()
        .filter(|m| m.run.as_ref() == Some(run) && matches!(m.author, Author::Persona { .. }))
        .filter_map(|m| {
            record
                .steps
                .values()
                .find(|s| s.completed.as_ref().is_some_and(|id| id.as_ref() == Some(&m.id)))
                .map(|s| (s.turn, m.clone()))
        })
        .collect()
}

impl Inner {
    async fn all_events(&self, id: &RunId) -> Result<Vec<RunEvent>, StoreError> {
        let mut events = Vec::new();
        loop {
            let after = events.last().map_or(0, |e: &RunEvent| e.seq);
            let page = self.runs.run_events(id, after, EVENT_PAGE).await?;
            let done = page.len() < EVENT_PAGE as usize;
            events.extend(page);
            if done {
                return Ok(events);
            }
        }
    }

    async fn all_messages(&self, run: &Run, session: &Session) -> Result<Vec<Message>, StoreError> {
        let mut messages = Vec::new();
        loop {
            let after = messages.last().map_or(0, |m: &Message| m.seq);
            let page = self.runs.messages(&run.tenant, &session.id, after, PAGE).await?;
            let done = page.len() < PAGE as usize;
            messages.extend(page);
            if done {
                return Ok(messages);
            }
        }
    }

    /// Completes when the run is asked to stop: on this process (the hub's token) or on
    /// another (the store's flag, polled).
    async fn cancelled(&self, id: &RunId, token: &CancellationToken) {
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(self.settings.cancel_poll) => {}
            }
            match self.runs.run(None, id).await {
                Ok(Some(run)) if run.cancel_requested => return,
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, run = %id, "cannot check whether the run was cancelled"),
            }
        }
    }

    /// Records how the run ended: voids open holds, appends the terminal event and the
    /// final state. A store failure leaves the run for the job's next attempt.
    async fn finish(&self, ctx: &RunCtx, outcome: Result<(), Stop>) -> Result<RunState, RunnerError> {
        self.void_open_holds(ctx).await;
        if matches!(outcome, Err(Stop::Waiting)) {
            // Recorded with the question; the answer's job resumes the run.
            return Ok(RunState::WaitingInput);
        }
        // The stored totals are authoritative (a unit of work cut by a cancel may or may
        // not have committed).
        if let Some(stored) = self.runs.run(None, &ctx.id).await? {
            let mut run = ctx.run.lock().await;
            run.totals = stored.totals;
        }
        let totals = ctx.run.lock().await.totals;
        let mut jobs = Vec::new();
        let (event, state, error) = match outcome {
            Ok(()) => {
                // Its distillation is enqueued with its end, so it is never lost or doubled.
                if self.distil {
                    jobs.extend(crate::distil::distil_job(&ctx.id, self.clock.now()));
                }
                (EventBody::RunCompleted { totals }, RunState::Completed, None)
            }
            Err(Stop::Cancelled) => (EventBody::RunCancelled { totals }, RunState::Cancelled, None),
            Err(Stop::Failed(error)) => {
                tracing::info!(run = %ctx.id, code = %error.code, "run failed");
                (EventBody::RunFailed { error: error.clone(), totals }, RunState::Failed, Some(error))
            }
            Err(Stop::Store(err)) => return Err(RunnerError::Store(err)),
            Err(Stop::Waiting) => return Ok(RunState::WaitingInput),
            Err(Stop::Superseded) => return Ok(RunState::Running),
        };
        let commit = Commit { events: vec![event], state: Some((state, error)), jobs, ..Commit::default() };
        match self.commit(ctx, commit).await {
            Ok(_) => Ok(state),
            Err(Stop::Store(err)) => Err(RunnerError::Store(err)),
            Err(other) => Err(RunnerError::Invalid(format!("cannot record the run's end: {other:?}"))),
        }
    }

    /// Voids every hold this execution still has open.
    async fn void_open_holds(&self, ctx: &RunCtx) {
        let open: Vec<String> = ctx.holds.lock().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect();
        for key in open {
            self.release_hold(ctx, &key).await;
        }
    }

    /// Voids the hold opened under `key` (if still open) and forgets it.
    pub(super) async fn release_hold(&self, ctx: &RunCtx, key: &str) {
        let hold = ctx.holds.lock().unwrap_or_else(PoisonError::into_inner).remove(key);
        if let Some(hold) = hold {
            match self.credits.void(&ctx.principal.tenant_id, &hold.id, &format!("{key}:void")).await {
                Ok(_) | Err(CreditsError::HoldClosed { .. }) => {}
                Err(err) => {
                    tracing::warn!(error = %err, run = %ctx.id, hold = %hold.id, "cannot void a hold; it expires later");
                }
            }
        }
    }

    /// Voids the holds of the calls an interrupted execution may have had in flight: the
    /// router's next call and the next call of every started, unfinished step.
    async fn void_interrupted_calls(&self, ctx: &RunCtx) {
        let router = u32::try_from(ctx.record.router_answers.len()).unwrap_or(u32::MAX).saturating_add(1);
        let mut sites = vec![(super::record::ROUTER_STEP, router)];
        for (step, record) in &ctx.record.steps {
            if !record.persona.is_empty() && record.completed.is_none() {
                sites.push((*step, record.answers.last().map_or(1, |a| a.call.saturating_add(1))));
            }
        }
        for (step, call) in sites {
            self.void_earlier_attempts(ctx, &format!("run:{}:s{step}:c{call}", ctx.id)).await;
        }
    }

    /// Voids holds that earlier executions of the run opened for the call at `base`
    /// (`run:<id>:s<step>:c<call>`) and left open (their worker died mid-call).
    pub(super) async fn void_earlier_attempts(&self, ctx: &RunCtx, base: &str) {
        for attempt in 1..ctx.attempt {
            let key = format!("{base}:a{attempt}");
            match self.credits.hold_by_key(&ctx.principal.tenant_id, &format!("{key}:hold")).await {
                Ok(Some(hold)) if hold.state == HoldState::Open => {
                    match self.credits.void(&ctx.principal.tenant_id, &hold.id, &format!("{key}:void")).await {
                        Ok(_) | Err(CreditsError::HoldClosed { .. }) => {
                            tracing::info!(run = %ctx.id, hold = %hold.id, "voided a hold left by an interrupted call");
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, run = %ctx.id, "cannot void an interrupted call's hold")
                        }
                    }
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, run = %ctx.id, "cannot look up an interrupted call's hold"),
            }
        }
    }

    /// Writes one unit of work for the run (settlement, message, events, the run's totals
    /// and state), then publishes its events. A settlement the ledger refuses (the hold
    /// expired meanwhile) is left out and the answer recorded at no charge: the answer
    /// is never lost.
    pub(super) async fn commit(&self, ctx: &RunCtx, mut commit: Commit) -> Result<Committed, Stop> {
        let mut run = ctx.run.lock().await;
        loop {
            let now = self.clock.now();
            let mut next = run.clone();
            let changes_run = commit.state.is_some() || commit.add != RunTotals::default();
            next.totals = add_totals(next.totals, &commit.add);
            if let Some((state, error)) = &commit.state {
                next.state = *state;
                next.error.clone_from(error);
                if state.is_final() {
                    next.finished_at = Some(now);
                }
            }
            let mut tx = self.unit.begin().await?;
            if let Some(settle) = &commit.settle {
                let posting =
                    Posting::settle(crate::credits::tx_id(), &settle.hold, settle.actual, &settle.key, &settle.memo)
                        .map_err(|e| Stop::fail("ledger_error", e.to_string()))?;
                match tx.post(&posting, now).await {
                    Ok(_) => {}
                    Err(LedgerError::Store(err)) => return Err(Stop::Store(err)),
                    Err(err) => {
                        tracing::error!(error = %err, run = %ctx.id, hold = %settle.hold.id, "cannot settle a model call's hold; its answer is recorded without charge");
                        tx.rollback().await?;
                        let actual = settle.actual;
                        commit.settle = None;
                        commit.add.credits -= actual;
                        for event in &mut commit.events {
                            match event {
                                EventBody::MessageCompleted { credits, .. } => *credits = 0,
                                EventBody::StepCompleted { credits, .. } => *credits -= actual,
                                _ => {}
                            }
                        }
                        continue;
                    }
                }
            }
            let message = match &commit.message {
                Some(message) => Some(tx.insert_message(message).await?),
                None => None,
            };
            let mut stored = Vec::with_capacity(commit.events.len());
            for body in &commit.events {
                let event =
                    NewEvent { run: ctx.id.clone(), session: ctx.session.id.clone(), at: now, body: body.clone() };
                stored.push(tx.append_event(&event).await?);
            }
            if let Some(expected) = commit.expect {
                if !tx.update_run_if(&next, expected).await? {
                    tx.rollback().await?;
                    return Err(Stop::Superseded);
                }
            } else if changes_run {
                tx.update_run(&next).await?;
            }
            for job in &commit.jobs {
                tx.enqueue(job, now).await?;
            }
            tx.commit().await?;
            if let Some(last) = stored.last() {
                next.last_seq = last.seq;
            }
            *run = next;
            // Published under the run's lock, so live subscribers get its events in order
            // (publishing never blocks).
            self.hub.publish(&stored);
            drop(run);
            if let Some(settle) = &commit.settle {
                ctx.holds.lock().unwrap_or_else(PoisonError::into_inner).retain(|_, h| h.id != settle.hold.id);
            }
            return Ok(Committed { message });
        }
    }

    /// What remains of the run's budget (`None`: no budget).
    pub(super) async fn budget_room(&self, ctx: &RunCtx) -> Option<i64> {
        let budget = ctx.limits.credits_budget?;
        let spent = ctx.run.lock().await.totals.credits;
        Some(budget - spent - ctx.reserved())
    }
}

fn add_totals(totals: RunTotals, add: &RunTotals) -> RunTotals {
    RunTotals {
        steps: totals.steps + add.steps,
        model_calls: totals.model_calls + add.model_calls,
        tool_calls: totals.tool_calls + add.tool_calls,
        usage: totals.usage.plus(add.usage),
        credits: totals.credits + add.credits,
    }
}

#[async_trait]
impl JobHandler for Runner {
    async fn handle(&self, job: &Job) -> Result<(), JobError> {
        #[derive(serde::Deserialize)]
        struct Payload {
            run: RunId,
        }
        let payload: Payload = serde_json::from_str(&job.payload)
            .map_err(|e| JobError::Permanent(format!("invalid run job payload: {e}")))?;
        match self.execute_attempt(&payload.run, job.attempts >= job.max_attempts, Some(&job.key)).await {
            Ok(state) => {
                tracing::debug!(run = %payload.run, state = state.as_str(), "run ended");
                Ok(())
            }
            Err(err @ (RunnerError::NotFound(_) | RunnerError::Invalid(_))) => {
                Err(JobError::Permanent(err.to_string()))
            }
            Err(RunnerError::Store(err)) => {
                tracing::warn!(error = %err, run = %payload.run, "the run's store failed; it resumes on the job's next attempt");
                Err(JobError::Retry(format!("the store failed: {err}")))
            }
        }
    }
}
