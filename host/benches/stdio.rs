//! MCP over stdio, measured the way the peers (hyper-mcp, Wassette) were: a release
//! `maestro mcp` process is spawned, `initialize`d, then sent 200 sequential
//! `tools/call`s of `calc.evaluate` (the first-party plugin); the median and p90 of the
//! client-side round trip are printed. Once with the tool free, once with it costing 1
//! credit on the embedded SQLite store. Prints figures, never asserts timings.
//!
//! `cargo bench -p maestro-host --bench stdio` (build the component first:
//! `cargo build --release --target wasm32-wasip2 -p maestro-plugin-calc`).
//!
//! Floors, measured in the same run:
//! - the pipe round trip: the same client, the same lines, through `cat` (two pipes and
//!   two process wake-ups, no work): what no stdio server can beat;
//! - `Tools::call` of `calc.evaluate` in this process (the call pipeline without the
//!   transport: policy, charge, sandbox).
//!
//! A peer measured the same way in the same run, when `STDIO_BENCH_PEER` names its
//! command (program and arguments, split on spaces), `STDIO_BENCH_PEER_TOOL` the tool
//! to call and `STDIO_BENCH_PEER_ARGUMENTS` its arguments (JSON): the same client spawns
//! it, initializes, waits until `tools/list` shows the tool (a peer may load its
//! components after answering `initialize`), then makes the same 200 calls. For
//! Wassette built from source: `STDIO_BENCH_PEER="<target>/release/wassette serve
//! --stdio --plugin-dir <dir>"` with a component exporting `add: func(a: s32, b: s32) ->
//! s32` in `<dir>`, `STDIO_BENCH_PEER_TOOL=add`, `STDIO_BENCH_PEER_ARGUMENTS='{"a":6,"b":7}'`.
//! For hyper-mcp: `STDIO_BENCH_PEER="<target>/release/hyper-mcp -c <config.json>"` with
//! a plugin `calc` given by a `file://` URL there, `STDIO_BENCH_PEER_TOOL=calc-add`, and
//! `RUST_LOG=off` (it logs to stdout otherwise, which no stdio client can read).
//!
//! Each case runs [`ROUNDS`] fresh processes; the figures of every round are printed,
//! and the summary takes the round with the median p50. Server CPU per call is the
//! `maestro mcp` process's user + system time over the 200 calls (10 ms ticks, so a
//! coarse figure).

#[path = "common/mod.rs"]
mod common;
use common::{micros, percentile};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use maestro_core::Role;
use maestro_host::config::{Config, Env, Overrides};
use maestro_host::plugins::{Manifest, sha256_hex};
use maestro_host::tools::{Observe, Principal, Tools};
use serde_json::{Value, json};

/// Sequential calls per process, as the peers measured.
const CALLS: usize = 200;
/// Fresh processes per case.
const ROUNDS: usize = 3;
/// Goals from the issue (c=1 round trip, median).
const GOAL_FREE_MICROS: f64 = 80.0;
const GOAL_PAID_MICROS: f64 = 160.0;
/// The arguments of every call.
const EXPRESSION: &str = "6 * 7";

