//! Several `maestro serve` replicas on one Postgres, as real processes over real sockets
//! with a fake model server on 127.0.0.1: schedules fire once between them, a run
//! executing on one replica streams live from another (LISTEN/NOTIFY; the store poll is
//! set to an hour so that nothing else could carry the events in time), and when the
//! executing replica is killed with SIGKILL the other takes the run over and finishes
//! it, its stream dense from the first event to the terminal one; a document edited
//! through one replica reaches an MCP client subscribed to it on the other.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use maestro_core::run::{Author, EventBody, RunId, RunState};
use maestro_core::{JobQuery, Store, TenantName};
use maestro_host::llm::ProviderKind;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::fake_llm::{FakeLlm, Script, usage};
use crate::harness::{Backend, TestDb};
use crate::runs_api::Stream;
use crate::server::{Server, maestro};

const PM: &str = "personas.product_manager";

/// Two replicas' shared setup: plugins, policy, and a config naming the fake model.
struct Site {
    db: TestDb,
    config: std::path::PathBuf,
}

impl Site {
    async fn new(fake: &FakeLlm, extra: &str) -> Self {
        let db = TestDb::new(Backend::Postgres).await;
        let (plugins, policies) = (db.dir().join("plugins"), db.dir().join("policies"));
        crate::fixtures::install(&plugins, "personas");
        std::fs::create_dir_all(&policies).expect("policy dir");
        std::fs::write(
            policies.join("team.toml"),
            "version = 1\n[[grant]]\nname = \"personas\"\nsubjects = [\"role:member+\"]\ntools = [\"personas.*\"]\n",
        )
        .expect("policy");
        let config = db.dir().join("maestro.toml");
        let text = format!(
            "[jobs]\nlease = \"2s\"\npoll_interval = \"100ms\"\n\n{extra}\n{provider}\n\
             [[llm.models]]\nid = \"fast\"\nprovider = \"fake\"\nmodel = \"upstream-fast\"\ntier = \"fast\"\n\
             context_window = 32000\nmax_output_tokens = 400\n\
             [[llm.models]]\nid = \"best\"\nprovider = \"fake\"\nmodel = \"upstream-best\"\ntier = \"best\"\n\
             context_window = 32000\nmax_output_tokens = 400\n\n\
             [[credits.models]]\nmodel = \"fast\"\ninput_per_million = 1000\noutput_per_million = 1000\n\
             [[credits.models]]\nmodel = \"best\"\ninput_per_million = 1000\noutput_per_million = 1000\n",
            provider = fake.provider_toml("fake", ProviderKind::OpenAi),
        );
        std::fs::write(&config, text).expect("config");
        Self { db, config }
    }

    async fn start(&self, run: u32) -> Server {
        let mut command = maestro(&self.db, Backend::Postgres);
        // Replicas share only the database: each has its own data directory, and so its
        // own search index (two processes cannot hold one index).
        command
            .env("MAESTRO_DATA_DIR", self.db.dir().join(format!("replica-{run}")))
            .env("MAESTRO_PLUGIN_DIR", self.db.dir().join("plugins"))
            .env("MAESTRO_POLICY_DIR", self.db.dir().join("policies"))
            .env("MAESTRO_CONFIG", &self.config);
        Server::start(command, &self.db.dir(), run).await
    }
}

/// Tenant `acme` with credits and a member key (through `server`), and a session of the
/// product manager alone.
async fn acme_session(server: &Server) -> (String, String) {
    let platform = server.bootstrap_token();
    let (status, _) = server.call(Method::POST, "/v1/tenants", &platform, Some(json!({ "name": "acme" }))).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, member) =
        server.call(Method::POST, "/v1/keys", &platform, Some(json!({ "tenant": "acme", "role": "member" }))).await;
    let member = member["token"].as_str().expect("token").to_owned();
    let reply = reqwest::Client::new()
        .post(format!("{}/v1/credits/grants", server.base))
        .bearer_auth(&platform)
        .header("idempotency-key", "replicas-grant")
        .json(&json!({ "tenant": "acme", "amount": 10_000_000, "memo": "test" }))
        .send()
        .await
        .expect("grant");
    assert!(reply.status().is_success(), "{:?}", reply.text().await);
    let (status, session) = server
        .call(Method::POST, "/v1/sessions", &member, Some(json!({ "personas": [PM], "strategy": "sequence" })))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{session}");
    (member, session["id"].as_str().expect("session id").to_owned())
}

