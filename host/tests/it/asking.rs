//! Asking the user: a persona's `ask_user` call or the router's question puts the run in
//! `waiting_input` (no worker, no lease, no hold); the answer resumes it from its record
//! without repeating a recorded model or tool call — also across restarts of the real
//! `maestro serve`; an unanswered question expires; a waiting run can be cancelled. And
//! migration 0007 keeps the runs a 0005 database holds.

use std::sync::Arc;
use std::time::Duration;

use maestro_core::llm::{ChatRequest, ToolCallRequest};
use maestro_core::run::{
    Asker, EventBody, MessageId, RunEvent, RunId, RunLimits, RunState, RunTotals, SessionId, Strategy,
};
use maestro_core::{Job, TenantId};
use maestro_host::jobs::JobHandler;
use maestro_host::orchestrator::{
    AnswerInput, EXPIRE_WAIT_JOB, ExpireWaits, OrchestratorError, RUN_JOB, Runner, RunnerPorts, RunnerSettings,
};
use serde_json::json;

use crate::harness::{Backend, TestDb, backend_tests};
use crate::orchestrator::{
    CRITIC, PM, Reply, Rig, assert_dense, decision, kinds, limits, prices, text, tool_call, usage,
};

fn ask(id: &str, question: &str, choices: &[&str]) -> ToolCallRequest {
    let arguments = if choices.is_empty() {
        json!({ "question": question })
    } else {
        json!({ "question": question, "choices": choices })
    };
    tool_call(id, "ask_user", &arguments.to_string())
}

fn router_asks(question: &str) -> Reply {
    let json = json!({ "satisfied": false, "next": "", "instruction": "", "reason": "unclear", "ask_user": question });
    Reply::Text { pieces: vec![json.to_string()], usage: usage(300, 20), delay: Duration::ZERO }
}

fn runner(rig: &Rig, settings: RunnerSettings) -> Runner {
    Runner::new(
        RunnerPorts {
            runs: rig.store.clone(),
            unit: rig.store.clone(),
            tenants: rig.store.clone(),
            clock: rig.clock.clone(),
            tools: rig.tools.clone(),
            credits: rig.credits.clone(),
            models: rig.models.clone(),
            prices: prices(),
            hub: rig.hub.clone(),
        },
        settings,
    )
}

fn tool_answers(request: &ChatRequest) -> Vec<(String, String)> {
    request.messages.iter().filter_map(|m| m.tool_call_id.as_ref().map(|id| (id.clone(), m.content.clone()))).collect()
}

fn count(events: &[RunEvent], kind: &str) -> usize {
    events.iter().filter(|e| e.body.kind() == kind).count()
}

async fn job(rig: &Rig, key: &str) -> Job {
    rig.store.job_by_key(key).await.expect("read").unwrap_or_else(|| panic!("no job {key}"))
}

