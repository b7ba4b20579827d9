//! The official MCP conformance suite (`@modelcontextprotocol/conformance`, pinned in
//! `host/tests/mcp/package.json`) against a real `maestro serve` on 127.0.0.1, for both
//! protocol revisions Maestro speaks: 2025-11-25 (sessions) and 2026-07-28 (stateless).
//!
//! The suite's client sends no credentials, so a small proxy
//! (`host/tests/mcp/conformance/proxy.mjs`) sits in front and adds a tenant member's
//! bearer key. The tools, prompts and resources the scenarios use come from the fixture plugin
//! `host/tests/plugins/conformance`, exposed under their bare names
//! (`MAESTRO_MCP_TOOL_NAMES=short`). `host/tests/mcp/conformance/scenarios.json` lists the
//! scenarios run per revision and the reason for every one that is not; it must account
//! for exactly the scenarios the suite has, so a suite upgrade cannot silently add or drop
//! one. Runs on SQLite only: this is about the protocol, not the store.
//!
//! Needs `MAESTRO_MCP_CLIENTS`: a directory with `node_modules/` installed from
//! `host/tests/mcp/package-lock.json` (the test command provides it). Without it the test
//! fails; it never skips.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde::Deserialize;

use crate::harness::{Backend, TestDb};
use crate::server::{Server, maestro, run, stdout};

