//! Run storage conformance on both backends: sessions, messages, runs and run events
//! (dense sequences under concurrency, rollback, tenant scoping, the append-only log,
//! paging), plus an ignored measurement of reading a long run's events.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use maestro_core::id::{Id, IdKind};
use maestro_core::llm::{FinishReason, ToolCallRequest, Usage};
use maestro_core::run::{
    Author, EventBody, Message, NewEvent, Run, RunError, RunEvent, RunLimits, RunState, RunTotals, Session, Strategy,
    ToolResultBody,
};
use maestro_core::{Role, Store, StoreError, Tenant, TenantId, TenantName};
use sqlx::Connection as _;

use crate::harness::{Backend, TestDb, backend_tests};

backend_tests!(
    sessions_are_listed_newest_first_in_pages_and_only_to_their_tenant,
    a_duplicate_session_id_conflicts_and_a_missing_tenant_is_not_found,
    messages_get_dense_seqs_per_session_and_read_only_for_their_tenant,
    runs_are_inserted_updated_read_and_listed_per_tenant,
    an_event_of_every_type_round_trips,
    concurrent_appends_to_runs_of_one_session_keep_both_sequences_dense,
    a_rolled_back_unit_leaves_no_event_and_consumes_no_seq,
    cancel_requests_are_idempotent_tenant_scoped_and_leave_finished_runs_alone,
    run_events_refuse_update_and_delete,
    event_pages_by_after_and_limit_return_exactly_the_rest,
    an_event_for_a_run_of_another_session_is_refused,
    concurrent_units_writing_messages_events_and_run_updates_stay_dense,
    stored_times_are_kept_to_the_millisecond,
    undecodable_rows_answer_corrupt,
);

/// Now, to the millisecond (what the stores keep).
pub(crate) fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).expect("valid time")
}

/// A random id of any kind.
pub(crate) fn fresh<K: IdKind>() -> Id<K> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("random");
    Id::from_random(bytes)
}

/// A fresh store of `backend`, with the database it lives in.
pub(crate) async fn store(backend: Backend) -> (TestDb, Arc<dyn Store>) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    (db, store)
}

/// A new tenant named `name`.
pub(crate) async fn tenant(store: &Arc<dyn Store>, name: &str) -> TenantId {
    let tenant = Tenant { id: fresh(), name: TenantName::parse(name).expect("valid name"), created_at: t0() };
    store.create_tenant(&tenant).await.expect("create tenant");
    tenant.id
}

fn session(tenant: &TenantId, title: &str, at: DateTime<Utc>) -> Session {
    Session {
        id: fresh(),
        tenant: tenant.clone(),
        title: title.into(),
        personas: vec!["team.writer".into(), "team.critic".into()],
        strategy: Strategy::RoundRobin,
        limits: RunLimits {
            max_steps: 5,
            max_tool_calls_per_step: 3,
            credits_budget: Some(900),
            deadline_secs: 120,
            wait_timeout_secs: Some(3600),
        },
        created_by: "key_creator".into(),
        created_at: at,
    }
}

async fn new_session(store: &Arc<dyn Store>, tenant: &TenantId) -> Session {
    let session = session(tenant, "a session", t0());
    store.create_session(&session).await.expect("create session");
    session
}

fn user_message(session: &Session, run: Option<&Run>, content: &str, at: DateTime<Utc>) -> Message {
    Message {
        id: fresh(),
        session: session.id.clone(),
        seq: 0,
        author: Author::User { key_id: "key_user".into() },
        content: content.into(),
        run: run.map(|r| r.id.clone()),
        at,
    }
}

fn queued_run(session: &Session, trigger: &Message, at: DateTime<Utc>) -> Run {
    Run {
        id: trigger.run.clone().unwrap_or_else(fresh),
        session: session.id.clone(),
        tenant: session.tenant.clone(),
        trigger: trigger.id.clone(),
        key_id: "key_user".into(),
        role: Role::Member,
        state: RunState::Queued,
        strategy: session.strategy,
        limits: session.limits,
        totals: RunTotals::default(),
        error: None,
        cancel_requested: false,
        last_seq: 0,
        created_at: at,
        started_at: None,
        finished_at: None,
    }
}

