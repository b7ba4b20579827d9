//! A real `maestro serve` killed with SIGKILL while writes stream in (messages over the
//! REST API, each starting a run whose answer is another message, and document
//! creations and edits) and its indexer commits every 50 ms: restarted, and once the
//! runs have finished and the index has caught up with the outbox, the index holds
//! exactly the database's objects, each once and with its current title and text (no
//! missing, no ghost). The index is read with `maestro index ids`, the database through
//! the store (what a rebuild would read). Both backends.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use maestro_core::search::SearchKind;
use maestro_core::{Store, TenantName};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Digest as _;

use crate::fake_llm::{FakeLlm, Script, usage};
use crate::harness::{Backend, TestDb, backend_tests};
use crate::server::{Server, run, serve_personas, stdout};

backend_tests!(a_server_killed_while_indexing_restarts_with_exactly_the_databases_objects_indexed);

/// How many times the server is killed mid-stream.
const KILLS: u32 = 2;
/// Sessions written to at once.
const SESSIONS: usize = 3;
const PM: &str = "personas.product_manager";

/// An object as the index or the database holds it: kind, id, tenant, and the sha256 of
/// its title, a NUL and its text (as `maestro index ids` prints it).
type Object = (String, String, String, String);

fn digest(title: &str, text: &str) -> String {
    let mut hash = sha2::Sha256::new();
    hash.update(title.as_bytes());
    hash.update([0u8]);
    hash.update(text.as_bytes());
    hex::encode(hash.finalize())
}

/// `maestro index …` on the test's data directory, its stdout parsed as JSON (the CLI
/// itself retries a read that lost the race with the server's writer replacing a
/// commit).
fn index_command(db: &TestDb, backend: Backend, args: &[&str]) -> Value {
    let mut command = crate::server::maestro(db, backend);
    command.env("MAESTRO_CONFIG", db.dir().join("maestro.toml")).arg("index").args(args).arg("--json");
    serde_json::from_str(&stdout(&run(command))).expect("json")
}

/// What the index's last commit holds.
fn indexed(db: &TestDb, backend: Backend) -> Vec<Object> {
    let listed = index_command(db, backend, &["ids"]);
    listed
        .as_array()
        .expect("a list")
        .iter()
        .map(|o| {
            let field = |name: &str| o[name].as_str().expect("a string field").to_owned();
            (field("kind"), field("id"), field("tenant"), field("sha256"))
        })
        .collect()
}

/// Every object the database holds, of every kind (what a rebuild reads).
async fn stored(store: &std::sync::Arc<dyn Store>) -> Vec<Object> {
    let mut objects = Vec::new();
    for kind in SearchKind::ALL {
        let mut after: Option<String> = None;
        loop {
            let page = store.searchable_page(kind, after.as_deref(), 200).await.expect("page");
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            objects.extend(page.iter().map(|o| {
                (o.kind.as_str().to_owned(), o.id.clone(), o.tenant.as_str().to_owned(), digest(&o.title, &o.text))
            }));
        }
    }
    objects
}

/// What the writers had acknowledged when their server died.
#[derive(Default)]
struct Acked {
    messages: Vec<String>,
    documents: Vec<String>,
}

/// Posts messages to `session` until the server stops answering.
async fn post_messages(base: String, member: String, session: String, round: u32) -> Acked {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().expect("client");
    let mut acked = Acked::default();
    for i in 0..60 {
        let reply = http
            .post(format!("{base}/v1/sessions/{session}/messages"))
            .bearer_auth(&member)
            .json(&json!({ "content": format!("round {round} note {i}: the kestrel nests on tower {i}") }))
            .send()
            .await;
        let Ok(reply) = reply else { break };
        if reply.status() != StatusCode::ACCEPTED {
            break;
        }
        let Ok(body) = reply.json::<Value>().await else { break };
        acked.messages.push(body["message"]["id"].as_str().expect("message id").to_owned());
    }
    acked
}

/// Creates documents and edits each a few times until the server stops answering.
async fn write_documents(base: String, member: String, round: u32) -> Acked {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().expect("client");
    let mut acked = Acked::default();
    'documents: for d in 0..20 {
        let created = http
            .post(format!("{base}/v1/documents"))
            .bearer_auth(&member)
            .json(&json!({ "title": format!("plan {round}.{d}"), "kind": "markdown", "content": "# Plan\n" }))
            .send()
            .await;
        let Ok(created) = created else { break };
        if created.status() != StatusCode::CREATED {
            break;
        }
        let Ok(body) = created.json::<Value>().await else { break };
        let id = body["id"].as_str().expect("document id").to_owned();
        acked.documents.push(id.clone());
        for version in 1..=4 {
            let edited = http
                .put(format!("{base}/v1/documents/{id}"))
                .bearer_auth(&member)
                .header("if-match", format!("\"{version}\""))
                .json(&json!({ "content": format!("# Plan\n\n- falcon step {version} of plan {round}.{d}\n") }))
                .send()
                .await;
            match edited {
                Ok(reply) if reply.status() == StatusCode::OK => {}
                _ => break 'documents,
            }
        }
    }
    acked
}

