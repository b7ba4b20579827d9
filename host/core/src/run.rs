//! Sessions, messages, runs and run events: the agent runtime's domain.
//!
//! A [`Session`] is a conversation of a tenant's users with a team of personas. Posting
//! a [`Message`] starts a [`Run`]: the orchestrator decides who speaks, agents call
//! models and tools, and every state change is a [`RunEvent`], appended with a `seq`
//! dense per run (and a `session_seq` dense per session) in the transaction that writes
//! it. The event log is also the run's record: a run taken over after a crash rebuilds
//! its state from its events and never repeats a recorded model or tool call.
//!
//! Event types and their payloads are defined once here, versioned by
//! [`EVENT_VERSION`]; the stores keep `type`, `version` and the payload as JSON.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::auth::Role;
use crate::document::DocumentId;
use crate::id::{Id, IdKind, TenantId};
use crate::llm::{FinishReason, ToolCallRequest, Usage};

/// Marker for session identifiers (`ses_…`).
#[derive(Debug)]
pub enum SessionKind {}
impl IdKind for SessionKind {
    const PREFIX: &'static str = "ses";
}
/// Marker for run identifiers (`run_…`).
#[derive(Debug)]
pub enum RunKind {}
impl IdKind for RunKind {
    const PREFIX: &'static str = "run";
}
/// Marker for message identifiers (`msg_…`).
#[derive(Debug)]
pub enum MessageKind {}
impl IdKind for MessageKind {
    const PREFIX: &'static str = "msg";
}

/// A session's identifier.
pub type SessionId = Id<SessionKind>;
/// A run's identifier.
pub type RunId = Id<RunKind>;
/// A message's identifier.
pub type MessageId = Id<MessageKind>;

/// The version of every event payload defined here.
pub const EVENT_VERSION: u32 = 1;

/// Longest session title, in characters.
pub const MAX_TITLE_CHARS: usize = 200;
/// Most personas in a team.
pub const MAX_TEAM: usize = 16;
/// Largest message a user may post, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// How the orchestrator picks who acts next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// A model decides each turn (satisfied? who next? with what instruction?).
    Router,
    /// Each persona in turn, starting after the one that spoke last in the session.
    RoundRobin,
    /// The team's order, once through, from the first.
    Sequence,
    /// Every persona answers the same turn concurrently; answers joined in team order.
    Parallel,
}

impl Strategy {
    /// The name as the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Router => "router",
            Strategy::RoundRobin => "round_robin",
            Strategy::Sequence => "sequence",
            Strategy::Parallel => "parallel",
        }
    }

    /// Parses an API name.
    pub fn parse(name: &str) -> Option<Self> {
        [Strategy::Router, Strategy::RoundRobin, Strategy::Sequence, Strategy::Parallel]
            .into_iter()
            .find(|s| s.as_str() == name)
    }
}

/// Limits of every run of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunLimits {
    /// Most steps (one persona answering once is a step).
    pub max_steps: u32,
    /// Most tool calls within one step.
    pub max_tool_calls_per_step: u32,
    /// Most credits one run may spend (`None`: the wallet is the only bound).
    pub credits_budget: Option<i64>,
    /// Wall-clock time a run may take, in seconds, from when it starts (time spent
    /// waiting for the user's answers not counted).
    pub deadline_secs: u64,
    /// How long a question to the user waits for its answer, in seconds (`None`: the
    /// server's `[runs] wait_timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_timeout_secs: Option<u64>,
}

/// The longest a question may wait for its answer, in seconds (a year).
pub const MAX_WAIT_SECS: u64 = 365 * 24 * 3600;

impl Default for RunLimits {
    fn default() -> Self {
        Self {
            max_steps: 8,
            max_tool_calls_per_step: 8,
            credits_budget: None,
            deadline_secs: 600,
            wait_timeout_secs: None,
        }
    }
}

/// Why a session, message or limit is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunInputError {
    /// A field is out of its bounds.
    #[error("invalid `{field}`: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> RunInputError {
    RunInputError::Invalid { field, reason: reason.into() }
}

impl RunLimits {
    /// Checks the bounds: 1–100 steps, 0–64 tool calls per step, a positive budget,
    /// 1 s to 24 h, a wait of 1 s to a year.
    pub fn validate(&self) -> Result<(), RunInputError> {
        if !(1..=100).contains(&self.max_steps) {
            return Err(invalid("limits.max_steps", "must be between 1 and 100"));
        }
        if self.max_tool_calls_per_step > 64 {
            return Err(invalid("limits.max_tool_calls_per_step", "must be between 0 and 64"));
        }
        if let Some(budget) = self.credits_budget
            && budget <= 0
        {
            return Err(invalid("limits.credits_budget", "must be positive"));
        }
        if !(1..=86_400).contains(&self.deadline_secs) {
            return Err(invalid("limits.deadline_secs", "must be between 1 and 86400"));
        }
        if let Some(wait) = self.wait_timeout_secs
            && !(1..=MAX_WAIT_SECS).contains(&wait)
        {
            return Err(invalid("limits.wait_timeout_secs", format!("must be between 1 and {MAX_WAIT_SECS}")));
        }
        Ok(())
    }
}

