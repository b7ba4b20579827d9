//! MCP benchmark: `tools/call` of `hostile.noop` over Streamable HTTP (both revisions)
//! and stdio, next to the baselines that split the cost. Prints figures, never asserts
//! timings.
//!
//! `cargo bench -p maestro-host --bench mcp` (build the fixture component first:
//! `cargo build --release --target wasm32-wasip2 -p maestro-plugin-hostile`).
//!
//! Method notes:
//! - The server is a real `maestro serve` process: the release binary Cargo builds for
//!   this bench, on a temporary data, plugin and policy directory, with one tenant key
//!   made by the offline CLI, logging at `warn` ([`LOG_FILTER`]).
//! - Server CPU is that process's user + system time from `/proc/<pid>/stat` (every
//!   thread, including the epoch ticker and reload polls, whose idle rate is printed);
//!   client CPU is this process's. The unit is a 10 ms clock tick, so windows last 3 s.
//! - Each client is a tokio task with its own keep-alive HTTP/1.1 connection (hyper's
//!   connection-level client, lighter than a pooled client so it takes less of the
//!   cores it shares with the server). Clients run for a 0.5 s warm-up, then calls
//!   that start within the 3 s window are counted; latency is measured at the client.
//! - Client and server share the machine's cores: once clients outnumber cores,
//!   throughput is bound by client + server CPU. Server CPU per call is the figure to
//!   hold against the goal.
//! - Floors, measured in the same run with the same client and the same CPU
//!   accounting: this bench binary re-run as a server process (`--floor-server`) with
//!   a bare rmcp no-op server (one tool answering "ok", rmcp's stateless Streamable
//!   HTTP service, JSON responses) and a bare axum plaintext handler. Each Maestro MCP
//!   figure is printed with its ratio to them.

#[path = "common/mod.rs"]
mod common;
use common::{micros, millis, percentile};
use std::future::Future;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, header};
use http_body_util::{BodyExt as _, Full};
use maestro_core::Role;
use maestro_host::config::{Config, Env, Overrides};
use maestro_host::plugins::{Manifest, sha256_hex};
use maestro_host::sandbox::CallContext;
use maestro_host::tools::{Observe, Principal, Tools};
use serde_json::{Value, json};

/// Warm-up before each window.
const WARMUP: Duration = Duration::from_millis(500);
/// Length of each measured window.
const WINDOW: Duration = Duration::from_secs(3);
/// Concurrent HTTP clients per case.
const CLIENTS: [usize; 3] = [1, 16, 64];
/// Goals from the issue.
const GOAL_CALLS_PER_CPU_SECOND: f64 = 20_000.0;
const GOAL_P50_MICROS: f64 = 150.0;
const GOAL_STDIO_P50_MICROS: f64 = 80.0;
/// The server's log filter: `warn`, except rmcp's one warning per JSON-RPC error
/// response, which would dominate the unknown-tool baseline.
const LOG_FILTER: &str = "warn,rmcp::service=error";
/// The argument that makes this binary a floor server: `--floor-server rmcp|axum ADDR`.
const FLOOR_SERVER: &str = "--floor-server";

fn main() {
    // `cargo bench` passes its own flags: look for ours among them.
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == FLOOR_SERVER) {
        let (kind, addr) = (args.get(at + 1).expect("floor kind"), args.get(at + 2).expect("floor address"));
        floor::serve(kind, addr);
        return;
    }
    let component = components_dir().join("maestro_plugin_hostile.wasm");
    if !component.is_file() {
        eprintln!(
            "missing {}.\nBuild it first:\n    cargo build --release --target wasm32-wasip2 -p maestro-plugin-hostile",
            component.display()
        );
        std::process::exit(1);
    }
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let setup = Setup::new(&component);
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(cores).enable_all().build().expect("bench runtime");
    println!("Maestro MCP benchmark: {cores} cores (shared by client and server), tools/call of hostile.noop");
    println!(
        "Goals: ≥ {GOAL_CALLS_PER_CPU_SECOND:.0} calls per server CPU-second; c=1 p50 ≤ {GOAL_P50_MICROS:.0} µs over HTTP, \
         ≤ {GOAL_STDIO_P50_MICROS:.0} µs over stdio \
         (the sandbox bench measured ~70-100 µs CPU per noop call; section 1 measures it here)"
    );
    // Other processes compete for the same cores and skew every figure: say so.
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("Load average before the run: {}", load.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    runtime.block_on(run(&setup, cores));
}

