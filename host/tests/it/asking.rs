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
    let resume = job(&rig, &format!("run:{}:wait:1:resume", run.id)).await;
    assert_eq!(resume.kind, RUN_JOB);

    // The run's first job, retried (its worker died after the question), has nothing to
    // do: the answer's job resumes the run.
    let runner = rig.runner();
    let stale = job(&rig, &format!("run:{}", run.id)).await;
    runner.handle(&stale).await.expect("a stale job is a no-op");
    assert_eq!((rig.models.requests().len(), rig.run(&run).await.state), (1, RunState::Queued));
    rig.models.push([text("blue it is, 42 litres", usage(1000, 10))]);
    runner.handle(&resume).await.expect("resumes");
    assert_eq!(rig.run(&run).await.state, RunState::Completed);
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
    let hour = RunLimits { wait_timeout_secs: Some(3600), ..limits() };
    let session = rig.session(&[PM, CRITIC], Strategy::Router, hour).await;
    let run = rig.post(&session, "critique my plan").await;
    assert_eq!(rig.runner().execute(&run.id).await.expect("executes"), RunState::WaitingInput);
    let events = rig.events(&run).await;
    let Some(EventBody::ClarificationRequested { expires_at, .. }) = events.last().map(|e| &e.body) else {
        panic!("the run's last event is its question")
    };
    let left = *expires_at - chrono::Utc::now();
    assert!(left > chrono::Duration::minutes(55) && left <= chrono::Duration::hours(1), "the session's wait: {left}");
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

/// A site for `maestro serve`: `personas` and `web` installed, `web.fetch` allowed to a
/// counting page server on 127.0.0.1, the fake model server as the only provider.
struct Site {
    db: TestDb,
    backend: Backend,
    config: std::path::PathBuf,
    page: crate::fixtures::TestServer,
}

impl Site {
    async fn new(backend: Backend, fake: &crate::fake_llm::FakeLlm) -> Self {
        let db = TestDb::new(backend).await;
        let page = crate::fixtures::TestServer::start(|_| {
            let body = "the paint costs 42 a litre";
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
        })
        .await;
        let (plugins, policies) = (db.dir().join("plugins"), db.dir().join("policies"));
        crate::fixtures::install(&plugins, "personas");
        crate::fixtures::install(&plugins, "web");
        std::fs::create_dir_all(&policies).expect("policy dir");
        let port = page.addr.port();
        std::fs::write(
            policies.join("team.toml"),
            format!(
                "version = 1\n[[grant]]\nname = \"team\"\nsubjects = [\"role:member+\"]\n\
                 tools = [\"personas.*\", \"web.fetch\"]\n\
                 network = [{{ url = \"http://127.0.0.1:{port}\", allow_private = true }}]\n"
            ),
        )
        .expect("policy");
        let config = db.dir().join("maestro.toml");
        let text = format!(
            "[jobs]\nlease = \"2s\"\npoll_interval = \"100ms\"\n\n{}\n\
             [[llm.models]]\nid = \"big-m\"\nprovider = \"fake\"\nmodel = \"upstream-big-m\"\ntier = \"best\"\n\
             context_window = 64000\nmax_output_tokens = 1000\n\n\
             [[credits.models]]\nmodel = \"big-m\"\ninput_per_million = 2000000\noutput_per_million = 3000000\n",
            fake.provider_toml("fake", maestro_host::llm::ProviderKind::OpenAi)
        );
        std::fs::write(&config, text).expect("config");
        Self { db, backend, config, page }
    }

    fn command(&self) -> std::process::Command {
        let mut command = crate::server::maestro(&self.db, self.backend);
        command
            .env("MAESTRO_PLUGIN_DIR", self.db.dir().join("plugins"))
            .env("MAESTRO_POLICY_DIR", self.db.dir().join("policies"))
            .env("MAESTRO_CONFIG", &self.config)
            .env("MAESTRO_DATABASE_URL", &self.db.url)
            // These tests count every model call of a run: no post-run distillation
            // (tested in `recall`).
            .env("MAESTRO_MEMORY_DISTIL", "false");
        command
    }

    async fn start(&self, run: u32) -> crate::server::Server {
        crate::server::Server::start(self.command(), &self.db.dir(), run).await
    }

    fn page_url(&self) -> String {
        format!("http://127.0.0.1:{}/paint", self.page.addr.port())
    }
}