/// Posts a user's message and the run it starts, in one unit (like the orchestrator).
async fn post(store: &Arc<dyn Store>, session: &Session, at: DateTime<Utc>) -> (Message, Run) {
    let mut message = user_message(session, None, "hello", at);
    message.run = Some(fresh());
    let run = queued_run(session, &message, at);
    let mut tx = store.begin().await.expect("begin");
    let message = tx.insert_message(&message).await.expect("insert message");
    tx.insert_run(&run).await.expect("insert run");
    tx.commit().await.expect("commit");
    (message, run)
}

fn delta(step: u32, text: &str) -> EventBody {
    EventBody::MessageDelta { step, call: 1, text: text.into() }
}

fn new_event(run: &Run, body: EventBody) -> NewEvent {
    NewEvent { run: run.id.clone(), session: run.session.clone(), at: t0(), body }
}

/// Appends each body in its own unit of work.
async fn append(store: &Arc<dyn Store>, run: &Run, body: EventBody) -> RunEvent {
    let mut tx = store.begin().await.expect("begin");
    let event = tx.append_event(&new_event(run, body)).await.expect("append");
    tx.commit().await.expect("commit");
    event
}

/// Appends many bodies in one unit of work.
async fn append_all(store: &Arc<dyn Store>, run: &Run, bodies: impl IntoIterator<Item = EventBody>) -> Vec<RunEvent> {
    let mut tx = store.begin().await.expect("begin");
    let mut events = Vec::new();
    for body in bodies {
        events.push(tx.append_event(&new_event(run, body)).await.expect("append"));
    }
    tx.commit().await.expect("commit");
    events
}

async fn sessions_are_listed_newest_first_in_pages_and_only_to_their_tenant(backend: Backend) {
    let (_db, store) = store(backend).await;
    let acme = tenant(&store, "acme").await;
    let globex = tenant(&store, "globex").await;
    let start = t0();
    // Seven sessions; two pairs share a creation time (ordered by id then).
    let offsets = [0, 1, 1, 2, 3, 3, 4];
    let mut created = Vec::new();
    for (i, offset) in offsets.into_iter().enumerate() {
        let s = session(&acme, &format!("s{i}"), start + Duration::seconds(offset));
        store.create_session(&s).await.expect("create");
        created.push(s);
    }
    let other = session(&globex, "theirs", start + Duration::seconds(10));
    store.create_session(&other).await.expect("create");

    let mut expected = created.clone();
    expected.sort_by(|a, b| (b.created_at, b.id.as_str()).cmp(&(a.created_at, a.id.as_str())));
    let mut pages = Vec::new();
    let mut before = None;
    loop {
        let page = store.sessions(&acme, before.as_ref(), 3).await.expect("page");
        assert!(page.len() <= 3);
        if page.is_empty() {
            break;
        }
        before = page.last().map(|s| s.id.clone());
        pages.push(page);
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), vec![3, 3, 1]);
    assert_eq!(pages.concat(), expected, "every session once, newest first, as created");

    assert_eq!(store.session(&acme, &created[2].id).await.expect("read"), Some(created[2].clone()));
    assert_eq!(store.session(&globex, &created[2].id).await.expect("read"), None, "another tenant's session");
    assert_eq!(store.sessions(&globex, None, 50).await.expect("list"), vec![other.clone()]);
    assert!(
        store.sessions(&acme, Some(&other.id), 50).await.expect("list").is_empty(),
        "another tenant's session is no cursor"
    );
    assert!(store.sessions(&acme, Some(&fresh()), 50).await.expect("list").is_empty(), "an unknown cursor");
}

async fn a_duplicate_session_id_conflicts_and_a_missing_tenant_is_not_found(backend: Backend) {
    let (_db, store) = store(backend).await;
    let acme = tenant(&store, "acme").await;
    let first = new_session(&store, &acme).await;
    let mut again = session(&acme, "other title", t0());
    again.id = first.id.clone();
    let err = store.create_session(&again).await.expect_err("duplicate id");
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(store.session(&acme, &first.id).await.expect("read"), Some(first), "the first is kept");

    let orphan = session(&fresh(), "nobody's", t0());
    let err = store.create_session(&orphan).await.expect_err("missing tenant");
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}