async fn run(setup: &Setup, cores: usize) {
    let mut results = Results::default();

    // 1. The floor: what the MCP path is built on, in this process.
    println!("\n1. In-process use-cases, no transport (CPU is this process's, sandbox runtime included)");
    print_header();
    let tools = setup.tools().await;
    let principal = Arc::new(Principal {
        tenant: "acme".to_owned(),
        tenant_id: maestro_core::TenantId::from_random([7; 16]),
        role: Role::Member,
        key_id: "bench".to_owned(),
    });
    for clients in [1, cores] {
        let (tools, principal) = (tools.clone(), principal.clone());
        let run = drive_in_process(clients, move || {
            let (tools, principal) = (tools.clone(), principal.clone());
            async move {
                let call = tools
                    .call(&principal, "hostile.noop", json!({}), Observe::default())
                    .await
                    .expect("policy allows hostile.noop");
                if let Err(failure) = call.outcome.result {
                    panic!("hostile.noop failed: {failure}");
                }
            }
        })
        .await;
        run.print("Tools::call hostile.noop", clients);
        results.floor.get_or_insert(run.server_cpu_per_call());
    }
    // The sandbox alone, without the policy decision and call context Tools::call adds.
    let sandbox = tools.registry().sandbox().clone();
    let catalog = tools.registry().catalog();
    let hostile = Arc::new(catalog.plugin("hostile").expect("hostile installed").loaded.clone());
    let context = Arc::new(CallContext::default());
    for clients in [1, cores] {
        let (sandbox, hostile, context) = (sandbox.clone(), hostile.clone(), context.clone());
        let run = drive_in_process(clients, move || {
            let (sandbox, hostile, context) = (sandbox.clone(), hostile.clone(), context.clone());
            async move {
                let outcome = sandbox.call_tool(&hostile, "noop", "{}".to_owned(), &context).await;
                if let Err(failure) = outcome.result {
                    panic!("hostile.noop failed: {failure}");
                }
            }
        })
        .await;
        run.print("Sandbox::call_tool noop", clients);
    }
    drop((tools, sandbox));
    // What every authenticated request pays first: the key lookup in the store.
    let accounts = Arc::new(setup.accounts().await);
    let key: Arc<str> = Arc::from(setup.key.as_str());
    for clients in [1, cores] {
        let (accounts, key) = (accounts.clone(), key.clone());
        let run = drive_in_process(clients, move || {
            let (accounts, key) = (accounts.clone(), key.clone());
            async move {
                let caller = accounts.authenticate(Some(&key)).await.expect("store answers");
                caller.expect("the key is valid");
            }
        })
        .await;
        run.print("Accounts::authenticate (SQLite lookup)", clients);
    }
    drop(accounts);

    // 2a. The floors: bare rmcp and bare axum, same client, same CPU accounting.
    println!("\n2a. Floors: this binary as a bare server process (same client; server CPU is that process's)");
    print_header();
    for (kind, exchange) in [("axum", Exchange::Plaintext), ("rmcp", Exchange::BareRmcp)] {
        let floor = Server::floor(setup, kind).await;
        for clients in CLIENTS {
            let run = drive_http(&floor, &setup.key, exchange, clients).await;
            run.print(exchange.label(), clients);
            results.floors.push((exchange, clients, run.calls_per_cpu_second(), run.p(0.5)));
        }
    }

    let server = Server::start(setup).await;
    let idle = server.idle_cpu(Duration::from_secs(2)).await;
    println!(
        "\nServer {} (pid {}): idle CPU {:.1} ms per second (epoch ticker, reload polls), included below",
        server.addr,
        server.pid,
        millis(idle) / 2.0
    );

    // 2. Baselines over the same client and connection handling.
    println!("\n2. HTTP baselines (same client; server CPU is the maestro serve process's)");
    print_header();
    for exchange in [Exchange::Healthz, Exchange::Rest, Exchange::UnknownTool] {
        for clients in CLIENTS {
            drive_http(&server, &setup.key, exchange, clients).await.print(exchange.label(), clients);
        }
    }

    // 3-4. MCP over Streamable HTTP.
    for (title, transport, exchange) in [
        ("3. MCP Streamable HTTP, stateless 2026-07-28 (JSON response)", "stateless HTTP", Exchange::Stateless),
        (
            "4. MCP Streamable HTTP, 2025-11-25 session (initialize once per client; SSE response)",
            "session HTTP",
            Exchange::Session,
        ),
    ] {
        println!("\n{title}");
        print_header();
        for clients in CLIENTS {
            let run = drive_http(&server, &setup.key, exchange, clients).await;
            run.print(exchange.label(), clients);
            results.note(transport, clients, &run);
        }
    }
    let log_lines = std::fs::read_to_string(setup.path("serve.stderr")).unwrap_or_default().lines().count();
    println!("  (the server logged {log_lines} lines at {LOG_FILTER})");
    drop(server);

    // 5. MCP over stdio.
    println!("\n5. MCP stdio (`maestro mcp --key`), one client, sequential calls");
    print_header();
    let stdio = {
        let setup = setup.clone();
        tokio::task::spawn_blocking(move || drive_stdio(&setup)).await.expect("stdio bench")
    };
    stdio.print("stdio tools/call", 1);
    results.note("stdio", 1, &stdio);

    results.print();
}

