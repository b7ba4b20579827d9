//! One call of a tool or a persona, as every entry point (HTTP, MCP, the coming
//! orchestrator) and every executor (the wasm sandbox) sees it: what is run
//! ([`Job`]), how the caller follows it ([`Observe`]: cancellation, progress, log lines),
//! how it ends ([`Outcome`]: a result or a typed [`Failure`], with [`Metering`]), the
//! port that runs it ([`ToolExecutor`]), and the one table of stable codes every way a
//! call can fail is answered with ([`Code`]: HTTP status and MCP treatment).
//!
//! Nothing here waits on a runtime: [`CancelToken::cancelled`] is a plain future woken
//! by [`CancelToken::cancel`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::plugin::{Rendered, ToolError, ToolOutput};

/// A cancellation signal shared by the caller and a running call. Cloning shares it.
#[derive(Clone, Default)]
pub struct CancelToken(Arc<CancelInner>);

#[derive(Default)]
struct CancelInner {
    flag: AtomicBool,
    wakers: Mutex<Vec<Waker>>,
}

impl fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CancelToken").field(&self.is_cancelled()).finish()
    }
}

impl CancelToken {
    /// Cancels: every clone reports cancellation and every [`Self::cancelled`] future
    /// completes.
    pub fn cancel(&self) {
        self.0.flag.store(true, Ordering::SeqCst);
        let wakers = std::mem::take(&mut *self.0.wakers.lock().unwrap_or_else(PoisonError::into_inner));
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Whether cancellation was requested.
    pub fn is_cancelled(&self) -> bool {
        self.0.flag.load(Ordering::SeqCst)
    }

    /// Completes once the token is cancelled.
    pub fn cancelled(&self) -> Cancelled<'_> {
        Cancelled(self)
    }
}

/// The future of [`CancelToken::cancelled`].
#[derive(Debug)]
pub struct Cancelled<'a>(&'a CancelToken);

impl Future for Cancelled<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let inner = &(self.0).0;
        if inner.flag.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        let mut wakers = inner.wakers.lock().unwrap_or_else(PoisonError::into_inner);
        // Checked again under the lock: `cancel` sets the flag before it takes the wakers.
        if inner.flag.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// A progress report from a running call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Units done.
    pub done: u64,
    /// Units in total, if known.
    pub total: Option<u64>,
    /// What is happening.
    pub message: Option<String>,
}

/// The level of a plugin's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Finest detail.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that the plugin coped with.
    Warn,
    /// A failure.
    Error,
}

/// Receives progress reports (called synchronously from the executor: keep it cheap and
/// bounded).
pub type ProgressSink = Arc<dyn Fn(Progress) + Send + Sync>;

/// Receives a call's log lines (called synchronously from the executor: keep it cheap
/// and bounded).
pub type LogSink = Arc<dyn Fn(LogLevel, &str) + Send + Sync>;

/// How the caller follows a call: cancellation, and where progress and plugin log lines
/// go while it runs.
#[derive(Clone, Default)]
pub struct Observe {
    /// Cancels the call (dropping the call's future cancels it too).
    pub cancel: CancelToken,
    /// Receives progress reports.
    pub progress: Option<ProgressSink>,
    /// Receives the plugin's log lines.
    pub log: Option<LogSink>,
    /// The caller's own models (an MCP client that offers sampling): a tool's
    /// completions go there instead of the host's providers, within the same grant, and
    /// cost no credits.
    pub client_models: Option<Arc<dyn Platform>>,
    /// The person behind the caller (an MCP client that offers elicitation): a tool's
    /// questions go to its [`Platform::ask`]; without it nobody can be asked.
    pub client_user: Option<Arc<dyn Platform>>,
    /// Answers to the questions the call asked in an earlier attempt (a run resumed after
    /// its question was answered, an MCP client's retry with its input responses):
    /// [`Replay`] gives them back before anyone is asked.
    pub answers: Vec<SuppliedAnswer>,
    /// Completions the caller's model gave for the requests the call made in an earlier
    /// attempt, replayed like [`Observe::answers`].
    pub completions: Vec<SuppliedCompletion>,
    /// The most credits the call's model completions may cost in all (a run's budget
    /// left): each completion's answer is shortened to fit, and refused when nothing is
    /// left. `None`: only the caller's balance limits them.
    pub credit_budget: Option<u64>,
}

