//! Turns, steps and model calls.
//!
//! # A step
//! The persona is rendered by its plugin through the tool pipeline (its required prompt
//! arguments filled from the triggering message, see `context.rs`); its model is the
//! first configured model of its tier ([`model_for_tier`]); its context is the session up
//! to the triggering message plus this run's answers of earlier turns, trimmed
//! oldest-first to fit `context_window - max_tokens` (the count is in
//! `step.started.trimmed_messages`); the tools offered are exactly those its globs select
//! AND the run's principal may call under policy. The model is called until it answers
//! in text. Each tool call it makes is recorded (`tool.called`) before it runs through
//! [`crate::tools::Tools::call`] (policy, rate, credits, sandbox) and its result
//! (`tool.result`) after; a tool that was not offered is answered `not_offered` and never
//! runs. Once the step has made `max_tool_calls_per_step` calls, further calls are
//! answered `tool_limit` without running and the model is called once more with no tools,
//! so that the step ends with a text answer.
//!
//! # Recall
//! Before the first model call, the persona recalls what is relevant to the triggering
//! message (`crate::recall`): one delimited block appended to its system prompt (never
//! trimmed), recorded as `memory.recalled` in the unit of work of `step.started`. A
//! resumed step recalls again and records nothing more. Recall is skipped (logged, no
//! event) when the run's caller may not use `memory.search`.
//!
//! # A model call
//! Before it, a hold for the worst case (the prompt's token bound plus `max_tokens` at
//! the dearest price of the model's chain; `max_tokens` lowered to fit the run's budget)
//! keyed `run:<id>:s<step>:c<call>:a<attempt>:hold` (memo naming the run). Text deltas
//! are coalesced into `message.delta` events (every `delta_interval` or `delta_bytes`,
//! and always before the answer). A provider that reports no usage is charged the safe
//! estimate (the prompt's token bound, a token per byte of the answer), recorded as the
//! call's usage. The answer is recorded as `message.completed` in ONE
//! unit of work with its settlement (`…:settle`) and the run's totals; a step's final
//! answer also writes its session message and `step.completed` in that unit. A failed
//! call voids its hold (`…:void`).
//!
//! # Resuming
//! A step found started in the record is rebuilt: recorded answers and tool results are
//! replayed into the conversation, never asked again; a `tool.called` without its result
//! is answered to the model as an error (`interrupted`: its result is unknown) instead of
//! running twice; the interrupted model call restarts under a new attempt number, after
//! voiding the hold the dead worker left open (found by its deterministic key). Deltas
//! of the cut call stay in the log, followed by `run.interrupted`: a client discards the
//! unfinished call's text when it sees it.
//!
//! # A plugin tool that asks the user
//! Its call ends with `Failure::NeedsInput` (charged nothing, no result recorded): the
//! run waits on its first open question like on `ask_user` (`Asker::Tool`, with the
//! answer's schema). Once answered, the resumed step finds the call announced, asked and
//! answered as often as it was run (`StepRecord::rerun`), announces it again and runs it
//! with every answer so far (`Observe::answers`); a call announced after its last
//! answer and cut is answered `interrupted`, never run twice. In a `parallel` turn the
//! question is the call's failed result instead.

use std::future::Future;
use std::pin::Pin;
use std::sync::PoisonError;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Instant;

use maestro_core::call::{AskedQuestion, Failure, Observe, SuppliedAnswer};
use maestro_core::llm::{
    ChatEvent, ChatMessage, ChatRequest, ChatResponse, ChatRole, LlmError, ModelInfo, ToolCallRequest, ToolDefinition,
    model_for_tier, prompt_token_bound,
};
use maestro_core::plugin::{Content, PersonaSpec, Prompt};
use maestro_core::run::{
    ASK_USER_TOOL, Asker, Author, EventBody, Message, MessageId, Question, RunState, RunTotals, Strategy,
    ToolResultBody, question_from_schema,
};
use tokio::sync::watch;

use super::context::{self, Fitted};
use super::pricing::{self, Unaffordable};
use super::record::{Answer, Decided, ROUTER_STEP, StepRecord};
use super::runner::{Commit, Inner, RunCtx, Settle, Stop, deadline_exceeded};
use super::strategy;
use crate::random::random_bytes;
use crate::tools::Origin;

/// The persona name the router's calls are recorded under.
pub(super) const ROUTER_PERSONA: &str = "maestro";

/// A model's answer and what to settle for it.
#[derive(Debug)]
struct Answered {
    response: ChatResponse,
    settle: Option<Settle>,
    credits: i64,
    /// The text that arrived since the last delta was written: recorded in the unit of
    /// work of the answer, right before it (one durable write less per call).
    last_delta: Option<EventBody>,
}

/// Who answers in a step, and where.
#[derive(Debug, Clone, Copy)]
struct Plan<'a> {
    turn: u32,
    step: u32,
    persona: &'a str,
    /// The router's instruction.
    instruction: Option<&'a str>,
}

/// Parallel steps commit their final answers in team order.
#[derive(Debug)]
struct Order {
    done: watch::Sender<Vec<bool>>,
    index: usize,
}

impl Order {
    async fn wait_turn(&self) {
        let mut rx = self.done.subscribe();
        let index = self.index;
        // The sender lives as long as the turn, so this only ends when earlier steps did.
        let _ = rx.wait_for(|done| done[..index].iter().all(|d| *d)).await;
    }

    fn finished(&self) {
        self.done.send_modify(|done| done[self.index] = true);
    }
}