// ---------------------------------------------------------------------------------
// Setup: directories, plugin, policy, tenant key

/// A temporary Maestro installation: data, plugins (hostile), policy, one member key.
#[derive(Clone)]
struct Setup {
    dir: Arc<tempfile::TempDir>,
    key: String,
}

impl Setup {
    fn new(component: &Path) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        install_hostile(&dir.path().join("plugins"), component);
        let policies = dir.path().join("policies");
        std::fs::create_dir_all(&policies).expect("policy dir");
        std::fs::write(
            policies.join("bench.toml"),
            "version = 1\n\n[[grant]]\nname = \"bench\"\nsubjects = [\"tenant:acme\"]\ntools = [\"hostile.*\"]\n",
        )
        .expect("write policy");
        // One key runs every client's calls and sessions: let it hold more at once than
        // the clients can (the defaults, 16 calls and 32 sessions, would refuse the
        // 64-client cases).
        std::fs::write(
            dir.path().join("maestro.toml"),
            "version = 1\n\n[sandbox]\nmax_calls_in_flight_per_tenant = 256\n\n[mcp]\nmax_sessions_per_key = 1024\n",
        )
        .expect("write config");
        let mut setup = Self { dir: Arc::new(dir), key: String::new() };
        setup.cli(&["tenant", "create", "acme"]);
        let created = setup.cli(&["key", "create", "--tenant", "acme", "--role", "member"]);
        setup.key = created.lines().last().expect("the token on the last stdout line").trim().to_owned();
        assert!(setup.key.starts_with("mk_"), "unexpected key output: {created}");
        setup
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The environment every `maestro` process (and the in-process tools) gets.
    fn env(&self) -> Env {
        let dirs =
            [("MAESTRO_DATA_DIR", "data"), ("MAESTRO_PLUGIN_DIR", "plugins"), ("MAESTRO_POLICY_DIR", "policies")];
        let mut env: Env =
            dirs.iter().map(|(var, dir)| ((*var).to_owned(), self.path(dir).display().to_string())).collect();
        env.insert("MAESTRO_LOG".to_owned(), LOG_FILTER.to_owned());
        env.insert("MAESTRO_CONFIG".to_owned(), self.path("maestro.toml").display().to_string());
        env
    }

    /// A `maestro` command with a clean environment pointing at this installation.
    fn maestro(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_maestro"));
        command.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default()).envs(self.env());
        command
    }

    /// Runs an offline CLI command; its stdout.
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

    /// The account use-cases on this installation's store, in this process.
    async fn accounts(&self) -> maestro_host::accounts::Accounts {
        maestro_host::open_accounts(&self.config()).await.expect("store opens")
    }

    fn config(&self) -> Config {
        Config::load(None, &self.env(), &Overrides::default()).expect("config")
    }

    /// The tool use-cases as `maestro serve` composes them, in this process.
    async fn tools(&self) -> Arc<Tools> {
        let config = Config::load(None, &self.env(), &Overrides::default()).expect("config");
        let store = maestro_host::open_store(&config).await.expect("store opens");
        let credits =
            Arc::new(maestro_host::credits::Credits::new(store, Arc::new(maestro_host::accounts::SystemClock)));
        maestro_host::open_tools(&config, &self.env(), maestro_host::PluginLoading::Now, credits)
            .await
            .expect("tools open")
    }
}

/// Installs the hostile fixture as `maestro plugin build` would: component plus
/// manifest with its sha256.
fn install_hostile(plugin_dir: &Path, component: &Path) {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/plugins/hostile/plugin.toml");
    let mut manifest = Manifest::read(&source).expect("hostile manifest");
    let bytes = std::fs::read(component).expect("read component");
    manifest.sha256 = Some(sha256_hex(&bytes));
    let dir = plugin_dir.join("hostile");
    std::fs::create_dir_all(&dir).expect("plugin dir");
    std::fs::write(dir.join(&manifest.component), &bytes).expect("write component");
    std::fs::write(dir.join("plugin.toml"), toml::to_string(&manifest).expect("manifest toml"))
        .expect("write manifest");
}

// ---------------------------------------------------------------------------------
// The server process