impl fmt::Debug for Observe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observe")
            .field("cancelled", &self.cancel.is_cancelled())
            .field("progress", &self.progress.is_some())
            .field("log", &self.log.is_some())
            .field("client_models", &self.client_models.is_some())
            .field("client_user", &self.client_user.is_some())
            .field("answers", &self.answers.len())
            .field("completions", &self.completions.len())
            .field("credit_budget", &self.credit_budget)
            .finish()
    }
}

/// Limits of one call (from the caller's grant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunLimits {
    /// Fuel (roughly, wasm instructions).
    pub fuel: u64,
    /// Wall-clock deadline from the start of the call.
    pub timeout: Duration,
    /// Linear memory.
    pub memory_bytes: usize,
    /// Largest result, as the JSON that leaves the host (content items with their
    /// envelopes and escapes, structured JSON); also caps tool-error messages and
    /// rendered persona prompts.
    pub output_bytes: usize,
}

impl Default for RunLimits {
    /// 10⁹ fuel, 10 s, 64 MiB of memory, 1 MiB of output.
    fn default() -> Self {
        Self { fuel: 1_000_000_000, timeout: Duration::from_secs(10), memory_bytes: 64 << 20, output_bytes: 1 << 20 }
    }
}

/// Why a call that was run did not produce a result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Failure {
    /// The wall-clock deadline passed.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The fuel ran out.
    #[error("ran out of fuel ({0} units)")]
    OutOfFuel(u64),
    /// Memory would have grown past the limit.
    #[error("exceeded the memory limit of {0} bytes")]
    MemoryLimit(usize),
    /// The guest trapped (panic, stack overflow, unreachable…).
    #[error("trapped: {0}")]
    Trap(String),
    /// An outgoing request was refused and the call failed.
    #[error("network access denied for {url}: {reason}")]
    NetworkDenied {
        /// The URL (without query).
        url: String,
        /// Why, naming the rule or its absence.
        reason: String,
    },
    /// The result is larger than allowed.
    #[error("output of {size} bytes exceeds the limit of {limit} bytes")]
    OutputTooLarge {
        /// Result size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The tool ran and reported an error.
    #[error("tool error: {0}")]
    ToolError(ToolError),
    /// The caller cancelled the call.
    #[error("cancelled")]
    Cancelled,
    /// The host could not run the call (no instance slot free, the executor failed).
    /// Not the plugin's fault: a charged call is refunded. `detail` is for the log only;
    /// the message callers see is generic.
    #[error("the host could not run the call, try again later")]
    Unavailable {
        /// What went wrong, for the operator's log.
        detail: String,
    },
    /// The tool asked the person behind the call something nobody here could answer:
    /// the questions still open, for the caller to put to a person and call again with
    /// the answers ([`Observe::answers`]). Nothing is charged for such an attempt.
    #[error("needs input from the user: {}", .questions.first().map_or("a completion by the client's model", |q| q.question.message.as_str()))]
    NeedsInput {
        /// The open questions, in the order asked.
        questions: Vec<AskedQuestion>,
        /// The completions left to the caller's model, in the order asked.
        completions: Vec<AskedCompletion>,
    },
}

impl Failure {
    /// A short, stable kind (for logs and metrics).
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Timeout(_) => "timeout",
            Failure::OutOfFuel(_) => "out_of_fuel",
            Failure::MemoryLimit(_) => "memory_limit",
            Failure::Trap(_) => "trap",
            Failure::NetworkDenied { .. } => "network_denied",
            Failure::OutputTooLarge { .. } => "output_too_large",
            Failure::ToolError(_) => "tool_error",
            Failure::Cancelled => "cancelled",
            Failure::Unavailable { .. } => "unavailable",
            Failure::NeedsInput { .. } => "needs_input",
        }
    }

    /// Whether the host, not the plugin or the caller, is why the call failed (a charged
    /// call is refunded).
    pub fn is_host_side(&self) -> bool {
        matches!(self, Failure::Unavailable { .. })
    }

    /// The stable code callers see.
    pub fn code(&self) -> Code {
        match self {
            Failure::Timeout(_) => Code::ToolTimeout,
            Failure::OutOfFuel(_) => Code::ToolOutOfFuel,
            Failure::MemoryLimit(_) => Code::ToolMemoryLimit,
            Failure::Trap(_) => Code::ToolTrap,
            Failure::NetworkDenied { .. } => Code::NetworkDenied,
            Failure::OutputTooLarge { .. } => Code::ToolOutputTooLarge,
            Failure::ToolError(ToolError::InvalidArguments(_)) => Code::InvalidRequest,
            Failure::ToolError(_) => Code::ToolError,
            Failure::Cancelled => Code::Cancelled,
            Failure::Unavailable { .. } => Code::Unavailable,
            Failure::NeedsInput { .. } => Code::NeedsInput,
        }
    }
}

