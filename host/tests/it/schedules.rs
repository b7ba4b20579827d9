//! Schedules on both backends: the store's conformance (compare-and-set, fires recorded
//! once, pause, delete), the tick and the fire job with a clock the test moves (racing
//! ticks enqueue one fire, a retried fire posts once, catch-up `once` and `skip` after
//! downtime, paused and deleted schedules), and the HTTP API (validation with clear
//! errors, roles, tenant scoping, next fires).

use std::sync::Arc;

use axum::http::StatusCode;
use chrono::{DateTime, Duration as Span, DurationRound as _, Utc};
use maestro_core::run::{Author, SessionId};
use maestro_core::schedule::{CatchUp, FIRE_JOB, Schedule, ScheduleFire, ScheduleId, ScheduleTarget, fire_job_key};
use maestro_core::{Clock as _, Job, JobQuery, Role, StoreError, Tenant, TenantId, TenantName};
use maestro_host::jobs::JobHandler as _;
use maestro_host::schedules::{Fire, Fired, ScheduleSettings};
use serde_json::{Value, json};

use crate::harness::{Backend, Reply, TestDb, TestHost, backend_tests};

backend_tests!(
    the_store_advances_by_compare_and_set_records_fires_once_pauses_and_deletes,
    racing_ticks_enqueue_one_fire_and_a_retried_fire_job_posts_once,
    after_downtime_catch_up_once_runs_the_latest_missed_fire_and_skip_runs_none,
    paused_schedules_do_not_fire_and_a_deleted_schedule_s_pending_fire_does_nothing,
    a_template_schedule_opens_a_new_session_per_fire,
    a_schedule_whose_owner_key_was_revoked_posts_nothing,
    the_api_validates_expressions_scopes_tenants_and_roles_and_shows_next_fires,
);

const POLICY: &str = r#"
version = 1

[[grant]]
name = "teams"
subjects = ["tenant:acme", "tenant:globex"]
tools = ["personas.*"]
"#;

const PM: &str = "personas.product_manager";

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).expect("time").with_timezone(&Utc)
}

async fn tenant(store: &Arc<dyn maestro_core::Store>, name: &str) -> TenantId {
    let tenant = Tenant {
        id: TenantId::from_random([name.len() as u8; 16]),
        name: TenantName::parse(name).expect("name"),
        created_at: at("2026-01-01T00:00:00Z"),
    };
    store.create_tenant(&tenant).await.expect("tenant");
    tenant.id
}

fn schedule(n: u8, tenant: &TenantId, next: DateTime<Utc>, created: DateTime<Utc>) -> Schedule {
    Schedule {
        id: ScheduleId::from_random([n; 16]),
        tenant: tenant.clone(),
        cron: "0 * * * *".into(),
        time_zone: "Europe/Paris".into(),
        target: ScheduleTarget::Session { session: SessionId::from_random([n; 16]) },
        message: format!("report {n}"),
        catch_up: CatchUp::Skip,
        paused: false,
        next_fire_at: Some(next),
        created_by: "key_owner".into(),
        role: Role::Member,
        created_at: created,
        updated_at: created,
    }
}