impl Inner {
    /// Runs the run's strategy to its end (or the first stop).
    pub(super) async fn drive(&self, ctx: &RunCtx) -> Result<(), Stop> {
        let team: Vec<String> = ctx.team().to_vec();
        let max_steps = ctx.limits.max_steps;
        let strategy = ctx.run.lock().await.strategy;
        match strategy {
            Strategy::Router => {
                for turn in 1..=max_steps {
                    let decided = self.router_turn(ctx, turn).await?;
                    if decided.satisfied {
                        return Ok(());
                    }
                    let persona = decided.personas.first().cloned().unwrap_or_default();
                    let plan =
                        Plan { turn, step: turn, persona: &persona, instruction: decided.instruction.as_deref() };
                    self.step(ctx, plan, None, None).await?;
                }
                Ok(())
            }
            Strategy::RoundRobin => {
                let last = last_speaker(&ctx.history(1), &team);
                let persona = strategy::after(&team, last.as_deref()).to_owned();
                let reason = match &last {
                    Some(last) => format!("round robin: the persona after {last}, who spoke last"),
                    None => "round robin: the first persona of the team".to_owned(),
                };
                let (decided, event) = self.fixed_turn(ctx, 1, vec![persona.clone()], reason);
                let persona = decided.personas.first().cloned().unwrap_or(persona);
                self.step(ctx, Plan { turn: 1, step: 1, persona: &persona, instruction: None }, event, None).await
            }
            Strategy::Sequence => {
                let count = team.len().min(max_steps as usize);
                for (index, persona) in team.iter().take(count).enumerate() {
                    let turn = u32::try_from(index + 1).unwrap_or(u32::MAX);
                    let reason = format!("sequence: persona {turn} of {count}");
                    let (_, event) = self.fixed_turn(ctx, turn, vec![persona.clone()], reason);
                    self.step(ctx, Plan { turn, step: turn, persona, instruction: None }, event, None).await?;
                }
                Ok(())
            }
            Strategy::Parallel => {
                let personas: Vec<String> = team.iter().take(max_steps as usize).cloned().collect();
                let reason = format!("parallel: {} personas answer the same turn", personas.len());
                if let (_, Some(event)) = self.fixed_turn(ctx, 1, personas.clone(), reason) {
                    self.commit(ctx, Commit::events(vec![event])).await?;
                }
                let initial: Vec<bool> = (1..=personas.len())
                    .map(|n| {
                        let step = u32::try_from(n).unwrap_or(u32::MAX);
                        ctx.record.steps.get(&step).is_some_and(|s| s.completed.is_some())
                    })
                    .collect();
                let (done, _) = watch::channel(initial);
                let orders: Vec<Order> = (0..personas.len()).map(|index| Order { done: done.clone(), index }).collect();
                let steps: Vec<StepFuture<'_>> = personas
                    .iter()
                    .zip(&orders)
                    .enumerate()
                    .map(|(index, (persona, order))| {
                        let step = u32::try_from(index + 1).unwrap_or(u32::MAX);
                        let plan = Plan { turn: 1, step, persona, instruction: None };
                        Box::pin(self.step(ctx, plan, None, Some(order))) as StepFuture<'_>
                    })
                    .collect();
                try_join_all(steps).await
            }
        }
    }

    /// A turn decided by a fixed rule: the recorded decision of a resumed run, or a new
    /// one with its `turn.decided` event to record (with the step's start: one unit of
    /// work, so a turn is recorded exactly when its step started).
    fn fixed_turn(
        &self,
        ctx: &RunCtx,
        turn: u32,
        personas: Vec<String>,
        reason: String,
    ) -> (Decided, Option<EventBody>) {
        if let Some(decided) = ctx.record.turns.get(&turn) {
            return (decided.clone(), None);
        }
        let decided = Decided { personas: personas.clone(), instruction: None, satisfied: false };
        let event =
            EventBody::TurnDecided { turn, personas, instruction: None, reason, satisfied: false, fallback: false };
        (decided, Some(event))
    }

