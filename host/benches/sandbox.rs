//! Sandbox benchmark: prints figures, never asserts timings.
//!
//! `cargo bench -p maestro-host --bench sandbox` (build the fixture components first:
//! `cargo build --release --target wasm32-wasip2 -p maestro-plugin-hostile -p maestro-plugin-calc`,
//! plus `-p maestro-plugin-text -p maestro-plugin-web -p maestro-plugin-personas` for the
//! ten-plugin start).
//!
//! Method notes:
//! - CPU time is the whole process's user + system time from `/proc/self/stat` (every
//!   thread: callers, sandbox workers, epoch ticker). Its unit is a 10 ms clock tick, so
//!   throughput windows last 3 s (≤ 0.3 % resolution).
//! - RSS is `VmRSS` from `/proc/self/status`.
//! - Callers run on this binary's own runtime (the "request runtime"), as in the server:
//!   a call starts there and moves to the sandbox's runtime only if the guest yields.
//! - Every trivial-call figure is printed beside the bare-wasmtime floor measured in the
//!   same run, with the ratio.
//! - Instruction counts (stable on a noisy machine): `cargo bench -p maestro-host --bench
//!   sandbox -- callgrind` runs each case under `valgrind --tool=callgrind` for two call
//!   counts and prints the difference per call (start-up cancels out).

#[path = "common/mod.rs"]
mod common;
use common::{micros, millis, percentile};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use maestro_core::policy::PolicySet;
use maestro_host::accounts::{Accounts, SystemClock};
use maestro_host::http::{self, AppState, HttpSettings};
use maestro_host::plugins::{PluginRegistry, sha256_hex};
use maestro_host::policy::PolicyStore;
use maestro_host::sandbox::{CallContext, CallLimits, LoadedPlugin, Sandbox, SandboxConfig};
use maestro_host::storage::{self, StoreLocation};
use maestro_host::tools::{SecretValues, Tools};
use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

/// Length of each throughput window.
const WINDOW: Duration = Duration::from_secs(3);
/// Every fixture component, for the ten-plugin start.
const PLUGINS: [&str; 5] = ["calc", "hostile", "personas", "text", "web"];

fn main() {
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let components = components_dir();
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "callgrind-case") {
        // One case for callgrind: `callgrind-case <case> <calls>` (run by `callgrind`).
        let case = Case::parse(&args[at + 1]);
        let calls = args[at + 2].parse().expect("call count");
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt");
        runtime.block_on(case.run(&components, calls));
        return;
    }
    if args.iter().any(|a| a == "callgrind") {
        callgrind(&components);
        return;
    }
    let missing: Vec<_> = PLUGINS.iter().filter(|p| !component(&components, p).is_file()).collect();
    if !missing.is_empty() {
        eprintln!(
            "missing fixture components in {} ({missing:?}).\nBuild them first:\n    \
             cargo build --release --target wasm32-wasip2 -p maestro-plugin-hostile -p maestro-plugin-calc \
             -p maestro-plugin-text -p maestro-plugin-web -p maestro-plugin-personas",
            components.display()
        );
        std::process::exit(1);
    }
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(cores).enable_all().build().expect("bench runtime");
    println!("Maestro sandbox benchmark: {cores} cores, components from {}", components.display());
    runtime.block_on(run(cores, &components));
}

async fn run(cores: usize, components: &Path) {
    let rss_start = rss_kib();
    // Loads come first: the cold case needs an empty cache, and the other sections use
    // the sandbox the ten-plugin start leaves behind.
    let (sandbox, hostile) = plugin_loads(components).await;
    trivial_calls(cores, &sandbox, &hostile, components).await;
    timeout_overshoot(&sandbox, &hostile).await;
    responsiveness(&sandbox, &hostile).await;
    memory(rss_start, &sandbox, &hostile).await;
}

// ---------------------------------------------------------------------------------
// 1-2. Trivial calls

