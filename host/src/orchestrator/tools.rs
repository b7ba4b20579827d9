//! The built-in run tools, for assistants (over MCP) driving the orchestrator, run
//! through the same pipeline as plugin tools (policy, rate, credits):
//!
//! - `runs.start`: posts a message to a session (or to a new one of the given team and
//!   strategy), follows the run — each event summarised as a progress report — and
//!   returns the final answer (the last persona message), with the run, the session
//!   and the totals. Cancelling the call cancels the run. When the run asks the user,
//!   the caller's client is asked (MCP elicitation) when it can be, the answer posted
//!   and the run followed on; otherwise the question is the result, with the run id to
//!   answer with `runs.answer`.
//! - `runs.answer`: answers a waiting run and follows it like `runs.start`.
//! - `runs.get`: a run's state, totals and open question.
//!
//! They act for the caller's key (members and admins start and answer runs) and are
//! refused inside a run: a persona does not start runs.

use std::sync::{Arc, OnceLock, Weak};

use async_trait::async_trait;
use maestro_core::call::{Answer as CallAnswer, Observe, Progress, Question};
use maestro_core::plugin::{Annotations, Content, ToolOutput, ToolSpec};
use maestro_core::run::{AnswerAction, Asker, EventBody, Run, RunId, RunState, RunTotals, SessionId, Strategy};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::{AnswerInput, NewSession, Orchestrator, OrchestratorError, PendingQuestion};
use crate::tools::{HostCall, HostResult, HostTool, Principal};

/// Where the run tools find the orchestrator, set once it exists (it holds the tool
/// pipeline these tools are part of, so it is built after them).
#[derive(Debug, Clone, Default)]
pub struct OrchestratorSlot(Arc<OnceLock<Weak<Orchestrator>>>);

impl OrchestratorSlot {
    /// Points the tools at `orchestrator` (the first call wins).
    pub fn bind(&self, orchestrator: &Arc<Orchestrator>) {
        let _ = self.0.set(Arc::downgrade(orchestrator));
    }

    pub(crate) fn get(&self) -> Option<Arc<Orchestrator>> {
        self.0.get().and_then(Weak::upgrade)
    }
}

/// The three run tools, for [`crate::tools::Tools::with_host_tools`], and the slot to
/// bind to the orchestrator once it is built.
pub fn tools() -> (OrchestratorSlot, Vec<Arc<dyn HostTool>>) {
    let slot = OrchestratorSlot::default();
    let tools = [Op::Start, Op::Answer, Op::Get]
        .into_iter()
        .map(|op| {
            let spec = spec(op);
            Arc::new(RunTool { op, name: format!("runs.{}", spec.name), spec, slot: slot.clone() }) as Arc<dyn HostTool>
        })
        .collect();
    (slot, tools)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Start,
    Answer,
    Get,
}

#[derive(Debug)]
struct RunTool {
    op: Op,
    name: String,
    spec: ToolSpec,
    slot: OrchestratorSlot,
}