async fn messages_get_dense_seqs_per_session_and_read_only_for_their_tenant(backend: Backend) {
    let (_db, store) = store(backend).await;
    let acme = tenant(&store, "acme").await;
    let globex = tenant(&store, "globex").await;
    let one = new_session(&store, &acme).await;
    let two = new_session(&store, &acme).await;
    let at = t0();

    let mut stored = Vec::new();
    for i in 0..3 {
        let mut tx = store.begin().await.expect("begin");
        let mut in_one = user_message(&one, None, &format!("one {i}"), at);
        in_one.seq = 99; // ignored: the store allocates
        stored.push(tx.insert_message(&in_one).await.expect("insert"));
        let by_persona = Message {
            author: Author::Persona { name: "team.writer".into() },
            run: Some(fresh()),
            ..user_message(&two, None, &format!("two {i}"), at + Duration::milliseconds(i))
        };
        stored.push(tx.insert_message(&by_persona).await.expect("insert"));
        tx.commit().await.expect("commit");
    }
    let seqs =
        |session: &Session| -> Vec<i64> { stored.iter().filter(|m| m.session == session.id).map(|m| m.seq).collect() };
    assert_eq!(seqs(&one), vec![1, 2, 3]);
    assert_eq!(seqs(&two), vec![1, 2, 3]);

    let all_two: Vec<Message> = stored.iter().filter(|m| m.session == two.id).cloned().collect();
    assert_eq!(store.messages(&acme, &two.id, 0, 50).await.expect("read"), all_two, "as stored");
    assert_eq!(store.messages(&acme, &two.id, 1, 1).await.expect("read"), all_two[1..2].to_vec());
    assert_eq!(store.messages(&acme, &two.id, 3, 50).await.expect("read"), vec![]);
    assert!(store.messages(&globex, &two.id, 0, 50).await.expect("read").is_empty(), "another tenant's session");

    let mut tx = store.begin().await.expect("begin");
    let stray = user_message(&session(&acme, "never stored", at), None, "x", at);
    let err = tx.insert_message(&stray).await.expect_err("missing session");
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}

async fn runs_are_inserted_updated_read_and_listed_per_tenant(backend: Backend) {
    let (_db, store) = store(backend).await;
    let acme = tenant(&store, "acme").await;
    let globex = tenant(&store, "globex").await;
    let session = new_session(&store, &acme).await;
    let start = t0();
    let (_, first) = post(&store, &session, start).await;
    let (trigger, second) = post(&store, &session, start + Duration::seconds(1)).await;

    assert_eq!(store.run(Some(&acme), &first.id).await.expect("read"), Some(first.clone()));
    assert_eq!(store.run(None, &first.id).await.expect("read"), Some(first.clone()), "workers read unscoped");
    assert_eq!(store.run(Some(&globex), &first.id).await.expect("read"), None, "another tenant's run");
    assert_eq!(store.runs(&acme, &session.id, 10).await.expect("list"), vec![second.clone(), first.clone()]);
    assert_eq!(store.runs(&acme, &session.id, 1).await.expect("list"), vec![second.clone()]);
    assert!(store.runs(&globex, &session.id, 10).await.expect("list").is_empty(), "another tenant's session");

    // An update writes state, totals, error and timestamps; never the cancel flag,
    // the event counter, nor what was fixed at the start.
    let mut done = first.clone();
    done.state = RunState::Failed;
    done.totals = RunTotals {
        steps: 2,
        model_calls: 3,
        tool_calls: 1,
        usage: Usage { input_tokens: 10, output_tokens: 20, reasoning_tokens: 5, ..Usage::default() },
        credits: 42,
    };
    done.error = Some(RunError { code: "budget_exceeded".into(), message: "the run spent its budget".into() });
    done.started_at = Some(start + Duration::seconds(2));
    done.finished_at = Some(start + Duration::seconds(3));
    let mut tampered = done.clone();
    tampered.cancel_requested = true;
    tampered.last_seq = 77;
    tampered.strategy = Strategy::Parallel;
    let mut tx = store.begin().await.expect("begin");
    tx.update_run(&tampered).await.expect("update");
    tx.commit().await.expect("commit");
    assert_eq!(store.run(Some(&acme), &first.id).await.expect("read"), Some(done));

    let mut tx = store.begin().await.expect("begin");
    let err = tx.insert_run(&second).await.expect_err("duplicate run");
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    drop(tx);
    let mut tx = store.begin().await.expect("begin");
    let missing = Run { id: fresh(), ..queued_run(&session, &trigger, start) };
    let err = tx.update_run(&missing).await.expect_err("no such run");
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    drop(tx);
    // A run must belong to its session's tenant.
    let mut tx = store.begin().await.expect("begin");
    let mut foreign = queued_run(&session, &trigger, start);
    foreign.id = fresh();
    foreign.tenant = globex.clone();
    let err = tx.insert_run(&foreign).await.expect_err("tenant differs from the session's");
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}

