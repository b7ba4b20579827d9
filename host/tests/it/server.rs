//! A real `maestro` process for tests: a clean environment pointing at a test store,
//! `serve` on a free 127.0.0.1 port, health-waited, stopped with SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::harness::{Backend, TestDb};

/// A `maestro` command with a clean environment pointing at `db`.
pub(crate) fn maestro(db: &TestDb, backend: Backend) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_maestro"));
    command.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
    command.env("MAESTRO_DATA_DIR", db.dir().join("data"));
    if backend == Backend::Postgres {
        command.env("MAESTRO_DATABASE_URL", &db.url);
    }
    command
}

pub(crate) fn run(mut command: Command) -> Output {
    let output = command.output().expect("maestro runs");
    assert!(output.status.success(), "maestro failed: {}\n{}", output.status, String::from_utf8_lossy(&output.stderr));
    output
}

pub(crate) fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("utf-8")
}

pub(crate) struct Server {
    pub(crate) child: Child,
    /// `http://127.0.0.1:PORT`.
    pub(crate) base: String,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Server {
    pub(crate) async fn start(mut command: Command, dir: &Path, run: u32) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
        let stdout = dir.join(format!("stdout-{run}.txt"));
        let stderr = dir.join(format!("stderr-{run}.txt"));
        let child = command
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("maestro serve starts");
        let mut server = Self { child, base: format!("http://127.0.0.1:{port}"), stdout, stderr };
        server.wait_healthy().await;
        server
    }

    pub(crate) async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let client = reqwest::Client::new();
        loop {
            if let Some(status) = self.child.try_wait().expect("poll child") {
                panic!("maestro exited early ({status}):\n{}", self.stderr_text());
            }
            if let Ok(reply) = client.get(format!("{}/healthz", self.base)).send().await
                && reply.status() == StatusCode::OK
            {
                return;
            }
            assert!(Instant::now() < deadline, "maestro did not become healthy:\n{}", self.stderr_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub(crate) fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The platform-admin token printed on first start.
    pub(crate) fn bootstrap_token(&self) -> String {
        find_token(&self.stdout_text()).unwrap_or_else(|| panic!("no key printed:\n{}", self.stdout_text()))
    }

    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = reqwest::Client::new().request(method, format!("{}{path}", self.base)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let reply = request.send().await.expect("request");
        let status = reply.status();
        (status, reply.json().await.unwrap_or(Value::Null))
    }

    /// Sends SIGTERM and expects a clean exit.
    pub(crate) async fn stop(mut self) -> String {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("poll child") {
                assert!(status.success(), "maestro exited with {status}:\n{}", self.stderr_text());
                return self.stderr_text();
            }
            assert!(Instant::now() < deadline, "maestro did not stop on SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn find_token(text: &str) -> Option<String> {
    text.split_whitespace()
        .find(|w| w.starts_with("mk_"))
        .map(|w| w.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '_').to_owned())
}

/// A `maestro serve` with the personas plugin, members granted each glob of `tools`, and
/// every model tier served by `fake` ([`crate::fake_llm::FakeLlm::serve_config`]).
pub(crate) fn serve_personas(
    db: &crate::harness::TestDb,
    backend: crate::harness::Backend,
    fake: &crate::fake_llm::FakeLlm,
    tools: &[&str],
) -> std::process::Command {
    let (plugins, policies) = (db.dir().join("plugins"), db.dir().join("policies"));
    crate::fixtures::install(&plugins, "personas");
    std::fs::create_dir_all(&policies).expect("policy dir");
    let mut policy = "version = 1\n".to_owned();
    for (index, glob) in tools.iter().enumerate() {
        policy.push_str(&format!(
            "[[grant]]\nname = \"members-{index}\"\nsubjects = [\"role:member+\"]\ntools = [\"{glob}\"]\n"
        ));
    }
    std::fs::write(policies.join("team.toml"), policy).expect("policy");
    let config = db.dir().join("maestro.toml");
    std::fs::write(&config, fake.serve_config()).expect("config");
    let mut command = maestro(db, backend);
    command.env("MAESTRO_PLUGIN_DIR", plugins).env("MAESTRO_POLICY_DIR", policies).env("MAESTRO_CONFIG", config);
    command
}

/// `maestro` on `db` with a plugin directory holding the built fixtures `plugins` and a
/// policy directory holding `policy` (TOML text), quiet (`MAESTRO_LOG=warn`): the
/// command the stdio MCP tests start `maestro mcp` and one-shot commands with.
pub(crate) fn maestro_with(db: &TestDb, backend: Backend, plugins: &[&str], policy: &str) -> Command {
    let (plugin_dir, policy_dir) = (db.dir().join("plugins"), db.dir().join("policies"));
    std::fs::create_dir_all(&plugin_dir).expect("plugin dir");
    std::fs::create_dir_all(&policy_dir).expect("policy dir");
    for plugin in plugins {
        crate::fixtures::install(&plugin_dir, plugin);
    }
    std::fs::write(policy_dir.join("p.toml"), policy).expect("policy");
    let mut command = maestro(db, backend);
    command.env("MAESTRO_PLUGIN_DIR", plugin_dir).env("MAESTRO_POLICY_DIR", policy_dir).env("MAESTRO_LOG", "warn");
    command
}

/// `maestro mcp` as a child process, spoken to over its stdin and stdout (one JSON-RPC
/// message a line). Blocking reads: a test holding one runs on a multi-thread runtime.
pub(crate) struct StdioMcp {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    /// Notifications that arrived while waiting for answers, in order.
    pub(crate) notifications: Vec<Value>,
}

impl StdioMcp {
    /// Starts `command` with `args` (e.g. `["mcp", "--tenant", "acme", "--role",
    /// "member"]`); its stderr is discarded unless `stderr` is given.
    pub(crate) fn spawn(mut command: Command, args: &[&str], stderr: Stdio) -> Self {
        let mut child = command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("maestro mcp starts");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        Self { child, stdin: Some(stdin), stdout, notifications: Vec::new() }
    }

    /// Writes one message.
    pub(crate) fn send(&mut self, message: &Value) {
        use std::io::Write as _;
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{message}").expect("write");
    }

    /// Reads the next message.
    pub(crate) fn receive(&mut self) -> Value {
        use std::io::BufRead as _;
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON-RPC ({e}): {line:?}"))
    }

    /// Sends a request and returns the answer carrying its `id`, keeping the
    /// notifications read meanwhile.
    pub(crate) fn ask(&mut self, id: u64, method: &str, params: Value) -> Value {
        self.send(&serde_json::json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }));
        loop {
            let message = self.receive();
            if message["id"] == id {
                return message;
            }
            if message.get("id").is_none() {
                self.notifications.push(message);
            }
        }
    }

    /// `initialize` (as client `t`) and `notifications/initialized`; returns the answer.
    pub(crate) fn initialize(&mut self, revision: &str) -> Value {
        let params = serde_json::json!({
            "protocolVersion": revision, "capabilities": {}, "clientInfo": { "name": "t", "version": "1" } });
        let answer = self.ask(1, "initialize", params);
        self.send(&serde_json::json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }));
        answer
    }

    /// Closes stdin and expects a clean exit.
    pub(crate) fn close(mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().expect("exits when stdin closes");
        assert!(status.success(), "{status}");
    }
}

impl Drop for StdioMcp {
    fn drop(&mut self) {
        if self.stdin.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
