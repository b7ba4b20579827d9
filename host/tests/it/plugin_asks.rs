//! A plugin tool that asks the user (`maestro:plugin/user.ask`) inside a run: nobody can
//! be asked mid-call, so the call ends with needs-input (charged nothing, no result
//! recorded) and the run waits (`waiting_input`, `clarification.requested` with the
//! question, the answer's schema and the tool call); the answer — checked against the
//! schema — queues the run, and the same tool call runs again with the answers it was
//! given replayed by position and digest; several questions are asked one at a time.
//! Nothing recorded is made again (counting fakes), also when the answer and the resume
//! happen in a fresh process's objects over the same database; a decline reaches the
//! plugin as a decline; an unanswered question expires. Real plugins (`conformance`,
//! `calc`) in the real sandbox, on SQLite and Postgres.

use std::sync::Arc;
use std::time::Duration;

use maestro_core::llm::ChatRequest;
use maestro_core::policy::PolicySet;
use maestro_core::run::{AnswerAction, Asker, EventBody, RunEvent, RunLimits, RunState, Strategy};
use maestro_host::config::ModelPrice;
use maestro_host::credits::Credits;
use maestro_host::orchestrator::hub::EventHub;
use maestro_host::orchestrator::{AnswerInput, Orchestrator, OrchestratorError, Runner, RunnerPorts, RunnerSettings};
use maestro_host::plugins::PluginRegistry;
use maestro_host::policy::PolicyStore;
use maestro_host::tools::{SecretValues, Tools};
use serde_json::{Value, json};

use crate::harness::{Backend, backend_tests, tools_with};
use crate::orchestrator::{Reply, Rig, assert_dense, kinds, limits, prices, text, tool_call, usage};

/// The persona of the `conformance` fixture that may call its tools.
const ASKER: &str = "conformance.test_asker";

const POLICY: &str = r#"
version = 1

[[grant]]
name = "acme"
subjects = ["tenant:acme"]
tools = ["conformance.*", "calc.*"]
"#;

/// Tools over `conformance` and `calc`, and the orchestrator over them, on `rig`'s store.
async fn with_asking_plugins(rig: Rig) -> Rig {
    let policies = PolicySet::parse([("asks.toml", POLICY)]).expect("policy");
    let dir = rig._db.dir().join("asking-plugins");
    let tools = tools_with(&dir, &["conformance", "calc"], policies, rig.credits.clone()).await;
    let orchestrator =
        Orchestrator::new(rig.store.clone(), rig.store.clone(), rig.clock.clone(), tools.clone(), rig.hub.clone());
    Rig { tools, orchestrator, ..rig }
}

/// What a restarted server has: a new store handle, credits, tools, hub and
/// orchestrator over the same database (the tenant, key and model fakes kept).
async fn restarted(rig: Rig) -> Rig {
    let Rig { _db, clock, principal, models, .. } = rig;
    let store = _db.open().await;
    let credits = Arc::new(Credits::new(store.clone(), clock.clone()));
    let hub = Arc::new(EventHub::new(store.clone()));
    let policies = PolicySet::parse([("asks.toml", POLICY)]).expect("policy");
    let tools =
        tools_with(&_db.dir().join("asking-plugins-2"), &["conformance", "calc"], policies, credits.clone()).await;
    let orchestrator = Orchestrator::new(store.clone(), store.clone(), clock.clone(), tools.clone(), hub.clone());
    Rig { _db, store, clock, credits, tools, hub, orchestrator, principal, models }
}