fn every_event_type(trigger: &Message) -> Vec<EventBody> {
    let usage = Usage { input_tokens: 7, output_tokens: 9, cached_input_tokens: 2, ..Usage::default() };
    let totals = RunTotals { steps: 1, model_calls: 1, tool_calls: 1, usage, credits: 12 };
    vec![
        EventBody::RunStarted {
            trigger: trigger.id.clone(),
            strategy: Strategy::Router,
            personas: vec!["team.writer".into()],
            limits: RunLimits::default(),
        },
        EventBody::TurnDecided {
            turn: 1,
            personas: vec!["team.writer".into()],
            instruction: Some("draft it".into()),
            reason: "the writer drafts".into(),
            satisfied: false,
            fallback: true,
        },
        EventBody::StepStarted {
            step: 1,
            turn: 1,
            persona: "team.writer".into(),
            model: "fast-model".into(),
            tools: vec!["calc.add".into()],
            context_messages: 4,
            trimmed_messages: 1,
        },
        delta(1, "héllo \"world\" \n\u{1F600}"),
        EventBody::ToolCalled {
            step: 1,
            call: 1,
            call_id: "call_1".into(),
            tool: "calc.add".into(),
            arguments: "{\"a\": 1, \"b\": 2".into(),
        },
        EventBody::ToolResult(ToolResultBody {
            step: 1,
            call_id: "call_1".into(),
            tool: "calc.add".into(),
            ok: false,
            content: "invalid arguments".into(),
            error: Some("invalid_arguments".into()),
            credits: 1,
            duration_ms: 3,
        }),
        EventBody::MessageCompleted {
            step: 1,
            call: 2,
            persona: "team.writer".into(),
            model: "fast-model".into(),
            text: "three".into(),
            tool_calls: vec![ToolCallRequest { id: "call_1".into(), name: "calc.add".into(), arguments: "{}".into() }],
            finish: FinishReason::Other("content_filter_v2".into()),
            usage,
            credits: 11,
            message: Some(fresh()),
        },
        EventBody::StepCompleted {
            step: 1,
            persona: "team.writer".into(),
            usage,
            model_calls: 2,
            tool_calls: 1,
            credits: 12,
            message: None,
        },
        EventBody::RunInterrupted { step: Some(2), reason: "worker lease expired".into() },
        EventBody::RunCompleted { totals },
        EventBody::RunFailed { error: RunError { code: "model_unavailable".into(), message: "down".into() }, totals },
        EventBody::RunCancelled { totals },
    ]
}

async fn an_event_of_every_type_round_trips(backend: Backend) {
    let (_db, store) = store(backend).await;
    let acme = tenant(&store, "acme").await;
    let session = new_session(&store, &acme).await;
    let (trigger, run) = post(&store, &session, t0()).await;
    let bodies = every_event_type(&trigger);
    let kinds: std::collections::HashSet<&str> = bodies.iter().map(EventBody::kind).collect();
    assert_eq!(kinds.len(), 12, "one of each type");

    let appended = append_all(&store, &run, bodies.clone()).await;
    assert_eq!(appended.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=12).collect::<Vec<_>>());
    assert_eq!(appended.iter().map(|e| e.session_seq).collect::<Vec<_>>(), (1..=12).collect::<Vec<_>>());
    let read = store.run_events(&run.id, 0, 100).await.expect("read");
    assert_eq!(read, appended, "read back as appended");
    assert_eq!(read.into_iter().map(|e| e.body).collect::<Vec<_>>(), bodies);
    assert_eq!(store.session_events(&session.id, 0, 100).await.expect("read"), appended);
    assert_eq!(store.session_head(&session.id).await.expect("head"), 12);
    assert_eq!(store.run(None, &run.id).await.expect("read").map(|r| r.last_seq), Some(12));
}

