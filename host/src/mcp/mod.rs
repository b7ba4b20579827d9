//! MCP: plugin tools, personas (as prompts) and host resources, served to MCP clients
//! for one caller at a time under that caller's policy. The only module that uses
//! rmcp. [`HttpTransport`] is the Streamable HTTP transport the HTTP module mounts at
//! `/mcp` (authentication, Host/Origin checks and session ownership happen there,
//! before a request reaches this module); [`serve_stdio`] is `maestro mcp`.
//!
//! Both revisions in use are served: 2025-11-25 (`initialize`, sessions, server-sent
//! notifications on the session) and 2026-07-28 (stateless: each request carries its
//! own metadata; list changes arrive through `subscriptions/listen`).

// rmcp marks MCP logging deprecated (SEP-2577) but clients of both revisions use it.
#![allow(deprecated)]

mod agents;
mod content;
mod elicitation;
mod memories;
mod plain;
mod redact;
mod resources;
mod resume;
mod sampling;
mod stdio;
mod subscribe;
mod watch;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CompleteRequestParams, CompleteResult, CompletionInfo, ErrorData,
    Extensions, GetPromptRequestParams, GetPromptResponse, GetPromptResult, Implementation, ListPromptsResult,
    ListResourceTemplatesResult, ListResourcesResult, ListToolsResult, LoggingLevel, LoggingMessageNotificationParam,
    PaginatedRequestParams, ProgressNotificationParam, ProgressToken, Prompt, PromptArgument, ProtocolVersion,
    ReadResourceRequestParams, ReadResourceResponse, Reference, ServerCapabilities, ServerConfig,
    SetLevelRequestParams, SubscriptionFilter, Tool, ToolAnnotations,
};
use rmcp::service::{NotificationContext, RequestContext, RoleServer, SubscriptionContext};
use rmcp::{Peer, ServerHandler};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use maestro_core::call::{Code, Failure, JSONRPC_INTERNAL_ERROR, LogLevel, McpTreatment, Progress};
use maestro_core::plugin::PersonaSpec;

use crate::config::{McpNames, McpSettings};
use crate::telemetry::{RequestId, RequestSpan};
use crate::tools::{CallError, Observe, Principal, Tools, VisiblePersona, VisibleTool};

pub use agents::{Agents, DOCUMENT_TEMPLATE, TRANSCRIPT_TEMPLATE, VERSION_TEMPLATE};
pub use memories::{MEMORY_TEMPLATE, PAGE as MEMORY_PAGE};
pub use plain::PlainAnswer;
pub use resources::{PLUGIN_TEMPLATE, POLICY_URI};
pub use resume::{EventBuffer, MAX_STREAM_EVENTS, ResumeError};

/// The log target of the MCP library.
pub const LIBRARY_TARGET: &str = "rmcp";
/// A log directive that keeps the library's per-error warnings out of the log (it
/// warns on every JSON-RPC error it answers; Maestro logs each request itself).
pub const QUIET_LIBRARY_LOGS: &str = "rmcp::service=error";

/// What every MCP handler shares: the tool use-cases and the naming style.
#[derive(Debug)]
pub struct Mcp {
    tools: Arc<Tools>,
    names: McpNames,
    agents: Option<Agents>,
    /// Seals the request states of plugin questions to stateless clients (set once
    /// from the configured secret; random per process when none is).
    state_key: std::sync::OnceLock<elicitation::stateless::StateKey>,
}

impl Mcp {
    /// The MCP use-cases over `tools`.
    pub fn new(tools: Arc<Tools>, names: McpNames) -> Arc<Self> {
        Arc::new(Self { tools, names, agents: None, state_key: std::sync::OnceLock::new() })
    }

    /// The MCP use-cases over `tools`, with the agent runtime's resources (documents,
    /// transcripts, document subscriptions).
    pub fn with_agents(tools: Arc<Tools>, names: McpNames, agents: Agents) -> Arc<Self> {
        Arc::new(Self { tools, names, agents: Some(agents), state_key: std::sync::OnceLock::new() })
    }

    /// Seals input-required request states with a key derived from `secret`, the same on
    /// every replica (`MAESTRO_MCP_STATE_KEY`); without it a random key of this process
    /// is used. Takes effect only before the first state is sealed or opened.
    pub fn seal_states_with(&self, secret: &str) {
        let _ = self.state_key.set(elicitation::stateless::StateKey::from_secret(secret));
    }

    fn state_key(&self) -> &elicitation::stateless::StateKey {
        self.state_key.get_or_init(elicitation::stateless::StateKey::random)
    }

    /// Tools the principal sees, under their MCP names, sorted by name.
    fn tools_for(&self, principal: &Principal) -> Vec<(String, VisibleTool)> {
        let tools = self.tools.visible_tools(principal);
        let names = mcp_names(self.names, tools.iter().map(|t| t.name.as_str()));
        let mut named: Vec<_> = names.into_iter().zip(tools).collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named
    }

    /// Personas the principal sees, under their MCP (prompt) names, sorted by name.
    fn personas_for(&self, principal: &Principal) -> Vec<(String, VisiblePersona)> {
        let personas = self.tools.visible_personas(principal);
        let names = mcp_names(self.names, personas.iter().map(|p| p.name.as_str()));
        let mut named: Vec<_> = names.into_iter().zip(personas).collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named
    }

    /// The qualified name behind an MCP tool name the principal sees.
    fn resolve_tool(&self, principal: &Principal, name: &str) -> Option<String> {
        match self.names {
            // Policy decides at call time; an unknown or denied name fails there.
            McpNames::Qualified => Some(name.to_owned()),
            McpNames::Short => self.tools_for(principal).into_iter().find(|(n, _)| n == name).map(|(_, t)| t.name),
        }
    }

    /// The qualified name and spec of the persona behind an MCP prompt name.
    fn resolve_persona(&self, principal: &Principal, name: &str) -> Option<(String, PersonaSpec)> {
        match self.names {
            // Policy decides at render time; a denied name fails there.
            McpNames::Qualified => {
                self.tools.catalog().personas().find(|(n, _, _)| n == name).map(|(n, _, spec)| (n, spec.clone()))
            }
            McpNames::Short => {
                self.personas_for(principal).into_iter().find(|(n, _)| n == name).map(|(_, p)| (p.name, p.spec))
            }
        }
    }
}

/// MCP names for qualified `plugin.item` names: as they are, or (short) the bare item
/// name where no other name in the list has the same item.
fn mcp_names<'a>(style: McpNames, qualified: impl Iterator<Item = &'a str> + Clone) -> Vec<String> {
    let item = |name: &'a str| name.split_once('.').map_or(name, |(_, item)| item);
    match style {
        McpNames::Qualified => qualified.map(str::to_owned).collect(),
        McpNames::Short => {
            let mut counts: HashMap<&str, usize> = HashMap::new();
            for name in qualified.clone() {
                *counts.entry(item(name)).or_default() += 1;
            }
            qualified.map(|name| if counts[item(name)] == 1 { item(name) } else { name }.to_owned()).collect()
        }
    }
}