/// `scenarios.json`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenarios {
    #[allow(dead_code, reason = "documentation for people reading the file")]
    about: String,
    suite: String,
    revisions: BTreeMap<String, Revision>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Revision {
    /// Scenario → how it is run.
    run: BTreeMap<String, Run>,
    /// Scenario → why it is not run.
    excluded: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Run {
    /// Check id → why it cannot pass.
    #[serde(default)]
    expected_failures: BTreeMap<String, String>,
}

/// Node and the suite, from `MAESTRO_MCP_CLIENTS`.
struct Suite {
    node: PathBuf,
    entry: PathBuf,
    /// Scratch directory the suite runs in (it may write results there).
    work: PathBuf,
}

impl Suite {
    fn locate(work: PathBuf) -> Self {
        let Some(clients) = std::env::var_os("MAESTRO_MCP_CLIENTS").filter(|v| !v.is_empty()) else {
            panic!(
                "MAESTRO_MCP_CLIENTS is not set: the MCP conformance test needs a directory with node_modules/ \
                 installed from host/tests/mcp/package-lock.json (Node 22 and @modelcontextprotocol/conformance). \
                 Run `scripts/test`, which installs it and sets the variable"
            )
        };
        let modules = Path::new(&clients).join("node_modules");
        let node = modules.join(".bin/node");
        let entry = modules.join("@modelcontextprotocol/conformance/dist/index.js");
        for path in [&node, &entry] {
            assert!(
                path.is_file(),
                "{} is missing: MAESTRO_MCP_CLIENTS must hold node_modules/ installed from \
                 host/tests/mcp/package-lock.json",
                path.display()
            );
        }
        Self { node, entry, work }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.node);
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.work)
            .env("NO_COLOR", "1")
            .current_dir(&self.work)
            .arg(&self.entry)
            .args(args);
        command
    }

    fn version(&self) -> String {
        let output = self.command(&["--version"]).output().expect("the suite runs");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// The server scenarios the suite has for `revision`.
    fn scenarios(&self, revision: &str) -> Vec<String> {
        let output = run(self.command(&["list", "--server", "--spec-version", revision]));
        stdout(&output)
            .lines()
            .filter_map(|line| line.trim_start().strip_prefix("- "))
            .filter_map(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
            .collect()
    }

    /// Runs one scenario; `baseline` is the expected-failures file.
    fn run(&self, url: &str, revision: &str, scenario: &str, baseline: &Path) -> Output {
        let baseline = baseline.to_str().expect("utf-8 path");
        self.command(&[
            "server",
            "--url",
            url,
            "--spec-version",
            revision,
            "--scenario",
            scenario,
            "--expected-failures",
            baseline,
        ])
        .output()
        .expect("the suite runs")
    }
}

/// The header-injecting proxy, killed on drop.
struct Proxy {
    child: Child,
    /// `http://127.0.0.1:PORT/mcp`.
    url: String,
}

impl Proxy {
    fn start(suite: &Suite, port: u16, upstream: &str, token: &str) -> Self {
        let script = crate::fixtures::root().join("host/tests/mcp/conformance/proxy.mjs");
        let mut child = Command::new(&suite.node)
            .env_clear()
            .env("MAESTRO_MCP_BEARER", token)
            .arg(script)
            .arg(port.to_string())
            .arg(upstream)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the proxy starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout")).read_line(&mut line).expect("proxy output");
        assert_eq!(line.trim(), port.to_string(), "the proxy did not start listening on its port");
        Self { child, url: format!("http://127.0.0.1:{port}/mcp") }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The expected-failures baseline the suite reads (`server: [scenario:check, …]`).
fn write_baseline(path: &Path, scenario: &str, expected: &BTreeMap<String, String>) {
    let entries: Vec<String> = expected.keys().map(|check| format!("{scenario}:{check}")).collect();
    let yaml = serde_yaml::to_string(&serde_json::json!({ "server": entries })).expect("yaml");
    std::fs::write(path, yaml).expect("write baseline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_official_mcp_conformance_scenarios() {
    let db = TestDb::new(Backend::Sqlite).await;
    let work = db.dir().join("conformance");
    std::fs::create_dir_all(&work).expect("work dir");
    let suite = Suite::locate(work.clone());
    let path = crate::fixtures::root().join("host/tests/mcp/conformance/scenarios.json");
    let scenarios: Scenarios =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("scenarios.json")).expect("scenarios.json parses");
    let version = suite.version();
    assert!(
        scenarios.suite.ends_with(&format!("@{version}")),
        "{} lists {}, installed is {version}",
        path.display(),
        scenarios.suite
    );

    // Every scenario of the suite is either run or excluded with a reason.
    for (revision, listed) in &scenarios.revisions {
        let mut available = suite.scenarios(revision);
        available.sort();
        let mut accounted: Vec<String> = listed.run.keys().chain(listed.excluded.keys()).cloned().collect();
        accounted.sort();
        assert_eq!(
            accounted,
            available,
            "{}: the {revision} scenarios must be exactly the suite's (each run or excluded with a reason)",
            path.display()
        );
        for (scenario, reason) in &listed.excluded {
            assert!(!reason.trim().is_empty(), "{scenario} ({revision}) is excluded without a reason");
        }
        for (scenario, how) in &listed.run {
            for (check, reason) in &how.expected_failures {
                assert!(
                    !reason.trim().is_empty(),
                    "{scenario}:{check} ({revision}) is expected to fail without a reason"
                );
            }
        }
    }

    let (plugins, policies) = (db.dir().join("plugins"), db.dir().join("policies"));
    crate::fixtures::install(&plugins, "conformance");
    std::fs::create_dir_all(&policies).expect("policy dir");
    std::fs::write(
        policies.join("conformance.toml"),
        "version = 1\n[[grant]]\nname = \"conformance\"\nsubjects = [\"tenant:conformance\"]\ntools = [\"conformance.*\"]\n\
         resources = [\"conformance.*\"]\n\
         model_tiers = [\"balanced\"]\nmodel_max_tokens = 100\n",
    )
    .expect("policy");
    run({
        let mut c = maestro(&db, Backend::Sqlite);
        c.args(["tenant", "create", "conformance"]);
        c
    });
    let member = stdout(&run({
        let mut c = maestro(&db, Backend::Sqlite);
        c.args(["key", "create", "--tenant", "conformance", "--role", "member", "--name", "conformance-suite"]);
        c
    }))
    .trim()
    .to_owned();

    // The clients reach the server through the proxy, so the Origin it allows is the
    // proxy's, and the proxy's port must be known before the server starts.
    let proxy_port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
    let mut command = maestro(&db, Backend::Sqlite);
    command
        .env("MAESTRO_PLUGIN_DIR", &plugins)
        .env("MAESTRO_POLICY_DIR", &policies)
        .env("MAESTRO_MCP_TOOL_NAMES", "short")
        // server-sse-polling: the server closes this tool's POST streams after the
        // priming event and the client resumes them with Last-Event-ID (SEP-1699).
        .env("MAESTRO_MCP_POLL_TOOLS", "test_reconnection")
        .env("MAESTRO_MCP_ALLOWED_HOSTS", "localhost,127.0.0.1")
        .env("MAESTRO_MCP_ALLOWED_ORIGINS", format!("http://127.0.0.1:{proxy_port},http://localhost:{proxy_port}"));
    let server = Server::start(command, &db.dir(), 1).await;
    let proxy = Proxy::start(&suite, proxy_port, &server.base, &member);

    let mut failures = Vec::new();
    let mut passed = 0;
    for (revision, listed) in &scenarios.revisions {
        for (scenario, how) in &listed.run {
            let baseline = work.join(format!("baseline-{revision}-{scenario}.yaml"));
            write_baseline(&baseline, scenario, &how.expected_failures);
            let output = suite.run(&proxy.url, revision, scenario, &baseline);
            if output.status.success() {
                passed += 1;
            } else {
                failures.push(format!(
                    "── {scenario} ({revision}): {}\n{}{}",
                    output.status,
                    plain(&String::from_utf8_lossy(&output.stdout)),
                    plain(&String::from_utf8_lossy(&output.stderr))
                ));
            }
        }
    }
    drop(proxy);
    let log = server.stop().await;
    assert!(
        failures.is_empty(),
        "{} of {} conformance scenarios failed:\n\n{}\n── server log (tail):\n{}",
        failures.len(),
        failures.len() + passed,
        failures.join("\n"),
        tail(&log, 60)
    );
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `text` without the ANSI colour sequences the suite prints whatever the terminal.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters… final byte in @..~
            chars.by_ref().skip(1).find(|c| ('@'..='~').contains(c));
        } else {
            out.push(c);
        }
    }
    out
}
