//! Real third-party MCP clients against Maestro: the official TypeScript SDK (v1, which
//! speaks 2025-11-25, and v2 pinned to the stateless 2026-07-28 revision) and the
//! official Python SDK (protocol negotiation left to the SDK, and forced to the legacy
//! handshake), each over Streamable HTTP against a real `maestro serve` and over stdio
//! against `maestro mcp --key`. The scripts live in `host/tests/mcp/clients/`; the
//! pinned SDKs are installed outside the checkout by `scripts/mcp-clients.sh`, which
//! the test command runs and names in `MAESTRO_MCP_CLIENTS`. Without it these tests
//! fail; they are never skipped.
//!
//! Protocol, not storage: SQLite only.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Backend, TestDb};
use crate::server::{Server, maestro, run, stdout};

/// Every tool of the hostile fixture and calc: what the `acme` policy grants.
const ACME_TOOLS: &[&str] = &[
    "calc.evaluate",
    "hostile.bad_structured",
    "hostile.canary",
    "hostile.config",
    "hostile.control_text",
    "hostile.echo",
    "hostile.empty_items",
    "hostile.fail",
    "hostile.fetch",
    "hostile.grow_memory",
    "hostile.hog",
    "hostile.huge_error",
    "hostile.huge_output",
    "hostile.noop",
    "hostile.print",
    "hostile.progress",
    "hostile.progress_flood",
    "hostile.recurse",
    "hostile.sleep",
    "hostile.spin",
    "hostile.spin_until_cancelled",
    "hostile.trap",
];
/// The personas of the granted plugins, served as prompts.
const ACME_PROMPTS: &[&str] =
    &["hostile.saboteur", "personas.architect", "personas.critic", "personas.product_manager", "personas.writer"];
const ACME_PLUGINS: &[&str] = &["calc", "hostile", "personas"];

/// `acme` members get calc, hostile and personas, with room for `hostile.spin` to run
/// until it is cancelled (so only cancellation can end it while the test waits);
/// `beta` members get calc only. `web` is installed but granted to no one.
const POLICY: &str = r#"version = 1

[[grant]]
name = "acme-members"
subjects = ["tenant:acme&role:member+"]
tools = ["calc.*", "hostile.*", "personas.*"]
fuel = 1_000_000_000_000
timeout = "10min"

[[grant]]
name = "beta-members"
subjects = ["tenant:beta&role:member+"]
tools = ["calc.*"]
"#;

#[derive(Debug, Clone, Copy)]
enum Client {
    /// `@modelcontextprotocol/sdk` 1.32.2.
    TypescriptSdk,
    /// `@modelcontextprotocol/client` 2.4.0, pinned to 2026-07-28.
    TypescriptClientV2,
    /// `mcp` 2.3.0 in its default `auto` mode (discover, else initialize).
    Python,
    /// `mcp` 2.3.0 with `mode="legacy"` (initialize).
    PythonLegacy,
}

impl Client {
    /// The protocol revision the client should end up speaking with Maestro.
    fn expected_revision(self) -> &'static str {
        match self {
            Self::TypescriptSdk | Self::PythonLegacy => "2025-11-25",
            Self::TypescriptClientV2 | Self::Python => "2026-07-28",
        }
    }

    fn command(self, installed: &Path) -> Command {
        let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/clients");
        let mut command = match self {
            Self::TypescriptSdk | Self::TypescriptClientV2 => {
                let mut c = Command::new(installed.join("node_modules/.bin/node"));
                let script =
                    if matches!(self, Self::TypescriptSdk) { "typescript-sdk.mjs" } else { "typescript-client-v2.mjs" };
                c.arg(scripts.join(script));
                c
            }
            Self::Python | Self::PythonLegacy => {
                let mut c = Command::new(installed.join("venv/bin/python"));
                c.arg(scripts.join("python_client.py"));
                if matches!(self, Self::PythonLegacy) {
                    c.args(["--mode", "legacy"]);
                }
                c
            }
        };
        command.env("MAESTRO_MCP_CLIENTS", installed);
        command
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Http,
    Stdio,
}