/// What a call cost, whether it succeeded or failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metering {
    /// Wall-clock time in the executor.
    pub duration: Duration,
    /// Fuel consumed.
    pub fuel: u64,
    /// Argument bytes passed in.
    pub bytes_in: usize,
    /// Result bytes returned.
    pub bytes_out: usize,
    /// Outgoing HTTP requests attempted (redirect hops included).
    pub http_requests: u32,
    /// Outgoing HTTP requests refused.
    pub http_denied: u32,
    /// Response body bytes received over HTTP.
    pub http_bytes_received: u64,
    /// Credits charged for the call (0 when free or refunded); set by the pipeline.
    pub credits_charged: u64,
}

/// How a run ended: the result or why there is none, with its metering.
#[derive(Debug, Clone)]
pub struct Outcome<T> {
    /// The result, or why there is none.
    pub result: Result<T, Failure>,
    /// What it cost.
    pub metering: Metering,
}

/// One run for an executor: the item of a plugin, its arguments, and everything the
/// caller's grant says about running it. `N` is the executor's form of the network
/// rules (resolved secrets included).
pub struct Job<N> {
    /// The tool or persona name within its plugin.
    pub item: String,
    /// The arguments, a JSON object as text.
    pub arguments: String,
    /// Limits from the grant.
    pub limits: RunLimits,
    /// Network rules from the grant.
    pub network: Arc<N>,
    /// The plugin's configuration from the grant (a JSON document).
    pub config_json: Arc<str>,
    /// Who is calling (for the executor's logs): the tenant name.
    pub caller: Arc<str>,
    /// Cancellation, progress and log lines.
    pub observe: Observe,
    /// What the platform offers the call besides its arguments (model completions), for
    /// this caller under its grant; `None`: nothing (every request is refused).
    pub platform: Option<Arc<dyn Platform>>,
}

impl<N> fmt::Debug for Job<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("item", &self.item)
            .field("limits", &self.limits)
            .field("caller", &self.caller)
            .finish_non_exhaustive()
    }
}

/// The port that runs tools and renders personas (the wasm sandbox implements it).
/// Executors never fail: every way a run can end is an [`Outcome`]; a run the host could
/// not start is [`Failure::Unavailable`].
#[async_trait::async_trait]
pub trait ToolExecutor: Send + Sync + fmt::Debug {
    /// A plugin ready to run, in the executor's terms.
    type Plugin: Send + Sync + ?Sized;
    /// Network rules, in the executor's terms.
    type Network: Send + Sync;

    /// Calls a tool of `plugin`.
    async fn call_tool(&self, plugin: &Self::Plugin, job: Job<Self::Network>) -> Outcome<ToolOutput>;

    /// Renders a persona of `plugin` (system `None`: the plugin has no renderer for it,
    /// the persona's system prompt is the prompt).
    async fn render_persona(&self, plugin: &Self::Plugin, job: Job<Self::Network>) -> Outcome<Rendered>;

    /// Reads a resource `plugin` serves (`job.item` is the URI, `job.arguments` empty).
    /// A resource the plugin does not know fails with [`ToolError::NotFound`]. An executor that runs no resources answers
    /// [`Failure::Unavailable`].
    async fn read_resource(
        &self,
        plugin: &Self::Plugin,
        job: Job<Self::Network>,
    ) -> Outcome<Vec<crate::plugin::ReadContents>> {
        let _ = (plugin, job);
        Outcome {
            result: Err(Failure::Unavailable { detail: "this executor reads no resources".to_owned() }),
            metering: Metering::default(),
        }
    }
}

