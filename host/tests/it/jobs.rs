//! Background jobs: the job store's conformance on both backends (idempotent enqueue,
//! exclusive claims under concurrency, lease takeover, owner-checked completion, backoff,
//! dead after the last attempt), the worker in process, `GET /v1/jobs`, and two real
//! `maestro serve` processes sharing one Postgres.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use maestro_core::{Job, JobFailure, JobQuery, JobState, NewJob, Store};
use maestro_host::accounts::SystemClock;
use maestro_host::jobs::{JobError, JobHandler, Registry, Worker, WorkerSettings};
use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{Backend, TestDb, TestHost, backend_tests};
use crate::server::{Server, maestro};

backend_tests!(
    enqueue_with_an_existing_key_returns_the_existing_job,
    concurrent_claimers_each_claim_every_job_once,
    an_expired_lease_is_taken_over_and_the_old_owner_can_no_longer_finish,
    heartbeats_keep_a_lease_from_being_taken_over,
    failed_attempts_back_off_and_die_after_max_attempts,
    a_permanent_failure_fails_the_job_without_retry,
    a_lease_lost_on_the_last_attempt_buries_the_job,
    only_queued_jobs_can_be_cancelled,
    lists_jobs_newest_first_with_filters_and_a_cursor,
    jobs_api_is_for_platform_admins_only,
    worker_runs_jobs_retries_failures_and_expires_holds,
    prunes_only_jobs_finished_before_the_cutoff,
    worker_abandons_a_job_whose_lease_was_taken_over,
    every_replica_schedules_a_recurring_job_once_per_slot,
);

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).expect("valid time")
}

fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

fn noop(key: &str, at: DateTime<Utc>) -> NewJob {
    NewJob::new("noop", key, &json!({}), at).expect("valid job")
}

async fn store(backend: Backend) -> (TestDb, Arc<dyn Store>) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    (db, store)
}

async fn job(store: &Arc<dyn Store>, id: i64) -> Job {
    store.job(id).await.expect("job").expect("stored")
}

async fn enqueue_with_an_existing_key_returns_the_existing_job(backend: Backend) {
    let (_db, store) = store(backend).await;
    let now = t0();
    let first = store.enqueue(&noop("once", now), now).await.expect("enqueue");
    assert!(first.created);
    assert_eq!((first.job.state, first.job.attempts, first.job.max_attempts), (JobState::Queued, 0, 5));
    assert_eq!((first.job.key.as_str(), first.job.kind.as_str(), first.job.payload.as_str()), ("once", "noop", "{}"));

    let other = NewJob::new("credits.expire_holds", "once", &json!({"x": 1}), now + secs(5)).expect("valid");
    let again = store.enqueue(&other, now + secs(1)).await.expect("enqueue again");
    assert!(!again.created, "same key: nothing new");
    assert_eq!(again.job, first.job, "the existing job, unchanged");

    let claimed = store.claim("w1", 10, now + secs(30), now).await.expect("claim");
    store.complete(claimed[0].id, "w1", now).await.expect("complete");
    let after = store.enqueue(&noop("once", now), now + secs(2)).await.expect("enqueue a finished key");
    assert!(!after.created && after.job.state == JobState::Succeeded, "a finished job is not run again");
    assert_eq!(store.job_by_key("once").await.expect("by key").map(|j| j.id), Some(first.job.id));
}