/// The directory `scripts/mcp-clients.sh` installed the pinned clients into.
fn installed_clients() -> PathBuf {
    let dir = match std::env::var_os("MAESTRO_MCP_CLIENTS") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => panic!(
            "MAESTRO_MCP_CLIENTS is not set: the MCP client tests run the pinned third-party SDKs that \
             scripts/mcp-clients.sh installs. Run scripts/test (it does), or \
             `export MAESTRO_MCP_CLIENTS=$(scripts/mcp-clients.sh)` before cargo test"
        ),
    };
    assert!(
        dir.join(".complete").is_file(),
        "MAESTRO_MCP_CLIENTS={} is not a complete install of scripts/mcp-clients.sh",
        dir.display()
    );
    dir
}

/// A store with tenants `acme` and `beta` (a member key each), the fixture plugins and
/// the policy above.
struct Setup {
    db: TestDb,
    plugins: PathBuf,
    policies: PathBuf,
    acme: String,
    beta: String,
}

impl Setup {
    async fn new() -> Self {
        Self::with(POLICY, "").await
    }

    /// A setup with another `policy`, and `config` appended to the configuration.
    async fn with(policy: &str, config: &str) -> Self {
        let db = TestDb::new(Backend::Sqlite).await;
        let (plugins, policies) = (db.dir().join("plugins"), db.dir().join("policies"));
        for plugin in ["calc", "hostile", "personas", "web"] {
            crate::fixtures::install(&plugins, plugin);
        }
        std::fs::create_dir_all(&policies).expect("policy dir");
        std::fs::write(policies.join("team.toml"), policy).expect("policy");
        // Compiled components are shared by every test and run: a cold compile of each
        // plugin in every `maestro` process would dominate the run.
        let wasm_cache = Path::new(env!("CARGO_BIN_EXE_maestro")).with_file_name("maestro-test-wasm-cache");
        let config =
            format!("version = 1\n{config}\n[sandbox]\ncache_dir = {:?}\n", wasm_cache.to_str().expect("utf-8 path"));
        std::fs::write(db.dir().join("maestro.toml"), config).expect("config");
        let mut setup = Self { db, plugins, policies, acme: String::new(), beta: String::new() };
        setup.acme = setup.member_key("acme");
        setup.beta = setup.member_key("beta");
        setup
    }

    fn member_key(&self, tenant: &str) -> String {
        run({
            let mut c = self.maestro();
            c.args(["tenant", "create", tenant]);
            c
        });
        let created = run({
            let mut c = self.maestro();
            c.args(["key", "create", "--tenant", tenant, "--role", "member"]);
            c
        });
        stdout(&created).trim().to_owned()
    }

    /// The environment of every `maestro` process of this setup.
    fn env(&self) -> Vec<(&'static str, OsString)> {
        vec![
            ("MAESTRO_DATA_DIR", self.db.dir().join("data").into_os_string()),
            ("MAESTRO_PLUGIN_DIR", self.plugins.clone().into_os_string()),
            ("MAESTRO_POLICY_DIR", self.policies.clone().into_os_string()),
            ("MAESTRO_CONFIG", self.db.dir().join("maestro.toml").into_os_string()),
            ("MAESTRO_LOG", "info".into()),
        ]
    }

    fn maestro(&self) -> Command {
        let mut command = maestro(&self.db, Backend::Sqlite);
        command.envs(self.env());
        command
    }

    /// The arguments that point a client at Maestro: the `/mcp` endpoint with `token`,
    /// or a `maestro mcp --key token` child with this setup's environment.
    fn transport_args(&self, transport: Transport, server: Option<&Server>, token: &str) -> Vec<OsString> {
        match transport {
            Transport::Http => {
                let server = server.expect("an HTTP transport needs the server");
                vec!["--url".into(), format!("{}/mcp", server.base).into(), "--token".into(), token.into()]
            }
            Transport::Stdio => {
                let mut args = Vec::new();
                for (key, value) in self.env() {
                    let mut pair = OsString::from(format!("{key}="));
                    pair.push(value);
                    args.extend(["--env".into(), pair]);
                }
                args.extend([
                    "--".into(),
                    env!("CARGO_BIN_EXE_maestro").into(),
                    "mcp".into(),
                    "--key".into(),
                    token.into(),
                ]);
                args
            }
        }
    }
}