    /// A router turn: the recorded decision, or the router model's (one retry, then the
    /// fixed fallback).
    async fn router_turn(&self, ctx: &RunCtx, turn: u32) -> Result<Decided, Stop> {
        if let Some(decided) = ctx.record.turns.get(&turn) {
            return Ok(decided.clone());
        }
        let team = ctx.team().to_vec();
        let models = self.models.models();
        let model = model_for_tier(&models, self.settings.router_tier).cloned().ok_or(LlmError::NoProvider)?;
        let roles: Vec<(String, String)> = team
            .iter()
            .map(|name| (name.clone(), ctx.personas.get(name).map_or_else(String::new, |p| p.role.clone())))
            .collect();
        let history: Vec<ChatMessage> = ctx.history(turn).iter().map(|m| context::chat_message(m, None)).collect();
        let asked = router_answers(ctx, turn);
        let template = ChatRequest {
            model: model.id.clone(),
            messages: vec![],
            tools: vec![],
            max_tokens: Some(self.settings.router_max_tokens.min(model.max_output_tokens)),
            temperature: None,
            response_schema: Some(strategy::decision_schema(&team)),
        };
        let max_tokens = template.max_tokens.unwrap_or(model.max_output_tokens);
        let blocks = self.tools.host_context(&ctx.principal, &ctx.session.id).await;
        let system = context::with_blocks(strategy::router_prompt(&roles, turn, ctx.limits.max_steps), &blocks);
        let Fitted { mut request, .. } = context::fit(
            template,
            context::head(system, Vec::new(), ROUTER_PERSONA),
            history,
            asked,
            model.context_window,
            max_tokens,
        );
        // A try recorded before an interruption counts: its answer was unusable.
        let mut tries = if turn == next_undecided(ctx) { ctx.record.router_tries } else { 0 };
        if tries > 0
            && let Some(previous) = ctx.record.router_answers.last()
        {
            let why = strategy::parse_decision(&previous.text, &team).err().unwrap_or_default();
            push_retry(&mut request, &previous.text, &why);
        }
        loop {
            let call = ctx.router_calls.fetch_add(1, Ordering::SeqCst) + 1;
            let answered = match self.call_model(ctx, ROUTER_STEP, call, &model, request.clone(), false).await {
                Ok(answered) => answered,
                // Servers without structured output refuse the schema: the prompt asks for
                // the same JSON, and the answer is validated all the same.
                Err(Stop::Failed(error)) if error.code == "model_refused" && request.response_schema.is_some() => {
                    tracing::warn!(run = %ctx.id, error = %error.message, "the router's model refused structured output; asking without a schema");
                    request.response_schema = None;
                    continue;
                }
                Err(stop) => return Err(stop),
            };
            let text = answered.response.text.clone();
            let completed = answer_event(ROUTER_STEP, call, ROUTER_PERSONA, &answered, None);
            let add = model_totals(&answered);
            tries += 1;
            let (decided, event) = match strategy::parse_decision(&text, &team) {
                Ok(decision) if decision.ask_user.is_some() => {
                    let question =
                        Question { question: decision.ask_user.unwrap_or_default(), choices: vec![], free_text: true };
                    let mut commit = self.wait(ctx, Asker::Router { turn }, question);
                    commit.events.insert(0, completed);
                    commit.settle = answered.settle;
                    commit.add = add;
                    self.commit(ctx, commit).await?;
                    return Err(Stop::Waiting);
                }
                Ok(decision) => {
                    let personas =
                        if decision.satisfied { vec![] } else { decision.next.clone().into_iter().collect() };
                    let decided = Decided {
                        personas: personas.clone(),
                        instruction: decision.instruction.clone().filter(|_| !decision.satisfied),
                        satisfied: decision.satisfied,
                    };
                    let event = EventBody::TurnDecided {
                        turn,
                        personas,
                        instruction: decided.instruction.clone(),
                        reason: decision.reason.unwrap_or_default(),
                        satisfied: decision.satisfied,
                        fallback: false,
                    };
                    (decided, event)
                }
                Err(why) if tries < 2 => {
                    tracing::info!(run = %ctx.id, turn, why, "the router's answer is unusable; asking once more");
                    self.commit(
                        ctx,
                        Commit { events: vec![completed], settle: answered.settle, add, ..Commit::default() },
                    )
                    .await?;
                    push_retry(&mut request, &text, &why);
                    continue;
                }
                Err(why) => {
                    let last = last_speaker(&ctx.history(turn), &team);
                    let persona = strategy::after(&team, last.as_deref()).to_owned();
                    let decided = Decided { personas: vec![persona.clone()], instruction: None, satisfied: false };
                    let event = EventBody::TurnDecided {
                        turn,
                        personas: vec![persona],
                        instruction: None,
                        reason: format!(
                            "the router's answer was unusable twice ({why}); the next persona in team order"
                        ),
                        satisfied: false,
                        fallback: true,
                    };
                    (decided, event)
                }
            };
            let commit = Commit { events: vec![completed, event], settle: answered.settle, add, ..Commit::default() };
            self.commit(ctx, commit).await?;
            return Ok(decided);
        }
    }