/// Who wrote a message of a plugin's completion request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompletionRole {
    /// Instructions.
    System,
    /// The person, or the plugin speaking for one.
    User,
    /// The model.
    Assistant,
}

/// A completion a plugin asks for (`maestro:plugin/model@0.2.0`).
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRequest {
    /// The conversation, system message first when there is one.
    pub messages: Vec<(CompletionRole, String)>,
    /// The class of model to ask.
    pub tier: crate::plugin::ModelTier,
    /// Largest answer, in tokens.
    pub max_tokens: u32,
    /// When set, the answer must be JSON fitting this schema (a JSON object).
    pub schema: Option<serde_json::Value>,
}

/// A model's answer to a plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The answer's text.
    pub text: String,
    /// With a schema: the answer parsed as JSON.
    pub structured: Option<serde_json::Value>,
    /// The configured id of the model that answered (or the MCP client's model).
    pub model: String,
    /// Tokens used, as reported.
    pub input_tokens: u64,
    /// Answer tokens, as reported.
    pub output_tokens: u64,
    /// Credits charged for it.
    pub credits: u64,
}

/// Why a plugin's completion request has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlatformError {
    /// Policy does not let this call use models, this tier, or this many tokens.
    #[error("{0}")]
    Denied(String),
    /// The request is malformed.
    #[error("{0}")]
    InvalidRequest(String),
    /// The caller's credits do not cover the request's worst case.
    #[error("{0}")]
    InsufficientCredits(String),
    /// The model failed or is unavailable (the message is safe to show the plugin).
    #[error("{0}")]
    Failed(String),
    /// The call was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// Nobody can be asked here (no MCP client offering elicitation; in a run, not yet):
    /// the question as asked, for the caller to put another way. The seam a run's
    /// `ask_user` flow can record.
    #[error("needs input from the user: {question}")]
    NeedsInput {
        /// The message the plugin asked.
        question: String,
        /// The JSON Schema of the answer it wanted (its choices).
        schema: serde_json::Value,
    },
    /// The caller's own model answers, but only on the caller's retry (a stateless MCP
    /// client that offers sampling through input-required results): the request is
    /// kept by [`Replay`] and the call ends with [`Failure::NeedsInput`].
    #[error("the client's model answers this completion when the client calls again")]
    NeedsCompletion,
}

/// What a plugin asks the person behind the call (MCP elicitation's form).
#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    /// The message shown.
    pub message: String,
    /// The JSON Schema of the answer: an object of primitive and enum properties.
    pub schema: serde_json::Value,
}

impl Question {
    /// A question with one text field, `answer`: limited to `choices` (an enum) when only
    /// they are accepted, else free text (naming the choices, when there are some, as
    /// suggestions). Read the answer back with [`Answer::text`].
    pub fn for_answer(message: impl Into<String>, choices: &[String], free_text: bool) -> Self {
        let answer = if !choices.is_empty() && !free_text {
            serde_json::json!({ "type": "string", "enum": choices })
        } else if choices.is_empty() {
            serde_json::json!({ "type": "string", "description": "your answer" })
        } else {
            serde_json::json!({ "type": "string", "description": format!("your answer; suggested: {}", choices.join(" | ")) })
        };
        let schema = serde_json::json!({
            "type": "object",
            "properties": { ANSWER_FIELD: answer },
            "required": [ANSWER_FIELD],
        });
        Self { message: message.into(), schema }
    }
}

/// The field of a [`Question::for_answer`] form that holds the answer.
pub const ANSWER_FIELD: &str = "answer";

/// What the person did.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Answered with this JSON object.
    Accepted(serde_json::Value),
    /// Declined to answer.
    Declined,
    /// Dismissed the question.
    Cancelled,
}

impl Answer {
    /// The text of an accepted [`Question::for_answer`] form (`None`: declined,
    /// dismissed, or no text in it).
    pub fn text(&self) -> Option<&str> {
        match self {
            Answer::Accepted(form) => form.get(ANSWER_FIELD).and_then(serde_json::Value::as_str),
            Answer::Declined | Answer::Cancelled => None,
        }
    }
}