async fn trivial_calls(cores: usize, sandbox: &Arc<Sandbox>, hostile: &LoadedPlugin, components: &Path) {
    println!("\n1-2. Trivial call: instantiate + call + drop, fresh Store per call ({}s windows)", WINDOW.as_secs());
    println!("  Ratios are CPU per call over the bare-wasmtime floor (call_async) with as many callers, same run.");
    println!(
        "  {:<44} {:>7} {:>9} {:>8} {:>8} {:>11} {:>7}",
        "case", "callers", "calls/s", "p50 µs", "p99 µs", "CPU µs/call", "ratio"
    );
    let callers = [1, cores];

    // The floor: a minimal component on bare wasmtime, pooling allocator, InstancePre.
    let mut floors = Vec::new();
    let pre = Arc::new(bare_instance_pre(false));
    let floor = move || {
        let pre = pre.clone();
        async move { bare_call(&pre, false).await }
    };
    for n in callers {
        let run = drive(n, floor.clone()).await;
        floors.push(run.cpu_per_call());
        run.print("bare wasmtime, call_async (the floor)", n, None);
    }
    let floor_of = |n: usize| floors[usize::from(n != 1)];
    let pre = Arc::new(bare_instance_pre(true));
    let metered = move || {
        let pre = pre.clone();
        async move { bare_call(&pre, true).await }
    };
    for n in callers {
        drive(n, metered.clone()).await.print("bare wasmtime + fuel/epoch, call_async", n, Some(floor_of(n)));
    }
    let pre = Arc::new(bare_instance_pre(false));
    let sync_call = move || {
        let pre = pre.clone();
        // Synchronous wasmtime calls; they run inline on the caller task.
        async move {
            let mut store = bare_store(&pre, false);
            let instance = pre.instantiate(&mut store).expect("instantiate");
            let answer = instance.get_typed_func::<(), (u32,)>(&mut store, "answer").expect("export");
            assert_eq!(answer.call(&mut store, ()).expect("call"), (42,));
        }
    };
    for n in callers {
        drive(n, sync_call.clone()).await.print("bare wasmtime, sync call", n, Some(floor_of(n)));
    }
    // The same hostile component on bare wasmtime with a WASI linker: what instantiating
    // a real Rust component costs before anything of ours.
    let wasi = Arc::new(WasiFloor::new(&component(components, "hostile")));
    let wasi_call = move || {
        let wasi = wasi.clone();
        async move { wasi.call().await }
    };
    for n in callers {
        drive(n, wasi_call.clone()).await.print("bare wasmtime + WASI linker, hostile.noop", n, Some(floor_of(n)));
    }

    let fresh = sandbox.call_tool(hostile, "noop", "{}".to_owned(), &CallContext::default()).await.metering.fuel;
    for (label, plugin) in [
        ("sandbox hostile.noop (fresh instance)", hostile.clone()),
        ("sandbox hostile.noop, stateless (pooled)", hostile.clone().stateless(true)),
    ] {
        let (sandbox, plugin, context) = (sandbox.clone(), Arc::new(plugin), Arc::new(CallContext::default()));
        let noop = move || {
            let (sandbox, plugin, context) = (sandbox.clone(), plugin.clone(), context.clone());
            async move {
                let outcome = sandbox.call_tool(&plugin, "noop", "{}".to_owned(), &context).await;
                if let Err(failure) = outcome.result {
                    panic!("hostile.noop failed: {failure}");
                }
            }
        };
        for n in callers {
            drive(n, noop.clone()).await.print(label, n, Some(floor_of(n)));
        }
    }
    let pooled = hostile.clone().stateless(true);
    let reused = sandbox.call_tool(&pooled, "noop", "{}".to_owned(), &CallContext::default()).await.metering.fuel;
    println!(
        "  (guest work of one hostile.noop call, as metered: {fresh} fuel units ≈ wasm instructions on a fresh \
         instance, {reused} on a pooled one)"
    );
    let metrics = sandbox.warm_memory_slots();
    println!(
        "  (kept resident in {} warm memory slots: {:.0} KiB each on average)",
        metrics.0,
        metrics.1 as f64 / 1024.0 / metrics.0.max(1) as f64
    );
}

async fn bare_call(pre: &InstancePre<()>, metered: bool) {
    let mut store = bare_store(pre, metered);
    let instance = pre.instantiate_async(&mut store).await.expect("instantiate");
    let answer = instance.get_typed_func::<(), (u32,)>(&mut store, "answer").expect("export");
    assert_eq!(answer.call_async(&mut store, ()).await.expect("call"), (42,));
}

