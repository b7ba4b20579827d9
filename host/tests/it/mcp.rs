//! MCP over Streamable HTTP, in process on a real 127.0.0.1 socket, with real plugin
//! components: both revisions (2025-11-25 sessions, 2026-07-28 stateless), tenants
//! isolated by policy and by session ownership, requests refused before any tool runs,
//! failures as readable results, progress and logs, cancellation, list_changed, and the
//! stdio server. Third-party clients are in `mcp_clients` and `mcp_conformance`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use maestro_host::plugins::PluginRegistry;
use maestro_host::policy::PolicyStore;
use maestro_host::tools::{SecretValues, Tools};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::fixtures::TestServer;
use crate::harness::{Backend, TestHost};

pub(crate) const STATELESS: &str = "2026-07-28";
pub(crate) const SESSIONS: &str = "2025-11-25";

/// A `TestHost` served on 127.0.0.1.
pub(crate) struct Served {
    pub(crate) host: TestHost,
    pub(crate) url: String,
    platform: String,
}

impl Served {
    pub(crate) async fn start(host: TestHost) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://127.0.0.1:{}/mcp", listener.local_addr().expect("addr").port());
        let app = host.router();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let platform = host.platform_token().await;
        Self { host, url, platform }
    }

    async fn with_plugins(plugins: &[&str], policy: &str) -> Self {
        Self::start(TestHost::with_plugins(Backend::Sqlite, plugins, policy).await).await
    }

    pub(crate) async fn member_of(&self, tenant: &str) -> String {
        self.host.tenant_with_key(&self.platform, tenant, "member").await
    }

    pub(crate) fn client(&self, token: &str, revision: &'static str) -> Client {
        Client { http: reqwest::Client::new(), url: self.url.clone(), token: token.to_owned(), revision, session: None }
    }
}

/// A minimal MCP client over Streamable HTTP.
pub(crate) struct Client {
    http: reqwest::Client,
    url: String,
    token: String,
    revision: &'static str,
    pub(crate) session: Option<String>,
}

/// An answer: status and the JSON-RPC messages in it (one JSON body, or SSE events).
#[derive(Debug)]
pub(crate) struct Reply {
    status: StatusCode,
    text: String,
    messages: Vec<Value>,
}

impl Reply {
    /// The response to request `id`.
    pub(crate) fn response(&self) -> &Value {
        self.messages
            .iter()
            .find(|m| m.get("id").is_some() && (m.get("result").is_some() || m.get("error").is_some()))
            .unwrap_or_else(|| panic!("no response in {self:?}"))
    }

    pub(crate) fn result(&self) -> &Value {
        let response = self.response();
        assert!(response.get("error").is_none(), "unexpected error: {response}");
        &response["result"]
    }

    pub(crate) fn error_code(&self) -> i64 {
        self.response()["error"]["code"].as_i64().unwrap_or_else(|| panic!("not an error: {self:?}"))
    }

    fn notifications(&self, method: &str) -> Vec<&Value> {
        self.messages.iter().filter(|m| m["method"] == method).collect()
    }
}

fn parse_messages(text: &str) -> Vec<Value> {
    if let Ok(value) = serde_json::from_str::<Value>(text) {
        return vec![value];
    }
    text.lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .filter_map(|data| serde_json::from_str(data.trim()).ok())
        .collect()
}

impl Client {
    pub(crate) fn builder(&self, method: &str, name: Option<&str>) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .post(&self.url)
            .bearer_auth(&self.token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", self.revision);
        if self.revision == STATELESS {
            request = request.header("mcp-method", method);
            if let Some(name) = name {
                request = request.header("mcp-name", name);
            }
        }
        if let Some(session) = &self.session {
            request = request.header("mcp-session-id", session);
        }
        request
    }

    pub(crate) fn body(&self, id: u64, method: &str, mut params: Value, meta: Value) -> Value {
        if self.revision == STATELESS {
            let mut all = json!({
                "io.modelcontextprotocol/protocolVersion": STATELESS,
                "io.modelcontextprotocol/clientCapabilities": {},
                "io.modelcontextprotocol/clientInfo": { "name": "maestro-tests", "version": "1" },
            });
            all.as_object_mut().expect("object").extend(meta.as_object().cloned().unwrap_or_default());
            params["_meta"] = all;
        } else if meta.as_object().is_some_and(|m| !m.is_empty()) {
            params["_meta"] = meta;
        }
        json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params })
    }

    pub(crate) async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.expect("body");
        Reply { status, messages: parse_messages(&text), text }
    }

    /// `initialize` + `notifications/initialized` (session revision only).
    pub(crate) async fn initialize(&mut self) {
        if self.revision == STATELESS {
            return;
        }
        let body = json!({ "jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": SESSIONS, "capabilities": {}, "clientInfo": { "name": "maestro-tests", "version": "1" } } });
        let response = self.builder("initialize", None).json(&body).send().await.expect("initialize");
        assert_eq!(response.status(), StatusCode::OK);
        self.session =
            Some(response.headers().get("mcp-session-id").expect("session id").to_str().expect("ascii").to_owned());
        let reply = parse_messages(&response.text().await.expect("body"));
        assert_eq!(reply[0]["result"]["protocolVersion"], SESSIONS, "{reply:?}");
        let initialized = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" });
        let ack = self.builder("notifications/initialized", None).json(&initialized).send().await.expect("ack");
        assert_eq!(ack.status(), StatusCode::ACCEPTED);
    }

    async fn request_with(&self, id: u64, method: &str, params: Value, meta: Value) -> Reply {
        let name = params.get("name").or_else(|| params.get("uri")).and_then(Value::as_str).map(str::to_owned);
        let body = self.body(id, method, params, meta);
        self.send(self.builder(method, name.as_deref()).json(&body)).await
    }

    pub(crate) async fn request(&self, method: &str, params: Value) -> Reply {
        self.request_with(1, method, params, json!({})).await
    }

    async fn call(&self, tool: &str, arguments: Value) -> Reply {
        self.request("tools/call", json!({ "name": tool, "arguments": arguments })).await
    }

    pub(crate) async fn tool_names(&self) -> Vec<String> {
        let reply = self.request("tools/list", json!({})).await;
        reply.result()["tools"]
            .as_array()
            .expect("tools")
            .iter()
            .map(|t| t["name"].as_str().expect("name").to_owned())
            .collect()
    }
}