/// The platform as one call sees it: model completions for its caller, under the
/// caller's grant and on its credits. The host builds one per call and hands it to the
/// executor in the [`Job`].
#[async_trait::async_trait]
pub trait Platform: Send + Sync + fmt::Debug {
    /// Asks a model for a completion.
    async fn complete(&self, request: CompletionRequest) -> Result<Completion, PlatformError>;

    /// Asks the person behind the call. By default nobody can be asked:
    /// [`PlatformError::NeedsInput`].
    async fn ask(&self, question: Question) -> Result<Answer, PlatformError> {
        Err(PlatformError::NeedsInput { question: question.message, schema: question.schema })
    }
}

impl Question {
    /// The digest a replayed answer is matched by (with the question's position in the
    /// call): SHA-256 over the message and the schema's JSON, hex.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        hasher.update((self.message.len() as u64).to_be_bytes());
        hasher.update(self.message.as_bytes());
        hasher.update(self.schema.to_string().as_bytes());
        hex::encode(hasher.finalize())
    }
}

/// A question a call asked, with its place in the call (the first `ask` is 0).
#[derive(Debug, Clone, PartialEq)]
pub struct AskedQuestion {
    /// Its position among the call's questions, from 0.
    pub index: u32,
    /// The question.
    pub question: Question,
}

/// An answer given to a call for a question it asked in an earlier attempt: returned by
/// the question in the same position with the same message and schema.
#[derive(Debug, Clone, PartialEq)]
pub struct SuppliedAnswer {
    /// The question's position in the call, from 0.
    pub index: u32,
    /// [`Question::digest`] of the question answered.
    pub digest: String,
    /// The answer.
    pub answer: Answer,
}

impl SuppliedAnswer {
    /// The answer to `asked`.
    pub fn to(asked: &AskedQuestion, answer: Answer) -> Self {
        Self { index: asked.index, digest: asked.question.digest(), answer }
    }
}

impl CompletionRequest {
    /// The digest a replayed completion is matched by (with its position in the call).
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        for (role, text) in &self.messages {
            hasher.update([*role as u8]);
            hasher.update((text.len() as u64).to_be_bytes());
            hasher.update(text.as_bytes());
        }
        hasher.update([self.tier as u8]);
        hasher.update(self.max_tokens.to_be_bytes());
        hasher.update(self.schema.as_ref().map(ToString::to_string).unwrap_or_default().as_bytes());
        hex::encode(hasher.finalize())
    }
}

/// A completion a call asked for, with its place in the call (the first is 0).
#[derive(Debug, Clone, PartialEq)]
pub struct AskedCompletion {
    /// Its position among the call's completions, from 0.
    pub index: u32,
    /// The request.
    pub request: CompletionRequest,
}

/// A completion given to a call for a request it made in an earlier attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct SuppliedCompletion {
    /// The request's position in the call, from 0.
    pub index: u32,
    /// [`CompletionRequest::digest`] of the request.
    pub digest: String,
    /// The completion.
    pub completion: Completion,
}

/// The one replay mechanism of a call's questions, wrapped around its platform: the
/// n-th `ask` returns the answer supplied for the n-th question when its message and
/// schema are the ones answered; with none, the platform's live asker asks (an MCP
/// client's elicitation); with neither, `ask` fails with
/// [`PlatformError::NeedsInput`] and the question is kept: once the call ends,
/// [`Replay::open_questions`] lists every such question and the caller ends the call
/// with [`Failure::NeedsInput`], whatever the plugin made of the error.
#[derive(Debug)]
pub struct Replay {
    inner: Option<Arc<dyn Platform>>,
    supplied: Vec<SuppliedAnswer>,
    completions: Vec<SuppliedCompletion>,
    state: Mutex<ReplayState>,
}

#[derive(Debug, Default)]
struct ReplayState {
    next: u32,
    open: Vec<AskedQuestion>,
    next_completion: u32,
    open_completions: Vec<AskedCompletion>,
}

impl Replay {
    /// Replays `supplied` before asking through `inner` (`None`: nobody can be asked).
    pub fn new(inner: Option<Arc<dyn Platform>>, supplied: Vec<SuppliedAnswer>) -> Self {
        Self { inner, supplied, completions: Vec::new(), state: Mutex::new(ReplayState::default()) }
    }