/// A real Rust component (the hostile fixture) on bare wasmtime: pooling allocator, WASI
/// p2 linker (its own imports as traps), InstancePre, a fresh Store and WASI context per
/// call, `tools.call("noop", "{}")` through an untyped export.
struct WasiFloor {
    pre: InstancePre<WasiState>,
}

struct WasiState {
    wasi: wasmtime_wasi::WasiCtx,
    http: wasmtime_wasi_http::WasiHttpCtx,
    hooks: NoNetwork,
    table: wasmtime::component::ResourceTable,
}

impl wasmtime_wasi_http::WasiHttpView for WasiState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

/// The floor's outgoing HTTP: refused (the measured call makes none).
struct NoNetwork;

impl wasmtime_wasi_http::WasiHttpHooks for NoNetwork {
    fn send_request(
        &mut self,
        _request: ::http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        ::http::Response<wasmtime_wasi_http::WasiBody>,
                        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

impl wasmtime_wasi::WasiView for WasiState {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        wasmtime_wasi::WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiFloor {
    fn new(path: &Path) -> Self {
        let mut config = Config::new();
        config.wasm_component_model(true);
        let slots = pool_slots();
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(slots)
            .total_core_instances(slots * 4)
            .total_memories(slots * 2)
            .total_tables(slots * 4)
            .total_stacks(slots)
            .max_memory_size(64 << 20);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).expect("WASI floor engine");
        let component = Component::from_file(&engine, path).expect("hostile compiles");
        let mut linker = Linker::<WasiState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).expect("WASI links");
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).expect("WASI HTTP links");
        // The component's own (non-WASI) imports as traps. Not `define_unknown_imports_as_traps`:
        // it redefines WASI interfaces imported at a newer patch version than the linker
        // names, with resources of their own, which then fail to link.
        for (name, item) in component.component_type().imports(&engine) {
            let (false, wasmtime::component::types::ComponentItem::ComponentInstance(instance)) =
                (name.starts_with("wasi:"), item.ty)
            else {
                continue;
            };
            let mut stubs = linker.instance(name).expect("stub instance");
            for (export, item) in instance.exports(&engine) {
                if let wasmtime::component::types::ComponentItem::ComponentFunc(_) = item.ty {
                    stubs.func_new(export, |_, _, _, _| wasmtime::bail!("not linked in the floor")).expect("stub");
                }
            }
        }
        Self { pre: linker.instantiate_pre(&component).expect("hostile links") }
    }

    async fn call(&self) {
        use wasmtime::component::Val;
        let state = WasiState {
            wasi: wasmtime_wasi::WasiCtx::builder().build(),
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            hooks: NoNetwork,
            table: wasmtime::component::ResourceTable::new(),
        };
        let mut store = Store::new(self.pre.engine(), state);
        let instance = self.pre.instantiate_async(&mut store).await.expect("instantiate");
        let tools = instance.get_export_index(&mut store, None, "maestro:plugin/tools@0.2.0").expect("tools");
        let call = instance.get_export_index(&mut store, Some(&tools), "call").expect("call");
        let call = instance.get_func(&mut store, call).expect("func");
        let mut results = [Val::Bool(false)];
        call.call_async(&mut store, &[Val::String("noop".into()), Val::String("{}".into())], &mut results)
            .await
            .expect("noop");
        assert!(matches!(&results[0], Val::Result(Ok(_))), "{:?}", results[0]);
    }
}

/// A component exporting `answer: func() -> u32`, linked with nothing.
const ANSWER_WAT: &str = r#"
(component
  (core module $m (func (export "answer") (result i32) i32.const 42))
  (core instance $i (instantiate $m))
  (func (export "answer") (result u32) (canon lift (core func $i "answer"))))
"#;

