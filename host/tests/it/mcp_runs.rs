//! The agent runtime over MCP, against a real `maestro serve` on 127.0.0.1 with the
//! personas plugin and the fake model server, on both backends: `runs.start` reports
//! the run's events as `notifications/progress` and returns the final answer; the
//! document the run wrote reads as a resource (and the session's transcript); a
//! subscribed session hears `notifications/resources/updated` after an edit;
//! cancelling the request cancels the run; a question is elicited from a client that
//! declared elicitation and returned to one that did not (answered with `runs.answer`);
//! a stdio client (`maestro mcp`, Claude Desktop style) beside the server starts a run
//! (executed by the server's workers on the shared store) and reads its document.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::fake_llm::{FakeLlm, Script, usage};
use crate::harness::{Backend, TestDb, backend_tests};
use crate::runs_api::{Stream, data};
use crate::server::Server;

backend_tests!(
    runs_start_streams_progress_and_returns_the_answer_and_its_document_reads_as_a_resource,
    a_subscribed_session_hears_resources_updated_after_an_edit,
    cancelling_runs_start_cancels_the_run,
    a_question_is_elicited_from_a_client_that_declares_it_and_returned_to_one_that_does_not,
    a_stdio_client_starts_a_run_and_reads_its_document,
);

const SESSIONS: &str = "2025-11-25";
const STATELESS: &str = "2026-07-28";

/// A `maestro serve` with the personas plugin, members granted `personas.*`,
/// `documents.*` and `runs.*`, and every model tier served by the fake.
fn serve_command(db: &TestDb, backend: Backend, fake: &FakeLlm) -> std::process::Command {
    let mut command = crate::server::serve_personas(db, backend, fake, &["personas.*", "documents.*", "runs.*"]);
    // Scripts are queued per run: no distillation may take one in between.
    command.env("MAESTRO_MEMORY_DISTIL", "false");
    command
}

struct Setup {
    db: TestDb,
    fake: FakeLlm,
    server: Server,
    member: String,
}

async fn setup(backend: Backend) -> Setup {
    let fake = FakeLlm::start().await;
    let db = TestDb::new(backend).await;
    let server = Server::start(serve_command(&db, backend, &fake), &db.dir(), 1).await;
    let platform = server.bootstrap_token();
    let (status, _) =
        server.call(reqwest::Method::POST, "/v1/tenants", &platform, Some(json!({ "name": "acme" }))).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, key) = server
        .call(reqwest::Method::POST, "/v1/keys", &platform, Some(json!({ "tenant": "acme", "role": "member" })))
        .await;
    let member = key["token"].as_str().expect("token").to_owned();
    Setup { db, fake, server, member }
}

/// A small MCP client over Streamable HTTP that reads answers as they stream (it can
/// answer the server's own requests, such as `elicitation/create`, mid-call).
struct Mcp {
    http: reqwest::Client,
    url: String,
    token: String,
    revision: &'static str,
    session: Option<String>,
    /// What a stateless client declares in each request's metadata.
    capabilities: Value,
}