async fn the_store_advances_by_compare_and_set_records_fires_once_pauses_and_deletes(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    let (acme, globex) = (tenant(&store, "acme").await, tenant(&store, "globex").await);
    let t0 = at("2026-01-01T10:00:00.123Z");
    let first = schedule(1, &acme, at("2026-01-01T11:00:00Z"), t0);
    let second = schedule(2, &acme, at("2026-01-01T12:00:00Z"), t0 + Span::seconds(1));
    store.create_schedule(&first).await.expect("create");
    store.create_schedule(&second).await.expect("create");
    assert!(matches!(store.create_schedule(&first).await, Err(StoreError::Conflict(_))));
    assert_eq!(store.schedule(Some(&acme), &first.id).await.expect("read"), Some(first.clone()), "round trip");
    assert_eq!(store.schedule(Some(&globex), &first.id).await.expect("read"), None, "another tenant's");
    assert_eq!(store.schedule(None, &first.id).await.expect("read"), Some(first.clone()));
    let list = |tenant: TenantId, before: Option<ScheduleId>, limit: u32| {
        let store = store.clone();
        async move {
            let page = store.schedules(&tenant, before.as_ref(), limit).await.expect("list");
            page.into_iter().map(|s| s.id).collect::<Vec<_>>()
        }
    };
    assert_eq!(list(acme.clone(), None, 10).await, vec![second.id.clone(), first.id.clone()], "newest first");
    assert_eq!(list(acme.clone(), None, 1).await, vec![second.id.clone()], "a page");
    assert_eq!(list(acme.clone(), Some(second.id.clone()), 10).await, vec![first.id.clone()], "after the cursor");
    assert!(list(acme.clone(), Some(first.id.clone()), 10).await.is_empty(), "past the oldest");
    assert!(list(globex.clone(), None, 10).await.is_empty());
    assert!(list(globex.clone(), Some(second.id.clone()), 10).await.is_empty(), "another tenant's cursor");

    let due = |now: &str| {
        let store = store.clone();
        let now = at(now);
        async move { store.due_schedules(now, 10).await.expect("due").into_iter().map(|s| s.id).collect::<Vec<_>>() }
    };
    assert!(due("2026-01-01T10:59:59.999Z").await.is_empty());
    assert_eq!(due("2026-01-01T12:00:00Z").await, vec![first.id.clone(), second.id.clone()], "soonest first");

    // Compare-and-set: the second advance from the same value loses.
    let next = at("2026-01-01T12:00:00Z");
    let now = at("2026-01-01T11:00:01Z");
    let mut tx = store.begin().await.expect("begin");
    assert!(tx.advance_schedule(&first.id, at("2026-01-01T11:00:00Z"), Some(next), now).await.expect("advance"));
    tx.commit().await.expect("commit");
    let mut tx = store.begin().await.expect("begin");
    assert!(!tx.advance_schedule(&first.id, at("2026-01-01T11:00:00Z"), Some(next), now).await.expect("advance"));
    tx.rollback().await.expect("rollback");
    let stored = store.schedule(None, &first.id).await.expect("read").expect("schedule");
    assert_eq!((stored.next_fire_at, stored.updated_at), (Some(next), now));

    // A fire is recorded once.
    let fire = ScheduleFire {
        schedule: first.id.clone(),
        fire_at: at("2026-01-01T11:00:00Z"),
        session: SessionId::from_random([7; 16]),
        run: maestro_core::run::RunId::from_random([7; 16]),
        at: now,
    };
    for expected in [true, false] {
        let mut tx = store.begin().await.expect("begin");
        assert_eq!(tx.record_fire(&fire).await.expect("record"), expected);
        tx.commit().await.expect("commit");
    }
    assert_eq!(store.schedule_fires(&first.id, 10).await.expect("fires"), vec![fire.clone()]);

    // Paused: kept next fire, not due, not advanced; resumed with a new next fire.
    let paused = store.set_schedule_paused(&acme, &first.id, true, None, now).await.expect("pause").expect("found");
    assert!(paused.paused);
    assert_eq!(paused.next_fire_at, Some(next));
    assert_eq!(due("2026-01-02T00:00:00Z").await, vec![second.id.clone()]);
    let mut tx = store.begin().await.expect("begin");
    assert!(!tx.advance_schedule(&first.id, next, None, now).await.expect("advance"), "a paused one is not advanced");
    tx.rollback().await.expect("rollback");
    assert_eq!(store.set_schedule_paused(&globex, &first.id, false, None, now).await.expect("resume"), None);
    let later = at("2026-01-03T00:00:00Z");
    let resumed =
        store.set_schedule_paused(&acme, &first.id, false, Some(later), now).await.expect("resume").expect("found");
    assert_eq!((resumed.paused, resumed.next_fire_at), (false, Some(later)));

    // Deleting takes the history with it; a fire of a deleted schedule is refused.
    assert!(!store.delete_schedule(&globex, &first.id).await.expect("delete"), "not another tenant's");
    assert!(store.delete_schedule(&acme, &first.id).await.expect("delete"));
    assert!(!store.delete_schedule(&acme, &first.id).await.expect("delete"));
    assert!(store.schedule_fires(&first.id, 10).await.expect("fires").is_empty());
    let mut tx = store.begin().await.expect("begin");
    let late = ScheduleFire { fire_at: next, ..fire };
    assert!(matches!(tx.record_fire(&late).await, Err(StoreError::NotFound(_))));
    drop(tx);
}

/// A host with the personas plugin, tenants `acme` (member, viewer) and `globex`
/// (member), and a session of acme's.
struct Fx {
    host: TestHost,
    platform: String,
    member: String,
    viewer: String,
    outsider: String,
    session: String,
}