async fn concurrent_claimers_each_claim_every_job_once(backend: Backend) {
    const JOBS: usize = 120;
    const CLAIMERS: usize = 6;
    let (_db, store) = store(backend).await;
    let now = t0();
    for i in 0..JOBS {
        store.enqueue(&noop(&format!("job-{i}"), now), now).await.expect("enqueue");
    }
    let mut tasks = tokio::task::JoinSet::new();
    for claimer in 0..CLAIMERS {
        let store = store.clone();
        tasks.spawn(async move {
            let owner = format!("w{claimer}");
            let mut mine = Vec::new();
            loop {
                let jobs = store.claim(&owner, 3, now + secs(60), now).await.expect("claim");
                if jobs.is_empty() {
                    return mine;
                }
                for job in jobs {
                    assert_eq!(job.lease_owner.as_deref(), Some(owner.as_str()));
                    assert!(store.complete(job.id, &owner, now).await.expect("complete"), "the owner completes");
                    mine.push(job.id);
                }
            }
        });
    }
    let mut all = Vec::new();
    let mut busy = 0;
    while let Some(mine) = tasks.join_next().await {
        let mine = mine.expect("claimer");
        busy += usize::from(!mine.is_empty());
        all.extend(mine);
    }
    let unique: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(all.len(), JOBS, "every job claimed exactly once");
    assert_eq!(unique.len(), JOBS);
    assert!(busy > 1, "claimers ran side by side");
    for id in unique {
        let job = job(&store, id).await;
        assert_eq!((job.state, job.attempts), (JobState::Succeeded, 1), "{job:?}");
    }
}

async fn an_expired_lease_is_taken_over_and_the_old_owner_can_no_longer_finish(backend: Backend) {
    let (_db, store) = store(backend).await;
    let now = t0();
    let id = store.enqueue(&noop("taken", now), now).await.expect("enqueue").job.id;
    let claimed = store.claim("a", 10, now + secs(10), now).await.expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!((claimed[0].state, claimed[0].attempts), (JobState::Running, 1));
    assert!(store.claim("b", 10, now + secs(20), now + secs(9)).await.expect("claim").is_empty(), "lease held");

    let taken = store.claim("b", 10, now + secs(30), now + secs(11)).await.expect("claim after expiry");
    assert_eq!(taken.len(), 1, "the expired lease is taken over");
    assert_eq!((taken[0].lease_owner.as_deref(), taken[0].attempts), (Some("b"), 2));

    let at = now + secs(12);
    assert!(!store.complete(id, "a", at).await.expect("complete"), "the old owner cannot complete");
    assert!(!store.heartbeat(id, "a", at + secs(60), at).await.expect("heartbeat"), "nor extend");
    let failure = JobFailure { error: "late".into(), retry_at: Some(at) };
    assert_eq!(store.fail(id, "a", &failure, at).await.expect("fail"), None, "nor fail it");
    assert_eq!(job(&store, id).await.state, JobState::Running);
    assert!(store.complete(id, "b", at).await.expect("complete"), "the new owner completes");
    let done = job(&store, id).await;
    assert_eq!(
        (done.state, done.lease_owner.as_deref(), done.lease_expires_at),
        (JobState::Succeeded, Some("b"), None)
    );
    assert!(!store.complete(id, "b", at).await.expect("complete twice"), "completing twice does nothing");
}

async fn heartbeats_keep_a_lease_from_being_taken_over(backend: Backend) {
    let (_db, store) = store(backend).await;
    let now = t0();
    let id = store.enqueue(&noop("beat", now), now).await.expect("enqueue").job.id;
    store.claim("a", 1, now + secs(10), now).await.expect("claim");
    assert!(store.heartbeat(id, "a", now + secs(40), now + secs(5)).await.expect("heartbeat"));
    assert!(store.claim("b", 1, now + secs(60), now + secs(20)).await.expect("claim").is_empty(), "extended");
    assert_eq!(job(&store, id).await.lease_expires_at, Some(now + secs(40)));
    assert_eq!(store.claim("b", 1, now + secs(60), now + secs(41)).await.expect("claim").len(), 1, "then expired");
}