impl Mcp {
    /// A 2025-11-25 session (initialised with `capabilities`), or a stateless client.
    async fn connect(setup: &Setup, revision: &'static str, capabilities: Value) -> Self {
        let mut client = Self {
            http: reqwest::Client::new(),
            url: format!("{}/mcp", setup.server.base),
            token: setup.member.clone(),
            revision,
            session: None,
            capabilities: capabilities.clone(),
        };
        if revision == SESSIONS {
            let body = json!({ "jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": SESSIONS, "capabilities": capabilities,
                "clientInfo": { "name": "maestro-tests", "version": "1" } } });
            let response = client.builder("initialize", None).json(&body).send().await.expect("initialize");
            assert_eq!(response.status(), StatusCode::OK);
            client.session =
                Some(response.headers().get("mcp-session-id").expect("session id").to_str().expect("ascii").to_owned());
            drop(response.text().await);
            client.notify(json!({ "jsonrpc": "2.0", "method": "notifications/initialized" })).await;
        }
        client
    }

    fn builder(&self, method: &str, name: Option<&str>) -> reqwest::RequestBuilder {
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

    async fn notify(&self, message: Value) {
        let method = message["method"].as_str().unwrap_or_default().to_owned();
        let ack = self.builder(&method, None).json(&message).send().await.expect("notification");
        assert_eq!(ack.status(), StatusCode::ACCEPTED, "{message}");
    }

    fn body(&self, id: u64, method: &str, mut params: Value, meta: Value) -> Value {
        let mut all = meta.as_object().cloned().unwrap_or_default();
        if self.revision == STATELESS {
            all.insert("io.modelcontextprotocol/protocolVersion".into(), json!(STATELESS));
            all.insert("io.modelcontextprotocol/clientCapabilities".into(), self.capabilities.clone());
            all.insert("io.modelcontextprotocol/clientInfo".into(), json!({ "name": "maestro-tests", "version": "1" }));
        }
        if !all.is_empty() {
            params["_meta"] = Value::Object(all);
        }
        json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params })
    }

    /// Sends a request and reads its answer as it streams, answering the server's
    /// requests with `answer`; returns every message up to the response.
    async fn request(
        &self,
        id: u64,
        method: &str,
        params: Value,
        meta: Value,
        answer: &(dyn Fn(&Value) -> Value + Sync),
    ) -> Vec<Value> {
        let name = params.get("name").or_else(|| params.get("uri")).and_then(Value::as_str).map(str::to_owned);
        let body = self.body(id, method, params, meta);
        let mut response = self.builder(method, name.as_deref()).json(&body).send().await.expect("request");
        assert_eq!(response.status(), StatusCode::OK, "{method}");
        let mut buffer = String::new();
        let mut messages = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            while let Some(end) = buffer.find("\n\n") {
                let frame: String = buffer.drain(..end + 2).collect();
                let data: String = frame.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim).collect();
                let Ok(message) = serde_json::from_str::<Value>(&data) else { continue };
                if message.get("method").is_some() && message.get("id").is_some() {
                    let reply = json!({ "jsonrpc": "2.0", "id": message["id"], "result": answer(&message) });
                    let ack = self.builder("", None).json(&reply).send().await.expect("reply");
                    assert_eq!(ack.status(), StatusCode::ACCEPTED, "{reply}");
                }
                let done = message["id"] == json!(id);
                messages.push(message);
                if done {
                    return messages;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, response.chunk()).await {
                Ok(Ok(Some(bytes))) => buffer.push_str(&String::from_utf8_lossy(&bytes).replace("\r\n", "\n")),
                Ok(Ok(None)) => {
                    // A plain JSON answer.
                    if let Ok(message) = serde_json::from_str::<Value>(buffer.trim()) {
                        messages.push(message);
                    }
                    return messages;
                }
                other => panic!("no answer to {method} in time ({other:?}): {messages:?}"),
            }
        }
    }

    async fn call(&self, id: u64, tool: &str, arguments: Value) -> Vec<Value> {
        let params = json!({ "name": tool, "arguments": arguments });
        self.request(id, "tools/call", params, json!({ "progressToken": format!("p-{id}") }), &no_answers).await
    }

    async fn simple(&self, method: &str, params: Value) -> Value {
        let messages = self.request(9, method, params, json!({}), &no_answers).await;
        result(&messages).clone()
    }
}

fn no_answers(request: &Value) -> Value {
    panic!("the server asked this client, which declared nothing: {request}")
}

fn result(messages: &[Value]) -> &Value {
    let last = messages.last().expect("a response");
    assert!(last.get("error").is_none(), "unexpected error: {last}");
    &last["result"]
}

fn progress(messages: &[Value]) -> Vec<(f64, String)> {
    messages
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .map(|m| {
            let p = &m["params"];
            (p["progress"].as_f64().expect("progress"), p["message"].as_str().unwrap_or_default().to_owned())
        })
        .collect()
}

