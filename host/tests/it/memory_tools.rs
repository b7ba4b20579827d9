//! Memories for agents and MCP clients, on both backends: [`Memories::remember`] (a
//! near-duplicate in the same scope updates instead of inserting); the `memory.*` host
//! tools in a real `maestro serve` run by the fake model server (one session's run
//! stores a fact, a run of another session finds it, embedded by the offline model);
//! MCP over Streamable HTTP in both revisions (tools by role, policy deny, strict
//! arguments, tenant isolation of tools and `maestro://memories/{id}` resources, pages,
//! `resources/updated` to session subscribers and `subscriptions/listen`); and the
//! stdio server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use maestro_core::memory::{MemoryFilter, MemoryScope, MemorySource};
use maestro_core::policy::PolicySet;
use maestro_core::run::{RunLimits, Session, SessionId, Strategy};
use maestro_core::{Clock as _, Store, TenantId, TenantName};
use maestro_host::memory::{DUPLICATE_SIMILARITY, Memories, NewMemory, Remembered};
use maestro_host::plugins::PluginRegistry;
use maestro_host::policy::PolicyStore;
use maestro_host::tools::{SecretValues, Tools};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::fake_embed::FakeEmbedder;
use crate::fake_llm::{FakeLlm, Script, usage};
use crate::harness::{Backend, ManualClock, TestDb, TestHost, backend_tests};
use crate::mcp::{Client, SESSIONS, STATELESS, Served};
use crate::runs_api::{Stream, data};
use crate::server::{Server, StdioMcp};
use crate::storage_runs::{fresh, store, t0, tenant};

backend_tests!(
    remembering_a_near_duplicate_in_the_same_scope_updates_it_and_anything_else_inserts,
    an_agent_stores_a_fact_in_one_session_and_a_run_of_another_session_finds_it,
    mcp_clients_call_the_memory_tools_their_role_and_policy_allow,
    memories_are_mcp_resources_of_their_tenant_only_listed_in_pages,
    subscribers_hear_when_a_memory_changes_or_is_forgotten,
    concurrent_remembers_of_one_fact_in_two_replicas_end_as_one_memory,
);

/// Twenty distinct words: a text and the same plus one word are near-duplicates for the
/// fake embedder (cosine 20/√420 ≈ 0.976).
const FACT: &str = "the customer acme pays invoices in euro at the end of each month through bank \
                    transfer to the account named in their contract signed last spring";

fn new_memory(scope: MemoryScope, text: &str, tags: &[&str]) -> NewMemory {
    NewMemory {
        scope,
        text: text.to_owned(),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        pinned: false,
        source: None,
    }
}

async fn new_session(store: &Arc<dyn Store>, tenant: &TenantId) -> SessionId {
    let session = Session {
        id: fresh(),
        tenant: tenant.clone(),
        title: "s".into(),
        personas: vec!["team.writer".into()],
        strategy: Strategy::RoundRobin,
        limits: RunLimits::default(),
        created_by: "key_creator".into(),
        created_at: t0(),
    };
    store.create_session(&session).await.expect("create session");
    session.id
}

