//! The runner end to end on both stores: real run storage, real plugins (`personas`,
//! `calc`, `text`) under a real policy, real credits, and a scripted, counting fake
//! `ModelProvider` (its answers stream like a provider's: a start, text pieces, tool
//! calls, then the whole answer with usage).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use maestro_core::ledger::{Account, TransactionKind};
use maestro_core::llm::{
    ChatEvent, ChatRequest, ChatResponse, ChatStream, FinishReason, LlmError, ModelInfo, ModelProvider,
    ToolCallRequest, Usage,
};
use maestro_core::plugin::ModelTier;
use maestro_core::policy::PolicySet;
use maestro_core::run::{EventBody, Message, Run, RunEvent, RunLimits, RunState, Session, Strategy};
use maestro_core::{Clock, KeyScope, Role, Store, TransactionQuery};
use maestro_host::accounts::{Accounts, SystemClock};
use maestro_host::config::ModelPrice;
use maestro_host::credits::Credits;
use maestro_host::orchestrator::hub::EventHub;
use maestro_host::orchestrator::{NewSession, Orchestrator, Runner, RunnerPorts, RunnerSettings};
use maestro_host::tools::{Principal, Tools};

use crate::harness::{Backend, TestDb, backend_tests, tools_with};

pub(crate) const POLICY: &str = r#"
version = 1

[[grant]]
name = "acme"
subjects = ["tenant:acme"]
tools = ["personas.*", "calc.*"]
"#;

pub(crate) const PM: &str = "personas.product_manager";
pub(crate) const ARCHITECT: &str = "personas.architect";
pub(crate) const CRITIC: &str = "personas.critic";
pub(crate) const WRITER: &str = "personas.writer";

/// Which persona (or the router) a request is for, from its system prompt.
pub(crate) fn speaker(request: &ChatRequest) -> &'static str {
    if request.response_schema.is_some() {
        return "router";
    }
    let system = request.messages.first().map_or("", |m| m.content.as_str());
    for (prefix, name) in [
        ("You are the product manager", PM),
        ("You are the software architect", ARCHITECT),
        ("You are the critic", CRITIC),
        ("You are the technical writer", WRITER),
    ] {
        if system.starts_with(prefix) {
            return name;
        }
    }
    "unknown"
}

pub(crate) fn usage(input: u64, output: u64) -> Usage {
    Usage { input_tokens: input, output_tokens: output, ..Usage::default() }
}

/// One scripted answer.
#[derive(Debug, Clone)]
pub(crate) enum Reply {
    /// Text in pieces, then the answer.
    Text { pieces: Vec<String>, usage: Usage, delay: Duration },
    /// Tool calls, then the answer.
    Tools { calls: Vec<ToolCallRequest>, usage: Usage },
    /// Refused before the stream starts.
    Fail(LlmError),
    /// Some text, then nothing ever again (until dropped).
    Hang { text: String },
    /// Text, and no usage reported.
    Unreported { text: String },
}

pub(crate) fn text(text: &str, usage: Usage) -> Reply {
    let pieces = text.split_inclusive(' ').map(str::to_owned).collect();
    Reply::Text { pieces, usage, delay: Duration::ZERO }
}

pub(crate) fn decision(next: Option<&str>, satisfied: bool) -> Reply {
    let json = serde_json::json!({
        "satisfied": satisfied,
        "next": next.unwrap_or_default(),
        "instruction": next.map(|n| format!("{n}, your turn")).unwrap_or_default(),
        "reason": "because"
    });
    Reply::Text { pieces: vec![json.to_string()], usage: usage(300, 20), delay: Duration::ZERO }
}

pub(crate) fn tool_call(id: &str, name: &str, arguments: &str) -> ToolCallRequest {
    ToolCallRequest { id: id.into(), name: name.into(), arguments: arguments.into() }
}

type Responder = dyn Fn(&ChatRequest) -> Option<Reply> + Send + Sync;

/// A scripted model provider that counts and records every request.
pub(crate) struct FakeModels {
    models: Vec<ModelInfo>,
    queue: Mutex<VecDeque<Reply>>,
    responder: Mutex<Option<Box<Responder>>>,
    requests: Mutex<Vec<ChatRequest>>,
    dropped: Arc<AtomicUsize>,
}

impl std::fmt::Debug for FakeModels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeModels").finish_non_exhaustive()
    }
}

fn model(id: &str, tier: ModelTier) -> ModelInfo {
    ModelInfo {
        id: id.into(),
        provider: "fake".into(),
        tier,
        context_window: 64_000,
        max_output_tokens: 1000,
        fallbacks: vec![],
    }
}

impl FakeModels {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            models: vec![model("fast-m", ModelTier::Small), model("big-m", ModelTier::Large)],
            queue: Mutex::default(),
            responder: Mutex::default(),
            requests: Mutex::default(),
            dropped: Arc::default(),
        })
    }

    /// Answers in this order (after the responder, when it has none).
    pub(crate) fn push(&self, replies: impl IntoIterator<Item = Reply>) {
        self.queue.lock().expect("queue").extend(replies);
    }

    pub(crate) fn respond(&self, responder: impl Fn(&ChatRequest) -> Option<Reply> + Send + Sync + 'static) {
        *self.responder.lock().expect("responder") = Some(Box::new(responder));
    }

    pub(crate) fn requests(&self) -> Vec<ChatRequest> {
        self.requests.lock().expect("requests").clone()
    }

    pub(crate) fn calls_to(&self, who: &str) -> usize {
        self.requests().iter().filter(|r| speaker(r) == who).count()
    }
}

struct FakeStream {
    events: VecDeque<ChatEvent>,
    delay: Duration,
    hang: bool,
    dropped: Arc<AtomicUsize>,
}

impl Drop for FakeStream {
    fn drop(&mut self) {
        self.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl ChatStream for FakeStream {
    async fn next(&mut self) -> Option<Result<ChatEvent, LlmError>> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        match self.events.pop_front() {
            Some(event) => Some(Ok(event)),
            None if self.hang => std::future::pending().await,
            None => None,
        }
    }
}

#[async_trait]
impl ModelProvider for FakeModels {
    fn models(&self) -> Vec<ModelInfo> {
        self.models.clone()
    }