/// A conversation of a tenant's users with a team of personas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Its id.
    pub id: SessionId,
    /// Its tenant.
    pub tenant: TenantId,
    /// A title.
    pub title: String,
    /// The team: persona names (`plugin.persona`), in order.
    pub personas: Vec<String>,
    /// How the next speaker is picked.
    pub strategy: Strategy,
    /// Limits of each run.
    pub limits: RunLimits,
    /// The key that created it.
    pub created_by: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

impl Session {
    /// Checks a new session's title and team (1–16 distinct `plugin.persona` names).
    pub fn validate(&self) -> Result<(), RunInputError> {
        if self.title.chars().count() > MAX_TITLE_CHARS {
            return Err(invalid("title", format!("at most {MAX_TITLE_CHARS} characters")));
        }
        if self.title.chars().any(char::is_control) {
            return Err(invalid("title", "must not contain control characters"));
        }
        if self.personas.is_empty() || self.personas.len() > MAX_TEAM {
            return Err(invalid("personas", format!("name 1 to {MAX_TEAM} personas")));
        }
        for (i, name) in self.personas.iter().enumerate() {
            if crate::plugin::split_qualified(name).is_none() {
                return Err(invalid("personas", format!("`{}` is not a `plugin.persona` name", truncate(name))));
            }
            if self.personas[..i].contains(name) {
                return Err(invalid("personas", format!("`{name}` is listed twice")));
            }
        }
        self.limits.validate()
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Who wrote a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Author {
    /// A person, by the key they used.
    User {
        /// The key's id.
        key_id: String,
    },
    /// A persona answering in a run.
    Persona {
        /// `plugin.persona`.
        name: String,
    },
}

/// A message of a session's conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Its id.
    pub id: MessageId,
    /// Its session.
    pub session: SessionId,
    /// Position in the session, dense from 1 (allocated by the store).
    pub seq: i64,
    /// Who wrote it.
    pub author: Author,
    /// The text.
    pub content: String,
    /// The run it started (a user's message) or was written in (a persona's).
    pub run: Option<RunId>,
    /// When it was written.
    pub at: DateTime<Utc>,
}

/// Checks a user's message: not blank, at most [`MAX_MESSAGE_BYTES`].
pub fn validate_message(content: &str) -> Result<(), RunInputError> {
    if content.trim().is_empty() {
        return Err(invalid("content", "must not be empty"));
    }
    if content.len() > MAX_MESSAGE_BYTES {
        return Err(invalid("content", format!("at most {MAX_MESSAGE_BYTES} bytes")));
    }
    Ok(())
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Waiting for a worker.
    Queued,
    /// A worker is executing it.
    Running,
    /// It finished.
    Completed,
    /// It failed (see its error).
    Failed,
    /// It was cancelled.
    Cancelled,
    /// It asked the user a question and waits for the answer (no worker holds it).
    WaitingInput,
    /// Its question was not answered in time.
    Expired,
}

impl RunState {
    /// The name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::Completed => "completed",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
            RunState::WaitingInput => "waiting_input",
            RunState::Expired => "expired",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        [
            RunState::Queued,
            RunState::Running,
            RunState::Completed,
            RunState::Failed,
            RunState::Cancelled,
            RunState::WaitingInput,
            RunState::Expired,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }

    /// Whether the run is over.
    pub fn is_final(self) -> bool {
        matches!(self, RunState::Completed | RunState::Failed | RunState::Cancelled | RunState::Expired)
    }
}

/// What a run used, so far or in all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunTotals {
    /// Steps taken.
    pub steps: u32,
    /// Model calls answered (settled).
    pub model_calls: u32,
    /// Tool calls run.
    pub tool_calls: u32,
    /// Tokens, as providers reported them.
    pub usage: Usage,
    /// Credits spent (model settlements and tool charges).
    pub credits: i64,
}

/// Why a run failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunError {
    /// A stable code (`no_model_provider`, `insufficient_credits`, `budget_exceeded`,
    /// `deadline_exceeded`, `model_unavailable`, …).
    pub code: String,
    /// What happened, for people.
    pub message: String,
}

/// A run: one pass of the team over a posted message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// Its id.
    pub id: RunId,
    /// Its session.
    pub session: SessionId,
    /// Its tenant (whose wallet pays).
    pub tenant: TenantId,
    /// The message that started it.
    pub trigger: MessageId,
    /// The key it acts for (policy is decided for this key and role at every call).
    pub key_id: String,
    /// That key's role.
    pub role: Role,
    /// Where it is.
    pub state: RunState,
    /// The strategy, fixed when it started.
    pub strategy: Strategy,
    /// The limits, fixed when it started.
    pub limits: RunLimits,
    /// What it used.
    pub totals: RunTotals,
    /// Why it failed.
    pub error: Option<RunError>,
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
}