/// A pooling-allocator engine with the answer component pre-instantiated; `metered`
/// turns on fuel and epoch interruption like the sandbox's engine.
fn bare_instance_pre(metered: bool) -> InstancePre<()> {
    let mut config = Config::new();
    config.wasm_component_model(true).consume_fuel(metered).epoch_interruption(metered);
    let slots = pool_slots();
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(slots)
        .total_core_instances(slots)
        .total_memories(slots)
        .total_tables(slots)
        .total_stacks(slots)
        .max_memory_size(1 << 20);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    let engine = Engine::new(&config).expect("bare engine");
    let component = Component::new(&engine, ANSWER_WAT).expect("answer component compiles");
    Linker::new(&engine).instantiate_pre(&component).expect("answer component links")
}

fn bare_store(pre: &InstancePre<()>, metered: bool) -> Store<()> {
    let mut store = Store::new(pre.engine(), ());
    if metered {
        store.set_fuel(u64::MAX).expect("fuel");
        // Nothing ticks this engine's epoch, so a deadline of one tick never fires.
        store.set_epoch_deadline(1);
    }
    store
}

/// What one throughput window measured.
struct Run {
    latencies: Vec<Duration>,
    wall: Duration,
    cpu: Duration,
}

impl Run {
    fn cpu_per_call(&self) -> f64 {
        micros(self.cpu) / self.latencies.len() as f64
    }

    /// Prints the row, with the ratio of its CPU per call to `floor`'s.
    fn print(mut self, label: &str, callers: usize, floor: Option<f64>) {
        let cpu = self.cpu_per_call();
        self.latencies.sort_unstable();
        let calls = self.latencies.len() as f64;
        let ratio = floor.map_or_else(|| "1.0×".to_owned(), |floor| format!("{:.1}×", cpu / floor));
        println!(
            "  {label:<44} {callers:>7} {:>9.0} {:>8.1} {:>8.1} {:>11.1} {ratio:>7}",
            calls / self.wall.as_secs_f64(),
            micros(percentile(&self.latencies, 0.50)),
            micros(percentile(&self.latencies, 0.99)),
            cpu,
        );
    }
}

/// Runs `call` in a loop from `callers` concurrent tasks for [`WINDOW`] after a short
/// warm-up, recording each call's latency and the process CPU time spent.
async fn drive<F, Fut>(callers: usize, call: F) -> Run
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    for _ in 0..200 {
        call().await;
    }
    let (cpu_before, started) = (cpu_time(), Instant::now());
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(1 << 16);
                while started.elapsed() < WINDOW {
                    let begun = Instant::now();
                    call().await;
                    latencies.push(begun.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("caller task"));
    }
    Run { latencies, wall: started.elapsed(), cpu: cpu_time().saturating_sub(cpu_before) }
}

// ---------------------------------------------------------------------------------
// 3. Plugin loads

/// Measures cold and warm loads, then a start with ten cached plugins; returns that
/// last sandbox (cache warm) and its `hostile` for the other sections.
async fn plugin_loads(components: &Path) -> (Arc<Sandbox>, LoadedPlugin) {
    println!("\n3. Plugin load (Sandbox::load: compile or cache hit, link, list tools and personas)");
    println!("  {:<58} {:>9}", "case", "ms");
    let cache = tempfile::tempdir().expect("cache dir");
    let config = SandboxConfig { cache_dir: Some(cache.path().to_owned()), ..SandboxConfig::default() };
    let read = |name: &str| std::fs::read(component(components, name)).expect("read component");

    // The cold pass also fills the cache for the ten-plugin start below.
    for (phase, what) in [("cold", "empty cache: compile"), ("warm", "new Sandbox, cache hit")] {
        let began = Instant::now();
        let sandbox = Sandbox::new(config.clone()).expect("sandbox starts");
        if phase == "cold" {
            print_ms("Sandbox::new (engine, pool, runtime, ticker)", began.elapsed());
        }
        for name in PLUGINS {
            let began = Instant::now();
            sandbox.load(name, read(name), CallLimits::default()).await.expect("plugin loads");
            print_ms(&format!("{name} {phase} ({what})"), began.elapsed());
        }
    }

    // What a server start does per plugin: read, hash, load (sequentially, like
    // `PluginRegistry::refresh`), here for the five fixtures twice under two names.
    let began = Instant::now();
    let sandbox = Arc::new(Sandbox::new(config).expect("sandbox starts"));
    let mut hostile = None;
    for round in 0..2 {
        for name in PLUGINS {
            let bytes = read(name);
            let _hash = sha256_hex(&bytes);
            let loaded = sandbox.load(&format!("{name}{round}"), bytes, CallLimits::default()).await.expect("loads");
            hostile = hostile.or((name == "hostile").then_some(loaded));
        }
    }
    print_ms("start with 10 cached plugins (Sandbox::new + read/hash/load)", began.elapsed());
    (sandbox, hostile.expect("hostile loaded"))
}