    async fn stream(&self, request: ChatRequest) -> Result<Box<dyn ChatStream>, LlmError> {
        self.requests.lock().expect("requests").push(request.clone());
        let scripted = self.responder.lock().expect("responder").as_ref().and_then(|r| r(&request));
        let reply = match scripted {
            Some(reply) => reply,
            None => self.queue.lock().expect("queue").pop_front().unwrap_or_else(|| {
                Reply::Fail(LlmError::Unavailable { attempts: 1, last: "the fake has no reply scripted".into() })
            }),
        };
        let started = ChatEvent::Started { model: request.model.clone(), provider: "fake".into() };
        let answer = |text: String, tool_calls: Vec<ToolCallRequest>, usage: Usage| {
            let finish = if tool_calls.is_empty() { FinishReason::Stop } else { FinishReason::ToolCalls };
            ChatEvent::Completed(ChatResponse {
                model: request.model.clone(),
                provider: "fake".into(),
                text,
                tool_calls,
                finish,
                usage,
                usage_reported: true,
            })
        };
        let (events, delay, hang) = match reply {
            Reply::Fail(err) => return Err(err),
            Reply::Text { pieces, usage, delay } => {
                let mut events = vec![started];
                events.extend(pieces.iter().map(|p| ChatEvent::Text { text: p.clone() }));
                events.push(answer(pieces.concat(), vec![], usage));
                (events, delay, false)
            }
            Reply::Tools { calls, usage } => {
                let mut events = vec![started];
                for (index, call) in calls.iter().enumerate() {
                    let index = u32::try_from(index).expect("few calls");
                    events.push(ChatEvent::ToolCallStarted { index, id: call.id.clone(), name: call.name.clone() });
                    events.push(ChatEvent::ToolCallArguments { index, fragment: call.arguments.clone() });
                }
                events.push(answer(String::new(), calls, usage));
                (events, Duration::ZERO, false)
            }
            Reply::Hang { text } => (vec![started, ChatEvent::Text { text }], Duration::ZERO, true),
            Reply::Unreported { text } => {
                let response = ChatResponse {
                    model: request.model.clone(),
                    provider: "fake".into(),
                    text: text.clone(),
                    tool_calls: vec![],
                    finish: FinishReason::Stop,
                    usage: Usage::default(),
                    usage_reported: false,
                };
                (vec![started, ChatEvent::Text { text }, ChatEvent::Completed(response)], Duration::ZERO, false)
            }
        };
        Ok(Box::new(FakeStream { events: events.into(), delay, hang, dropped: self.dropped.clone() }))
    }
}

pub(crate) fn prices() -> Vec<ModelPrice> {
    vec![
        ModelPrice { model: "fast-m".into(), input_per_million: 1_000_000, output_per_million: 2_000_000 },
        ModelPrice { model: "big-m".into(), input_per_million: 2_000_000, output_per_million: 3_000_000 },
    ]
}

/// A store, tenant `acme` with a member key and credits, the plugins under [`POLICY`],
/// the orchestrator, and the fake models.
pub(crate) struct Rig {
    pub(crate) _db: TestDb,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) credits: Arc<Credits>,
    pub(crate) tools: Arc<Tools>,
    pub(crate) hub: Arc<EventHub>,
    pub(crate) orchestrator: Orchestrator,
    pub(crate) principal: Principal,
    pub(crate) models: Arc<FakeModels>,
}

impl Rig {
    pub(crate) async fn new(backend: Backend, credits_granted: i64) -> Self {
        let db = TestDb::new(backend).await;
        let store = db.open().await;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let accounts = Accounts::new(store.clone(), clock.clone());
        let tenant = accounts.create_tenant("acme").await.expect("tenant");
        let key = accounts
            .create_key(KeyScope::Tenant { tenant_id: tenant.id.clone(), role: Role::Member }, "member".into(), None)
            .await
            .expect("key");
        let credits = Arc::new(Credits::new(store.clone(), clock.clone()));
        if credits_granted > 0 {
            credits.grant(&tenant.id, credits_granted, "grant-1", "test credits").await.expect("grant");
        }
        let policies = PolicySet::parse([("test.toml", POLICY)]).expect("policy");
        let tools =
            tools_with(&db.dir().join("plugins"), &["personas", "calc", "text"], policies, credits.clone()).await;
        let hub = Arc::new(EventHub::new(store.clone()));
        let orchestrator = Orchestrator::new(store.clone(), store.clone(), clock.clone(), tools.clone(), hub.clone());
        let principal = Principal {
            tenant: "acme".into(),
            tenant_id: tenant.id.clone(),
            role: Role::Member,
            key_id: key.key.id.to_string(),
        };
        Self { _db: db, store, clock, credits, tools, hub, orchestrator, principal, models: FakeModels::new() }
    }

    pub(crate) fn settings() -> RunnerSettings {
        RunnerSettings { cancel_poll: Duration::from_millis(100), ..RunnerSettings::default() }
    }

    pub(crate) fn runner(&self) -> Runner {
        self.runner_with(self.models.clone())
    }

    pub(crate) fn runner_with(&self, models: Arc<dyn ModelProvider>) -> Runner {
        Runner::new(
            RunnerPorts {
                runs: self.store.clone(),
                unit: self.store.clone(),
                tenants: self.store.clone(),
                clock: self.clock.clone(),
                tools: self.tools.clone(),
                credits: self.credits.clone(),
                models,
                prices: prices(),
                hub: self.hub.clone(),
            },
            Self::settings(),
        )
    }

    pub(crate) async fn session(&self, personas: &[&str], strategy: Strategy, limits: RunLimits) -> Session {
        self.orchestrator
            .create_session(
                &self.principal,
                NewSession {
                    title: "t".into(),
                    personas: personas.iter().map(|p| (*p).to_owned()).collect(),
                    strategy,
                    limits: Some(limits),
                },
            )
            .await
            .expect("session")
    }

    pub(crate) async fn post(&self, session: &Session, content: &str) -> Run {
        self.orchestrator.post_message(&self.principal, &session.id, content.into()).await.expect("posted").run
    }

    pub(crate) async fn run(&self, run: &Run) -> Run {
        self.store.run(None, &run.id).await.expect("read").expect("run")
    }

    pub(crate) async fn events(&self, run: &Run) -> Vec<RunEvent> {
        self.store.run_events(&run.id, 0, 10_000).await.expect("events")
    }

    pub(crate) async fn messages(&self, session: &Session) -> Vec<Message> {
        self.store.messages(&self.principal.tenant_id, &session.id, 0, 200).await.expect("messages")
    }

    /// Settled credits (what went to revenue) of the tenant's settlements, and whether
    /// each names the run.
    pub(crate) async fn settled(&self, run: &Run) -> i64 {
        let page = self
            .credits
            .transactions(&self.principal.tenant_id, &TransactionQuery { limit: 500, ..TransactionQuery::default() })
            .await
            .expect("transactions");
        let mut total = 0;
        for t in page.transactions.iter().filter(|t| t.kind == TransactionKind::Settle) {
            assert!(t.memo.contains(&run.id.to_string()), "the ledger names the run: {}", t.memo);
            total += t.entries.iter().filter(|e| e.account == Account::Revenue).map(|e| e.amount).sum::<i64>();
        }
        total
    }

    /// The ledger is consistent and no hold is open.
    pub(crate) async fn assert_ledger_clean(&self) {
        let audit = self.credits.audit().await.expect("audit");
        assert!(audit.is_clean(), "{audit:?}");
        let balance = self.credits.balance(&self.principal.tenant_id).await.expect("balance");
        assert_eq!(balance.held, 0, "no hold is left open");
    }
}

pub(crate) fn kinds(events: &[RunEvent]) -> Vec<&'static str> {
    events.iter().map(|e| e.body.kind()).filter(|k| *k != "message.delta").collect()
}

pub(crate) fn assert_dense(events: &[RunEvent]) {
    for (index, event) in events.iter().enumerate() {
        assert_eq!(event.seq, i64::try_from(index + 1).expect("small"), "seq is dense from 1");
    }
}

pub(crate) fn step_personas(events: &[RunEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::StepStarted { persona, .. } => Some(persona.clone()),
            _ => None,
        })
        .collect()
}

/// The text of each step's deltas, joined per (step, call).
fn delta_text(events: &[RunEvent]) -> HashMap<(u32, u32), String> {
    let mut texts: HashMap<(u32, u32), String> = HashMap::new();
    for event in events {
        if let EventBody::MessageDelta { step, call, text } = &event.body {
            texts.entry((*step, *call)).or_default().push_str(text);
        }
    }
    texts
}

pub(crate) fn limits() -> RunLimits {
    RunLimits::default()
}