async fn concurrent_appends_to_runs_of_one_session_keep_both_sequences_dense(backend: Backend) {
    const RUNS: usize = 4;
    const WRITERS: usize = 32;
    const PER_WRITER: usize = 8;
    let (_db, store) = store(backend).await;
    let acme = tenant(&store, "acme").await;
    let session = new_session(&store, &acme).await;
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        runs.push(post(&store, &session, t0()).await.1);
    }

    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let store = store.clone();
        let run = runs[w % RUNS].clone();
        writers.spawn(async move {
            let mut appended = Vec::new();
            for i in 0..PER_WRITER {
                appended.push(append(&store, &run, delta(1, &format!("w{w} e{i}"))).await);
            }
            appended
        });
    }
    let mut returned = Vec::new();
    while let Some(appended) = writers.join_next().await {
        returned.extend(appended.expect("writer"));
    }

    let total = WRITERS * PER_WRITER;
    let all = store.session_events(&session.id, 0, 10_000).await.expect("read");
    assert_eq!(all.len(), total);
    assert_eq!(all.iter().map(|e| e.session_seq).collect::<Vec<_>>(), (1..=total as i64).collect::<Vec<_>>());
    let mut by_seq: Vec<RunEvent> = all.clone();
    by_seq.sort_by_key(|e| e.session_seq);
    returned.sort_by_key(|e| e.session_seq);
    assert_eq!(returned, by_seq, "what each append returned is what is stored");
    let per_run = total / RUNS;
    for run in &runs {
        let events = store.run_events(&run.id, 0, 10_000).await.expect("read");
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=per_run as i64).collect::<Vec<_>>());
        assert!(
            events.windows(2).all(|w| w[0].session_seq < w[1].session_seq),
            "a run's events keep their order in the session"
        );
        assert_eq!(store.run(None, &run.id).await.expect("read").map(|r| r.last_seq), Some(per_run as i64));
    }
    assert_eq!(store.session_head(&session.id).await.expect("head"), total as i64);
    // Each writer's events kept the order it appended them in.
    let mut last: HashMap<String, i64> = HashMap::new();
    for event in &all {
        let EventBody::MessageDelta { text, .. } = &event.body else { panic!("only deltas") };
        let writer = text.split(' ').next().expect("writer tag").to_owned();
        let previous = last.insert(writer, event.seq).unwrap_or(0);
        assert!(previous < event.seq);
    }
}

async fn a_rolled_back_unit_leaves_no_event_and_consumes_no_seq(backend: Backend) {
    let (_db, store) = store(backend).await;
    let acme = tenant(&store, "acme").await;
    let session = new_session(&store, &acme).await;
    let (_, run) = post(&store, &session, t0()).await;

    let mut tx = store.begin().await.expect("begin");
    tx.append_event(&new_event(&run, delta(1, "gone"))).await.expect("append");
    tx.append_event(&new_event(&run, delta(1, "gone too"))).await.expect("append");
    tx.insert_message(&user_message(&session, Some(&run), "gone", t0())).await.expect("message");
    tx.rollback().await.expect("rollback");
    let mut dropped = store.begin().await.expect("begin");
    dropped.append_event(&new_event(&run, delta(1, "dropped"))).await.expect("append");
    drop(dropped);

    assert!(store.run_events(&run.id, 0, 10).await.expect("read").is_empty());
    assert_eq!(store.session_head(&session.id).await.expect("head"), 0);
    assert_eq!(store.run(None, &run.id).await.expect("read").map(|r| r.last_seq), Some(0));
    let kept = append(&store, &run, delta(1, "kept")).await;
    assert_eq!((kept.seq, kept.session_seq), (1, 1), "no number was consumed");
    let mut tx = store.begin().await.expect("begin");
    let message = tx.insert_message(&user_message(&session, None, "next", t0())).await.expect("message");
    tx.commit().await.expect("commit");
    assert_eq!(message.seq, 2, "after the trigger (1), the rolled-back message took none");
}