/// Polls `check` until it holds, failing after `limit`.
async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn a_server_killed_while_indexing_restarts_with_exactly_the_databases_objects_indexed(backend: Backend) {
    let fake = FakeLlm::start().await;
    fake.always(Script::openai_text("noted, and the kestrel is on the list", usage(10, 6)));
    let db = TestDb::new(backend).await;
    let command = || {
        let command = serve_personas(&db, backend, &fake, &["personas.*"]);
        // Short leases (a killed server's runs are taken over soon) and a fast indexer
        // (commits every 50 ms while writes arrive, so that the kill lands among them).
        let config = fake.serve_config().replacen("[jobs]\n", "[jobs]\nlease = \"2s\"\n", 1)
            + "\n[search]\ncommit_interval = \"50ms\"\ncommit_batch = 25\npoll_interval = \"20ms\"\n";
        std::fs::write(db.dir().join("maestro.toml"), config).expect("config");
        command
    };
    let mut server = Server::start(command(), &db.dir(), 1).await;
    let platform = server.bootstrap_token();
    let (status, _) = server.call(Method::POST, "/v1/tenants", &platform, Some(json!({ "name": "acme" }))).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, key) =
        server.call(Method::POST, "/v1/keys", &platform, Some(json!({ "tenant": "acme", "role": "member" }))).await;
    let member = key["token"].as_str().expect("token").to_owned();
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        let (status, session) = server
            .call(Method::POST, "/v1/sessions", &member, Some(json!({ "personas": [PM], "strategy": "sequence" })))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{session}");
        sessions.push(session["id"].as_str().expect("session id").to_owned());
    }

    let mut acked = Acked::default();
    let mut pending_at_kills = Vec::new();
    for round in 1..=KILLS {
        let mut writers = Vec::new();
        for session in &sessions {
            writers.push(tokio::spawn(post_messages(server.base.clone(), member.clone(), session.clone(), round)));
        }
        writers.push(tokio::spawn(write_documents(server.base.clone(), member.clone(), round)));
        // Kill once the index has committed this round's writes in part, while they
        // still stream in.
        let committed_before = index_command(&db, backend, &["status"])["docs"].as_u64().unwrap_or(0);
        wait_until("the index to commit some of the round's writes", Duration::from_secs(60), || {
            let docs = index_command(&db, backend, &["status"])["docs"].as_u64().unwrap_or(0);
            async move { docs >= committed_before + 30 }
        })
        .await;
        let pid = server.child.id().to_string();
        assert!(std::process::Command::new("kill").args(["-KILL", &pid]).status().expect("kill").success());
        server.child.wait().expect("the killed server is reaped");
        for writer in writers {
            let done = writer.await.expect("writer");
            acked.messages.extend(done.messages);
            acked.documents.extend(done.documents);
        }
        let status = index_command(&db, backend, &["status"]);
        pending_at_kills.push(status["pending"].as_u64().expect("pending"));
        server = Server::start(command(), &db.dir(), round + 1).await;
    }
    assert!(
        pending_at_kills.iter().any(|p| *p > 0),
        "a kill came while changes waited to be indexed: {pending_at_kills:?}"
    );

    // The runs the messages started finish (those of a killed server are taken over),
    // then nothing writes any more and the index catches up with the outbox.
    let store = match backend {
        // A `maestro` process keeps its embedded store under its data directory.
        Backend::Sqlite => {
            maestro_host::storage::open(&maestro_host::storage::StoreLocation::Sqlite(db.dir().join("data/maestro.db")))
                .await
                .expect("the server's store opens")
        }
        Backend::Postgres => db.open().await,
    };
    let tenant = store.tenant_by_name(&TenantName::parse("acme").expect("name")).await.expect("read").expect("tenant");
    for session in &sessions {
        let session = maestro_core::run::SessionId::parse(session).expect("session id");
        wait_until("every run to finish", Duration::from_secs(120), || {
            let (store, tenant, session) = (store.clone(), tenant.id.clone(), session.clone());
            async move { store.runs(&tenant, &session, 1000).await.expect("runs").iter().all(|r| r.state.is_final()) }
        })
        .await;
    }
    wait_until("the index to catch up with the outbox", Duration::from_secs(60), || {
        let status = index_command(&db, backend, &["status"]);
        async move {
            status["pending"] == 0 && status["needs_rebuild"] == false && status["watermark"] == status["outbox_head"]
        }
    })
    .await;

    let in_index = indexed(&db, backend);
    let in_database = stored(&store).await;
    let index_set: BTreeSet<&Object> = in_index.iter().collect();
    assert_eq!(index_set.len(), in_index.len(), "no object is indexed twice");
    let database_set: BTreeSet<&Object> = in_database.iter().collect();
    let missing: Vec<_> = database_set.difference(&index_set).collect();
    let ghosts: Vec<_> = index_set.difference(&database_set).collect();
    assert!(missing.is_empty() && ghosts.is_empty(), "missing from the index: {missing:?}\nghosts: {ghosts:?}");

    // The writes the test saw acknowledged are there (and so the comparison covered
    // them), as are the runs' answers.
    let mut ids_by_kind: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (kind, id, _, _) in &in_index {
        ids_by_kind.entry(kind.as_str()).or_default().insert(id.as_str());
    }
    let messages = ids_by_kind.get("message").cloned().unwrap_or_default();
    let documents = ids_by_kind.get("document").cloned().unwrap_or_default();
    assert!(acked.messages.len() >= 10 && acked.documents.len() >= 2, "writes streamed in");
    for id in &acked.messages {
        assert!(messages.contains(id.as_str()), "acknowledged message {id} is indexed");
    }
    for id in &acked.documents {
        assert!(documents.contains(id.as_str()), "acknowledged document {id} is indexed");
    }
    assert!(messages.len() > acked.messages.len(), "the runs' answers are indexed too");
    println!(
        "{} objects indexed ({} messages, {} documents); changes waiting at the kills: {pending_at_kills:?}",
        in_index.len(),
        messages.len(),
        documents.len()
    );
    drop(store);
    server.stop().await;
}