    /// Also replays `completions` before asking `inner` for a completion.
    #[must_use]
    pub fn with_completions(mut self, completions: Vec<SuppliedCompletion>) -> Self {
        self.completions = completions;
        self
    }

    /// The questions no answer was found for, in the order asked.
    pub fn open_questions(&self) -> Vec<AskedQuestion> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).open.clone()
    }

    /// Ends an outcome with [`Failure::NeedsInput`] when a question or a client's
    /// completion was left open (a cancelled call stays cancelled).
    pub fn settle<T>(&self, outcome: &mut Outcome<T>) {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (questions, completions) = (state.open.clone(), state.open_completions.clone());
        if (questions.is_empty() && completions.is_empty()) || matches!(outcome.result, Err(Failure::Cancelled)) {
            return;
        }
        outcome.result = Err(Failure::NeedsInput { questions, completions });
    }
}

#[async_trait::async_trait]
impl Platform for Replay {
    async fn complete(&self, request: CompletionRequest) -> Result<Completion, PlatformError> {
        let index = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let index = state.next_completion;
            state.next_completion = state.next_completion.saturating_add(1);
            index
        };
        let digest = request.digest();
        if let Some(given) = self.completions.iter().find(|s| s.index == index && s.digest == digest) {
            return Ok(given.completion.clone());
        }
        let answered = match &self.inner {
            Some(inner) => inner.complete(request.clone()).await,
            None => Err(PlatformError::Denied("model access is not available to this call".into())),
        };
        if matches!(answered, Err(PlatformError::NeedsCompletion)) {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.open_completions.push(AskedCompletion { index, request });
        }
        answered
    }

    async fn ask(&self, question: Question) -> Result<Answer, PlatformError> {
        let index = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let index = state.next;
            state.next = state.next.saturating_add(1);
            index
        };
        let digest = question.digest();
        if let Some(given) = self.supplied.iter().find(|s| s.index == index && s.digest == digest) {
            return Ok(given.answer.clone());
        }
        let answered = match &self.inner {
            Some(inner) => inner.ask(question.clone()).await,
            None => {
                Err(PlatformError::NeedsInput { question: question.message.clone(), schema: question.schema.clone() })
            }
        };
        if matches!(answered, Err(PlatformError::NeedsInput { .. })) {
            self.state.lock().unwrap_or_else(PoisonError::into_inner).open.push(AskedQuestion { index, question });
        }
        answered
    }
}

/// Seals `payload` with `key` for a client to hold and hand back (an MCP input-required
/// result's request state): `<payload hex>.<HMAC-SHA256 hex>`.
pub fn seal(key: &[u8], payload: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(payload);
    format!("{}.{}", hex::encode(payload), hex::encode(mac.finalize().into_bytes()))
}

/// The payload of a [`seal`]ed text, when `key` sealed it and nothing was changed
/// (compared in constant time); `None` otherwise.
pub fn unseal(key: &[u8], sealed: &str) -> Option<Vec<u8>> {
    use hmac::Mac;
    let (payload, tag) = sealed.split_once('.')?;
    let (payload, tag) = (hex::decode(payload).ok()?, hex::decode(tag).ok()?);
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(&payload);
    mac.verify_slice(&tag).ok()?;
    Some(payload)
}

/// How MCP answers a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum McpTreatment {
    /// A JSON-RPC error with this code: the request itself was wrong or not allowed.
    Protocol(i32),
    /// The call was accepted and failed: a tool answers an `isError` result the model can
    /// read; a prompt (which has no such result) answers JSON-RPC `-32603`.
    IsError,
}

/// JSON-RPC "invalid params".
pub const JSONRPC_INVALID_PARAMS: i32 = -32602;
/// JSON-RPC "internal error": how a prompt answers a failure MCP tools answer with
/// `isError`.
pub const JSONRPC_INTERNAL_ERROR: i32 = -32603;