/// One MCP connection's handler: a session (2025-11-25), one stateless request
/// (2026-07-28), or the stdio server. Over HTTP the caller comes with each request
/// (the HTTP module authenticated it); over stdio it is fixed.
#[derive(Debug)]
pub struct Handler {
    mcp: Arc<Mcp>,
    fixed: Option<Principal>,
    /// The level `logging/setLevel` chose for this session.
    log_level: Mutex<Option<LoggingLevel>>,
    /// Stops this session's list-change watcher when the handler goes away.
    stop: CancellationToken,
    /// This session's document subscriptions.
    subscriptions: agents::Subscriptions,
    /// This session's plugin-resource subscriptions.
    plugin_subscriptions: resources::plugins::Subscriptions,
    /// This session's memory subscriptions.
    memory_subscriptions: memories::Subscriptions,
}

impl Drop for Handler {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Handler {
    /// A handler whose caller comes with each request (HTTP).
    pub fn per_request(mcp: Arc<Mcp>) -> Self {
        Self {
            mcp,
            fixed: None,
            log_level: Mutex::new(None),
            stop: CancellationToken::new(),
            subscriptions: Default::default(),
            plugin_subscriptions: Default::default(),
            memory_subscriptions: Default::default(),
        }
    }

    /// A handler for one fixed caller (stdio).
    pub fn for_principal(mcp: Arc<Mcp>, principal: Principal) -> Self {
        Self {
            mcp,
            fixed: Some(principal),
            log_level: Mutex::new(None),
            stop: CancellationToken::new(),
            subscriptions: Default::default(),
            plugin_subscriptions: Default::default(),
            memory_subscriptions: Default::default(),
        }
    }

    /// Waits until the plugins have been scanned once (only `maestro mcp` starts
    /// answering before that).
    async fn ready(&self) {
        self.mcp.tools.registry().first_scan().await;
    }

    fn principal(&self, extensions: &Extensions) -> Result<Principal, ErrorData> {
        if let Some(principal) = &self.fixed {
            return Ok(principal.clone());
        }
        extensions
            .get::<http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Principal>())
            .cloned()
            .ok_or_else(|| ErrorData::internal_error("the request carries no authenticated caller", None))
    }

    /// The lowest level of plugin log lines to forward for this request: the level in
    /// the request's metadata (2026-07-28), else the session's `logging/setLevel`, else
    /// `info` for sessions and nothing for stateless requests that did not ask.
    fn log_threshold(&self, context: &RequestContext<RoleServer>) -> Option<LoggingLevel> {
        if let Some(level) = context.meta.log_level() {
            return Some(level);
        }
        if let Some(level) = *self.log_level.lock().unwrap_or_else(std::sync::PoisonError::into_inner) {
            return Some(level);
        }
        let stateless =
            context.protocol_version().is_some_and(|v| v.as_str() >= ProtocolVersion::V_2026_07_28.as_str());
        (!stateless).then_some(LoggingLevel::Info)
    }

    async fn call(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<Called, ErrorData> {
        let principal = self.principal(&context.extensions)?;
        let (state, responses) = (request.request_state.clone(), request.input_responses.clone());
        let (qualified, arguments) = match mrtr::resumed(&request) {
            // A stateless retry carrying the answer to a run's question (SEP-2322).
            Some(resumed) => resumed,
            None => {
                let name = request.name.as_ref();
                let Some(qualified) = self.mcp.resolve_tool(&principal, name) else {
                    return tool_answer(&CallError::UnknownTool(truncate(name, 128)).into()).map(Called::Done);
                };
                (qualified, Value::Object(request.arguments.unwrap_or_default()))
            }
        };
        tracing::debug!(tenant = %principal.tenant, tool = %qualified, arguments = %redact::redacted(&arguments), "mcp tools/call arguments");
        let progress_token = context.meta.get_progress_token();
        let plugin = qualified.split_once('.').map_or("", |(plugin, _)| plugin).to_owned();
        let (mut observe, events) =
            Events::start(context.peer.clone(), progress_token, self.log_threshold(&context), plugin);
        // A client that offers sampling answers the tool's completions with its own model.
        observe.client_models =
            sampling::Sampling::offered(&context).map(|s| Arc::new(s) as Arc<dyn maestro_core::call::Platform>);
        // A client that offers elicitation answers the tool's questions (its user does).
        observe.client_user =
            elicitation::Elicitation::offered(&context).map(|e| Arc::new(e) as Arc<dyn maestro_core::call::Platform>);
        // A stateless client that offers elicitation is asked by input-required results:
        // its retry carries the answers, replayed into the call (SEP-2322).
        // Likewise one that offers sampling: its model answers the tool's completions.
        let elicits = mrtr::offered(&context);
        if observe.client_models.is_none() {
            observe.client_models =
                sampling::Deferred::offered(&context).map(|s| Arc::new(s) as Arc<dyn maestro_core::call::Platform>);
        }
        let ask_stateless = elicits || sampling::Deferred::offered(&context).is_some();
        let call_of = (principal.tenant_id.as_str(), qualified.as_str(), &arguments);
        if ask_stateless {
            let key = self.mcp.state_key();
            (observe.answers, observe.completions) =
                elicitation::stateless::answers(key, call_of, state.as_deref(), responses.as_ref())?;
        }
        let supplied = (observe.answers.clone(), observe.completions.clone());
        let call_of = (principal.tenant_id.as_str().to_owned(), qualified.clone(), arguments.clone());
        let cancel = observe.cancel.clone();
        let call = self.mcp.tools.call(&principal, &qualified, arguments, observe);
        tokio::pin!(call);
        // The client cancelled (notifications/cancelled, or a closed stateless request):
        // stop the sandboxed call and wait the moment it takes to stop.
        let result = tokio::select! {
            result = &mut call => result,
            () = context.ct.cancelled() => {
                cancel.cancel();
                call.await
            }
        };
        events.finish().await;
        let done = match result {
            Ok(call) => match call.outcome.result {
                Ok(output) => Ok(content::success(output)),
                // Questions only to a client that declared elicitation.
                Err(Failure::NeedsInput { questions, completions })
                    if ask_stateless && (elicits || questions.is_empty()) =>
                {
                    let (tenant, tool, arguments) = &call_of;
                    let asks = elicitation::stateless::input_required(
                        self.mcp.state_key(),
                        (tenant, tool, arguments),
                        (&supplied.0, &supplied.1),
                        (&questions, &completions),
                    );
                    match asks {
                        Some(asks) => return Ok(Called::Asks(asks)),
                        None => tool_answer(&(&Failure::NeedsInput { questions, completions }).into()),
                    }
                }
                Err(failure) => tool_answer(&(&failure).into()),
            },
            Err(err) => tool_answer(&(&err).into()),
        };
        done.map(Called::Done)
    }

    async fn prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResult, ErrorData> {
        let principal = self.principal(&context.extensions)?;
        let Some((qualified, spec)) = self.mcp.resolve_persona(&principal, &request.name) else {
            return Err(prompt_error(&CallError::UnknownPersona(truncate(&request.name, 128)).into()));
        };
        let arguments = Value::Object(request.arguments.unwrap_or_default());
        let observe = Observe::default();
        let cancel = observe.cancel.clone();
        let render = self.mcp.tools.render_persona(&principal, &qualified, &arguments, observe);
        tokio::pin!(render);
        let rendered = tokio::select! {
            rendered = &mut render => rendered,
            () = context.ct.cancelled() => {
                cancel.cancel();
                render.await
            }
        };
        let prompt = match rendered {
            Ok(rendering) => match rendering.outcome.result {
                Ok(prompt) => prompt,
                Err(failure) => return Err(prompt_error(&(&failure).into())),
            },
            Err(err) => return Err(prompt_error(&(&err).into())),
        };
        let mut result = GetPromptResult::new(content::prompt_messages(prompt));
        result.description = Some(spec.role.clone());
        Ok(result)
    }

    fn complete_argument(&self, principal: &Principal, request: &CompleteRequestParams) -> Vec<String> {
        let wanted = request.argument.value.to_lowercase();
        let candidates: Vec<String> = match &request.r#ref {
            Reference::Prompt(prompt) => self
                .mcp
                .personas_for(principal)
                .into_iter()
                .find(|(name, _)| *name == prompt.name)
                .and_then(|(_, p)| p.spec.arguments.into_iter().find(|a| a.name == request.argument.name))
                .map(|argument| argument.values)
                .unwrap_or_default(),
            Reference::Resource(resource) if resource.uri == PLUGIN_TEMPLATE && request.argument.name == "name" => {
                self.mcp.tools.visible_plugins(principal).iter().map(|p| p.manifest.name.clone()).collect()
            }
            _ => Vec::new(),
        };
        candidates.into_iter().filter(|v| v.to_lowercase().starts_with(&wanted)).collect()
    }
}