fn main() {
    let component = components_dir().join("maestro_plugin_calc.wasm");
    if !component.is_file() {
        eprintln!(
            "missing {}.\nBuild it first:\n    cargo build --release --target wasm32-wasip2 -p maestro-plugin-calc",
            component.display()
        );
        std::process::exit(1);
    }
    println!(
        "Maestro MCP stdio benchmark: spawn `maestro mcp`, initialize, {CALLS} sequential tools/call of calc.evaluate"
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("Load average before the run: {}", load.split_whitespace().take(3).collect::<Vec<_>>().join(" "));

    let pipe = (0..ROUNDS).map(|_| pipe_floor()).collect::<Vec<_>>();
    println!("\nFloor: the same client through `cat` (pipe round trip, no work)");
    print_header();
    for run in &pipe {
        run.print("cat echo");
    }
    let pipe = median_round(pipe);

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("bench runtime");
    let mut summary = Vec::new();
    for (case, credits, goal) in [("free", 0, GOAL_FREE_MICROS), ("paid 1 credit", 1, GOAL_PAID_MICROS)] {
        let setup = Setup::new(&component, credits);
        println!("\n{case}: calc.evaluate costs {credits} credits (SQLite store, default durability)");
        print_header();
        let in_process = runtime.block_on(in_process(&setup));
        in_process.print("in-process Tools::call");
        let rounds: Vec<Run> = (0..ROUNDS).map(|_| stdio_round(&setup)).collect();
        for run in &rounds {
            run.print("maestro mcp stdio");
        }
        summary.push((case, goal, in_process, median_round(rounds)));
    }

    let peer = Peer::from_env().map(|peer| {
        println!("\npeer: {} (tool `{}`), the same client and method", peer.command.join(" "), peer.tool);
        print_header();
        let rounds: Vec<Run> = (0..ROUNDS).map(|_| peer.round()).collect();
        for run in &rounds {
            run.print("peer stdio");
        }
        median_round(rounds)
    });

    println!("\nSummary (round with the median p50; ratios to the floors of this run)");
    for (case, goal, in_process, run) in &summary {
        let p50 = micros(run.p(0.5));
        let verdict = if p50 <= *goal { "met" } else { "NOT met" };
        println!(
            "  {case:<14} p50 {p50:>7.1} µs  p90 {:>7.1} µs  = {:.1}× the pipe round trip ({:.1} µs), \
             {:.1}× in-process Tools::call ({:.1} µs); goal ≤ {goal:.0} µs: {verdict}",
            micros(run.p(0.9)),
            p50 / micros(pipe.p(0.5)).max(1e-9),
            micros(pipe.p(0.5)),
            p50 / micros(in_process.p(0.5)).max(1e-9),
            micros(in_process.p(0.5)),
        );
    }
    if let Some(peer) = &peer {
        println!(
            "  {:<14} p50 {:>7.1} µs  p90 {:>7.1} µs  = {:.1}× the pipe round trip",
            "peer",
            micros(peer.p(0.5)),
            micros(peer.p(0.9)),
            micros(peer.p(0.5)) / micros(pipe.p(0.5)).max(1e-9),
        );
        for (case, _, _, run) in &summary {
            println!("  {case:<14} / peer: {:.2}×", micros(run.p(0.5)) / micros(peer.p(0.5)).max(1e-9));
        }
    }
}

// ---------------------------------------------------------------------------------
// Setup: directories, plugin, policy, tenant key, credits

/// A temporary Maestro installation: data, the calc plugin, a policy granting it at
/// `credits` per call, one member key, and credits enough for every call.
struct Setup {
    dir: tempfile::TempDir,
    key: String,
}

impl Setup {
    fn new(component: &Path, credits: i64) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        install_calc(&dir.path().join("plugins"), component);
        let policies = dir.path().join("policies");
        std::fs::create_dir_all(&policies).expect("policy dir");
        std::fs::write(
            policies.join("bench.toml"),
            format!(
                "version = 1\n\n[[grant]]\nname = \"bench\"\nsubjects = [\"tenant:acme\"]\ntools = [\"calc.*\"]\n\
                 credits = {credits}\n"
            ),
        )
        .expect("write policy");
        let mut setup = Self { dir, key: String::new() };
        setup.cli(&["tenant", "create", "acme"]);
        let created = setup.cli(&["key", "create", "--tenant", "acme", "--role", "member"]);
        setup.key = created.lines().last().expect("the token on the last stdout line").trim().to_owned();
        assert!(setup.key.starts_with("mk_"), "unexpected key output: {created}");
        if credits > 0 {
            setup.cli(&["credits", "grant", "--tenant", "acme", "--amount", "1000000000"]);
        }
        setup
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn env(&self) -> Env {
        let dirs =
            [("MAESTRO_DATA_DIR", "data"), ("MAESTRO_PLUGIN_DIR", "plugins"), ("MAESTRO_POLICY_DIR", "policies")];
        let mut env: Env =
            dirs.iter().map(|(var, dir)| ((*var).to_owned(), self.path(dir).display().to_string())).collect();
        env.insert("MAESTRO_LOG".to_owned(), "warn".to_owned());
        env
    }

    fn maestro(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_maestro"));
        command.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default()).envs(self.env());
        command
    }

    fn cli(&self, args: &[&str]) -> String {
        let output = self.maestro().args(args).output().expect("maestro runs");
        assert!(
            output.status.success(),
            "maestro {args:?} failed: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8 stdout")
    }

    /// The tool use-cases as `maestro mcp` composes them, in this process.
    async fn tools(&self) -> Arc<Tools> {
        let config = Config::load(None, &self.env(), &Overrides::default()).expect("config");
        let store = maestro_host::open_store(&config).await.expect("store opens");
        let credits =
            Arc::new(maestro_host::credits::Credits::new(store, Arc::new(maestro_host::accounts::SystemClock)));
        maestro_host::open_tools(&config, &self.env(), maestro_host::PluginLoading::Now, credits)
            .await
            .expect("tools open")
    }

    /// The tenant as the in-process floor calls as.
    async fn principal(&self) -> Principal {
        let config = Config::load(None, &self.env(), &Overrides::default()).expect("config");
        let accounts = maestro_host::open_accounts(&config).await.expect("store opens");
        let tenant = accounts.tenant_named("acme").await.expect("tenant acme");
        Principal { tenant: "acme".to_owned(), tenant_id: tenant.id, role: Role::Member, key_id: "bench".to_owned() }
    }
}