struct Server {
    child: Child,
    pid: u32,
    addr: SocketAddr,
}

impl Server {
    async fn start(setup: &Setup) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let child = setup
            .maestro()
            .args(["serve", "--listen", &addr.to_string()])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(setup.path("serve.stdout")).expect("stdout file"))
            .stderr(std::fs::File::create(setup.path("serve.stderr")).expect("stderr file"))
            .spawn()
            .expect("maestro serve starts");
        let mut server = Self { pid: child.id(), child, addr };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = server.child.try_wait().expect("poll server") {
                let log = std::fs::read_to_string(setup.path("serve.stderr")).unwrap_or_default();
                panic!("maestro serve exited early ({status}):\n{log}");
            }
            if let Ok(mut client) = Client::open(addr, "", Exchange::Healthz).await
                && client.call().await.is_ok()
            {
                return server;
            }
            assert!(Instant::now() < deadline, "maestro serve did not become healthy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// This bench binary as a bare floor server (`rmcp` or `axum`).
    async fn floor(setup: &Setup, kind: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let exe = std::env::current_exe().expect("bench binary path");
        let child = Command::new(exe)
            .args([FLOOR_SERVER, kind, &addr.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(setup.path(&format!("floor-{kind}.stderr"))).expect("stderr file"))
            .spawn()
            .expect("floor server starts");
        let server = Self { pid: child.id(), child, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < deadline, "the {kind} floor server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server
    }

    fn cpu(&self) -> Duration {
        cpu_time(&self.pid.to_string())
    }

    /// CPU the idle server spends over `period`.
    async fn idle_cpu(&self, period: Duration) -> Duration {
        let before = self.cpu();
        tokio::time::sleep(period).await;
        self.cpu().saturating_sub(before)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------
// HTTP clients

/// What an HTTP client sends, over and over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exchange {
    /// `GET /healthz`: axum and the connection, nothing else.
    Healthz,
    /// `POST /v1/tools/hostile.noop/call`: the REST tool call.
    Rest,
    /// Stateless MCP `tools/call` of a tool that does not exist: authentication, rmcp
    /// and the handler without the sandbox.
    UnknownTool,
    /// Stateless (2026-07-28) MCP `tools/call` of `hostile.noop`.
    Stateless,
    /// 2025-11-25 MCP `tools/call` of `hostile.noop` on a session.
    Session,
    /// `GET /plaintext` of the bare axum floor server.
    Plaintext,
    /// Stateless MCP `tools/call` of the bare rmcp floor server's no-op tool.
    BareRmcp,
}

impl Exchange {
    fn label(self) -> &'static str {
        match self {
            Self::Healthz => "GET /healthz",
            Self::Rest => "REST POST /v1/tools/hostile.noop/call",
            Self::UnknownTool => "MCP stateless tools/call unknown tool",
            Self::Stateless => "MCP stateless tools/call",
            Self::Session => "MCP session tools/call",
            Self::Plaintext => "floor: bare axum GET /plaintext",
            Self::BareRmcp => "floor: bare rmcp stateless no-op call",
        }
    }
}

const STATELESS: &str = "2026-07-28";
const SESSION: &str = "2025-11-25";

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// One keep-alive HTTP/1.1 connection and what it sends.
struct Client {
    sender: Sender,
    exchange: Exchange,
    /// Headers of every request (Host, auth, MCP headers, session id).
    headers: HeaderMap,
    next_id: u64,
}

impl Client {
    /// Connects; for [`Exchange::Session`] also opens the session (initialize, then
    /// `notifications/initialized`).
    async fn open(addr: SocketAddr, key: &str, exchange: Exchange) -> Result<Self, String> {
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let (sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_str(&addr.to_string()).expect("host header"));
        if !matches!(exchange, Exchange::Healthz | Exchange::Plaintext) {
            headers
                .insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {key}")).expect("auth header"));
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let mcp = |headers: &mut HeaderMap, version: &'static str| {
            headers.insert(header::ACCEPT, HeaderValue::from_static("application/json, text/event-stream"));
            headers.insert("mcp-protocol-version", HeaderValue::from_static(version));
        };
        match exchange {
            Exchange::Healthz | Exchange::Rest | Exchange::Plaintext => {}
            Exchange::Stateless | Exchange::UnknownTool | Exchange::BareRmcp => {
                mcp(&mut headers, STATELESS);
                headers.insert("mcp-method", HeaderValue::from_static("tools/call"));
                let name = if exchange == Exchange::UnknownTool { "hostile.missing" } else { "hostile.noop" };
                headers.insert("mcp-name", HeaderValue::from_static(name));
            }
            Exchange::Session => mcp(&mut headers, SESSION),
        }
        let mut client = Self { sender, exchange, headers, next_id: 1 };
        if exchange == Exchange::Session {
            client.open_session().await?;
        }
        Ok(client)
    }

    async fn open_session(&mut self) -> Result<(), String> {
        let initialize = json!({
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": { "protocolVersion": SESSION, "capabilities": {}, "clientInfo": { "name": "bench", "version": "1" } },
        });
        let (headers, body) = self.send(Method::POST, "/mcp", initialize.to_string()).await?;
        jsonrpc_result(&body)?;
        let session = headers.get("mcp-session-id").ok_or("initialize answered no mcp-session-id")?.clone();
        self.headers.insert("mcp-session-id", session);
        let initialized = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" });
        self.send(Method::POST, "/mcp", initialized.to_string()).await?;
        Ok(())
    }

    /// Ends the session, if any.
    async fn close(mut self) {
        if self.exchange == Exchange::Session {
            let _ = self.send(Method::DELETE, "/mcp", String::new()).await;
        }
    }

    /// One call; checks that it succeeded as expected.
    async fn call(&mut self) -> Result<(), String> {
        let (method, path, body) = match self.exchange {
            Exchange::Healthz => (Method::GET, "/healthz", String::new()),
            Exchange::Plaintext => (Method::GET, "/plaintext", String::new()),
            Exchange::BareRmcp => (Method::POST, "/mcp", stateless_call(self.next_id, true)),
            Exchange::Rest => (Method::POST, "/v1/tools/hostile.noop/call", r#"{"arguments":{}}"#.to_owned()),
            Exchange::Stateless | Exchange::UnknownTool => {
                (Method::POST, "/mcp", stateless_call(self.next_id, self.exchange == Exchange::Stateless))
            }
            Exchange::Session => (
                Method::POST,
                "/mcp",
                format!(
                    r#"{{"jsonrpc":"2.0","id":{},"method":"tools/call","params":{{"name":"hostile.noop","arguments":{{}}}}}}"#,
                    self.next_id
                ),
            ),
        };
        self.next_id += 1;
        let (_, body) = self.send(method, path, body).await?;
        match self.exchange {
            Exchange::Healthz | Exchange::Plaintext => Ok(()),
            Exchange::Rest => {
                let value: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
                check_ok(&value)
            }
            Exchange::Stateless | Exchange::Session | Exchange::BareRmcp => check_ok(&jsonrpc_result(&body)?),
            Exchange::UnknownTool => match jsonrpc_result(&body) {
                Err(error) if error.contains("-32602") => Ok(()),
                other => Err(format!("expected an unknown-tool error, got {other:?}")),
            },
        }
    }

    /// Sends one request; the response headers and whole body, or why it failed.
    async fn send(&mut self, method: Method, path: &str, body: String) -> Result<(HeaderMap, Bytes), String> {
        let mut request =
            Request::builder().method(method).uri(path).body(Full::new(Bytes::from(body))).expect("request");
        *request.headers_mut() = self.headers.clone();
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let response = self.sender.send_request(request).await.map_err(|e| e.to_string())?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        if !parts.status.is_success() {
            return Err(format!("{}: {}", parts.status, String::from_utf8_lossy(&body)));
        }
        Ok((parts.headers, body))
    }
}

/// A stateless (2026-07-28) `tools/call` of `hostile.noop`, or of a missing tool.
fn stateless_call(id: u64, noop: bool) -> String {
    let name = if noop { "hostile.noop" } else { "hostile.missing" };
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{name}","arguments":{{}},"_meta":{{"io.modelcontextprotocol/protocolVersion":"{STATELESS}","io.modelcontextprotocol/clientCapabilities":{{}},"io.modelcontextprotocol/clientInfo":{{"name":"bench","version":"1"}}}}}}}}"#
    )
}

/// The `result` of a JSON-RPC response in a JSON body or the last `data:` event of an
/// SSE body; a JSON-RPC error as `Err`.
fn jsonrpc_result(body: &[u8]) -> Result<Value, String> {
    let text = std::str::from_utf8(body).map_err(|e| e.to_string())?;
    let json = if text.trim_start().starts_with('{') {
        text
    } else {
        text.lines()
            .filter_map(|line| line.strip_prefix("data:"))
            .map(str::trim)
            .rfind(|data| data.starts_with('{'))
            .ok_or_else(|| format!("no JSON-RPC message in {text:?}"))?
    };
    let mut message: Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    if let Some(error) = message.get("error") {
        return Err(error.to_string());
    }
    message.get_mut("result").map(Value::take).ok_or_else(|| format!("no result in {json}"))
}

/// Checks a noop result: not an error, and its text is "ok".
fn check_ok(result: &Value) -> Result<(), String> {
    let ok = result["isError"] != Value::Bool(true) && result["content"][0]["text"] == "ok";
    if ok { Ok(()) } else { Err(format!("unexpected result: {result}")) }
}

// ---------------------------------------------------------------------------------
// Drivers

/// What one window measured.
struct Run {
    latencies: Vec<Duration>,
    window: Duration,
    /// CPU of the process doing the work (the server, or this process in-process).
    server_cpu: Duration,
    /// CPU of this process (the clients), when it is not the server.
    client_cpu: Option<Duration>,
}

impl Run {
    fn calls(&self) -> usize {
        self.latencies.len()
    }

    fn calls_per_cpu_second(&self) -> f64 {
        self.calls() as f64 / self.server_cpu.as_secs_f64().max(1e-9)
    }

    fn server_cpu_per_call(&self) -> Duration {
        self.server_cpu.div_f64(self.calls().max(1) as f64)
    }

    fn p(&self, quantile: f64) -> Duration {
        percentile(&self.latencies, quantile)
    }

    fn print(&self, label: &str, clients: usize) {
        let calls = self.calls() as f64;
        let per_cpu_second =
            if self.server_cpu.is_zero() { f64::INFINITY } else { calls / self.server_cpu.as_secs_f64() };
        let client = self.client_cpu.map_or_else(|| "-".to_owned(), |cpu| format!("{:.1}", micros(cpu) / calls));
        println!(
            "  {label:<40} {clients:>3} {:>7} {:>8.0} {:>8.1} {:>8.1} {:>10.1} {:>9.0} {:>9}",
            self.calls(),
            calls / self.window.as_secs_f64(),
            micros(self.p(0.50)),
            micros(self.p(0.99)),
            micros(self.server_cpu_per_call()),
            per_cpu_second,
            client,
        );
    }
}

fn print_header() {
    println!(
        "  {:<40} {:>3} {:>7} {:>8} {:>8} {:>8} {:>10} {:>9} {:>9}",
        "case", "c", "calls", "calls/s", "p50 µs", "p99 µs", "srv µs/call", "calls/srv-s", "cli µs/call"
    );
}

/// The instants that frame a window: warm-up from now, then [`WINDOW`].
fn window_bounds() -> (Instant, Instant) {
    let start = Instant::now() + WARMUP;
    (start, start + WINDOW)
}

/// Samples `(server, client)` CPU at `start` and `end` on a plain thread (not delayed
/// by busy runtime workers); `server_pid` `None` means this process is the server.
fn sample_cpu(server_pid: Option<u32>, start: Instant, end: Instant) -> std::thread::JoinHandle<(Duration, Duration)> {
    std::thread::spawn(move || {
        let sample = || {
            let own = cpu_time("self");
            (server_pid.map_or(own, |pid| cpu_time(&pid.to_string())), own)
        };
        std::thread::sleep(start.saturating_duration_since(Instant::now()));
        let before = sample();
        std::thread::sleep(end.saturating_duration_since(Instant::now()));
        let after = sample();
        (after.0.saturating_sub(before.0), after.1.saturating_sub(before.1))
    })
}

/// Runs `clients` HTTP clients against the server for warm-up + window.
async fn drive_http(server: &Server, key: &str, exchange: Exchange, clients: usize) -> Run {
    let mut opened = Vec::with_capacity(clients);
    for _ in 0..clients {
        opened.push(Client::open(server.addr, key, exchange).await.unwrap_or_else(|e| panic!("{exchange:?}: {e}")));
    }
    let (start, end) = window_bounds();
    let cpu = sample_cpu(Some(server.pid), start, end);
    let tasks: Vec<_> = opened
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(1 << 16);
                loop {
                    let begun = Instant::now();
                    if begun >= end {
                        break;
                    }
                    client.call().await.unwrap_or_else(|e| panic!("{exchange:?} call failed: {e}"));
                    if begun >= start {
                        latencies.push(begun.elapsed());
                    }
                }
                client.close().await;
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("client task"));
    }
    let (server_cpu, client_cpu) =
        tokio::task::spawn_blocking(move || cpu.join().expect("cpu sampler")).await.expect("cpu sampler task");
    latencies.sort_unstable();
    Run { latencies, window: WINDOW, server_cpu, client_cpu: Some(client_cpu) }
}