    /// One persona answering (see the module docs). `decided` is recorded with the
    /// step's start; `order` makes a parallel step commit its final answer after the
    /// steps before it.
    async fn step(
        &self,
        ctx: &RunCtx,
        plan: Plan<'_>,
        decided: Option<EventBody>,
        order: Option<&Order>,
    ) -> Result<(), Stop> {
        let Plan { turn, step, persona, instruction } = plan;
        let recorded = ctx.record.steps.get(&step).cloned().unwrap_or_default();
        if recorded.completed.is_some() {
            return Ok(());
        }
        let spec = ctx.personas.get(persona).cloned().ok_or_else(|| {
            Stop::fail(
                "persona_unavailable",
                format!("persona `{persona}` is not loaded or not allowed to this tenant"),
            )
        })?;
        let (prompt, render_credits) = self.render(ctx, persona, &spec).await?;
        let mut blocks = self.tools.host_context(&ctx.principal, &ctx.session.id).await;
        // Recalled on every execution of the step; recorded once, with its start.
        // Only what the run's caller could read through `memory.search` is recalled.
        let recalled = match &self.recall {
            Some(recall) => match self.tools.decide(&ctx.principal, crate::recall::RECALL_TOOL) {
                maestro_core::policy::Decision::Allow(_) => {
                    recall.recall(&ctx.principal.tenant_id, persona, &ctx.session.id, &ctx.trigger).await
                }
                denied @ maestro_core::policy::Decision::Deny(_) => {
                    tracing::info!(step, persona, reason = %denied, "recall skipped: the run's caller may not use memory.search");
                    crate::recall::Recalled::default()
                }
            },
            None => crate::recall::Recalled::default(),
        };
        blocks.extend(recalled.block.clone());
        let system = context::with_blocks(prompt.system, &blocks);
        let head = context::head(system, prompt.messages, persona);
        let models = self.models.models();
        let model = model_for_tier(&models, spec.model_tier).cloned().ok_or(LlmError::NoProvider)?;
        let mut offered = self.offered_tools(ctx, &spec);
        if ctx.run.lock().await.strategy != Strategy::Parallel {
            // Personas of a parallel turn answer concurrently: none may stop the turn.
            offered.push(ask_user_tool());
        }
        let history: Vec<ChatMessage> =
            ctx.history(turn).iter().map(|m| context::chat_message(m, Some(persona))).collect();
        let mut tail = router_answers(ctx, turn);
        if let Some(instruction) = instruction {
            tail.push(ChatMessage::new(ChatRole::User, format!("{ROUTER_PERSONA}: {instruction}")));
        } else if tail.is_empty() && history.last().is_none_or(|m| m.role == ChatRole::Assistant) {
            tail.push(ChatMessage::new(ChatRole::User, format!("{ROUTER_PERSONA}: continue")));
        }
        let template = ChatRequest {
            model: model.id.clone(),
            messages: vec![],
            tools: offered.clone(),
            max_tokens: Some(model.max_output_tokens),
            temperature: None,
            response_schema: None,
        };
        let fitted = context::fit(template, head, history, tail, model.context_window, model.max_output_tokens);
        let add = RunTotals { credits: render_credits, ..RunTotals::default() };
        if recorded.persona.is_empty() {
            let event = EventBody::StepStarted {
                step,
                turn,
                persona: persona.to_owned(),
                model: model.id.clone(),
                tools: offered.iter().map(|t| t.name.clone()).collect(),
                context_messages: fitted.context_messages,
                trimmed_messages: fitted.trimmed_messages,
            };
            let recorded = recalled.block.is_some().then(|| EventBody::MemoryRecalled {
                step,
                persona: persona.to_owned(),
                memories: recalled.memories,
                snippets: recalled.snippets,
                tokens: recalled.tokens,
            });
            let events = decided.into_iter().chain([event]).chain(recorded).collect();
            self.commit(ctx, Commit { events, add, ..Commit::default() }).await?;
        } else if render_credits > 0 {
            self.commit(ctx, Commit { add, ..Commit::default() }).await?;
        }
        let mut state = StepState::resume(&recorded, fitted.request, &offered);
        let limit = ctx.limits.max_tool_calls_per_step;
        loop {
            if let Some(answer) = state.unanswered.take() {
                self.answer_tool_calls(ctx, (step, persona), &answer, &mut state, limit).await?;
            }
            let last_call = state.tool_calls >= limit;
            let mut request = state.request.clone();
            if last_call {
                request.tools.clear();
            }
            let call = state.next_call;
            state.next_call += 1;
            let answered = self.call_model(ctx, step, call, &model, request, true).await?;
            let final_answer = answered.response.tool_calls.is_empty() || last_call;
            let add = model_totals(&answered);
            state.credits += answered.credits;
            state.usage = state.usage.plus(answered.response.usage);
            state.model_calls += 1;
            if final_answer {
                let message = Message {
                    id: MessageId::from_random(random_bytes()),
                    session: ctx.session.id.clone(),
                    seq: 0,
                    author: Author::Persona { name: persona.to_owned() },
                    content: answered.response.text.clone(),
                    run: Some(ctx.id.clone()),
                    at: self.clock.now(),
                };
                let completed = answer_event(step, call, persona, &answered, Some(message.id.clone()));
                let done = EventBody::StepCompleted {
                    step,
                    persona: persona.to_owned(),
                    usage: state.usage,
                    model_calls: state.model_calls,
                    tool_calls: state.tool_calls,
                    credits: state.credits,
                    message: Some(message.id.clone()),
                };
                let mut events: Vec<EventBody> = Vec::new();
                if let Some(order) = order {
                    // Live text does not wait for the personas before this one.
                    if let Some(delta) = answered.last_delta {
                        self.commit(ctx, Commit::events(vec![delta])).await?;
                    }
                    order.wait_turn().await;
                } else {
                    events.extend(answered.last_delta);
                }
                events.extend([completed, done]);
                let add = RunTotals { steps: 1, ..add };
                let commit =
                    Commit { events, settle: answered.settle, message: Some(message), add, ..Commit::default() };
                let committed = self.commit(ctx, commit).await?;
                if let Some(order) = order {
                    order.finished();
                }
                if let Some(stored) = committed.message {
                    ctx.answers.lock().unwrap_or_else(PoisonError::into_inner).push((turn, stored));
                }
                return Ok(());
            }
            let completed = answer_event(step, call, persona, &answered, None);
            let events = answered.last_delta.into_iter().chain([completed]).collect();
            self.commit(ctx, Commit { events, settle: answered.settle, add, ..Commit::default() }).await?;
            state.push_answer(&answered.response.text, &answered.response.tool_calls);
            state.unanswered = Some(answered.response.tool_calls);
        }
    }

    /// Renders the persona's prompt (its system text and the messages after it) under the
    /// run's principal; returns it and what the rendering was charged.
    async fn render(&self, ctx: &RunCtx, persona: &str, spec: &PersonaSpec) -> Result<(Prompt, i64), Stop> {
        let arguments = context::persona_arguments(spec, &ctx.trigger);
        let rendered =
            self.tools.render_persona(&ctx.principal, persona, &arguments, Observe::default()).await.map_err(
                |err| Stop::fail(err.code().as_str(), format!("persona `{persona}` cannot be rendered: {err}")),
            )?;
        let charged = i64::try_from(rendered.charged).unwrap_or(i64::MAX);
        match rendered.outcome.result {
            Ok(prompt) => Ok((prompt, charged)),
            Err(failure) => {
                Err(Stop::fail(failure.code().as_str(), format!("persona `{persona}` cannot be rendered: {failure}")))
            }
        }
    }

    /// The tools offered to a persona: its globs AND the principal's policy, by name.
    fn offered_tools(&self, ctx: &RunCtx, spec: &PersonaSpec) -> Vec<ToolDefinition> {
        let mut offered: Vec<ToolDefinition> = self
            .tools
            .visible_tools(&ctx.principal)
            .into_iter()
            .filter(|tool| context::persona_allows(&spec.tools, &tool.name))
            .map(|tool| ToolDefinition {
                name: tool.name,
                description: tool.spec.description,
                parameters: tool.spec.input_schema,
            })
            .collect();
        offered.sort_by(|a, b| a.name.cmp(&b.name));
        offered
    }