/// [`with_asking_plugins`] whose tools may ask `rig`'s model fakes for completions at
/// `prices` (policy: the `balanced` tier, 100 tokens a completion).
async fn with_models(rig: Rig, prices: Vec<ModelPrice>) -> Rig {
    let policy = format!("{POLICY}model_tiers = [\"balanced\"]\nmodel_max_tokens = 100\n");
    let policies = PolicySet::parse([("asks.toml", policy.as_str())]).expect("policy");
    let dir = rig._db.dir().join("model-plugins");
    for plugin in ["conformance", "calc"] {
        crate::fixtures::install(&dir, plugin);
    }
    let registry = Arc::new(PluginRegistry::new(crate::fixtures::sandbox(), dir.clone()));
    registry.refresh().await;
    let tools = Tools::new(
        registry,
        Arc::new(PolicyStore::fixed(policies)),
        SecretValues::new(Default::default(), dir.join("no-secrets")),
    )
    .with_credits(rig.credits.clone())
    .with_models(rig.models.clone(), prices);
    let tools = Arc::new(tools);
    let orchestrator =
        Orchestrator::new(rig.store.clone(), rig.store.clone(), rig.clock.clone(), tools.clone(), rig.hub.clone());
    Rig { tools, orchestrator, ..rig }
}

fn runner(rig: &Rig, settings: RunnerSettings) -> Runner {
    runner_priced(rig, settings, prices())
}

fn runner_priced(rig: &Rig, settings: RunnerSettings, prices: Vec<ModelPrice>) -> Runner {
    Runner::new(
        RunnerPorts {
            runs: rig.store.clone(),
            unit: rig.store.clone(),
            tenants: rig.store.clone(),
            clock: rig.clock.clone(),
            tools: rig.tools.clone(),
            credits: rig.credits.clone(),
            models: rig.models.clone(),
            prices,
            hub: rig.hub.clone(),
        },
        settings,
    )
}

fn tool_answers(request: &ChatRequest) -> Vec<(String, String)> {
    request.messages.iter().filter_map(|m| m.tool_call_id.as_ref().map(|id| (id.clone(), m.content.clone()))).collect()
}

fn calls_of(events: &[RunEvent], call_id: &str) -> (usize, usize) {
    let called = events.iter().filter(|e| matches!(&e.body, EventBody::ToolCalled { call_id: c, .. } if c == call_id));
    let results = events.iter().filter(|e| matches!(&e.body, EventBody::ToolResult(r) if r.call_id == call_id));
    (called.count(), results.count())
}

fn last_question(events: &[RunEvent]) -> (Asker, String, Vec<String>, bool) {
    match events.last().map(|e| e.body.clone()) {
        Some(EventBody::ClarificationRequested { asker, question, choices, free_text, .. }) => {
            (asker, question, choices, free_text)
        }
        other => panic!("the run's last event is its question, not {other:?}"),
    }
}

fn form(value: serde_json::Value) -> AnswerInput {
    AnswerInput::Form { action: AnswerAction::Accept, form: Some(value) }
}