/// A tool's result as the model saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolResultBody {
    /// The step.
    pub step: u32,
    /// The model call's tool call id.
    pub call_id: String,
    /// The tool (`plugin.tool`).
    pub tool: String,
    /// Whether the tool succeeded.
    pub ok: bool,
    /// The text given to the model (the result, or the error).
    pub content: String,
    /// The failure code when it failed (`not_offered`, `timeout`, `denied`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Credits the call was charged.
    pub credits: u64,
    /// How long it ran, in milliseconds.
    pub duration_ms: u64,
}

/// Every event of a run, with its payload. Serialised with its `type` tag
/// (`run.started`, `message.delta`, …); the stores keep the tag, [`EVENT_VERSION`] and
/// the payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum EventBody {
    /// The run began on a worker.
    #[serde(rename = "run.started")]
    RunStarted {
        /// The message it answers.
        trigger: MessageId,
        /// The strategy.
        strategy: Strategy,
        /// The team.
        personas: Vec<String>,
        /// The limits.
        limits: RunLimits,
    },
    /// The orchestrator decided the next turn: who acts and why, or that the request
    /// is satisfied (`personas` empty, `satisfied` true).
    #[serde(rename = "turn.decided")]
    TurnDecided {
        /// The turn, from 1.
        turn: u32,
        /// Who acts (several for a parallel turn), in team order.
        personas: Vec<String>,
        /// What they are asked to do, when the router said.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        instruction: Option<String>,
        /// Why (the router's reason, or the strategy's rule).
        reason: String,
        /// Whether the run's request is satisfied (the run ends).
        satisfied: bool,
        /// Whether the router's answer was unusable twice and the fixed fallback
        /// decided.
        #[serde(default)]
        fallback: bool,
    },
    /// A persona began a step.
    #[serde(rename = "step.started")]
    StepStarted {
        /// The step, from 1.
        step: u32,
        /// The turn it belongs to.
        turn: u32,
        /// The persona.
        persona: String,
        /// The configured model id it calls.
        model: String,
        /// The tools offered (persona's AND policy's).
        tools: Vec<String>,
        /// Messages of the session in its context.
        context_messages: u32,
        /// Oldest messages left out to fit the model's window.
        trimmed_messages: u32,
    },
    /// A piece of a model's answer text (deltas may be coalesced).
    #[serde(rename = "message.delta")]
    MessageDelta {
        /// The step.
        step: u32,
        /// The model call within the step, from 1.
        call: u32,
        /// The text.
        text: String,
    },
    /// The model asked for a tool.
    #[serde(rename = "tool.called")]
    ToolCalled {
        /// The step.
        step: u32,
        /// The model call that asked.
        call: u32,
        /// The provider's call id.
        call_id: String,
        /// The tool (`plugin.tool`, as offered).
        tool: String,
        /// The arguments as the model wrote them.
        arguments: String,
    },
    /// A tool call's result (or why it was refused or failed).
    #[serde(rename = "tool.result")]
    ToolResult(ToolResultBody),
    /// A model call's whole answer, recorded before the run moves on.
    #[serde(rename = "message.completed")]
    MessageCompleted {
        /// The step.
        step: u32,
        /// The model call within the step, from 1.
        call: u32,
        /// The persona (or `maestro` for the router).
        persona: String,
        /// The configured model id that answered.
        model: String,
        /// The text.
        text: String,
        /// Tool calls it asked for.
        #[serde(default)]
        tool_calls: Vec<ToolCallRequest>,
        /// Why it stopped.
        finish: FinishReason,
        /// Tokens, as reported.
        usage: Usage,
        /// Credits settled for it.
        credits: i64,
        /// The session message it became (the step's final answer).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<MessageId>,
    },
    /// A step finished.
    #[serde(rename = "step.completed")]
    StepCompleted {
        /// The step.
        step: u32,
        /// The persona.
        persona: String,
        /// Tokens over the step's model calls.
        usage: Usage,
        /// Model calls in the step.
        model_calls: u32,
        /// Tool calls in the step.
        tool_calls: u32,
        /// Credits spent in the step.
        credits: i64,
        /// The session message holding its answer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<MessageId>,
    },
    /// The run was taken over (its worker died) or resumed; `step`, when given, was
    /// cut mid-stream and restarts.
    #[serde(rename = "run.interrupted")]
    RunInterrupted {
        /// The step that restarts, if one was in progress.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<u32>,
        /// What happened.
        reason: String,
    },
    /// The run finished.
    #[serde(rename = "run.completed")]
    RunCompleted {
        /// What it used.
        totals: RunTotals,
    },
    /// The run failed.
    #[serde(rename = "run.failed")]
    RunFailed {
        /// Why.
        error: RunError,
        /// What it used.
        totals: RunTotals,
    },
    /// The run was cancelled.
    #[serde(rename = "run.cancelled")]
    RunCancelled {
        /// What it used.
        totals: RunTotals,
    },
    /// A persona wrote a document's version (created it, or edited it) through a
    /// built-in tool; recorded with the call's `tool.result`.
    #[serde(rename = "document.updated")]
    DocumentUpdated {
        /// The document.
        document: DocumentId,
        /// The version written (1 for a new document).
        version: i64,
        /// The document's title.
        title: String,
        /// The persona that wrote it.
        persona: String,
        /// The step it wrote in.
        step: u32,
    },
    /// The run asks the user a question and waits (`waiting_input`) for the answer.
    #[serde(rename = "clarification.requested")]
    ClarificationRequested {
        /// Who asks.
        asker: Asker,
        /// The question.
        question: String,
        /// The answers to choose from (empty: free text only).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        choices: Vec<String>,
        /// Whether an answer outside `choices` is accepted.
        free_text: bool,
        /// When the wait expires (the run then ends `expired`).
        expires_at: DateTime<Utc>,
    },
    /// The user answered the run's open question; the run is queued to resume.
    #[serde(rename = "clarification.answered")]
    ClarificationAnswered {
        /// The answer's text (the chosen choice's text when a choice was picked).
        answer: String,
        /// The index of the chosen choice, from 0, when the answer is one of them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        choice: Option<u32>,
        /// The key that answered.
        key_id: String,
        /// When it was answered.
        at: DateTime<Utc>,
        /// A plugin's question ([`Asker::Tool`]): the accepted answer, a JSON object
        /// fitting its schema.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        form: Option<serde_json::Value>,
        /// What the person did (a plugin's question may be declined or dismissed).
        #[serde(default, skip_serializing_if = "AnswerAction::is_accept")]
        action: AnswerAction,
    },
    /// The run's question was not answered before it expired; the run is over.
    #[serde(rename = "run.expired")]
    RunExpired {
        /// What it used.
        totals: RunTotals,
    },
    /// What the runner recalled into a persona's context for a step (recorded with its
    /// `step.started`): the persona's memories and snippets of the tenant's earlier
    /// sessions, given to the model as one system block. Not recorded when nothing
    /// relevant was found.
    #[serde(rename = "memory.recalled")]
    MemoryRecalled {
        /// The step.
        step: u32,
        /// `plugin.persona`.
        persona: String,
        /// The memories added, best first.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        memories: Vec<RecalledMemory>,
        /// The snippets of earlier sessions added, best first.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        snippets: Vec<RecalledSnippet>,
        /// The block's size by the prompt token bound (`[memory] recall_tokens` caps it).
        tokens: u64,
    },
}

