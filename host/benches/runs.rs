//! Agent runtime benchmark. Prints figures beside floors measured in the same run; never
//! asserts timings.
//!
//! `cargo bench -p maestro-host --bench runs` (after building the personas plugin:
//! `cargo build --release --target wasm32-wasip2 -p maestro-plugin-personas`). Postgres
//! runs too when `TEST_DATABASE_URL` names a server (a fresh database is created on it).
//!
//! 1. The orchestrator's own overhead per model call, against a model that answers at
//!    once (an in-process `ModelProvider` yielding its whole answer immediately): a run
//!    of one step (`sequence`, one persona) executed by `Runner::execute`, which covers
//!    loading the run and session, the principal and policy, the persona rendered in the
//!    sandbox, the context, the budget and the credit hold, the call, the settlement,
//!    and every event written durably and published. p50 at c=1; model calls per second
//!    at c=16; and per call in runs of four steps (run start and end amortised). Floor:
//!    one durable unit of work appending one event (the least a recorded model call
//!    can cost), p50 at c=1. Goal: ≤ 0.3 ms p50.
//! 2. Events per second delivered to 1,000 SSE subscribers of one run over real HTTP on
//!    127.0.0.1 (events appended in units of 10, as the runner coalesces). Floor: the
//!    same events through a bare tokio broadcast channel to 1,000 receivers.
//! 3. Replay of a 10,000-event run: through a hub feed (store reads and decoding), and
//!    over SSE from request to last event. Floor: the raw `SELECT` of the same rows.
//!    Goal: ≤ 50 ms.

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::{micros, millis, percentile};
use maestro_core::llm::{
    ChatEvent, ChatRequest, ChatResponse, ChatStream, FinishReason, LlmError, ModelInfo, ModelProvider, Usage,
};
use maestro_core::plugin::ModelTier;
use maestro_core::run::{EventBody, NewEvent, RunId, RunTotals, Strategy};
use maestro_core::{Clock, Role, Store};
use maestro_host::accounts::SystemClock;
use maestro_host::config::{Config, Env, ModelPrice, Overrides};
use maestro_host::orchestrator::hub::EventHub;
use maestro_host::orchestrator::runner::{Runner, RunnerPorts, RunnerSettings};
use maestro_host::orchestrator::{NewSession, Orchestrator};
use maestro_host::plugins::{Manifest, sha256_hex};
use maestro_host::storage::StoreLocation;
use maestro_host::tools::{Principal, Tools};

const WARMUP: usize = 20;
const CALLS_C1: usize = 300;
const WINDOW: Duration = Duration::from_secs(3);
const SUBSCRIBERS: usize = 1000;
const FAN_OUT_EVENTS: usize = 500;
const REPLAY_EVENTS: usize = 10_000;
const GOAL_OVERHEAD_MS: f64 = 0.3;
const GOAL_REPLAY_MS: f64 = 50.0;

fn main() {
    let component = components_dir().join("maestro_plugin_personas.wasm");
    if !component.is_file() {
        eprintln!(
            "missing {}.\nBuild it first:\n    cargo build --release --target wasm32-wasip2 -p maestro-plugin-personas",
            component.display()
        );
        std::process::exit(1);
    }
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(cores).enable_all().build().expect("bench runtime");
    println!("Maestro agent runtime benchmark: {cores} cores");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("Load average before the run: {}", load.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let sqlite = StoreLocation::Sqlite(dir.path().join("data/maestro.db"));
        bench_backend("sqlite", dir.path(), &component, sqlite).await;
        if let Ok(server) = std::env::var("TEST_DATABASE_URL")
            && !server.is_empty()
        {
            let pg_dir = tempfile::tempdir().expect("temp dir");
            let url = common::fresh_postgres_database(&server, "maestro_bench_runs").await;
            bench_backend("postgres", pg_dir.path(), &component, StoreLocation::Postgres(url)).await;
        }
    });
}

/// A model that answers at once: `Started`, one text delta, `Completed` with usage.
#[derive(Debug)]
struct Instant_;

struct Answer(Vec<ChatEvent>);

#[async_trait]
impl ChatStream for Answer {
    async fn next(&mut self) -> Option<Result<ChatEvent, LlmError>> {
        if self.0.is_empty() { None } else { Some(Ok(self.0.remove(0))) }
    }
}

#[async_trait]
impl ModelProvider for Instant_ {
    fn models(&self) -> Vec<ModelInfo> {
        [ModelTier::Small, ModelTier::Medium, ModelTier::Large]
            .into_iter()
            .map(|tier| ModelInfo {
                id: format!("m-{}", maestro_core::llm::tier_name(tier)),
                provider: "bench".into(),
                tier,
                context_window: 128_000,
                max_output_tokens: 256,
                fallbacks: vec![],
            })
            .collect()
    }

