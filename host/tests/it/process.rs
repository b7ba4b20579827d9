//! The real `maestro` binary over real sockets on 127.0.0.1: first start, the admin
//! flows, graceful shutdown on SIGTERM, restart on the same store, and the offline CLI.

use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Backend, TestDb, backend_tests};
use crate::server::{Server, find_token, maestro, run, stdout};

backend_tests!(
    serves_the_admin_flow_and_keeps_it_across_restarts,
    offline_cli_manages_the_same_store_as_the_server,
    registers_the_configured_admin_key_on_first_start,
    stdio_refuses_the_next_request_after_its_key_is_revoked,
);

async fn serves_the_admin_flow_and_keeps_it_across_restarts(backend: Backend) {
    use reqwest::Method;
    let db = TestDb::new(backend).await;
    let server = Server::start(maestro(&db, backend), &db.dir(), 1).await;
    let platform = server.bootstrap_token();
    let log = server.stderr_text();
    assert!(log.contains("listening") && log.contains(&server.base[7..]), "startup names the address:\n{log}");
    let store_word = if backend == Backend::Sqlite { "sqlite:" } else { "postgres://" };
    assert!(log.contains(store_word), "startup names the store:\n{log}");
    assert!(!log.contains(&platform), "the key never reaches the log");

    let (status, _) = server.call(Method::POST, "/v1/tenants", &platform, Some(json!({ "name": "acme" }))).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, admin) =
        server.call(Method::POST, "/v1/keys", &platform, Some(json!({ "tenant": "acme", "role": "admin" }))).await;
    assert_eq!(status, StatusCode::CREATED);
    let admin = admin["token"].as_str().expect("token").to_owned();
    let (_, member) = server.call(Method::POST, "/v1/keys", &admin, Some(json!({ "role": "member" }))).await;
    let member_id = member["key"]["id"].as_str().expect("id").to_owned();
    let member = member["token"].as_str().expect("token").to_owned();
    assert_eq!(server.call(Method::GET, "/v1/keys", &member, None).await.0, StatusCode::FORBIDDEN);
    let (status, _) = server.call(Method::DELETE, &format!("/v1/keys/{member_id}"), &admin, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(server.call(Method::GET, "/v1/keys", &member, None).await.0, StatusCode::UNAUTHORIZED);

    let log = server.stop().await;
    assert!(log.contains("maestro stopped"), "graceful shutdown is logged:\n{log}");

    let server = Server::start(maestro(&db, backend), &db.dir(), 2).await;
    assert_eq!(find_token(&server.stdout_text()), None, "no second bootstrap key");
    let (status, tenants) = server.call(Method::GET, "/v1/tenants", &platform, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(tenants["tenants"][0]["name"], "acme");
    let (status, keys) = server.call(Method::GET, "/v1/keys", &admin, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(keys["keys"].as_array().expect("keys").len(), 2);
    assert_eq!(server.call(Method::GET, "/v1/keys", &member, None).await.0, StatusCode::UNAUTHORIZED);
    if backend == Backend::Sqlite {
        assert!(db.dir().join("data/maestro.db").is_file(), "the embedded store lives under the data dir");
    }
    server.stop().await;
}

async fn offline_cli_manages_the_same_store_as_the_server(backend: Backend) {
    use reqwest::Method;
    let db = TestDb::new(backend).await;
    let tenant = run({
        let mut c = maestro(&db, backend);
        c.args(["tenant", "create", "acme"]);
        c
    });
    assert!(stdout(&tenant).contains("acme"));
    let created = run({
        let mut c = maestro(&db, backend);
        c.args(["key", "create", "--tenant", "acme", "--role", "admin", "--name", "ops", "--expires", "30d"]);
        c
    });
    let admin = stdout(&created).trim().to_owned();
    assert!(admin.starts_with("mk_") && !admin.contains(char::is_whitespace), "only the token on stdout: {admin}");
    assert!(String::from_utf8_lossy(&created.stderr).contains("shown only this once"));

    let server = Server::start(maestro(&db, backend), &db.dir(), 1).await;
    assert_eq!(find_token(&server.stdout_text()), None, "keys exist, so no bootstrap key");
    let (status, keys) = server.call(Method::GET, "/v1/keys", &admin, None).await;
    assert_eq!(status, StatusCode::OK, "a key created offline works on the server");
    let key_id = keys["keys"][0]["id"].as_str().expect("id").to_owned();
    assert!(keys["keys"][0]["expires_at"].is_string());

    run({
        let mut c = maestro(&db, backend);
        c.args(["key", "revoke", &key_id]);
        c
    });
    // SQLite: the very next request is refused. Postgres: once the key notice reaches the
    // server's cache (README, Authentication), so the request is repeated until then.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = server.call(Method::GET, "/v1/keys", &admin, None).await.0;
        if backend == Backend::Sqlite || status != StatusCode::OK || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    assert_eq!(status, StatusCode::UNAUTHORIZED, "revoked offline");

    let listed = run({
        let mut c = maestro(&db, backend);
        c.args(["key", "list", "--json"]);
        c
    });
    let listed: Value = serde_json::from_slice(&listed.stdout).expect("json");
    assert_eq!(listed[0]["status"], "revoked");
    assert_eq!(listed[0]["tenant"], "acme");
    assert!(
        !String::from_utf8_lossy(
            &run({
                let mut c = maestro(&db, backend);
                c.args(["key", "list"]);
                c
            })
            .stdout
        )
        .contains(&admin[11..]),
        "listings never show the secret"
    );
    server.stop().await;
}

async fn registers_the_configured_admin_key_on_first_start(backend: Backend) {
    use reqwest::Method;
    let db = TestDb::new(backend).await;
    let admin_key = "mk_ConfiguredByTheOperator0123456789abcdef";
    let mut command = maestro(&db, backend);
    command.env("MAESTRO_ADMIN_KEY", admin_key);
    let server = Server::start(command, &db.dir(), 1).await;
    assert_eq!(find_token(&server.stdout_text()), None, "nothing printed: the operator has the key");
    assert!(!server.stderr_text().contains(admin_key));
    assert_eq!(server.call(Method::GET, "/v1/tenants", admin_key, None).await.0, StatusCode::OK);
    server.stop().await;
}

#[test]
fn migrate_reports_and_bad_configuration_fails_clearly() {
    let dir = tempfile::tempdir().expect("dir");
    let base = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_maestro"));
        c.env_clear().env("MAESTRO_DATA_DIR", dir.path());
        c
    };
    let migrated = run({
        let mut c = base();
        c.arg("migrate");
        c
    });
    assert!(stdout(&migrated).contains("up to date"), "{}", stdout(&migrated));
    assert!(dir.path().join("maestro.db").is_file());

    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let failures: [Case<'_>; 4] = [
        (&["serve", "--config", "/nonexistent/maestro.toml"], &[], "cannot read config file"),
        (&["serve"], &[("MAESTRO_LISTEN", "bogus")], "invalid listen"),
        (&["serve"], &[("MAESTRO_LOG", "info,[[[")], "invalid log filter"),
        (&["key", "create", "--tenant", "nobody", "--role", "admin"], &[], "tenant `nobody` not found"),
    ];
    for (args, env, expected) in failures {
        let mut command = base();
        command.args(args).envs(env.iter().copied());
        let output = command.output().expect("runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} should fail");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn json_log_format_writes_one_object_per_line() {
    let dir = tempfile::tempdir().expect("dir");
    let output = Command::new(env!("CARGO_BIN_EXE_maestro"))
        .env_clear()
        .env("MAESTRO_DATA_DIR", dir.path())
        .env("MAESTRO_LOG", "debug")
        .args(["--log-format", "json", "tenant", "list"])
        .output()
        .expect("runs");
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.trim().is_empty(), "debug logging produced lines");
    for line in stderr.lines() {
        let value: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(value["level"].is_string() && value["timestamp"].is_string(), "{line}");
    }
}

/// The server with real plugins and policy files: tools follow the policy, and an edit
/// to a policy file takes effect without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_plugins_under_policy_files_and_reloads_them() {
    use reqwest::Method;
    let db = TestDb::new(Backend::Sqlite).await;
    let (plugins, policies) = (db.dir().join("plugins"), db.dir().join("policies"));
    crate::fixtures::install(&plugins, "calc");
    crate::fixtures::install(&plugins, "text");
    std::fs::create_dir_all(&policies).expect("policy dir");
    let grant = |tools: &str| {
        format!("version = 1\n[[grant]]\nname = \"members\"\nsubjects = [\"role:member+\"]\ntools = [{tools}]\n")
    };
    std::fs::write(policies.join("team.toml"), grant("\"calc.*\"")).expect("policy");
    let config = db.dir().join("maestro.toml");
    std::fs::write(&config, "[plugins]\nreload_interval = \"200ms\"\n[policies]\nreload_interval = \"200ms\"\n")
        .expect("config");
    let mut command = maestro(&db, Backend::Sqlite);
    command.env("MAESTRO_PLUGIN_DIR", &plugins).env("MAESTRO_POLICY_DIR", &policies).env("MAESTRO_CONFIG", &config);
    let server = Server::start(command, &db.dir(), 1).await;
    let member = acme_member(&server).await;

    let tool_names = |body: &Value| -> Vec<String> {
        body["tools"].as_array().into_iter().flatten().filter_map(|t| t["name"].as_str().map(str::to_owned)).collect()
    };
    let (status, tools) = server.call(Method::GET, "/v1/tools", &member, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(tool_names(&tools), vec!["calc.evaluate".to_owned()]);
    let (status, result) = server
        .call(
            Method::POST,
            "/v1/tools/calc.evaluate/call",
            &member,
            Some(json!({ "arguments": { "expression": "6*7" } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{result}");
    assert_eq!(result["structured"]["value"], 42.0);

    // Edit the policy: text instead of calc. A broken edit after that changes nothing.
    std::fs::write(policies.join("team.toml"), grant("\"text.*\"")).expect("policy");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, tools) = server.call(Method::GET, "/v1/tools", &member, None).await;
        if tool_names(&tools).iter().all(|n| n.starts_with("text.")) && !tool_names(&tools).is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the policy edit never took effect: {tools}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::fs::write(policies.join("team.toml"), "version = 1\n[[grant]]\nname = 42\n").expect("policy");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, tools) = server.call(Method::GET, "/v1/tools", &member, None).await;
    assert!(tool_names(&tools).contains(&"text.count".to_owned()), "the last good policy stays: {tools}");
    let (status, _) = server
        .call(
            Method::POST,
            "/v1/tools/calc.evaluate/call",
            &member,
            Some(json!({ "arguments": { "expression": "1" } })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let log = server.stop().await;
    assert!(log.contains("policy change rejected"), "the broken edit is logged:\n{log}");
}

async fn stdio_refuses_the_next_request_after_its_key_is_revoked(backend: Backend) {
    use std::io::{BufRead as _, BufReader, Write as _};
    use std::process::Stdio;

    let db = TestDb::new(backend).await;
    let (plugins, policies) = (db.dir().join("plugins"), db.dir().join("policies"));
    std::fs::create_dir_all(&policies).expect("policies");
    crate::fixtures::install(&plugins, "calc");
    let policy = "version = 1\n[[grant]]\nname = \"beta\"\nsubjects = [\"tenant:beta\"]\ntools = [\"calc.*\"]\n";
    std::fs::write(policies.join("p.toml"), policy).expect("policy");
    let command = || {
        let mut command = maestro(&db, backend);
        command.env("MAESTRO_PLUGIN_DIR", &plugins).env("MAESTRO_POLICY_DIR", &policies).env("MAESTRO_LOG", "warn");
        command
    };
    run({
        let mut c = command();
        c.args(["tenant", "create", "beta"]);
        c
    });
    let created: Value = serde_json::from_slice(
        &run({
            let mut c = command();
            c.args(["key", "create", "--tenant", "beta", "--role", "member", "--json"]);
            c
        })
        .stdout,
    )
    .expect("json");
    let (token, key_id) = (created["token"].as_str().expect("token"), created["id"].as_str().expect("id"));

    let stderr = db.dir().join("mcp-stderr.txt");
    let mut child = command()
        .arg("mcp")
        .env("MAESTRO_MCP_KEY", token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .spawn()
        .expect("maestro mcp starts");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut exchange = |message: Value| {
        writeln!(stdin, "{message}").expect("write");
        if message.get("id").is_none() {
            return Value::Null;
        }
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read");
        serde_json::from_str::<Value>(&line).unwrap_or_else(|e| panic!("not JSON-RPC ({e}): {line:?}"))
    };
    let initialized = exchange(json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": { "name": "t", "version": "1" } } }));
    assert_eq!(initialized["result"]["serverInfo"]["name"], "maestro", "{initialized}");
    exchange(json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }));
    let call = |id: u64| {
        json!({ "jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": { "name": "calc.evaluate", "arguments": { "expression": "6 * 7" } } })
    };
    let answer = exchange(call(2));
    assert_eq!(answer["result"]["isError"], false, "{answer}");

    run({
        let mut c = command();
        c.args(["key", "revoke", key_id]);
        c
    });
    let refused = exchange(call(3));
    assert_eq!(refused["id"], 3);
    let message = refused["error"]["message"].as_str().unwrap_or_else(|| panic!("refused: {refused}"));
    assert!(message.contains("revoked") && message.contains("maestro mcp"), "{message}");
    let listed = exchange(json!({ "jsonrpc": "2.0", "id": 4, "method": "tools/list" }));
    assert!(listed["error"].is_object(), "every later request is refused too: {listed}");

    drop(stdin);
    let status = child.wait().expect("exits when stdin closes");
    assert!(status.success(), "{status}");
    let log = std::fs::read_to_string(&stderr).expect("stderr");
    assert!(!log.contains(token), "the key never reaches the log");
}

#[tokio::test]
async fn plugin_log_lines_carry_the_request_id_of_the_call_that_wrote_them() {
    use reqwest::Method;
    let db = TestDb::new(Backend::Sqlite).await;
    let (plugins, policies) = (db.dir().join("plugins"), db.dir().join("policies"));
    crate::fixtures::install(&plugins, "hostile");
    std::fs::create_dir_all(&policies).expect("policy dir");
    let policy = "version = 1\n[[grant]]\nname = \"members\"\nsubjects = [\"role:member+\"]\ntools = [\"hostile.*\"]\n";
    std::fs::write(policies.join("team.toml"), policy).expect("policy");
    let mut command = maestro(&db, Backend::Sqlite);
    command.env("MAESTRO_PLUGIN_DIR", &plugins).env("MAESTRO_POLICY_DIR", &policies);
    let server = Server::start(command, &db.dir(), 1).await;
    let member = acme_member(&server).await;
    let (status, body) = server
        .call(Method::POST, "/v1/tools/hostile.progress/call", &member, Some(json!({ "arguments": { "n": 2 } })))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let log = server.stop().await;

    // The pipeline's line for the call names the request; the plugin's own lines, written
    // on the sandbox's threads, carry the same id.
    let request_id = |line: &str| {
        line.split("request_id=").nth(1).map(|rest| rest.chars().take_while(char::is_ascii_alphanumeric).collect())
    };
    let call_line = log.lines().find(|l| l.contains("name=\"hostile.progress\"")).expect("the call is logged");
    let id: String = request_id(call_line).expect("the call's line has a request id");
    let steps: Vec<&str> = log.lines().filter(|l| l.contains("step 1 of 2") || l.contains("step 2 of 2")).collect();
    assert_eq!(steps.len(), 2, "{log}");
    for step in steps {
        assert_eq!(request_id(step).as_deref(), Some(id.as_str()), "{step}");
    }
}

/// Creates tenant `acme` with the first-start platform key and returns a member key of it.
async fn acme_member(server: &Server) -> String {
    use reqwest::Method;
    let platform = server.bootstrap_token();
    server.call(Method::POST, "/v1/tenants", &platform, Some(json!({ "name": "acme" }))).await;
    let (_, member) =
        server.call(Method::POST, "/v1/keys", &platform, Some(json!({ "tenant": "acme", "role": "member" }))).await;
    member["token"].as_str().expect("token").to_owned()
}