/// Installs calc as `maestro plugin build` would: component plus manifest with its sha256.
fn install_calc(plugin_dir: &Path, component: &Path) {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/calc/plugin.toml");
    let mut manifest = Manifest::read(&source).expect("calc manifest");
    let bytes = std::fs::read(component).expect("read component");
    manifest.sha256 = Some(sha256_hex(&bytes));
    let dir = plugin_dir.join("calc");
    std::fs::create_dir_all(&dir).expect("plugin dir");
    std::fs::write(dir.join(&manifest.component), &bytes).expect("write component");
    std::fs::write(dir.join("plugin.toml"), toml::to_string(&manifest).expect("manifest toml"))
        .expect("write manifest");
}

// ---------------------------------------------------------------------------------
// Cases

/// What one round measured.
struct Run {
    latencies: Vec<Duration>,
    /// CPU of the serving process over the calls, when it is another process.
    server_cpu: Option<Duration>,
}

impl Run {
    fn p(&self, quantile: f64) -> Duration {
        percentile(&self.latencies, quantile)
    }

    fn print(&self, label: &str) {
        let cpu = self
            .server_cpu
            .map_or_else(|| "-".to_owned(), |cpu| format!("{:.1}", micros(cpu) / self.latencies.len().max(1) as f64));
        println!(
            "  {label:<28} {:>6} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>12}",
            self.latencies.len(),
            micros(self.p(0.5)),
            micros(self.p(0.9)),
            micros(self.p(0.99)),
            micros(self.latencies.last().copied().unwrap_or_default()),
            cpu,
        );
    }
}

fn print_header() {
    println!(
        "  {:<28} {:>6} {:>8} {:>8} {:>8} {:>8} {:>12}",
        "case", "calls", "p50 µs", "p90 µs", "p99 µs", "max µs", "srv µs/call"
    );
}

/// The round whose p50 is the median of the rounds'.
fn median_round(mut rounds: Vec<Run>) -> Run {
    rounds.sort_by_key(|run| run.p(0.5));
    let middle = rounds.len() / 2;
    rounds.swap_remove(middle)
}