    async fn stream(&self, request: ChatRequest) -> Result<Box<dyn ChatStream>, LlmError> {
        let usage = Usage { input_tokens: 1200, output_tokens: 8, ..Usage::default() };
        Ok(Box::new(Answer(vec![
            ChatEvent::Started { model: request.model.clone(), provider: "bench".into() },
            ChatEvent::Text { text: "ok, done.".into() },
            ChatEvent::Completed(ChatResponse {
                model: request.model,
                provider: "bench".into(),
                text: "ok, done.".into(),
                tool_calls: vec![],
                finish: FinishReason::Stop,
                usage,
                usage_reported: true,
            }),
        ])))
    }
}

#[derive(Clone)]
struct Bench {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    orchestrator: Orchestrator,
    runner: Runner,
    hub: Arc<EventHub>,
    principal: Principal,
    state: maestro_host::http::AppState,
    settings: maestro_host::http::HttpSettings,
    key: String,
}

async fn setup(dir: &Path, component: &Path, location: StoreLocation) -> Bench {
    install_personas(&dir.join("plugins"), component);
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).expect("policy dir");
    std::fs::write(
        policies.join("bench.toml"),
        "version = 1\n[[grant]]\nname = \"bench\"\nsubjects = [\"tenant:acme\"]\ntools = [\"personas.*\"]\n",
    )
    .expect("policy");
    let env: Env = [
        ("MAESTRO_DATA_DIR", dir.join("data")),
        ("MAESTRO_PLUGIN_DIR", dir.join("plugins")),
        ("MAESTRO_POLICY_DIR", dir.join("policies")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.display().to_string()))
    .collect();
    let mut config = Config::load(None, &env, &Overrides::default()).expect("config");
    config.store = location;
    let store = maestro_host::open_store(&config).await.expect("store opens");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let accounts = maestro_host::accounts::Accounts::new(store.clone(), clock.clone());
    let tenant = accounts.create_tenant("acme").await.expect("tenant");
    let scope = maestro_core::KeyScope::Tenant { tenant_id: tenant.id.clone(), role: Role::Member };
    let issued = accounts.create_key(scope, "bench".into(), None).await.expect("key");
    let credits = Arc::new(maestro_host::credits::Credits::new(store.clone(), clock.clone()));
    credits.grant(&tenant.id, 1_000_000_000_000, "bench-grant", "bench").await.expect("grant");
    let tools: Arc<Tools> = maestro_host::open_tools(&config, &env, maestro_host::PluginLoading::Now, credits.clone())
        .await
        .expect("tools");
    let hub = Arc::new(EventHub::new(store.clone()));
    let orchestrator = Orchestrator::new(store.clone(), store.clone(), clock.clone(), tools.clone(), hub.clone());
    let prices = ["m-fast", "m-balanced", "m-best"]
        .into_iter()
        .map(|model| ModelPrice { model: model.into(), input_per_million: 1000, output_per_million: 4000 })
        .collect();
    let runner = Runner::new(
        RunnerPorts {
            runs: store.clone(),
            unit: store.clone(),
            tenants: store.clone(),
            clock: clock.clone(),
            tools: tools.clone(),
            credits: credits.clone(),
            models: Arc::new(Instant_),
            prices,
            hub: hub.clone(),
        },
        RunnerSettings::default(),
    );
    let principal = Principal {
        tenant: "acme".into(),
        tenant_id: tenant.id.clone(),
        role: Role::Member,
        key_id: issued.key.id.to_string(),
    };
    let schedules = Arc::new(maestro_host::schedules::Schedules::new(
        maestro_host::schedules::SchedulePorts {
            store: store.clone(),
            runs: store.clone(),
            unit: store.clone(),
            keys: store.clone(),
            clock: clock.clone(),
            tools: tools.clone(),
        },
        Default::default(),
    ));
    let state = maestro_host::http::AppState {
        accounts,
        metrics: Arc::default(),
        tools,
        credits,
        jobs: Arc::new(maestro_host::jobs::Jobs::new(store.clone(), clock.clone())),
        shutdown: tokio_util::sync::CancellationToken::new(),
        billing: None,
        orchestrator: Arc::new(orchestrator.clone()),
        documents: Arc::new(maestro_host::documents::Documents::new(store.clone(), clock.clone())),
        schedules,
        artifacts: maestro_host::artifacts::Artifacts::on_disk(
            std::env::temp_dir().join("maestro-bench-artifacts"),
            store.clone(),
            clock.clone(),
        ),
        memories: None,
        search: None,
        embedder: Arc::new(maestro_host::embed::Unavailable::new(maestro_host::embed::info(), "not benchmarked here")),
        retrieval: None,
    };
    let settings = maestro_host::http_settings(&config);
    Bench {
        store,
        clock,
        orchestrator,
        runner,
        hub,
        principal,
        state,
        settings,
        key: issued.token.expose_secret().to_owned(),
    }
}