/// The one table: every way a tool call or a persona rendering can fail, with its stable
/// machine code, HTTP status and MCP treatment. Clients match on [`Code::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// No such tool or persona is loaded.
    NotFound,
    /// Policy denies it, or the key is not a tenant's.
    Forbidden,
    /// The arguments do not fit (not an object, rejected by the tool or the persona).
    InvalidRequest,
    /// The grant's rate is exhausted (retry after).
    RateLimited,
    /// The tenant has as many calls running as it may (retry after).
    TooManyCallsInFlight,
    /// The tenant's credits do not cover the price.
    InsufficientCredits,
    /// The host could not run the call (ledger, secret, sandbox); details are logged.
    Unavailable,
    /// The tool ran past its deadline.
    ToolTimeout,
    /// The tool used all its fuel.
    ToolOutOfFuel,
    /// The tool needed more memory than allowed.
    ToolMemoryLimit,
    /// The tool crashed.
    ToolTrap,
    /// The tool tried to reach a destination its policy does not allow.
    NetworkDenied,
    /// The result is larger than allowed.
    ToolOutputTooLarge,
    /// The tool ran and reported an error.
    ToolError,
    /// The caller cancelled the call.
    Cancelled,
    /// The tool asked the user a question nobody here could answer (call again with the
    /// answer).
    NeedsInput,
}

impl Code {
    /// Every code, for tables and tests.
    pub const ALL: [Code; 16] = [
        Code::NotFound,
        Code::Forbidden,
        Code::InvalidRequest,
        Code::RateLimited,
        Code::TooManyCallsInFlight,
        Code::InsufficientCredits,
        Code::Unavailable,
        Code::ToolTimeout,
        Code::ToolOutOfFuel,
        Code::ToolMemoryLimit,
        Code::ToolTrap,
        Code::NetworkDenied,
        Code::ToolOutputTooLarge,
        Code::ToolError,
        Code::Cancelled,
        Code::NeedsInput,
    ];