/// Runs `call` in a loop from `clients` tasks in this process for warm-up + window.
async fn drive_in_process<F, Fut>(clients: usize, call: F) -> Run
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let (start, end) = window_bounds();
    let cpu = sample_cpu(None, start, end);
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(1 << 16);
                loop {
                    let begun = Instant::now();
                    if begun >= end {
                        break;
                    }
                    call().await;
                    if begun >= start {
                        latencies.push(begun.elapsed());
                    }
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("caller task"));
    }
    let (server_cpu, _) =
        tokio::task::spawn_blocking(move || cpu.join().expect("cpu sampler")).await.expect("cpu sampler task");
    latencies.sort_unstable();
    Run { latencies, window: WINDOW, server_cpu, client_cpu: None }
}

/// `maestro mcp --key` with one client making sequential calls (blocking I/O).
fn drive_stdio(setup: &Setup) -> Run {
    let mut child = setup
        .maestro()
        .args(["mcp", "--key", &setup.key])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(setup.path("mcp.stderr")).expect("stderr file"))
        .spawn()
        .expect("maestro mcp starts");
    let pid = child.id();
    let mut stdio = StdioClient {
        stdin: child.stdin.take().expect("piped stdin"),
        stdout: BufReader::new(child.stdout.take().expect("piped stdout")),
        line: String::new(),
    };
    let initialize = json!({
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": { "protocolVersion": SESSION, "capabilities": {}, "clientInfo": { "name": "bench", "version": "1" } },
    });
    stdio.request(0, &initialize.to_string()).expect("initialize");
    stdio.send(&json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }).to_string());

    let (start, end) = window_bounds();
    let mut latencies = Vec::with_capacity(1 << 16);
    let mut before = None;
    for id in 1u64.. {
        let begun = Instant::now();
        if begun >= end {
            break;
        }
        if begun >= start && before.is_none() {
            before = Some((cpu_time(&pid.to_string()), cpu_time("self"), begun));
        }
        let call = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"hostile.noop","arguments":{{}}}}}}"#
        );
        let result = stdio.request(id, &call).unwrap_or_else(|e| panic!("stdio call failed: {e}"));
        check_ok(&result).unwrap_or_else(|e| panic!("stdio call: {e}"));
        if begun >= start {
            latencies.push(begun.elapsed());
        }
    }
    let (server_before, client_before, began) = before.expect("the window started");
    let (server_cpu, client_cpu) =
        (cpu_time(&pid.to_string()).saturating_sub(server_before), cpu_time("self").saturating_sub(client_before));
    drop(stdio);
    let _ = child.wait();
    latencies.sort_unstable();
    Run { latencies, window: began.elapsed(), server_cpu, client_cpu: Some(client_cpu) }
}