async fn cancel_requests_are_idempotent_tenant_scoped_and_leave_finished_runs_alone(backend: Backend) {
    let (_db, store) = store(backend).await;
    let acme = tenant(&store, "acme").await;
    let globex = tenant(&store, "globex").await;
    let session = new_session(&store, &acme).await;
    let (_, run) = post(&store, &session, t0()).await;
    let (_, finished) = post(&store, &session, t0()).await;

    assert_eq!(store.request_cancel(&globex, &run.id).await.expect("cancel"), None, "another tenant's run");
    assert!(!store.run(None, &run.id).await.expect("read").expect("run").cancel_requested, "left alone");
    assert_eq!(store.request_cancel(&acme, &fresh()).await.expect("cancel"), None, "no such run");

    let flagged = store.request_cancel(&acme, &run.id).await.expect("cancel").expect("visible");
    assert!(flagged.cancel_requested);
    assert_eq!(flagged, Run { cancel_requested: true, ..run.clone() });
    let again = store.request_cancel(&acme, &run.id).await.expect("cancel again").expect("visible");
    assert_eq!(again, flagged, "idempotent");
    assert_eq!(store.run(Some(&acme), &run.id).await.expect("read"), Some(flagged));

    let mut done = finished.clone();
    done.state = RunState::Completed;
    done.finished_at = Some(t0());
    let mut tx = store.begin().await.expect("begin");
    tx.update_run(&done).await.expect("update");
    tx.commit().await.expect("commit");
    let answered = store.request_cancel(&acme, &finished.id).await.expect("cancel").expect("visible");
    assert_eq!(answered, done, "a finished run is returned as it is, unflagged");
}

async fn raw_execute(db: &TestDb, backend: Backend, sql: &str) -> Result<u64, sqlx::Error> {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    match backend {
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url).await.expect("connect");
            sqlx::raw_sql(sql).execute(&mut conn).await.map(|r| r.rows_affected())
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
            sqlx::raw_sql(sql).execute(&mut conn).await.map(|r| r.rows_affected())
        }
    }
}

async fn run_events_refuse_update_and_delete(backend: Backend) {
    let (db, store) = store(backend).await;
    let acme = tenant(&store, "acme").await;
    let session = new_session(&store, &acme).await;
    let (_, run) = post(&store, &session, t0()).await;
    let kept = append(&store, &run, delta(1, "kept")).await;

    for sql in ["UPDATE run_events SET payload = '{}'", "UPDATE run_events SET seq = seq + 1", "DELETE FROM run_events"]
    {
        let err = raw_execute(&db, backend, sql).await.expect_err(sql);
        assert!(err.to_string().contains("run events are immutable"), "{sql}: {err}");
    }
    assert_eq!(store.run_events(&run.id, 0, 10).await.expect("read"), vec![kept]);
}

async fn event_pages_by_after_and_limit_return_exactly_the_rest(backend: Backend) {
    let (_db, store) = store(backend).await;
    let acme = tenant(&store, "acme").await;
    let session = new_session(&store, &acme).await;
    let (_, one) = post(&store, &session, t0()).await;
    let (_, two) = post(&store, &session, t0()).await;
    // Interleaved: 25 events of `one`, 10 of `two`.
    let mut all = Vec::new();
    for i in 0..25 {
        all.push(append(&store, &one, delta(1, &format!("one {i}"))).await);
        if i % 5 < 2 {
            all.push(append(&store, &two, delta(1, &format!("two {i}"))).await);
        }
    }
    let of_one: Vec<RunEvent> = all.iter().filter(|e| e.run == one.id).cloned().collect();
    assert_eq!(of_one.len(), 25);

    for limit in [1, 7, 25, 100] {
        let mut after = 0;
        let mut read = Vec::new();
        loop {
            let page = store.run_events(&one.id, after, limit).await.expect("page");
            assert!(page.len() <= limit as usize);
            let Some(last) = page.last() else { break };
            after = last.seq;
            read.extend(page);
        }
        assert_eq!(read, of_one, "pages of {limit}");

        let mut after = 0;
        let mut read = Vec::new();
        loop {
            let page = store.session_events(&session.id, after, limit).await.expect("page");
            let Some(last) = page.last() else { break };
            after = last.session_seq;
            read.extend(page);
        }
        assert_eq!(read, all, "session pages of {limit}");
    }
    assert_eq!(store.run_events(&one.id, 20, 100).await.expect("read"), of_one[20..].to_vec());
    assert_eq!(store.run_events(&one.id, 20, 2).await.expect("read"), of_one[20..22].to_vec());
    assert!(store.run_events(&one.id, 25, 100).await.expect("read").is_empty());
    assert_eq!(store.session_events(&session.id, 30, 100).await.expect("read"), all[30..].to_vec());
    assert!(store.run_events(&fresh(), 0, 100).await.expect("read").is_empty(), "no such run");
    assert_eq!(store.session_head(&fresh()).await.expect("head"), 0, "no such session");
}