async fn bench_backend(name: &str, dir: &Path, component: &Path, location: StoreLocation) {
    println!("\n== {name} ==");
    let bench = setup(dir, component, location).await;
    overhead(&bench).await;
    fan_out(&bench).await;
    replay(&bench).await;
}

// ---------------------------------------------------------------------------------
// 1. Overhead per model call

async fn one_run(bench: &Bench, session: &maestro_core::run::SessionId) -> Duration {
    let posted = bench.orchestrator.post_message(&bench.principal, session, "go".into()).await.expect("post");
    let started = Instant::now();
    let state = bench.runner.execute(&posted.run.id).await.expect("run executes");
    let elapsed = started.elapsed();
    assert_eq!(state, maestro_core::run::RunState::Completed);
    elapsed
}

async fn new_session(bench: &Bench) -> maestro_core::run::SessionId {
    team_session(bench, &["personas.writer"]).await
}

async fn team_session(bench: &Bench, team: &[&str]) -> maestro_core::run::SessionId {
    let new = NewSession {
        title: "bench".into(),
        personas: team.iter().map(|p| (*p).to_owned()).collect(),
        strategy: Strategy::Sequence,
        limits: None,
    };
    bench.orchestrator.create_session(&bench.principal, new).await.expect("session").id
}

async fn overhead(bench: &Bench) {
    println!("-- 1. orchestrator overhead per model call (model answers at once) --");
    let mut session = new_session(bench).await;
    for _ in 0..WARMUP {
        one_run(bench, &session).await;
    }
    let mut samples = Vec::with_capacity(CALLS_C1);
    for i in 0..CALLS_C1 {
        // A fresh session every 25 runs keeps the context (and its prompt) small.
        if i % 25 == 0 {
            session = new_session(bench).await;
        }
        samples.push(one_run(bench, &session).await);
    }
    samples.sort();
    // Floor: one durable unit of work appending one event to a run.
    let floor_run = bench.orchestrator.post_message(&bench.principal, &session, "floor".into()).await.expect("post");
    let mut floor = Vec::with_capacity(CALLS_C1);
    for _ in 0..CALLS_C1 {
        let started = Instant::now();
        append(bench, &floor_run.run.id, &floor_run.run.session, vec![delta("x")]).await;
        floor.push(started.elapsed());
    }
    floor.sort();
    // The persona rendered in the sandbox (one per step), to tell it apart.
    let mut renders = Vec::with_capacity(CALLS_C1);
    let args = serde_json::json!({ "idea": "x" });
    for _ in 0..CALLS_C1 {
        let started = Instant::now();
        let tools = &bench.state.tools;
        tools.render_persona(&bench.principal, "personas.writer", &args, Default::default()).await.expect("renders");
        renders.push(started.elapsed());
    }
    renders.sort();
    let (p50, floor_p50) = (percentile(&samples, 0.5), percentile(&floor, 0.5));
    println!(
        "c=1:  p50 {:>8.1} µs  p90 {:>8.1} µs  p99 {:>8.1} µs per model call ({} runs of one step)",
        micros(p50),
        micros(percentile(&samples, 0.9)),
        micros(percentile(&samples, 0.99)),
        samples.len()
    );
    println!(
        "      floor (one durable unit appending one event): p50 {:>8.1} µs; overhead/floor {:.1}x; goal ≤ {GOAL_OVERHEAD_MS} ms p50: {}",
        micros(floor_p50),
        p50.as_secs_f64() / floor_p50.as_secs_f64().max(1e-9),
        if millis(p50) <= GOAL_OVERHEAD_MS { "met" } else { "NOT met" }
    );
    println!("      of which the persona rendered in the sandbox: p50 {:>8.1} µs", micros(percentile(&renders, 0.5)));
    // The same, amortised: a run of four steps (sequence of four personas), per call.
    let team = ["personas.product_manager", "personas.architect", "personas.critic", "personas.writer"];
    let mut per_call = Vec::new();
    for i in 0..CALLS_C1 / 4 {
        if i % 10 == 0 {
            session = team_session(bench, &team).await;
        }
        per_call.push(one_run(bench, &session).await / 4);
    }
    per_call.sort();
    println!(
        "      in runs of 4 steps (run start and end shared by 4 calls): p50 {:>8.1} µs per model call",
        micros(percentile(&per_call, 0.5))
    );
    // c=16: each caller its own session.
    let mut sessions = Vec::new();
    for _ in 0..16 {
        sessions.push(new_session(bench).await);
    }
    let bench_ref = leak(bench);
    let deadline = Instant::now() + WINDOW;
    let started = Instant::now();
    let tasks: Vec<_> = sessions
        .into_iter()
        .map(|session| {
            tokio::spawn(async move {
                let mut done = 0usize;
                let mut session = session;
                while Instant::now() < deadline {
                    if done % 25 == 24 {
                        session = new_session(bench_ref).await;
                    }
                    one_run(bench_ref, &session).await;
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut calls = 0;
    for task in tasks {
        calls += task.await.expect("caller");
    }
    let elapsed = started.elapsed();
    println!(
        "c=16: {:.0} model calls/s ({calls} in {:.2?}; the floor's single-caller rate is {:.0} units/s)",
        calls as f64 / elapsed.as_secs_f64(),
        elapsed,
        1.0 / floor_p50.as_secs_f64().max(1e-9)
    );
}

/// The bench's handles (cheap `Arc`s) for spawned tasks, kept until the process exits.
fn leak(bench: &Bench) -> &'static Bench {
    Box::leak(Box::new(bench.clone()))
}

fn delta(text: &str) -> EventBody {
    EventBody::MessageDelta { step: 1, call: 1, text: text.to_owned() }
}

async fn append(bench: &Bench, run: &RunId, session: &maestro_core::run::SessionId, bodies: Vec<EventBody>) {
    let mut tx = bench.store.begin().await.expect("begin");
    let mut events = Vec::with_capacity(bodies.len());
    for body in bodies {
        let at = bench.clock.now();
        events.push(
            tx.append_event(&NewEvent { run: run.clone(), session: session.clone(), at, body }).await.expect("append"),
        );
    }
    tx.commit().await.expect("commit");
    bench.hub.publish(&events);
}

// ---------------------------------------------------------------------------------
// 2. Fan-out to SSE subscribers

async fn serve(bench: &Bench) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let app = maestro_host::http::router(bench.state.clone(), &bench.settings);
    tokio::spawn(maestro_host::http::serve(listener, app, std::future::pending::<()>()));
    format!("http://{address}")
}

/// Reads an SSE response to its end; counts `event:` lines (split across chunks too).
async fn count_events(mut response: reqwest::Response) -> usize {
    let mut count = 0;
    let mut carry: Vec<u8> = Vec::new();
    while let Some(chunk) = response.chunk().await.expect("stream reads") {
        carry.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(newline) = carry[start..].iter().position(|b| *b == b'\n') {
            if carry[start..start + newline].starts_with(b"event:") {
                count += 1;
            }
            start += newline + 1;
        }
        carry.drain(..start);
    }
    count
}

async fn fan_out(bench: &Bench) {
    println!("-- 2. events delivered to {SUBSCRIBERS} SSE subscribers of one run --");
    let base = serve(bench).await;
    let session = new_session(bench).await;
    let posted = bench.orchestrator.post_message(&bench.principal, &session, "fan out".into()).await.expect("post");
    let (run, session) = (posted.run.id.clone(), posted.run.session.clone());
    let client = reqwest::Client::builder().pool_max_idle_per_host(SUBSCRIBERS).build().expect("client");
    let mut readers = Vec::with_capacity(SUBSCRIBERS);
    for _ in 0..SUBSCRIBERS {
        let response =
            client.get(format!("{base}/v1/runs/{run}/events")).bearer_auth(&bench.key).send().await.expect("subscribe");
        assert!(response.status().is_success(), "{}", response.status());
        readers.push(tokio::spawn(count_events(response)));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    for batch in 0..FAN_OUT_EVENTS / 10 {
        let mut bodies: Vec<EventBody> = (0..10).map(|i| delta(&format!("token {batch}.{i} "))).collect();
        if batch + 1 == FAN_OUT_EVENTS / 10 {
            bodies.pop();
            bodies.push(EventBody::RunCompleted { totals: RunTotals::default() });
        }
        append(bench, &run, &session, bodies).await;
    }
    let mut delivered = 0;
    for reader in readers {
        delivered += reader.await.expect("reader");
    }
    let elapsed = started.elapsed();
    assert_eq!(delivered, SUBSCRIBERS * FAN_OUT_EVENTS, "every subscriber got every event");
    // Floor: a bare broadcast channel to as many receivers.
    let (sender, _) = tokio::sync::broadcast::channel::<Arc<String>>(FAN_OUT_EVENTS + 1);
    let receivers: Vec<_> = (0..SUBSCRIBERS)
        .map(|_| {
            let mut receiver = sender.subscribe();
            tokio::spawn(async move {
                let mut n = 0usize;
                while receiver.recv().await.is_ok() {
                    n += 1;
                }
                n
            })
        })
        .collect();
    let floor_started = Instant::now();
    for i in 0..FAN_OUT_EVENTS {
        let _ = sender.send(Arc::new(format!("token {i}")));
    }
    drop(sender);
    let mut floor_delivered = 0;
    for receiver in receivers {
        floor_delivered += receiver.await.expect("receiver");
    }
    let floor = floor_started.elapsed();
    println!(
        "{delivered} events in {elapsed:.2?}: {:.0} events/s delivered over SSE (lagged feeds: {}); \
         floor (bare broadcast, {floor_delivered} deliveries): {:.0} events/s",
        delivered as f64 / elapsed.as_secs_f64(),
        bench.hub.lagged(),
        floor_delivered as f64 / floor.as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------
// 3. Replay

async fn replay(bench: &Bench) {
    println!("-- 3. replay of a {REPLAY_EVENTS}-event run --");
    let base = serve(bench).await;
    let session = new_session(bench).await;
    let posted = bench.orchestrator.post_message(&bench.principal, &session, "long".into()).await.expect("post");
    let (run, session) = (posted.run.id.clone(), posted.run.session.clone());
    let started = Instant::now();
    for batch in 0..REPLAY_EVENTS / 500 {
        let mut bodies: Vec<EventBody> = (0..500).map(|_| delta("a token of text ")).collect();
        if batch + 1 == REPLAY_EVENTS / 500 {
            bodies.pop();
            bodies.push(EventBody::RunCompleted { totals: RunTotals::default() });
        }
        append(bench, &run, &session, bodies).await;
    }
    println!("written in {} units of 500 events: {:.1} ms", REPLAY_EVENTS / 500, millis(started.elapsed()));
    let mut feed_times = Vec::new();
    let mut sse_times = Vec::new();
    let mut floor_times = Vec::new();
    let client = reqwest::Client::new();
    for _ in 0..5 {
        let started = Instant::now();
        let mut feed = bench.hub.run_feed(&run, 0);
        let mut count = 0;
        while feed.next().await.expect("feed").is_some() {
            count += 1;
        }
        feed_times.push(started.elapsed());
        assert_eq!(count, REPLAY_EVENTS);

        let started = Instant::now();
        let response = client
            .get(format!("{base}/v1/runs/{run}/events"))
            .bearer_auth(&bench.key)
            .send()
            .await
            .expect("replay request");
        let count = count_events(response).await;
        sse_times.push(started.elapsed());
        assert_eq!(count, REPLAY_EVENTS);

        let started = Instant::now();
        let rows = bench.store.run_events(&run, 0, REPLAY_EVENTS as u32).await.expect("rows");
        floor_times.push(started.elapsed());
        assert_eq!(rows.len(), REPLAY_EVENTS);
    }
    for times in [&mut feed_times, &mut sse_times, &mut floor_times] {
        times.sort();
    }
    let verdict = |d: Duration| if millis(d) <= GOAL_REPLAY_MS { "met" } else { "NOT met" };
    println!(
        "hub feed (store pages + decoding): median {:.1} ms; over SSE, request to last event: median {:.1} ms \
         (goal ≤ {GOAL_REPLAY_MS} ms: {})",
        millis(feed_times[2]),
        millis(sse_times[2]),
        verdict(sse_times[2])
    );
    println!("floor (one store read of all {REPLAY_EVENTS} rows, decoded): median {:.1} ms", millis(floor_times[2]));
}

// ---------------------------------------------------------------------------------

fn install_personas(plugin_dir: &Path, component: &Path) {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/personas/plugin.toml");
    let mut manifest = Manifest::read(&source).expect("personas manifest");
    let bytes = std::fs::read(component).expect("read component");
    manifest.sha256 = Some(sha256_hex(&bytes));
    let dir = plugin_dir.join("personas");
    std::fs::create_dir_all(&dir).expect("plugin dir");
    std::fs::write(dir.join(&manifest.component), &bytes).expect("write component");
    std::fs::write(dir.join("plugin.toml"), toml::to_string(&manifest).expect("manifest toml"))
        .expect("write manifest");
}

fn components_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("bench binary path");
    let target = exe.ancestors().nth(3).expect("<target>/release/deps/<binary>");
    target.join("wasm32-wasip2/release")
}