    /// The stable machine code (the HTTP error code, the prefix of an MCP `isError`
    /// text and the `code` of a JSON-RPC error's data).
    pub fn as_str(self) -> &'static str {
        self.row().0
    }

    /// The HTTP status.
    pub fn http_status(self) -> u16 {
        self.row().1
    }

    /// How MCP answers it.
    pub fn mcp(self) -> McpTreatment {
        self.row().2
    }

    fn row(self) -> (&'static str, u16, McpTreatment) {
        use McpTreatment::{IsError, Protocol};
        match self {
            Code::NotFound => ("not_found", 404, Protocol(JSONRPC_INVALID_PARAMS)),
            Code::Forbidden => ("forbidden", 403, Protocol(JSONRPC_INVALID_PARAMS)),
            Code::InvalidRequest => ("invalid_request", 422, Protocol(JSONRPC_INVALID_PARAMS)),
            Code::RateLimited => ("rate_limited", 429, IsError),
            Code::TooManyCallsInFlight => ("too_many_calls_in_flight", 429, IsError),
            Code::InsufficientCredits => ("insufficient_credits", 402, IsError),
            Code::Unavailable => ("unavailable", 503, IsError),
            Code::ToolTimeout => ("tool_timeout", 504, IsError),
            Code::ToolOutOfFuel => ("tool_out_of_fuel", 422, IsError),
            Code::ToolMemoryLimit => ("tool_memory_limit", 422, IsError),
            Code::ToolTrap => ("tool_trap", 502, IsError),
            Code::NetworkDenied => ("network_denied", 403, IsError),
            Code::ToolOutputTooLarge => ("tool_output_too_large", 422, IsError),
            Code::ToolError => ("tool_error", 422, IsError),
            Code::Cancelled => ("cancelled", 409, IsError),
            Code::NeedsInput => ("needs_input", 409, IsError),
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::task::Wake;

    use super::*;

    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn cancelled_future_is_woken_by_cancel_and_ready_after_it() {
        let token = CancelToken::default();
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let mut future = token.cancelled();
        assert!(Pin::new(&mut future).poll(&mut cx).is_pending());
        token.clone().cancel();
        assert!(flag.0.load(Ordering::SeqCst), "cancel wakes the waiting future");
        assert!(Pin::new(&mut future).poll(&mut cx).is_ready());
        assert!(Pin::new(&mut token.cancelled()).poll(&mut cx).is_ready());
    }

    #[test]
    fn every_code_has_a_unique_snake_case_name_and_an_error_status() {
        let mut seen = HashSet::new();
        for code in Code::ALL {
            let name = code.as_str();
            assert!(name.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{name}");
            assert!(seen.insert(name), "duplicate {name}");
            assert!((400..600).contains(&code.http_status()), "{name}");
        }
    }

    #[test]
    fn unavailable_hides_its_detail_from_callers() {
        let failure = Failure::Unavailable { detail: "pool exhausted: panicked at secret.rs".into() };
        assert!(!failure.to_string().contains("secret"), "{failure}");
        assert!(failure.is_host_side());
        assert_eq!(failure.code(), Code::Unavailable);
    }

    #[test]
    fn invalid_arguments_from_a_tool_are_invalid_requests() {
        assert_eq!(Failure::ToolError(ToolError::InvalidArguments("x".into())).code(), Code::InvalidRequest);
        assert_eq!(Failure::ToolError(ToolError::Failed("x".into())).code(), Code::ToolError);
    }

    #[test]
    fn a_sealed_state_opens_with_its_key_only_and_unchanged() {
        let sealed = seal(b"key-1", b"{\"a\":1}");
        assert_eq!(unseal(b"key-1", &sealed).as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(unseal(b"key-2", &sealed), None, "another deployment's state");
        assert_eq!(unseal(b"key-1", &format!("{sealed}-TAMPERED")), None);
        let (payload, tag) = sealed.split_once('.').expect("two parts");
        let changed = format!("{}.{tag}", hex::encode(b"{\"a\":2}"));
        assert_eq!(unseal(b"key-1", &changed), None, "a changed payload");
        assert_eq!(unseal(b"key-1", payload), None);
    }

    #[test]
    fn replay_returns_answers_by_position_and_digest_and_keeps_the_rest_open() {
        let first = Question { message: "name?".into(), schema: serde_json::json!({ "type": "object" }) };
        let second = Question { message: "plan?".into(), schema: serde_json::json!({ "type": "object" }) };
        let given = Answer::Accepted(serde_json::json!({ "name": "Ada" }));
        let supplied = vec![SuppliedAnswer::to(&AskedQuestion { index: 0, question: first.clone() }, given.clone())];
        let replay = Replay::new(None, supplied.clone());
        let run = |future: Pin<Box<dyn Future<Output = Result<Answer, PlatformError>> + Send + '_>>| {
            let waker = Waker::from(Arc::new(Flag(AtomicBool::new(false))));
            let mut future = future;
            match future.as_mut().poll(&mut Context::from_waker(&waker)) {
                Poll::Ready(answer) => answer,
                Poll::Pending => panic!("replay never waits without a live asker"),
            }
        };
        assert_eq!(run(replay.ask(first.clone())), Ok(given));
        assert!(matches!(run(replay.ask(second.clone())), Err(PlatformError::NeedsInput { .. })));
        assert_eq!(replay.open_questions(), vec![AskedQuestion { index: 1, question: second.clone() }]);
        // The same answer for another question (or another position) is not used.
        let moved = Replay::new(None, supplied);
        assert!(run(moved.ask(second)).is_err());
        assert!(run(moved.ask(first)).is_err(), "the first question asked second is not the one answered");
        let mut outcome: Outcome<()> = Outcome { result: Ok(()), metering: Metering::default() };
        moved.settle(&mut outcome);
        assert!(matches!(&outcome.result, Err(Failure::NeedsInput { questions, .. }) if questions.len() == 2));
        assert_eq!(outcome.result.map_err(|f| f.code()), Err(Code::NeedsInput));
    }

    #[test]
    fn a_question_for_an_answer_limits_it_to_the_choices_unless_free_text_is_allowed() {
        let choices = vec!["yes".to_owned(), "no".to_owned()];
        let only = Question::for_answer("ship it?", &choices, false);
        assert_eq!(only.schema["properties"]["answer"]["enum"], serde_json::json!(["yes", "no"]));
        assert_eq!(only.schema["required"], serde_json::json!(["answer"]));
        let open = Question::for_answer("why?", &choices, true);
        assert!(open.schema["properties"]["answer"].get("enum").is_none());
        assert!(open.schema["properties"]["answer"]["description"].as_str().is_some_and(|d| d.contains("yes | no")));
        assert_eq!(Answer::Accepted(serde_json::json!({ "answer": "no" })).text(), Some("no"));
        assert_eq!(Answer::Accepted(serde_json::json!({ "other": 1 })).text(), None);
        assert_eq!(Answer::Declined.text(), None);
    }
}