async fn failed_attempts_back_off_and_die_after_max_attempts(backend: Backend) {
    let (_db, store) = store(backend).await;
    let now = t0();
    let new = noop("flaky", now).with_max_attempts(2).expect("attempts");
    let id = store.enqueue(&new, now).await.expect("enqueue").job.id;
    store.claim("a", 1, now + secs(30), now).await.expect("claim");
    let retry = JobFailure { error: "upstream 503".into(), retry_at: Some(now + secs(5)) };
    assert_eq!(store.fail(id, "a", &retry, now).await.expect("fail"), Some(JobState::Queued));
    let queued = job(&store, id).await;
    assert_eq!((queued.run_at, queued.last_error.as_deref()), (now + secs(5), Some("upstream 503")));
    assert!(store.claim("a", 1, now + secs(30), now + secs(4)).await.expect("claim").is_empty(), "backing off");

    let again = store.claim("b", 1, now + secs(60), now + secs(5)).await.expect("claim");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 2);
    let retry = JobFailure { error: "still 503".into(), retry_at: Some(now + secs(20)) };
    assert_eq!(
        store.fail(id, "b", &retry, now + secs(6)).await.expect("fail"),
        Some(JobState::Dead),
        "out of attempts"
    );
    let dead = job(&store, id).await;
    assert_eq!((dead.state, dead.attempts, dead.last_error.as_deref()), (JobState::Dead, 2, Some("still 503")));
    assert!(store.claim("c", 1, now + secs(90), now + secs(60)).await.expect("claim").is_empty(), "dead stays dead");
}

async fn a_permanent_failure_fails_the_job_without_retry(backend: Backend) {
    let (_db, store) = store(backend).await;
    let now = t0();
    let id = store.enqueue(&noop("bad", now), now).await.expect("enqueue").job.id;
    store.claim("a", 1, now + secs(30), now).await.expect("claim");
    let permanent = JobFailure { error: "invalid payload".into(), retry_at: None };
    assert_eq!(store.fail(id, "a", &permanent, now).await.expect("fail"), Some(JobState::Failed));
    assert!(store.claim("a", 1, now + secs(30), now + secs(600)).await.expect("claim").is_empty());
    assert_eq!(job(&store, id).await.attempts, 1);
}

async fn a_lease_lost_on_the_last_attempt_buries_the_job(backend: Backend) {
    let (_db, store) = store(backend).await;
    let now = t0();
    let id = store.enqueue(&noop("last", now).with_max_attempts(1).expect("attempts"), now).await.expect("enqueue");
    store.claim("a", 1, now + secs(10), now).await.expect("claim");
    assert!(store.claim("b", 1, now + secs(30), now + secs(11)).await.expect("claim").is_empty(), "no extra attempt");
    let dead = job(&store, id.job.id).await;
    assert_eq!((dead.state, dead.attempts), (JobState::Dead, 1));
    assert!(dead.last_error.is_some_and(|e| e.contains("lease expired")));
}

async fn only_queued_jobs_can_be_cancelled(backend: Backend) {
    let (_db, store) = store(backend).await;
    let now = t0();
    let later = store.enqueue(&noop("later", now + secs(60)), now).await.expect("enqueue").job.id;
    let running = store.enqueue(&noop("running", now), now).await.expect("enqueue").job.id;
    store.claim("a", 10, now + secs(300), now).await.expect("claim");
    assert!(store.cancel(later, now).await.expect("cancel"));
    assert!(!store.cancel(running, now).await.expect("cancel running"), "a running job is left alone");
    assert_eq!(job(&store, later).await.state, JobState::Cancelled);
    assert!(store.claim("a", 10, now + secs(90), now + secs(61)).await.expect("claim").is_empty(), "never runs");
}

async fn lists_jobs_newest_first_with_filters_and_a_cursor(backend: Backend) {
    let (_db, store) = store(backend).await;
    let now = t0();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(store.enqueue(&noop(&format!("n{i}"), now), now).await.expect("enqueue").job.id);
    }
    let other = NewJob::new("other.kind", "o", &json!({}), now + secs(60)).expect("valid");
    let other = store.enqueue(&other, now).await.expect("enqueue").job.id;
    store.claim("a", 2, now + secs(30), now).await.expect("claim");

    let first = store.jobs(&JobQuery { kind: Some("noop".into()), limit: Some(2), ..JobQuery::default() }).await;
    let first = first.expect("page");
    assert_eq!(first.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), vec![ids[4], ids[3]], "newest first");
    let second = store
        .jobs(&JobQuery { kind: Some("noop".into()), limit: Some(2), before: first.next, ..JobQuery::default() })
        .await
        .expect("page");
    assert_eq!(second.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), vec![ids[2], ids[1]]);
    let running = store.jobs(&JobQuery { state: Some(JobState::Running), ..JobQuery::default() }).await;
    assert_eq!(running.expect("page").jobs.iter().map(|j| j.id).collect::<Vec<_>>(), vec![ids[1], ids[0]]);
    let all = store.jobs(&JobQuery::default()).await.expect("page");
    assert_eq!((all.jobs.len(), all.jobs[0].id, all.next), (6, other, None));
    let bad = store.jobs(&JobQuery { before: Some("nope".into()), ..JobQuery::default() }).await;
    assert!(matches!(bad, Err(maestro_core::StoreError::NotFound(_))), "{bad:?}");
}