const TWO_TENANTS: &str = r#"
version = 1

[[grant]]
name = "acme"
subjects = ["tenant:acme"]
tools = ["hostile.*", "calc.*", "personas.*"]
timeout = "30s"
fuel = 1_000_000_000_000

[[grant]]
name = "beta"
subjects = ["tenant:beta"]
tools = ["calc.*"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_see_only_their_policy_and_calls_outside_it_are_refused() {
    let served = Served::with_plugins(&["hostile", "calc", "personas"], TWO_TENANTS).await;
    let (acme, beta) = (served.member_of("acme").await, served.member_of("beta").await);
    for revision in [SESSIONS, STATELESS] {
        let mut a = served.client(&acme, revision);
        let mut b = served.client(&beta, revision);
        a.initialize().await;
        b.initialize().await;
        let (a_tools, b_tools) = (a.tool_names().await, b.tool_names().await);
        assert!(a_tools.contains(&"hostile.noop".to_owned()) && a_tools.contains(&"calc.evaluate".to_owned()));
        assert!(b_tools.iter().all(|t| t.starts_with("calc.")), "{b_tools:?}");
        assert!(!b_tools.is_empty());
        // Outside beta's policy: the same protocol error as a tool that does not exist.
        let refused = b.call("hostile.noop", json!({})).await;
        assert_eq!(refused.error_code(), -32602, "{refused:?}");
        assert_eq!(b.call("no.such_tool", json!({})).await.error_code(), -32602);
        let ok = a.call("hostile.noop", json!({})).await;
        assert_eq!(ok.result()["content"][0]["text"], "ok", "{revision}");
        // Prompts follow policy too.
        let prompts = b.request("prompts/list", json!({})).await;
        assert_eq!(prompts.result()["prompts"], json!([]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_session_id_learns_nothing() {
    let served = Served::with_plugins(&["hostile", "calc"], TWO_TENANTS).await;
    let (acme, beta) = (served.member_of("acme").await, served.member_of("beta").await);
    let mut owner = served.client(&acme, SESSIONS);
    owner.initialize().await;
    let stolen = owner.session.clone().expect("session");

    let mut thief = served.client(&beta, SESSIONS);
    thief.session = Some(stolen.clone());
    let with_stolen = thief.request("tools/list", json!({})).await;
    thief.session = Some("0f6b7a2e-8d1c-4f4e-9a51-3c2b1d0e9f87".to_owned());
    let with_unknown = thief.request("tools/list", json!({})).await;
    assert_eq!(with_stolen.status, StatusCode::NOT_FOUND);
    // The same answer, but for the request id each response carries.
    let without_id = |reply: &Reply| {
        let mut body: Value = serde_json::from_str(&reply.text).expect("json");
        body["error"].as_object_mut().expect("an error").remove("request_id").expect("a request id");
        (reply.status, body)
    };
    assert_eq!(without_id(&with_stolen), without_id(&with_unknown));

    // Nor may it listen on the session's stream or close it.
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let response = reqwest::Client::new()
            .request(method.clone(), &served.url)
            .bearer_auth(&beta)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", &stolen)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{method}");
    }
    // The owner's session is untouched; its owner may close it, and then it is gone.
    assert!(owner.tool_names().await.contains(&"hostile.noop".to_owned()));
    let closed = reqwest::Client::new()
        .delete(&served.url)
        .bearer_auth(&acme)
        .header("mcp-session-id", &stolen)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(closed.status(), StatusCode::NO_CONTENT);
    assert_eq!(owner.request("tools/list", json!({})).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_rejected_before_any_tool_runs() {
    let target = TestServer::ok("fetched").await;
    let policy = format!(
        "version = 1\n[[grant]]\nname = \"acme\"\nsubjects = [\"tenant:acme\"]\ntools = [\"hostile.*\"]\n\
         network = [{{ url = \"http://127.0.0.1:{}\", allow_private = true }}]\n",
        target.addr.port()
    );
    let served = Served::with_plugins(&["hostile"], &policy).await;
    let acme = served.member_of("acme").await;
    let fetch = json!({ "url": format!("http://127.0.0.1:{}/", target.addr.port()) });
    let client = served.client(&acme, STATELESS);
    let call = |client: &Client, arguments: Value| {
        let body = client.body(1, "tools/call", json!({ "name": "hostile.fetch", "arguments": arguments }), json!({}));
        client.builder("tools/call", Some("hostile.fetch")).json(&body)
    };

    let wrong_host = client.send(call(&client, fetch.clone()).header("host", "evil.example.com")).await;
    assert_eq!(wrong_host.status, StatusCode::FORBIDDEN, "{wrong_host:?}");
    let wrong_origin = client.send(call(&client, fetch.clone()).header("origin", "https://evil.example.com")).await;
    assert_eq!(wrong_origin.status, StatusCode::FORBIDDEN, "{wrong_origin:?}");
    let mut anonymous = served.client("", STATELESS);
    anonymous.token = String::new();
    let no_key = anonymous
        .send(anonymous.http.post(&served.url).json(&client.body(
            1,
            "tools/call",
            json!({"name": "hostile.fetch", "arguments": fetch}),
            json!({}),
        )))
        .await;
    assert_eq!(no_key.status, StatusCode::UNAUTHORIZED);
    let bad_key = served.client("mk_notarealkeynotarealkeynotarealkey0000000", STATELESS);
    assert_eq!(bad_key.send(call(&bad_key, fetch.clone())).await.status, StatusCode::UNAUTHORIZED);
    let platform = served.client(&served.platform, STATELESS);
    assert_eq!(platform.send(call(&platform, fetch.clone())).await.status, StatusCode::FORBIDDEN);
    let oversize = json!({ "url": fetch["url"], "padding": "x".repeat(100 * 1024) });
    assert_eq!(client.send(call(&client, oversize)).await.status, StatusCode::PAYLOAD_TOO_LARGE);
    let revoked = served.member_of("acme").await;
    let keys = served.host.get("/v1/keys", Some(&served.platform)).await;
    let revoked_id = keys.body["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| revoked.starts_with(k["prefix"].as_str().unwrap_or("-")))
        .map(|k| k["id"].as_str().expect("id").to_owned());
    if let Some(id) = revoked_id {
        assert!(served.host.delete(&format!("/v1/keys/{id}"), Some(&served.platform)).await.status.is_success());
        let revoked_client = served.client(&revoked, STATELESS);
        assert_eq!(revoked_client.send(call(&revoked_client, fetch.clone())).await.status, StatusCode::UNAUTHORIZED);
    } else {
        panic!("could not find the key to revoke in {}", keys.body);
    }
    assert_eq!(target.accepted(), 0, "a rejected request reached a tool");

    let allowed = client.send(call(&client, fetch)).await;
    assert_eq!(allowed.result()["isError"], false, "{allowed:?}");
    assert_eq!(target.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_readable_results_and_bad_calls_are_protocol_errors() {
    let policy = "version = 1\n[[grant]]\nname = \"acme\"\nsubjects = [\"tenant:acme\"]\ntools = [\"hostile.*\", \"calc.*\"]\ntimeout = \"300ms\"\nfuel = 1_000_000_000_000\n";
    let served = Served::with_plugins(&["hostile", "calc"], policy).await;
    let acme = served.member_of("acme").await;
    for revision in [SESSIONS, STATELESS] {
        let mut client = served.client(&acme, revision);
        client.initialize().await;
        let failed = client.call("hostile.fail", json!({})).await;
        assert_eq!(failed.result()["isError"], true);
        assert_eq!(failed.result()["content"][0]["text"], "tool_error: boom");
        let timed_out = client.call("hostile.spin", json!({})).await;
        assert_eq!(timed_out.result()["isError"], true);
        let cause = timed_out.result()["content"][0]["text"].as_str().unwrap_or_default().to_owned();
        assert!(cause.starts_with("tool_timeout: timed out after 300ms"), "{cause}");
        let trapped = client.call("hostile.trap", json!({})).await;
        assert!(trapped.result()["content"][0]["text"].as_str().unwrap_or_default().starts_with("tool_trap:"));

        let echoed = client.call("hostile.echo", json!({ "a": [1, 2] })).await;
        assert_eq!(echoed.result()["structuredContent"], json!({ "a": [1, 2] }));
        let evaluated = client.call("calc.evaluate", json!({ "expression": "2 * (3 + 4)" })).await;
        assert_eq!(evaluated.result()["isError"], false, "{evaluated:?}");
        assert!(evaluated.result()["structuredContent"].is_object(), "{evaluated:?}");

        let invalid = client.call("calc.evaluate", json!({ "expression": 5 })).await;
        assert_eq!(invalid.error_code(), -32602, "{invalid:?}");
        let unknown = client.call("calc.nothing", json!({})).await;
        assert_eq!(unknown.error_code(), -32602);

        let tools = client.request("tools/list", json!({})).await;
        let evaluate =
            tools.result()["tools"].as_array().expect("tools").iter().find(|t| t["name"] == "calc.evaluate").cloned();
        let evaluate = evaluate.expect("calc.evaluate listed");
        assert_eq!(evaluate["inputSchema"]["type"], "object");
        assert!(evaluate["outputSchema"].is_object());
        assert_eq!(evaluate["annotations"]["readOnlyHint"], true);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_and_plugin_logs_reach_the_client() {
    let served = Served::with_plugins(&["hostile"], TWO_TENANTS).await;
    let acme = served.member_of("acme").await;
    for revision in [SESSIONS, STATELESS] {
        let mut client = served.client(&acme, revision);
        client.initialize().await;
        // Sessions get log lines on the session's own stream (they belong to no request).
        let mut stream = match &client.session {
            Some(session) => Some(
                reqwest::Client::new()
                    .get(&served.url)
                    .bearer_auth(&acme)
                    .header("accept", "text/event-stream")
                    .header("mcp-session-id", session)
                    .send()
                    .await
                    .expect("GET stream"),
            ),
            None => None,
        };
        let meta = json!({ "progressToken": "p-1", "io.modelcontextprotocol/logLevel": "info" });
        let params = json!({ "name": "hostile.progress", "arguments": { "n": 3 } });
        let reply = client.request_with(5, "tools/call", params.clone(), meta).await;
        let progress = reply.notifications("notifications/progress");
        let done: Vec<f64> = progress.iter().map(|p| p["params"]["progress"].as_f64().expect("progress")).collect();
        assert_eq!(done, vec![1.0, 2.0, 3.0], "{revision}: {reply:?}");
        assert!(progress.iter().all(|p| p["params"]["progressToken"] == "p-1" && p["params"]["total"] == 3.0));
        let logs: Vec<Value> = match &mut stream {
            None => reply.notifications("notifications/message").into_iter().cloned().collect(),
            Some(stream) => {
                let mut seen = String::new();
                while parse_messages(&seen).iter().filter(|m| m["method"] == "notifications/message").count() < 3 {
                    match tokio::time::timeout(Duration::from_secs(5), stream.chunk()).await {
                        Ok(Ok(Some(bytes))) => seen.push_str(&String::from_utf8_lossy(&bytes)),
                        other => panic!("log lines missing from the session stream ({other:?}): {seen}"),
                    }
                }
                parse_messages(&seen).into_iter().filter(|m| m["method"] == "notifications/message").collect()
            }
        };
        assert_eq!(logs.len(), 3, "{revision}: {logs:?}");
        assert_eq!(logs[0]["params"]["logger"], "hostile");
        assert_eq!(logs[0]["params"]["data"], "step 1 of 3");
        assert_eq!(reply.result()["isError"], false);

        // Without a progress token there is no progress; a higher level filters logs.
        let quiet =
            client.request_with(6, "tools/call", params, json!({ "io.modelcontextprotocol/logLevel": "error" })).await;
        assert!(quiet.notifications("notifications/progress").is_empty());
        if revision == STATELESS {
            assert!(quiet.notifications("notifications/message").is_empty(), "{quiet:?}");
        }
    }
}

/// Starts `hostile.spin` (an infinite loop) and returns once the sandbox runs it.
async fn spinning(served: &Served, client: &Client, id: u64) -> tokio::task::JoinHandle<Reply> {
    let body = client.body(id, "tools/call", json!({ "name": "hostile.spin", "arguments": {} }), json!({}));
    let request = client.builder("tools/call", Some("hostile.spin")).json(&body);
    let task = tokio::spawn(async move {
        let response = request.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        Reply { status, messages: parse_messages(&text), text }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while served.host.tools.calls_in_flight() == 0 {
        assert!(Instant::now() < deadline, "the call never started");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(served.host.tools.calls_in_flight(), 1, "still spinning");
    task
}

async fn freed_within(served: &Served, since: Instant) -> Duration {
    while served.host.tools.calls_in_flight() > 0 {
        assert!(since.elapsed() < Duration::from_secs(5), "the sandbox never freed the call");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    since.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_an_infinite_loop_frees_the_sandbox_promptly() {
    let served = Served::with_plugins(&["hostile"], TWO_TENANTS).await;
    let acme = served.member_of("acme").await;

    // Session revision: notifications/cancelled.
    let mut client = served.client(&acme, SESSIONS);
    client.initialize().await;
    let task = spinning(&served, &client, 41).await;
    let cancel = json!({ "jsonrpc": "2.0", "method": "notifications/cancelled",
        "params": { "requestId": 41, "reason": "user pressed stop" } });
    let sent = Instant::now();
    let ack = client.builder("notifications/cancelled", None).json(&cancel).send().await.expect("cancel");
    assert_eq!(ack.status(), StatusCode::ACCEPTED);
    let freed = freed_within(&served, sent).await;
    eprintln!("session revision: sandbox freed {freed:?} after notifications/cancelled");
    assert!(freed < Duration::from_millis(100), "freed after {freed:?}");
    task.abort();
    assert_eq!(client.call("hostile.noop", json!({})).await.result()["content"][0]["text"], "ok");

    // Stateless revision: the client closes the request.
    let client = served.client(&acme, STATELESS);
    let task = spinning(&served, &client, 42).await;
    let closed = Instant::now();
    task.abort();
    let freed = freed_within(&served, closed).await;
    eprintln!("stateless revision: sandbox freed {freed:?} after the request closed");
    assert!(freed < Duration::from_millis(100), "freed after {freed:?}");
    assert_eq!(client.call("hostile.noop", json!({})).await.result()["content"][0]["text"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_completion_and_resources() {
    let served = Served::with_plugins(&["calc", "personas"], TWO_TENANTS).await;
    let acme = served.member_of("acme").await;
    for revision in [SESSIONS, STATELESS] {
        let mut client = served.client(&acme, revision);
        client.initialize().await;
        let prompts = client.request("prompts/list", json!({})).await;
        let pm = prompts.result()["prompts"]
            .as_array()
            .expect("prompts")
            .iter()
            .find(|p| p["name"] == "personas.product_manager")
            .cloned()
            .expect("listed");
        assert!(pm["arguments"].as_array().expect("args").iter().any(|a| a["name"] == "idea" && a["required"] == true));

        let got = client
            .request("prompts/get", json!({ "name": "personas.product_manager", "arguments": { "idea": "a tide clock", "detail": "brief" } }))
            .await;
        let text = got.result()["messages"][0]["content"]["text"].as_str().expect("text").to_owned();
        assert!(text.contains("a tide clock"), "{text}");
        assert_eq!(got.result()["messages"][0]["role"], "user");
        let missing =
            client.request("prompts/get", json!({ "name": "personas.product_manager", "arguments": {} })).await;
        assert_eq!(missing.error_code(), -32602);
        let outside = client
            .request(
                "prompts/get",
                json!({ "name": "personas.product_manager", "arguments": { "idea": "x", "detail": "loud" } }),
            )
            .await;
        assert_eq!(outside.error_code(), -32602);

        let completed = client
            .request(
                "completion/complete",
                json!({ "ref": { "type": "ref/prompt", "name": "personas.product_manager" },
                "argument": { "name": "detail", "value": "b" } }),
            )
            .await;
        assert_eq!(completed.result()["completion"]["values"], json!(["brief"]));
        let plugins = client
            .request(
                "completion/complete",
                json!({ "ref": { "type": "ref/resource", "uri": "maestro://plugins/{name}" },
                "argument": { "name": "name", "value": "" } }),
            )
            .await;
        assert_eq!(plugins.result()["completion"]["values"], json!(["calc", "personas"]));

        let resources = client.request("resources/list", json!({})).await;
        let uris: Vec<&str> = resources.result()["resources"]
            .as_array()
            .expect("list")
            .iter()
            .map(|r| r["uri"].as_str().expect("uri"))
            .collect();
        assert_eq!(uris, vec!["maestro://policy/effective", "maestro://plugins/calc", "maestro://plugins/personas"]);
        let templates = client.request("resources/templates/list", json!({})).await;
        assert_eq!(templates.result()["resourceTemplates"][0]["uriTemplate"], "maestro://plugins/{name}");

        let calc = client.request("resources/read", json!({ "uri": "maestro://plugins/calc" })).await;
        let doc: Value =
            serde_json::from_str(calc.result()["contents"][0]["text"].as_str().expect("text")).expect("json");
        assert_eq!(doc["name"], "calc");
        assert!(doc["tools"].as_array().expect("tools").iter().any(|t| t["name"] == "calc.evaluate"));
        let policy = client.request("resources/read", json!({ "uri": "maestro://policy/effective" })).await;
        let doc: Value =
            serde_json::from_str(policy.result()["contents"][0]["text"].as_str().expect("text")).expect("json");
        assert_eq!((doc["tenant"].as_str(), doc["role"].as_str()), (Some("acme"), Some("member")));
        assert!(doc["tools"].as_array().expect("tools").iter().all(|t| t["rule"] == "acme"));
        let hidden = client.request("resources/read", json!({ "uri": "maestro://plugins/hostile" })).await;
        // Not found: -32002 in 2025-11-25; invalid params (SEP-2164) in 2026-07-28.
        let expected = if revision == STATELESS { -32602 } else { -32002 };
        assert_eq!(hidden.error_code(), expected, "{hidden:?}");
        assert_eq!(hidden.response()["error"]["data"]["uri"], "maestro://plugins/hostile");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_names_and_list_changed_on_policy_reload() {
    let mut host = TestHost::new(Backend::Sqlite).await;
    let dir = tempfile::tempdir().expect("dir");
    let (plugins, policies) = (dir.path().join("plugins"), dir.path().join("policies"));
    std::fs::create_dir_all(&policies).expect("policies");
    for plugin in ["hostile", "calc"] {
        crate::fixtures::install(&plugins, plugin);
    }
    let grant = |tools: &str| {
        format!("version = 1\n[[grant]]\nname = \"acme\"\nsubjects = [\"tenant:acme\"]\ntools = [{tools}]\n")
    };
    std::fs::write(policies.join("p.toml"), grant("\"calc.*\"")).expect("write");
    let registry = Arc::new(PluginRegistry::new(crate::fixtures::sandbox(), plugins));
    registry.refresh().await;
    let store = Arc::new(PolicyStore::open(policies.clone()).expect("policies"));
    host.tools =
        Arc::new(Tools::new(registry, store.clone(), SecretValues::new(Default::default(), dir.path().join("s"))));
    host.settings.mcp.names = maestro_host::config::McpNames::Short;
    let served = Served::start(host).await;
    let acme = served.member_of("acme").await;
    let mut client = served.client(&acme, SESSIONS);
    client.initialize().await;
    assert_eq!(client.tool_names().await, vec!["evaluate"]);

    // The session's stream receives list_changed when the policy reload changes the list.
    let mut stream = reqwest::Client::new()
        .get(&served.url)
        .bearer_auth(&acme)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", client.session.clone().expect("session"))
        .send()
        .await
        .expect("GET stream");
    assert_eq!(stream.status(), StatusCode::OK);
    std::fs::write(policies.join("p.toml"), grant("\"calc.*\", \"hostile.noop\"")).expect("write");
    assert!(store.refresh().expect("reload"));
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !seen.contains("notifications/tools/list_changed") {
        let chunk = tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), stream.chunk()).await;
        match chunk {
            Ok(Ok(Some(bytes))) => seen.push_str(&String::from_utf8_lossy(&bytes)),
            other => panic!("no list_changed on the stream ({other:?}): {seen}"),
        }
    }
    // And the next list is fresh regardless.
    assert_eq!(client.tool_names().await, vec!["evaluate", "noop"]);
    // The policy reload did not change prompts, so no prompts notification was sent.
    assert!(!seen.contains("prompts/list_changed"), "{seen}");
}

/// The stdio session runs on one thread of its own: a call that never ends by itself
/// must not hold it, so later requests are answered meanwhile, and cancelling the call
/// stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_answers_other_requests_while_a_call_spins_and_cancels_it() {
    let db = crate::harness::TestDb::new(Backend::Sqlite).await;
    let policy = "version = 1\n\n[[grant]]\nname = \"spin\"\nsubjects = [\"tenant:beta\"]\ntools = [\"hostile.*\"]\n";
    let maestro = || crate::server::maestro_with(&db, Backend::Sqlite, &["hostile"], policy);
    crate::server::run({
        let mut c = maestro();
        c.args(["tenant", "create", "beta"]);
        c
    });
    let args = ["mcp", "--tenant", "beta", "--role", "member"];
    let mut stdio = crate::server::StdioMcp::spawn(maestro(), &args, std::process::Stdio::piped());
    stdio.initialize(SESSIONS);
    stdio.send(&json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": { "name": "hostile.spin_until_cancelled", "arguments": {} } }));
    // Spinning never ends by itself: these answers can only come while it spins.
    let listed = stdio.ask(3, "tools/list", json!({}));
    assert!(listed["result"]["tools"].as_array().is_some_and(|tools| !tools.is_empty()), "{listed}");
    let noop = stdio.ask(4, "tools/call", json!({ "name": "hostile.noop", "arguments": {} }));
    assert_eq!(noop["result"]["content"][0]["text"], "ok", "{noop}");
    stdio.send(&json!({ "jsonrpc": "2.0", "method": "notifications/cancelled",
        "params": { "requestId": 2, "reason": "user pressed stop" } }));
    // The cancelled call stopped: the session still answers, and ends when stdin closes.
    let after = stdio.ask(5, "tools/call", json!({ "name": "hostile.noop", "arguments": {} }));
    assert_eq!(after["result"]["content"][0]["text"], "ok", "{after}");
    stdio.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_serves_a_local_operator_and_refuses_bad_keys() {
    let db = crate::harness::TestDb::new(Backend::Sqlite).await;
    let maestro = || crate::server::maestro_with(&db, Backend::Sqlite, &["calc"], TWO_TENANTS);
    crate::server::run({
        let mut c = maestro();
        c.args(["tenant", "create", "beta"]);
        c
    });

    let args = ["mcp", "--tenant", "beta", "--role", "member"];
    let mut stdio = crate::server::StdioMcp::spawn(maestro(), &args, std::process::Stdio::piped());
    assert_eq!(stdio.initialize(SESSIONS)["result"]["serverInfo"]["name"], "maestro");
    let answer = stdio.ask(2, "tools/call", json!({ "name": "calc.evaluate", "arguments": { "expression": "6 * 7" } }));
    assert_eq!(answer["id"], 2);
    assert_eq!(answer["result"]["isError"], false, "{answer}");
    assert!(answer["result"]["content"][0]["text"].as_str().unwrap_or_default().contains("42"), "{answer}");
    stdio.close();

    let refused =
        maestro().args(["mcp", "--key", "mk_notarealkeynotarealkeynotarealkey0000000"]).output().expect("runs");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("cannot use that key"), "{stderr}");
    assert!(refused.stdout.is_empty(), "stdout is the protocol channel");
}

/// An `initialize` of the session revision, answered as it comes (status, session id,
/// body).
async fn open_session(served: &Served, token: &str) -> (StatusCode, Option<String>, Value) {
    let body = json!({ "jsonrpc": "2.0", "id": 7, "method": "initialize", "params": {
        "protocolVersion": SESSIONS, "capabilities": {}, "clientInfo": { "name": "flood", "version": "1" } } });
    let response = reqwest::Client::new()
        .post(&served.url)
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .json(&body)
        .send()
        .await
        .expect("initialize");
    let status = response.status();
    let session = response.headers().get("mcp-session-id").map(|v| v.to_str().expect("ascii").to_owned());
    let text = response.text().await.expect("body");
    (status, session, parse_messages(&text).into_iter().next().unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_flood_from_one_key_stops_at_the_cap_and_closed_sessions_free_their_slots() {
    let mut host = TestHost::new(Backend::Sqlite).await;
    host.settings.mcp.max_sessions_per_key = 3;
    host.settings.mcp.session_idle_timeout = Duration::from_secs(2);
    let served = Served::start(host).await;
    let (acme, beta) = (served.member_of("acme").await, served.member_of("beta").await);

    let mut opened = Vec::new();
    let mut refused = 0;
    for _ in 0..40 {
        match open_session(&served, &acme).await {
            (StatusCode::OK, Some(session), _) => opened.push(session),
            (StatusCode::TOO_MANY_REQUESTS, None, error) => {
                refused += 1;
                assert_eq!(error["id"], 7, "{error}");
                let message = error["error"]["message"].as_str().expect("a JSON-RPC error");
                assert!(
                    message.contains("3 open MCP sessions") && message.contains("mcp.max_sessions_per_key"),
                    "{message}"
                );
                assert!(message.contains("DELETE /mcp"), "says how to close one: {message}");
            }
            other => panic!("unexpected answer: {other:?}"),
        }
    }
    assert_eq!((opened.len(), refused), (3, 37), "the key stops at its cap");
    assert!(open_session(&served, &beta).await.1.is_some(), "another key is not affected");
    let metrics =
        reqwest::get(served.url.replace("/mcp", "/metrics")).await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("\nmaestro_mcp_sessions 4\n"), "the server holds 3 + 1 sessions: {metrics}");

    // Closing a session frees its slot, for that key only.
    let closed = reqwest::Client::new()
        .delete(&served.url)
        .bearer_auth(&acme)
        .header("mcp-session-id", &opened[0])
        .send()
        .await
        .expect("delete");
    assert_eq!(closed.status(), StatusCode::NO_CONTENT);
    assert_eq!(open_session(&served, &acme).await.0, StatusCode::OK);
    assert_eq!(open_session(&served, &acme).await.0, StatusCode::TOO_MANY_REQUESTS);

    // Sessions that idle out free theirs too.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if open_session(&served, &acme).await.0 == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "idle sessions never freed their slots");
    }
}

#[tokio::test]
async fn session_requests_log_in_the_span_of_their_http_request() {
    // One thread: the session's task, the server and the client all log here.
    let (captured, _guard) = crate::http_api::capture_logs("info");
    let served = Served::start(TestHost::new(Backend::Sqlite).await).await;
    let acme = served.member_of("acme").await;
    let mut client = served.client(&acme, SESSIONS);
    client.initialize().await;
    let body = client.body(3, "tools/list", json!({}), json!({}));
    let listed = client
        .builder("tools/list", None)
        .header("x-request-id", "session-req-42")
        .json(&body)
        .send()
        .await
        .expect("tools/list");
    assert_eq!(listed.headers().get("x-request-id").expect("id").to_str().expect("ascii"), "session-req-42");
    assert_eq!(listed.status(), StatusCode::OK);
    let text = captured.text();
    let line = text
        .lines()
        .find(|l| l.contains("mcp request") && l.contains("tools/list"))
        .unwrap_or_else(|| panic!("no mcp request line: {text}"));
    assert!(line.contains("request_id=session-req-42") && line.contains(r#"route="/mcp""#), "{line}");
    assert!(line.contains(r#"key_id="key_"#) && line.contains("tenant=tn_"), "{line}");
}

/// The `id:` of each SSE event in `text`, and whether any carried a `retry:`.
fn event_ids(text: &str) -> (Vec<String>, bool) {
    let ids = text.lines().filter_map(|l| l.strip_prefix("id:")).map(|id| id.trim().to_owned()).collect();
    (ids, text.lines().any(|l| l.starts_with("retry:")))
}

/// `GET /mcp` with `Last-Event-ID`, read to its end (with a deadline).
async fn resume(served: &Served, token: &str, session: Option<&str>, last_event_id: &str) -> Reply {
    let mut request = reqwest::Client::new()
        .get(&served.url)
        .bearer_auth(token)
        .header("accept", "text/event-stream")
        .header("mcp-protocol-version", SESSIONS)
        .header("last-event-id", last_event_id);
    if let Some(session) = session {
        request = request.header("mcp-session-id", session);
    }
    let response = request.send().await.expect("GET");
    let status = response.status();
    let text = tokio::time::timeout(Duration::from_secs(30), response.text())
        .await
        .expect("the resumed stream ends after the call's result")
        .expect("body");
    Reply { status, messages: parse_messages(&text), text }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_stream_closed_mid_call_resumes_with_last_event_id_without_losing_an_event() {
    let mut host = TestHost::with_plugins(Backend::Sqlite, &["hostile"], TWO_TENANTS).await;
    host.settings.mcp.poll_tools = vec!["hostile.progress".to_owned()];
    let served = Served::start(host).await;
    let (acme, beta) = (served.member_of("acme").await, served.member_of("beta").await);
    let mut client = served.client(&acme, SESSIONS);
    client.initialize().await;
    let session = client.session.clone().expect("session");

    // The server closes the POST stream after its priming event: an id and a retry, no
    // message; the call runs on.
    let meta = json!({ "progressToken": "p-1" });
    let params = json!({ "name": "hostile.progress", "arguments": { "n": 5 } });
    let closed = client.request_with(9, "tools/call", params, meta).await;
    assert_eq!(closed.status, StatusCode::OK);
    assert!(closed.messages.is_empty(), "the stream closed before any message: {closed:?}");
    let (ids, retry) = event_ids(&closed.text);
    assert!(retry && ids.len() == 1, "one priming event with an id and a retry: {closed:?}");
    let priming = &ids[0];

    // Resuming gets every progress report and the result, in order, each with an id.
    let resumed = resume(&served, &acme, Some(&session), priming).await;
    assert_eq!(resumed.status, StatusCode::OK, "{resumed:?}");
    let progress: Vec<f64> = resumed
        .notifications("notifications/progress")
        .iter()
        .map(|p| p["params"]["progress"].as_f64().expect("progress"))
        .collect();
    assert_eq!(progress, vec![1.0, 2.0, 3.0, 4.0, 5.0], "{resumed:?}");
    assert_eq!(resumed.response()["id"], 9);
    assert_eq!(resumed.result()["content"][0]["text"], "reported 5 steps");
    let (later, _) = event_ids(&resumed.text);
    assert_eq!(later.len(), 6, "five progress reports and the result, each with an id: {resumed:?}");

    // A second reconnection from the middle gets exactly what followed that event.
    let again = resume(&served, &acme, Some(&session), &later[2]).await;
    let (rest, _) = event_ids(&again.text);
    assert_eq!(rest, later[3..], "{again:?}");
    assert_eq!(again.result()["content"][0]["text"], "reported 5 steps");

    // Ids not given out (or no longer kept) are refused with a reason, not answered
    // with an empty or gapped stream; a resumption needs the session, and another key
    // cannot use it.
    let unknown = resume(&served, &acme, Some(&session), &format!("{}.0", "0".repeat(32))).await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST, "{unknown:?}");
    assert!(
        unknown.text.contains("invalid_last_event_id") && unknown.text.contains("no longer buffered"),
        "{unknown:?}"
    );
    let malformed = resume(&served, &acme, Some(&session), "7/0").await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST, "{malformed:?}");
    let sessionless = resume(&served, &acme, None, priming).await;
    assert_eq!(sessionless.status, StatusCode::METHOD_NOT_ALLOWED, "{sessionless:?}");
    let stranger = resume(&served, &beta, Some(&session), priming).await;
    assert_eq!(stranger.status, StatusCode::NOT_FOUND, "{stranger:?}");
    assert!(!stranger.text.contains("reported"), "{stranger:?}");

    // Other tools answer on their POST stream as before, with ids on the events.
    let params = json!({ "name": "hostile.progress_flood", "arguments": { "n": 2 } });
    let whole = client.request_with(10, "tools/call", params, json!({ "progressToken": "p-2" })).await;
    assert_eq!(whole.result()["isError"], false, "{whole:?}");
    assert!(event_ids(&whole.text).0.len() >= 2, "the priming event and the result have ids: {whole:?}");
}

const CONFORMANCE: &str = r#"
version = 1

[[grant]]
name = "acme"
subjects = ["tenant:acme"]
tools = ["conformance.*"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rich_prompts_arrive_as_mcp_messages_with_images_and_embedded_resources() {
    let served = Served::with_plugins(&["conformance"], CONFORMANCE).await;
    let acme = served.member_of("acme").await;
    for revision in [SESSIONS, STATELESS] {
        let mut client = served.client(&acme, revision);
        client.initialize().await;
        let got = client.request("prompts/get", json!({ "name": "conformance.test_prompt_with_image" })).await;
        let messages = got.result()["messages"].as_array().expect("messages").clone();
        assert_eq!(messages.len(), 3, "{messages:?}");
        // The system prompt first (MCP prompts have no system role), then the plugin's messages.
        assert_eq!(messages[0]["content"], json!({ "type": "text", "text": "This prompt shows an image." }));
        assert_eq!(messages[1]["role"], "user");
        assert_eq!(messages[1]["content"]["type"], "image");
        assert_eq!(messages[1]["content"]["mimeType"], "image/png");
        assert!(messages[1]["content"]["data"].as_str().expect("base64").starts_with("iVBORw0KGgo"));
        assert_eq!(messages[2]["content"]["text"], "Please analyze the image above.");

        let got = client
            .request(
                "prompts/get",
                json!({ "name": "conformance.test_prompt_with_embedded_resource", "arguments": { "resourceUri": "test://x" } }),
            )
            .await;
        assert_eq!(
            got.result()["messages"][1]["content"],
            json!({ "type": "resource", "resource": { "uri": "test://x", "mimeType": "text/plain", "text": "Embedded resource content for testing." } })
        );
        let missing =
            client.request("prompts/get", json!({ "name": "conformance.test_prompt_with_embedded_resource" })).await;
        assert_eq!(missing.error_code(), -32602);
    }
}

/// Sends a stateless `tools/call` twice: as clients send it (answered by Maestro's
/// short path for plain calls), and with an `Accept` header that carries a quality
/// weight (which the short path leaves to rmcp's full stateless service).
async fn both_ways(client: &Client, tool: &str, arguments: Value) -> [(StatusCode, Value); 2] {
    let body = client.body(7, "tools/call", json!({ "name": tool, "arguments": arguments }), json!({}));
    let plain = client.send(client.builder("tools/call", Some(tool)).json(&body)).await;
    let weighted = client
        .builder("tools/call", Some(tool))
        .header("accept", "application/json;q=1, text/event-stream;q=0.5")
        .json(&body);
    let full = client.send(weighted).await;
    [plain, full].map(|reply| (reply.status, serde_json::from_str(&reply.text).expect("one JSON body")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_stateless_call_answers_exactly_as_the_full_stateless_service_does() {
    let served = Served::with_plugins(&["hostile", "calc"], TWO_TENANTS).await;
    let (acme, beta) = (served.member_of("acme").await, served.member_of("beta").await);
    let (acme, beta) = (served.client(&acme, STATELESS), served.client(&beta, STATELESS));
    let cases = [
        (&acme, "hostile.noop", json!({})),
        (&acme, "hostile.echo", json!({ "a": [1, 2] })),
        (&acme, "calc.evaluate", json!({ "expression": "2 * (3 + 4)" })),
        // A tool error: an isError result.
        (&acme, "hostile.trap", json!({})),
        // Protocol errors: bad arguments, an unknown tool, a tool outside the policy.
        (&acme, "calc.evaluate", json!({ "expression": 5 })),
        (&acme, "calc.nothing", json!({})),
        (&beta, "hostile.noop", json!({})),
    ];
    for (client, tool, arguments) in cases {
        let [plain, full] = both_ways(client, tool, arguments.clone()).await;
        assert_eq!(plain, full, "{tool} {arguments}");
        assert_eq!(plain.1["id"], 7, "{plain:?}");
    }
    // A client that offers elicitation, or asks for progress, goes the full way and is
    // still answered.
    for meta in [
        json!({ "io.modelcontextprotocol/clientCapabilities": { "elicitation": {} } }),
        json!({ "progressToken": "p1" }),
    ] {
        let body = acme.body(8, "tools/call", json!({ "name": "hostile.noop", "arguments": {} }), meta);
        let reply = acme.send(acme.builder("tools/call", Some("hostile.noop")).json(&body)).await;
        assert_eq!(reply.result()["content"][0]["text"], "ok", "{reply:?}");
    }
    // Headers that disagree with the body are refused as before.
    let body = acme.body(9, "tools/call", json!({ "name": "hostile.noop", "arguments": {} }), json!({}));
    let reply = acme.send(acme.builder("tools/call", Some("hostile.echo")).json(&body)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reply:?}");
}