/// `calc.evaluate` through `Tools::call` in this process, sequentially.
async fn in_process(setup: &Setup) -> Run {
    let (tools, principal) = (setup.tools().await, setup.principal().await);
    let mut latencies = Vec::with_capacity(CALLS);
    for i in 0..CALLS * 2 {
        let begun = Instant::now();
        let call = tools
            .call(&principal, "calc.evaluate", json!({ "expression": EXPRESSION }), Observe::default())
            .await
            .expect("policy allows calc.evaluate");
        if let Err(failure) = call.outcome.result {
            panic!("calc.evaluate failed: {failure}");
        }
        // The first half warms up (compiling, caches), as a long-lived server is.
        if i >= CALLS {
            latencies.push(begun.elapsed());
        }
    }
    latencies.sort_unstable();
    Run { latencies, server_cpu: None }
}

/// One fresh `maestro mcp --key` process: initialize, then [`CALLS`] calls.
fn stdio_round(setup: &Setup) -> Run {
    let mut child = setup
        .maestro()
        .args(["mcp", "--key", &setup.key])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(setup.path("mcp.stderr")).expect("stderr file"))
        .spawn()
        .expect("maestro mcp starts");
    let pid = child.id().to_string();
    let mut client = LineClient::new(&mut child);
    client.initialize("2025-11-25").expect("initialize");
    let before = cpu_time(&pid);
    let mut latencies = Vec::with_capacity(CALLS);
    for id in 1..=CALLS as u64 {
        let call = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"calc.evaluate","arguments":{{"expression":"{EXPRESSION}"}}}}}}"#
        );
        let begun = Instant::now();
        let result = client.request(id, &call).unwrap_or_else(|e| panic!("stdio call failed: {e}"));
        latencies.push(begun.elapsed());
        assert!(result["isError"] == Value::Bool(false) && result["structuredContent"].is_object(), "{result}");
    }
    let server_cpu = cpu_time(&pid).saturating_sub(before);
    drop(client);
    let _ = child.wait();
    latencies.sort_unstable();
    Run { latencies, server_cpu: Some(server_cpu) }
}

/// A peer MCP server over stdio (`STDIO_BENCH_PEER`, see the module notes).
struct Peer {
    command: Vec<String>,
    tool: String,
    arguments: Value,
}

impl Peer {
    fn from_env() -> Option<Self> {
        let command: Vec<String> =
            std::env::var("STDIO_BENCH_PEER").ok()?.split_whitespace().map(str::to_owned).collect();
        if command.is_empty() {
            return None;
        }
        let tool = std::env::var("STDIO_BENCH_PEER_TOOL").expect("STDIO_BENCH_PEER_TOOL names the peer's tool");
        let arguments = std::env::var("STDIO_BENCH_PEER_ARGUMENTS").unwrap_or_else(|_| "{}".to_owned());
        let arguments = serde_json::from_str(&arguments).expect("STDIO_BENCH_PEER_ARGUMENTS is JSON");
        Some(Self { command, tool, arguments })
    }