    /// Answers an assistant message's tool calls, in order: recorded results are reused,
    /// a call announced but never answered (its worker died) is answered `interrupted`,
    /// the rest run (or are refused) now.
    async fn answer_tool_calls(
        &self,
        ctx: &RunCtx,
        (step, persona): (u32, &str),
        answer: &[ToolCallRequest],
        state: &mut StepState,
        limit: u32,
    ) -> Result<(), Stop> {
        let call = state.next_call.saturating_sub(1);
        for request in answer {
            if let Some(result) = state.recorded.results.get(&request.id) {
                let (content, is_error) = (result.content.clone(), !result.ok);
                state.push_result(&request.id, &content, is_error);
                continue;
            }
            let rerun = state.recorded.rerun(&request.id);
            if rerun.is_none() && state.recorded.called.contains(&request.id) {
                let result = ToolResultBody {
                    step,
                    call_id: request.id.clone(),
                    tool: request.name.clone(),
                    ok: false,
                    content: "the tool call was interrupted; its result is unknown (it is not run again)".to_owned(),
                    error: Some("interrupted".to_owned()),
                    credits: 0,
                    duration_ms: 0,
                };
                let events = vec![EventBody::ToolResult(result.clone())];
                self.commit(ctx, Commit { events, add: one_tool_call(0), ..Commit::default() }).await?;
                state.push_result(&request.id, &result.content, true);
                continue;
            }
            let called = EventBody::ToolCalled {
                step,
                call,
                call_id: request.id.clone(),
                tool: request.name.clone(),
                arguments: request.arguments.clone(),
            };
            if let Some(answers) = rerun {
                // A plugin tool that asked the user, answered: the same call runs again
                // with the answers (announced again, so that an attempt cut now is not).
                self.commit(ctx, Commit::events(vec![called])).await?;
                self.run_and_record(ctx, (step, persona), request, answers, state).await?;
                continue;
            }
            state.tool_calls += 1;
            let refusal = if state.tool_calls > limit {
                Some(("tool_limit", format!("this step may make at most {limit} tool calls; answer without tools")))
            } else if !state.offered.iter().any(|t| t == &request.name) {
                Some((
                    "not_offered",
                    format!("the tool `{}` is not offered to you; use only the tools offered", truncate(&request.name)),
                ))
            } else {
                None
            };
            if let Some((code, content)) = refusal {
                let result = refused(step, request, code, content);
                self.commit(ctx, Commit::events(vec![called, EventBody::ToolResult(result.clone())])).await?;
                state.push_result(&request.id, &result.content, true);
                continue;
            }
            if request.name == ASK_USER_TOOL {
                // Asked in one unit with its call; the answer becomes its result.
                let arguments = serde_json::from_str::<serde_json::Value>(&request.arguments)
                    .map_err(|e| e.to_string())
                    .and_then(|v| Question::from_arguments(&v).map_err(|e| e.to_string()));
                match arguments {
                    Ok(question) => {
                        let asker = Asker::Persona { persona: persona.to_owned(), step, call_id: request.id.clone() };
                        let mut commit = self.wait(ctx, asker, question);
                        commit.events.insert(0, called);
                        self.commit(ctx, commit).await?;
                        return Err(Stop::Waiting);
                    }
                    Err(why) => {
                        let result = refused(step, request, "invalid_arguments", why);
                        self.commit(ctx, Commit::events(vec![called, EventBody::ToolResult(result.clone())])).await?;
                        state.push_result(&request.id, &result.content, true);
                        continue;
                    }
                }
            }
            self.commit(ctx, Commit::events(vec![called])).await?;
            self.run_and_record(ctx, (step, persona), request, Vec::new(), state).await?;
        }
        Ok(())
    }

    /// Runs an announced tool call (given the answers to the questions it asked in
    /// earlier attempts) and records its result; a question nobody answered yet puts
    /// the run in `waiting_input` instead, with no result ([`Stop::Waiting`]).
    async fn run_and_record(
        &self,
        ctx: &RunCtx,
        (step, persona): (u32, &str),
        request: &ToolCallRequest,
        answers: Vec<SuppliedAnswer>,
        state: &mut StepState,
    ) -> Result<(), Stop> {
        let (result, events) = match self.run_tool(ctx, (step, persona), request, answers).await? {
            Ran::Result(result, events) => (result, events),
            Ran::Asks { question, charged } => {
                let asker = Asker::Tool {
                    persona: persona.to_owned(),
                    step,
                    call_id: request.id.clone(),
                    tool: request.name.clone(),
                    index: question.index,
                    schema: question.question.schema.clone(),
                };
                let shown = question_from_schema(&question.question.message, &question.question.schema);
                let mut commit = self.wait(ctx, asker, shown);
                // What the attempt's completions cost (its price is refunded).
                commit.add = RunTotals { credits: charged, ..RunTotals::default() };
                state.credits += charged;
                self.commit(ctx, commit).await?;
                return Err(Stop::Waiting);
            }
        };
        let credits = i64::try_from(result.credits).unwrap_or(i64::MAX);
        state.credits += credits;
        let (content, is_error) = (result.content.clone(), !result.ok);
        self.commit(
            ctx,
            Commit {
                // A built-in tool's events (`document.updated`) commit with its result.
                events: std::iter::once(EventBody::ToolResult(result)).chain(events).collect(),
                add: one_tool_call(credits),
                ..Commit::default()
            },
        )
        .await?;
        state.push_result(&request.id, &content, is_error);
        Ok(())
    }