/// A refusal or a failure of a call, as the one table ([`Code`]) answers it.
#[derive(Debug)]
struct Refusal {
    code: Code,
    message: String,
    retry_after_secs: Option<u64>,
}

impl From<&CallError> for Refusal {
    fn from(err: &CallError) -> Self {
        Self { code: err.code(), message: err.to_string(), retry_after_secs: err.retry_after_secs() }
    }
}

impl From<CallError> for Refusal {
    fn from(err: CallError) -> Self {
        Self::from(&err)
    }
}

impl From<&Failure> for Refusal {
    fn from(failure: &Failure) -> Self {
        // A tool's own error is given as the tool wrote it.
        let message = match failure {
            Failure::ToolError(error) => error.to_string(),
            other => other.to_string(),
        };
        Self { code: failure.code(), message, retry_after_secs: None }
    }
}

impl Refusal {
    /// The JSON-RPC error data: the stable code (and when to retry).
    fn data(&self) -> Value {
        let mut data = serde_json::json!({ "code": self.code.as_str() });
        if let Some(seconds) = self.retry_after_secs {
            data["retry_after_seconds"] = seconds.into();
        }
        data
    }
}

/// A tool call's answer for a refusal or failure: a JSON-RPC error for a wrong or
/// forbidden request, else an `isError` result `"<code>: <message>"` the model reads.
fn tool_answer(refusal: &Refusal) -> Result<rmcp::model::CallToolResult, ErrorData> {
    match refusal.code.mcp() {
        McpTreatment::Protocol(code) => {
            Err(ErrorData::new(rmcp::model::ErrorCode(code), refusal.message.clone(), Some(refusal.data())))
        }
        McpTreatment::IsError => Ok(content::failure(refusal.code.as_str(), &refusal.message)),
    }
}

