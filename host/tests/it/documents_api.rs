//! Documents through their callers, on both backends: the HTTP API (`If-Match` 428 and
//! 412, `ETag`, roles, diff, rollback, tenant isolation), the built-in `documents.*`
//! tools in the one tool pipeline (policy decides what is offered; stale and
//! non-applying edits are error results carrying the current version; nothing is
//! written), and an end-to-end run of a real `maestro serve` in which two personas draft
//! and critique a Markdown document through those tools, driven by the fake model
//! server.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use maestro_core::call::Failure;
use maestro_core::plugin::ToolError;
use maestro_core::policy::PolicySet;
use maestro_core::{Role, TenantId, TenantName};
use maestro_host::documents::Documents;
use maestro_host::plugins::PluginRegistry;
use maestro_host::policy::PolicyStore;
use maestro_host::tools::{Principal, SecretValues, Tools};
use serde_json::{Value, json};

use crate::fake_llm::{FakeLlm, Recorded, Script, usage};
use crate::harness::{Backend, TestDb, TestHost, backend_tests};
use crate::runs_api::{Stream, data};
use crate::server::Server;

backend_tests!(
    put_without_if_match_is_428_and_with_a_stale_one_412_carrying_the_current_version,
    viewers_read_documents_and_members_write_them,
    rollback_and_diff_over_http,
    another_tenants_documents_answer_404_on_every_route,
    a_denied_documents_edit_is_not_offered_and_refused_when_called,
    document_tools_outside_a_run_write_as_the_key_and_refuse_stale_or_unapplied_edits,
    two_personas_draft_and_critique_a_document_in_one_run,
);

struct Api {
    host: TestHost,
    member: String,
}

async fn api(backend: Backend) -> Api {
    let host = TestHost::new(backend).await;
    let platform = host.platform_token().await;
    let member = host.tenant_with_key(&platform, "acme", "member").await;
    Api { host, member }
}

async fn create(api: &Api, title: &str, content: &str) -> String {
    let reply = api
        .host
        .post("/v1/documents", Some(&api.member), json!({ "title": title, "kind": "markdown", "content": content }))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    assert_eq!(reply.headers["etag"], "\"1\"");
    assert_eq!((reply.body["version"].clone(), reply.body["content"].clone()), (json!(1), json!(content)));
    reply.body["id"].as_str().expect("id").to_owned()
}

async fn put(api: &Api, id: &str, if_match: Option<&str>, content: &str) -> crate::harness::Reply {
    let body = json!({ "content": content }).to_string().into_bytes();
    let headers: Vec<(&str, &str)> = if_match.map(|v| ("if-match", v)).into_iter().collect();
    api.host
        .send_raw(
            Method::PUT,
            &format!("/v1/documents/{id}"),
            Some(&api.member),
            Some(("application/json", body)),
            &headers,
        )
        .await
}

async fn put_without_if_match_is_428_and_with_a_stale_one_412_carrying_the_current_version(backend: Backend) {
    let api = api(backend).await;
    let id = create(&api, "Plan", "# Plan\n").await;

    let missing = put(&api, &id, None, "# Plan v2\n").await;
    assert_eq!(missing.status, StatusCode::PRECONDITION_REQUIRED, "{missing:?}");
    assert_eq!(missing.code(), "precondition_required");

    let written = put(&api, &id, Some("\"1\""), "# Plan v2\n").await;
    assert_eq!(written.status, StatusCode::OK, "{written:?}");
    assert_eq!((written.headers["etag"].to_str().ok(), written.body["version"].clone()), (Some("\"2\""), json!(2)));

    let stale = put(&api, &id, Some("1"), "# Plan, another v2\n").await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED, "{stale:?}");
    assert_eq!(stale.code(), "stale_version");
    assert_eq!(stale.body["error"]["details"], json!({ "current_version": 2, "content": "# Plan v2\n" }));
    let bad = put(&api, &id, Some("\"two\""), "x").await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad:?}");

    let read = api.host.get(&format!("/v1/documents/{id}"), Some(&api.member)).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.headers["etag"], "\"2\"");
    assert_eq!(read.body["content"], "# Plan v2\n", "the stale write changed nothing");
    let weak = put(&api, &id, Some("W/\"2\""), "# Plan v3\n").await;
    assert_eq!(weak.body["version"], 3, "{weak:?}");
    let versions = api.host.get(&format!("/v1/documents/{id}/versions"), Some(&api.member)).await;
    let listed: Vec<(i64, String)> = versions.body["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| (v["version"].as_i64().expect("n"), v["edit"]["op"].as_str().expect("op").to_owned()))
        .collect();
    assert_eq!(listed, [(1, "create".into()), (2, "replace".into()), (3, "replace".into())]);
}