async fn remembering_a_near_duplicate_in_the_same_scope_updates_it_and_anything_else_inserts(backend: Backend) {
    let (_db, store) = store(backend).await;
    let clock = ManualClock::new();
    let memories = Memories::new(store.clone(), Arc::new(FakeEmbedder::named("fake-a")), clock.clone());
    let (acme, other) = (tenant(&store, "acme").await, tenant(&store, "other").await);
    let restated = format!("{FACT} indeed");
    let cosine: f32 = FakeEmbedder::vector(FACT).iter().zip(FakeEmbedder::vector(&restated)).map(|(a, b)| a * b).sum();
    assert!((DUPLICATE_SIMILARITY..0.99).contains(&cosine), "the fixture is a near-duplicate: {cosine}");

    let source = MemorySource { run: fresh(), step: 2 };
    let first = NewMemory { source: Some(source.clone()), ..new_memory(MemoryScope::Tenant, FACT, &["billing"]) };
    let (kept, how) = memories.remember(&acme, first).await.expect("remember");
    assert_eq!(how, Remembered::Inserted);

    clock.advance(chrono::Duration::seconds(3));
    let again = NewMemory { pinned: true, ..new_memory(MemoryScope::Tenant, &restated, &["Finance"]) };
    let (updated, how) = memories.remember(&acme, again).await.expect("remember");
    assert_eq!(how, Remembered::Updated);
    assert_eq!(updated.id, kept.id, "the same memory");
    assert_eq!(updated.text, restated, "the new text");
    assert_eq!(updated.tags, vec!["billing", "finance"], "tags merged");
    assert!(updated.pinned);
    assert_eq!(updated.source, Some(source), "the source stays");
    assert_eq!((updated.created_at, updated.updated_at), (kept.created_at, clock.now()));
    let all = memories.list(&acme, &MemoryFilter::default(), None, 10).await.expect("list");
    assert_eq!(all.len(), 1, "{all:?}");
    // Its vector is the new text's: searching for the new text scores (near) 1.
    let hits = memories.search(&acme, &restated, &MemoryFilter::default(), 1).await.expect("search");
    assert!(hits[0].score > 0.999, "{hits:?}");

    // Another scope, another tenant, or a different text: inserted.
    let persona = MemoryScope::Persona("team.writer".into());
    let session = MemoryScope::Session(new_session(&store, &acme).await);
    for scope in [persona.clone(), session.clone()] {
        let (_, how) = memories.remember(&acme, new_memory(scope.clone(), FACT, &[])).await.expect("remember");
        assert_eq!(how, Remembered::Inserted, "{scope:?}");
        let (_, how) = memories.remember(&acme, new_memory(scope.clone(), &restated, &[])).await.expect("remember");
        assert_eq!(how, Remembered::Updated, "{scope:?}");
    }
    let (_, how) = memories.remember(&other, new_memory(MemoryScope::Tenant, FACT, &[])).await.expect("remember");
    assert_eq!(how, Remembered::Inserted, "another tenant's memory is never updated");
    let (_, how) = memories
        .remember(&acme, new_memory(MemoryScope::Tenant, "the office moves to Lyon in May", &[]))
        .await
        .expect("remember");
    assert_eq!(how, Remembered::Inserted);
    assert_eq!(memories.list(&acme, &MemoryFilter::default(), None, 10).await.expect("list").len(), 4);
    assert_eq!(memories.list(&other, &MemoryFilter::default(), None, 10).await.expect("list").len(), 1);

    // Bad input writes nothing.
    assert!(memories.remember(&acme, new_memory(MemoryScope::Tenant, "  ", &[])).await.is_err());
    assert!(memories.remember(&acme, new_memory(MemoryScope::Tenant, "fine", &["no spaces"])).await.is_err());
    assert_eq!(memories.list(&acme, &MemoryFilter::default(), None, 10).await.expect("list").len(), 4);
}

/// Two replicas (two stores opened on one database) remember the same fact and its
/// restatement eight times at once, in each of two scopes: one memory per scope, one
/// insert and seven updates.
async fn concurrent_remembers_of_one_fact_in_two_replicas_end_as_one_memory(backend: Backend) {
    let db = TestDb::new(backend).await;
    let replicas = [db.open().await, db.open().await];
    let acme = tenant(&replicas[0], "acme").await;
    let persona = MemoryScope::Persona("team.writer".into());
    let restated = format!("{FACT} indeed");
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..16 {
        let memories = Memories::new(
            replicas[i % 2].clone(),
            Arc::new(FakeEmbedder::named("fake-a")),
            Arc::new(maestro_host::accounts::SystemClock),
        );
        let scope = if i < 8 { MemoryScope::Tenant } else { persona.clone() };
        let text = if i % 3 == 0 { restated.clone() } else { FACT.to_owned() };
        let acme = acme.clone();
        calls.spawn(async move {
            let (memory, how) =
                memories.remember(&acme, new_memory(scope.clone(), &text, &[])).await.expect("remember");
            (scope, memory.id, how)
        });
    }
    let done = calls.join_all().await;
    for scope in [MemoryScope::Tenant, persona] {
        let of_scope: Vec<_> = done.iter().filter(|(s, _, _)| *s == scope).collect();
        let inserted = of_scope.iter().filter(|(_, _, how)| *how == Remembered::Inserted).count();
        assert_eq!(inserted, 1, "one insert in {scope:?}: {of_scope:?}");
        assert!(of_scope.iter().all(|(_, id, _)| *id == of_scope[0].1), "one memory in {scope:?}: {of_scope:?}");
    }
    let all = replicas[1].memories(&acme, &MemoryFilter::default(), None, 50).await.expect("list");
    assert_eq!(all.len(), 2, "{all:?}");
}

/// The policy of the MCP tests: the shipped grants of the memory tools, and a tenant
/// whose members may search but not store.
const POLICY: &str = r#"
version = 1