    /// What asking the user writes: `clarification.requested` (expiring after the
    /// session's `wait_timeout_secs`, else the server's wait timeout), the run's
    /// `waiting_input` state, and the job that expires the wait at its deadline (keyed by
    /// run and wait).
    fn wait(&self, ctx: &RunCtx, asker: Asker, question: Question) -> Commit {
        let timeout = ctx.limits.wait_timeout_secs.map_or(self.settings.wait_timeout, std::time::Duration::from_secs);
        let expires_at = self.clock.now() + chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX);
        let wait = ctx.record.waits + 1;
        let job = super::expiry_job(&ctx.id, wait, expires_at);
        let event = EventBody::ClarificationRequested {
            asker,
            question: question.question,
            choices: question.choices,
            free_text: question.free_text,
            expires_at,
        };
        Commit {
            events: vec![event],
            state: Some((RunState::WaitingInput, None)),
            jobs: job.into_iter().collect(),
            ..Commit::default()
        }
    }

    /// Runs one offered tool through the pipeline; returns its result and the events a
    /// built-in tool asks to record with it.
    async fn run_tool(
        &self,
        ctx: &RunCtx,
        (step, persona): (u32, &str),
        request: &ToolCallRequest,
        answers: Vec<SuppliedAnswer>,
    ) -> Result<Ran, Stop> {
        if self.clock.now() >= ctx.deadline {
            return Err(deadline_exceeded());
        }
        let arguments = if request.arguments.trim().is_empty() {
            Ok(serde_json::json!({}))
        } else {
            serde_json::from_str::<serde_json::Value>(&request.arguments)
        };
        let arguments = match arguments {
            Ok(value) if value.is_object() => value,
            _ => {
                let content = "the arguments are not a JSON object".to_owned();
                return Ok(Ran::Result(refused(step, request, "invalid_arguments", content), Vec::new()));
            }
        };
        let room = self.budget_room(ctx).await;
        let mut credit_budget = None;
        if let Some(room) = room {
            let price = self
                .tools
                .visible_tools(&ctx.principal)
                .into_iter()
                .find(|t| t.name == request.name)
                .map_or(0, |t| i64::try_from(t.credits).unwrap_or(i64::MAX));
            if price > room {
                return Err(Stop::fail(
                    "budget_exceeded",
                    format!("the tool `{}` costs {price} credits; the run's budget has {room} left", request.name),
                ));
            }
            // What the tool's model completions may cost: the budget left after its price.
            credit_budget = Some(u64::try_from(room - price).unwrap_or(0));
        }
        let started = Instant::now();
        let origin = Origin { run: ctx.id.clone(), session: ctx.session.id.clone(), step, persona: persona.to_owned() };
        let observe = Observe { answers, credit_budget, ..Observe::default() };
        let outcome = self.tools.call_in(&ctx.principal, &request.name, arguments, observe, Some(&origin)).await;
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let body = |ok: bool, content: String, error: Option<String>, credits: u64| ToolResultBody {
            step,
            call_id: request.id.clone(),
            tool: request.name.clone(),
            ok,
            content,
            error,
            credits,
            duration_ms,
        };
        // Personas of a parallel turn answer concurrently: none may stop the turn to ask.
        let may_wait = ctx.run.lock().await.strategy != Strategy::Parallel;
        Ok(match outcome {
            Err(err) => Ran::Result(body(false, err.to_string(), Some(err.code().as_str().to_owned()), 0), Vec::new()),
            Ok(call) => match call.outcome.result {
                Ok(output) => Ran::Result(
                    body(true, output_text(&output.content, output.structured.as_ref()), None, call.charged),
                    call.events,
                ),
                Err(Failure::NeedsInput { mut questions, .. }) if may_wait && !questions.is_empty() => Ran::Asks {
                    question: questions.swap_remove(0),
                    charged: i64::try_from(call.charged).unwrap_or(i64::MAX),
                },
                Err(failure) => Ran::Result(
                    body(false, failure.to_string(), Some(failure.code().as_str().to_owned()), call.charged),
                    Vec::new(),
                ),
            },
        })
    }

    /// One model call: hold, stream (deltas coalesced), and the settlement to record with
    /// the answer. A failure voids the hold.
    async fn call_model(
        &self,
        ctx: &RunCtx,
        step: u32,
        call: u32,
        model: &ModelInfo,
        mut request: ChatRequest,
        deltas: bool,
    ) -> Result<Answered, Stop> {
        let now = self.clock.now();
        if now >= ctx.deadline {
            return Err(deadline_exceeded());
        }
        let models = self.models.models();
        let chain = pricing::chain(&models, &model.id);
        let prompt = prompt_token_bound(&request);
        let wanted = request.max_tokens.unwrap_or(model.max_output_tokens);
        let room = self.budget_room(ctx).await;
        let (max_tokens, worst) =
            self.pricing.fit(&chain, prompt, wanted, room.unwrap_or(i64::MAX)).map_err(|e| match e {
                Unaffordable::Budget => Stop::fail(
                    "budget_exceeded",
                    format!(
                        "the run's credits budget has {} left, less than the next model call's prompt costs",
                        room.unwrap_or(0).max(0)
                    ),
                ),
                Unaffordable::Overflow => Stop::fail("budget_exceeded", "the model call's worst-case cost overflows"),
            })?;
        request.max_tokens = Some(max_tokens);
        let base = format!("run:{}:s{step}:c{call}", ctx.id);
        if ctx.attempt > 1 {
            self.void_earlier_attempts(ctx, &base).await;
        }
        let key = format!("{base}:a{}", ctx.attempt);
        let hold = if worst > 0 {
            let left = (ctx.deadline - now).max(chrono::Duration::zero());
            let expires_in =
                left + chrono::Duration::from_std(self.settings.hold_grace).unwrap_or(chrono::Duration::MAX);
            let memo = format!("run {}: step {step}, model call {call} ({})", ctx.id, model.id);
            let reservation = self
                .credits
                .reserve(&ctx.principal.tenant_id, worst, expires_in, &format!("{key}:hold"), &memo)
                .await?;
            ctx.holds.lock().unwrap_or_else(PoisonError::into_inner).insert(key.clone(), reservation.hold.clone());
            Some(reservation.hold)
        } else {
            None
        };
        let (mut response, last_delta) = match self.stream(ctx, step, call, request, deltas).await {
            Ok(answer) => answer,
            Err(stop) => {
                self.release_hold(ctx, &key).await;
                return Err(stop);
            }
        };
        if !response.usage_reported {
            // No usage from the provider: charge the safe estimate (upper bounds: the
            // prompt's token bound, and a token per byte of the answer), never nothing.
            let calls: usize = response.tool_calls.iter().map(|c| c.name.len() + c.arguments.len()).sum();
            let output = u64::try_from(response.text.len() + calls).unwrap_or(u64::MAX);
            tracing::warn!(run = %ctx.id, model = %response.model, "the provider reported no usage; charging the estimate");
            response.usage =
                maestro_core::llm::Usage { input_tokens: prompt, output_tokens: output, ..Default::default() };
        }
        let actual = match self.pricing.settlement(&response.model, &response.usage) {
            Some(actual) => actual,
            None => worst,
        };
        let (settle, credits) = match hold {
            Some(hold) => {
                let charged = if actual > hold.amount {
                    tracing::warn!(
                        run = %ctx.id, model = %response.model, actual, held = hold.amount,
                        "a model call cost more than its hold (usage beyond the bound); charged the hold"
                    );
                    hold.amount
                } else {
                    actual
                };
                let memo = format!("run {}: step {step}, model call {call} ({})", ctx.id, response.model);
                (Some(Settle { hold, actual: charged, key: format!("{key}:settle"), memo }), charged)
            }
            None => (None, 0),
        };
        Ok(Answered { response, settle, credits, last_delta })
    }

    /// Streams an answer, committing coalesced text deltas as they come; returns it with
    /// the text not yet written (as its delta event).
    async fn stream(
        &self,
        ctx: &RunCtx,
        step: u32,
        call: u32,
        request: ChatRequest,
        deltas: bool,
    ) -> Result<(ChatResponse, Option<EventBody>), Stop> {
        let mut stream = self.models.stream(request).await?;
        let mut pending = String::new();
        let mut flushed = Instant::now();
        loop {
            // The same `next()` stays pending while deltas are flushed on time (a stream
            // may pause for long; what arrived reaches clients within `delta_interval`).
            let next = {
                let next = stream.next();
                tokio::pin!(next);
                loop {
                    if pending.is_empty() {
                        break next.await;
                    }
                    let wait = self.settings.delta_interval.saturating_sub(flushed.elapsed());
                    tokio::select! {
                        biased;
                        event = &mut next => break event,
                        () = tokio::time::sleep(wait) => {
                            self.flush(ctx, step, call, &mut pending).await?;
                            flushed = Instant::now();
                        }
                    }
                }
            };
            match next {
                Some(Ok(ChatEvent::Text { text })) if deltas => {
                    pending.push_str(&text);
                    if pending.len() >= self.settings.delta_bytes || flushed.elapsed() >= self.settings.delta_interval {
                        self.flush(ctx, step, call, &mut pending).await?;
                        flushed = Instant::now();
                    }
                }
                Some(Ok(ChatEvent::Completed(response))) => {
                    let rest = (!pending.is_empty()).then_some(EventBody::MessageDelta { step, call, text: pending });
                    return Ok((response, rest));
                }
                Some(Ok(_)) => {}
                Some(Err(err)) => {
                    self.flush(ctx, step, call, &mut pending).await?;
                    return Err(err.into());
                }
                None => {
                    return Err(LlmError::Stream("the stream ended before the answer was complete".to_owned()).into());
                }
            }
        }
    }

    async fn flush(&self, ctx: &RunCtx, step: u32, call: u32, pending: &mut String) -> Result<(), Stop> {
        if pending.is_empty() {
            return Ok(());
        }
        let text = std::mem::take(pending);
        self.commit(ctx, Commit::events(vec![EventBody::MessageDelta { step, call, text }])).await?;
        Ok(())
    }
}