// ---------------------------------------------------------------------------------
// 4. Timeout overshoot

async fn timeout_overshoot(sandbox: &Sandbox, hostile: &LoadedPlugin) {
    const DEADLINE: Duration = Duration::from_millis(100);
    let tick = sandbox.config().epoch_tick;
    let context = limited(CallLimits { fuel: u64::MAX, timeout: DEADLINE, ..CallLimits::default() });
    let mut overshoots = Vec::new();
    for _ in 0..10 {
        let began = Instant::now();
        let outcome = sandbox.call_tool(hostile, "spin", "{}".to_owned(), &context).await;
        let kind = outcome.result.as_ref().map_or_else(|f| f.kind(), |_| "ok");
        assert_eq!(kind, "timeout", "hostile.spin must time out");
        overshoots.push(began.elapsed().saturating_sub(DEADLINE));
    }
    overshoots.sort_unstable();
    println!("\n4. Timeout overshoot: hostile.spin, {DEADLINE:?} deadline, {tick:?} epoch tick, 10 runs");
    println!(
        "  stop time - deadline: p50 {:.1} ms, max {:.1} ms",
        millis(percentile(&overshoots, 0.5)),
        millis(percentile(&overshoots, 1.0))
    );
}

// ---------------------------------------------------------------------------------
// 5. Responsiveness