async fn sequence_runs_every_persona_once_in_team_order(backend: Backend) {
    let rig = Rig::new(backend, 1_000_000).await;
    rig.models.push([text("the spec is ready", usage(1000, 40)), text("looks fine to me", usage(1200, 30))]);
    let session = rig.session(&[WRITER, CRITIC], Strategy::Sequence, limits()).await;
    let run = rig.post(&session, "an app for bakers").await;
    assert_eq!(rig.runner().execute(&run.id).await.expect("executes"), RunState::Completed);

    let events = rig.events(&run).await;
    assert_dense(&events);
    assert_eq!(
        kinds(&events),
        [
            "run.started",
            "turn.decided",
            "step.started",
            "message.completed",
            "step.completed",
            "turn.decided",
            "step.started",
            "message.completed",
            "step.completed",
            "run.completed"
        ]
    );
    assert_eq!(step_personas(&events), [WRITER, CRITIC]);
    let texts = delta_text(&events);
    assert_eq!(texts[&(1, 1)], "the spec is ready", "deltas carry the whole text");
    let messages = rig.messages(&session).await;
    let contents: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents, ["an app for bakers", "the spec is ready", "looks fine to me"]);
    let requests = rig.models.requests();
    assert_eq!(requests.len(), 2);
    assert!(requests[0].messages[0].content.contains("The idea: an app for bakers"), "rendered with the trigger");
    let critic_sees = &requests[1].messages;
    assert!(
        critic_sees.iter().any(|m| m.content == format!("{WRITER}: the spec is ready")),
        "the critic sees the writer's answer prefixed with its author"
    );
    let stored = rig.run(&run).await;
    assert_eq!(stored.state, RunState::Completed);
    assert_eq!((stored.totals.steps, stored.totals.model_calls), (2, 2));
    assert!(stored.started_at.is_some() && stored.finished_at.is_some());
    // A finished run is left alone.
    assert_eq!(rig.runner().execute(&run.id).await.expect("again"), RunState::Completed);
    assert_eq!(rig.events(&run).await.len(), events.len());
}

async fn round_robin_answers_with_the_persona_after_the_last_speaker(backend: Backend) {
    let rig = Rig::new(backend, 1_000_000).await;
    rig.models.push([text("first", usage(10, 1)), text("second", usage(10, 1)), text("third", usage(10, 1))]);
    let session = rig.session(&[WRITER, CRITIC], Strategy::RoundRobin, limits()).await;
    let mut speakers = Vec::new();
    for question in ["one", "two", "three"] {
        let run = rig.post(&session, question).await;
        assert_eq!(rig.runner().execute(&run.id).await.expect("executes"), RunState::Completed);
        speakers.extend(step_personas(&rig.events(&run).await));
    }
    assert_eq!(speakers, [WRITER, CRITIC, WRITER]);
}

async fn parallel_answers_join_in_team_order(backend: Backend) {
    let rig = Rig::new(backend, 1_000_000).await;
    // The last persona answers first: the join still follows the team's order.
    rig.models.respond(|request| {
        let (answer, delay) = match speaker(request) {
            PM => ("zebra pm", 300),
            ARCHITECT => ("zebra architect", 150),
            CRITIC => ("zebra critic", 0),
            _ => return None,
        };
        Some(Reply::Text { pieces: vec![answer.into()], usage: usage(100, 10), delay: Duration::from_millis(delay) })
    });
    let session = rig.session(&[PM, ARCHITECT, CRITIC], Strategy::Parallel, limits()).await;
    let run = rig.post(&session, "a todo app").await;
    assert_eq!(rig.runner().execute(&run.id).await.expect("executes"), RunState::Completed);
    let events = rig.events(&run).await;
    assert_dense(&events);
    let turns = events.iter().filter(|e| e.body.kind() == "turn.decided").count();
    assert_eq!(turns, 1, "one turn for the whole team");
    let completed: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::StepCompleted { persona, .. } => Some(persona.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(completed, [PM, ARCHITECT, CRITIC], "answers are joined in team order");
    let contents: Vec<String> = rig.messages(&session).await.into_iter().skip(1).map(|m| m.content).collect();
    assert_eq!(contents, ["zebra pm", "zebra architect", "zebra critic"]);
    for request in rig.models.requests() {
        assert!(
            !request.messages.iter().any(|m| m.content.contains("zebra")),
            "each persona answers the same turn without seeing the others"
        );
    }
}

async fn router_decides_each_turn_and_completes_when_satisfied(backend: Backend) {
    let rig = Rig::new(backend, 1_000_000).await;
    rig.models.push([
        decision(Some(CRITIC), false),
        text("it will fail because of x", usage(500, 20)),
        decision(None, true),
    ]);
    let session = rig.session(&[WRITER, CRITIC], Strategy::Router, limits()).await;
    let run = rig.post(&session, "critique my plan").await;
    assert_eq!(rig.runner().execute(&run.id).await.expect("executes"), RunState::Completed);
    let events = rig.events(&run).await;
    assert_dense(&events);
    let decided: Vec<(Vec<String>, bool, bool, Option<String>)> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::TurnDecided { personas, satisfied, fallback, instruction, .. } => {
                Some((personas.clone(), *satisfied, *fallback, instruction.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        decided,
        [(vec![CRITIC.to_owned()], false, false, Some(format!("{CRITIC}, your turn"))), (vec![], true, false, None)]
    );
    let router_answers: Vec<(u32, u32, i64)> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::MessageCompleted { persona, step, call, credits, .. } if persona == "maestro" => {
                Some((*step, *call, *credits))
            }
            _ => None,
        })
        .collect();
    // fast-m: 300 in × 1 + 20 out × 2 = 340 credits per router call.
    assert_eq!(router_answers, [(0, 1, 340), (0, 2, 340)], "the router is paid like any model call");
    let requests = rig.models.requests();
    assert_eq!(requests[0].model, "fast-m", "the router uses the fast tier");
    assert!(requests[0].response_schema.is_some() && requests[0].tools.is_empty());
    assert_eq!(requests[1].model, "big-m", "the critic's tier");
    assert!(
        requests[1].messages.last().is_some_and(|m| m.content.contains("your turn")),
        "the router's instruction reaches the persona"
    );
    assert_eq!(step_personas(&events), [CRITIC]);
}

async fn router_output_invalid_twice_falls_back_to_the_next_persona(backend: Backend) {
    let rig = Rig::new(backend, 1_000_000).await;
    rig.models.push([
        text("I think the writer", usage(300, 5)),
        decision(Some("personas.nobody"), false),
        text("written", usage(100, 5)),
        text("not json either", usage(300, 5)),
        decision(None, true),
    ]);
    let session = rig.session(&[WRITER, CRITIC], Strategy::Router, limits()).await;
    let run = rig.post(&session, "write it").await;
    assert_eq!(rig.runner().execute(&run.id).await.expect("executes"), RunState::Completed);
    let events = rig.events(&run).await;
    let decided: Vec<(Vec<String>, bool)> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::TurnDecided { personas, fallback, .. } => Some((personas.clone(), *fallback)),
            _ => None,
        })
        .collect();
    assert_eq!(
        decided,
        [(vec![WRITER.to_owned()], true), (vec![], false)],
        "two unusable answers fall back to the first persona; one is retried"
    );
    let requests = rig.models.requests();
    assert_eq!(rig.models.calls_to("router"), 4);
    let retry = &requests[1].messages;
    assert!(retry.last().is_some_and(|m| m.content.contains("unusable")), "the retry says why the answer was unusable");
    assert!(requests[4].messages.iter().any(|m| m.content.contains("unusable")), "{:?}", requests[4].messages);
}