async fn a_persona_asks_and_resumes_on_the_answer_without_repeating_a_call(backend: Backend) {
    let rig = Rig::new(backend, 1_000_000).await;
    rig.models.push([Reply::Tools {
        calls: vec![
            tool_call("c1", "calc.evaluate", r#"{"expression":"6 * 7"}"#),
            ask("c2", "Which colour?", &["red", "blue"]),
        ],
        usage: usage(900, 30),
    }]);
    let session = rig.session(&[PM], Strategy::Sequence, limits()).await;
    let run = rig.post(&session, "paint the shed").await;
    assert_eq!(rig.runner().execute(&run.id).await.expect("executes"), RunState::WaitingInput);

    let waiting = rig.run(&run).await;
    assert_eq!((waiting.state, waiting.finished_at), (RunState::WaitingInput, None));
    let events = rig.events(&run).await;
    let all = kinds(&events);
    assert_eq!(all[all.len() - 3..], ["tool.result", "tool.called", "clarification.requested"]);
    let Some(EventBody::ClarificationRequested { asker, question, choices, free_text, expires_at }) =
        events.last().map(|e| e.body.clone())
    else {
        panic!("the run's last event is its question")
    };
    assert_eq!(asker, Asker::Persona { persona: PM.into(), step: 1, call_id: "c2".into() });
    assert_eq!(
        (question.as_str(), choices.as_slice(), free_text),
        ("Which colour?", &["red".to_owned(), "blue".to_owned()][..], false)
    );
    assert!(expires_at > chrono::Utc::now() + chrono::Duration::hours(23), "the default wait is a day");
    rig.assert_ledger_clean().await;
    assert_eq!(job(&rig, &format!("run:{}:wait:1:expire", run.id)).await.kind, EXPIRE_WAIT_JOB);
    let pending = rig.orchestrator.pending_question(&waiting).await.expect("read").expect("an open question");
    assert_eq!((pending.question.as_str(), pending.expires_at), ("Which colour?", expires_at));

    let refused = rig.orchestrator.post_message(&rig.principal, &session.id, "and the fence?".into()).await;
    assert!(matches!(&refused, Err(OrchestratorError::RunWaiting(id)) if *id == run.id), "{refused:?}");
    let wrong = rig.orchestrator.answer(&rig.principal, &run.id, AnswerInput::Text("green".into())).await;
    assert!(matches!(wrong, Err(OrchestratorError::InvalidAnswer(_))), "not a choice, and no free text: {wrong:?}");
    assert_eq!(rig.events(&run).await.len(), events.len(), "a refused answer writes nothing");
    let answered =
        rig.orchestrator.answer(&rig.principal, &run.id, AnswerInput::Choice("blue".into())).await.expect("answers");
    assert_eq!(answered.state, RunState::Queued);
    let twice = rig.orchestrator.answer(&rig.principal, &run.id, AnswerInput::Text("red".into())).await;
    assert!(matches!(twice, Err(OrchestratorError::NotWaiting { .. })), "{twice:?}");
    assert_eq!(job(&rig, &format!("run:{}:wait:1:resume", run.id)).await.kind, RUN_JOB);

    rig.models.push([text("blue it is, 42 litres", usage(1000, 10))]);
    assert_eq!(rig.runner().execute(&run.id).await.expect("resumes"), RunState::Completed);
    let requests = rig.models.requests();
    assert_eq!(requests.len(), 2, "the recorded model call is not made again");
    let answers = tool_answers(&requests[1]);
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert!(answers[0].0 == "c1" && answers[0].1.contains("42"), "{answers:?}");
    assert_eq!(answers[1], ("c2".to_owned(), "blue".to_owned()), "the answer is the ask_user call's result");
    let events = rig.events(&run).await;
    assert_dense(&events);
    let calc_runs =
        events.iter().filter(|e| matches!(&e.body, EventBody::ToolResult(r) if r.tool == "calc.evaluate")).count();
    assert_eq!(calc_runs, 1, "the recorded tool call is not run again");
    assert_eq!(count(&events, "run.interrupted"), 0, "an answered run resumes; nothing was interrupted");
    let all = kinds(&events);
    assert_eq!(
        all[all.len() - 6..],
        [
            "clarification.requested",
            "clarification.answered",
            "tool.result",
            "message.completed",
            "step.completed",
            "run.completed"
        ]
    );
    let done = rig.run(&run).await;
    assert_eq!((done.totals.steps, done.totals.model_calls, done.totals.tool_calls), (1, 2, 2));
    rig.assert_ledger_clean().await;
}

async fn the_router_asks_and_its_next_decision_sees_the_answer(backend: Backend) {
    let rig = Rig::new(backend, 1_000_000).await;
    rig.models.push([router_asks("Who is the plan for?")]);
    let session = rig.session(&[PM, CRITIC], Strategy::Router, limits()).await;
    let run = rig.post(&session, "critique my plan").await;
    assert_eq!(rig.runner().execute(&run.id).await.expect("executes"), RunState::WaitingInput);
    let events = rig.events(&run).await;
    let all = kinds(&events);
    assert_eq!(all[all.len() - 2..], ["message.completed", "clarification.requested"]);
    assert!(matches!(
        &events.last().expect("events").body,
        EventBody::ClarificationRequested { asker: Asker::Router { turn: 1 }, free_text: true, choices, .. } if choices.is_empty()
    ));
    rig.assert_ledger_clean().await;

    rig.orchestrator.answer(&rig.principal, &run.id, AnswerInput::Text("engineers".into())).await.expect("answers");
    rig.models.push([
        decision(Some(CRITIC), false),
        text("too vague for engineers", usage(500, 20)),
        decision(None, true),
    ]);
    assert_eq!(rig.runner().execute(&run.id).await.expect("resumes"), RunState::Completed);
    assert_eq!(rig.models.calls_to("router"), 3, "the question's answer is not asked again");
    let requests = rig.models.requests();
    let answered = |r: &ChatRequest| r.messages.iter().any(|m| m.content.contains("the user answered: engineers"));
    assert!(answered(&requests[1]), "the router's next decision sees the answer: {:?}", requests[1].messages);
    assert!(answered(&requests[2]), "so does the persona it picks");
    let events = rig.events(&run).await;
    assert_dense(&events);
    let router_calls: Vec<u32> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::MessageCompleted { persona, call, .. } if persona == "maestro" => Some(*call),
            _ => None,
        })
        .collect();
    assert_eq!(router_calls, [1, 2, 3]);
    assert_eq!(count(&events, "turn.decided"), 2, "the question decided no turn");
}