async fn jobs_api_is_for_platform_admins_only(backend: Backend) {
    let host = TestHost::new(backend).await;
    let platform = host.platform_token().await;
    let admin = host.tenant_with_key(&platform, "acme", "admin").await;
    let now = maestro_core::Clock::now(host.clock.as_ref());
    for i in 0..3 {
        host.jobs.enqueue(&noop(&format!("api-{i}"), now)).await.expect("enqueue");
    }

    assert_eq!(host.get("/v1/jobs", None).await.status, StatusCode::UNAUTHORIZED);
    let refused = host.get("/v1/jobs", Some(&admin)).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "a tenant key, even an admin's, is refused");
    let page = host.get("/v1/jobs?kind=noop&state=queued&limit=2", Some(&platform)).await;
    assert_eq!(page.status, StatusCode::OK, "{page:?}");
    let keys: Vec<&str> =
        page.body["jobs"].as_array().expect("jobs").iter().filter_map(|j| j["key"].as_str()).collect();
    assert_eq!(keys, vec!["api-2", "api-1"]);
    assert_eq!(page.body["jobs"][0]["state"], "queued");
    let next = page.body["next"].as_str().expect("a next page");
    let rest = host.get(&format!("/v1/jobs?kind=noop&before={next}"), Some(&platform)).await;
    assert_eq!(rest.body["jobs"][0]["key"], "api-0");
    assert!(rest.body["next"].is_null());
    assert_eq!(host.get("/v1/jobs?state=paused", Some(&platform)).await.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(host.get("/v1/jobs?limit=0", Some(&platform)).await.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(host.get("/v1/jobs?colour=red", Some(&platform)).await.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(host.get("/v1/jobs?before=x", Some(&platform)).await.status, StatusCode::NOT_FOUND);
}

/// Fails each job's first attempt, succeeds after.
#[derive(Default)]
struct FailsOnce(std::sync::Mutex<HashMap<i64, u32>>, AtomicU32);

#[async_trait]
impl JobHandler for FailsOnce {
    async fn handle(&self, job: &Job) -> Result<(), JobError> {
        self.1.fetch_add(1, Ordering::SeqCst);
        let mut seen = self.0.lock().expect("lock");
        let runs = seen.entry(job.id).or_default();
        *runs += 1;
        if *runs == 1 { Err(JobError::Retry("first attempt fails".into())) } else { Ok(()) }
    }
}

async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn worker_runs_jobs_retries_failures_and_expires_holds(backend: Backend) {
    let host = TestHost::new(backend).await;
    let tenant = maestro_core::TenantId::from_random([7; 16]);
    host.credits.grant(&tenant, 10, "g", "").await.expect("grant");
    let reservation = host.credits.reserve(&tenant, 4, chrono::Duration::seconds(30), "r", "").await.expect("hold");
    host.clock.advance(chrono::Duration::seconds(31));

    let flaky = Arc::new(FailsOnce::default());
    let registry = Registry::builtin(host.credits.clone(), host.store.clone(), Arc::new(SystemClock))
        .register("test.flaky", flaky.clone());
    let mut settings = WorkerSettings::new(3, Duration::from_secs(5), Duration::from_millis(10));
    settings.retry_base = Duration::from_millis(20);
    settings.retry_cap = Duration::from_millis(40);
    let owner = settings.owner.clone();
    let stop = tokio_util::sync::CancellationToken::new();
    // Real time for the worker: leases and backoff are measured on the system clock.
    let worker = Worker::new(host.store.clone(), Arc::new(SystemClock), registry, settings).spawn(stop.clone());

    let now = t0();
    let expire = NewJob::new("credits.expire_holds", "sweep", &json!({}), now).expect("valid");
    let sweep = host.store.enqueue(&expire, now).await.expect("enqueue").job.id;
    let mut flaky_ids = Vec::new();
    for i in 0..4 {
        let new = NewJob::new("test.flaky", &format!("flaky-{i}"), &json!({}), now).expect("valid");
        flaky_ids.push(host.store.enqueue(&new, now).await.expect("enqueue").job.id);
    }
    let bad = NewJob::new("noop", "bad-payload", &json!({"sleep_ms": "soon"}), now).expect("valid");
    let bad = host.store.enqueue(&bad, now).await.expect("enqueue").job.id;
    let unknown = NewJob::new("nobody.handles", "unknown", &json!({}), now).expect("valid").with_max_attempts(1);
    let unknown = host.store.enqueue(&unknown.expect("attempts"), now).await.expect("enqueue").job.id;

    let store = host.store.clone();
    let all: Vec<i64> = [sweep, bad, unknown].into_iter().chain(flaky_ids.iter().copied()).collect();
    wait_until("every job to finish", Duration::from_secs(30), || {
        let store = store.clone();
        let all = all.clone();
        async move {
            for id in all {
                if !store.job(id).await.expect("job").expect("stored").state.is_final() {
                    return false;
                }
            }
            true
        }
    })
    .await;
    stop.cancel();
    worker.await.expect("worker stops");

    let swept = job(&host.store, sweep).await;
    assert_eq!((swept.state, swept.lease_owner.as_deref()), (JobState::Succeeded, Some(owner.as_str())));
    let hold = host.credits.hold(&tenant, &reservation.hold.id).await.expect("hold");
    assert_eq!(hold.state, maestro_core::HoldState::Expired, "the sweep job expired the hold");
    for id in flaky_ids {
        let flaky = job(&host.store, id).await;
        assert_eq!((flaky.state, flaky.attempts), (JobState::Succeeded, 2), "retried once: {flaky:?}");
        assert_eq!(flaky.last_error.as_deref(), Some("first attempt fails"));
    }
    assert_eq!(flaky.1.load(Ordering::SeqCst), 8);
    let bad = job(&host.store, bad).await;
    assert_eq!((bad.state, bad.attempts), (JobState::Failed, 1), "an invalid payload is not retried");
    assert!(bad.last_error.is_some_and(|e| e.contains("invalid noop payload")));
    let unknown = job(&host.store, unknown).await;
    assert_eq!(unknown.state, JobState::Dead);
    assert!(unknown.last_error.is_some_and(|e| e.contains("no handler")));
}

async fn prunes_only_jobs_finished_before_the_cutoff(backend: Backend) {
    let (_db, store) = store(backend).await;
    let now = t0();
    let done = store.enqueue(&noop("done", now), now).await.expect("enqueue").job.id;
    store.claim("a", 1, now + secs(30), now).await.expect("claim");
    store.complete(done, "a", now).await.expect("complete");
    let cancelled = store.enqueue(&noop("cancelled", now + secs(60)), now).await.expect("enqueue").job.id;
    store.cancel(cancelled, now + secs(1)).await.expect("cancel");
    let queued = store.enqueue(&noop("queued", now + secs(600)), now).await.expect("enqueue").job.id;
    let recent = store.enqueue(&noop("recent", now), now).await.expect("enqueue").job.id;
    store.claim("a", 1, now + secs(300), now + secs(100)).await.expect("claim");
    store.complete(recent, "a", now + secs(100)).await.expect("complete");

    assert_eq!(store.prune(now + secs(50), 100).await.expect("prune"), 2, "the two finished before the cutoff");
    assert_eq!(store.job(done).await.expect("job"), None);
    assert_eq!(store.job(cancelled).await.expect("job"), None);
    assert!(store.job(queued).await.expect("job").is_some(), "unfinished jobs stay, however old");
    assert!(store.job(recent).await.expect("job").is_some(), "recently finished jobs stay");
    assert!(store.enqueue(&noop("done", now), now + secs(200)).await.expect("enqueue").created, "a pruned key is free");
}

/// Records whether it ran to the end.
#[derive(Default)]
struct Slow(std::sync::atomic::AtomicBool);

#[async_trait]
impl JobHandler for Slow {
    async fn handle(&self, _job: &Job) -> Result<(), JobError> {
        tokio::time::sleep(Duration::from_secs(3)).await;
        self.0.store(true, Ordering::SeqCst);
        Ok(())
    }
}

async fn worker_abandons_a_job_whose_lease_was_taken_over(backend: Backend) {
    let (_db, store) = store(backend).await;
    let slow = Arc::new(Slow::default());
    let registry = Registry::default().register("test.slow", slow.clone());
    let settings = WorkerSettings::new(1, Duration::from_secs(1), Duration::from_millis(10));
    let owner = settings.owner.clone();
    let stop = tokio_util::sync::CancellationToken::new();
    let worker = Worker::new(store.clone(), Arc::new(SystemClock), registry, settings).spawn(stop.clone());
    let now = t0();
    let id = store.enqueue(&NewJob::new("test.slow", "slow", &json!({}), now).expect("valid"), now).await;
    let id = id.expect("enqueue").job.id;
    wait_until("the worker to claim the job", Duration::from_secs(10), || {
        let store = store.clone();
        async move { store.job(id).await.expect("job").expect("stored").state == JobState::Running }
    })
    .await;
    assert_eq!(job(&store, id).await.lease_owner.as_deref(), Some(owner.as_str()));

    // Another worker whose clock runs an hour ahead sees the lease as expired.
    let later = t0() + secs(3600);
    let taken = store.claim("thief", 1, later + secs(60), later).await.expect("claim");
    assert_eq!(taken.len(), 1, "taken over");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    stop.cancel();
    worker.await.expect("worker stops");
    assert!(!slow.0.load(Ordering::SeqCst), "the worker stopped running the job when its heartbeat failed");
    let held = job(&store, id).await;
    assert_eq!((held.state, held.lease_owner.as_deref()), (JobState::Running, Some("thief")), "untouched: {held:?}");
}

async fn every_replica_schedules_a_recurring_job_once_per_slot(backend: Backend) {
    let (_db, store) = store(backend).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let started = Instant::now();
    for _replica in 0..3 {
        let jobs = maestro_host::jobs::Jobs::new(store.clone(), Arc::new(SystemClock));
        jobs.schedule_every("test.tick", Duration::from_secs(1), stop.clone());
    }
    tokio::time::sleep(Duration::from_millis(2600)).await;
    stop.cancel();
    let slots_passed = usize::try_from(started.elapsed().as_secs()).expect("small") + 2;
    let page = store.jobs(&JobQuery { kind: Some("test.tick".into()), ..JobQuery::default() }).await.expect("page");
    let slots: HashSet<String> = page.jobs.iter().map(|j| j.key.clone()).collect();
    assert_eq!(slots.len(), page.jobs.len(), "one job per slot key");
    assert!(
        (2..=slots_passed).contains(&page.jobs.len()),
        "one job per elapsed second (at most {slots_passed}), not one per replica: {slots:?}"
    );
}

/// The must-show: two `maestro serve` processes on one Postgres run 1,000 jobs exactly
/// once between them, and a job held by a worker killed with SIGKILL is finished by the
/// other after its lease expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_postgres_run_each_job_once_and_finish_a_killed_workers_job() {
    const JOBS: usize = 1000;
    let db = TestDb::new(Backend::Postgres).await;
    let store = db.open().await;
    let start = |run: u32| {
        let mut command = maestro(&db, Backend::Postgres);
        command
            .env("MAESTRO_JOBS_LEASE", "2s")
            .env("MAESTRO_JOBS_POLL_INTERVAL", "20ms")
            .env("MAESTRO_JOBS_CONCURRENCY", "4")
            .env("MAESTRO_DATA_DIR", db.dir().join(format!("data-{run}")));
        let dir = db.dir();
        async move { Server::start(command, &dir, run).await }
    };
    let mut servers = vec![start(1).await, start(2).await];
    let pids: Vec<u32> = servers.iter().map(|s| s.child.id()).collect();
    let owner_pid = |job: &Job| -> u32 {
        let owner = job.lease_owner.as_deref().unwrap_or_else(|| panic!("no owner: {job:?}"));
        owner.split('-').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("owner {owner}"))
    };

    let now = t0();
    let started = Instant::now();
    let mut ids = Vec::with_capacity(JOBS);
    for i in 0..JOBS {
        ids.push(store.enqueue(&noop(&format!("many-{i}"), now), now).await.expect("enqueue").job.id);
    }
    let queued =
        |state| JobQuery { state: Some(state), kind: Some("noop".into()), limit: Some(1), ..JobQuery::default() };
    wait_until("1,000 jobs to finish", Duration::from_secs(180), || {
        let store = store.clone();
        async move {
            store.jobs(&queued(JobState::Queued)).await.expect("list").jobs.is_empty()
                && store.jobs(&queued(JobState::Running)).await.expect("list").jobs.is_empty()
        }
    })
    .await;
    let mut per_server: HashMap<u32, usize> = HashMap::new();
    let mut seen = 0;
    let mut query = JobQuery { kind: Some("noop".into()), limit: Some(500), ..JobQuery::default() };
    loop {
        let page = store.jobs(&query).await.expect("page");
        for job in &page.jobs {
            assert_eq!((job.state, job.attempts), (JobState::Succeeded, 1), "each job ran exactly once: {job:?}");
            *per_server.entry(owner_pid(job)).or_default() += 1;
            seen += 1;
        }
        match page.next {
            Some(next) => query.before = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, JOBS);
    for pid in &pids {
        assert!(per_server.get(pid).copied().unwrap_or(0) > 0, "both servers took jobs: {per_server:?}");
    }
    assert_eq!(per_server.values().sum::<usize>(), JOBS, "only the two servers ran them: {per_server:?}");
    eprintln!("{JOBS} jobs enqueued and run in {:?}, per server pid: {per_server:?}", started.elapsed());

    // A job that outlives its lease (kept by heartbeats), then loses its worker.
    let now = t0();
    let sleepy = NewJob::new("noop", "sleepy", &json!({ "sleep_ms": 3000 }), now).expect("valid");
    let sleepy = store.enqueue(&sleepy, now).await.expect("enqueue").job.id;
    wait_until("the sleepy job to start", Duration::from_secs(30), || {
        let store = store.clone();
        async move { store.job(sleepy).await.expect("job").expect("stored").state == JobState::Running }
    })
    .await;
    let holder = owner_pid(&job(&store, sleepy).await);
    let victim = pids.iter().position(|p| *p == holder).expect("held by one of the servers");
    servers[victim].child.kill().expect("SIGKILL the worker holding the job");
    servers[victim].child.wait().expect("reaped");
    let killed_at = Instant::now();

    wait_until("the other server to finish the killed worker's job", Duration::from_secs(60), || {
        let store = store.clone();
        async move { store.job(sleepy).await.expect("job").expect("stored").state == JobState::Succeeded }
    })
    .await;
    let finished = job(&store, sleepy).await;
    assert_eq!(finished.attempts, 2, "one takeover after the lease expired: {finished:?}");
    assert_eq!(owner_pid(&finished), pids[1 - victim], "finished by the surviving server");
    assert!(killed_at.elapsed() >= Duration::from_millis(2500), "the survivor ran the whole job after taking it");

    let survivor = servers.remove(1 - victim);
    let log = survivor.stop().await;
    assert!(log.contains("job worker stopped"), "the worker drains on SIGTERM:\n{log}");
}