/// What a client run printed.
struct ClientRun {
    stdout: String,
    stderr: String,
}

impl ClientRun {
    fn report(&self) -> String {
        format!("--- client stdout ---\n{}--- client stderr ---\n{}", self.stdout, self.stderr)
    }

    fn revision(&self) -> Option<&str> {
        self.stdout.lines().find_map(|l| l.strip_prefix("protocol-version: ")).map(str::trim)
    }
}

/// Runs a client to completion (at most two minutes) and expects it to pass. Its
/// output goes to files, so a chatty client can never block on a full pipe.
async fn run_client(mut command: Command, dir: &Path, server: Option<&Server>) -> ClientRun {
    let (stdout_path, stderr_path) = (dir.join("client-stdout.txt"), dir.join("client-stderr.txt"));
    let mut child = command
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the client {command:?}: {e}"));
    let read = || ClientRun {
        stdout: std::fs::read_to_string(&stdout_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
    };
    let server_log =
        || server.map(|s| format!("--- maestro serve stderr ---\n{}", s.stderr_text())).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll client") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the client did not finish within two minutes: {command:?}\n{}\n{}", read().report(), server_log());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let output = read();
    assert!(status.success(), "the client failed ({status}): {command:?}\n{}\n{}", output.report(), server_log());
    output
}

/// The log line of the cancelled `hostile.spin` call shows it ended by cancellation.
/// `log` is re-read until the line appears: the policy gives the spin ten minutes, so
/// only a cancelled sandbox call writes it while the test waits.
async fn assert_spin_was_cancelled(log: impl Fn() -> String, context: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = log();
        if let Some(line) = text.lines().find(|l| l.contains("mcp request") && l.contains("hostile.spin")) {
            assert!(line.contains("cancel"), "the spin call ended, but not by cancellation: {line}\n{}", context());
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the cancelled hostile.spin call never ended in the sandbox (no `mcp request` log line)\n{}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs every check of `client` over `transport` as an `acme` member.
async fn passes_every_check(client: Client, transport: Transport) {
    let installed = installed_clients();
    let setup = Setup::new().await;
    let server = match transport {
        Transport::Http => Some(Server::start(setup.maestro(), &setup.db.dir(), 1).await),
        Transport::Stdio => {
            // `maestro mcp` loads (compiles) every plugin before it reads stdin; have the
            // compile cache warm, as on any host that ran it before, so a client's
            // connect-time probe timeout never races the compiler. It exits at EOF (with
            // an error: no client ever initialized); the client run reports real failures.
            setup.maestro().args(["mcp", "--key", &setup.acme]).output().expect("maestro mcp runs");
            None
        }
    };
    let mut command = client.command(&installed);
    command
        .args(["--tools", &ACME_TOOLS.join(","), "--prompts", &ACME_PROMPTS.join(",")])
        .args(["--plugins", &ACME_PLUGINS.join(","), "--denied-plugin", "web"])
        .args(setup.transport_args(transport, server.as_ref(), &setup.acme));
    let output = run_client(command, &setup.db.dir(), server.as_ref()).await;
    assert_eq!(
        output.revision(),
        Some(client.expected_revision()),
        "{client:?} negotiated another revision\n{}",
        output.report()
    );
    match &server {
        Some(server) => {
            assert_spin_was_cancelled(
                || server.stderr_text(),
                || format!("--- maestro serve stderr ---\n{}", server.stderr_text()),
            )
            .await;
        }
        // The client passes the child's stderr through, and has exited: the log is whole.
        None => assert_spin_was_cancelled(|| output.stderr.clone(), || output.report()).await,
    }
    if let Some(server) = server {
        server.stop().await;
    }
}

macro_rules! client_tests {
    ($($name:ident: $client:ident over $transport:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                passes_every_check(Client::$client, Transport::$transport).await
            }
        )*
    };
}

client_tests!(
    typescript_sdk_passes_every_check_over_http: TypescriptSdk over Http,
    typescript_sdk_passes_every_check_over_stdio: TypescriptSdk over Stdio,
    typescript_client_v2_passes_every_check_over_http: TypescriptClientV2 over Http,
    typescript_client_v2_passes_every_check_over_stdio: TypescriptClientV2 over Stdio,
    python_sdk_passes_every_check_over_http: Python over Http,
    python_sdk_passes_every_check_over_stdio: Python over Stdio,
    python_sdk_legacy_handshake_passes_every_check_over_http: PythonLegacy over Http,
    python_sdk_legacy_handshake_passes_every_check_over_stdio: PythonLegacy over Stdio,
);

/// Two tenants on one server see the tool sets of their own policies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenant_lists_the_tools_its_policy_grants() {
    let installed = installed_clients();
    let setup = Setup::new().await;
    let server = Server::start(setup.maestro(), &setup.db.dir(), 1).await;
    for (token, tools) in [(&setup.beta, vec!["calc.evaluate"]), (&setup.acme, ACME_TOOLS.to_vec())] {
        let transport = setup.transport_args(Transport::Http, Some(&server), token);
        let mut command = Client::TypescriptSdk.command(&installed);
        command.args(["--only", "tools", "--tools", &tools.join(",")]).args(transport);
        run_client(command, &setup.db.dir(), Some(&server)).await;
    }
    server.stop().await;
}