async fn an_unanswered_question_expires_and_a_waiting_run_can_be_cancelled(backend: Backend) {
    let rig = Rig::new(backend, 1_000_000).await;
    let quick = runner(&rig, RunnerSettings { wait_timeout: Duration::ZERO, ..Rig::settings() });
    let session = rig.session(&[PM], Strategy::Sequence, limits()).await;

    // The expiry job ends the wait.
    rig.models.push([Reply::Tools { calls: vec![ask("c1", "Proceed?", &[])], usage: usage(100, 5) }]);
    let run = rig.post(&session, "first").await;
    assert_eq!(quick.execute(&run.id).await.expect("executes"), RunState::WaitingInput);
    let pending = rig.orchestrator.pending_question(&rig.run(&run).await).await.expect("read").expect("question");
    assert!(pending.free_text && pending.choices.is_empty(), "no choices: free text");
    let expiry = job(&rig, &format!("run:{}:wait:1:expire", run.id)).await;
    let handler = ExpireWaits(Arc::new(rig.orchestrator.clone()));
    handler.handle(&expiry).await.expect("expires");
    let expired = rig.run(&run).await;
    assert_eq!(expired.state, RunState::Expired);
    assert!(expired.finished_at.is_some());
    let events = rig.events(&run).await;
    assert!(matches!(events.last().map(|e| &e.body), Some(EventBody::RunExpired { .. })));
    handler.handle(&expiry).await.expect("again");
    assert_eq!(quick.execute(&run.id).await.expect("left alone"), RunState::Expired);
    assert_eq!(rig.events(&run).await.len(), events.len(), "an expired run is over");
    let late = rig.orchestrator.answer(&rig.principal, &run.id, AnswerInput::Text("yes".into())).await;
    assert!(matches!(late, Err(OrchestratorError::NotWaiting { state: "expired", .. })), "{late:?}");

    // An answer after the deadline, before the job ran, is refused and ends the wait.
    rig.models.push([Reply::Tools { calls: vec![ask("c1", "Proceed?", &[])], usage: usage(100, 5) }]);
    let run = rig.post(&session, "second").await;
    assert_eq!(quick.execute(&run.id).await.expect("executes"), RunState::WaitingInput);
    let late = rig.orchestrator.answer(&rig.principal, &run.id, AnswerInput::Text("yes".into())).await;
    assert!(matches!(late, Err(OrchestratorError::NotWaiting { state: "expired", .. })), "{late:?}");
    assert_eq!(rig.run(&run).await.state, RunState::Expired);

    // Cancelling a waiting run ends it at once (no worker holds it).
    rig.models.push([Reply::Tools { calls: vec![ask("c1", "Proceed?", &[])], usage: usage(100, 5) }]);
    let run = rig.post(&session, "third").await;
    assert_eq!(rig.runner().execute(&run.id).await.expect("executes"), RunState::WaitingInput);
    let cancelled = rig.orchestrator.cancel(&rig.principal, &run.id).await.expect("cancels");
    assert_eq!(cancelled.state, RunState::Cancelled);
    let events = rig.events(&run).await;
    assert!(matches!(events.last().map(|e| &e.body), Some(EventBody::RunCancelled { .. })));
    let late = rig.orchestrator.answer(&rig.principal, &run.id, AnswerInput::Text("yes".into())).await;
    assert!(matches!(late, Err(OrchestratorError::NotWaiting { state: "cancelled", .. })), "{late:?}");
    assert_eq!(rig.models.requests().len(), 3, "one model call per run");
    rig.assert_ledger_clean().await;
}

/// The rows of a 0005 database: a tenant, a session, its message, a finished run with two
/// events and a running run.
fn rows_0005(tenant: &TenantId, session: &SessionId, message: &MessageId, done: &RunId, open: &RunId) -> String {
    let at = "'2026-01-02T03:04:05.678Z'";
    let limits = serde_json::to_string(&RunLimits::default()).expect("json");
    let totals = serde_json::to_string(&RunTotals { steps: 1, ..RunTotals::default() }).expect("json");
    format!(
        "INSERT INTO tenants (id, name, created_at) VALUES ('{tenant}', 'acme', {at});
         INSERT INTO sessions (id, tenant_id, title, personas, strategy, limits, created_by, created_at,
             last_message_seq, last_event_seq)
             VALUES ('{session}', '{tenant}', 't', '[\"personas.writer\"]', 'sequence', '{limits}', 'key_x', {at}, 1, 2);
         INSERT INTO messages (id, session_id, seq, author_kind, author_name, content, run_id, at)
             VALUES ('{message}', '{session}', 1, 'user', 'key_x', 'hello', '{done}', {at});
         INSERT INTO runs (id, session_id, tenant_id, trigger_message, key_id, role, state, strategy, limits, totals,
             last_seq, created_at, started_at, finished_at)
             VALUES ('{done}', '{session}', '{tenant}', '{message}', 'key_x', 'member', 'completed', 'sequence',
                 '{limits}', '{totals}', 2, {at}, {at}, {at});
         INSERT INTO runs (id, session_id, tenant_id, trigger_message, key_id, role, state, strategy, limits, totals,
             last_seq, created_at)
             VALUES ('{open}', '{session}', '{tenant}', '{message}', 'key_x', 'member', 'running', 'sequence',
                 '{limits}', '{totals}', 0, {at});
         INSERT INTO run_events (run_id, seq, session_id, session_seq, type, version, payload, at)
             VALUES ('{done}', 1, '{session}', 1, 'run.interrupted', 1, '{{\"reason\":\"r\"}}', {at});
         INSERT INTO run_events (run_id, seq, session_id, session_seq, type, version, payload, at)
             VALUES ('{done}', 2, '{session}', 2, 'run.completed', 1, '{{\"totals\":{totals}}}', {at});"
    )
}