impl Fx {
    async fn new(backend: Backend) -> Self {
        let host = TestHost::with_plugins(backend, &["personas"], POLICY).await;
        let platform = host.platform_token().await;
        let member = host.tenant_with_key(&platform, "acme", "member").await;
        let viewer = host.tenant_with_key(&platform, "acme", "viewer").await;
        let outsider = host.tenant_with_key(&platform, "globex", "member").await;
        let created =
            host.post("/v1/sessions", Some(&member), json!({ "personas": [PM], "strategy": "sequence" })).await;
        assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
        let session = created.body["id"].as_str().expect("id").to_owned();
        Self { host, platform, member, viewer, outsider, session }
    }

    /// Creates a schedule through the API as the member; its id.
    async fn schedule(&self, body: Value) -> ScheduleId {
        let reply = self.host.post("/v1/schedules", Some(&self.member), body).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
        ScheduleId::parse(reply.body["id"].as_str().expect("id")).expect("schedule id")
    }

    async fn stored(&self, id: &ScheduleId) -> Schedule {
        self.host.store.schedule(None, id).await.expect("read").expect("schedule")
    }

    async fn fire_jobs(&self) -> Vec<Job> {
        let query = JobQuery { kind: Some(FIRE_JOB.into()), ..JobQuery::default() };
        let mut jobs = self.host.store.jobs(&query).await.expect("jobs").jobs;
        jobs.reverse();
        jobs
    }

    /// Moves the clock to `at` (forward only).
    fn move_to(&self, at: DateTime<Utc>) {
        let now = self.host.clock.now();
        assert!(at >= now);
        self.host.clock.advance(at - now);
    }

    async fn user_messages(&self, session: &str) -> Vec<String> {
        let tenant = self.tenant().await;
        let session = SessionId::parse(session).expect("session id");
        let messages = self.host.store.messages(&tenant, &session, 0, 100).await.expect("messages");
        messages.into_iter().filter(|m| matches!(m.author, Author::User { .. })).map(|m| m.content).collect()
    }

    async fn tenant(&self) -> TenantId {
        let name = TenantName::parse("acme").expect("name");
        self.host.store.tenant_by_name(&name).await.expect("read").expect("tenant").id
    }
}

async fn racing_ticks_enqueue_one_fire_and_a_retried_fire_job_posts_once(backend: Backend) {
    let fx = Fx::new(backend).await;
    let id = fx.schedule(json!({ "cron": "*/5 * * * *", "session": fx.session, "message": "status" })).await;
    let next = fx.stored(&id).await.next_fire_at.expect("a next fire");
    assert!(next > fx.host.clock.now() && next.timestamp() % 300 == 0, "{next}");
    assert_eq!(fx.host.schedules.tick().await.expect("tick"), 0, "not due yet");

    fx.move_to(next + Span::seconds(3));
    // Two replicas tick at once over the same store.
    let other =
        crate::harness::schedules(&fx.host.store, fx.host.clock.clone(), &fx.host.tools, ScheduleSettings::default());
    let (a, b) = tokio::join!(fx.host.schedules.tick(), other.tick());
    assert_eq!(a.expect("tick") + b.expect("tick"), 1, "one of them enqueues the fire");
    assert_eq!(fx.host.schedules.tick().await.expect("tick"), 0, "the next fire is in the future");
    let jobs = fx.fire_jobs().await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].key, fire_job_key(&id, next));
    assert_eq!(fx.stored(&id).await.next_fire_at, Some(next + Span::minutes(5)));

    // The job runs, and runs again (a worker that died before recording it): one post.
    let handler = Fire(fx.host.schedules.clone());
    handler.handle(&jobs[0]).await.expect("fires");
    handler.handle(&jobs[0]).await.expect("a retry succeeds");
    assert_eq!(fx.user_messages(&fx.session).await, vec!["status".to_owned()]);
    assert_eq!(fx.host.schedules.fire(&id, next).await.expect("fire"), Fired::Already);
    let fires = fx.host.store.schedule_fires(&id, 10).await.expect("fires");
    assert_eq!(fires.len(), 1);
    assert_eq!((fires[0].fire_at, fires[0].session.to_string()), (next, fx.session.clone()));
    // The message started a run, queued as the schedule's owner.
    let run = fx.host.store.run(None, &fires[0].run).await.expect("read").expect("run");
    assert_eq!(run.role, Role::Member);
    assert!(fx.host.store.job_by_key(&format!("run:{}", run.id)).await.expect("job").is_some());
}