async fn viewers_read_documents_and_members_write_them(backend: Backend) {
    let api = api(backend).await;
    let platform = api.host.platform_token_again().await;
    let viewer = api.host.key(&platform, json!({ "tenant": "acme", "role": "viewer" })).await;
    let id = create(&api, "Plan", "# Plan\n").await;

    let read = api.host.get(&format!("/v1/documents/{id}"), Some(&viewer)).await;
    assert_eq!(read.status, StatusCode::OK, "{read:?}");
    let listed = api.host.get("/v1/documents", Some(&viewer)).await;
    assert_eq!(listed.body["documents"][0]["id"], json!(id));
    assert!(listed.body["documents"][0].get("content").is_none(), "lists carry no content");
    let refused = api.host.post("/v1/documents", Some(&viewer), json!({ "title": "t", "kind": "markdown" })).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{refused:?}");
    let rollback = api.host.post(&format!("/v1/documents/{id}/rollback"), Some(&viewer), json!({ "version": 1 })).await;
    assert_eq!(rollback.status, StatusCode::FORBIDDEN);
    let by_platform = api.host.get("/v1/documents", Some(&platform)).await;
    assert_eq!(by_platform.status, StatusCode::FORBIDDEN, "platform keys are not a tenant");

    let json_doc = api
        .host
        .post("/v1/documents", Some(&api.member), json!({ "title": "Data", "kind": "json", "content": "{oops" }))
        .await;
    assert_eq!(json_doc.status, StatusCode::UNPROCESSABLE_ENTITY, "{json_doc:?}");
    assert!(json_doc.body["error"]["message"].as_str().expect("message").contains("not valid JSON"));
}