/// Tenant `name` with credits and a member key (its token).
async fn tenant(server: &crate::server::Server, platform: &str, name: &str) -> String {
    use reqwest::{Method, StatusCode};
    let (status, _) = server.call(Method::POST, "/v1/tenants", platform, Some(json!({ "name": name }))).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, member) =
        server.call(Method::POST, "/v1/keys", platform, Some(json!({ "tenant": name, "role": "member" }))).await;
    let reply = reqwest::Client::new()
        .post(format!("{}/v1/credits/grants", server.base))
        .bearer_auth(platform)
        .header("idempotency-key", format!("asking-grant-{name}"))
        .json(&json!({ "tenant": name, "amount": 1_000_000, "memo": "test" }))
        .send()
        .await
        .expect("grant");
    assert!(reply.status().is_success(), "{:?}", reply.text().await);
    member["token"].as_str().expect("token").to_owned()
}

/// Polls `GET /v1/runs/{id}` until `done` holds (60 s at most).
async fn wait_for_run(
    server: &crate::server::Server,
    member: &str,
    run: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let polled = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let (_, body) = server.call(reqwest::Method::GET, &format!("/v1/runs/{run}"), member, None).await;
            if done(&body) {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    polled.unwrap_or_else(|_| panic!("run {run} did not get there:\n{}", server.stderr_text()))
}

fn ask_script(site: &Site) -> crate::fake_llm::Script {
    let fetch = json!({ "url": site.page_url() }).to_string();
    let question = json!({ "question": "Which colour?", "choices": ["red", "blue"] }).to_string();
    crate::fake_llm::Script::openai_tool_calls(
        &[("call_1", "web_fetch", fetch.as_str()), ("call_2", "ask_user", question.as_str())],
        crate::fake_llm::usage(900, 30),
    )
}

async fn a_waiting_run_survives_restarts_and_resumes_without_a_repeated_call(backend: Backend) {
    use reqwest::{Method, StatusCode};
    let fake = crate::fake_llm::FakeLlm::start().await;
    let site = Site::new(backend, &fake).await;
    let first = site.start(1).await;
    let platform = first.bootstrap_token();
    let member = tenant(&first, &platform, "acme").await;
    let stranger = tenant(&first, &platform, "other").await;
    fake.push(ask_script(&site));
    let (status, session) = first
        .call(Method::POST, "/v1/sessions", &member, Some(json!({ "personas": [PM], "strategy": "sequence" })))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{session}");
    let session = session["id"].as_str().expect("id").to_owned();
    let (status, posted) = first
        .call(
            Method::POST,
            &format!("/v1/sessions/{session}/messages"),
            &member,
            Some(json!({ "content": "paint the shed" })),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{posted}");
    let run = posted["run"]["id"].as_str().expect("run").to_owned();
    let waiting = wait_for_run(&first, &member, &run, |r| r["state"] == "waiting_input").await;
    assert_eq!(waiting["pending_question"]["question"], "Which colour?");
    assert_eq!(waiting["pending_question"]["choices"], json!(["red", "blue"]));
    assert_eq!(
        waiting["pending_question"]["asker"],
        json!({ "kind": "persona", "persona": PM, "step": 1, "call_id": "call_2" })
    );
    assert_eq!(waiting["links"]["answer"], format!("/v1/runs/{run}/answer"));
    assert_eq!(
        (fake.request_count(), site.page.accepted()),
        (1, 1),
        "one model call and one fetch before the question"
    );

    // Stopped cleanly, then killed while it waits: nothing of the run is lost.
    first.stop().await;
    let mut second = site.start(2).await;
    let still = wait_for_run(&second, &member, &run, |r| r["state"].is_string()).await;
    assert_eq!(still["state"], "waiting_input", "a restart leaves the run waiting");
    let pid = second.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-KILL", &pid]).status().expect("kill").success());
    second.child.wait().expect("the killed server is reaped");
    let third = site.start(3).await;

    let answer = |body: serde_json::Value, key: String| {
        let third = &third;
        let run = run.clone();
        async move { third.call(Method::POST, &format!("/v1/runs/{run}/answer"), &key, Some(body)).await }
    };
    let (status, body) = answer(json!({ "choice": "blue" }), stranger.clone()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another tenant's run: {body}");
    let (_, viewer) =
        third.call(Method::POST, "/v1/keys", &platform, Some(json!({ "tenant": "acme", "role": "viewer" }))).await;
    let viewer = viewer["token"].as_str().expect("token").to_owned();
    let (status, body) = answer(json!({ "choice": "blue" }), viewer.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "viewers read, members answer: {body}");
    let (status, body) = third.call(Method::GET, &format!("/v1/runs/{run}"), &viewer, None).await;
    assert_eq!((status, &body["pending_question"]["question"]), (StatusCode::OK, &json!("Which colour?")));
    let (status, body) = answer(json!({ "answer": "green" }), member.clone()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_answer")));
    let (status, body) = answer(json!({ "answer": "blue", "choice": "blue" }), member.clone()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = third
        .call(Method::POST, &format!("/v1/sessions/{session}/messages"), &member, Some(json!({ "content": "hurry" })))
        .await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("run_waiting")));
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains(&run)), "names the waiting run: {body}");
    fake.push(crate::fake_llm::Script::openai_text("Blue, at 42 a litre.", crate::fake_llm::usage(1000, 10)));
    let (status, body) = answer(json!({ "choice": "blue" }), member.clone()).await;
    assert_eq!((status, body["state"].as_str()), (StatusCode::ACCEPTED, Some("queued")), "{body}");
    let (status, body) = answer(json!({ "choice": "red" }), member.clone()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("run_not_waiting")));

    let done = wait_for_run(&third, &member, &run, |r| r["state"] != "queued" && r["state"] != "running").await;
    assert_eq!(done["state"], "completed", "{done}");
    assert!(done.get("pending_question").is_none());
    assert_eq!(fake.request_count(), 2, "exactly the model calls of a run without a restart");
    assert_eq!(site.page.accepted(), 1, "exactly the tool calls of a run without a restart");
    let second_call = &fake.requests()[1].body;
    let tool_results: Vec<&str> = second_call["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["role"] == "tool")
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert_eq!(tool_results.len(), 2, "{second_call}");
    assert!(tool_results[0].contains("42") && tool_results[1] == "blue", "{tool_results:?}");
    let store = site.db.open().await;
    let run_id = RunId::parse(&run).expect("run id");
    let events = store.run_events(&run_id, 0, 1000).await.expect("events");
    assert_dense(&events);
    assert_eq!(count(&events, "run.interrupted"), 0);
    assert_eq!(count(&events, "clarification.answered"), 1);
    assert_eq!(done["totals"]["tool_calls"], 2);
    assert_eq!(done["totals"]["credits"], (900 * 2 + 30 * 3) + (1000 * 2 + 10 * 3));
    third.stop().await;
}

/// `maestro chat` prints the question with numbered choices, reads the answer inline (a
/// number picks a choice), posts it and follows the run to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maestro_chat_asks_and_answers_inline() {
    use std::io::Write as _;
    use std::process::Stdio;
    let fake = crate::fake_llm::FakeLlm::start().await;
    let site = Site::new(Backend::Sqlite, &fake).await;
    let server = site.start(1).await;
    let platform = server.bootstrap_token();
    let member = tenant(&server, &platform, "acme").await;
    fake.push(ask_script(&site));
    fake.push(crate::fake_llm::Script::openai_text("Blue, at 42 a litre.", crate::fake_llm::usage(1000, 10)));
    let mut chat = std::process::Command::new(env!("CARGO_BIN_EXE_maestro"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("MAESTRO_KEY", &member)
        .args(["chat", "--url", &server.base, "--personas", PM, "--strategy", "sequence"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("maestro chat starts");
    // The message, then `7` (no such choice, and no free text: refused, asked again), then
    // `2` (blue).
    chat.stdin.take().expect("stdin").write_all(b"paint the shed\n7\n2\n").expect("type");
    let output = tokio::task::spawn_blocking(move || chat.wait_with_output()).await.expect("join").expect("chat exits");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let all = format!("{stdout}{stderr}");
    for needle in [
        "asks: Which colour?",
        "  1. red",
        "  2. blue",
        "answer refused: invalid_answer",
        "answered: blue",
        "Blue, at 42 a litre.",
        "run completed",
    ] {
        assert!(all.contains(needle), "`{needle}` missing from the chat's output:\n{all}");
    }
    assert_eq!(fake.request_count(), 2);
    server.stop().await;
}

backend_tests!(
    a_waiting_run_survives_restarts_and_resumes_without_a_repeated_call,
    a_persona_asks_and_resumes_on_the_answer_without_repeating_a_call,
    the_router_asks_and_its_next_decision_sees_the_answer,
    an_unanswered_question_expires_and_a_waiting_run_can_be_cancelled,
    a_database_migrated_from_0005_keeps_its_runs_and_takes_the_new_states,
);