async fn after_downtime_catch_up_once_runs_the_latest_missed_fire_and_skip_runs_none(backend: Backend) {
    let fx = Fx::new(backend).await;
    let once =
        fx.schedule(json!({ "cron": "0 * * * *", "session": fx.session, "message": "once", "catch_up": "once" })).await;
    let skip =
        fx.schedule(json!({ "cron": "0 * * * *", "session": fx.session, "message": "skip", "catch_up": "skip" })).await;
    // Down until half past the hour, three and a half hours or more later: at least three
    // hourly fires missed, the latest 30 minutes late (well past the catch-up grace,
    // whatever the time of day the test starts at).
    let start = fx.host.clock.now();
    fx.move_to(start.duration_trunc(Span::hours(1)).expect("hour") + Span::minutes(210 + 60));
    let now = fx.host.clock.now();
    let latest = now.duration_trunc(Span::hours(1)).expect("hour");
    assert_eq!(fx.host.schedules.tick().await.expect("tick"), 1, "only `once` fires, and once");
    let jobs = fx.fire_jobs().await;
    assert_eq!(jobs.iter().map(|j| j.key.clone()).collect::<Vec<_>>(), vec![fire_job_key(&once, latest)]);
    for id in [&once, &skip] {
        assert_eq!(fx.stored(id).await.next_fire_at, Some(latest + Span::hours(1)), "the next fire is ahead");
    }
    Fire(fx.host.schedules.clone()).handle(&jobs[0]).await.expect("fires");
    assert_eq!(fx.user_messages(&fx.session).await, vec!["once".to_owned()]);

    // Back on time: both fire at their next hour.
    fx.move_to(latest + Span::hours(1) + Span::seconds(10));
    assert_eq!(fx.host.schedules.tick().await.expect("tick"), 2);
}

async fn paused_schedules_do_not_fire_and_a_deleted_schedule_s_pending_fire_does_nothing(backend: Backend) {
    let fx = Fx::new(backend).await;
    let body = json!({ "cron": "*/10 * * * *", "session": fx.session, "message": "ping" });
    let paused = fx.schedule(body.clone()).await;
    let deleted = fx.schedule(body).await;
    let reply = fx.host.post(&format!("/v1/schedules/{paused}/pause"), Some(&fx.member), json!({})).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!((reply.body["paused"].as_bool(), reply.body["next_fire_at"].is_null()), (Some(true), true));
    let next = fx.stored(&deleted).await.next_fire_at.expect("next");
    fx.move_to(next + Span::minutes(25));
    assert_eq!(fx.host.schedules.tick().await.expect("tick"), 1, "the paused one does not fire");
    let jobs = fx.fire_jobs().await;
    assert!(jobs[0].key.starts_with(&format!("schedule:{deleted}:")));

    let reply = fx.host.delete(&format!("/v1/schedules/{deleted}"), Some(&fx.member)).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{reply:?}");
    Fire(fx.host.schedules.clone()).handle(&jobs[0]).await.expect("nothing to do is success");
    assert!(fx.user_messages(&fx.session).await.is_empty(), "a deleted schedule posts nothing");

    // Resumed: the fires missed while paused never run; the next one is ahead.
    let reply = fx.host.post(&format!("/v1/schedules/{paused}/resume"), Some(&fx.member), json!({})).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let resumed = fx.stored(&paused).await;
    assert!(!resumed.paused && resumed.next_fire_at.expect("next") > fx.host.clock.now());
    assert_eq!(fx.host.schedules.tick().await.expect("tick"), 0);
}

async fn a_template_schedule_opens_a_new_session_per_fire(backend: Backend) {
    let fx = Fx::new(backend).await;
    let id = fx
        .schedule(json!({
            "cron": "0 9 * * *", "time_zone": "Europe/Paris", "message": "the daily digest",
            "template": { "title": "daily digest", "personas": [PM], "strategy": "sequence",
                          "limits": { "max_steps": 2 } }
        }))
        .await;
    let spec = maestro_core::schedule::CronSpec::parse("0 9 * * *", "Europe/Paris").expect("spec");
    let first = fx.stored(&id).await.next_fire_at.expect("next");
    assert_eq!(Some(first), spec.next_after(fx.host.clock.now()), "09:00 in Paris, in UTC");
    let mut sessions = Vec::new();
    for day in 0..2 {
        fx.move_to(first + Span::days(day) + Span::seconds(5));
        assert_eq!(fx.host.schedules.tick().await.expect("tick"), 1);
        let job = fx.fire_jobs().await.pop().expect("a job");
        Fire(fx.host.schedules.clone()).handle(&job).await.expect("fires");
        let fire = fx.host.store.schedule_fires(&id, 1).await.expect("fires").remove(0);
        sessions.push(fire.session.to_string());
    }
    assert_ne!(sessions[0], sessions[1], "a session per fire");
    for session in &sessions {
        let reply = fx.host.get(&format!("/v1/sessions/{session}"), Some(&fx.member)).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert_eq!(reply.body["title"], "daily digest");
        assert_eq!(reply.body["limits"]["max_steps"], 2);
        assert_eq!(fx.user_messages(session).await, vec!["the daily digest".to_owned()]);
    }
}