/// Members may use the personas, the documents and the runs.
const AGENTS_POLICY: &str = r#"version = 1

[[grant]]
name = "members"
subjects = ["role:member+"]
tools = ["personas.*", "documents.*", "runs.*"]
"#;

/// Each SDK client, as a member of its own tenant, starts a run of `personas.writer`
/// with `runs.start` (the fake model has it create a document, then answer), follows its
/// progress, reads the document as a resource, and — the clients on 2025-11-25 sessions
/// — subscribes to it, edits it with `documents.edit` and hears
/// `notifications/resources/updated`. The TypeScript SDK does it over stdio too
/// (`maestro mcp` beside the server, runs executed by the server's workers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_clients_start_a_run_read_its_document_and_hear_it_updated() {
    use crate::fake_llm::{FakeLlm, Script, usage};
    let installed = installed_clients();
    let fake = FakeLlm::start().await;
    // Scripts are queued per run: no distillation may take one in between.
    let config = format!("{}\n[memory]\ndistil = false\n", fake.serve_config());
    let setup = Setup::with(AGENTS_POLICY, &config).await;
    let server = Server::start(setup.maestro(), &setup.db.dir(), 1).await;
    let clients = [
        (Client::TypescriptSdk, Transport::Http),
        (Client::TypescriptClientV2, Transport::Http),
        (Client::Python, Transport::Http),
        (Client::PythonLegacy, Transport::Http),
        (Client::TypescriptSdk, Transport::Stdio),
    ];
    for (index, (client, transport)) in clients.into_iter().enumerate() {
        let key = setup.member_key(&format!("team{index}"));
        let (document, answer) = (format!("# Plan {index}\n"), format!("Wrote plan {index}."));
        let create = serde_json::json!({ "title": format!("Plan {index}"), "content": document }).to_string();
        fake.push(Script::openai_tool_calls(&[("c1", "documents_create", &create)], usage(100, 10)));
        fake.push(Script::openai_text(&answer, usage(100, 10)));
        let mut command = client.command(&installed);
        command
            .args(["--agents", "personas.writer", "--expect-answer", &answer, "--expect-document", &document])
            .args(setup.transport_args(transport, Some(&server), &key));
        let output = run_client(command, &setup.db.dir(), Some(&server)).await;
        let checks: Vec<&str> = output.stdout.lines().filter_map(|l| l.strip_prefix("ok: ")).collect();
        assert!(checks.iter().any(|c| c.starts_with("runs.start")), "{client:?}\n{}", output.report());
        assert!(checks.iter().any(|c| c.starts_with("read maestro://documents/")), "{client:?}\n{}", output.report());
        if client.expected_revision() == "2025-11-25" {
            assert!(checks.iter().any(|c| c.starts_with("resources/updated")), "{client:?}\n{}", output.report());
        }
    }
    server.stop().await;
}