/// A memory a step recalled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecalledMemory {
    /// The memory.
    pub id: crate::memory::MemoryId,
    /// Its cosine similarity to the query.
    pub score: f32,
}

/// A snippet of an earlier session a step recalled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecalledSnippet {
    /// What it is part of (a message or a document).
    pub kind: crate::search::SearchKind,
    /// That object's id (`msg_…`, `doc_…`).
    pub id: String,
    /// Its fused (reciprocal rank) score.
    pub score: f64,
}

/// Who asked the user a question.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Asker {
    /// A persona, through the `ask_user` tool.
    Persona {
        /// `plugin.persona`.
        persona: String,
        /// The step.
        step: u32,
        /// The model's tool call id (the answer becomes its result).
        call_id: String,
    },
    /// The router, deciding a turn (the answer is given to its next decision).
    Router {
        /// The turn being decided.
        turn: u32,
    },
    /// A plugin tool a persona called (`maestro:plugin/user.ask`): the tool call runs
    /// again once answered, given the answer (and those of its earlier questions).
    Tool {
        /// `plugin.persona`.
        persona: String,
        /// The step.
        step: u32,
        /// The model's tool call id.
        call_id: String,
        /// The tool (`plugin.tool`).
        tool: String,
        /// The question's position among the call's questions, from 0.
        index: u32,
        /// The JSON Schema of the answer (MCP elicitation's form: an object of
        /// primitive and enum properties).
        schema: serde_json::Value,
    },
}

/// What the person did with a question.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerAction {
    /// Answered it.
    #[default]
    Accept,
    /// Declined to answer.
    Decline,
    /// Dismissed it without deciding.
    Cancel,
}

impl AnswerAction {
    /// Whether it is [`AnswerAction::Accept`].
    pub fn is_accept(&self) -> bool {
        *self == AnswerAction::Accept
    }