/// Polls `check` every 100 ms until it holds or `limit` passes.
async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two replicas tick every second on a schedule firing every two seconds: every fire
/// time posts exactly one message and starts exactly one run, and the fire jobs are one
/// per fire time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_fire_each_schedule_time_exactly_once() {
    let fake = FakeLlm::start().await;
    fake.always(Script::openai_text("noted", usage(10, 2)));
    let site =
        Site::new(&fake, "[schedules]\ntick_interval = \"1s\"\nmin_period = \"1s\"\ncatch_up_grace = \"1m\"\n").await;
    let a = site.start(1).await;
    let b = site.start(2).await;
    let (member, session) = acme_session(&a).await;
    let (status, schedule) = b
        .call(
            Method::POST,
            "/v1/schedules",
            &member,
            Some(json!({ "cron": "*/2 * * * * *", "session": session, "message": "status, please" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{schedule}");
    let id = schedule["id"].as_str().expect("id").to_owned();
    let fires = |server: &Server| {
        let (id, member, base) = (id.clone(), member.clone(), server.base.clone());
        async move {
            let reply = reqwest::Client::new()
                .get(format!("{base}/v1/schedules/{id}"))
                .bearer_auth(&member)
                .send()
                .await
                .expect("get");
            let body: Value = reply.json().await.expect("json");
            body["fires"].as_array().map_or(0, Vec::len)
        }
    };
    wait_until("four fires", Duration::from_secs(60), || {
        let count = fires(&a);
        async move { count.await >= 4 }
    })
    .await;
    let paused = a.call(Method::POST, &format!("/v1/schedules/{id}/pause"), &member, None).await;
    assert_eq!(paused.0, StatusCode::OK, "{}", paused.1);

    let store = site.db.open().await;
    let tenant = store.tenant_by_name(&TenantName::parse("acme").expect("name")).await.expect("read").expect("tenant");
    let session_id = maestro_core::run::SessionId::parse(&session).expect("session id");
    // Every run started by a fire finishes (pending fire jobs of the paused schedule
    // post nothing).
    wait_until("every run to finish", Duration::from_secs(60), || {
        let (store, tenant, session_id) = (store.clone(), tenant.id.clone(), session_id.clone());
        async move {
            let runs = store.runs(&tenant, &session_id, 200).await.expect("runs");
            runs.iter().all(|r| r.state.is_final())
                && store
                    .jobs(&JobQuery { kind: Some("schedule.fire".into()), ..JobQuery::default() })
                    .await
                    .expect("jobs")
                    .jobs
                    .iter()
                    .all(|j| j.state.is_final())
        }
    })
    .await;

    let schedule_id = maestro_core::schedule::ScheduleId::parse(&id).expect("schedule id");
    let mut fired = store.schedule_fires(&schedule_id, 200).await.expect("fires");
    fired.reverse();
    assert!(fired.len() >= 4, "{fired:?}");
    let times: Vec<i64> = fired.iter().map(|f| f.fire_at.timestamp_millis()).collect();
    assert_eq!(times.iter().collect::<HashSet<_>>().len(), times.len(), "each fire time once: {times:?}");
    // Two seconds apart; a tick late by more than a period (a loaded machine) runs the
    // missed fires as one, as `catch_up = "once"` says, so a gap is a multiple of it.
    for pair in times.windows(2) {
        assert!(pair[1] > pair[0] && (pair[1] - pair[0]) % 2000 == 0, "fire times on the schedule: {times:?}");
    }
    let messages = store.messages(&tenant.id, &session_id, 0, 500).await.expect("messages");
    let posted: Vec<_> = messages.iter().filter(|m| matches!(m.author, Author::User { .. })).collect();
    assert_eq!(posted.len(), fired.len(), "one message per fire");
    assert!(posted.iter().all(|m| m.content == "status, please"));
    let runs = store.runs(&tenant.id, &session_id, 500).await.expect("runs");
    assert_eq!(runs.len(), fired.len(), "one run per fire");
    assert!(runs.iter().all(|r| r.state == RunState::Completed), "{runs:?}");
    // Each completed run's distillation asks the model too (in the background): not a run's call.
    let run_calls =
        fake.requests().iter().filter(|r| r.body["response_format"]["json_schema"]["name"] != "maestro_facts").count();
    assert_eq!(run_calls, fired.len(), "one model call per run, none repeated");
    let jobs = store
        .jobs(&JobQuery { kind: Some("schedule.fire".into()), limit: Some(500), ..JobQuery::default() })
        .await
        .expect("jobs")
        .jobs;
    let keys: HashSet<&str> = jobs.iter().map(|j| j.key.as_str()).collect();
    assert_eq!(keys.len(), jobs.len());
    for fire in &fired {
        let key = maestro_core::schedule::fire_job_key(&schedule_id, fire.fire_at);
        assert!(keys.contains(key.as_str()), "the fire of {} ran as job {key}", fire.fire_at);
    }
    drop(store);
    a.stop().await;
    b.stop().await;
}

/// A run executing on one replica streams from the other as it happens (the other's
/// store poll is an hour: only the notifications bring the events in time); SIGKILL of
/// the executing replica mid-answer leaves the run to the other, which takes it over
/// when the lease expires and finishes it; the stream read from the survivor is dense
/// from 1 to the terminal event and holds every stored event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_streams_live_from_another_replica_and_survives_the_kill_of_its_executor() {
    let fake = FakeLlm::start().await;
    // Sixty pieces, a quarter of a second apart: still streaming when the test kills
    // its replica (it never ends by itself).
    fake.push(
        Script::openai_text(&"word ".repeat(48), usage(10, 4)).paced(Duration::from_millis(250)).await_close_after(120),
    );
    fake.push(Script::openai_text("the whole answer", usage(10, 4)));
    let site = Site::new(&fake, "[events]\npoll_interval = \"1h\"\n").await;
    let mut servers = vec![site.start(1).await, site.start(2).await];
    let (member, session) = acme_session(&servers[0]).await;
    let (status, posted) = servers[0]
        .call(Method::POST, &format!("/v1/sessions/{session}/messages"), &member, Some(json!({ "content": "go" })))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{posted}");
    let run = RunId::parse(posted["run"]["id"].as_str().expect("run id")).expect("run id");

    let store = site.db.open().await;
    let delta_count = |store: std::sync::Arc<dyn Store>, run: RunId| async move {
        let events = store.run_events(&run, 0, 1000).await.expect("events");
        events.iter().filter(|e| matches!(e.body, EventBody::MessageDelta { .. })).count()
    };
    wait_until("the first delta", Duration::from_secs(60), || {
        let count = delta_count(store.clone(), run.clone());
        async move { count.await >= 1 }
    })
    .await;
    let job = store.job_by_key(&format!("run:{run}")).await.expect("job").expect("the run's job");
    let owner = job.lease_owner.expect("a running job has an owner");
    let executor = servers
        .iter()
        .position(|s| owner.starts_with(&format!("{}-", s.child.id())))
        .unwrap_or_else(|| panic!("no server owns {owner}"));
    let other = 1 - executor;

    let mut stream = Stream::open(&servers[other].base, &format!("/v1/runs/{run}/events"), &member, None)
        .await
        .unwrap_or_else(|(status, body)| panic!("{status}: {body}"));
    let first = stream.event().await.expect("the replayed events");
    let mut seen = vec![first];
    let head_after_replay = store.run(None, &run).await.expect("read").expect("run").last_seq;
    // Events committed on the executor after the reader was served: carried by NOTIFY.
    let live = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let event = stream.event().await.expect("the stream stays open");
            let seq: i64 = event.id.as_deref().expect("id").parse().expect("seq");
            seen.push(event);
            if seq > head_after_replay {
                return seq;
            }
        }
    })
    .await;
    assert!(live.is_ok(), "no event crossed replicas live; stored head was {head_after_replay}");

    let pid = servers[executor].child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-KILL", &pid]).status().expect("kill").success());
    servers[executor].child.wait().expect("the killed server is reaped");

    let rest = tokio::time::timeout(Duration::from_secs(60), stream.rest()).await;
    let Ok(rest) = rest else { panic!("the survivor never finished the run:\n{}", servers[other].stderr_text()) };
    seen.extend(rest);
    let ids: Vec<i64> = seen.iter().map(|e| e.id.as_deref().expect("id").parse().expect("seq")).collect();
    let stored = store.run_events(&run, 0, 1000).await.expect("events");
    assert_eq!(ids, (1..=stored.len() as i64).collect::<Vec<_>>(), "dense, every stored event, once");
    let kinds: Vec<&str> = seen.iter().map(|e| e.event.as_str()).collect();
    assert!(kinds.contains(&"run.interrupted"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"run.completed"), "{kinds:?}");
    let finished = store.run(None, &run).await.expect("read").expect("run");
    assert_eq!(finished.state, RunState::Completed);
    // The completed run's distillation may ask the model too (in the background).
    let run_calls =
        fake.requests().iter().filter(|r| r.body["response_format"]["json_schema"]["name"] != "maestro_facts").count();
    assert_eq!(run_calls, 2, "only the cut call was asked again");
    drop(store);
    servers.remove(other).stop().await;
}