async fn rollback_and_diff_over_http(backend: Backend) {
    let api = api(backend).await;
    let id = create(&api, "Plan", "a\nb\nc\n").await;
    assert_eq!(put(&api, &id, Some("\"1\""), "a\nB\nc\n").await.status, StatusCode::OK);

    let diff = api.host.get(&format!("/v1/documents/{id}/diff?from=1&to=2"), Some(&api.member)).await;
    assert_eq!(diff.status, StatusCode::OK);
    assert!(diff.headers["content-type"].to_str().expect("type").starts_with("text/x-diff"));
    assert_eq!(diff.body, json!(format!("--- {id}@v1\n+++ {id}@v2\n@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n")));

    let rolled =
        api.host.post(&format!("/v1/documents/{id}/rollback"), Some(&api.member), json!({ "version": 1 })).await;
    assert_eq!(rolled.status, StatusCode::OK, "{rolled:?}");
    assert_eq!((rolled.body["version"].clone(), rolled.body["content"].clone()), (json!(3), json!("a\nb\nc\n")));
    let v3 = api.host.get(&format!("/v1/documents/{id}/versions/3"), Some(&api.member)).await;
    assert_eq!(v3.body["edit"], json!({ "op": "rollback", "to": 1 }));
    assert_eq!(v3.body["author"]["kind"], "user");
    let v2 = api.host.get(&format!("/v1/documents/{id}/versions/2"), Some(&api.member)).await;
    assert_eq!(v2.body["content"], "a\nB\nc\n", "history is kept");
    let missing = api.host.get(&format!("/v1/documents/{id}/versions/9"), Some(&api.member)).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

async fn another_tenants_documents_answer_404_on_every_route(backend: Backend) {
    let api = api(backend).await;
    let platform = api.host.platform_token_again().await;
    let other = api.host.tenant_with_key(&platform, "other", "member").await;
    let id = create(&api, "Plan", "x\n").await;
    for path in [
        format!("/v1/documents/{id}"),
        format!("/v1/documents/{id}/versions"),
        format!("/v1/documents/{id}/versions/1"),
        format!("/v1/documents/{id}/diff?from=1&to=1"),
    ] {
        let reply = api.host.get(&path, Some(&other)).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}: {reply:?}");
    }
    let rollback = api.host.post(&format!("/v1/documents/{id}/rollback"), Some(&other), json!({ "version": 1 })).await;
    assert_eq!(rollback.status, StatusCode::NOT_FOUND);
    let put = api
        .host
        .send_raw(
            Method::PUT,
            &format!("/v1/documents/{id}"),
            Some(&other),
            Some(("application/json", br#"{"content":"mine"}"#.to_vec())),
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(put.status, StatusCode::NOT_FOUND, "{put:?}");
    let listed = api.host.get("/v1/documents", Some(&other)).await;
    assert_eq!(listed.body["documents"], json!([]));
    let read = api.host.get(&format!("/v1/documents/{id}"), Some(&api.member)).await;
    assert_eq!((read.body["version"].clone(), read.body["content"].clone()), (json!(1), json!("x\n")));
}

/// Tools with the built-in document tools, no plugins, under `policy`.
async fn document_tools(db: &TestDb, store: &Arc<dyn maestro_core::Store>, policy: &str) -> (Arc<Tools>, Principal) {
    let clock = crate::harness::ManualClock::new();
    let tenant = maestro_core::Tenant {
        id: TenantId::from_random([9; 16]),
        name: TenantName::parse("acme").expect("name"),
        created_at: maestro_core::Clock::now(&*clock),
    };
    store.create_tenant(&tenant).await.expect("tenant");
    let plugin_dir = db.dir().join("plugins");
    std::fs::create_dir_all(&plugin_dir).expect("plugin dir");
    let registry = Arc::new(PluginRegistry::new(crate::fixtures::sandbox(), plugin_dir.clone()));
    registry.refresh().await;
    let policies = PolicySet::parse([("test.toml", policy)]).expect("policy");
    let secrets = SecretValues::new(Default::default(), plugin_dir.join("no-secrets"));
    let documents = Arc::new(Documents::new(store.clone(), clock));
    let tools = Tools::new(registry, Arc::new(PolicyStore::fixed(policies)), secrets)
        .with_host_tools(maestro_host::tools::documents::tools(documents));
    let principal =
        Principal { tenant: "acme".into(), tenant_id: tenant.id, role: Role::Member, key_id: "key_t".into() };
    (Arc::new(tools), principal)
}

async fn a_denied_documents_edit_is_not_offered_and_refused_when_called(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    let policy = "version = 1\n[[grant]]\nname = \"docs\"\nsubjects = [\"role:member+\"]\ntools = [\"documents.*\"]\n\
                  [[deny]]\nname = \"no-edits\"\nsubjects = [\"role:member+\"]\ntools = [\"documents.edit\"]\n";
    let (tools, principal) = document_tools(&db, &store, policy).await;
    let mut offered: Vec<String> = tools.visible_tools(&principal).into_iter().map(|t| t.name).collect();
    offered.sort();
    assert_eq!(offered, ["documents.create", "documents.list", "documents.read"]);
    let args = json!({ "id": "doc_00000000000000000000", "base_version": 1, "content": "x" });
    let refused = tools.call(&principal, "documents.edit", args, Default::default()).await;
    assert!(matches!(refused, Err(maestro_host::tools::CallError::Denied(_))), "{refused:?}");
    let viewer = Principal { role: Role::Viewer, ..principal };
    assert!(tools.visible_tools(&viewer).is_empty(), "the grant is for members");
}

fn tool_error(call: &maestro_host::tools::ToolCall) -> String {
    match &call.outcome.result {
        Err(Failure::ToolError(ToolError::Failed(message))) => message.clone(),
        other => panic!("expected an error result, got {other:?}"),
    }
}

async fn document_tools_outside_a_run_write_as_the_key_and_refuse_stale_or_unapplied_edits(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    let policy = "version = 1\n[[grant]]\nname = \"docs\"\nsubjects = [\"role:member+\"]\ntools = [\"documents.*\"]\n";
    let (tools, principal) = document_tools(&db, &store, policy).await;
    let call = |name: &'static str, args: Value| {
        let (tools, principal) = (tools.clone(), principal.clone());
        async move { tools.call(&principal, name, args, Default::default()).await.expect("admitted") }
    };

    let created = call("documents.create", json!({ "title": "Plan", "content": "# Plan\n\n- one\n" })).await;
    let output = created.outcome.result.as_ref().expect("created");
    let id = output.structured.as_ref().expect("structured")["id"].as_str().expect("id").to_owned();
    assert!(created.events.is_empty(), "outside a run there is no run to record events in");
    let edited =
        call("documents.edit", json!({ "id": id, "base_version": 1, "edits": [{ "old": "- one", "new": "- two" }] }))
            .await;
    assert_eq!(edited.outcome.result.as_ref().expect("edited").structured.as_ref().expect("s")["version"], 2);

    let stale = call("documents.edit", json!({ "id": id, "base_version": 1, "content": "mine" })).await;
    let message = tool_error(&stale);
    assert!(message.contains("version 1 is not the current version 2"), "{message}");
    assert!(message.contains("# Plan\n\n- two\n"), "a short current text is carried back: {message}");
    let unapplied =
        call("documents.edit", json!({ "id": id, "base_version": 2, "edits": [{ "old": "- three", "new": "x" }] }))
            .await;
    let message = tool_error(&unapplied);
    assert!(message.contains("edit 0: `old` not found") && message.contains("- two"), "{message}");
    let both = call("documents.edit", json!({ "id": id, "base_version": 2, "content": "x", "edits": [] })).await;
    assert!(matches!(both.outcome.result, Err(Failure::ToolError(ToolError::InvalidArguments(_)))));

    let read = call("documents.read", json!({ "id": id, "version": 1 })).await;
    let read = read.outcome.result.expect("read").structured.expect("structured");
    assert_eq!((read["version"].clone(), read["current_version"].clone()), (json!(1), json!(2)));
    let docs = Documents::new(store.clone(), crate::harness::ManualClock::new());
    let doc_id = maestro_core::document::DocumentId::parse(&id).expect("id");
    let history = docs.versions(&principal.tenant_id, &doc_id, 0, 10).await.expect("history");
    let authors: Vec<&str> = history.iter().map(|v| v.author.label()).collect();
    assert_eq!(authors, ["key_t", "key_t"], "refused edits wrote nothing; the key is the author");
    let listed = call("documents.list", json!({})).await;
    let listed = listed.outcome.result.expect("listed").structured.expect("structured");
    assert_eq!(listed["documents"][0]["version"], 2);
}

/// A `maestro serve` with the personas plugin, members granted `personas.*` and
/// `documents.*`, and every model tier served by the fake.
fn serve_command(db: &TestDb, backend: Backend, fake: &FakeLlm) -> std::process::Command {
    crate::server::serve_personas(db, backend, fake, &["personas.*", "documents.*"])
}

/// The first document id a request's text names (the tool results and the context
/// block carry it).
fn document_in(request: &Recorded) -> Option<String> {
    let text = request.body.to_string();
    text.match_indices("doc_").map(|(at, _)| &text[at..]).find_map(|rest| {
        let id: String = rest.chars().take(24).collect();
        maestro_core::document::DocumentId::parse(&id).ok().map(|_| id)
    })
}

async fn two_personas_draft_and_critique_a_document_in_one_run(backend: Backend) {
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
    let team = ["personas.writer", "personas.critic"];
    let (status, session) = server
        .call(
            reqwest::Method::POST,
            "/v1/sessions",
            &member,
            Some(json!({ "title": "launch", "personas": team, "strategy": "sequence" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{session}");
    let session = session["id"].as_str().expect("session id").to_owned();

    // The writer creates the plan and extends it; the critic edits the version it saw
    // first (stale: the writer moved on), gets the current text back, and edits that.
    // Scripts after the first name the document the server created: they are made when
    // their request arrives, from the id the request carries.
    fake.push(Script::openai_tool_calls(
        &[("c1", "documents_create", r##"{"title":"Launch plan","content":"# Launch plan\n\n- ship v1\n"}"##)],
        usage(100, 10),
    ));
    type Make = Box<dyn Fn(&str) -> Script + Send>;
    let edit = |call: &'static str, base: i64, old: &'static str, new: &'static str| -> Make {
        Box::new(move |doc: &str| {
            let args = json!({ "id": doc, "base_version": base, "edits": [{ "old": old, "new": new }] }).to_string();
            Script::openai_tool_calls(&[(call, "documents_edit", &args)], usage(100, 10))
        })
    };
    let text = |answer: &'static str| -> Make { Box::new(move |_: &str| Script::openai_text(answer, usage(100, 10))) };
    let later: Arc<Mutex<std::collections::VecDeque<Make>>> = Arc::new(Mutex::new(
        [
            edit("c2", 1, "- ship v1", "- ship v1\n- measure adoption"),
            text("Drafted the launch plan."),
            edit("c3", 1, "- ship v1", "- ship v1 to beta users"),
            edit("c4", 2, "- measure adoption", "- measure weekly adoption"),
            text("Tightened the plan."),
        ]
        .into_iter()
        .collect(),
    ));
    fake.respond_with(move |request| {
        let doc = document_in(request)?;
        let make = later.lock().expect("scripts").pop_front()?;
        Some(make(&doc))
    });

    let (status, posted) = server
        .call(
            reqwest::Method::POST,
            &format!("/v1/sessions/{session}/messages"),
            &member,
            Some(json!({ "content": "Write our launch plan." })),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{posted}");
    let run = posted["run"]["id"].as_str().expect("run").to_owned();
    let stream = Stream::open(&server.base, &format!("/v1/runs/{run}/events"), &member, None).await.expect("stream");
    let events = tokio::time::timeout(Duration::from_secs(60), stream.rest()).await.expect("the run ends in time");
    let events: Vec<(String, Value)> = events.iter().map(|e| (e.event.clone(), data(e)["data"].clone())).collect();
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds.last(), Some(&"run.completed"), "{events:?}");

    let updates: Vec<(i64, String, u32)> = events
        .iter()
        .filter(|(k, _)| k == "document.updated")
        .map(|(_, e)| {
            let step = u32::try_from(e["step"].as_u64().expect("step")).expect("small");
            (e["version"].as_i64().expect("version"), e["persona"].as_str().expect("persona").to_owned(), step)
        })
        .collect();
    assert_eq!(
        updates,
        [(1, "personas.writer".into(), 1), (2, "personas.writer".into(), 1), (3, "personas.critic".into(), 2)],
        "{kinds:?}"
    );
    let results: Vec<&Value> = events.iter().filter(|(k, _)| k == "tool.result").map(|(_, e)| e).collect();
    assert_eq!(results.len(), 4, "{results:?}");
    let stale = results[2];
    assert_eq!((stale["tool"].clone(), stale["ok"].clone()), (json!("documents.edit"), json!(false)), "{stale}");
    let message = stale["content"].as_str().expect("content");
    assert!(message.contains("version 1 is not the current version 2"), "{message}");
    assert!(message.contains("- measure adoption"), "the current text comes back: {message}");
    // Each document.updated commits with its tool.result: right after it in the stream.
    for (index, _) in events.iter().enumerate().filter(|(_, (k, _))| k == "document.updated") {
        assert_eq!(events[index - 1].0, "tool.result", "{kinds:?}");
    }
    // The critic's context listed the document (id, title, version).
    let requests = fake.requests();
    let critic_first = &requests[3].body["messages"][0]["content"];
    let context = critic_first.as_str().expect("system prompt");
    assert!(context.contains("Launch plan") && context.contains("version 2"), "{context}");

    // Over the API: one document of the session at version 3, every version with its
    // author (persona, run, step).
    let (_, listed) =
        server.call(reqwest::Method::GET, &format!("/v1/documents?session={session}"), &member, None).await;
    let doc = listed["documents"][0]["id"].as_str().expect("a document").to_owned();
    assert_eq!(listed["documents"][0]["version"], 3, "{listed}");
    let (_, history) = server.call(reqwest::Method::GET, &format!("/v1/documents/{doc}/versions"), &member, None).await;
    let authors: Vec<(String, String, u64)> = history["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| {
            let a = &v["author"];
            (
                a["name"].as_str().expect("persona").to_owned(),
                a["run"].as_str().expect("run").to_owned(),
                a["step"].as_u64().expect("step"),
            )
        })
        .collect();
    assert_eq!(
        authors,
        [
            ("personas.writer".into(), run.clone(), 1),
            ("personas.writer".into(), run.clone(), 1),
            ("personas.critic".into(), run.clone(), 2)
        ]
    );
    let (_, current) = server.call(reqwest::Method::GET, &format!("/v1/documents/{doc}"), &member, None).await;
    assert_eq!(current["content"], "# Launch plan\n\n- ship v1\n- measure weekly adoption\n");
    server.stop().await;
}