async fn tools_outside_policy_are_offered_to_nobody_and_refused_if_called(backend: Backend) {
    let rig = Rig::new(backend, 1_000_000).await;
    rig.models.push([
        Reply::Tools {
            calls: vec![
                tool_call("c1", "text.count", r#"{"text":"a b"}"#),
                tool_call("c2", "calc.evaluate", r#"{"expression":"6 * 7"}"#),
            ],
            usage: usage(900, 30),
        },
        text("the answer is 42", usage(1000, 10)),
    ]);
    let session = rig.session(&[PM], Strategy::Sequence, limits()).await;
    let run = rig.post(&session, "how much is six times seven").await;
    assert_eq!(rig.runner().execute(&run.id).await.expect("executes"), RunState::Completed);
    let requests = rig.models.requests();
    let offered: Vec<&str> = requests[0].tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(offered, ["calc.evaluate", "ask_user"], "the persona's globs AND the tenant's policy, and ask_user");
    let events = rig.events(&run).await;
    let results: Vec<(String, bool, Option<String>)> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::ToolResult(r) => Some((r.tool.clone(), r.ok, r.error.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        results,
        [("text.count".to_owned(), false, Some("not_offered".to_owned())), ("calc.evaluate".to_owned(), true, None)]
    );
    let second = &requests[1].messages;
    let tool_answers: Vec<(&str, bool)> =
        second.iter().filter_map(|m| m.tool_call_id.as_deref().map(|id| (id, m.is_error))).collect();
    assert_eq!(tool_answers, [("c1", true), ("c2", false)], "both calls are answered to the model");
    assert!(second.iter().any(|m| m.tool_call_id.as_deref() == Some("c2") && m.content.contains("42")));
    assert_eq!(rig.run(&run).await.totals.tool_calls, 1, "only the offered call ran");
    let called = events.iter().filter(|e| e.body.kind() == "tool.called").count();
    assert_eq!(called, 2, "every call is recorded before it is answered");
}

async fn credits_charged_equal_reported_usage_times_price(backend: Backend) {
    let rig = Rig::new(backend, 1_000_000).await;
    rig.models.push([
        decision(Some(WRITER), false),
        text("draft one", usage(1234, 57)),
        decision(Some(CRITIC), false),
        text("critique", usage(2001, 99)),
        decision(None, true),
    ]);
    let session = rig.session(&[WRITER, CRITIC], Strategy::Router, limits()).await;
    let run = rig.post(&session, "write and critique").await;
    assert_eq!(rig.runner().execute(&run.id).await.expect("executes"), RunState::Completed);
    // Router (fast-m, 1 and 2 per token): 3 × (300 + 40); personas (big-m, 2 and 3 per token).
    let expected = 3 * 340 + (1234 * 2 + 57 * 3) + (2001 * 2 + 99 * 3);
    assert_eq!(rig.settled(&run).await, expected, "settlements are reported usage × price, exactly");
    let stored = rig.run(&run).await;
    assert_eq!(stored.totals.credits, expected);
    assert_eq!(stored.totals.model_calls, 5);
    assert_eq!(stored.totals.usage.input_tokens, 3 * 300 + 1234 + 2001);
    let balance = rig.credits.balance(&rig.principal.tenant_id).await.expect("balance");
    assert_eq!(balance.available, 1_000_000 - expected);
    rig.assert_ledger_clean().await;
    let events = rig.events(&run).await;
    let from_events: i64 = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::MessageCompleted { credits, .. } => Some(*credits),
            _ => None,
        })
        .sum();
    assert_eq!(from_events, expected);
    let holds = rig
        .credits
        .transactions(&rig.principal.tenant_id, &TransactionQuery { limit: 500, ..TransactionQuery::default() })
        .await
        .expect("transactions")
        .transactions
        .into_iter()
        .filter(|t| t.kind == TransactionKind::Reserve)
        .count();
    assert_eq!(holds, 5, "one hold per model call");
}

async fn insufficient_credits_fail_the_run_before_any_model_call(backend: Backend) {
    let rig = Rig::new(backend, 10).await;
    rig.models.push([text("never", usage(1, 1))]);
    let session = rig.session(&[WRITER], Strategy::Sequence, limits()).await;
    let run = rig.post(&session, "anything").await;
    assert_eq!(rig.runner().execute(&run.id).await.expect("executes"), RunState::Failed);
    assert_eq!(rig.models.requests().len(), 0, "no model was called");
    let stored = rig.run(&run).await;
    assert_eq!(stored.error.as_ref().map(|e| e.code.as_str()), Some("insufficient_credits"));
    let events = rig.events(&run).await;
    assert!(
        matches!(&events.last().expect("events").body, EventBody::RunFailed { error, .. } if error.code == "insufficient_credits")
    );
    rig.assert_ledger_clean().await;
    assert_eq!(rig.credits.balance(&rig.principal.tenant_id).await.expect("balance").available, 10);
}

async fn a_budget_lowers_max_tokens_and_stops_the_run_before_it_is_spent(backend: Backend) {
    let rig = Rig::new(backend, 1_000_000).await;
    rig.models.push([text("first", usage(1500, 200)), text("second", usage(10, 10))]);
    // big-m: 2 per prompt token, 3 per answer token. The writer's prompt is ~2.5k tokens
    // (bound, with the tools offered), so 5,500 credits leave room for fewer than 1,000
    // answer tokens.
    let budget = 5_500;
    let session = rig
        .session(&[WRITER, CRITIC], Strategy::Sequence, RunLimits { credits_budget: Some(budget), ..limits() })
        .await;
    let run = rig.post(&session, "short").await;
    assert_eq!(rig.runner().execute(&run.id).await.expect("executes"), RunState::Failed);
    let requests = rig.models.requests();
    assert_eq!(requests.len(), 1, "the second call does not fit the budget and is never made");
    let max_tokens = requests[0].max_tokens.expect("max_tokens");
    let prompt = maestro_core::llm::prompt_token_bound(&requests[0]);
    assert!(max_tokens < 1000 && max_tokens > 0, "max_tokens lowered to fit the budget: {max_tokens} ({prompt})");
    assert!(i64::from(max_tokens) * 3 + i64::try_from(prompt).expect("small") * 2 <= budget, "the hold fits");
    let stored = rig.run(&run).await;
    assert_eq!(stored.error.as_ref().map(|e| e.code.as_str()), Some("budget_exceeded"));
    assert!(stored.totals.credits <= budget);
    assert_eq!(stored.totals.credits, 1500 * 2 + 200 * 3);
    rig.assert_ledger_clean().await;
}

async fn thirty_two_concurrent_runs_keep_dense_event_logs(backend: Backend) {
    let rig = Rig::new(backend, 10_000_000).await;
    rig.models.respond(|_| {
        let pieces = (0..6).map(|i| format!("piece {i} ")).collect();
        Some(Reply::Text { pieces, usage: usage(50, 12), delay: Duration::from_millis(15) })
    });
    let mut sessions = Vec::new();
    for _ in 0..4 {
        sessions.push(rig.session(&[WRITER, CRITIC], Strategy::Sequence, limits()).await);
    }
    let mut runs = Vec::new();
    for index in 0..32 {
        runs.push(rig.post(&sessions[index % 4], &format!("question {index}")).await);
    }
    // Through the job worker, as `serve` runs them.
    let stop = tokio_util::sync::CancellationToken::new();
    let registry =
        maestro_host::jobs::Registry::default().register(maestro_host::orchestrator::RUN_JOB, Arc::new(rig.runner()));
    let worker = maestro_host::jobs::Worker::new(
        rig.store.clone(),
        rig.clock.clone(),
        registry,
        maestro_host::jobs::WorkerSettings::new(32, Duration::from_secs(60), Duration::from_millis(20)),
    )
    .spawn(stop.clone());
    let waited = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let mut done = 0;
            for run in &runs {
                if rig.run(run).await.state.is_final() {
                    done += 1;
                }
            }
            if done == runs.len() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    stop.cancel();
    worker.await.expect("worker stops");
    assert!(waited.is_ok(), "every run finished");
    for run in &runs {
        assert_eq!(rig.run(run).await.state, RunState::Completed);
        let events = rig.events(run).await;
        assert_dense(&events);
        let texts = delta_text(&events);
        assert_eq!(texts[&(1, 1)], (0..6).map(|i| format!("piece {i} ")).collect::<String>());
    }
    for session in &sessions {
        let events = rig.store.session_events(&session.id, 0, 10_000).await.expect("session events");
        for (index, event) in events.iter().enumerate() {
            assert_eq!(event.session_seq, i64::try_from(index + 1).expect("small"), "session_seq is dense");
        }
        assert_eq!(rig.messages(session).await.len(), 8 * 3, "8 questions, 2 answers each");
    }
    rig.assert_ledger_clean().await;
}

/// Waits until the run has recorded a text delta (its model call is mid-stream).
async fn wait_for_delta(rig: &Rig, run: &Run) {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if rig.events(run).await.iter().any(|e| e.body.kind() == "message.delta") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the model call streams");
}

async fn cancel_mid_stream_ends_the_run_with_no_open_hold(backend: Backend) {
    let rig = Rig::new(backend, 1_000_000).await;
    rig.models.push([Reply::Hang { text: "I am thinking about ".into() }]);
    let session = rig.session(&[WRITER], Strategy::Sequence, limits()).await;
    let run = rig.post(&session, "think forever").await;
    let runner = rig.runner();
    let id = run.id.clone();
    let task = tokio::spawn(async move { runner.execute(&id).await });
    wait_for_delta(&rig, &run).await;
    assert!(rig.credits.balance(&rig.principal.tenant_id).await.expect("balance").held > 0, "a hold is open");
    let cancelled = rig.orchestrator.cancel(&rig.principal, &run.id).await.expect("cancel");
    assert!(cancelled.cancel_requested);
    let state = tokio::time::timeout(Duration::from_secs(10), task).await.expect("ends promptly").expect("joins");
    assert_eq!(state.expect("executes"), RunState::Cancelled);
    assert_eq!(rig.models.dropped.load(Ordering::SeqCst), 1, "the model stream was dropped (connection closed)");
    let events = rig.events(&run).await;
    assert_dense(&events);
    assert_eq!(events.last().map(|e| e.body.kind()), Some("run.cancelled"));
    rig.assert_ledger_clean().await;
    // Idempotent.
    assert_eq!(rig.orchestrator.cancel(&rig.principal, &run.id).await.expect("again").state, RunState::Cancelled);
}

async fn a_cancel_from_another_replica_is_seen_through_the_store(backend: Backend) {
    let rig = Rig::new(backend, 1_000_000).await;
    rig.models.push([Reply::Hang { text: "slowly ".into() }]);
    let session = rig.session(&[WRITER], Strategy::Sequence, limits()).await;
    let run = rig.post(&session, "think forever").await;
    let runner = rig.runner();
    let id = run.id.clone();
    let task = tokio::spawn(async move { runner.execute(&id).await });
    wait_for_delta(&rig, &run).await;
    // Only the store's flag: no hub signal (the runner is on "another" replica).
    rig.store.request_cancel(&rig.principal.tenant_id, &run.id).await.expect("cancel").expect("run");
    let state = tokio::time::timeout(Duration::from_secs(10), task).await.expect("ends promptly").expect("joins");
    assert_eq!(state.expect("executes"), RunState::Cancelled);
    rig.assert_ledger_clean().await;
}

async fn a_taken_over_run_never_repeats_a_recorded_call(backend: Backend) {
    let rig = Rig::new(backend, 1_000_000).await;
    // The product manager calls a tool, then answers; the critic's answer is cut
    // mid-stream by the worker's death.
    rig.models.push([
        Reply::Tools {
            calls: vec![tool_call("c1", "calc.evaluate", r#"{"expression":"2+2"}"#)],
            usage: usage(900, 20),
        },
        text("four it is", usage(1000, 5)),
        Reply::Hang { text: "half of my crit".into() },
    ]);
    let session = rig.session(&[PM, CRITIC], Strategy::Sequence, limits()).await;
    let run = rig.post(&session, "two plus two").await;
    let runner = rig.runner();
    let id = run.id.clone();
    let task = tokio::spawn(async move { runner.execute(&id).await });
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let events = rig.events(&run).await;
            if events.iter().any(|e| matches!(e.body, EventBody::MessageDelta { step: 2, .. })) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the critic streams");
    task.abort();
    let _ = task.await;
    assert!(rig.credits.balance(&rig.principal.tenant_id).await.expect("balance").held > 0, "the dead worker's hold");
    assert_eq!(rig.run(&run).await.state, RunState::Running, "the run is left running");

    // Another worker takes the job over.
    rig.models.push([text("the full critique", usage(1500, 10))]);
    assert_eq!(rig.runner().execute(&run.id).await.expect("resumes"), RunState::Completed);
    assert_eq!(rig.models.calls_to(PM), 2, "the product manager's recorded calls are not asked again");
    assert_eq!(rig.models.calls_to(CRITIC), 2, "the cut call restarts once");
    let events = rig.events(&run).await;
    assert_dense(&events);
    let interrupted: Vec<Option<u32>> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::RunInterrupted { step, .. } => Some(*step),
            _ => None,
        })
        .collect();
    assert_eq!(interrupted, [Some(2)], "the log says which step restarts");
    let tool_results = events.iter().filter(|e| e.body.kind() == "tool.result").count();
    assert_eq!(tool_results, 1, "the tool ran once");
    assert_eq!(events.iter().filter(|e| e.body.kind() == "run.started").count(), 1);
    let contents: Vec<String> = rig.messages(&session).await.into_iter().map(|m| m.content).collect();
    assert_eq!(contents, ["two plus two", "four it is", "the full critique"]);
    // The resumed critic sees the product manager's answer, as the first attempt did.
    let critic_requests: Vec<ChatRequest> =
        rig.models.requests().into_iter().filter(|r| speaker(r) == CRITIC).collect();
    assert_eq!(critic_requests[0].messages, critic_requests[1].messages, "the restarted call is the same call");
    rig.assert_ledger_clean().await;
    let expected = (900 * 2 + 20 * 3) + (1000 * 2 + 5 * 3) + (1500 * 2 + 10 * 3);
    assert_eq!(rig.settled(&run).await, expected);
    assert_eq!(rig.run(&run).await.totals.credits, expected);
}

async fn a_run_interrupted_again_on_its_jobs_last_attempt_fails_instead_of_resuming(backend: Backend) {
    use maestro_host::jobs::JobHandler as _;
    let rig = Rig::new(backend, 1_000_000).await;
    rig.models.push([Reply::Hang { text: "half an answ".into() }]);
    let session = rig.session(&[WRITER], Strategy::Sequence, limits()).await;
    let run = rig.post(&session, "write").await;
    let runner = rig.runner();
    let id = run.id.clone();
    let task = tokio::spawn(async move { runner.execute(&id).await });
    tokio::time::timeout(Duration::from_secs(30), async {
        while !rig.events(&run).await.iter().any(|e| e.body.kind() == "message.delta") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the writer streams");
    task.abort();
    let _ = task.await;

    // The worker claiming the job for the last time does not resume the run again.
    let mut job = rig.store.job_by_key(&format!("run:{}", run.id)).await.expect("job").expect("the run's job");
    assert_eq!(job.max_attempts, maestro_host::orchestrator::RUN_JOB_ATTEMPTS);
    job.attempts = job.max_attempts;
    rig.runner().handle(&job).await.expect("the job ends");
    let stored = rig.run(&run).await;
    assert_eq!(stored.state, RunState::Failed);
    assert_eq!(stored.error.expect("error").code, "worker_lost");
    assert_eq!(rig.models.calls_to(WRITER), 1, "the cut call is not made again");
    let events = rig.events(&run).await;
    assert_dense(&events);
    assert_eq!(events.last().map(|e| e.body.kind()), Some("run.failed"));
    rig.assert_ledger_clean().await;
}

async fn without_a_model_provider_the_run_fails_saying_what_to_configure(backend: Backend) {
    let rig = Rig::new(backend, 1_000_000).await;
    let session = rig.session(&[WRITER], Strategy::Router, limits()).await;
    let run = rig.post(&session, "hello").await;
    let runner = rig.runner_with(Arc::new(maestro_host::llm::NoProvider));
    assert_eq!(runner.execute(&run.id).await.expect("executes"), RunState::Failed);
    let error = rig.run(&run).await.error.expect("error");
    assert_eq!(error.code, "no_model_provider");
    assert!(error.message.contains("[[llm.providers]]"), "{}", error.message);
    rig.assert_ledger_clean().await;
}

async fn a_model_error_fails_the_run_with_its_code_and_voids_the_hold(backend: Backend) {
    let rig = Rig::new(backend, 1_000_000).await;
    rig.models.push([Reply::Fail(LlmError::QuotaExceeded("no more".into()))]);
    let session = rig.session(&[WRITER], Strategy::Sequence, limits()).await;
    let run = rig.post(&session, "hello").await;
    assert_eq!(rig.runner().execute(&run.id).await.expect("executes"), RunState::Failed);
    assert_eq!(rig.run(&run).await.error.map(|e| e.code), Some("model_quota_exceeded".to_owned()));
    rig.assert_ledger_clean().await;
    assert_eq!(rig.credits.balance(&rig.principal.tenant_id).await.expect("balance").available, 1_000_000);
}

async fn a_run_past_its_deadline_fails(backend: Backend) {
    let rig = Rig::new(backend, 1_000_000).await;
    rig.models.push([Reply::Hang { text: "never done ".into() }]);
    let session = rig.session(&[WRITER], Strategy::Sequence, RunLimits { deadline_secs: 1, ..limits() }).await;
    let run = rig.post(&session, "hello").await;
    let state = tokio::time::timeout(Duration::from_secs(15), rig.runner().execute(&run.id)).await.expect("ends");
    assert_eq!(state.expect("executes"), RunState::Failed);
    assert_eq!(rig.run(&run).await.error.map(|e| e.code), Some("deadline_exceeded".to_owned()));
    rig.assert_ledger_clean().await;
}

/// Three personas on the router, through the real model client (`maestro_llm`) against
/// the fake OpenAI-compatible server: the decision is logged, tokens stream, a tool runs
/// in the sandbox under the tenant's policy, the run completes, and the credits charged
/// equal the reported usage at the configured prices.
async fn a_router_run_end_to_end_through_the_openai_client(backend: Backend) {
    use crate::fake_llm::{FakeLlm, Script, model as llm_model};
    use maestro_host::llm::{Llm, ProviderKind};

    let rig = Rig::new(backend, 1_000_000).await;
    let fake = FakeLlm::start().await;
    let decide = |next: Option<&str>| {
        serde_json::json!({ "satisfied": next.is_none(), "next": next, "instruction": next.map(|_| "frame it"), "reason": "r" })
            .to_string()
    };
    fake.push(Script::openai_text(&decide(Some(PM)), usage(700, 30)));
    fake.push(Script::openai_tool_calls(&[("call_1", "calc.evaluate", r#"{"expression":"12*12"}"#)], usage(2100, 25)));
    fake.push(Script::openai_text("Twelve dozen is 144, so the market is small.", usage(2300, 14)));
    fake.push(Script::openai_text(&decide(None), usage(900, 28)));
    let mut fast = llm_model("fast-m", "fake", &[]);
    fast.tier = ModelTier::Small;
    let mut big = llm_model("big-m", "fake", &[]);
    big.tier = ModelTier::Large;
    big.context_window = 64_000;
    fast.context_window = 64_000;
    let llm = Llm::new(vec![fake.provider("fake", ProviderKind::OpenAi)], vec![fast, big]).expect("llm");
    let session = rig.session(&[PM, ARCHITECT, CRITIC], Strategy::Router, limits()).await;
    let run = rig.post(&session, "a market for calculators").await;
    assert_eq!(rig.runner_with(Arc::new(llm)).execute(&run.id).await.expect("executes"), RunState::Completed);

    let events = rig.events(&run).await;
    assert_dense(&events);
    assert_eq!(
        kinds(&events),
        [
            "run.started",
            "message.completed",
            "turn.decided",
            "step.started",
            "message.completed",
            "tool.called",
            "tool.result",
            "message.completed",
            "step.completed",
            "message.completed",
            "turn.decided",
            "run.completed"
        ]
    );
    let result = events.iter().find_map(|e| match &e.body {
        EventBody::ToolResult(r) => Some(r.clone()),
        _ => None,
    });
    let result = result.expect("tool result");
    assert!(result.ok && result.content.contains("144"), "{result:?}");
    assert_eq!(delta_text(&events)[&(1, 2)], "Twelve dozen is 144, so the market is small.");
    let expected = (700 + 30 * 2) + (2100 * 2 + 25 * 3) + (2300 * 2 + 14 * 3) + (900 + 28 * 2);
    assert_eq!(rig.settled(&run).await, expected);
    assert_eq!(rig.run(&run).await.totals.credits, expected);
    rig.assert_ledger_clean().await;
    let requests = fake.requests();
    assert_eq!(requests.len(), 4);
    assert!(requests[0].body["response_format"].is_object(), "the router asks for structured output");
    assert_eq!(requests[1].body["model"], "upstream-big-m");
    let tools = requests[1].body["tools"].as_array().map(Vec::len);
    assert_eq!(tools, Some(2), "calc and ask_user offered: {}", requests[1].body["tools"]);
    let last = requests[2].body["messages"].as_array().and_then(|m| m.last()).cloned().unwrap_or_default();
    assert_eq!(last["role"], "tool", "the tool's result goes back to the model");
}

/// What a worker that died after announcing a tool call (and before its result) leaves
/// in the store, written as that worker would have; the next worker answers the call
/// to the model as interrupted and never runs it again.
async fn a_tool_call_cut_by_a_dead_worker_is_answered_interrupted_not_run_again(backend: Backend) {
    let rig = Rig::new(backend, 1_000_000).await;
    let session = rig.session(&[PM], Strategy::Sequence, limits()).await;
    let run = rig.post(&session, "one plus one").await;
    let call = tool_call("c1", "calc.evaluate", r#"{"expression":"1+1"}"#);
    let mut running = rig.run(&run).await;
    running.state = RunState::Running;
    running.started_at = Some(rig.clock.now());
    let bodies = vec![
        EventBody::RunStarted {
            trigger: run.trigger.clone(),
            strategy: Strategy::Sequence,
            personas: vec![PM.into()],
            limits: limits(),
        },
        EventBody::TurnDecided {
            turn: 1,
            personas: vec![PM.into()],
            instruction: None,
            reason: "sequence".into(),
            satisfied: false,
            fallback: false,
        },
        EventBody::StepStarted {
            step: 1,
            turn: 1,
            persona: PM.into(),
            model: "big-m".into(),
            tools: vec!["calc.evaluate".into()],
            context_messages: 1,
            trimmed_messages: 0,
        },
        EventBody::MessageCompleted {
            step: 1,
            call: 1,
            persona: PM.into(),
            model: "big-m".into(),
            text: String::new(),
            tool_calls: vec![call.clone()],
            finish: FinishReason::ToolCalls,
            usage: usage(900, 20),
            credits: 0,
            message: None,
        },
        EventBody::ToolCalled {
            step: 1,
            call: 1,
            call_id: "c1".into(),
            tool: "calc.evaluate".into(),
            arguments: call.arguments.clone(),
        },
    ];
    let mut tx = rig.store.begin().await.expect("begin");
    tx.update_run(&running).await.expect("running");
    for body in bodies {
        let event =
            maestro_core::run::NewEvent { run: run.id.clone(), session: session.id.clone(), at: rig.clock.now(), body };
        tx.append_event(&event).await.expect("append");
    }
    tx.commit().await.expect("commit");

    rig.models.push([text("it is two", usage(1000, 5))]);
    assert_eq!(rig.runner().execute(&run.id).await.expect("resumes"), RunState::Completed);
    assert_eq!(rig.models.requests().len(), 1, "the recorded model call is not asked again");
    let events = rig.events(&run).await;
    assert_dense(&events);
    let results: Vec<(bool, Option<String>)> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::ToolResult(r) => Some((r.ok, r.error.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(results, [(false, Some("interrupted".to_owned()))], "the cut call is never run twice");
    let request = &rig.models.requests()[0];
    let answered = request.messages.iter().find(|m| m.tool_call_id.as_deref() == Some("c1")).expect("answered");
    assert!(answered.is_error && answered.content.contains("interrupted"), "{answered:?}");
    assert!(
        request.messages.iter().any(|m| m.tool_calls == vec![call.clone()]),
        "the recorded answer is replayed into the conversation"
    );
    assert_eq!(rig.messages(&session).await.last().map(|m| m.content.clone()), Some("it is two".into()));
}

/// `kill -9` of a real `maestro serve` mid-stream: a second server takes the run over
/// when the job's lease expires, records `run.interrupted`, restarts the cut call only,
/// and completes; the ledger keeps no open hold.
async fn a_killed_server_s_run_is_taken_over_by_the_next(backend: Backend) {
    use crate::fake_llm::{FakeLlm, Script};
    use crate::server::{Server, maestro};
    use maestro_host::llm::ProviderKind;
    use reqwest::{Method, StatusCode};

    let db = TestDb::new(backend).await;
    let fake = FakeLlm::start().await;
    let (plugins, policies) = (db.dir().join("plugins"), db.dir().join("policies"));
    crate::fixtures::install(&plugins, "personas");
    crate::fixtures::install(&plugins, "calc");
    std::fs::create_dir_all(&policies).expect("policy dir");
    std::fs::write(policies.join("team.toml"), POLICY).expect("policy");
    let config = db.dir().join("maestro.toml");
    let text = format!(
        "[jobs]\nlease = \"2s\"\npoll_interval = \"100ms\"\n\n\
         [[credits.models]]\nmodel = \"big-m\"\ninput_per_million = 2000000\noutput_per_million = 3000000\n\n\
         {}\n[[llm.models]]\nid = \"big-m\"\nprovider = \"fake\"\nmodel = \"upstream-big-m\"\ntier = \"best\"\n\
         context_window = 64000\nmax_output_tokens = 1000\n",
        fake.provider_toml("fake", ProviderKind::OpenAi)
    );
    std::fs::write(&config, text).expect("config");
    let command = || {
        let mut command = maestro(&db, backend);
        command.env("MAESTRO_PLUGIN_DIR", &plugins).env("MAESTRO_POLICY_DIR", &policies).env("MAESTRO_CONFIG", &config);
        // Every model request is counted: no distillation after the run.
        command.env("MAESTRO_MEMORY_DISTIL", "false");
        // The test reads the server's store too (SQLite: the same file).
        command.env("MAESTRO_DATABASE_URL", &db.url);
        command
    };
    let mut first = Server::start(command(), &db.dir(), 1).await;
    let platform = first.bootstrap_token();
    let (status, _) =
        first.call(Method::POST, "/v1/tenants", &platform, Some(serde_json::json!({ "name": "acme" }))).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, member) = first
        .call(Method::POST, "/v1/keys", &platform, Some(serde_json::json!({ "tenant": "acme", "role": "member" })))
        .await;
    let member = member["token"].as_str().expect("token").to_owned();
    let store = db.open().await;
    let tenant = store
        .tenant_by_name(&maestro_core::TenantName::parse("acme").expect("name"))
        .await
        .expect("read")
        .expect("tenant");
    let credits = Credits::new(store.clone(), Arc::new(SystemClock));
    credits.grant(&tenant.id, 1_000_000, "grant-1", "test").await.expect("grant");

    fake.push(Script::openai_text("the framing is done", usage(1800, 6)));
    // The critic's answer stops after a few pieces and never ends: the server dies.
    fake.push(Script::openai_text("a long critique that never finishes", usage(1, 1)).await_close_after(4));
    let (status, session) = first
        .call(
            Method::POST,
            "/v1/sessions",
            &member,
            Some(serde_json::json!({ "personas": [PM, CRITIC], "strategy": "sequence" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{session}");
    let session_id = session["id"].as_str().expect("id").to_owned();
    let (status, posted) = first
        .call(
            Method::POST,
            &format!("/v1/sessions/{session_id}/messages"),
            &member,
            Some(serde_json::json!({ "content": "a market for calculators" })),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{posted}");
    let run_id = maestro_core::run::RunId::parse(posted["run"]["id"].as_str().expect("run id")).expect("run id");
    let cut = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let events = store.run_events(&run_id, 0, 1000).await.expect("events");
            if events.iter().any(|e| matches!(e.body, EventBody::MessageDelta { step: 2, .. })) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(cut.is_ok(), "the critic never streamed:\n{}", first.stderr_text());
    let pid = first.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-KILL", &pid]).status().expect("kill").success());
    first.child.wait().expect("the killed server is reaped");
    assert!(credits.balance(&tenant.id).await.expect("balance").held > 0, "the dead server's hold is open");

    fake.push(Script::openai_text("the full critique", usage(2000, 9)));
    let second = Server::start(command(), &db.dir(), 2).await;
    let finished = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let run = store.run(None, &run_id).await.expect("read").expect("run");
            if run.state.is_final() {
                return run;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let Ok(run) = finished else { panic!("the run was not taken over:\n{}", second.stderr_text()) };
    assert_eq!(run.state, RunState::Completed, "{:?}", run.error);
    assert_eq!(fake.request_count(), 3, "only the cut call was asked again");
    let events = store.run_events(&run_id, 0, 1000).await.expect("events");
    assert_dense(&events);
    let interrupted: Vec<Option<u32>> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::RunInterrupted { step, .. } => Some(*step),
            _ => None,
        })
        .collect();
    assert_eq!(interrupted, [Some(2)]);
    let messages = store.messages(&tenant.id, &run.session, 0, 100).await.expect("messages");
    let contents: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents, ["a market for calculators", "the framing is done", "the full critique"]);
    assert_eq!(run.totals.credits, (1800 * 2 + 6 * 3) + (2000 * 2 + 9 * 3));
    assert_eq!(credits.balance(&tenant.id).await.expect("balance").held, 0, "no hold is left open");
    assert!(credits.audit().await.expect("audit").is_clean());
    second.stop().await;
}

/// A run cancelled while its worker is dead ends cancelled at takeover, and the hold the
/// dead worker left open goes back at once (not when it expires).
async fn a_dead_worker_s_hold_is_voided_when_its_cancelled_run_is_taken_over(backend: Backend) {
    let rig = Rig::new(backend, 1_000_000).await;
    rig.models.push([Reply::Hang { text: "half ".into() }]);
    let session = rig.session(&[WRITER], Strategy::Sequence, limits()).await;
    let run = rig.post(&session, "hello").await;
    let runner = rig.runner();
    let id = run.id.clone();
    let task = tokio::spawn(async move { runner.execute(&id).await });
    wait_for_delta(&rig, &run).await;
    task.abort();
    let _ = task.await;
    assert!(rig.credits.balance(&rig.principal.tenant_id).await.expect("balance").held > 0);
    rig.store.request_cancel(&rig.principal.tenant_id, &run.id).await.expect("cancel").expect("run");
    assert_eq!(rig.runner().execute(&run.id).await.expect("takes over"), RunState::Cancelled);
    assert_eq!(rig.models.requests().len(), 1, "nothing is asked again");
    let events = rig.events(&run).await;
    assert_dense(&events);
    assert_eq!(events.last().map(|e| e.body.kind()), Some("run.cancelled"));
    rig.assert_ledger_clean().await;
}

/// Past the step's tool-call limit, calls are answered `tool_limit` without running and
/// the model is asked once more with no tools, so the step ends in text.
async fn past_the_tool_limit_calls_are_refused_and_the_model_answers_without_tools(backend: Backend) {
    let rig = Rig::new(backend, 1_000_000).await;
    rig.models.push([
        Reply::Tools {
            calls: vec![
                tool_call("c1", "calc.evaluate", r#"{"expression":"1+1"}"#),
                tool_call("c2", "calc.evaluate", r#"{"expression":"2+2"}"#),
            ],
            usage: usage(900, 20),
        },
        text("two and four", usage(1000, 5)),
    ]);
    let session = rig.session(&[PM], Strategy::Sequence, RunLimits { max_tool_calls_per_step: 1, ..limits() }).await;
    let run = rig.post(&session, "sums").await;
    assert_eq!(rig.runner().execute(&run.id).await.expect("executes"), RunState::Completed);
    let events = rig.events(&run).await;
    let results: Vec<(String, bool, Option<String>)> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::ToolResult(r) => Some((r.call_id.clone(), r.ok, r.error.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(results, [("c1".to_owned(), true, None), ("c2".to_owned(), false, Some("tool_limit".to_owned()))]);
    let requests = rig.models.requests();
    assert_eq!(requests.len(), 2);
    assert!(!requests[0].tools.is_empty() && requests[1].tools.is_empty(), "the last call offers no tools");
    assert_eq!(rig.run(&run).await.totals.tool_calls, 1);
}

/// The oldest messages are left out to fit the model's window, and the step says how many.
async fn the_oldest_messages_are_trimmed_to_fit_the_window(backend: Backend) {
    let rig = Rig::new(backend, 1_000_000).await;
    let session = rig.session(&[WRITER], Strategy::RoundRobin, limits()).await;
    let first = rig.post(&session, &"a".repeat(3500)).await;
    rig.models.push([text("noted", usage(10, 1))]);
    assert_eq!(rig.runner().execute(&first.id).await.expect("executes"), RunState::Completed);

    // A model whose window (8,000 tokens after its 1,000-token answer) holds the system
    // prompt (with at most 2,000 characters of the question) and the newest messages,
    // but not the 3,500-byte first one as well.
    let small = Arc::new(FakeModels {
        models: vec![ModelInfo { context_window: 9000, ..model("big-m", ModelTier::Large) }],
        queue: Mutex::default(),
        responder: Mutex::default(),
        requests: Mutex::default(),
        dropped: Arc::default(),
    });
    small.push([text("trimmed", usage(10, 1))]);
    let second = rig.post(&session, &"b".repeat(3500)).await;
    assert_eq!(rig.runner_with(small.clone()).execute(&second.id).await.expect("executes"), RunState::Completed);
    let events = rig.events(&second).await;
    let counts = events.iter().find_map(|e| match &e.body {
        EventBody::StepStarted { context_messages, trimmed_messages, .. } => {
            Some((*context_messages, *trimmed_messages))
        }
        _ => None,
    });
    assert_eq!(counts, Some((2, 1)), "the first message is trimmed, the answer and the question kept");
    let request = &small.requests()[0];
    assert!(!request.messages.iter().any(|m| m.content.contains("aaaa")), "the trimmed message is not sent");
    assert!(request.messages.iter().any(|m| m.content.contains("bbbb")));
    assert!(maestro_core::llm::prompt_token_bound(request) <= 8000);
}

/// A server without structured output refuses the router's schema: the router is asked
/// again without it (the prompt asks for the same JSON) and the run goes on.
async fn a_router_refused_its_schema_asks_again_without_it(backend: Backend) {
    let rig = Rig::new(backend, 1_000_000).await;
    rig.models.push([
        Reply::Fail(LlmError::Refused { status: 400, message: "response_format is not supported".into() }),
        decision(None, true),
    ]);
    let session = rig.session(&[WRITER, CRITIC], Strategy::Router, limits()).await;
    let run = rig.post(&session, "nothing to do").await;
    assert_eq!(rig.runner().execute(&run.id).await.expect("executes"), RunState::Completed);
    let requests = rig.models.requests();
    assert_eq!(requests.len(), 2);
    assert!(requests[0].response_schema.is_some() && requests[1].response_schema.is_none());
    rig.assert_ledger_clean().await;
}

/// A provider that reports no usage is charged the safe estimate, never nothing.
async fn a_call_without_reported_usage_is_charged_its_estimate(backend: Backend) {
    let rig = Rig::new(backend, 1_000_000).await;
    rig.models.push([Reply::Unreported { text: "no usage here".into() }]);
    let session = rig.session(&[WRITER], Strategy::Sequence, limits()).await;
    let run = rig.post(&session, "hello").await;
    assert_eq!(rig.runner().execute(&run.id).await.expect("executes"), RunState::Completed);
    let prompt = i64::try_from(maestro_core::llm::prompt_token_bound(&rig.models.requests()[0])).expect("small");
    let expected = prompt * 2 + i64::try_from("no usage here".len()).expect("small") * 3;
    assert_eq!(rig.settled(&run).await, expected);
    assert_eq!(rig.run(&run).await.totals.usage.output_tokens, 13, "the estimate is the recorded usage");
    rig.assert_ledger_clean().await;
}

backend_tests!(
    sequence_runs_every_persona_once_in_team_order,
    round_robin_answers_with_the_persona_after_the_last_speaker,
    parallel_answers_join_in_team_order,
    router_decides_each_turn_and_completes_when_satisfied,
    router_output_invalid_twice_falls_back_to_the_next_persona,
    tools_outside_policy_are_offered_to_nobody_and_refused_if_called,
    credits_charged_equal_reported_usage_times_price,
    insufficient_credits_fail_the_run_before_any_model_call,
    a_budget_lowers_max_tokens_and_stops_the_run_before_it_is_spent,
    thirty_two_concurrent_runs_keep_dense_event_logs,
    cancel_mid_stream_ends_the_run_with_no_open_hold,
    a_cancel_from_another_replica_is_seen_through_the_store,
    a_taken_over_run_never_repeats_a_recorded_call,
    a_run_interrupted_again_on_its_jobs_last_attempt_fails_instead_of_resuming,
    without_a_model_provider_the_run_fails_saying_what_to_configure,
    a_model_error_fails_the_run_with_its_code_and_voids_the_hold,
    a_run_past_its_deadline_fails,
    a_router_run_end_to_end_through_the_openai_client,
    a_tool_call_cut_by_a_dead_worker_is_answered_interrupted_not_run_again,
    a_killed_server_s_run_is_taken_over_by_the_next,
    a_dead_worker_s_hold_is_voided_when_its_cancelled_run_is_taken_over,
    past_the_tool_limit_calls_are_refused_and_the_model_answers_without_tools,
    the_oldest_messages_are_trimmed_to_fit_the_window,
    a_router_refused_its_schema_asks_again_without_it,
    a_call_without_reported_usage_is_charged_its_estimate,
);