/// A minimal 2025-11-25 MCP session on one replica: initialised, subscribed to `uri`,
/// with its standalone GET stream open (where `notifications/resources/updated` goes).
async fn subscribed_session(server: &Server, token: &str, uri: &str) -> reqwest::Response {
    let http = reqwest::Client::new();
    let url = format!("{}/mcp", server.base);
    let post = |session: Option<&str>, body: Value| {
        let mut request = http
            .post(&url)
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .json(&body);
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        request.send()
    };
    let init = json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": { "name": "maestro-tests", "version": "1" } } });
    let response = post(None, init).await.expect("initialize");
    assert_eq!(response.status(), StatusCode::OK);
    let session = response.headers().get("mcp-session-id").expect("session id").to_str().expect("ascii").to_owned();
    drop(response.text().await);
    let initialized = post(Some(&session), json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }));
    assert_eq!(initialized.await.expect("initialized").status(), StatusCode::ACCEPTED);
    let subscribe = json!({ "jsonrpc": "2.0", "id": 2, "method": "resources/subscribe", "params": { "uri": uri } });
    let answer = post(Some(&session), subscribe).await.expect("subscribe");
    assert_eq!(answer.status(), StatusCode::OK);
    let answer = answer.text().await.expect("subscribe answer");
    assert!(answer.contains("\"result\":{}"), "subscribed: {answer}");
    let stream = http
        .get(&url)
        .bearer_auth(token)
        .header("accept", "text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .header("mcp-session-id", &session)
        .send()
        .await
        .expect("GET stream");
    assert_eq!(stream.status(), StatusCode::OK);
    stream
}