async fn a_plugin_question_waits_and_the_same_call_runs_again_with_the_answer_after_a_restart(backend: Backend) {
    let rig = with_asking_plugins(Rig::new(backend, 1_000_000).await).await;
    rig.models.push([Reply::Tools {
        calls: vec![
            tool_call("c1", "calc.evaluate", r#"{"expression":"6 * 7"}"#),
            tool_call("c2", "conformance.test_elicitation", r#"{"message":"Who are you?"}"#),
        ],
        usage: usage(900, 30),
    }]);
    let session = rig.session(&[ASKER], Strategy::Sequence, limits()).await;
    let run = rig.post(&session, "sign me up").await;
    assert_eq!(rig.runner().execute(&run.id).await.expect("executes"), RunState::WaitingInput);

    let events = rig.events(&run).await;
    let all = kinds(&events);
    assert_eq!(all[all.len() - 4..], ["tool.called", "tool.result", "tool.called", "clarification.requested"]);
    assert_eq!(calls_of(&events, "c2"), (1, 0), "an attempt that asked records no result");
    let (asker, question, choices, free_text) = last_question(&events);
    assert_eq!((question.as_str(), choices.is_empty(), free_text), ("Who are you?", true, true));
    let Asker::Tool { persona, step, call_id, tool, index, schema } = asker else { panic!("a tool asks: {asker:?}") };
    assert_eq!(
        (persona.as_str(), step, call_id.as_str(), tool.as_str(), index),
        (ASKER, 1, "c2", "conformance.test_elicitation", 0)
    );
    assert_eq!(schema["required"], json!(["username", "email"]));
    let waiting = rig.run(&run).await;
    assert_eq!((waiting.state, waiting.totals.tool_calls), (RunState::WaitingInput, 1));
    let pending = rig.orchestrator.pending_question(&waiting).await.expect("read").expect("an open question");
    assert!(matches!(pending.asker, Asker::Tool { .. }));
    rig.assert_ledger_clean().await;

    // Answers that do not fit the schema are refused and write nothing.
    let before = events.len();
    for wrong in [
        AnswerInput::Text("ada".into()),
        form(json!({ "username": "ada" })),
        form(json!({ "username": "ada", "email": 7 })),
        form(json!("ada")),
        AnswerInput::Form { action: AnswerAction::Accept, form: None },
        AnswerInput::Form { action: AnswerAction::Decline, form: Some(json!({ "username": "ada" })) },
    ] {
        let refused = rig.orchestrator.answer(&rig.principal, &run.id, wrong.clone()).await;
        assert!(matches!(refused, Err(OrchestratorError::InvalidAnswer(_))), "{wrong:?}: {refused:?}");
    }
    assert_eq!(rig.events(&run).await.len(), before, "a refused answer writes nothing");

    // The server restarts while the run waits: the answer and the resume happen in new
    // objects over the same database.
    let rig = restarted(rig).await;
    let answer = json!({ "username": "ada", "email": "ada@example.com" });
    let answered = rig.orchestrator.answer(&rig.principal, &run.id, form(answer)).await.expect("answers");
    assert_eq!(answered.state, RunState::Queued);
    rig.models.push([text("Welcome, ada.", usage(1000, 10))]);
    assert_eq!(rig.runner().execute(&run.id).await.expect("resumes"), RunState::Completed);

    let requests = rig.models.requests();
    assert_eq!(requests.len(), 2, "the recorded model call is not made again");
    let answers = tool_answers(&requests[1]);
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert!(answers[0].0 == "c1" && answers[0].1.contains("42"), "{answers:?}");
    assert_eq!(answers[1].0, "c2");
    assert!(
        answers[1].1.starts_with("User response: <action: accept, content: ")
            && answers[1].1.contains("ada@example.com"),
        "the plugin got the answer: {answers:?}"
    );
    let events = rig.events(&run).await;
    assert_dense(&events);
    assert_eq!(calls_of(&events, "c1"), (1, 1), "the completed tool call is not run again");
    assert_eq!(calls_of(&events, "c2"), (2, 1), "the asking call ran twice: asked, then answered");
    assert_eq!(events.iter().filter(|e| e.body.kind() == "run.interrupted").count(), 0);
    let all = kinds(&events);
    assert_eq!(
        all[all.len() - 7..],
        [
            "clarification.requested",
            "clarification.answered",
            "tool.called",
            "tool.result",
            "message.completed",
            "step.completed",
            "run.completed"
        ]
    );
    let done = rig.run(&run).await;
    assert_eq!((done.totals.model_calls, done.totals.tool_calls), (2, 2));
    rig.assert_ledger_clean().await;
}

async fn several_questions_are_asked_one_at_a_time_and_a_decline_reaches_the_plugin(backend: Backend) {
    let rig = with_asking_plugins(Rig::new(backend, 1_000_000).await).await;
    let session = rig.session(&[ASKER], Strategy::Sequence, limits()).await;
    let asks =
        || Reply::Tools { calls: vec![tool_call("c1", "conformance.test_two_questions", "{}")], usage: usage(100, 5) };
    rig.models.push([asks()]);
    let run = rig.post(&session, "first").await;
    assert_eq!(rig.runner().execute(&run.id).await.expect("executes"), RunState::WaitingInput);
    let (asker, question, _, free_text) = last_question(&rig.events(&run).await);
    assert!(matches!(asker, Asker::Tool { index: 0, .. }) && question == "Your name?" && free_text, "{asker:?}");
    // A form of one field takes a text answer.
    rig.orchestrator.answer(&rig.principal, &run.id, AnswerInput::Text("Ada".into())).await.expect("answers");
    assert_eq!(rig.runner().execute(&run.id).await.expect("asks again"), RunState::WaitingInput);
    let (asker, question, choices, free_text) = last_question(&rig.events(&run).await);
    assert!(matches!(asker, Asker::Tool { index: 1, .. }), "the second question: {asker:?}");
    assert_eq!(
        (question.as_str(), choices.as_slice(), free_text),
        ("Which plan?", &["free".to_owned(), "pro".to_owned()][..], false)
    );
    let gold = rig.orchestrator.answer(&rig.principal, &run.id, AnswerInput::Text("gold".into())).await;
    assert!(matches!(gold, Err(OrchestratorError::InvalidAnswer(_))), "not one of the enum: {gold:?}");
    rig.orchestrator.answer(&rig.principal, &run.id, AnswerInput::Choice("pro".into())).await.expect("answers");
    rig.models.push([text("ok", usage(100, 5))]);
    assert_eq!(rig.runner().execute(&run.id).await.expect("resumes"), RunState::Completed);
    let events = rig.events(&run).await;
    assert_eq!(calls_of(&events, "c1"), (3, 1), "three attempts, one result");
    let result = events.iter().find_map(|e| match &e.body {
        EventBody::ToolResult(r) if r.call_id == "c1" => Some(r.content.clone()),
        _ => None,
    });
    assert_eq!(result.as_deref(), Some(r#"name="Ada", plan="pro" (accept)"#), "the first answer was replayed");
    assert_eq!(rig.models.requests().len(), 2, "no model call is made again");

    // Declined: the plugin sees the decline.
    rig.models.push([asks()]);
    let run = rig.post(&session, "second").await;
    assert_eq!(rig.runner().execute(&run.id).await.expect("executes"), RunState::WaitingInput);
    let decline = AnswerInput::Form { action: AnswerAction::Decline, form: None };
    rig.orchestrator.answer(&rig.principal, &run.id, decline).await.expect("declines");
    rig.models.push([text("fine", usage(100, 5))]);
    assert_eq!(rig.runner().execute(&run.id).await.expect("resumes"), RunState::Completed);
    let declined = rig.events(&run).await.iter().find_map(|e| match &e.body {
        EventBody::ToolResult(r) if r.call_id == "c1" => Some(r.content.clone()),
        _ => None,
    });
    assert_eq!(declined.as_deref(), Some("no name (decline)"));

    // Unanswered: the wait expires like an `ask_user` question's.
    let quick = runner(&rig, RunnerSettings { wait_timeout: Duration::ZERO, ..Rig::settings() });
    rig.models.push([asks()]);
    let run = rig.post(&session, "third").await;
    assert_eq!(quick.execute(&run.id).await.expect("executes"), RunState::WaitingInput);
    let late = rig.orchestrator.answer(&rig.principal, &run.id, AnswerInput::Text("Ada".into())).await;
    assert!(matches!(late, Err(OrchestratorError::NotWaiting { state: "expired", .. })), "{late:?}");
    assert_eq!(rig.run(&run).await.state, RunState::Expired);
    rig.assert_ledger_clean().await;
}

async fn in_a_parallel_turn_a_plugin_question_is_a_failed_tool_result(backend: Backend) {
    let rig = with_asking_plugins(Rig::new(backend, 1_000_000).await).await;
    let session = rig.session(&[ASKER], Strategy::Parallel, RunLimits::default()).await;
    rig.models.push([
        Reply::Tools { calls: vec![tool_call("c1", "conformance.test_two_questions", "{}")], usage: usage(100, 5) },
        text("could not ask", usage(100, 5)),
    ]);
    let run = rig.post(&session, "go").await;
    assert_eq!(rig.runner().execute(&run.id).await.expect("executes"), RunState::Completed);
    let events = rig.events(&run).await;
    let result = events.iter().find_map(|e| match &e.body {
        EventBody::ToolResult(r) if r.call_id == "c1" => Some(r.clone()),
        _ => None,
    });
    let result = result.expect("a result");
    assert_eq!((result.ok, result.error.as_deref()), (false, Some("needs_input")), "{result:?}");
    assert!(result.content.contains("Your name?"), "{result:?}");
    rig.assert_ledger_clean().await;
}

/// One JSON-RPC `tools/call` on a stateless (2026-07-28) request: the response message.
async fn stateless_call(client: &crate::mcp::Client, tool: &str, extra: Value, capabilities: Value) -> Value {
    let mut params = json!({ "name": tool, "arguments": {} });
    params.as_object_mut().expect("object").extend(extra.as_object().cloned().unwrap_or_default());
    let meta = json!({ "io.modelcontextprotocol/clientCapabilities": capabilities });
    let body = client.body(7, "tools/call", params, meta);
    let response = client.builder("tools/call", Some(tool)).json(&body).send().await.expect("request");
    let text = response.text().await.expect("body");
    let messages: Vec<Value> = match serde_json::from_str::<Value>(&text) {
        Ok(value) => vec![value],
        Err(_) => text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str(d.trim()).ok())
            .collect(),
    };
    messages.into_iter().find(|m| m.get("id").is_some()).unwrap_or_else(|| panic!("no response in {text}"))
}

/// SEP-2322 for a plugin's questions: a stateless client that declared elicitation gets
/// input-required results with a sealed request state, round after round; a changed or
/// another tenant's state is refused with invalid params; a client that cannot be asked
/// gets the needs-input error result.
async fn a_stateless_client_answers_a_plugins_questions_through_input_required_results(backend: Backend) {
    let policy = "version = 1\n[[grant]]\nname = \"all\"\nsubjects = [\"role:member+\"]\ntools = [\"conformance.*\"]\n";
    let served =
        crate::mcp::Served::start(crate::harness::TestHost::with_plugins(backend, &["conformance"], policy).await)
            .await;
    let acme = served.client(&served.member_of("acme").await, crate::mcp::STATELESS);
    let other = served.client(&served.member_of("other").await, crate::mcp::STATELESS);
    let tool = "conformance.test_input_required_result_multi_round";
    let asks = json!({ "elicitation": {} });

    let first = stateless_call(&acme, tool, json!({}), asks.clone()).await;
    let result = &first["result"];
    assert_eq!(result["resultType"], "input_required", "{first}");
    let request = &result["inputRequests"]["q0"];
    assert_eq!(request["method"], "elicitation/create", "{first}");
    assert_eq!(request["params"]["message"], "Step 1: What is your name?");
    assert_eq!(request["params"]["requestedSchema"]["required"], json!(["name"]));
    let state = result["requestState"].as_str().expect("a request state").to_owned();
    assert!(state.starts_with("maestro-ask:"), "{state}");

    let answer = |key: &str, content: Value| json!({ key: { "action": "accept", "content": content } });
    let name = answer("q0", json!({ "name": "Alice" }));
    for (client, bad) in [(&acme, format!("{state}-TAMPERED")), (&other, state.clone())] {
        let refused =
            stateless_call(client, tool, json!({ "inputResponses": name, "requestState": bad }), asks.clone()).await;
        assert_eq!(refused["error"]["code"], -32602, "a changed or foreign state: {refused}");
    }

    let second =
        stateless_call(&acme, tool, json!({ "inputResponses": name, "requestState": state }), asks.clone()).await;
    let result = &second["result"];
    assert_eq!(result["resultType"], "input_required", "{second}");
    assert_eq!(result["inputRequests"]["q1"]["params"]["message"], "Step 2: What is your favorite color?");
    let state2 = result["requestState"].as_str().expect("a request state").to_owned();
    assert_ne!(state2, state, "each round seals its own state");
    let colour = answer("q1", json!({ "color": "blue" }));
    let done =
        stateless_call(&acme, tool, json!({ "inputResponses": colour, "requestState": state2 }), asks.clone()).await;
    let result = &done["result"];
    assert_ne!(result["isError"], true, "{done}");
    assert_eq!(result["content"][0]["text"], r#""Alice" likes "blue""#, "both answers reached the plugin: {done}");

    // Without elicitation nobody can be asked: the question is the failed result.
    let plain = stateless_call(&acme, tool, json!({}), json!({})).await;
    assert_eq!(plain["result"]["isError"], true, "{plain}");
    let text = plain["result"]["content"][0]["text"].as_str().unwrap_or_default();
    assert!(text.contains("needs input from the user: Step 1: What is your name?"), "{plain}");
}

/// A plugin's completion inside a run counts against the run's credits budget: its
/// `max_tokens` lowered to what the run has left, its cost in the tool result and the
/// run's totals; with nothing left it is refused and the run stops at its budget.
async fn a_plugin_completion_in_a_run_is_capped_by_the_runs_budget_and_counted_in_its_totals(backend: Backend) {
    // One credit per answer token on big-m (the balanced tier's model); prompts are free.
    let prices = vec![ModelPrice { model: "big-m".into(), input_per_million: 0, output_per_million: 1_000_000 }];
    let rig = with_models(Rig::new(backend, 1_000_000).await, prices.clone()).await;
    let sampling = || Reply::Tools {
        calls: vec![tool_call("c1", "conformance.test_sampling", r#"{"prompt":"Capital of France?"}"#)],
        usage: usage(100, 10),
    };
    let budget = |credits: i64| RunLimits { credits_budget: Some(credits), ..limits() };

    // 60 credits: 10 for the first answer, so the plugin may ask for 50 tokens, not 100.
    let session = rig.session(&[ASKER], Strategy::Sequence, budget(60)).await;
    rig.models.push([sampling(), text("Paris", usage(5, 7)), text("It is Paris.", usage(10, 3))]);
    let run = rig.post(&session, "ask the model").await;
    let runner = runner_priced(&rig, Rig::settings(), prices.clone());
    assert_eq!(runner.execute(&run.id).await.expect("executes"), RunState::Completed);
    let requests = rig.models.requests();
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[1].max_tokens, Some(50), "the plugin's 100 tokens lowered to the budget left");
    let events = rig.events(&run).await;
    let result = events.iter().find_map(|e| match &e.body {
        EventBody::ToolResult(r) if r.call_id == "c1" => Some(r.clone()),
        _ => None,
    });
    let result = result.expect("a result");
    assert!(result.ok && result.content == "LLM response: Paris", "{result:?}");
    assert_eq!(result.credits, 7, "the completion's 7 answer tokens");
    let done = rig.run(&run).await;
    assert_eq!(done.totals.credits, 10 + 7 + 3, "the plugin's spend is in the run's totals");
    rig.assert_ledger_clean().await;

    // 10 credits: the first answer spends them all; the plugin's completion is refused
    // without asking a model, and the run stops at its budget.
    let session = rig.session(&[ASKER], Strategy::Sequence, budget(10)).await;
    rig.models.push([sampling()]);
    let run = rig.post(&session, "ask again").await;
    assert_eq!(runner.execute(&run.id).await.expect("executes"), RunState::Failed);
    assert_eq!(rig.models.requests().len(), 4, "only the persona's first call reached a model");
    let events = rig.events(&run).await;
    let refused = events.iter().find_map(|e| match &e.body {
        EventBody::ToolResult(r) if r.call_id == "c1" => Some(r.clone()),
        _ => None,
    });
    let refused = refused.expect("a result");
    assert!(!refused.ok && refused.content.contains("the run's credits budget has 0 left"), "{refused:?}");
    let failed = rig.run(&run).await;
    assert_eq!(failed.error.map(|e| e.code).as_deref(), Some("budget_exceeded"));
    assert_eq!(failed.totals.credits, 10);
    rig.assert_ledger_clean().await;
}

backend_tests!(
    a_plugin_completion_in_a_run_is_capped_by_the_runs_budget_and_counted_in_its_totals,
    a_stateless_client_answers_a_plugins_questions_through_input_required_results,
    a_plugin_question_waits_and_the_same_call_runs_again_with_the_answer_after_a_restart,
    several_questions_are_asked_one_at_a_time_and_a_decline_reaches_the_plugin,
    in_a_parallel_turn_a_plugin_question_is_a_failed_tool_result,
);