    /// Parses `accept`, `decline` or `cancel`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "accept" => Some(AnswerAction::Accept),
            "decline" => Some(AnswerAction::Decline),
            "cancel" => Some(AnswerAction::Cancel),
            _ => None,
        }
    }
}

/// The name of the built-in tool every persona may call to ask the user.
pub const ASK_USER_TOOL: &str = "ask_user";
/// Most choices a question may offer.
pub const MAX_CHOICES: usize = 20;
/// Longest choice, in characters.
pub const MAX_CHOICE_CHARS: usize = 200;
/// Longest question, in characters.
pub const MAX_QUESTION_CHARS: usize = 4000;

/// A question to the user, as the `ask_user` tool (or the router) asks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// The question.
    pub question: String,
    /// The answers to choose from.
    pub choices: Vec<String>,
    /// Whether an answer outside `choices` is accepted.
    pub free_text: bool,
}

impl Question {
    /// Parses and checks `ask_user`'s arguments: `question` (not blank), optional
    /// `choices` (at most [`MAX_CHOICES`] distinct, non-blank, short strings), optional
    /// `free_text` (default: true when there are no choices, else false; always true
    /// without choices).
    pub fn from_arguments(arguments: &serde_json::Value) -> Result<Self, RunInputError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Args {
            question: String,
            #[serde(default)]
            choices: Vec<String>,
            #[serde(default)]
            free_text: Option<bool>,
        }
        let args: Args = serde_json::from_value(arguments.clone()).map_err(|e| invalid("arguments", e.to_string()))?;
        let question = args.question.trim().to_owned();
        if question.is_empty() {
            return Err(invalid("question", "must not be empty"));
        }
        if question.chars().count() > MAX_QUESTION_CHARS {
            return Err(invalid("question", format!("at most {MAX_QUESTION_CHARS} characters")));
        }
        if args.choices.len() > MAX_CHOICES {
            return Err(invalid("choices", format!("at most {MAX_CHOICES}")));
        }
        let mut choices: Vec<String> = Vec::with_capacity(args.choices.len());
        for choice in args.choices {
            let choice = choice.trim().to_owned();
            if choice.is_empty() || choice.chars().count() > MAX_CHOICE_CHARS || choice.chars().any(char::is_control) {
                return Err(invalid("choices", format!("each is 1 to {MAX_CHOICE_CHARS} characters on one line")));
            }
            if choices.contains(&choice) {
                return Err(invalid("choices", format!("`{}` is listed twice", truncate(&choice))));
            }
            choices.push(choice);
        }
        let free_text = choices.is_empty() || args.free_text.unwrap_or(false);
        Ok(Self { question, choices, free_text })
    }

    /// Checks an answer against the question: one of the choices (by its exact text), or
    /// free text when allowed. Returns the answer's text and the chosen choice's index.
    pub fn accept(&self, answer: &str) -> Result<(String, Option<u32>), RunInputError> {
        let answer = answer.trim();
        if answer.is_empty() {
            return Err(invalid("answer", "must not be empty"));
        }
        if answer.len() > MAX_MESSAGE_BYTES {
            return Err(invalid("answer", format!("at most {MAX_MESSAGE_BYTES} bytes")));
        }
        if let Some(index) = self.choices.iter().position(|c| c == answer) {
            return Ok((answer.to_owned(), u32::try_from(index).ok()));
        }
        if self.free_text {
            return Ok((answer.to_owned(), None));
        }
        Err(invalid("answer", format!("must be one of: {}", self.choices.join(", "))))
    }

    /// The JSON Schema of `ask_user`'s arguments, as offered to models.
    pub fn schema() -> serde_json::Value {
        serde_json::json!({
            "type": "object",
            "properties": {
                "question": { "type": "string", "description": "the question for the user, self-contained" },
                "choices": {
                    "type": "array", "items": { "type": "string" }, "maxItems": MAX_CHOICES,
                    "description": "answers the user may pick from (optional)"
                },
                "free_text": {
                    "type": "boolean",
                    "description": "whether the user may answer in their own words when choices are given (default false; always true without choices)"
                }
            },
            "required": ["question"],
            "additionalProperties": false
        })
    }
}

/// A plugin's question (`maestro:plugin/user.ask`) as a run asks it: its message, and
/// its schema's one enum field as the choices (an answer outside them refused), else free
/// text.
pub fn question_from_schema(message: &str, schema: &serde_json::Value) -> Question {
    let question: String = message.trim().chars().take(MAX_QUESTION_CHARS).collect();
    let question = if question.is_empty() { "(the tool asks without a message)".to_owned() } else { question };
    let choices = single_field(schema)
        .and_then(|(_, field)| field.get("enum"))
        .and_then(serde_json::Value::as_array)
        .map(|items| items.iter().filter_map(|i| i.as_str().map(str::to_owned)).take(MAX_CHOICES).collect::<Vec<_>>())
        .unwrap_or_default();
    let free_text = choices.is_empty();
    Question { question, choices, free_text }
}