/// A prompt's answer for a refusal or failure: prompts have no `isError` result, so a
/// failure the tool would report as one is JSON-RPC `-32603`, with the code in the data.
fn prompt_error(refusal: &Refusal) -> ErrorData {
    match refusal.code.mcp() {
        McpTreatment::Protocol(code) => {
            ErrorData::new(rmcp::model::ErrorCode(code), refusal.message.clone(), Some(refusal.data()))
        }
        McpTreatment::IsError => ErrorData::new(
            rmcp::model::ErrorCode(JSONRPC_INTERNAL_ERROR),
            format!("{}: {}", refusal.code, refusal.message),
            Some(refusal.data()),
        ),
    }
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// The span one MCP request runs in: over HTTP a child of the HTTP request's span
/// (request id, route, tenant, key), which a session's requests, served on the
/// session's task, would not otherwise be in; over stdio the span [`serve_stdio`]
/// opened for the request (the current one).
fn request_span(context: &RequestContext<RoleServer>, method: &'static str) -> tracing::Span {
    let parent = context.extensions.get::<http::request::Parts>().and_then(|p| p.extensions.get::<RequestSpan>());
    match parent {
        Some(RequestSpan(parent)) => tracing::info_span!(parent: parent, "mcp", method),
        None => tracing::Span::current(),
    }
}

/// Most events of one call waiting for a slow client. Past it, progress is coalesced
/// (the latest report is kept and sent once there is room) and log lines are dropped
/// and counted (the client is told how many at the end): a plugin flooding either
/// cannot make the host buffer without bound.
const MAX_QUEUED_EVENTS: usize = 256;

/// Progress and plugin log lines of one call, forwarded to the client in order while
/// the call runs (the sandbox reports them synchronously; sending is async), through a
/// bounded [`EventQueue`].
struct Events {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<EventQueue>,
    ready: tokio::sync::Notify,
    /// The sending task: started by the first event, so that a call which reports
    /// nothing (most) spawns nothing.
    sender: Mutex<Sender>,
}

/// The task sending a call's events, before and after its first event.
#[derive(Default)]
enum Sender {
    /// Nothing to send yet; what the task needs once there is.
    Idle(Option<Box<SenderParts>>),
    Running(tokio::task::JoinHandle<()>),
    #[default]
    Done,
}

/// What [`forward`] needs, and where to run it (sinks are called from any thread).
struct SenderParts {
    runtime: tokio::runtime::Handle,
    peer: Peer<RoleServer>,
    progress_token: Option<ProgressToken>,
    plugin: String,
}

impl Shared {
    fn push(self: &Arc<Self>, push: impl FnOnce(&mut EventQueue)) {
        push(&mut self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        let mut sender = self.sender.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Sender::Idle(parts) = &mut *sender
            && let Some(parts) = parts.take()
        {
            let SenderParts { runtime, peer, progress_token, plugin } = *parts;
            *sender = Sender::Running(runtime.spawn(forward(self.clone(), peer, progress_token, plugin)));
        }
        drop(sender);
        self.ready.notify_one();
    }
}

#[derive(Debug, PartialEq)]
enum Event {
    Progress(Progress),
    Log(LoggingLevel, String),
}

/// The events of one call not yet sent, at most [`MAX_QUEUED_EVENTS`].
#[derive(Debug, Default)]
struct EventQueue {
    events: std::collections::VecDeque<Event>,
    /// The latest progress report that found the queue full.
    latest_progress: Option<Progress>,
    /// Log lines dropped because the queue was full.
    dropped_logs: u64,
    /// The call has finished: send what is queued, then stop.
    done: bool,
}

impl EventQueue {
    /// Every report is sent while there is room (a client sees each step of a plugin
    /// that reports a few); past the bound only the latest waiting one is kept.
    fn push_progress(&mut self, progress: Progress) {
        if self.events.len() < MAX_QUEUED_EVENTS {
            // Newer than any report waiting for room.
            self.latest_progress = None;
            self.events.push_back(Event::Progress(progress));
        } else if let Some(Event::Progress(last)) = self.events.back_mut() {
            *last = progress;
        } else {
            self.latest_progress = Some(progress);
        }
    }

    fn push_log(&mut self, level: LoggingLevel, message: &str) {
        if self.events.len() < MAX_QUEUED_EVENTS {
            self.events.push_back(Event::Log(level, message.to_owned()));
        } else {
            self.dropped_logs += 1;
        }
    }

    fn pop(&mut self) -> Option<Event> {
        self.events.pop_front().or_else(|| self.latest_progress.take().map(Event::Progress))
    }
}

impl Events {
    fn start(
        peer: Peer<RoleServer>,
        progress_token: Option<ProgressToken>,
        log_threshold: Option<LoggingLevel>,
        plugin: String,
    ) -> (Observe, Self) {
        let parts = SenderParts {
            runtime: tokio::runtime::Handle::current(),
            peer,
            progress_token: progress_token.clone(),
            plugin,
        };
        let shared = Arc::new(Shared { sender: Mutex::new(Sender::Idle(Some(Box::new(parts)))), ..Shared::default() });
        let progress = progress_token.is_some().then(|| {
            let shared = shared.clone();
            Arc::new(move |p: Progress| shared.push(|queue| queue.push_progress(p))) as maestro_core::call::ProgressSink
        });
        let log = log_threshold.map(|threshold| {
            let shared = shared.clone();
            Arc::new(move |level: LogLevel, message: &str| {
                let level = logging_level(level);
                if rank(level) >= rank(threshold) {
                    shared.push(|queue| queue.push_log(level, message));
                }
            }) as maestro_core::call::LogSink
        });
        (Observe { progress, log, ..Observe::default() }, Self { shared })
    }

    /// Waits until every event reported so far has been sent (before the response).
    async fn finish(self) {
        let sender = {
            let mut sender = self.shared.sender.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            std::mem::take(&mut *sender)
        };
        // Nothing was reported: nothing to send.
        let Sender::Running(task) = sender else { return };
        self.shared.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner).done = true;
        self.shared.ready.notify_one();
        let _ = task.await;
    }
}

/// Sends a call's queued events to the client until the call is done and the queue is
/// empty, or the client is gone.
async fn forward(shared: Arc<Shared>, peer: Peer<RoleServer>, progress_token: Option<ProgressToken>, plugin: String) {
    loop {
        let (event, done, dropped) = {
            let mut queue = shared.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            (queue.pop(), queue.done, queue.dropped_logs)
        };
        let sent = match event {
            None if done => {
                if dropped > 0 {
                    let message = format!("{dropped} log lines of this call were dropped: the client read too slowly");
                    let param = LoggingMessageNotificationParam::new(LoggingLevel::Warning, Value::String(message))
                        .with_logger(plugin.clone());
                    let _ = peer.notify_logging_message(param).await;
                }
                return;
            }
            None => {
                shared.ready.notified().await;
                continue;
            }
            Some(Event::Progress(p)) => {
                let Some(token) = &progress_token else { continue };
                #[expect(clippy::cast_precision_loss, reason = "progress counts are far below 2^52")]
                let mut param = ProgressNotificationParam::new(token.clone(), p.done as f64);
                #[expect(clippy::cast_precision_loss, reason = "progress counts are far below 2^52")]
                if let Some(total) = p.total {
                    param = param.with_total(total as f64);
                }
                if let Some(message) = p.message {
                    param = param.with_message(message);
                }
                peer.notify_progress(param).await
            }
            Some(Event::Log(level, message)) => {
                let param =
                    LoggingMessageNotificationParam::new(level, Value::String(message)).with_logger(plugin.clone());
                peer.notify_logging_message(param).await
            }
        };
        if sent.is_err() {
            // The client went away; the call's own cancellation handles the rest (the
            // sinks keep filling the bounded queue until the call ends).
            return;
        }
    }
}

/// How a tools/call ended: a result, or (a stateless client that can be asked) the
/// plugin's questions as an input-required result.
enum Called {
    Done(rmcp::model::CallToolResult),
    Asks(rmcp::model::InputRequiredResult),
}

/// Asking a stateless (2026-07-28) client through input-required results (SEP-2322): a
/// `runs.start` or `runs.answer` whose run waits for an answer becomes an
/// `InputRequiredResult` with one elicitation (`answer`) and the request state
/// `maestro-run:<run id>`; the client's retry with the elicitation's result answers the
/// run (`runs.answer`, a declined one reads it with `runs.get`). The state is only a
/// handle: the answer is checked against the caller's tenant and the run's question.
mod mrtr {
    use rmcp::model::{
        CallToolRequestParams, CallToolResult, ElicitRequest, ElicitRequestParams, InputRequest, InputRequiredResult,
        ProtocolVersion,
    };
    use rmcp::service::{RequestContext, RoleServer};
    use serde_json::{Value, json};

    const STATE_PREFIX: &str = "maestro-run:";
    const KEY: &str = "answer";

    /// Whether this request's client can be asked through input-required results.
    pub(super) fn offered(context: &RequestContext<RoleServer>) -> bool {
        let stateless =
            context.protocol_version().is_some_and(|v| v.as_str() >= ProtocolVersion::V_2026_07_28.as_str());
        stateless && context.meta.client_capabilities().is_some_and(|c| c.elicitation.is_some())
    }

    /// The tool and arguments a retry carrying a run's state stands for: its answer, or
    /// (none, or declined) a reading of the run.
    pub(super) fn resumed(request: &CallToolRequestParams) -> Option<(String, Value)> {
        let run = request.request_state.as_deref()?.strip_prefix(STATE_PREFIX)?.to_owned();
        // No (or no usable) answer: the run as it is, asked again while it still waits.
        let response = request.input_responses.as_ref().and_then(|r| r.get(KEY));
        let answer = response.filter(|r| r["action"] == "accept").and_then(|r| r["content"][KEY].as_str());
        Some(match answer {
            Some(answer) => ("runs.answer".to_owned(), json!({ "run": run, "answer": answer })),
            None => ("runs.get".to_owned(), json!({ "run": run })),
        })
    }

    /// The input-required result for a run tool's result that is a waiting question.
    pub(super) fn input_required(result: &CallToolResult) -> Option<InputRequiredResult> {
        let structured = result.structured_content.as_ref()?;
        if result.is_error == Some(true) || structured["state"] != "waiting_input" {
            return None;
        }
        let run = structured["run"].as_str()?;
        let question = &structured["question"];
        let choices: Vec<String> =
            question["choices"].as_array()?.iter().filter_map(|c| c.as_str().map(str::to_owned)).collect();
        let params = ElicitRequestParams::FormElicitationParams {
            meta: None,
            message: question["question"].as_str()?.to_owned(),
            requested_schema: serde_json::from_value(
                maestro_core::call::Question::for_answer("", &choices, question["free_text"].as_bool().unwrap_or(true))
                    .schema,
            )
            .ok()?,
        };
        let requests = [(KEY.to_owned(), InputRequest::Elicitation(ElicitRequest::new(params)))].into_iter().collect();
        Some(InputRequiredResult::new(Some(requests), Some(format!("{STATE_PREFIX}{run}"))))
    }
}

fn logging_level(level: LogLevel) -> LoggingLevel {
    match level {
        LogLevel::Trace | LogLevel::Debug => LoggingLevel::Debug,
        LogLevel::Info => LoggingLevel::Info,
        LogLevel::Warn => LoggingLevel::Warning,
        LogLevel::Error => LoggingLevel::Error,
    }
}

fn rank(level: LoggingLevel) -> u8 {
    match level {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}

/// An MCP tool description from a plugin tool.
fn tool(name: String, visible: &VisibleTool) -> Tool {
    let spec = &visible.spec;
    let mut tool = Tool::default();
    tool.name = Cow::Owned(name);
    tool.title.clone_from(&spec.title);
    tool.description = Some(Cow::Owned(spec.description.clone()));
    tool.input_schema = Arc::new(schema_object(&spec.input_schema));
    tool.output_schema = spec.output_schema.as_ref().map(|s| Arc::new(schema_object(s)));
    let a = &spec.annotations;
    let mut annotations = ToolAnnotations::new()
        .read_only(a.read_only)
        .destructive(a.destructive)
        .idempotent(a.idempotent)
        .open_world(a.open_world);
    annotations.title.clone_from(&spec.title);
    tool.annotations = Some(annotations);
    tool
}

/// A JSON Schema as an object (a non-object schema, which plugins cannot declare for
/// arguments, becomes the schema of any object), with only the `format`s JSON Schema
/// defines: schema generators add others (`uint16`, `int64`) that clients' validators
/// warn about on every listing.
fn schema_object(schema: &Value) -> rmcp::model::JsonObject {
    let mut schema = match schema {
        Value::Object(_) => schema.clone(),
        _ => serde_json::json!({ "type": "object" }),
    };
    standard_formats_only(&mut schema);
    match schema {
        Value::Object(object) => object,
        _ => rmcp::model::JsonObject::new(),
    }
}

const JSON_SCHEMA_FORMATS: &[&str] = &[
    "date-time",
    "date",
    "time",
    "duration",
    "email",
    "idn-email",
    "hostname",
    "idn-hostname",
    "ipv4",
    "ipv6",
    "uri",
    "uri-reference",
    "iri",
    "iri-reference",
    "uuid",
    "uri-template",
    "json-pointer",
    "relative-json-pointer",
    "regex",
];

fn standard_formats_only(schema: &mut Value) {
    match schema {
        Value::Object(object) => {
            if object.get("format").and_then(Value::as_str).is_some_and(|f| !JSON_SCHEMA_FORMATS.contains(&f)) {
                object.remove("format");
            }
            object.values_mut().for_each(standard_formats_only);
        }
        Value::Array(items) => items.iter_mut().for_each(standard_formats_only),
        _ => {}
    }
}

fn prompt(name: String, persona: &VisiblePersona) -> Prompt {
    let arguments = persona
        .spec
        .arguments
        .iter()
        .map(|a| PromptArgument::new(&a.name).with_description(&a.description).with_required(a.required))
        .collect::<Vec<_>>();
    Prompt::new(name, Some(persona.spec.role.clone()), (!arguments.is_empty()).then_some(arguments))
        .with_title(&persona.spec.title)
}

/// Logs one MCP request: method, tenant, target, duration and outcome.
fn trace<T>(method: &str, tenant: &str, target: &str, started: Instant, result: &Result<T, ErrorData>) {
    let duration_us = started.elapsed().as_micros();
    match result {
        Ok(_) => tracing::info!(method, tenant, target, duration_us, outcome = "ok", "mcp request"),
        Err(err) => {
            tracing::info!(method, tenant, target, duration_us, outcome = "error", code = err.code.0, error = %err.message, "mcp request");
        }
    }
}

/// Logs one `tools/call`: tenant, tool, duration and outcome (a tool error's kind).
fn log_call(tenant: &str, name: &str, started: Instant, result: &Result<rmcp::model::CallToolResult, ErrorData>) {
    let duration_us = started.elapsed().as_micros();
    match result {
        Ok(r) if r.is_error == Some(true) => {
            let cause = r.content.first().and_then(|c| c.as_text()).map_or("", |t| t.text.as_str());
            let kind = cause.split_once(':').map_or(cause, |(kind, _)| kind);
            tracing::info!(method = "tools/call", tenant, tool = %name, duration_us, outcome = "tool_error", kind, "mcp request");
        }
        Ok(_) => {
            tracing::info!(method = "tools/call", tenant, tool = %name, duration_us, outcome = "ok", "mcp request")
        }
        Err(err) => {
            tracing::info!(method = "tools/call", tenant, tool = %name, duration_us, outcome = "error", code = err.code.0, error = %err.message, "mcp request");
        }
    }
}

fn tenant_of(principal: &Result<Principal, ErrorData>) -> &str {
    principal.as_ref().map_or("-", |p| p.tenant.as_str())
}

impl ServerHandler for Handler {
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder()
            .enable_logging()
            .enable_completions()
            .enable_prompts()
            .enable_prompts_list_changed()
            .enable_resources()
            .enable_resources_list_changed()
            .enable_resources_subscribe()
            .enable_tools()
            .enable_tool_list_changed()
            .build();
        ServerConfig::new(capabilities)
            .with_server_info(
                Implementation::new("maestro", env!("CARGO_PKG_VERSION"))
                    .with_title("Maestro")
                    .with_description("Plugin tools, agent personas and resources under your organisation's policy"),
            )
            .with_instructions(
                "Tools are plugin tools run in a sandbox under your policy; a tool that ran and failed \
                 returns isError with the cause. Prompts are agent personas. Resources describe the plugins \
                 you can use (maestro://plugins/{name}) and your effective policy (maestro://policy/effective); \
                 plugins may serve resources of their own under their own URIs.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let span = request_span(&context, "tools/list");
        self.ready().instrument(span.clone()).await;
        let _entered = span.enter();
        let started = Instant::now();
        let principal = self.principal(&context.extensions);
        let result = principal.as_ref().map_err(Clone::clone).map(|principal| {
            ListToolsResult::with_all_items(
                self.mcp.tools_for(principal).into_iter().map(|(name, visible)| tool(name, &visible)).collect(),
            )
        });
        trace("tools/list", tenant_of(&principal), "-", started, &result);
        result
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        self.ready().await;
        let started = Instant::now();
        let tenant = self.principal(&context.extensions).map(|p| p.tenant).unwrap_or_else(|_| "-".to_owned());
        let name = request.name.to_string();
        let span = request_span(&context, "tools/call");
        let input_required = mrtr::offered(&context);
        let result = match self.call(request, context).instrument(span.clone()).await {
            Ok(Called::Asks(asks)) => {
                let _entered = span.enter();
                let duration_us = started.elapsed().as_micros();
                tracing::info!(method = "tools/call", tenant, tool = %name, duration_us, outcome = "input_required", "mcp request");
                return Ok(CallToolResponse::InputRequired(asks));
            }
            Ok(Called::Done(done)) => Ok(done),
            Err(err) => Err(err),
        };
        let _entered = span.enter();
        log_call(&tenant, &name, started, &result);
        Ok(match result? {
            // A run waits for an answer and the stateless client can be asked: ask it to
            // retry with the answer (the run id travels as the request state).
            done if input_required => match mrtr::input_required(&done) {
                Some(ask) => CallToolResponse::InputRequired(ask),
                None => CallToolResponse::from(done),
            },
            done => CallToolResponse::from(done),
        })
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        let span = request_span(&context, "prompts/list");
        self.ready().instrument(span.clone()).await;
        let _entered = span.enter();
        let started = Instant::now();
        let principal = self.principal(&context.extensions);
        let result = principal.as_ref().map_err(Clone::clone).map(|principal| {
            ListPromptsResult::with_all_items(
                self.mcp.personas_for(principal).into_iter().map(|(name, p)| prompt(name, &p)).collect(),
            )
        });
        trace("prompts/list", tenant_of(&principal), "-", started, &result);
        result
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        self.ready().await;
        let started = Instant::now();
        let principal = self.principal(&context.extensions);
        let name = request.name.clone();
        let span = request_span(&context, "prompts/get");
        let result = self.prompt(request, context).instrument(span.clone()).await;
        let _entered = span.enter();
        trace("prompts/get", tenant_of(&principal), &name, started, &result);
        result.map(GetPromptResponse::from)
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        self.ready().await;
        let principal = self.principal(&context.extensions)?;
        let values = self.complete_argument(&principal, &request);
        let total = u32::try_from(values.len()).unwrap_or(u32::MAX);
        let shown: Vec<String> = values.into_iter().take(CompletionInfo::MAX_VALUES).collect();
        let has_more = usize::try_from(total).unwrap_or(usize::MAX) > shown.len();
        let info = CompletionInfo::with_pagination(shown, Some(total), has_more)
            .map_err(|e| ErrorData::internal_error(e, None))?;
        Ok(CompleteResult::new(info))
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        *self.log_level.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(request.level);
        Ok(())
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        self.ready().await;
        let principal = self.principal(&context.extensions)?;
        let memories = self.mcp.agents.as_ref().and_then(|a| a.memories.as_deref());
        let cursor = request.and_then(|r| r.cursor);
        if let Some(cursor) = &cursor {
            // Later pages hold only memories, the one family listed page by page.
            let Some(memories) = memories.filter(|_| memories::owns_cursor(cursor)) else {
                return Err(ErrorData::invalid_params("unknown cursor", Some(serde_json::json!({ "cursor": cursor }))));
            };
            let (listed, next) = memories::list(memories, &self.mcp.tools, &principal, Some(cursor)).await?;
            return Ok(ListResourcesResult { next_cursor: next, ..ListResourcesResult::with_all_items(listed) });
        }
        let mut listed = resources::list(&self.mcp.tools, &principal);
        if let Some(agents) = &self.mcp.agents {
            listed.extend(agents::list(agents, &self.mcp.tools, &principal).await);
        }
        listed.extend(resources::plugins::list(&self.mcp.tools, &principal));
        let mut next_cursor = None;
        if let Some(memories) = memories {
            let (page, next) = memories::list(memories, &self.mcp.tools, &principal, None).await?;
            listed.extend(page);
            next_cursor = next;
        }
        Ok(ListResourcesResult { next_cursor, ..ListResourcesResult::with_all_items(listed) })
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        self.ready().await;
        let principal = self.principal(&context.extensions)?;
        let mut templates = resources::templates();
        if self.mcp.agents.is_some() {
            templates.extend(agents::templates());
        }
        if self.mcp.agents.as_ref().is_some_and(|a| a.memories.is_some()) {
            templates.extend(memories::templates());
        }
        templates.extend(resources::plugins::templates(&self.mcp.tools, &principal));
        Ok(ListResourceTemplatesResult::with_all_items(templates))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let span = request_span(&context, "resources/read");
        self.ready().instrument(span.clone()).await;
        if let Some(agents) = self.mcp.agents.as_ref().filter(|_| agents::owns(&request.uri)) {
            let started = Instant::now();
            let principal = self.principal(&context.extensions);
            let result = match &principal {
                Ok(principal) => {
                    agents::read(agents, &self.mcp.tools, principal, &request.uri).instrument(span.clone()).await
                }
                Err(err) => Err(err.clone()),
            };
            let _entered = span.enter();
            trace("resources/read", tenant_of(&principal), &truncate(&request.uri, 256), started, &result);
            return result.map(ReadResourceResponse::from);
        }
        if let Some(memories) =
            self.mcp.agents.as_ref().and_then(|a| a.memories.as_deref()).filter(|_| memories::owns(&request.uri))
        {
            let started = Instant::now();
            let principal = self.principal(&context.extensions);
            let result = match &principal {
                Ok(principal) => {
                    memories::read(memories, &self.mcp.tools, principal, &request.uri).instrument(span.clone()).await
                }
                Err(err) => Err(err.clone()),
            };
            let _entered = span.enter();
            trace("resources/read", tenant_of(&principal), &truncate(&request.uri, 256), started, &result);
            return result.map(ReadResourceResponse::from);
        }
        if resources::plugins::is_plugin_uri(&request.uri) {
            let started = Instant::now();
            let principal = self.principal(&context.extensions);
            let result = match &principal {
                Ok(principal) => {
                    resources::plugins::read(&self.mcp.tools, principal, &request.uri, &context.ct)
                        .instrument(span.clone())
                        .await
                }
                Err(err) => Err(err.clone()),
            };
            let _entered = span.enter();
            trace("resources/read", tenant_of(&principal), &truncate(&request.uri, 256), started, &result);
            return result.map(ReadResourceResponse::from);
        }
        let _entered = span.enter();
        let started = Instant::now();
        let principal = self.principal(&context.extensions);
        let result = principal
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|principal| resources::read(&self.mcp, principal, &request.uri));
        trace("resources/read", tenant_of(&principal), &truncate(&request.uri, 256), started, &result);
        result.map(ReadResourceResponse::from)
    }

    async fn subscribe(
        &self,
        request: rmcp::model::SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let principal = self.principal(&context.extensions)?;
        if resources::plugins::is_plugin_uri(&request.uri) {
            self.ready().await;
            return self.plugin_subscriptions.subscribe(
                &self.mcp.tools,
                &principal,
                &request.uri,
                context.peer.clone(),
                self.stop.clone(),
            );
        }
        let Some(agents) = &self.mcp.agents else {
            return Err(ErrorData::invalid_params("this server has no subscribable resources", None));
        };
        if let Some(memories) = agents.memories.as_deref().filter(|_| memories::owns(&request.uri)) {
            let (peer, stop) = (context.peer.clone(), self.stop.clone());
            return self
                .memory_subscriptions
                .subscribe(memories, &self.mcp.tools, &principal, &request.uri, peer, stop)
                .await;
        }
        self.subscriptions
            .subscribe(agents, &self.mcp.tools, &principal, &request.uri, context.peer.clone(), self.stop.clone())
            .await
    }

    async fn unsubscribe(
        &self,
        request: rmcp::model::UnsubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.principal(&context.extensions)?;
        self.subscriptions.unsubscribe(&request.uri);
        self.plugin_subscriptions.unsubscribe(&request.uri);
        self.memory_subscriptions.unsubscribe(&request.uri);
        Ok(())
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        // Sessions (and stdio) get list_changed notifications pushed on the session.
        let Ok(principal) = self.principal(&context.extensions) else { return };
        let (mcp, peer, stop) = (self.mcp.clone(), context.peer.clone(), self.stop.clone());
        tokio::spawn(watch::notify_changes(mcp, principal, stop, watch::PeerSink(peer)));
    }

    fn accepted_subscription_filter(&self, requested: &SubscriptionFilter) -> Option<SubscriptionFilter> {
        let builder =
            SubscriptionFilter::builder().tools_list_changed().prompts_list_changed().resources_list_changed();
        let mut documents = if self.mcp.agents.is_some() { agents::accepted(requested) } else { Vec::new() };
        if self.mcp.agents.as_ref().is_some_and(|a| a.memories.is_some()) {
            documents.extend(memories::accepted(requested));
        }
        let builder = if documents.is_empty() { builder } else { builder.resource_subscriptions(documents) };
        Some(builder.build())
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        // Stateless clients (2026-07-28) hold a subscriptions/listen request open.
        let principal = self.principal(&context.request_context().extensions)?;
        let stop = context.request_context().ct.clone();
        let sink = watch::SubscriptionSinkAdapter(context.sink().clone());
        let span = request_span(context.request_context(), "subscriptions/listen");
        let documents = context.accepted().resource_subscriptions.clone().unwrap_or_default();
        let lists = watch::notify_changes(self.mcp.clone(), principal.clone(), stop.clone(), sink);
        match &self.mcp.agents {
            Some(agents) if !documents.is_empty() => {
                let (uris, sink, until) = (documents.clone(), context.sink().clone(), stop.clone());
                let remembered = async {
                    if let Some(memories) = &agents.memories {
                        memories::listen(memories, &self.mcp.tools, &principal, uris, sink, until).await;
                    }
                };
                let updates =
                    agents::listen(agents, &self.mcp.tools, &principal, documents, context.sink().clone(), stop);
                futures_join(lists, futures_join(updates, remembered)).instrument(span).await;
            }
            _ => lists.instrument(span).await,
        }
        Ok(())
    }
}

/// Runs both futures to their ends.
async fn futures_join(a: impl std::future::Future<Output = ()>, b: impl std::future::Future<Output = ()>) {
    tokio::join!(a, b);
}

type Sessions = rmcp::transport::streamable_http_server::session::local::LocalSessionManager;

/// The tower service behind `/mcp`.
pub type HttpService = rmcp::transport::StreamableHttpService<Handler, Sessions>;

/// The Streamable HTTP transport for `/mcp`: sessions for 2025-11-25 clients (idle
/// ones close after the configured timeout), stateless service for 2026-07-28 ones.
/// Host/Origin checks and authentication are the HTTP module's job; it must put the
/// caller's [`Principal`] into each request's extensions, and it decides who may use a
/// session (see [`HttpTransport::session_is_live`]).
#[derive(Clone)]
pub struct HttpTransport {
    /// The service to mount.
    pub service: HttpService,
    sessions: Arc<Sessions>,
    /// Every event sent on a session's streams, for clients resuming with `Last-Event-ID`.
    events: EventBuffer,
    /// The use-cases, for the calls answered without rmcp's machinery.
    mcp: Arc<Mcp>,
}

impl std::fmt::Debug for HttpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTransport").finish_non_exhaustive()
    }
}