async fn an_event_for_a_run_of_another_session_is_refused(backend: Backend) {
    let (_db, store) = store(backend).await;
    let acme = tenant(&store, "acme").await;
    let session = new_session(&store, &acme).await;
    let other = new_session(&store, &acme).await;
    let (_, run) = post(&store, &session, t0()).await;
    let mut tx = store.begin().await.expect("begin");
    let mut event = new_event(&run, delta(1, "lost"));
    event.session = other.id.clone();
    let err = tx.append_event(&event).await.expect_err("session mismatch");
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    event.run = fresh();
    event.session = session.id.clone();
    let err = tx.append_event(&event).await.expect_err("no such run");
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    drop(tx);
    assert_eq!(store.session_head(&other.id).await.expect("head"), 0);
}

/// What a runner writes per step, in one unit: events, the persona's message and the
/// run's totals (half the steps write the message first). Four runners of one session
/// do it concurrently while users post messages starting new runs and ask to cancel:
/// every unit commits (no deadlock) and every sequence stays dense.
async fn concurrent_units_writing_messages_events_and_run_updates_stay_dense(backend: Backend) {
    const RUNNERS: usize = 4;
    const STEPS: u32 = 6;
    const POSTS: usize = 8;
    let (_db, store) = store(backend).await;
    let acme = tenant(&store, "acme").await;
    let session = new_session(&store, &acme).await;
    let mut runs = Vec::new();
    for _ in 0..RUNNERS {
        runs.push(post(&store, &session, t0()).await.1);
    }

    let mut tasks = tokio::task::JoinSet::new();
    for run in runs.clone() {
        let store = store.clone();
        let session = session.clone();
        tasks.spawn(async move {
            let mut current = run.clone();
            for step in 1..=STEPS {
                let persona = Message {
                    author: Author::Persona { name: "team.writer".into() },
                    ..user_message(&session, Some(&run), &format!("answer {step}"), t0())
                };
                let mut tx = store.begin().await.expect("begin");
                let message = if step % 2 == 0 {
                    let message = tx.insert_message(&persona).await.expect("message first");
                    tx.append_event(&new_event(&run, delta(step, "x"))).await.expect("append");
                    message
                } else {
                    tx.append_event(&new_event(&run, delta(step, "x"))).await.expect("append");
                    tx.insert_message(&persona).await.expect("message after")
                };
                let completed = EventBody::StepCompleted {
                    step,
                    persona: "team.writer".into(),
                    usage: Usage::default(),
                    model_calls: 1,
                    tool_calls: 0,
                    credits: 1,
                    message: Some(message.id.clone()),
                };
                tx.append_event(&new_event(&run, completed)).await.expect("append");
                current.state = RunState::Running;
                current.totals.steps = step;
                current.totals.credits += 1;
                tx.update_run(&current).await.expect("update");
                tx.commit().await.expect("commit");
            }
        });
    }
    for i in 0..POSTS {
        let store = store.clone();
        let session = session.clone();
        let cancel = runs[i % RUNNERS].clone();
        let tenant = acme.clone();
        tasks.spawn(async move {
            post(&store, &session, t0()).await;
            store.request_cancel(&tenant, &cancel.id).await.expect("cancel").expect("visible");
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task");
    }

    let messages = store.messages(&acme, &session.id, 0, 1_000).await.expect("messages");
    let expected_messages = RUNNERS + RUNNERS * STEPS as usize + POSTS;
    assert_eq!(messages.iter().map(|m| m.seq).collect::<Vec<_>>(), (1..=expected_messages as i64).collect::<Vec<_>>());
    let events = store.session_events(&session.id, 0, 1_000).await.expect("events");
    let expected_events = RUNNERS * STEPS as usize * 2;
    assert_eq!(
        events.iter().map(|e| e.session_seq).collect::<Vec<_>>(),
        (1..=expected_events as i64).collect::<Vec<_>>()
    );
    for run in &runs {
        let stored = store.run(Some(&acme), &run.id).await.expect("read").expect("run");
        assert_eq!((stored.state, stored.totals.steps, stored.totals.credits), (RunState::Running, STEPS, 6));
        assert!(stored.cancel_requested, "the flag survives the runner's updates");
        let seqs: Vec<i64> = store.run_events(&run.id, 0, 100).await.expect("read").iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=i64::from(STEPS) * 2).collect::<Vec<_>>());
        assert_eq!(stored.last_seq, i64::from(STEPS) * 2);
    }
    assert_eq!(store.runs(&acme, &session.id, 100).await.expect("runs").len(), RUNNERS + POSTS);
}