/// The client side of a stdio MCP connection: one JSON-RPC message per line.
struct StdioClient {
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    line: String,
}

impl StdioClient {
    fn send(&mut self, message: &str) {
        self.stdin.write_all(message.as_bytes()).expect("write stdin");
        self.stdin.write_all(b"\n").expect("write stdin");
        self.stdin.flush().expect("flush stdin");
    }

    /// Sends a request and reads lines until its response (skipping notifications).
    fn request(&mut self, id: u64, message: &str) -> Result<Value, String> {
        self.send(message);
        loop {
            self.line.clear();
            if self.stdout.read_line(&mut self.line).map_err(|e| e.to_string())? == 0 {
                return Err("maestro mcp closed stdout".to_owned());
            }
            let value: Value = serde_json::from_str(&self.line).map_err(|e| e.to_string())?;
            if value["id"] == json!(id) {
                return jsonrpc_result(self.line.as_bytes());
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Summary against the goals

#[derive(Default)]
struct Results {
    /// Tools::call CPU per call in-process, one caller.
    floor: Option<Duration>,
    /// Best MCP calls per server CPU-second, and which case.
    best: Option<(f64, String)>,
    /// c=1 p50 of each MCP transport.
    p50s: Vec<(&'static str, Duration)>,
    /// The floors: which, clients, calls per server CPU-second, p50.
    floors: Vec<(Exchange, usize, f64, Duration)>,
    /// Every Maestro MCP figure: transport, clients, calls per server CPU-second, p50.
    figures: Vec<(&'static str, usize, f64, Duration)>,
}

impl Results {
    fn note(&mut self, transport: &'static str, clients: usize, run: &Run) {
        let per_second = run.calls() as f64 / run.server_cpu.as_secs_f64().max(1e-9);
        if self.best.as_ref().is_none_or(|(best, _)| per_second > *best) {
            self.best = Some((per_second, format!("{transport}, c={clients}")));
        }
        if clients == 1 {
            self.p50s.push((transport, run.p(0.5)));
        }
        self.figures.push((transport, clients, per_second, run.p(0.5)));
    }

    /// Each MCP figure beside the floors measured with as many clients in this run.
    fn print_ratios(&self) {
        println!("\nRatios to the floors of this run (calls per server CPU-second; c=1 p50)");
        for (transport, clients, per_second, p50) in &self.figures {
            let floor = |exchange| self.floors.iter().find(|f| f.0 == exchange && f.1 == *clients);
            let (Some(rmcp), Some(axum)) = (floor(Exchange::BareRmcp), floor(Exchange::Plaintext)) else { continue };
            println!(
                "  MCP {transport:<15} c={clients:<3} {per_second:>8.0}/cpu-s = {:>5.2}× bare rmcp ({:.0}), {:>5.3}× axum ({:.0}); \
                 p50 {:.1} µs = {:.2}× bare rmcp ({:.1} µs)",
                per_second / rmcp.2,
                rmcp.2,
                per_second / axum.2,
                axum.2,
                micros(*p50),
                micros(*p50) / micros(rmcp.3).max(1e-9),
                micros(rmcp.3),
            );
        }
    }

    fn print(&self) {
        self.print_ratios();
        println!("\nGoals");
        if let Some((best, case)) = &self.best {
            let verdict = if *best >= GOAL_CALLS_PER_CPU_SECOND { "met" } else { "NOT met" };
            println!(
                "  MCP calls per server CPU-second: best {best:.0} ({case}); goal ≥ {GOAL_CALLS_PER_CPU_SECOND:.0} \
                 (≤ {:.0} µs per call): {verdict}",
                1e6 / GOAL_CALLS_PER_CPU_SECOND
            );
        }
        if let Some(floor) = self.floor {
            println!(
                "  in-process Tools::call alone: {:.1} µs CPU per call ({:.0} calls per CPU-second)",
                micros(floor),
                1.0 / floor.as_secs_f64().max(1e-9)
            );
        }
        for (transport, p50) in &self.p50s {
            let goal = if *transport == "stdio" { GOAL_STDIO_P50_MICROS } else { GOAL_P50_MICROS };
            let verdict = if micros(*p50) <= goal { "met" } else { "NOT met" };
            println!("  c=1 p50, MCP {transport}: {:.1} µs; goal ≤ {goal:.0} µs: {verdict}", micros(*p50));
        }
    }
}

// ---------------------------------------------------------------------------------
// Helpers

/// The fixtures' build directory in Cargo's target directory, from this binary's path
/// (`<target>/release/deps/mcp-*`).
fn components_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("bench binary path");
    let target = exe.ancestors().nth(3).expect("<target>/release/deps/<binary>");
    target.join("wasm32-wasip2/release")
}

/// User + system CPU time of a process (`self` or a pid), all threads.
fn cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/<pid>/stat");
    // Field 2 (the command name, in parentheses) may hold spaces: split after it. The
    // rest starts at field 3, so utime (field 14) and stime (field 15) are at 11 and 12.
    let after_name = &stat[stat.rfind(')').expect("command name") + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // USER_HZ is 100 on every Linux ABI (sysconf(_SC_CLK_TCK) would need libc).
    Duration::from_millis(ticks * 10)
}

// ---------------------------------------------------------------------------------
// The floor servers

mod floor {
    use std::sync::Arc;

    use rmcp::model::{CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorData};
    use rmcp::service::{RequestContext, RoleServer};
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};

    /// An MCP server with one tool, whatever its name: it answers "ok".
    struct Noop;

    impl rmcp::ServerHandler for Noop {
        async fn call_tool(
            &self,
            _request: CallToolRequestParams,
            _context: RequestContext<RoleServer>,
        ) -> Result<CallToolResponse, ErrorData> {
            Ok(CallToolResponse::from(CallToolResult::success(vec![ContentBlock::text("ok")])))
        }
    }

    /// Serves `kind` (`rmcp`: the no-op MCP server at `/mcp`; `axum`: "Hello, World!" at
    /// `/plaintext`) on `addr` until killed, on as many workers as `maestro serve` has.
    pub(super) fn serve(kind: &str, addr: &str) {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("floor runtime");
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind(addr).await.expect("bind the floor address");
            let app = match kind {
                "axum" => axum::Router::new().route("/plaintext", axum::routing::get(|| async { "Hello, World!" })),
                "rmcp" => {
                    let config = StreamableHttpServerConfig::default().disable_allowed_hosts().with_json_response(true);
                    let service =
                        StreamableHttpService::new(|| Ok(Noop), Arc::new(LocalSessionManager::default()), config);
                    axum::Router::new().route_service("/mcp", service)
                }
                other => panic!("unknown floor server {other}"),
            };
            axum::serve(listener, app).await.expect("floor server");
        });
    }
}