/// The only property of an object schema, when it has exactly one.
fn single_field(schema: &serde_json::Value) -> Option<(&String, &serde_json::Value)> {
    let properties = schema.get("properties")?.as_object()?;
    let mut fields = properties.iter();
    let first = fields.next()?;
    fields.next().is_none().then_some(first)
}

/// The form answering a plugin's question from a text answer: a schema of one field
/// takes the text in it (as a number, integer or boolean when the field is one), checked
/// against the schema. A schema of several fields needs the form itself.
pub fn form_from_text(schema: &serde_json::Value, text: &str) -> Result<serde_json::Value, RunInputError> {
    let text = text.trim();
    let Some((name, field)) = single_field(schema) else {
        return Err(invalid(
            "form",
            "this question asks for several fields: answer with `form`, a JSON object fitting its schema",
        ));
    };
    let value = match field.get("type").and_then(serde_json::Value::as_str) {
        Some("integer") => {
            text.parse::<i64>().map(serde_json::Value::from).map_err(|_| invalid("answer", "must be an integer"))?
        }
        Some("number") => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(serde_json::Value::Number)
            .ok_or_else(|| invalid("answer", "must be a number"))?,
        Some("boolean") => match text.to_ascii_lowercase().as_str() {
            "true" | "yes" => serde_json::Value::Bool(true),
            "false" | "no" => serde_json::Value::Bool(false),
            _ => return Err(invalid("answer", "must be yes or no")),
        },
        _ => serde_json::Value::String(text.to_owned()),
    };
    let form = serde_json::json!({ name.clone(): value });
    check_form(schema, &form)?;
    Ok(form)
}

/// Checks a form answering a plugin's question: a JSON object fitting its schema.
pub fn check_form(schema: &serde_json::Value, form: &serde_json::Value) -> Result<(), RunInputError> {
    if !form.is_object() {
        return Err(invalid("form", "must be a JSON object"));
    }
    if form.to_string().len() > MAX_MESSAGE_BYTES {
        return Err(invalid("form", format!("at most {MAX_MESSAGE_BYTES} bytes")));
    }
    crate::plugin::schema::validate(schema, form)
        .map_err(|violation| invalid("form", format!("does not fit the question's schema: {violation}")))
}

/// An event body that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid `{kind}` event (version {version}): {reason}")]
pub struct EventDecodeError {
    /// The stored type.
    pub kind: String,
    /// The stored version.
    pub version: u32,
    /// Why.
    pub reason: String,
}

impl EventBody {
    /// The event's type, e.g. `message.delta`.
    pub fn kind(&self) -> &'static str {
        match self {
            EventBody::RunStarted { .. } => "run.started",
            EventBody::TurnDecided { .. } => "turn.decided",
            EventBody::StepStarted { .. } => "step.started",
            EventBody::MessageDelta { .. } => "message.delta",
            EventBody::ToolCalled { .. } => "tool.called",
            EventBody::ToolResult(_) => "tool.result",
            EventBody::MessageCompleted { .. } => "message.completed",
            EventBody::StepCompleted { .. } => "step.completed",
            EventBody::RunInterrupted { .. } => "run.interrupted",
            EventBody::RunCompleted { .. } => "run.completed",
            EventBody::RunFailed { .. } => "run.failed",
            EventBody::RunCancelled { .. } => "run.cancelled",
            EventBody::DocumentUpdated { .. } => "document.updated",
            EventBody::ClarificationRequested { .. } => "clarification.requested",
            EventBody::ClarificationAnswered { .. } => "clarification.answered",
            EventBody::RunExpired { .. } => "run.expired",
            EventBody::MemoryRecalled { .. } => "memory.recalled",
        }
    }

    /// Whether this event ends the run's stream.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            EventBody::RunCompleted { .. }
                | EventBody::RunFailed { .. }
                | EventBody::RunCancelled { .. }
                | EventBody::RunExpired { .. }
        )
    }

    /// The payload as stored: the body's fields without the `type` tag.
    pub fn payload(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).expect("event bodies always serialise");
        if let Some(object) = value.as_object_mut() {
            object.remove("type");
        }
        value
    }

    /// Rebuilds a body from its stored type, version and payload.
    pub fn decode(kind: &str, version: u32, payload: &str) -> Result<Self, EventDecodeError> {
        let err = |reason: String| EventDecodeError { kind: kind.to_owned(), version, reason };
        if version != EVENT_VERSION {
            return Err(err(format!("unknown version (this build reads version {EVENT_VERSION})")));
        }
        // One parse, no intermediate `Value`: splice the tag in front of the payload's
        // fields (replay decodes every stored event, so this is on the hot path).
        let fields =
            payload.trim_start().strip_prefix('{').ok_or_else(|| err("the payload is not an object".into()))?;
        let tag = serde_json::to_string(kind).map_err(|e| err(e.to_string()))?;
        let separator = if fields.trim_start().starts_with('}') { "" } else { "," };
        let tagged = format!("{{\"type\":{tag}{separator}{fields}");
        serde_json::from_str(&tagged).map_err(|e| err(e.to_string()))
    }
}