impl HttpTransport {
    /// The transport over `mcp`; `shutdown` ends every session and open stream.
    pub fn new(mcp: Arc<Mcp>, settings: &McpSettings, body_limit_bytes: usize, shutdown: CancellationToken) -> Self {
        use rmcp::transport::StreamableHttpServerConfig;
        let events = EventBuffer::default();
        let mut sessions = Sessions::default().with_event_store(Arc::new(events.clone()));
        sessions.session_config.keep_alive = Some(settings.session_idle_timeout);
        let sessions = Arc::new(sessions);
        let config = StreamableHttpServerConfig::default()
            .disable_allowed_hosts()
            .disable_allowed_origins()
            .with_json_response(true)
            .with_sse_keep_alive(Some(Duration::from_secs(15)))
            .with_max_request_body_bytes(body_limit_bytes)
            .with_cancellation_token(shutdown);
        let handlers = mcp.clone();
        let service = rmcp::transport::StreamableHttpService::new(
            move || Ok(Handler::per_request(handlers.clone())),
            sessions.clone(),
            config,
        );
        Self { service, sessions, events, mcp }
    }

    /// Answers a POST without a session when it is a plain stateless (2026-07-28)
    /// `tools/call`: one that needs nothing from the transport but its answer (see
    /// [`PlainAnswer`]); `None` for every other request, which goes to [`Self::service`].
    /// `principal` is the authenticated caller, `body` the whole request body.
    pub async fn plain_call(
        &self,
        principal: &Principal,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Option<PlainAnswer> {
        plain::plain_call(&self.mcp, principal, headers, body).await
    }

    /// Whether a stream can be resumed after `last_event_id` without a gap.
    pub fn check_resume(&self, last_event_id: &str) -> Result<(), ResumeError> {
        self.events.check(last_event_id)
    }

    /// Whether a session with this id is open.
    pub async fn session_is_live(&self, id: &str) -> bool {
        self.sessions.sessions.read().await.contains_key(id)
    }
}

/// Re-checks, before each request of a `maestro mcp` process, that the key it acts as
/// may still be used: a key revoked or expired while the process runs is refused from
/// the next request on.
#[async_trait::async_trait]
pub trait KeyCheck: Send + Sync + std::fmt::Debug + 'static {
    /// `Err` with the reason, for the client, once the key may no longer be used.
    async fn check(&self) -> Result<(), String>;
}