async fn runs_start_streams_progress_and_returns_the_answer_and_its_document_reads_as_a_resource(backend: Backend) {
    let setup = setup(backend).await;
    setup.fake.push(Script::openai_tool_calls(
        &[("c1", "documents_create", r##"{"title":"Launch plan","content":"# Launch plan\n\n- ship v1\n"}"##)],
        usage(100, 10),
    ));
    setup.fake.push(Script::openai_text("Drafted the launch plan.", usage(100, 10)));
    let client = Mcp::connect(&setup, SESSIONS, json!({})).await;
    let tools = client.simple("tools/list", json!({})).await;
    let names: Vec<&str> =
        tools["tools"].as_array().expect("tools").iter().filter_map(|t| t["name"].as_str()).collect();
    for tool in ["runs.start", "runs.answer", "runs.get", "documents.read"] {
        assert!(names.contains(&tool), "{tool} missing from {names:?}");
    }

    let arguments = json!({ "personas": ["personas.writer"], "strategy": "sequence", "title": "launch",
        "message": "Write our launch plan." });
    let started = Instant::now();
    let messages = client.call(3, "runs.start", arguments).await;
    eprintln!("{backend:?}: runs.start of a two-call run answered in {:?}", started.elapsed());
    let done = result(&messages);
    assert_eq!(done["isError"], false, "{done}");
    assert_eq!(done["content"][0]["text"], "Drafted the launch plan.");
    let answer = &done["structuredContent"];
    assert_eq!(
        (answer["state"].clone(), answer["answer"]["persona"].clone()),
        (json!("completed"), json!("personas.writer"))
    );
    assert_eq!(answer["totals"]["model_calls"], 2, "{answer}");
    let (run, session) = (answer["run"].as_str().expect("run"), answer["session"].as_str().expect("session"));

    // Progress: monotonic, each event of the run summarised, in order.
    let reports = progress(&messages);
    assert!(reports.windows(2).all(|w| w[0].0 < w[1].0), "{reports:?}");
    assert!(
        messages
            .iter()
            .filter(|m| m["method"] == "notifications/progress")
            .all(|m| m["params"]["progressToken"] == "p-3")
    );
    let lines: Vec<&str> = reports.iter().map(|(_, m)| m.as_str()).collect();
    let position = |needle: &str| {
        lines.iter().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("`{needle}` not in {lines:#?}"))
    };
    let order = [
        position(&format!("run {run} of session {session} queued")),
        position("run started: personas.writer"),
        position("step 1: personas.writer"),
        position("calls documents.create"),
        position("document \"Launch plan\""),
        position("personas.writer answered"),
        position("run completed"),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{lines:#?}");

    // The document it wrote, as a resource; its first version too; the transcript.
    let listed = client.simple("resources/list", json!({})).await;
    let uris: Vec<&str> =
        listed["resources"].as_array().expect("resources").iter().filter_map(|r| r["uri"].as_str()).collect();
    let document = *uris.iter().find(|u| u.starts_with("maestro://documents/")).expect("the document is listed");
    assert!(uris.contains(&format!("maestro://sessions/{session}/transcript").as_str()), "{uris:?}");
    let read = client.simple("resources/read", json!({ "uri": document })).await;
    assert_eq!(read["contents"][0]["text"], "# Launch plan\n\n- ship v1\n");
    assert_eq!(read["contents"][0]["mimeType"], "text/markdown");
    let first = client.simple("resources/read", json!({ "uri": format!("{document}/versions/1") })).await;
    assert_eq!(first["contents"][0]["text"], "# Launch plan\n\n- ship v1\n");
    let transcript =
        client.simple("resources/read", json!({ "uri": format!("maestro://sessions/{session}/transcript") })).await;
    let text = transcript["contents"][0]["text"].as_str().expect("markdown");
    assert!(text.starts_with("# launch\n"), "{text}");
    let (asked, answered) = (
        text.find("Write our launch plan.").expect("the message"),
        text.find("Drafted the launch plan.").expect("answer"),
    );
    assert!(asked < answered && text.contains("## personas.writer"), "{text}");
    let templates = client.simple("resources/templates/list", json!({})).await;
    let templates = templates.to_string();
    for template in [
        maestro_host::mcp::DOCUMENT_TEMPLATE,
        maestro_host::mcp::VERSION_TEMPLATE,
        maestro_host::mcp::TRANSCRIPT_TEMPLATE,
    ] {
        assert!(templates.contains(template), "{template}: {templates}");
    }

    // runs.get over the stateless revision; another tenant's key would see nothing.
    let stateless = Mcp::connect(&setup, STATELESS, json!({})).await;
    let got = result(&stateless.call(4, "runs.get", json!({ "run": run })).await).clone();
    assert_eq!(got["structuredContent"]["state"], "completed", "{got}");
    let missing = stateless
        .request(
            5,
            "resources/read",
            json!({ "uri": "maestro://documents/doc_aaaaaaaaaaaaaaaaaaaa" }),
            json!({}),
            &no_answers,
        )
        .await;
    let error = &missing.last().expect("answer")["error"];
    assert!(error["message"].as_str().is_some_and(|m| m.starts_with("no resource")), "{missing:?}");

    // Another tenant's member learns nothing of them.
    let platform = setup.server.bootstrap_token();
    let (status, _) =
        setup.server.call(reqwest::Method::POST, "/v1/tenants", &platform, Some(json!({ "name": "beta" }))).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, key) = setup
        .server
        .call(reqwest::Method::POST, "/v1/keys", &platform, Some(json!({ "tenant": "beta", "role": "member" })))
        .await;
    let outsider = Mcp {
        token: key["token"].as_str().expect("token").to_owned(),
        ..Mcp::connect(&setup, STATELESS, json!({})).await
    };
    let transcript_uri = format!("maestro://sessions/{session}/transcript");
    for uri in [document, transcript_uri.as_str()] {
        let refused = outsider.request(6, "resources/read", json!({ "uri": uri }), json!({}), &no_answers).await;
        let error = &refused.last().expect("answer")["error"];
        assert!(error["message"].as_str().is_some_and(|m| m.starts_with("no resource")), "{uri}: {refused:?}");
    }
    let listed = outsider.simple("resources/list", json!({})).await.to_string();
    assert!(!listed.contains("maestro://documents/") && !listed.contains(session), "{listed}");
    let got = result(&outsider.call(7, "runs.get", json!({ "run": run })).await).clone();
    assert_eq!(got["isError"], true, "{got}");
    assert!(got["content"][0]["text"].as_str().is_some_and(|t| t.contains("not found")), "{got}");
    setup.server.stop().await;
}

async fn a_subscribed_session_hears_resources_updated_after_an_edit(backend: Backend) {
    let setup = setup(backend).await;
    let (status, created) = setup
        .server
        .call(
            reqwest::Method::POST,
            "/v1/documents",
            &setup.member,
            Some(json!({ "title": "Notes", "kind": "markdown", "content": "# Notes\n" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().expect("id").to_owned();
    let uri = format!("maestro://documents/{id}");
    let client = Mcp::connect(&setup, SESSIONS, json!({})).await;
    let init = client.simple("resources/subscribe", json!({ "uri": uri })).await;
    assert_eq!(init, json!({}));
    let mut stream = client
        .http
        .get(&client.url)
        .bearer_auth(&client.token)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", client.session.as_deref().expect("session"))
        .send()
        .await
        .expect("GET stream");
    assert_eq!(stream.status(), StatusCode::OK);

    let edit = reqwest::Client::new()
        .put(format!("{}/v1/documents/{id}", setup.server.base))
        .bearer_auth(&setup.member)
        .header("if-match", "\"1\"")
        .json(&json!({ "content": "# Notes\n\n- edited\n" }))
        .send()
        .await
        .expect("put");
    assert_eq!(edit.status(), StatusCode::OK);
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.contains("notifications/resources/updated") {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.chunk()).await {
            Ok(Ok(Some(bytes))) => seen.push_str(&String::from_utf8_lossy(&bytes)),
            other => panic!("no resources/updated ({other:?}): {seen}"),
        }
    }
    assert!(seen.contains(&uri), "{seen}");
    let read = client.simple("resources/read", json!({ "uri": uri })).await;
    assert_eq!(read["contents"][0]["text"], "# Notes\n\n- edited\n");

    // A stateless client names the document in subscriptions/listen. The listen is
    // acknowledged before the server follows changes, so edit until an update arrives.
    let stateless = Mcp::connect(&setup, STATELESS, json!({})).await;
    let params = json!({ "notifications": { "resourceSubscriptions": [uri, "maestro://elsewhere/x"] } });
    let body = stateless.body(12, "subscriptions/listen", params, json!({}));
    let mut listen = stateless.builder("subscriptions/listen", None).json(&body).send().await.expect("listen");
    assert_eq!(listen.status(), StatusCode::OK);
    let mut heard = String::new();
    let mut version = 2;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !heard.contains("notifications/resources/updated") {
        assert!(Instant::now() < deadline, "no resources/updated on the listen stream: {heard}");
        if heard.contains("notifications/subscriptions/acknowledged") {
            let edit = reqwest::Client::new()
                .put(format!("{}/v1/documents/{id}", setup.server.base))
                .bearer_auth(&setup.member)
                .header("if-match", format!("\"{version}\""))
                .json(&json!({ "content": format!("# Notes\n\n- edit {version}\n") }))
                .send()
                .await
                .expect("put");
            assert_eq!(edit.status(), StatusCode::OK);
            version += 1;
        }
        if let Ok(Ok(Some(bytes))) = tokio::time::timeout(Duration::from_secs(1), listen.chunk()).await {
            heard.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    let acknowledged = heard.lines().find(|l| l.contains("notifications/subscriptions/acknowledged")).expect("ack");
    assert!(acknowledged.contains(&uri) && !acknowledged.contains("elsewhere"), "{acknowledged}");
    assert!(heard.contains(&format!("\"uri\":\"{uri}\"")), "{heard}");
    drop(listen);

    // A document this key cannot see cannot be subscribed to.
    let refused = client
        .request(
            7,
            "resources/subscribe",
            json!({ "uri": "maestro://documents/doc_aaaaaaaaaaaaaaaaaaaa" }),
            json!({}),
            &no_answers,
        )
        .await;
    assert!(refused.last().expect("answer").get("error").is_some(), "{refused:?}");
    setup.server.stop().await;
}

async fn cancelling_runs_start_cancels_the_run(backend: Backend) {
    let setup = setup(backend).await;
    // A model that streams a little and then stalls until the caller hangs up.
    setup.fake.push(Script::openai_text("Thinking about it at length", usage(100, 10)).await_close_after(1));
    let client = Mcp::connect(&setup, SESSIONS, json!({})).await;
    let body = client.body(
        21,
        "tools/call",
        json!({ "name": "runs.start", "arguments": { "personas": ["personas.writer"], "strategy": "sequence",
            "message": "Write a long essay." } }),
        json!({ "progressToken": "p-21" }),
    );
    let mut response = client.builder("tools/call", Some("runs.start")).json(&body).send().await.expect("start");
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.contains("step 1: personas.writer") {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, response.chunk()).await {
            Ok(Ok(Some(bytes))) => seen.push_str(&String::from_utf8_lossy(&bytes)),
            other => panic!("the run never started ({other:?}): {seen}"),
        }
    }
    let run = seen
        .match_indices("run_")
        .map(|(at, _)| seen[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>())
        .find(|id| maestro_core::run::RunId::parse(id).is_ok())
        .expect("the first report names the run");
    let cancelled_at = Instant::now();
    client
        .notify(json!({ "jsonrpc": "2.0", "method": "notifications/cancelled",
            "params": { "requestId": 21, "reason": "the user pressed stop" } }))
        .await;
    let stream =
        Stream::open(&setup.server.base, &format!("/v1/runs/{run}/events"), &setup.member, None).await.expect("events");
    let events = tokio::time::timeout(Duration::from_secs(30), stream.rest()).await.expect("the run ends");
    let kinds: Vec<String> = events.iter().map(|e| e.event.clone()).collect();
    assert_eq!(kinds.last().map(String::as_str), Some("run.cancelled"), "{kinds:?}");
    eprintln!("{backend:?}: run.cancelled readable {:?} after notifications/cancelled", cancelled_at.elapsed());
    let (_, state) = setup.server.call(reqwest::Method::GET, &format!("/v1/runs/{run}"), &setup.member, None).await;
    assert_eq!(state["state"], "cancelled", "{state}");
    assert!(data(events.last().expect("terminal"))["data"]["totals"].is_object());
    drop(response);
    setup.server.stop().await;
}

async fn a_question_is_elicited_from_a_client_that_declares_it_and_returned_to_one_that_does_not(backend: Backend) {
    let setup = setup(backend).await;
    let ask = r#"{"question":"Which market first?","choices":["EU","US"]}"#;
    setup.fake.push(Script::openai_tool_calls(&[("q1", "ask_user", ask)], usage(100, 10)));
    setup.fake.push(Script::openai_text("EU first.", usage(100, 10)));
    setup.fake.push(Script::openai_tool_calls(&[("q2", "ask_user", ask)], usage(100, 10)));
    setup.fake.push(Script::openai_text("US it is.", usage(100, 10)));

    // A client that declared elicitation is asked, mid-call, and the run goes on.
    let eliciting = Mcp::connect(&setup, SESSIONS, json!({ "elicitation": { "form": {} } })).await;
    let asked = std::sync::Mutex::new(Vec::new());
    let answer = |request: &Value| {
        asked.lock().expect("asked").push(request.clone());
        json!({ "action": "accept", "content": { "answer": "EU" } })
    };
    let arguments = json!({ "personas": ["personas.writer"], "strategy": "sequence", "message": "Plan the launch." });
    let params = json!({ "name": "runs.start", "arguments": arguments });
    let messages = eliciting.request(31, "tools/call", params, json!({ "progressToken": "p-31" }), &answer).await;
    let done = result(&messages);
    assert_eq!(done["content"][0]["text"], "EU first.", "{done}");
    let asked = asked.into_inner().expect("asked");
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0]["method"], "elicitation/create");
    assert_eq!(asked[0]["params"]["message"], "Which market first?");
    assert_eq!(asked[0]["params"]["requestedSchema"]["properties"]["answer"]["enum"], json!(["EU", "US"]));
    let lines: Vec<String> = progress(&messages).into_iter().map(|(_, m)| m).collect();
    assert!(lines.iter().any(|l| l == "asks: Which market first?"), "{lines:?}");
    assert!(lines.iter().any(|l| l == "the question was answered"), "{lines:?}");
    let session = done["structuredContent"]["session"].as_str().expect("session").to_owned();
    // The persona got the answer as its ask_user result.
    let requests = setup.fake.requests();
    let answered = requests.iter().map(|r| r.body.to_string()).find(|b| b.contains("\"tool_call_id\":\"q1\""));
    assert!(answered.as_deref().is_some_and(|b| b.contains("\"EU\"")), "{answered:?}");

    // A stateless client cannot be asked: the question is the result, with the run id.
    let plain = Mcp::connect(&setup, STATELESS, json!({})).await;
    let messages = plain.call(32, "runs.start", json!({ "session": session, "message": "And then?" })).await;
    let waiting = result(&messages);
    assert_eq!(waiting["isError"], false, "{waiting}");
    let structured = &waiting["structuredContent"];
    assert_eq!(structured["state"], "waiting_input", "{waiting}");
    assert_eq!(structured["question"]["choices"], json!(["EU", "US"]));
    let run = structured["run"].as_str().expect("run").to_owned();
    let text = waiting["content"][0]["text"].as_str().expect("text");
    assert!(text.contains("Which market first?") && text.contains(&run) && text.contains("runs.answer"), "{text}");
    let got = result(&plain.call(33, "runs.get", json!({ "run": run })).await).clone();
    assert_eq!(got["structuredContent"]["question"]["question"], "Which market first?", "{got}");

    // A wrong choice is refused and loses nothing; the right one resumes the run.
    let wrong = plain.call(34, "runs.answer", json!({ "run": run, "answer": "Mars" })).await;
    let error = &wrong.last().expect("answer")["error"];
    assert_eq!(error["code"], -32602, "{wrong:?}");
    assert!(error["message"].as_str().expect("message").contains("must be one of: EU, US"), "{error}");
    let answered = plain.call(35, "runs.answer", json!({ "run": run, "answer": "US" })).await;
    let done = result(&answered);
    assert_eq!(done["content"][0]["text"], "US it is.", "{done}");
    assert_eq!(done["structuredContent"]["run"], json!(run));
    assert!(progress(&answered).iter().any(|(_, m)| m == "run completed"));

    // A stateless client that declares elicitation gets an input-required result
    // (SEP-2322) and retries with the answer.
    setup.fake.push(Script::openai_tool_calls(&[("q3", "ask_user", ask)], usage(100, 10)));
    setup.fake.push(Script::openai_text("EU again.", usage(100, 10)));
    let asking = Mcp::connect(&setup, STATELESS, json!({ "elicitation": { "form": {} } })).await;
    let messages = asking.call(36, "runs.start", json!({ "session": session, "message": "Once more?" })).await;
    let required = result(&messages);
    assert_eq!(required["resultType"], "input_required", "{required}");
    let elicitation = &required["inputRequests"]["answer"];
    assert_eq!(elicitation["method"], "elicitation/create", "{required}");
    assert_eq!(elicitation["params"]["message"], "Which market first?");
    assert_eq!(elicitation["params"]["requestedSchema"]["properties"]["answer"]["enum"], json!(["EU", "US"]));
    let state = required["requestState"].as_str().expect("request state").to_owned();
    assert!(state.starts_with("maestro-run:run_"), "{state}");
    // A retry without the answer is asked again.
    let params = json!({ "name": "runs.start", "arguments": { "session": session, "message": "Once more?" },
        "requestState": state });
    let again = asking.request(38, "tools/call", params, json!({}), &no_answers).await;
    assert_eq!(result(&again)["resultType"], "input_required", "{again:?}");
    assert_eq!(result(&again)["requestState"], json!(state));
    let params = json!({ "name": "runs.start", "arguments": { "session": session, "message": "Once more?" },
        "inputResponses": { "answer": { "action": "accept", "content": { "answer": "EU" } } },
        "requestState": state });
    let retried = asking.request(37, "tools/call", params, json!({ "progressToken": "p-37" }), &no_answers).await;
    let done = result(&retried);
    assert_eq!(done["content"][0]["text"], "EU again.", "{done}");
    assert_eq!(format!("maestro-run:{}", done["structuredContent"]["run"].as_str().expect("run")), state);
    let (_, messages) =
        setup.server.call(reqwest::Method::GET, &format!("/v1/sessions/{session}/messages"), &setup.member, None).await;
    let asked = messages.to_string().matches("Once more?").count();
    assert_eq!(asked, 1, "the retry answered the run and started no other: {messages}");
    setup.server.stop().await;
}

async fn a_stdio_client_starts_a_run_and_reads_its_document(backend: Backend) {
    use std::io::{BufRead as _, BufReader, Write as _};
    use std::process::Stdio;

    let setup = setup(backend).await;
    setup.fake.push(Script::openai_tool_calls(
        &[("c1", "documents_create", r##"{"title":"Stdio plan","content":"# Stdio plan\n"}"##)],
        usage(100, 10),
    ));
    setup.fake.push(Script::openai_text("Wrote the stdio plan.", usage(100, 10)));
    let mut child = serve_command(&setup.db, backend, &setup.fake)
        .args(["mcp", "--key", &setup.member])
        .env("MAESTRO_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("maestro mcp starts");
    let mut stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    let conversation = tokio::task::spawn_blocking(move || {
        let mut stdout = BufReader::new(stdout);
        let mut send = |message: Value| writeln!(stdin, "{message}").expect("write");
        let mut receive = |id: u64| {
            let mut seen = Vec::new();
            loop {
                let mut line = String::new();
                assert!(stdout.read_line(&mut line).expect("read") > 0, "maestro mcp ended: {seen:?}");
                let message: Value =
                    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON-RPC ({e}): {line:?}"));
                let done = message["id"] == json!(id);
                seen.push(message);
                if done {
                    return seen;
                }
            }
        };
        send(json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": SESSIONS, "capabilities": {}, "clientInfo": { "name": "desktop", "version": "1" } } }));
        receive(1);
        send(json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }));
        send(json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": "runs.start", "_meta": { "progressToken": 2 },
            "arguments": { "personas": ["personas.writer"], "strategy": "sequence", "message": "Plan it." } } }));
        let started = receive(2);
        send(json!({ "jsonrpc": "2.0", "id": 3, "method": "resources/list", "params": {} }));
        let listed = receive(3);
        let uri = listed.last().expect("list")["result"]["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .filter_map(|r| r["uri"].as_str())
            .find(|u| u.starts_with("maestro://documents/"))
            .expect("the run's document is listed")
            .to_owned();
        send(json!({ "jsonrpc": "2.0", "id": 4, "method": "resources/read", "params": { "uri": uri } }));
        let read = receive(4);
        (started, read)
    });
    let (started, read) =
        tokio::time::timeout(Duration::from_secs(60), conversation).await.expect("in time").expect("conversation");
    let status = child.wait().expect("exits when stdin closes");
    assert!(status.success(), "{status}");
    let done = result(&started);
    assert_eq!(done["content"][0]["text"], "Wrote the stdio plan.", "{done}");
    let lines: Vec<String> = progress(&started).into_iter().map(|(_, m)| m).collect();
    assert!(lines.iter().any(|l| l.starts_with("document \"Stdio plan\"")), "{lines:?}");
    assert_eq!(result(&read)["contents"][0]["text"], "# Stdio plan\n");
    setup.server.stop().await;
}