/// How a tool call in a run ended.
#[derive(Debug)]
enum Ran {
    /// With a result to record (and the events a built-in tool asks to record with it).
    Result(ToolResultBody, Vec<EventBody>),
    /// A plugin tool asked the user something nobody answered yet: its first open
    /// question, and what the attempt cost.
    Asks {
        /// The question to wait for.
        question: AskedQuestion,
        /// Credits its completions were charged.
        charged: i64,
    },
}

/// A step's conversation as it grows, and its counts.
#[derive(Debug)]
struct StepState {
    request: ChatRequest,
    offered: Vec<String>,
    recorded: StepRecord,
    /// The last answer's tool calls, not yet answered.
    unanswered: Option<Vec<ToolCallRequest>>,
    next_call: u32,
    tool_calls: u32,
    model_calls: u32,
    usage: maestro_core::llm::Usage,
    credits: i64,
}

impl StepState {
    /// The conversation with the recorded answers and results replayed into it.
    fn resume(recorded: &StepRecord, request: ChatRequest, offered: &[ToolDefinition]) -> Self {
        let (usage, credits) = recorded.spent();
        let mut state = StepState {
            request,
            offered: offered.iter().map(|t| t.name.clone()).collect(),
            recorded: recorded.clone(),
            unanswered: None,
            next_call: recorded.answers.last().map_or(1, |a| a.call + 1),
            tool_calls: recorded.tool_calls(),
            model_calls: u32::try_from(recorded.answers.len()).unwrap_or(u32::MAX),
            usage,
            credits: credits + recorded.results.values().map(|r| i64::try_from(r.credits).unwrap_or(0)).sum::<i64>(),
        };
        let answers: &[Answer] = &recorded.answers;
        for (index, answer) in answers.iter().enumerate() {
            state.push_answer(&answer.text, &answer.tool_calls);
            if index + 1 == answers.len() {
                // The last answer's calls are answered by the loop (reusing what is recorded).
                state.unanswered = Some(answer.tool_calls.clone()).filter(|c| !c.is_empty());
            } else {
                for call in &answer.tool_calls {
                    let (content, is_error) = recorded.results.get(&call.id).map_or_else(
                        || ("the tool call was interrupted; its result is unknown".to_owned(), true),
                        |r| (r.content.clone(), !r.ok),
                    );
                    state.push_result(&call.id, &content, is_error);
                }
            }
        }
        state
    }