async fn responsiveness(sandbox: &Arc<Sandbox>, hostile: &LoadedPlugin) {
    const SPINNERS: usize = 8;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = storage::open(&StoreLocation::Sqlite(dir.path().join("maestro.db"))).await.expect("store opens");
    let plugin_dir = dir.path().join("plugins");
    std::fs::create_dir_all(&plugin_dir).expect("plugin dir");
    let registry = Arc::new(PluginRegistry::new(sandbox.clone(), plugin_dir.clone()));
    registry.refresh().await;
    let secrets = SecretValues::new(Default::default(), plugin_dir.join("no-secrets"));
    let tools = Arc::new(Tools::new(registry, Arc::new(PolicyStore::fixed(PolicySet::deny_all())), secrets));
    let schedules = Arc::new(maestro_host::schedules::Schedules::new(
        maestro_host::schedules::SchedulePorts {
            store: store.clone(),
            runs: store.clone(),
            unit: store.clone(),
            keys: store.clone(),
            clock: Arc::new(SystemClock),
            tools: tools.clone(),
        },
        Default::default(),
    ));
    let state = AppState {
        credits: Arc::new(maestro_host::credits::Credits::new(store.clone(), Arc::new(SystemClock))),
        accounts: Accounts::new(store.clone(), Arc::new(SystemClock)),
        jobs: Arc::new(maestro_host::jobs::Jobs::new(store.clone(), Arc::new(SystemClock))),
        metrics: Arc::default(),
        documents: Arc::new(maestro_host::documents::Documents::new(store.clone(), Arc::new(SystemClock))),
        artifacts: maestro_host::artifacts::Artifacts::on_disk(
            dir.path().join("artifacts"),
            store.clone(),
            Arc::new(SystemClock),
        ),
        memories: None,
        orchestrator: Arc::new(maestro_host::orchestrator::Orchestrator::new(
            store.clone(),
            store.clone(),
            Arc::new(SystemClock),
            tools.clone(),
            Arc::new(maestro_host::orchestrator::hub::EventHub::new(store)),
        )),
        tools,
        shutdown: Default::default(),
        billing: None,
        schedules,
        search: None,
        embedder: Arc::new(maestro_host::embed::Unavailable::new(maestro_host::embed::info(), "not benchmarked here")),
        retrieval: None,
    };
    let app = http::router(
        state,
        &HttpSettings { body_limit_bytes: 64 << 10, cors_allow_origins: vec![], mcp: Default::default() },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/healthz", listener.local_addr().expect("address"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(http::serve(listener, app, async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();

    println!("\n5. GET /healthz, sequential requests for 2 s (server on the bench runtime, keep-alive client)");
    println!("  {:<36} {:>8} {:>8} {:>8} {:>8}", "case", "requests", "p50 µs", "p99 µs", "max µs");
    print_latencies("idle", healthz_for(&client, &url, Duration::from_secs(2)).await);

    let context = limited(CallLimits { fuel: u64::MAX, timeout: Duration::from_secs(3), ..CallLimits::default() });
    let spinners: Vec<_> = (0..SPINNERS)
        .map(|_| {
            let (sandbox, hostile, context) = (sandbox.clone(), hostile.clone(), context.clone());
            tokio::spawn(async move { sandbox.call_tool(&hostile, "spin", "{}".to_owned(), &context).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let busy = healthz_for(&client, &url, Duration::from_secs(2)).await;
    print_latencies(&format!("{SPINNERS} × hostile.spin running"), busy);
    for spinner in spinners {
        let outcome = spinner.await.expect("spinner task");
        assert!(outcome.result.is_err(), "hostile.spin must not succeed");
    }
    let _ = stop.send(());
    server.await.expect("server task").expect("server stops");
}

async fn healthz_for(client: &reqwest::Client, url: &str, duration: Duration) -> Vec<Duration> {
    let started = Instant::now();
    let mut latencies = Vec::new();
    while started.elapsed() < duration {
        let begun = Instant::now();
        let response = client.get(url).send().await.expect("GET /healthz");
        assert!(response.status().is_success(), "/healthz answered {}", response.status());
        response.bytes().await.expect("body");
        latencies.push(begun.elapsed());
    }
    latencies
}

fn print_latencies(label: &str, mut latencies: Vec<Duration>) {
    latencies.sort_unstable();
    println!(
        "  {label:<36} {:>8} {:>8.0} {:>8.0} {:>8.0}",
        latencies.len(),
        micros(percentile(&latencies, 0.5)),
        micros(percentile(&latencies, 0.99)),
        micros(percentile(&latencies, 1.0)),
    );
}

// ---------------------------------------------------------------------------------
// 6. Memory

async fn memory(rss_start: u64, sandbox: &Arc<Sandbox>, hostile: &LoadedPlugin) {
    const CALLS: usize = 2_000;
    const CALLERS: usize = 8;
    let spin = CallLimits { fuel: u64::MAX, timeout: Duration::from_millis(50), ..CallLimits::default() };
    // (tool, arguments, limits, expected outcome kind)
    let mix: Arc<[(&'static str, &'static str, CallContext, &'static str)]> = Arc::new([
        ("noop", "{}", CallContext::default(), "ok"),
        ("echo", r#"{"a":[1,2,3]}"#, CallContext::default(), "ok"),
        (
            "grow_memory",
            r#"{"mb":200}"#,
            limited(CallLimits { memory_bytes: 32 << 20, ..CallLimits::default() }),
            "memory_limit",
        ),
        (
            "huge_output",
            r#"{"bytes":4194304}"#,
            limited(CallLimits { output_bytes: 1 << 20, ..CallLimits::default() }),
            "output_too_large",
        ),
        ("trap", "{}", CallContext::default(), "trap"),
        ("spin", "{}", limited(spin), "timeout"),
        ("fail", "{}", CallContext::default(), "tool_error"),
        ("noop", "{}", CallContext::default(), "ok"),
    ]);
    // Two batches: growth in the first and none in the second is a high-water mark
    // (allocator arenas, pool slots touched), growth in both a leak.
    let mut rows = vec![("at bench start", rss_start), ("before", rss_kib())];
    let mut took = Duration::ZERO;
    for (batch, label) in [(0, "after batch 1"), (1, "after batch 2")] {
        let began = Instant::now();
        mixed_calls(sandbox, hostile, &mix, batch * mix.len(), CALLS, CALLERS).await;
        took += began.elapsed();
        rows.push((label, rss_kib()));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    rows.push(("after 2 s settle", rss_kib()));
    println!(
        "\n6. RSS around 2 × {CALLS} mixed calls from {CALLERS} callers ({:.1} s in all): noop, echo, \
         grow_memory 200 MB / 32 MiB limit, huge_output 4 MiB / 1 MiB limit, trap, spin 50 ms, fail",
        took.as_secs_f64()
    );
    println!("  {:<36} {:>8}", "moment", "RSS MiB");
    for (moment, kib) in rows {
        println!("  {moment:<36} {:>8.1}", kib as f64 / 1024.0);
    }
}

/// Makes `calls` calls taken in turn from `mix`, from `callers` concurrent tasks, and
/// checks each one ended the expected way.
async fn mixed_calls(
    sandbox: &Arc<Sandbox>,
    hostile: &LoadedPlugin,
    mix: &Arc<[(&'static str, &'static str, CallContext, &'static str)]>,
    first: usize,
    calls: usize,
    callers: usize,
) {
    let next = Arc::new(AtomicUsize::new(first));
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (sandbox, hostile, mix, next) = (sandbox.clone(), hostile.clone(), mix.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= first + calls {
                        break;
                    }
                    let (tool, args, context, expected) = &mix[i % mix.len()];
                    let outcome = sandbox.call_tool(&hostile, tool, (*args).to_owned(), context).await;
                    let kind = outcome.result.as_ref().map_or_else(|f| f.kind(), |_| "ok");
                    assert_eq!(kind, *expected, "hostile.{tool} {args}: {:?}", outcome.result.err());
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("caller task");
    }
}

// ---------------------------------------------------------------------------------
// 7. Instruction counts (callgrind)

/// Instance slots of the floors' pools: valgrind cannot reserve the address space of
/// many (`MAESTRO_BENCH_SMALL_POOL` is set for the callgrind runs).
fn pool_slots() -> u32 {
    if std::env::var_os("MAESTRO_BENCH_SMALL_POOL").is_some() { 2 } else { 64 }
}

/// A case measured under callgrind.
#[derive(Clone, Copy, Debug)]
enum Case {
    /// The bare-wasmtime floor (minimal component, call_async).
    Floor,
    /// The hostile component on bare wasmtime with a WASI linker.
    Wasi,
    /// `hostile.noop` through the sandbox, fresh instance per call.
    Fresh,
    /// `hostile.noop` through the sandbox, stateless (pooled).
    Pooled,
}

impl Case {
    const ALL: [Case; 4] = [Case::Floor, Case::Wasi, Case::Fresh, Case::Pooled];

    fn parse(name: &str) -> Self {
        Self::ALL.into_iter().find(|c| c.name() == name).unwrap_or_else(|| panic!("no case `{name}`"))
    }

    fn name(self) -> &'static str {
        match self {
            Case::Floor => "floor",
            Case::Wasi => "wasi",
            Case::Fresh => "fresh",
            Case::Pooled => "pooled",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Case::Floor => "bare wasmtime, call_async (the floor)",
            Case::Wasi => "bare wasmtime + WASI linker, hostile.noop",
            Case::Fresh => "sandbox hostile.noop (fresh instance)",
            Case::Pooled => "sandbox hostile.noop, stateless (pooled)",
        }
    }

    /// Warms up, then makes `calls` sequential calls.
    async fn run(self, components: &Path, calls: usize) {
        match self {
            Case::Floor => {
                let pre = bare_instance_pre(false);
                for _ in 0..CALLGRIND_WARMUP + calls {
                    bare_call(&pre, false).await;
                }
            }
            Case::Wasi => {
                let floor = WasiFloor::new(&component(components, "hostile"));
                for _ in 0..CALLGRIND_WARMUP + calls {
                    floor.call().await;
                }
            }
            Case::Fresh | Case::Pooled => {
                // Valgrind cannot reserve the default pool's address space: a small one.
                let cache = components.join("../../maestro-bench-callgrind-cache");
                // Compiling under valgrind (the run that fills the cache) takes minutes on a
                // busy machine: no compile budget to trip.
                let config = SandboxConfig {
                    cache_dir: Some(cache),
                    max_instances: 2,
                    compile_timeout: Duration::from_secs(3600),
                    ..SandboxConfig::default()
                };
                let sandbox = Sandbox::new(config).expect("sandbox starts");
                let bytes = std::fs::read(component(components, "hostile")).expect("read component");
                let plugin = sandbox.load("hostile", bytes, CallLimits::default()).await.expect("loads");
                let plugin = plugin.stateless(matches!(self, Case::Pooled));
                let context = CallContext::default();
                for _ in 0..CALLGRIND_WARMUP + calls {
                    let outcome = sandbox.call_tool(&plugin, "noop", "{}".to_owned(), &context).await;
                    outcome.result.expect("hostile.noop");
                }
            }
        }
    }
}

/// Calls before the measured ones (both runs make them, so they cancel out).
const CALLGRIND_WARMUP: usize = 50;
/// The two call counts whose difference is measured.
const CALLGRIND_CALLS: (usize, usize) = (200, 1200);

/// Runs every case under callgrind for both call counts and prints instructions per call.
fn callgrind(components: &Path) {
    let exe = std::env::current_exe().expect("bench binary path");
    // Fills the compile cache outside valgrind first.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt");
    runtime.block_on(Case::Fresh.run(components, 1));
    println!("\n7. Instructions per trivial call (valgrind --tool=callgrind, whole process, difference of");
    println!("   {} and {} calls)", CALLGRIND_CALLS.0, CALLGRIND_CALLS.1);
    println!("  {:<44} {:>14} {:>7}", "case", "instructions", "ratio");
    let mut floor = None;
    for case in Case::ALL {
        let count = |calls: usize| -> u64 {
            let output = std::process::Command::new("valgrind")
                .env("MAESTRO_BENCH_SMALL_POOL", "1")
                .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
                .arg(&exe)
                .args(["callgrind-case", case.name(), &calls.to_string()])
                .output()
                .expect("runs valgrind (is it installed?)");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(output.status.success(), "{case:?} under callgrind failed:\n{stderr}");
            let line = stderr.lines().find(|l| l.contains("Collected :")).expect("callgrind's total");
            line.rsplit(' ').next().and_then(|n| n.trim().parse().ok()).expect("a count")
        };
        // A first run under valgrind fills the compile cache for valgrind's engine
        // settings (a small pool: another cache key than the warm-up's above), so
        // neither measured run compiles.
        count(1);
        let (few, many) = (count(CALLGRIND_CALLS.0), count(CALLGRIND_CALLS.1));
        let per_call = many.saturating_sub(few) as f64 / (CALLGRIND_CALLS.1 - CALLGRIND_CALLS.0) as f64;
        let floor = *floor.get_or_insert(per_call);
        println!("  {:<44} {per_call:>14.0} {:>6.1}×", case.label(), per_call / floor);
    }
}

// ---------------------------------------------------------------------------------
// Helpers

/// Cargo's target directory, from this binary's path (`<target>/release/deps/sandbox-*`),
/// then the fixtures' build directory in it.
fn components_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("bench binary path");
    let target = exe.ancestors().nth(3).expect("<target>/release/deps/<binary>");
    target.join("wasm32-wasip2/release")
}

fn component(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("maestro_plugin_{name}.wasm"))
}

fn limited(limits: CallLimits) -> CallContext {
    CallContext { limits, ..CallContext::default() }
}

/// User + system CPU time of the whole process (all threads).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("read /proc/self/stat");
    // Field 2 (the command name, in parentheses) may hold spaces: split after it. The
    // rest starts at field 3, so utime (field 14) and stime (field 15) are at 11 and 12.
    let after_name = &stat[stat.rfind(')').expect("command name") + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // USER_HZ is 100 on every Linux ABI (sysconf(_SC_CLK_TCK) would need libc).
    Duration::from_millis(ticks * 10)
}

/// Resident set size in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS line");
    line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).expect("VmRSS value")
}

fn print_ms(label: &str, d: Duration) {
    println!("  {label:<58} {:>9.1}", millis(d));
}