[[grant]]
name = "members-memory"
subjects = ["role:member+"]
tools = ["memory.*"]

[[grant]]
name = "viewers-memory-search"
subjects = ["role:viewer"]
tools = ["memory.search"]

[[deny]]
name = "gamma-stores-nothing"
subjects = ["tenant:gamma"]
tools = ["memory.store"]
"#;

/// A `TestHost` whose tools include the memory tools over its memories, under `POLICY`,
/// served on 127.0.0.1.
async fn served(backend: Backend) -> Served {
    let mut host = TestHost::new(backend).await;
    let memories = host.memories.clone().expect("memories");
    let plugin_dir = host.dir().join("plugins");
    std::fs::create_dir_all(&plugin_dir).expect("plugin dir");
    let registry = Arc::new(PluginRegistry::new(crate::fixtures::sandbox(), plugin_dir.clone()));
    registry.refresh().await;
    let policies = PolicySet::parse([("memory.toml", POLICY)]).expect("policy");
    let secrets = SecretValues::new(Default::default(), plugin_dir.join("no-secrets"));
    host.tools = Arc::new(
        Tools::new(registry, Arc::new(PolicyStore::fixed(policies)), secrets)
            .with_credits(host.credits.clone())
            .with_host_tools(maestro_host::tools::memory::tools(memories)),
    );
    host.orchestrator = crate::harness::orchestrator(&host.store, host.clock.clone(), &host.tools);
    Served::start(host).await
}

/// A key of `role` in `tenant` (created when new).
async fn key(served: &Served, tenant: &str, role: &str) -> String {
    let platform = served.host.platform_token_again().await;
    served.host.tenant_with_key(&platform, tenant, role).await
}

async fn tenant_id(served: &Served, name: &str) -> TenantId {
    let name = TenantName::parse(name).expect("name");
    served.host.store.tenant_by_name(&name).await.expect("store").expect("tenant").id
}

/// A `tools/call` answer: whether it failed (an error result, or an invalid-params
/// error for arguments that do not fit the schema) and its structured content (or its
/// text, or the error's message).
async fn call(client: &Client, tool: &str, arguments: Value) -> (bool, Value) {
    let reply = client.request("tools/call", json!({ "name": tool, "arguments": arguments })).await;
    if let Some(error) = reply.response().get("error") {
        return (true, error["message"].clone());
    }
    let result = reply.result();
    let content = match result.get("structuredContent") {
        Some(structured) => structured.clone(),
        None => result["content"][0]["text"].clone(),
    };
    (result["isError"] == true, content)
}