    fn push_answer(&mut self, text: &str, calls: &[ToolCallRequest]) {
        let mut message = ChatMessage::new(ChatRole::Assistant, text);
        message.tool_calls = calls.to_vec();
        self.request.messages.push(message);
    }

    fn push_result(&mut self, call_id: &str, content: &str, is_error: bool) {
        self.request.messages.push(ChatMessage::tool_result(call_id, content, is_error));
    }
}

type StepFuture<'a> = Pin<Box<dyn Future<Output = Result<(), Stop>> + Send + 'a>>;

/// Runs futures concurrently; the first error drops the rest.
async fn try_join_all(mut futures: Vec<StepFuture<'_>>) -> Result<(), Stop> {
    let mut done = vec![false; futures.len()];
    std::future::poll_fn(|cx| {
        for (index, future) in futures.iter_mut().enumerate() {
            if done[index] {
                continue;
            }
            if let Poll::Ready(result) = future.as_mut().poll(cx) {
                done[index] = true;
                if let Err(stop) = result {
                    return Poll::Ready(Err(stop));
                }
            }
        }
        if done.iter().all(|d| *d) { Poll::Ready(Ok(())) } else { Poll::Pending }
    })
    .await
}

/// The built-in `ask_user` tool as offered to models.
fn ask_user_tool() -> ToolDefinition {
    ToolDefinition {
        name: ASK_USER_TOOL.to_owned(),
        description: "Ask the user a question and wait for the answer (use it when you cannot go on without \
                      their decision or information). Offer `choices` when the answer is one of a few."
            .to_owned(),
        parameters: Question::schema(),
    }
}

/// The router's questions to the user up to `turn`, with their answers, as messages.
fn router_answers(ctx: &RunCtx, turn: u32) -> Vec<ChatMessage> {
    let mut messages = Vec::new();
    for ask in ctx.record.router_asks.iter().filter(|a| a.turn <= turn) {
        if let Some(answer) = &ask.answer {
            messages.push(ChatMessage::new(
                ChatRole::Assistant,
                format!("{ROUTER_PERSONA} asked the user: {}", ask.question),
            ));
            messages.push(ChatMessage::new(ChatRole::User, format!("the user answered: {answer}")));
        }
    }
    messages
}

/// The first turn without a recorded decision.
fn next_undecided(ctx: &RunCtx) -> u32 {
    (1..).find(|turn| !ctx.record.turns.contains_key(turn)).unwrap_or(u32::MAX)
}

/// The last persona of the team that spoke in `history`.
fn last_speaker(history: &[Message], team: &[String]) -> Option<String> {
    history.iter().rev().find_map(|m| match &m.author {
        Author::Persona { name } if team.contains(name) => Some(name.clone()),
        _ => None,
    })
}

/// Tells the router why its answer was unusable, and asks again.
fn push_retry(request: &mut ChatRequest, answer: &str, why: &str) {
    request.messages.push(ChatMessage::new(ChatRole::Assistant, answer));
    request.messages.push(ChatMessage::new(
        ChatRole::User,
        format!("{ROUTER_PERSONA}: that answer is unusable: {why}. Answer again with only the JSON object."),
    ));
}

fn answer_event(step: u32, call: u32, persona: &str, answered: &Answered, message: Option<MessageId>) -> EventBody {
    let response = &answered.response;
    EventBody::MessageCompleted {
        step,
        call,
        persona: persona.to_owned(),
        model: response.model.clone(),
        text: response.text.clone(),
        tool_calls: response.tool_calls.clone(),
        finish: response.finish.clone(),
        usage: response.usage,
        credits: answered.credits,
        message,
    }
}

fn model_totals(answered: &Answered) -> RunTotals {
    RunTotals { model_calls: 1, usage: answered.response.usage, credits: answered.credits, ..RunTotals::default() }
}

fn one_tool_call(credits: i64) -> RunTotals {
    RunTotals { tool_calls: 1, credits, ..RunTotals::default() }
}

fn refused(step: u32, request: &ToolCallRequest, code: &str, content: String) -> ToolResultBody {
    ToolResultBody {
        step,
        call_id: request.id.clone(),
        tool: request.name.clone(),
        ok: false,
        content,
        error: Some(code.to_owned()),
        credits: 0,
        duration_ms: 0,
    }
}

/// A tool's output as the model reads it: its text items, else its structured result,
/// else its content as JSON.
fn output_text(content: &[Content], structured: Option<&serde_json::Value>) -> String {
    let texts: Vec<&str> = content
        .iter()
        .filter_map(|c| match c {
            Content::Text { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    if !texts.is_empty() {
        return texts.join("\n");
    }
    match structured {
        Some(value) => value.to_string(),
        None => serde_json::to_string(content).unwrap_or_default(),
    }
}

fn truncate(name: &str) -> String {
    name.chars().take(64).collect()
}