async fn stored_times_are_kept_to_the_millisecond(backend: Backend) {
    let (_db, store) = store(backend).await;
    let acme = tenant(&store, "acme").await;
    let precise = DateTime::from_timestamp(1_790_000_000, 123_456_789).expect("valid time");
    let millis = DateTime::from_timestamp(1_790_000_000, 123_000_000).expect("valid time");
    let created = session(&acme, "precise", precise);
    store.create_session(&created).await.expect("create");
    let read = store.session(&acme, &created.id).await.expect("read").expect("session");
    assert_eq!(read.created_at, millis);

    let (_, run) = post(&store, &read, t0()).await;
    let mut tx = store.begin().await.expect("begin");
    let message = tx.insert_message(&user_message(&read, None, "m", precise)).await.expect("message");
    let event = tx.append_event(&NewEvent { at: precise, ..new_event(&run, delta(1, "e")) }).await.expect("append");
    tx.update_run(&Run { started_at: Some(precise), state: RunState::Running, ..run.clone() }).await.expect("update");
    tx.commit().await.expect("commit");
    assert_eq!((message.at, event.at), (millis, millis), "returned as stored");
    assert_eq!(store.messages(&acme, &read.id, 1, 10).await.expect("read"), vec![message]);
    assert_eq!(store.run_events(&run.id, 0, 10).await.expect("read"), vec![event]);
    let stored = store.run(None, &run.id).await.expect("read").expect("run");
    assert_eq!(stored.started_at, Some(millis));
}

async fn undecodable_rows_answer_corrupt(backend: Backend) {
    let (db, store) = store(backend).await;
    let acme = tenant(&store, "acme").await;
    let session = new_session(&store, &acme).await;
    let (_, run) = post(&store, &session, t0()).await;
    let good = append(&store, &run, delta(1, "fine")).await;
    let at = match backend {
        Backend::Sqlite => format!("'{}'", t0().to_rfc3339_opts(chrono::SecondsFormat::Millis, false)),
        Backend::Postgres => "now()".to_owned(),
    };
    // A type this build does not know, written by a newer one.
    let insert = format!(
        "INSERT INTO run_events (run_id, seq, session_id, session_seq, type, version, payload, at) \
         VALUES ('{}', 2, '{}', 2, 'from.the.future', 1, '{{}}', {at})",
        run.id, session.id
    );
    raw_execute(&db, backend, &insert).await.expect("raw insert");
    assert_eq!(store.run_events(&run.id, 0, 1).await.expect("the good page"), vec![good]);
    let err = store.run_events(&run.id, 0, 10).await.expect_err("undecodable event");
    assert!(matches!(&err, StoreError::Corrupt(m) if m.contains("from.the.future")), "{err:?}");
    let err = store.session_events(&session.id, 1, 10).await.expect_err("undecodable event");
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");

    raw_execute(&db, backend, &format!("UPDATE runs SET totals = 'not json' WHERE id = '{}'", run.id))
        .await
        .expect("raw update");
    let err = store.run(None, &run.id).await.expect_err("undecodable run");
    assert!(matches!(&err, StoreError::Corrupt(m) if m.contains("totals")), "{err:?}");
    raw_execute(&db, backend, &format!("UPDATE sessions SET personas = '{{}}' WHERE id = '{}'", session.id))
        .await
        .expect("raw update");
    let err = store.session(&acme, &session.id).await.expect_err("undecodable session");
    assert!(matches!(&err, StoreError::Corrupt(m) if m.contains("personas")), "{err:?}");
}