async fn connect(served: &Served, token: &str, revision: &'static str) -> Client {
    let mut client = served.client(token, revision);
    client.initialize().await;
    client
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

async fn mcp_clients_call_the_memory_tools_their_role_and_policy_allow(backend: Backend) {
    let served = served(backend).await;
    let (member, viewer) = (key(&served, "acme", "member").await, key(&served, "acme", "viewer").await);
    let (gamma, beta) = (key(&served, "gamma", "member").await, key(&served, "beta", "member").await);
    for revision in [SESSIONS, STATELESS] {
        let member = connect(&served, &member, revision).await;
        let all = ["memory.forget", "memory.search", "memory.store"];
        assert_eq!(sorted(member.tool_names().await), all, "{revision}");
        let viewer = connect(&served, &viewer, revision).await;
        assert_eq!(viewer.tool_names().await, ["memory.search"], "{revision}");
        let gamma = connect(&served, &gamma, revision).await;
        assert_eq!(sorted(gamma.tool_names().await), ["memory.forget", "memory.search"], "{revision}: denied");
    }
    let member = connect(&served, &member, STATELESS).await;
    let viewer = connect(&served, &viewer, SESSIONS).await;
    let gamma = connect(&served, &gamma, SESSIONS).await;
    let beta = connect(&served, &beta, STATELESS).await;

    let (error, stored) = call(&member, "memory.store", json!({ "text": FACT, "tags": ["Billing"] })).await;
    assert!(!error, "{stored}");
    assert_eq!((stored["remembered"].clone(), stored["scope"].clone()), (json!("inserted"), json!("tenant")));
    assert_eq!(stored["tags"], json!(["billing"]));
    let id = stored["id"].as_str().expect("id").to_owned();
    let restated = format!("{FACT} indeed");
    let (error, again) = call(&member, "memory.store", json!({ "text": restated, "tags": ["finance"] })).await;
    assert!(!error, "{again}");
    assert_eq!((again["id"].clone(), again["remembered"].clone()), (json!(id), json!("updated")), "{again}");
    assert_eq!(again["tags"], json!(["billing", "finance"]));

    // Viewers search; they cannot store, and neither can the denied tenant: refused
    // before anything runs, nothing written.
    let (error, found) =
        call(&viewer, "memory.search", json!({ "query": "the customer acme pays invoices", "k": 3 })).await;
    assert!(!error, "{found}");
    let hits = found["memories"].as_array().expect("hits");
    assert_eq!((hits.len(), hits[0]["id"].clone(), hits[0]["text"].clone()), (1, json!(id), json!(restated)));
    assert!(hits[0]["score"].as_f64().expect("score") > 0.3, "{found}");
    for (who, client) in [("viewer", &viewer), ("gamma", &gamma)] {
        let reply = client.request("tools/call", json!({ "name": "memory.store", "arguments": { "text": "x" } })).await;
        let refused = reply.response();
        let denied = refused.get("error").is_some() || refused["result"]["isError"] == true;
        assert!(denied, "{who}: {refused}");
    }
    let acme = tenant_id(&served, "acme").await;
    let memories = served.host.memories.clone().expect("memories");
    assert_eq!(memories.list(&acme, &MemoryFilter::default(), None, 10).await.expect("list").len(), 1);
    let gamma_id = tenant_id(&served, "gamma").await;
    assert!(memories.list(&gamma_id, &MemoryFilter::default(), None, 10).await.expect("list").is_empty());

    // Strict arguments: error results the model can read, nothing written.
    let bad = [
        json!({ "text": "a fact", "colour": "blue" }),
        json!({ "text": "  " }),
        json!({ "text": "a fact", "tags": ["no spaces"] }),
        json!({ "text": "a fact", "scope": "galaxy" }),
        json!({ "text": "a fact", "scope": "session" }),
        json!({ "text": "a fact", "scope": "session", "session": "ses_nope" }),
        json!({ "text": "a fact", "persona": "writer" }),
    ];
    for arguments in bad {
        let (error, message) = call(&member, "memory.store", arguments.clone()).await;
        assert!(error, "{arguments}: {message}");
    }
    for arguments in [json!({ "query": "x", "k": 21 }), json!({ "query": "x", "k": 0 }), json!({ "k": 3 })] {
        let (error, message) = call(&member, "memory.search", arguments.clone()).await;
        assert!(error, "{arguments}: {message}");
    }
    assert_eq!(memories.list(&acme, &MemoryFilter::default(), None, 10).await.expect("list").len(), 1);

    // Scopes outside a run: a persona's memory, found when searching that persona.
    let (error, mine) =
        call(&member, "memory.store", json!({ "text": "prefers short answers", "persona": "team.writer" })).await;
    assert!(!error, "{mine}");
    assert_eq!((mine["scope"].clone(), mine["persona"].clone()), (json!("persona"), json!("team.writer")));
    let (_, tenant_only) = call(&member, "memory.search", json!({ "query": "short answers", "scope": "tenant" })).await;
    assert!(tenant_only["memories"].as_array().expect("hits").iter().all(|m| m["scope"] == "tenant"), "{tenant_only}");
    let (_, persona) =
        call(&member, "memory.search", json!({ "query": "short answers", "persona": "team.writer" })).await;
    assert_eq!(persona["memories"][0]["id"], mine["id"], "{persona}");

    // Another tenant finds nothing and cannot forget what it cannot see.
    let (error, nothing) = call(&beta, "memory.search", json!({ "query": "how does acme pay invoices" })).await;
    assert!(!error && nothing["memories"] == json!([]), "{nothing}");
    let (error, message) = call(&beta, "memory.forget", json!({ "id": id })).await;
    assert!(error && message.to_string().contains("memory not found"), "{message}");
    let (error, forgot) = call(&member, "memory.forget", json!({ "id": id })).await;
    assert!(!error, "{forgot}");
    let (error, message) = call(&member, "memory.forget", json!({ "id": id })).await;
    assert!(error && message.to_string().contains("memory not found"), "{message}");
}

fn uris(result: &Value) -> Vec<String> {
    result["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r["uri"].as_str().expect("uri").to_owned())
        .collect()
}

async fn memories_are_mcp_resources_of_their_tenant_only_listed_in_pages(backend: Backend) {
    let served = served(backend).await;
    let (member, viewer, beta) = (
        key(&served, "acme", "member").await,
        key(&served, "acme", "viewer").await,
        key(&served, "beta", "member").await,
    );
    let memories = served.host.memories.clone().expect("memories");
    let acme = tenant_id(&served, "acme").await;
    // One more than a page, a millisecond apart: newest first.
    let page = maestro_host::mcp::MEMORY_PAGE as usize;
    let mut ids = Vec::new();
    for i in 0..=page {
        served.host.clock.advance(chrono::Duration::milliseconds(1));
        let new = new_memory(MemoryScope::Tenant, &format!("fact number {i}"), &["n"]);
        ids.push(format!("maestro://memories/{}", memories.store(&acme, new).await.expect("store").id));
    }
    ids.reverse();
    for revision in [SESSIONS, STATELESS] {
        let client = connect(&served, &member, revision).await;
        let first = client.request("resources/list", json!({})).await;
        let first = first.result();
        let listed: Vec<String> = uris(first).into_iter().filter(|u| u.starts_with("maestro://memories/")).collect();
        assert_eq!(listed, ids[..page], "{revision}");
        let cursor = first["nextCursor"].as_str().expect("a next page").to_owned();
        let second = client.request("resources/list", json!({ "cursor": cursor })).await;
        assert_eq!(uris(second.result()), ids[page..], "{revision}: the rest, memories only");
        assert!(second.result().get("nextCursor").is_none(), "{revision}");
        let bad = client.request("resources/list", json!({ "cursor": "memories:nope" })).await;
        assert!(bad.response().get("error").is_some(), "{revision}: {:?}", bad.response());

        let templates = client.request("resources/templates/list", json!({})).await;
        let templates: Vec<&str> = templates.result()["resourceTemplates"]
            .as_array()
            .expect("templates")
            .iter()
            .map(|t| t["uriTemplate"].as_str().expect("template"))
            .collect();
        assert!(templates.contains(&"maestro://memories/{id}"), "{templates:?}");

        let read = client.request("resources/read", json!({ "uri": ids[0] })).await;
        let contents = &read.result()["contents"][0];
        assert_eq!(
            (contents["uri"].as_str(), contents["mimeType"].as_str()),
            (Some(ids[0].as_str()), Some("application/json"))
        );
        let memory: Value = serde_json::from_str(contents["text"].as_str().expect("text")).expect("json");
        assert_eq!(memory["text"], format!("fact number {page}"));
        assert_eq!((memory["tags"].clone(), memory["scope"].clone()), (json!(["n"]), json!("tenant")));
    }
    // Viewers read them too (they may search); another tenant sees none and reads none.
    let viewer = connect(&served, &viewer, SESSIONS).await;
    let read = viewer.request("resources/read", json!({ "uri": ids[0] })).await;
    assert!(read.result()["contents"][0]["text"].as_str().is_some());
    for revision in [SESSIONS, STATELESS] {
        let beta = connect(&served, &beta, revision).await;
        let listed = beta.request("resources/list", json!({})).await;
        assert!(uris(listed.result()).iter().all(|u| !u.starts_with("maestro://memories/")), "{revision}");
        assert!(listed.result().get("nextCursor").is_none());
        let read = beta.request("resources/read", json!({ "uri": ids[0] })).await;
        assert_eq!(read.response()["error"]["data"]["uri"], json!(ids[0]), "{revision}: {:?}", read.response());
        let unknown = beta.request("resources/read", json!({ "uri": "maestro://memories/mem_nope" })).await;
        assert!(unknown.response().get("error").is_some());
    }
}

async fn subscribers_hear_when_a_memory_changes_or_is_forgotten(backend: Backend) {
    let served = served(backend).await;
    let (member, beta) = (key(&served, "acme", "member").await, key(&served, "beta", "member").await);
    let client = connect(&served, &member, SESSIONS).await;
    let (_, stored) = call(&client, "memory.store", json!({ "text": FACT })).await;
    let uri = format!("maestro://memories/{}", stored["id"].as_str().expect("id"));
    let mut stream = reqwest::Client::new()
        .get(&served.url)
        .bearer_auth(&member)
        .header("accept", "text/event-stream")
        .header("mcp-protocol-version", SESSIONS)
        .header("mcp-session-id", client.session.clone().expect("a session"))
        .send()
        .await
        .expect("GET stream");
    assert_eq!(stream.status(), StatusCode::OK);
    assert_eq!(client.request("resources/subscribe", json!({ "uri": uri })).await.result(), &json!({}));
    let other = connect(&served, &beta, SESSIONS).await;
    let refused = other.request("resources/subscribe", json!({ "uri": uri })).await;
    assert_eq!(refused.response()["error"]["data"]["uri"], json!(uri), "{:?}", refused.response());

    // A restatement updates it: the subscriber hears it.
    let (_, again) = call(&client, "memory.store", json!({ "text": format!("{FACT} indeed") })).await;
    assert_eq!(again["remembered"], "updated");
    let mut buffer = String::new();
    let updated =
        crate::plugin_resources::next_notification(&mut stream, &mut buffer, "notifications/resources/updated").await;
    assert_eq!(updated["params"]["uri"], json!(uri));

    // A stateless listener names it and hears it forgotten. The listen is acknowledged
    // before the server follows changes, so the memory is forgotten after the ack.
    let stateless = connect(&served, &member, STATELESS).await;
    let params = json!({ "notifications": { "resourceSubscriptions": [uri, "maestro://elsewhere/x"] } });
    let body = stateless.body(12, "subscriptions/listen", params, json!({}));
    let mut listen = stateless.builder("subscriptions/listen", None).json(&body).send().await.expect("listen");
    assert_eq!(listen.status(), StatusCode::OK);
    let mut heard = String::new();
    let mut forgotten = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !heard.contains("notifications/resources/updated") {
        assert!(Instant::now() < deadline, "no resources/updated on the listen stream: {heard}");
        if heard.contains("notifications/subscriptions/acknowledged") && !forgotten {
            let (error, _) = call(&client, "memory.forget", json!({ "id": stored["id"] })).await;
            assert!(!error);
            forgotten = true;
        }
        if let Ok(Ok(Some(bytes))) = tokio::time::timeout(Duration::from_secs(1), listen.chunk()).await {
            heard.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    let acknowledged = heard.lines().find(|l| l.contains("notifications/subscriptions/acknowledged")).expect("ack");
    assert!(acknowledged.contains(&uri) && !acknowledged.contains("elsewhere"), "{acknowledged}");
    assert!(heard.contains(&format!("\"uri\":\"{uri}\"")), "{heard}");
    let read = client.request("resources/read", json!({ "uri": uri })).await;
    assert!(read.response().get("error").is_some(), "forgotten: {:?}", read.response());
}

/// The model directory, from `MAESTRO_EMBEDDINGS_MODEL_DIR` (`scripts/test` exports it).
fn model_dir() -> String {
    std::env::var("MAESTRO_EMBEDDINGS_MODEL_DIR").ok().filter(|d| !d.trim().is_empty()).unwrap_or_else(|| {
        panic!("MAESTRO_EMBEDDINGS_MODEL_DIR is not set: run `export MAESTRO_EMBEDDINGS_MODEL_DIR=$(scripts/model.sh)`")
    })
}

/// Posts `content` to `session` and returns the run's events once it ended.
async fn run(server: &Server, member: &str, session: &str, content: &str) -> (String, Vec<(String, Value)>) {
    let (status, posted) = server
        .call(
            reqwest::Method::POST,
            &format!("/v1/sessions/{session}/messages"),
            member,
            Some(json!({ "content": content })),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{posted}");
    let run = posted["run"]["id"].as_str().expect("run").to_owned();
    let stream = Stream::open(&server.base, &format!("/v1/runs/{run}/events"), member, None).await.expect("stream");
    let events = tokio::time::timeout(Duration::from_secs(120), stream.rest()).await.expect("the run ends in time");
    let events: Vec<(String, Value)> = events.iter().map(|e| (e.event.clone(), data(e)["data"].clone())).collect();
    assert_eq!(events.last().map(|(k, _)| k.as_str()), Some("run.completed"), "{events:?}");
    (run, events)
}

async fn an_agent_stores_a_fact_in_one_session_and_a_run_of_another_session_finds_it(backend: Backend) {
    let fake = FakeLlm::start().await;
    let db = TestDb::new(backend).await;
    let mut command = crate::server::serve_personas(&db, backend, &fake, &["personas.*", "memory.*"]);
    command.env("MAESTRO_EMBEDDINGS_MODEL_DIR", model_dir());
    // One scripted model answer per persona turn: the post-run distillation job (tested
    // in `recall`) would take the next run's answer.
    command.env("MAESTRO_MEMORY_DISTIL", "false");
    let server = Server::start(command, &db.dir(), 1).await;
    let platform = server.bootstrap_token();
    let (status, _) =
        server.call(reqwest::Method::POST, "/v1/tenants", &platform, Some(json!({ "name": "acme" }))).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, key) = server
        .call(reqwest::Method::POST, "/v1/keys", &platform, Some(json!({ "tenant": "acme", "role": "member" })))
        .await;
    let member = key["token"].as_str().expect("token").to_owned();
    let session = |title: &'static str| {
        let (server, member) = (&server, &member);
        async move {
            let body = json!({ "title": title, "personas": ["personas.writer"], "strategy": "sequence" });
            let (status, session) = server.call(reqwest::Method::POST, "/v1/sessions", member, Some(body)).await;
            assert_eq!(status, StatusCode::CREATED, "{session}");
            session["id"].as_str().expect("session id").to_owned()
        }
    };
    let (first, second) = (session("onboarding").await, session("invoicing").await);

    let fact = "Acme pays its invoices in euros by bank transfer";
    let store = json!({ "text": fact, "tags": ["billing"] }).to_string();
    fake.push(Script::openai_tool_calls(&[("c1", "memory_store", &store)], usage(100, 10)));
    fake.push(Script::openai_text("I will remember that.", usage(100, 10)));
    let (stored_by, events) = run(&server, &member, &first, "Remember: Acme pays in euros by bank transfer.").await;
    let result = events.iter().find(|(k, _)| k == "tool.result").map(|(_, e)| e.clone()).expect("a tool result");
    assert_eq!((result["tool"].clone(), result["ok"].clone()), (json!("memory.store"), json!(true)), "{result}");
    let offered: Vec<String> = fake.requests()[0].body["tools"]
        .as_array()
        .expect("tools offered")
        .iter()
        .map(|t| t["function"]["name"].as_str().expect("name").to_owned())
        .collect();
    for tool in ["memory_search", "memory_store", "memory_forget"] {
        assert!(offered.contains(&tool.to_owned()), "{tool} offered: {offered:?}");
    }

    let search = json!({ "query": "In which currency does Acme pay?" }).to_string();
    fake.push(Script::openai_tool_calls(&[("c2", "memory_search", &search)], usage(100, 10)));
    fake.push(Script::openai_text("Acme pays in euros.", usage(100, 10)));
    let (_, events) = run(&server, &member, &second, "How does Acme pay?").await;
    let result = events.iter().find(|(k, _)| k == "tool.result").map(|(_, e)| e.clone()).expect("a tool result");
    assert_eq!((result["tool"].clone(), result["ok"].clone()), (json!("memory.search"), json!(true)), "{result}");
    let content = result["content"].as_str().expect("content");
    assert!(content.contains(fact), "the other session's run found it: {content}");
    // The model read the result in its next request.
    let requests = fake.requests();
    assert!(requests.last().expect("a request").body.to_string().contains(fact));

    // Over the API: one memory, of the tenant, its source the first run (step 1).
    let (_, listed) = server.call(reqwest::Method::GET, "/v1/memories", &member, None).await;
    let memories = listed["memories"].as_array().expect("memories");
    assert_eq!(memories.len(), 1, "{listed}");
    assert_eq!((memories[0]["text"].as_str(), memories[0]["scope"].as_str()), (Some(fact), Some("tenant")));
    assert_eq!(memories[0]["source"]["run"], json!(stored_by), "{listed}");
    assert_eq!(memories[0]["embedder"], "minilm/all-MiniLM-L6-v2@384", "the offline model embedded it");
    server.stop().await;
}

/// `params` as `revision` sends them: the stateless revision names itself and the
/// client's capabilities in every request's `_meta` (there is no `initialize`).
fn stdio_params(revision: &str, mut params: Value) -> Value {
    if revision == STATELESS {
        params["_meta"] = json!({
            "io.modelcontextprotocol/protocolVersion": STATELESS,
            "io.modelcontextprotocol/clientCapabilities": {},
        });
    }
    params
}

/// `maestro mcp` over stdio, in both revisions (2025-11-25 initialises a session;
/// 2026-07-28 is stateless, its version in each request's `_meta`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_stores_searches_and_reads_memories() {
    let db = TestDb::new(Backend::Sqlite).await;
    let maestro = || {
        let mut command = crate::server::maestro_with(&db, Backend::Sqlite, &[], POLICY);
        command.env("MAESTRO_EMBEDDINGS_MODEL_DIR", model_dir());
        command
    };
    for tenant in ["acme", "beta"] {
        crate::server::run({
            let mut c = maestro();
            c.args(["tenant", "create", tenant]);
            c
        });
    }
    for revision in [SESSIONS, STATELESS] {
        let p = |params: Value| stdio_params(revision, params);
        let mut acme =
            StdioMcp::spawn(maestro(), &["mcp", "--tenant", "acme", "--role", "member"], std::process::Stdio::null());
        if revision == SESSIONS {
            acme.initialize(SESSIONS);
        }
        let fact = format!("The office of {revision} is in Lyon");
        let stored = acme.ask(2, "tools/call", p(json!({ "name": "memory.store", "arguments": { "text": fact } })));
        assert_eq!(stored["result"]["isError"], false, "{revision}: {stored}");
        let id = stored["result"]["structuredContent"]["id"].as_str().expect("id").to_owned();
        let search =
            json!({ "name": "memory.search", "arguments": { "query": format!("where is the office of {revision}?") } });
        let found = acme.ask(3, "tools/call", p(search.clone()));
        assert_eq!(found["result"]["structuredContent"]["memories"][0]["id"], json!(id), "{revision}: {found}");
        let listed = acme.ask(4, "resources/list", p(json!({})));
        let uri = format!("maestro://memories/{id}");
        assert!(uris(&listed["result"]).contains(&uri), "{revision}: {listed}");
        let read = acme.ask(5, "resources/read", p(json!({ "uri": uri })));
        let text = read["result"]["contents"][0]["text"].as_str().expect("text");
        assert!(text.contains(&fact), "{revision}: {read}");
        acme.close();

        let mut viewer =
            StdioMcp::spawn(maestro(), &["mcp", "--tenant", "beta", "--role", "viewer"], std::process::Stdio::null());
        if revision == SESSIONS {
            viewer.initialize(SESSIONS);
        }
        let tools = viewer.ask(2, "tools/list", p(json!({})));
        let names: Vec<&str> = tools["result"]["tools"]
            .as_array()
            .expect("tools")
            .iter()
            .map(|t| t["name"].as_str().expect("name"))
            .collect();
        assert_eq!(names, ["memory.search"], "{revision}");
        let nothing = viewer.ask(3, "tools/call", p(search));
        assert_eq!(nothing["result"]["structuredContent"]["memories"], json!([]), "{revision}: {nothing}");
        let read = viewer.ask(4, "resources/read", p(json!({ "uri": uri })));
        assert_eq!(read["error"]["data"]["uri"], json!(uri), "{revision}: {read}");
        viewer.close();
    }
}

/// Two processes on one Postgres (here: two stores, each with its own signal): a memory
/// edited or forgotten through one is announced to the other's subscribers (what its
/// MCP `resources/updated` follows), and a process never hears its own notices twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_changed_through_one_replica_reaches_the_other_replicas_subscribers() {
    let db = TestDb::new(Backend::Postgres).await;
    let (first, second) = (db.open().await, db.open().await);
    let acme = tenant(&first, "acme").await;
    let replica = |store: &Arc<dyn Store>| {
        let embedder = Arc::new(FakeEmbedder::named("fake-a"));
        Memories::new(store.clone(), embedder, ManualClock::new()).with_signal(store.clone())
    };
    let (one, two) = (replica(&first), replica(&second));
    let memory = one.store(&acme, new_memory(MemoryScope::Tenant, FACT, &[])).await.expect("store");
    let (mut heard_by_two, mut heard_by_one) = (two.changes(), one.changes());
    // The other's listener connects in the background: edit until a notice arrives.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut edits = 0;
    let heard = loop {
        assert!(Instant::now() < deadline, "the other replica heard nothing");
        let edit = maestro_host::memory::MemoryEdit { tags: Some(vec!["billing".into()]), ..Default::default() };
        one.edit(&acme, &memory.id, edit).await.expect("edit");
        edits += 1;
        if let Ok(Ok(changed)) = tokio::time::timeout(Duration::from_secs(1), heard_by_two.recv()).await {
            break changed;
        }
    };
    assert_eq!((heard.tenant, heard.memory.clone()), (acme.clone(), memory.id.clone()));
    one.delete(&acme, &memory.id).await.expect("delete");
    let deleted = loop {
        let changed = tokio::time::timeout_at(deadline.into(), heard_by_two.recv()).await.expect("in time");
        let changed = changed.expect("open");
        // Later edits of the loop above may still be on their way.
        if changed.memory == memory.id && two.get(&acme, &memory.id).await.is_err() {
            break changed;
        }
    };
    assert_eq!(deleted.memory, memory.id);
    // The first replica announced its own changes in process, once each (its notices
    // coming back from the database are not heard again).
    let mut own = 0;
    while let Ok(changed) = heard_by_one.try_recv() {
        assert_eq!(changed.memory, memory.id);
        own += 1;
    }
    assert_eq!(own, edits + 1, "each edit and the deletion, once");
}