async fn the_api_validates_expressions_scopes_tenants_and_roles_and_shows_next_fires(backend: Backend) {
    let fx = Fx::new(backend).await;
    let host = &fx.host;
    let create = |token: &str, body: Value| {
        let token = token.to_owned();
        async move { host.post("/v1/schedules", Some(&token), body).await }
    };
    let refused = [
        (
            json!({ "cron": "61 * * * *", "session": fx.session, "message": "m" }),
            "invalid cron expression `61 * * * *`",
        ),
        (json!({ "cron": "* * * * * *", "session": fx.session, "message": "m" }), "at most once every 60 s"),
        (
            json!({ "cron": "0 9 * * *", "time_zone": "Mars/Olympus", "session": fx.session, "message": "m" }),
            "unknown time zone `Mars/Olympus`",
        ),
        (json!({ "cron": "0 0 30 2 *", "session": fx.session, "message": "m" }), "never fires"),
        (json!({ "cron": "0 9 * * *", "session": fx.session, "message": "  " }), "must not be empty"),
        (json!({ "cron": "0 9 * * *", "message": "m" }), "exactly one of `session` and `template`"),
        (
            json!({ "cron": "0 9 * * *", "session": fx.session, "template": { "personas": [PM] }, "message": "m" }),
            "exactly one",
        ),
    ];
    for (body, expected) in refused {
        let reply = create(&fx.member, body.clone()).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {reply:?}");
        assert_eq!(reply.code(), "invalid_request");
        let message = reply.body["error"]["message"].as_str().expect("message");
        assert!(message.contains(expected), "{body}: {message}");
        assert!(!message.ends_with('.'), "{message}");
    }
    let unknown = create(
        &fx.member,
        json!({ "cron": "0 9 * * *", "template": { "personas": ["personas.nobody"] }, "message": "m" }),
    )
    .await;
    assert_eq!((unknown.status, unknown.code()), (StatusCode::UNPROCESSABLE_ENTITY, "unknown_persona"));
    let foreign = create(&fx.outsider, json!({ "cron": "0 9 * * *", "session": fx.session, "message": "m" })).await;
    assert_eq!(foreign.status, StatusCode::NOT_FOUND, "another tenant's session: {foreign:?}");
    let viewer = create(&fx.viewer, json!({ "cron": "0 9 * * *", "session": fx.session, "message": "m" })).await;
    assert_eq!(viewer.status, StatusCode::FORBIDDEN);
    let none = host.get("/v1/schedules", Some(&fx.member)).await;
    assert_eq!(none.body["schedules"], json!([]), "nothing refused was stored");

    let mut all = Vec::new();
    for minute in [10, 20, 30] {
        let cron = format!("{minute} 8 * * 1-5");
        all.push(fx.schedule(json!({ "cron": cron, "time_zone": "UTC", "session": fx.session, "message": "m" })).await);
        fx.host.clock.advance(Span::milliseconds(1));
    }
    let id = all.last().expect("a schedule").clone();
    let listed = host.get("/v1/schedules", Some(&fx.viewer)).await;
    assert_eq!(listed.status, StatusCode::OK, "viewers read");
    assert_eq!(listed.body["schedules"][0]["id"], id.to_string());
    assert_eq!(listed.body["schedules"][0]["catch_up"], "once");
    assert_eq!(listed.body["next"], Value::Null, "one page");

    // Newest first, two per page, then the rest; bad paging is refused.
    let page = host.get("/v1/schedules?limit=2", Some(&fx.viewer)).await;
    let ids = |reply: &Reply| -> Vec<String> {
        let listed = reply.body["schedules"].as_array().expect("schedules");
        listed.iter().filter_map(|s| s["id"].as_str().map(str::to_owned)).collect()
    };
    let mut seen = ids(&page);
    assert_eq!(seen.len(), 2);
    let next = page.body["next"].as_str().expect("a next page");
    let rest = host.get(&format!("/v1/schedules?limit=2&before={next}"), Some(&fx.viewer)).await;
    assert_eq!(rest.status, StatusCode::OK, "{rest:?}");
    assert_eq!(rest.body["next"], Value::Null, "the last page has no next");
    seen.extend(ids(&rest));
    let expected: Vec<String> = all.iter().rev().map(ToString::to_string).collect();
    assert_eq!(seen, expected);
    let foreign = host.get(&format!("/v1/schedules?before={next}"), Some(&fx.outsider)).await;
    assert_eq!(foreign.body["schedules"], json!([]), "another tenant's cursor shows nothing");
    for query in ["limit=0", "limit=201", "before=nonsense", "colour=red"] {
        let reply = host.get(&format!("/v1/schedules?{query}"), Some(&fx.member)).await;
        assert_eq!((reply.status, reply.code()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"), "{query}");
    }
    let detail = host.get(&format!("/v1/schedules/{id}"), Some(&fx.member)).await;
    assert_eq!(detail.status, StatusCode::OK);
    let upcoming: Vec<DateTime<Utc>> = serde_json::from_value(detail.body["upcoming"].clone()).expect("times");
    assert_eq!(upcoming.len(), 5);
    assert!(upcoming.windows(2).all(|w| w[0] < w[1]));
    assert!(upcoming.iter().all(|t| t.format("%H:%M").to_string() == "08:30"), "{upcoming:?}");
    assert_eq!(detail.body["next_fire_at"], json!(upcoming[0]));
    assert_eq!(detail.body["session"], fx.session);
    assert_eq!(detail.body["fires"], json!([]));

    for (method, path) in [
        (axum::http::Method::GET, format!("/v1/schedules/{id}")),
        (axum::http::Method::POST, format!("/v1/schedules/{id}/pause")),
        (axum::http::Method::POST, format!("/v1/schedules/{id}/resume")),
        (axum::http::Method::DELETE, format!("/v1/schedules/{id}")),
    ] {
        let body = (method == axum::http::Method::POST).then(|| json!({}));
        let reply = host.send(method.clone(), &path, Some(&fx.outsider), body).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{method} {path} as another tenant");
    }
    assert_eq!(host.get("/v1/schedules/sch_nope", Some(&fx.member)).await.status, StatusCode::NOT_FOUND);
    let pause = host.post(&format!("/v1/schedules/{id}/pause"), Some(&fx.viewer), json!({})).await;
    assert_eq!(pause.status, StatusCode::FORBIDDEN);
    assert_eq!(host.delete(&format!("/v1/schedules/{id}"), Some(&fx.member)).await.status, StatusCode::NO_CONTENT);
    assert_eq!(host.get(&format!("/v1/schedules/{id}"), Some(&fx.member)).await.status, StatusCode::NOT_FOUND);
}

async fn a_schedule_whose_owner_key_was_revoked_posts_nothing(backend: Backend) {
    let fx = Fx::new(backend).await;
    let owner = fx.host.tenant_with_key(&fx.platform, "acme", "member").await;
    let reply = fx
        .host
        .post("/v1/schedules", Some(&owner), json!({ "cron": "*/5 * * * *", "session": fx.session, "message": "x" }))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    let id = ScheduleId::parse(reply.body["id"].as_str().expect("id")).expect("id");
    let key_id = reply.body["created_by"].as_str().expect("owner").to_owned();
    let revoked = fx.host.delete(&format!("/v1/keys/{key_id}"), Some(&fx.platform)).await;
    assert_eq!(revoked.status, StatusCode::OK, "{revoked:?}");
    fx.move_to(fx.stored(&id).await.next_fire_at.expect("next") + Span::seconds(1));
    assert_eq!(fx.host.schedules.tick().await.expect("tick"), 1);
    let job = fx.fire_jobs().await.pop().expect("the fire's job");
    Fire(fx.host.schedules.clone()).handle(&job).await.expect("nothing to do is success");
    assert!(fx.user_messages(&fx.session).await.is_empty(), "a revoked key posts nothing");
    assert!(fx.host.store.schedule_fires(&id, 10).await.expect("fires").is_empty());
}