/// An event to append: the store allocates its `seq` and `session_seq`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The run.
    pub run: RunId,
    /// The run's session.
    pub session: SessionId,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What happened.
    pub body: EventBody,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunEvent {
    /// The run.
    pub run: RunId,
    /// The run's session.
    pub session: SessionId,
    /// Position in the run, dense from 1.
    pub seq: i64,
    /// Position in the session, dense from 1 across its runs.
    pub session_seq: i64,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What happened.
    pub body: EventBody,
}

/// Bounds of a page of sessions or messages.
pub const MAX_PAGE: u32 = 200;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_round_trips_through_its_stored_form() {
        let bodies = vec![
            EventBody::RunStarted {
                trigger: MessageId::from_random([1; 16]),
                strategy: Strategy::Router,
                personas: vec!["p.a".into()],
                limits: RunLimits::default(),
            },
            EventBody::MessageDelta { step: 1, call: 1, text: "hé".into() },
            EventBody::ToolResult(ToolResultBody {
                step: 1,
                call_id: "c".into(),
                tool: "calc.add".into(),
                ok: false,
                content: "nope".into(),
                error: Some("not_offered".into()),
                credits: 0,
                duration_ms: 0,
            }),
            EventBody::MessageCompleted {
                step: 2,
                call: 1,
                persona: "p.a".into(),
                model: "m".into(),
                text: "t".into(),
                tool_calls: vec![ToolCallRequest { id: "1".into(), name: "x".into(), arguments: "{".into() }],
                finish: FinishReason::Other("weird".into()),
                usage: Usage { input_tokens: 3, output_tokens: 4, ..Usage::default() },
                credits: 7,
                message: None,
            },
            EventBody::RunFailed {
                error: RunError { code: "x".into(), message: "y".into() },
                totals: RunTotals::default(),
            },
            EventBody::ClarificationRequested {
                asker: Asker::Persona { persona: "p.a".into(), step: 2, call_id: "c9".into() },
                question: "which?".into(),
                choices: vec!["a".into(), "b".into()],
                free_text: false,
                expires_at: Utc::now(),
            },
            EventBody::ClarificationRequested {
                asker: Asker::Router { turn: 3 },
                question: "who for?".into(),
                choices: vec![],
                free_text: true,
                expires_at: Utc::now(),
            },
            EventBody::ClarificationAnswered {
                answer: "b".into(),
                choice: Some(1),
                key_id: "key_x".into(),
                at: Utc::now(),
                form: None,
                action: AnswerAction::Accept,
            },
            EventBody::ClarificationRequested {
                asker: Asker::Tool {
                    persona: "p.a".into(),
                    step: 1,
                    call_id: "c1".into(),
                    tool: "forms.signup".into(),
                    index: 0,
                    schema: serde_json::json!({ "type": "object", "properties": { "name": { "type": "string" } } }),
                },
                question: "your name?".into(),
                choices: vec![],
                free_text: true,
                expires_at: Utc::now(),
            },
            EventBody::ClarificationAnswered {
                answer: "{\"name\":\"Ada\"}".into(),
                choice: None,
                key_id: "key_x".into(),
                at: Utc::now(),
                form: Some(serde_json::json!({ "name": "Ada" })),
                action: AnswerAction::Accept,
            },
            EventBody::ClarificationAnswered {
                answer: "declined".into(),
                choice: None,
                key_id: "key_x".into(),
                at: Utc::now(),
                form: None,
                action: AnswerAction::Decline,
            },
            EventBody::RunExpired { totals: RunTotals::default() },
            EventBody::MemoryRecalled {
                step: 1,
                persona: "p.a".into(),
                memories: vec![RecalledMemory { id: crate::memory::MemoryId::from_random([4; 16]), score: 0.625 }],
                snippets: vec![RecalledSnippet {
                    kind: crate::search::SearchKind::Message,
                    id: "msg_x".into(),
                    score: 1.0 / 61.0,
                }],
                tokens: 120,
            },
            EventBody::MemoryRecalled { step: 2, persona: "p.a".into(), memories: vec![], snippets: vec![], tokens: 0 },
        ];
        for body in bodies {
            let payload = body.payload();
            assert!(payload.get("type").is_none());
            let back = EventBody::decode(body.kind(), EVENT_VERSION, &payload.to_string()).expect("decodes");
            assert_eq!(back, body);
        }
        assert!(EventBody::decode("run.started", 2, "{}").is_err());
        assert!(EventBody::decode("no.such", 1, "{}").is_err());
        assert!(EventBody::decode("run.cancelled", 1, "[]").is_err());
        assert!(EventBody::decode("run.cancelled", 1, "{} , \"type\": 1").is_err());
        let empty = EventBody::decode("run.interrupted", 1, "{\"reason\":\"r\"}").expect("decodes");
        assert_eq!(empty, EventBody::RunInterrupted { step: None, reason: "r".into() });
    }

    #[test]
    fn a_plugin_question_shows_its_one_enum_as_choices_and_takes_text_in_its_one_field() {
        let plan = serde_json::json!({
            "type": "object",
            "properties": { "plan": { "type": "string", "enum": ["free", "pro"] } },
            "required": ["plan"]
        });
        let shown = question_from_schema(" Which plan? ", &plan);
        assert_eq!(
            (shown.question.as_str(), shown.choices.clone(), shown.free_text),
            ("Which plan?", vec!["free".to_owned(), "pro".to_owned()], false)
        );
        assert_eq!(form_from_text(&plan, "pro"), Ok(serde_json::json!({ "plan": "pro" })));
        assert!(form_from_text(&plan, "gold").is_err(), "outside the enum");
        let age = serde_json::json!({ "type": "object", "properties": { "age": { "type": "integer" } } });
        assert_eq!(form_from_text(&age, " 42 "), Ok(serde_json::json!({ "age": 42 })));
        assert!(form_from_text(&age, "old").is_err());
        let two = serde_json::json!({
            "type": "object",
            "properties": { "name": { "type": "string" }, "email": { "type": "string" } },
            "required": ["name", "email"]
        });
        assert!(question_from_schema("Who?", &two).free_text);
        assert!(form_from_text(&two, "Ada").is_err(), "several fields need a form");
        assert_eq!(check_form(&two, &serde_json::json!({ "name": "Ada", "email": "a@x" })), Ok(()));
        assert!(check_form(&two, &serde_json::json!({ "name": "Ada" })).is_err(), "a required field is missing");
        assert!(check_form(&two, &serde_json::json!("Ada")).is_err());
    }

    #[test]
    fn ask_user_arguments_are_checked_and_answers_fit_the_question() {
        let q = |v: serde_json::Value| Question::from_arguments(&v);
        let open = q(serde_json::json!({ "question": " Why? " })).expect("valid");
        assert_eq!((open.question.as_str(), open.free_text), ("Why?", true), "no choices: free text");
        assert_eq!(open.accept(" because "), Ok(("because".to_owned(), None)));
        assert!(open.accept("  ").is_err());
        let closed = q(serde_json::json!({ "question": "Which?", "choices": ["red", "blue"] })).expect("valid");
        assert!(!closed.free_text, "choices without free_text: only a choice");
        assert_eq!(closed.accept("blue"), Ok(("blue".to_owned(), Some(1))));
        assert!(closed.accept("green").is_err());
        let both =
            q(serde_json::json!({ "question": "Which?", "choices": ["red"], "free_text": true })).expect("valid");
        assert_eq!(both.accept("green"), Ok(("green".to_owned(), None)));
        assert!(q(serde_json::json!({ "question": "" })).is_err());
        assert!(q(serde_json::json!({ "choices": ["a"] })).is_err(), "a question is required");
        assert!(q(serde_json::json!({ "question": "q", "choices": ["a", "a"] })).is_err());
        assert!(q(serde_json::json!({ "question": "q", "choices": ["a\nb"] })).is_err());
        assert!(q(serde_json::json!({ "question": "q", "choices": vec!["x"; MAX_CHOICES + 1] })).is_err());
        assert!(q(serde_json::json!({ "question": "q", "extra": 1 })).is_err(), "unknown arguments are refused");
        assert!(RunState::Expired.is_final() && !RunState::WaitingInput.is_final());
        assert_eq!(RunState::parse("waiting_input"), Some(RunState::WaitingInput));
    }

    #[test]
    fn sessions_need_a_valid_distinct_team_and_sane_limits() {
        let mut session = Session {
            id: SessionId::from_random([2; 16]),
            tenant: TenantId::from_random([3; 16]),
            title: "t".into(),
            personas: vec!["team.writer".into(), "team.critic".into()],
            strategy: Strategy::RoundRobin,
            limits: RunLimits::default(),
            created_by: "key_x".into(),
            created_at: Utc::now(),
        };
        assert!(session.validate().is_ok());
        session.personas.push("team.writer".into());
        assert!(session.validate().is_err());
        session.personas = vec!["nodot".into()];
        assert!(session.validate().is_err());
        session.personas = vec!["a.b".into()];
        session.limits.max_steps = 0;
        assert!(session.validate().is_err());
        assert_eq!(Strategy::parse("round_robin"), Some(Strategy::RoundRobin));
        assert!(validate_message("  ").is_err());
    }
}