    /// One fresh process: initialize, wait for the tool, then [`CALLS`] calls.
    fn round(&self) -> Run {
        let mut child = Command::new(&self.command[0])
            .args(&self.command[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the peer starts");
        let pid = child.id().to_string();
        let mut client = LineClient::new(&mut child);
        client.initialize("2025-06-18").expect("the peer initializes");
        let started = Instant::now();
        let mut id = 1u64;
        loop {
            let list = json!({ "jsonrpc": "2.0", "id": id, "method": "tools/list" }).to_string();
            let tools = client.request(id, &list).expect("the peer lists its tools");
            id += 1;
            let listed = tools["tools"].as_array().is_some_and(|tools| tools.iter().any(|t| t["name"] == self.tool));
            if listed {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "the peer never listed `{}`: {tools}", self.tool);
            std::thread::sleep(Duration::from_millis(50));
        }
        let before = cpu_time(&pid);
        let mut latencies = Vec::with_capacity(CALLS);
        for _ in 0..CALLS {
            let call = json!({
                "jsonrpc": "2.0", "id": id, "method": "tools/call",
                "params": { "name": self.tool, "arguments": self.arguments },
            })
            .to_string();
            let begun = Instant::now();
            let result = client.request(id, &call).unwrap_or_else(|e| panic!("peer call failed: {e}"));
            latencies.push(begun.elapsed());
            assert!(result["isError"] != Value::Bool(true), "{result}");
            id += 1;
        }
        let server_cpu = cpu_time(&pid).saturating_sub(before);
        drop(client);
        // A peer need not exit when its stdin closes.
        let _ = child.kill();
        let _ = child.wait();
        latencies.sort_unstable();
        Run { latencies, server_cpu: Some(server_cpu) }
    }
}

/// The same client and lines through `cat`: the pipe round trip alone.
fn pipe_floor() -> Run {
    let mut child = Command::new("cat").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("cat starts");
    let mut client = LineClient::new(&mut child);
    let mut latencies = Vec::with_capacity(CALLS);
    for id in 0..=CALLS as u64 {
        let line = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"result":{{"content":[{{"type":"text","text":"42"}}],"isError":false}}}}"#
        );
        let begun = Instant::now();
        client.request(id, &line).expect("cat echoes");
        // The first line pays for the process start.
        if id > 0 {
            latencies.push(begun.elapsed());
        }
    }
    drop(client);
    let _ = child.wait();
    latencies.sort_unstable();
    Run { latencies, server_cpu: None }
}

/// The client side of a line-delimited JSON-RPC connection to a child process.
struct LineClient {
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    line: String,
}

impl LineClient {
    fn new(child: &mut Child) -> Self {
        Self {
            stdin: child.stdin.take().expect("piped stdin"),
            stdout: BufReader::new(child.stdout.take().expect("piped stdout")),
            line: String::new(),
        }
    }

    fn send(&mut self, message: &str) {
        let mut bytes = Vec::with_capacity(message.len() + 1);
        bytes.extend_from_slice(message.as_bytes());
        bytes.push(b'\n');
        self.stdin.write_all(&bytes).expect("write stdin");
        self.stdin.flush().expect("flush stdin");
    }

    /// The MCP handshake: `initialize` (request id 0) asking for `protocol_version`, then
    /// `notifications/initialized`.
    fn initialize(&mut self, protocol_version: &str) -> Result<Value, String> {
        let initialize = json!({
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": { "protocolVersion": protocol_version, "capabilities": {}, "clientInfo": { "name": "bench", "version": "1" } },
        });
        let result = self.request(0, &initialize.to_string())?;
        self.send(&json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }).to_string());
        Ok(result)
    }

    /// Sends a message and reads lines until the response with `id` (skipping
    /// notifications); its `result`, or the error.
    fn request(&mut self, id: u64, message: &str) -> Result<Value, String> {
        self.send(message);
        loop {
            self.line.clear();
            if self.stdout.read_line(&mut self.line).map_err(|e| e.to_string())? == 0 {
                return Err("the process closed stdout".to_owned());
            }
            let mut value: Value = serde_json::from_str(&self.line).map_err(|e| e.to_string())?;
            if value["id"] == json!(id) {
                if let Some(error) = value.get("error") {
                    return Err(error.to_string());
                }
                return Ok(value.get_mut("result").map(Value::take).unwrap_or_default());
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Helpers

/// The components' build directory in Cargo's target directory, from this binary's path
/// (`<target>/release/deps/stdio-*`).
fn components_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("bench binary path");
    let target = exe.ancestors().nth(3).expect("<target>/release/deps/<binary>");
    target.join("wasm32-wasip2/release")
}

/// User + system CPU time of a process (`self` or a pid), all threads.
fn cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/<pid>/stat");
    let after_name = &stat[stat.rfind(')').expect("command name") + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}