/// The stdio server: each request runs in its own span (a fresh request id, the
/// tenant and key) after the key check.
#[derive(Debug)]
struct Stdio {
    handler: Handler,
    key: Option<Arc<dyn KeyCheck>>,
}

impl rmcp::Service<RoleServer> for Stdio {
    async fn handle_request(
        &self,
        request: rmcp::model::ClientRequest,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ServerResult, ErrorData> {
        let principal = self.handler.fixed.as_ref();
        let span = tracing::info_span!(
            "request",
            request_id = %RequestId::generate(),
            route = "stdio",
            method = %truncate(request.method(), 64),
            tenant = %principal.map_or("-", |p| p.tenant.as_str()),
            key_id = %principal.map_or("-", |p| p.key_id.as_str()),
        );
        async {
            if let Some(key) = &self.key
                && let Err(reason) = key.check().await
            {
                tracing::warn!(reason = %reason, "mcp request refused: the key can no longer be used");
                // Nothing more reaches this caller, list changes included.
                self.handler.stop.cancel();
                return Err(ErrorData::invalid_request(reason, None));
            }
            rmcp::Service::handle_request(&self.handler, request, context).await
        }
        .instrument(span)
        .await
    }

    async fn handle_notification(
        &self,
        notification: rmcp::model::ClientNotification,
        context: NotificationContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        rmcp::Service::handle_notification(&self.handler, notification, context).await
    }

    fn get_info(&self) -> ServerConfig {
        rmcp::Service::get_info(&self.handler)
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        rmcp::Service::supported_protocol_versions(&self.handler)
    }
}

/// Why serving MCP over stdio ended in failure.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    /// The client never completed the initialisation handshake.
    #[error("the MCP client did not initialise")]
    Initialize(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The session's task failed.
    #[error("the MCP session failed")]
    Session(#[source] tokio::task::JoinError),
    /// The threads reading stdin and writing stdout, or the session's, could not start.
    #[error("cannot start the stdio threads")]
    Threads(#[source] std::io::Error),
    /// The session's thread panicked.
    #[error("the MCP session's thread failed")]
    Panicked,
}

/// Serves MCP over stdin/stdout for one caller until the client closes stdin; `key`,
/// when the caller is a key, is checked before every request.
///
/// The session runs on a runtime of its own, one thread: rmcp moves every request
/// through several tasks (its serve loop, the handler's task, a task sending the
/// answer), and on a multi-threaded runtime each spawn could wake another worker, a
/// thread hand-off each. On one thread a request crosses threads only where it must:
/// from the stdin reader and to the stdout writer. Calls that run long still leave
/// the thread (the sandbox moves a guest past its first slice to its own runtime), and
/// requests still run concurrently, interleaved on the thread.
pub async fn serve_stdio(
    mcp: Arc<Mcp>,
    principal: Principal,
    key: Option<Arc<dyn KeyCheck>>,
) -> Result<(), StdioError> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("mcp-session".to_owned())
        .spawn(move || {
            let served = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime.block_on(serve_stdio_session(mcp, principal, key)),
                Err(err) => Err(StdioError::Threads(err)),
            };
            let _ = done_tx.send(served);
        })
        .map_err(StdioError::Threads)?;
    // The session thread always answers, unless it panicked.
    done_rx.await.unwrap_or_else(|_| Err(StdioError::Panicked))
}

async fn serve_stdio_session(
    mcp: Arc<Mcp>,
    principal: Principal,
    key: Option<Arc<dyn KeyCheck>>,
) -> Result<(), StdioError> {
    use rmcp::ServiceExt as _;
    let stdio = Stdio { handler: Handler::for_principal(mcp, principal), key };
    let (reader, writer, written) = self::stdio::threads().map_err(StdioError::Threads)?;
    let service = stdio.serve((reader, writer)).await.map_err(|e| StdioError::Initialize(Box::new(e)))?;
    service.waiting().await.map_err(StdioError::Session)?;
    // The session is over and its writing half dropped: wait for the last answers to
    // reach stdout.
    let _ = tokio::task::spawn_blocking(move || written.join()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{Event, EventQueue, LoggingLevel, MAX_QUEUED_EVENTS, McpNames, Progress, mcp_names, schema_object};

    #[test]
    fn a_flood_of_progress_and_logs_stays_bounded_and_keeps_the_latest_progress() {
        let mut queue = EventQueue::default();
        for i in 1..=1_000_000u64 {
            queue.push_progress(Progress { done: i, total: None, message: None });
            queue.push_log(LoggingLevel::Info, "step");
            assert!(queue.events.len() <= MAX_QUEUED_EVENTS);
        }
        assert!(queue.dropped_logs >= 1_000_000 - MAX_QUEUED_EVENTS as u64, "{}", queue.dropped_logs);
        let mut last = None;
        let mut sent = 0;
        while let Some(event) = queue.pop() {
            sent += 1;
            if let Event::Progress(p) = event {
                last = Some(p.done);
            }
        }
        assert!(sent <= MAX_QUEUED_EVENTS + 1, "{sent}");
        assert_eq!(last, Some(1_000_000), "the latest progress report is sent");
    }

    #[test]
    fn progress_is_sent_step_by_step_while_there_is_room_then_coalesced() {
        let step = |done| Event::Progress(Progress { done, total: Some(10_000), message: None });
        let mut queue = EventQueue::default();
        for i in 1..=3u64 {
            queue.push_progress(Progress { done: i, total: Some(10_000), message: None });
        }
        assert_eq!(
            [queue.pop(), queue.pop(), queue.pop(), queue.pop()],
            [Some(step(1)), Some(step(2)), Some(step(3)), None]
        );

        for i in 1..=10_000u64 {
            queue.push_progress(Progress { done: i, total: Some(10_000), message: None });
        }
        let sent: Vec<Event> = std::iter::from_fn(|| queue.pop()).collect();
        assert_eq!(sent.len(), MAX_QUEUED_EVENTS);
        assert_eq!(sent.last(), Some(&step(10_000)), "the latest report replaces the last one queued");
    }

    #[test]
    fn short_names_are_bare_only_when_unique() {
        let qualified = ["calc.evaluate", "text.count", "web.count", "web.fetch"];
        assert_eq!(
            mcp_names(McpNames::Short, qualified.iter().copied()),
            ["evaluate", "text.count", "web.count", "fetch"]
        );
        assert_eq!(mcp_names(McpNames::Qualified, qualified.iter().copied()), qualified);
    }

    #[test]
    fn schemas_keep_only_standard_formats() {
        let schema = json!({ "type": "object", "properties": {
            "port": { "type": "integer", "format": "uint16" },
            "url": { "type": "string", "format": "uri" },
            "format": { "type": "string" },
            "items": { "type": "array", "items": { "type": "integer", "format": "int64" } } } });
        let cleaned = serde_json::Value::Object(schema_object(&schema));
        assert_eq!(cleaned["properties"]["port"], json!({ "type": "integer" }));
        assert_eq!(cleaned["properties"]["url"]["format"], "uri");
        assert_eq!(cleaned["properties"]["format"], json!({ "type": "string" }));
        assert_eq!(cleaned["properties"]["items"]["items"], json!({ "type": "integer" }));
        assert_eq!(serde_json::Value::Object(schema_object(&json!(true))), json!({ "type": "object" }));
    }
}