async fn a_database_migrated_from_0005_keeps_its_runs_and_takes_the_new_states(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (tenant, session) = (TenantId::from_random([1; 16]), SessionId::from_random([2; 16]));
    let (message, done, open) =
        (MessageId::from_random([3; 16]), RunId::from_random([4; 16]), RunId::from_random([5; 16]));
    let rows = rows_0005(&tenant, &session, &message, &done, &open);
    match backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&format!("{}?mode=rwc", db.url)).await.expect("connect");
            maestro_host::storage::sqlite::MIGRATOR.run_to(5, &pool).await.expect("migrates to 0005");
            sqlx::raw_sql(sqlx::AssertSqlSafe(rows)).execute(&pool).await.expect("0005 rows");
            pool.close().await;
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&db.url).await.expect("connect");
            maestro_host::storage::postgres::MIGRATOR.run_to(5, &pool).await.expect("migrates to 0005");
            sqlx::raw_sql(sqlx::AssertSqlSafe(rows)).execute(&pool).await.expect("0005 rows");
            pool.close().await;
        }
    }
    let store = db.open().await;
    let kept = store.run(Some(&tenant), &done).await.expect("read").expect("the finished run is kept");
    assert_eq!((kept.state, kept.last_seq, kept.totals.steps), (RunState::Completed, 2, 1));
    assert!(kept.finished_at.is_some());
    let events = store.run_events(&done, 0, 10).await.expect("events");
    assert_eq!(kinds(&events), ["run.interrupted", "run.completed"]);
    let runs = store.runs(&tenant, &session, 10).await.expect("runs");
    assert_eq!(runs.len(), 2, "the session's runs are indexed as before");

    // The new states are accepted; events still append densely and stay immutable.
    let mut running = store.run(None, &open).await.expect("read").expect("run");
    running.state = RunState::WaitingInput;
    let mut tx = store.begin().await.expect("begin");
    assert!(tx.update_run_if(&running, RunState::Running).await.expect("update"));
    let event = maestro_core::run::NewEvent {
        run: open.clone(),
        session: session.clone(),
        at: chrono::Utc::now(),
        body: EventBody::RunExpired { totals: RunTotals::default() },
    };
    let stored = tx.append_event(&event).await.expect("append");
    tx.commit().await.expect("commit");
    assert_eq!((stored.seq, stored.session_seq), (1, 3));
    assert_eq!(store.run(None, &open).await.expect("read").expect("run").state, RunState::WaitingInput);
    let mut tx = store.begin().await.expect("begin");
    assert!(!tx.update_run_if(&running, RunState::Running).await.expect("update"), "compare-and-set");
    tx.rollback().await.expect("rollback");
    drop(store);
    match backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&db.url).await.expect("connect");
            let broken: Vec<sqlx::sqlite::SqliteRow> =
                sqlx::query("PRAGMA foreign_key_check").fetch_all(&pool).await.expect("check");
            assert!(broken.is_empty(), "no dangling reference after the table rebuild");
            let update = sqlx::query("UPDATE run_events SET type = 'x'").execute(&pool).await;
            assert!(update.is_err(), "run events stay immutable");
            let index: Option<String> =
                sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'index' AND name = 'runs_by_session'")
                    .fetch_optional(&pool)
                    .await
                    .expect("read");
            assert!(index.is_some(), "the runs' index is recreated");
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&db.url).await.expect("connect");
            let update = sqlx::query("UPDATE run_events SET type = 'x'").execute(&pool).await;
            assert!(update.is_err(), "run events stay immutable");
            let bad = sqlx::query("UPDATE runs SET state = 'sleeping'").execute(&pool).await;
            assert!(bad.is_err(), "the state is still checked");
        }
    }
}

backend_tests!(
    a_persona_asks_and_resumes_on_the_answer_without_repeating_a_call,
    the_router_asks_and_its_next_decision_sees_the_answer,
    an_unanswered_question_expires_and_a_waiting_run_can_be_cancelled,
    a_database_migrated_from_0005_keeps_its_runs_and_takes_the_new_states,
);