/// A document edited through one replica reaches an MCP client subscribed to it on the
/// other: the change crosses as a Postgres notification (nothing else carries document
/// changes between processes), and the subscriber then reads the new text there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_edited_on_one_replica_notifies_its_subscriber_on_another() {
    let fake = FakeLlm::start().await;
    let site = Site::new(&fake, "").await;
    std::fs::write(
        site.db.dir().join("policies").join("documents.toml"),
        "version = 1\n[[grant]]\nname = \"documents\"\nsubjects = [\"role:member+\"]\ntools = [\"documents.*\"]\n",
    )
    .expect("policy");
    let (a, b) = (site.start(1).await, site.start(2).await);
    let (member, _) = acme_session(&a).await;
    let (status, created) = a
        .call(
            Method::POST,
            "/v1/documents",
            &member,
            Some(json!({ "title": "Plan", "kind": "markdown", "content": "# Plan\n" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().expect("id").to_owned();
    let uri = format!("maestro://documents/{id}");
    let mut stream = subscribed_session(&b, &member, &uri).await;

    // Edit through A until B's subscriber hears of it (B listens from its start; each
    // edit is a new version, so a retry is never a repeat).
    let mut heard = String::new();
    let mut version = 1;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !heard.contains("notifications/resources/updated") {
        assert!(Instant::now() < deadline, "no resources/updated crossed replicas: {heard}");
        let edit = reqwest::Client::new()
            .put(format!("{}/v1/documents/{id}", a.base))
            .bearer_auth(&member)
            .header("if-match", format!("\"{version}\""))
            .json(&json!({ "content": format!("# Plan\n\n- step {version}\n") }))
            .send()
            .await
            .expect("put");
        assert_eq!(edit.status(), StatusCode::OK);
        version += 1;
        let wait = Instant::now() + Duration::from_secs(5);
        while !heard.contains("notifications/resources/updated") && Instant::now() < wait {
            let left = wait.saturating_duration_since(Instant::now());
            if let Ok(Ok(Some(bytes))) = tokio::time::timeout(left, stream.chunk()).await {
                heard.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
    }
    assert!(heard.contains(&format!("\"uri\":\"{uri}\"")), "{heard}");
    let (status, read) = b.call(Method::GET, &format!("/v1/documents/{id}"), &member, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read["version"], version, "B reads what A wrote");
    drop(stream);
    a.stop().await;
    b.stop().await;
}