#[async_trait]
impl HostTool for RunTool {
    fn name(&self) -> &str {
        &self.name
    }

    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    async fn call(&self, call: HostCall) -> HostResult {
        if call.origin.is_some() {
            return HostResult::error("runs cannot be started, answered or read from inside a run");
        }
        let Some(orchestrator) = self.slot.get() else {
            return HostResult::unavailable("the run tools are not bound to an orchestrator");
        };
        match self.op {
            Op::Start => start(&orchestrator, call).await,
            Op::Answer => answer(&orchestrator, call).await,
            Op::Get => get(&orchestrator, call).await,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartArgs {
    message: String,
    session: Option<String>,
    #[serde(default)]
    personas: Vec<String>,
    strategy: Option<Strategy>,
    #[serde(default)]
    title: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswerArgs {
    run: String,
    #[serde(default)]
    answer: Option<String>,
    #[serde(default)]
    form: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GetArgs {
    run: String,
}

async fn start(orchestrator: &Orchestrator, mut call: HostCall) -> HostResult {
    let args: StartArgs = match parse(std::mem::take(&mut call.arguments)) {
        Ok(args) => args,
        Err(invalid) => return invalid,
    };
    let principal = &call.principal;
    let session = match (args.session, args.personas.is_empty()) {
        (Some(raw), true) => match SessionId::parse(&raw) {
            Ok(id) => id,
            Err(_) => return HostResult::error("session not found"),
        },
        (Some(_), false) => return HostResult::invalid("give `session`, or `personas` for a new session, not both"),
        (None, true) => return HostResult::invalid("give `session`, or `personas` for a new session"),
        (None, false) => {
            let new = NewSession {
                title: args.title,
                personas: args.personas,
                strategy: args.strategy.unwrap_or(Strategy::Router),
                limits: None,
            };
            match orchestrator.create_session(principal, new).await {
                Ok(session) => session.id,
                Err(err) => return refused(err),
            }
        }
    };
    let posted = match orchestrator.post_message(principal, &session, args.message).await {
        Ok(posted) => posted,
        Err(err) => return refused(err),
    };
    follow(orchestrator, principal, &posted.run, 0, &call.observe).await
}

async fn answer(orchestrator: &Orchestrator, mut call: HostCall) -> HostResult {
    let args: AnswerArgs = match parse(std::mem::take(&mut call.arguments)) {
        Ok(args) => args,
        Err(invalid) => return invalid,
    };
    let Ok(id) = RunId::parse(&args.run) else { return HostResult::error("run not found") };
    let input = match (args.answer, args.form) {
        (Some(text), None) => AnswerInput::Text(text),
        (None, Some(form)) => AnswerInput::Form { action: AnswerAction::Accept, form: Some(form) },
        _ => return HostResult::invalid("give exactly one of `answer` and `form`"),
    };
    match orchestrator.answer(&call.principal, &id, input).await {
        Ok(run) => follow(orchestrator, &call.principal, &run, run.last_seq, &call.observe).await,
        Err(err) => refused(err),
    }
}

async fn get(orchestrator: &Orchestrator, mut call: HostCall) -> HostResult {
    let args: GetArgs = match parse(std::mem::take(&mut call.arguments)) {
        Ok(args) => args,
        Err(invalid) => return invalid,
    };
    let Ok(id) = RunId::parse(&args.run) else { return HostResult::error("run not found") };
    let run = match orchestrator.run(&call.principal, &id).await {
        Ok(run) => run,
        Err(err) => return refused(err),
    };
    let question = match orchestrator.pending_question(&run).await {
        Ok(question) => question,
        Err(err) => return refused(err),
    };
    let mut value = json!({
        "run": run.id, "session": run.session, "state": run.state.as_str(), "totals": totals(&run.totals),
    });
    let mut text = format!("run {} of session {} is {}", run.id, run.session, run.state.as_str());
    if let Some(error) = &run.error {
        value["error"] = json!({ "code": error.code, "message": error.message });
        text.push_str(&format!(" ({}: {})", error.code, error.message));
    }
    if let Some(question) = &question {
        value["question"] = question_json(question);
        text.push_str(&format!("; it asks: {}", question_text(question)));
    }
    output(text, value)
}

/// How long a run may stay queued without an event before the caller is told who runs
/// it (`maestro mcp` executes none itself).
const QUEUED_NOTE_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// Follows a run from event `after` until it ends (its final answer) or waits for an
/// answer nobody here can give (the question), reporting each event as progress;
/// cancelling the call cancels the run.
async fn follow(
    orchestrator: &Orchestrator,
    principal: &Principal,
    run: &Run,
    after: i64,
    observe: &Observe,
) -> HostResult {
    let mut feed = orchestrator.hub().run_feed(&run.id, after);
    let mut reported = 0_u64;
    let mut last: Option<(String, String)> = None;
    let report = |reported: &mut u64, message: String| {
        if let Some(progress) = &observe.progress {
            *reported += 1;
            progress(Progress { done: *reported, total: None, message: Some(message) });
        }
    };
    report(&mut reported, format!("run {} of session {} queued", run.id, run.session));
    // Whether the run has shown any event, and whether a run nobody picks up was noted.
    let (mut moved, mut noted) = (after > 0, false);
    loop {
        let next = tokio::select! {
            next = feed.next() => next,
            () = tokio::time::sleep(QUEUED_NOTE_AFTER), if !moved && !noted => {
                noted = true;
                if orchestrator.run(principal, &run.id).await.is_ok_and(|r| r.state == RunState::Queued) {
                    report(&mut reported, "still queued: runs are executed by the job workers of `maestro serve` on this store".to_owned());
                }
                continue;
            }
            () = observe.cancel.cancelled() => {
                if let Err(err) = orchestrator.cancel(principal, &run.id).await {
                    tracing::warn!(run = %run.id, error = %err, "a run whose MCP call was cancelled could not be cancelled");
                }
                return HostResult::error(format!("the call was cancelled, and with it run {}", run.id));
            }
        };
        moved = true;
        let event = match next {
            Ok(Some(event)) => event,
            Ok(None) => break,
            Err(err) => return HostResult::unavailable(format!("reading run {}: {err}", run.id)),
        };
        if let EventBody::MessageCompleted { persona, text, message: Some(_), .. } = &event.body {
            last = Some((persona.clone(), text.clone()));
        }
        if let Some(summary) = summary(&event.body) {
            report(&mut reported, summary);
        }
        match &event.body {
            EventBody::ClarificationRequested { asker, question, choices, free_text, .. } => {
                let answered = match asker {
                    // A plugin tool's question: its own form, answered as elicitation answers.
                    Asker::Tool { schema, .. } => {
                        let asked = Question { message: question.clone(), schema: schema.clone() };
                        ask_form(observe, asked).await
                    }
                    Asker::Persona { .. } | Asker::Router { .. } => {
                        let asked = Question::for_answer(question.clone(), choices, *free_text);
                        ask(observe, asked).await.map(AnswerInput::Text)
                    }
                };
                match answered {
                    Some(answer) => match orchestrator.answer(principal, &run.id, answer).await {
                        Ok(_) => continue,
                        Err(err) => {
                            tracing::debug!(run = %run.id, error = %err, "the elicited answer was not taken");
                        }
                    },
                    None if observe.cancel.is_cancelled() => continue,
                    None => {}
                }
                let current = match orchestrator.run(principal, &run.id).await {
                    Ok(current) => current,
                    Err(err) => return refused(err),
                };
                match orchestrator.pending_question(&current).await {
                    Ok(Some(pending)) => return waiting(&current, &pending),
                    // Answered meanwhile (by another client): follow on.
                    Ok(None) => continue,
                    Err(err) => return refused(err),
                }
            }
            EventBody::RunCompleted { totals: t } => return finished(run, last, t),
            EventBody::RunFailed { error, totals: t } => {
                return HostResult::error(format!(
                    "run {} failed: {}: {} (credits used: {})",
                    run.id, error.code, error.message, t.credits
                ));
            }
            EventBody::RunCancelled { .. } => return HostResult::error(format!("run {} was cancelled", run.id)),
            EventBody::RunExpired { .. } => {
                return HostResult::error(format!("run {} expired: its question was not answered in time", run.id));
            }
            _ => {}
        }
    }
    // The feed ended without a terminal event this call saw (it ended before `after`).
    match orchestrator.run(principal, &run.id).await {
        Ok(current) => HostResult::error(format!("run {} is {}", current.id, current.state.as_str())),
        Err(err) => refused(err),
    }
}

/// Asks the caller's client, when it can be asked; `None`: not asked, declined, failed
/// or cancelled.
async fn ask(observe: &Observe, question: Question) -> Option<String> {
    let asker = observe.client_user.as_ref()?;
    tokio::select! {
        answer = asker.ask(question) => match answer {
            Ok(answer) => answer.text().map(str::to_owned),
            Err(err) => {
                tracing::debug!(error = %err, "elicitation gave no answer; the question is returned");
                None
            }
        },
        () = observe.cancel.cancelled() => None,
    }
}

/// Asks the caller's client a plugin tool's own question, when it can be asked; `None`:
/// not asked, failed or cancelled by this call.
async fn ask_form(observe: &Observe, question: Question) -> Option<AnswerInput> {
    let asker = observe.client_user.as_ref()?;
    tokio::select! {
        answer = asker.ask(question) => match answer {
            Ok(CallAnswer::Accepted(form)) => Some(AnswerInput::Form { action: AnswerAction::Accept, form: Some(form) }),
            Ok(CallAnswer::Declined) => Some(AnswerInput::Form { action: AnswerAction::Decline, form: None }),
            Ok(CallAnswer::Cancelled) => Some(AnswerInput::Form { action: AnswerAction::Cancel, form: None }),
            Err(err) => {
                tracing::debug!(error = %err, "elicitation gave no answer; the question is returned");
                None
            }
        },
        () = observe.cancel.cancelled() => None,
    }
}

/// One event, as a line of progress (`None`: not worth a report, e.g. text deltas).
fn summary(body: &EventBody) -> Option<String> {
    Some(match body {
        EventBody::RunStarted { personas, strategy, .. } => {
            format!("run started: {} ({})", personas.join(", "), strategy.as_str())
        }
        EventBody::TurnDecided { turn, personas, satisfied: true, .. } if personas.is_empty() => {
            format!("turn {turn}: the request is answered")
        }
        EventBody::TurnDecided { turn, personas, .. } => format!("turn {turn}: {}", personas.join(", ")),
        EventBody::StepStarted { step, persona, model, .. } => format!("step {step}: {persona} ({model})"),
        EventBody::ToolCalled { step, tool, .. } => format!("step {step}: calls {tool}"),
        EventBody::ToolResult(result) => {
            format!("step {}: {} {}", result.step, result.tool, if result.ok { "answered" } else { "failed" })
        }
        EventBody::MessageCompleted { step, persona, message: Some(_), .. } => {
            format!("step {step}: {persona} answered")
        }
        EventBody::StepCompleted { step, persona, .. } => format!("step {step}: {persona} done"),
        EventBody::DocumentUpdated { document, version, title, persona, .. } => {
            format!("document \"{title}\" ({document}) version {version} by {persona}")
        }
        EventBody::ClarificationRequested { question, .. } => format!("asks: {question}"),
        EventBody::ClarificationAnswered { .. } => "the question was answered".to_owned(),
        EventBody::RunInterrupted { reason, .. } => format!("interrupted ({reason}); resuming"),
        EventBody::RunCompleted { .. } => "run completed".to_owned(),
        EventBody::RunFailed { error, .. } => format!("run failed: {}", error.code),
        EventBody::RunCancelled { .. } => "run cancelled".to_owned(),
        EventBody::RunExpired { .. } => "run expired".to_owned(),
        EventBody::MemoryRecalled { step, memories, snippets, .. } => {
            format!("step {step}: recalled {} memories and {} earlier snippets", memories.len(), snippets.len())
        }
        EventBody::MessageDelta { .. } | EventBody::MessageCompleted { .. } => return None,
    })
}

fn finished(run: &Run, last: Option<(String, String)>, t: &RunTotals) -> HostResult {
    let (persona, text) = last.unwrap_or_default();
    let value = json!({
        "run": run.id, "session": run.session, "state": RunState::Completed.as_str(),
        "answer": { "persona": persona, "text": text }, "totals": totals(t),
    });
    let shown = if text.is_empty() { format!("run {} completed without an answer", run.id) } else { text };
    output(shown, value)
}

fn waiting(run: &Run, question: &PendingQuestion) -> HostResult {
    let value = json!({
        "run": run.id, "session": run.session, "state": RunState::WaitingInput.as_str(),
        "question": question_json(question), "totals": totals(&run.totals),
    });
    let text = format!(
        "run {} waits for an answer: {}\nAnswer with runs.answer {{\"run\": \"{}\", \"answer\": \"…\"}} before {}.",
        run.id,
        question_text(question),
        run.id,
        question.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    );
    output(text, value)
}

fn question_json(question: &PendingQuestion) -> Value {
    json!({
        "question": question.question, "choices": question.choices, "free_text": question.free_text,
        "expires_at": question.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })
}

fn question_text(question: &PendingQuestion) -> String {
    if question.choices.is_empty() {
        question.question.clone()
    } else {
        let or_own = if question.free_text { ", or your own words" } else { "" };
        format!("{} (one of: {}{or_own})", question.question, question.choices.join(" | "))
    }
}

fn totals(t: &RunTotals) -> Value {
    json!({
        "steps": t.steps, "model_calls": t.model_calls, "tool_calls": t.tool_calls,
        "input_tokens": t.usage.input_tokens, "output_tokens": t.usage.output_tokens, "credits": t.credits,
    })
}

fn refused(err: OrchestratorError) -> HostResult {
    match err {
        OrchestratorError::Store(err) => HostResult::unavailable(err.to_string()),
        OrchestratorError::Invalid(err) | OrchestratorError::InvalidAnswer(err) => HostResult::invalid(err.to_string()),
        other => HostResult::error(other.to_string()),
    }
}

fn parse<T: DeserializeOwned>(arguments: Value) -> Result<T, HostResult> {
    serde_json::from_value(arguments).map_err(|e| HostResult::invalid(e.to_string()))
}

fn output(text: String, structured: Value) -> HostResult {
    HostResult::output(ToolOutput { content: vec![Content::Text { text }], structured: Some(structured) })
}

fn spec(op: Op) -> ToolSpec {
    let (name, title, description, schema, read_only) = match op {
        Op::Start => (
            "start",
            "Start a run",
            "Posts `message` to a session of agent personas (`session`, or a new session of `personas` with `strategy`) and runs it: progress is reported as the run goes, the result is the final answer with the run and session ids and the totals. If the run asks a question you cannot be asked directly, the result is the question: answer it with runs.answer. Cancelling this call cancels the run.",
            json!({"type": "object", "properties": {
                "message": {"type": "string", "description": "the request for the personas"},
                "session": {"type": "string", "description": "an existing session (ses_…)"},
                "personas": {"type": "array", "items": {"type": "string"}, "description": "a new session's team (plugin.persona), when no session is given"},
                "strategy": {"type": "string", "enum": ["router", "round_robin", "sequence", "parallel"], "description": "a new session's strategy (default router)"},
                "title": {"type": "string", "description": "a new session's title"}
            }, "required": ["message"], "additionalProperties": false}),
            false,
        ),
        Op::Answer => (
            "answer",
            "Answer a waiting run",
            "Answers the question of a run that waits for one (one of its choices, or your own words when allowed), then follows the run like runs.start.",
            json!({"type": "object", "properties": {
                "run": {"type": "string", "description": "the run (run_…)"},
                "answer": {"type": "string", "description": "the answer"},
                "form": {"type": "object", "description": "a plugin tool's question of several fields: the answer as an object fitting its schema (instead of `answer`)"}
            }, "required": ["run"], "additionalProperties": false}),
            false,
        ),
        Op::Get => (
            "get",
            "Read a run",
            "A run's state and totals, and its open question when it waits for an answer.",
            json!({"type": "object", "properties": {
                "run": {"type": "string", "description": "the run (run_…)"}
            }, "required": ["run"], "additionalProperties": false}),
            true,
        ),
    };
    ToolSpec {
        name: name.to_owned(),
        title: Some(title.to_owned()),
        description: description.to_owned(),
        input_schema: schema,
        output_schema: None,
        annotations: Annotations { read_only, destructive: false, idempotent: read_only, open_world: false },
    }
}
