//! Full-text search on both backends: the outbox written with the rows it indexes, the
//! index following it (messages and document edits become searchable, restart replays
//! the outbox past the watermark, a deleted or corrupted index or one behind the
//! outbox's pruning is rebuilt), memories indexed with their tags and gone after delete,
//! Postgres transactions committing out of order, tenant isolation against hostile
//! queries over `POST /v1/search` (text and hybrid), and `maestro index`.
//! Tests wait for the index's status to reach the outbox head, never sleep.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use maestro_core::document::{DocAuthor, DocumentKind, TextEdit};
use maestro_core::memory::MemoryScope;
use maestro_core::run::{Author, Message, RunLimits, Session, SessionId, Strategy};
use maestro_core::search::{ChangeOp, OutboxPosition, SearchChange, SearchKind};
use maestro_core::{Clock, Store, TenantId};
use maestro_host::documents::NewDocument;
use maestro_host::memory::NewMemory;
use maestro_host::search::{Access, FullText, SearchSettings, TextFilters};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::harness::{Backend, TestDb, TestHost, backend_tests};
use crate::server::{maestro, run, stdout};
use crate::storage_runs::{fresh, t0, tenant};

backend_tests!(
    messages_and_document_edits_become_searchable_to_their_tenant_only,
    hostile_queries_never_return_another_tenants_objects_nor_a_server_error,
    a_restarted_index_replays_the_outbox_past_its_watermark_without_rebuilding,
    a_deleted_or_corrupted_index_is_rebuilt_with_the_same_top_ten,
    an_index_behind_the_outbox_pruning_is_rebuilt,
    index_rebuild_and_status_commands_work_offline,
    memories_are_found_by_words_follow_their_edits_and_are_gone_after_delete,
);

/// A running index and its indexer.
pub(crate) struct Running {
    pub(crate) index: FullText,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub(crate) async fn stop(self) -> FullText {
        self.stop.cancel();
        self.task.await.expect("the indexer ends");
        self.index
    }
}

/// Short cadences so that tests wait milliseconds.
fn settings(dir: &Path) -> SearchSettings {
    SearchSettings {
        commit_interval: Duration::from_millis(20),
        poll_interval: Duration::from_millis(10),
        writer_memory_bytes: 15_000_000,
        ..SearchSettings::under(dir)
    }
}

pub(crate) fn open(store: &Arc<dyn Store>, clock: Arc<dyn Clock>, dir: &Path) -> FullText {
    FullText::open(settings(dir), store.clone(), clock, Access::Write).expect("the index opens")
}

pub(crate) fn start(index: FullText) -> Running {
    let stop = CancellationToken::new();
    let task = index.spawn_indexer(stop.clone());
    Running { index, stop, task }
}

/// Waits until the index has committed everything in the outbox (nothing pending after
/// its watermark) and is not rebuilding; polls the status, fails after a deadline.
pub(crate) async fn caught_up(store: &Arc<dyn Store>, index: &FullText) {
    let mut status = index.watch();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let now = status.borrow_and_update().clone();
        if let Some(watermark) = now.watermark
            && !now.rebuilding
            && !index.needs_rebuild()
            && store.outbox_status(watermark).await.expect("outbox status").pending == 0
        {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the index did not catch up: {now:?}");
        // Wake on the next commit, or poll again (rows may wait for other transactions).
        let _ = tokio::time::timeout(Duration::from_millis(25), status.changed()).await;
    }
}

pub(crate) async fn new_session(store: &Arc<dyn Store>, tenant: &TenantId) -> SessionId {
    let session = Session {
        id: fresh(),
        tenant: tenant.clone(),
        title: "search".into(),
        personas: vec!["team.writer".into()],
        strategy: Strategy::RoundRobin,
        limits: RunLimits {
            max_steps: 5,
            max_tool_calls_per_step: 3,
            credits_budget: None,
            deadline_secs: 120,
            wait_timeout_secs: None,
        },
        created_by: "key_test".into(),
        created_at: t0(),
    };
    store.create_session(&session).await.expect("session");
    session.id
}

/// Writes a message through a unit of work, as the orchestrator does; returns its id.
pub(crate) async fn say(store: &Arc<dyn Store>, session: &SessionId, text: &str) -> String {
    let message = Message {
        id: fresh(),
        session: session.clone(),
        seq: 0,
        author: Author::Persona { name: "team.writer".into() },
        content: text.into(),
        run: None,
        at: t0(),
    };
    let mut tx = store.begin().await.expect("begin");
    let stored = tx.insert_message(&message).await.expect("insert");
    tx.commit().await.expect("commit");
    stored.id.to_string()
}

async fn ids(index: &FullText, tenant: &TenantId, query: &str) -> Vec<String> {
    let hits = index.full_text(tenant, query, &TextFilters::default(), 10).await.expect("search");
    hits.into_iter().map(|h| h.id).collect()
}

/// `POST /v1/search`, in mode `text` unless `body` names a mode.
async fn search(host: &TestHost, token: &str, mut body: Value) -> crate::harness::Reply {
    if body.get("mode").is_none() {
        body["mode"] = json!("text");
    }
    host.post("/v1/search", Some(token), body).await
}

pub(crate) fn hit_ids(reply: &crate::harness::Reply) -> Vec<String> {
    let hits = reply.body["hits"].as_array().unwrap_or_else(|| panic!("hits: {reply:?}"));
    hits.iter().map(|h| h["id"].as_str().expect("id").to_owned()).collect()
}

async fn messages_and_document_edits_become_searchable_to_their_tenant_only(backend: Backend) {
    let mut host = TestHost::new(backend).await;
    let running = start(open(&host.store, host.clock.clone(), &host.dir().join("index")));
    host.search = Some(running.index.clone());
    let platform = host.platform_token().await;
    let acme_token = host.tenant_with_key(&platform, "acme", "viewer").await;
    let globex_token = host.tenant_with_key(&platform, "globex", "viewer").await;
    let acme = host.accounts.tenant_named("acme").await.expect("acme").id;
    let globex = host.accounts.tenant_named("globex").await.expect("globex").id;
    let acme_session = new_session(&host.store, &acme).await;
    let other_session = new_session(&host.store, &acme).await;
    let globex_session = new_session(&host.store, &globex).await;
    let acme_message = say(&host.store, &acme_session, "The quarterly zebra migration plan is ready").await;
    let acme_other = say(&host.store, &other_session, "A zebra crossing near the office").await;
    let globex_message = say(&host.store, &globex_session, "Globex keeps its zebra secrets").await;
    let author = DocAuthor::User { key: "key_test".into() };
    let new = NewDocument {
        title: "Bird survey".into(),
        kind: DocumentKind::Markdown,
        content: "We counted pelicans on the lake.".into(),
        session: Some(acme_session.clone()),
    };
    let created = host.documents.create(&acme, new, author.clone()).await.expect("document");
    let document = created.document.id.to_string();
    let edit = vec![TextEdit { old: "pelicans".into(), new: "flamingos".into() }];
    host.documents.edit(&acme, &created.document.id, 1, edit, author).await.expect("edit");
    caught_up(&host.store, &running.index).await;

    let reply = search(&host, &acme_token, json!({ "query": "zebra" })).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(hit_ids(&reply).into_iter().collect::<HashSet<_>>(), HashSet::from([acme_message.clone(), acme_other]));
    let first = &reply.body["hits"][0];
    assert_eq!(first["kind"], "message");
    assert_eq!(first["rank"], 1);
    assert!(first["snippet"].as_str().expect("snippet").to_lowercase().contains("zebra"), "{first}");
    assert!(!first["highlights"].as_array().expect("highlights").is_empty(), "{first}");

    let reply = search(&host, &acme_token, json!({ "query": "zebra", "session": acme_session.to_string() })).await;
    assert_eq!(hit_ids(&reply), std::slice::from_ref(&acme_message));
    let reply = search(&host, &acme_token, json!({ "query": "zebra", "kinds": ["document"] })).await;
    assert!(hit_ids(&reply).is_empty(), "{reply:?}");

    // The current version is indexed, the earlier one no longer matches.
    let reply = search(&host, &acme_token, json!({ "query": "flamingos" })).await;
    assert_eq!(hit_ids(&reply), std::slice::from_ref(&document));
    assert_eq!(reply.body["hits"][0]["kind"], "document");
    assert_eq!(reply.body["hits"][0]["title"], "Bird survey");
    let reply = search(&host, &acme_token, json!({ "query": "pelicans" })).await;
    assert!(hit_ids(&reply).is_empty(), "the old version is gone: {reply:?}");
    let reply = search(&host, &acme_token, json!({ "query": "survey", "kinds": ["document"] })).await;
    assert_eq!(hit_ids(&reply), [document], "titles are searched");

    let reply = search(&host, &globex_token, json!({ "query": "zebra" })).await;
    assert_eq!(hit_ids(&reply), [globex_message]);
    let reply = search(&host, &globex_token, json!({ "query": "flamingos" })).await;
    assert!(hit_ids(&reply).is_empty());

    // Refusals are clear 4xx answers.
    for (body, code) in [
        (json!({ "query": "  " }), "invalid_request"),
        (json!({ "query": "x".repeat(2000) }), "invalid_request"),
        (json!({ "query": "zebra", "kinds": ["bogus"] }), "invalid_request"),
        (json!({ "query": "zebra", "limit": 0 }), "invalid_request"),
        (json!({ "query": "zebra", "mode": "telepathy" }), "invalid_request"),
    ] {
        let reply = search(&host, &acme_token, body.clone()).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {reply:?}");
        assert_eq!(reply.code(), code);
    }
    let reply = search(&host, &platform, json!({ "query": "zebra" })).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "a platform key has no tenant: {reply:?}");
    running.stop().await;
}

async fn hostile_queries_never_return_another_tenants_objects_nor_a_server_error(backend: Backend) {
    let mut host = TestHost::new(backend).await;
    let running = start(open(&host.store, host.clock.clone(), &host.dir().join("index")));
    host.search = Some(running.index.clone());
    let platform = host.platform_token().await;
    let acme_token = host.tenant_with_key(&platform, "acme", "member").await;
    host.tenant_with_key(&platform, "globex", "member").await;
    let acme = host.accounts.tenant_named("acme").await.expect("acme").id;
    let globex = host.accounts.tenant_named("globex").await.expect("globex").id;
    let mine = new_session(&host.store, &acme).await;
    let theirs = new_session(&host.store, &globex).await;
    let mut acme_ids = HashSet::new();
    for text in ["shared words alpha beta", "alpha only here", "the tenant field is acme"] {
        acme_ids.insert(say(&host.store, &mine, text).await);
    }
    let mut globex_ids = Vec::new();
    for text in ["shared words alpha beta gamma", "globex secret alpha", "tenant globex confidential"] {
        globex_ids.push(say(&host.store, &theirs, text).await);
    }
    // Memories too: the hybrid mode's vector side searches them.
    let memories = host.memories.clone().expect("memories");
    let mine_remembered = memories.store(&acme, remember("alpha remembered by acme")).await.expect("memory");
    acme_ids.insert(mine_remembered.id.to_string());
    memories.store(&globex, remember("globex secret alpha remembered")).await.expect("memory");
    caught_up(&host.store, &running.index).await;

    let g = globex.as_str();
    let gm = &globex_ids[0];
    let mut hostile: Vec<String> = [
        "alpha",
        "*",
        "* OR *",
        "alpha OR secret OR confidential",
        "tenant:GLOBEX",
        "+tenant:GLOBEX",
        "tenant:GLOBEX OR alpha",
        "(tenant:GLOBEX) OR (tenant:ACME)",
        "-tenant:ACME",
        "NOT alpha",
        "id:GM",
        "key:message:GM",
        "kind:message",
        "session:*",
        "tenant:*",
        "tenant:[a TO z]",
        "created:[* TO *]",
        "created:>1970-01-01T00:00:00Z",
        "title:[a TO zzzz]",
        "text:/.*/",
        "/.*secret.*/",
        "secr*",
        "s*",
        "\"shared words",
        "alpha~2",
        "alpha^100",
        "((((((((alpha",
        "alpha))))))",
        "AND OR NOT",
        "\"\"",
        "+",
        "-",
        ":",
        "tenant:",
        "alpha\u{0}tenant:GLOBEX",
        "alpha\r\ntenant:GLOBEX",
        "\u{202e}alpha",
        "🦓 alpha",
        "IN [GLOBEX]",
        "tenant: IN [GLOBEX ACME]",
        "alpha AND tenant:GLOBEX",
        "field_that_does_not_exist:alpha",
        "text:alpha OR tenant:GLOBEX",
        "alpha || tenant:GLOBEX",
        "*:*",
        "_exists_:tenant",
        "title:\"a b\"~1000000",
    ]
    .iter()
    .map(|q| q.replace("GLOBEX", g).replace("ACME", acme.as_str()).replace("GM", gm))
    .collect();
    hostile.push(format!("alpha {}", "x".repeat(10_000)));
    hostile.push("alpha ".repeat(170));
    hostile.push((0..500).map(|i| format!("t{i}")).collect::<Vec<_>>().join(" OR "));
    let mut answered = 0;
    for query in &hostile {
        for (mode, kinds) in
            [("text", json!([])), ("text", json!(["message", "document", "memory"])), ("hybrid", json!([]))]
        {
            let body = json!({ "query": query, "kinds": kinds, "limit": 100, "mode": mode });
            let reply = search(&host, &acme_token, body).await;
            assert!(
                reply.status == StatusCode::OK || reply.status == StatusCode::UNPROCESSABLE_ENTITY,
                "{query:?}: {reply:?}"
            );
            if reply.status == StatusCode::OK {
                answered += 1;
                for id in hit_ids(&reply) {
                    assert!(acme_ids.contains(&id), "{query:?} returned {id}, not acme's");
                }
            }
        }
    }
    assert!(answered > 2 * hostile.len(), "most hostile queries get a lenient answer");
    let everything = search(&host, &acme_token, json!({ "query": "*" })).await;
    assert_eq!(hit_ids(&everything).into_iter().collect::<HashSet<_>>(), acme_ids, "`*` is all of acme's, only");
    running.stop().await;
}

/// A tenant-scoped memory of `text`.
pub(crate) fn remember(text: &str) -> NewMemory {
    NewMemory { scope: MemoryScope::Tenant, text: text.into(), tags: Vec::new(), pinned: false, source: None }
}

async fn memories_are_found_by_words_follow_their_edits_and_are_gone_after_delete(backend: Backend) {
    let mut host = TestHost::new(backend).await;
    let dir = host.dir().join("index");
    let running = start(open(&host.store, host.clock.clone(), &dir));
    host.search = Some(running.index.clone());
    let platform = host.platform_token().await;
    let acme_token = host.tenant_with_key(&platform, "acme", "member").await;
    let globex_token = host.tenant_with_key(&platform, "globex", "member").await;
    let created = host
        .post(
            "/v1/memories",
            Some(&acme_token),
            json!({ "text": "The customer prefers invoices in Swiss francs", "tags": ["Billing", "currency"] }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let id = created.body["id"].as_str().expect("id").to_owned();
    let theirs =
        host.post("/v1/memories", Some(&globex_token), json!({ "text": "Globex also invoices in Swiss francs" })).await;
    assert_eq!(theirs.status, StatusCode::CREATED, "{theirs:?}");
    caught_up(&host.store, &running.index).await;

    let reply = search(&host, &acme_token, json!({ "query": "francs" })).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(hit_ids(&reply), std::slice::from_ref(&id), "acme's memory only");
    let hit = &reply.body["hits"][0];
    assert_eq!(hit["kind"], "memory");
    assert_eq!(hit["tags"], json!(["billing", "currency"]));
    assert_eq!(hit["scope"], "tenant");
    assert!(hit["title"].is_null(), "a memory has no title: {hit}");
    assert_eq!(hit["ranks"], json!({ "text": 1, "vector": null }));
    assert!(hit["snippet"].as_str().expect("snippet").contains("francs"), "{hit}");
    // Its tags are words too, and filters.
    assert_eq!(hit_ids(&search(&host, &acme_token, json!({ "query": "billing" })).await), std::slice::from_ref(&id));
    let tagged = json!({ "query": "francs", "tags": ["currency"] });
    assert_eq!(hit_ids(&search(&host, &acme_token, tagged).await), std::slice::from_ref(&id));
    for narrowing in [
        json!({ "query": "francs", "tags": ["travel"] }),
        json!({ "query": "francs", "tags": ["billing", "travel"], "tags_match": "all" }),
        json!({ "query": "francs", "scope": "persona" }),
        json!({ "query": "francs", "kinds": ["message", "document"] }),
    ] {
        let reply = search(&host, &acme_token, narrowing.clone()).await;
        assert_eq!(reply.status, StatusCode::OK, "{narrowing}: {reply:?}");
        assert!(hit_ids(&reply).is_empty(), "{narrowing}: {reply:?}");
    }

    // An edit re-indexes it: the old words no longer match.
    let edited = host
        .send(
            axum::http::Method::PATCH,
            &format!("/v1/memories/{id}"),
            Some(&acme_token),
            Some(json!({ "text": "The customer prefers invoices in euros" })),
        )
        .await;
    assert_eq!(edited.status, StatusCode::OK, "{edited:?}");
    caught_up(&host.store, &running.index).await;
    assert!(hit_ids(&search(&host, &acme_token, json!({ "query": "francs" })).await).is_empty());
    assert_eq!(hit_ids(&search(&host, &acme_token, json!({ "query": "euros" })).await), std::slice::from_ref(&id));

    // A rebuilt index holds memories too.
    drop(running.stop().await);
    std::fs::remove_dir_all(&dir).expect("delete the index");
    let running = start(open(&host.store, host.clock.clone(), &dir));
    host.search = Some(running.index.clone());
    caught_up(&host.store, &running.index).await;
    assert_eq!(running.index.status().docs, 2, "both tenants' memories");
    assert_eq!(hit_ids(&search(&host, &acme_token, json!({ "query": "euros" })).await), std::slice::from_ref(&id));

    let deleted = host.delete(&format!("/v1/memories/{id}"), Some(&acme_token)).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{deleted:?}");
    caught_up(&host.store, &running.index).await;
    assert!(hit_ids(&search(&host, &acme_token, json!({ "query": "euros" })).await).is_empty(), "gone after delete");
    assert_eq!(running.index.status().docs, 1);
    running.stop().await;
}

async fn a_restarted_index_replays_the_outbox_past_its_watermark_without_rebuilding(backend: Backend) {
    let (_db, store) = crate::storage_runs::store(backend).await;
    let dir = tempfile::tempdir().expect("dir");
    let clock: Arc<dyn Clock> = Arc::new(maestro_host::accounts::SystemClock);
    let acme = tenant(&store, "acme").await;
    let session = new_session(&store, &acme).await;
    let first = say(&store, &session, "before the restart: walrus").await;
    let running = start(open(&store, clock.clone(), dir.path()));
    caught_up(&store, &running.index).await;
    assert_eq!(ids(&running.index, &acme, "walrus").await, std::slice::from_ref(&first));
    let index = running.stop().await;
    let watermark = index.status().watermark.expect("committed");
    drop(index);

    // Written while no indexer runs.
    let second = say(&store, &session, "while it was down: walrus narwhal").await;
    let reopened = open(&store, clock, dir.path());
    assert!(!reopened.needs_rebuild(), "a readable index with a watermark is followed, not rebuilt");
    assert_eq!(reopened.status().watermark, Some(watermark), "the watermark comes from the commit's payload");
    assert_eq!(ids(&reopened, &acme, "narwhal").await, Vec::<String>::new());
    let running = start(reopened);
    caught_up(&store, &running.index).await;
    assert_eq!(ids(&running.index, &acme, "narwhal").await, std::slice::from_ref(&second));
    let both: HashSet<String> = ids(&running.index, &acme, "walrus").await.into_iter().collect();
    assert_eq!(both, HashSet::from([first, second]), "no duplicate, nothing lost");
    assert_eq!(running.index.status().docs, 2);
    assert_eq!(running.index.status().rebuilds, 0, "replayed, not rebuilt");
    running.stop().await;
}

async fn a_deleted_or_corrupted_index_is_rebuilt_with_the_same_top_ten(backend: Backend) {
    let (_db, store) = crate::storage_runs::store(backend).await;
    let dir = tempfile::tempdir().expect("dir");
    let clock: Arc<dyn Clock> = Arc::new(maestro_host::accounts::SystemClock);
    let acme = tenant(&store, "acme").await;
    let globex = tenant(&store, "globex").await;
    let session = new_session(&store, &acme).await;
    let theirs = new_session(&store, &globex).await;
    for i in 1..=14 {
        // Distinct term frequencies and lengths: no ties in the ranking.
        let text = format!("{} {} report number {i}", "otter ".repeat(i), "river ".repeat(15 - i));
        say(&store, &session, &text).await;
        say(&store, &theirs, &text).await;
    }
    // Every text has 18 words: scores differ by term frequency alone, so no two tie.
    let queries = ["otter", "river", "\"number 7\""];
    let running = start(open(&store, clock.clone(), dir.path()));
    caught_up(&store, &running.index).await;
    let mut before = Vec::new();
    for q in queries {
        before.push(ids(&running.index, &acme, q).await);
    }
    assert_eq!(before[0].len(), 10);
    assert_eq!(before[2].len(), 1);
    let docs = running.index.status().docs;
    assert_eq!(docs, 28);
    drop(running.stop().await);

    std::fs::remove_dir_all(dir.path()).expect("delete the index");
    let reopened = open(&store, clock.clone(), dir.path());
    assert!(reopened.needs_rebuild(), "a missing index is rebuilt");
    let running = start(reopened);
    caught_up(&store, &running.index).await;
    assert_eq!(running.index.status().docs, docs);
    for (q, expected) in queries.iter().zip(&before) {
        assert_eq!(&ids(&running.index, &acme, q).await, expected, "{q} after deletion");
    }
    drop(running.stop().await);

    std::fs::write(dir.path().join("index").join("meta.json"), b"{ this is not an index").expect("corrupt it");
    assert!(
        FullText::open(settings(dir.path()), store.clone(), clock.clone(), Access::Read).is_err(),
        "reading a corrupt index fails clearly"
    );
    let reopened = open(&store, clock, dir.path());
    assert!(reopened.needs_rebuild(), "a corrupt index is replaced and rebuilt");
    let running = start(reopened);
    caught_up(&store, &running.index).await;
    assert_eq!(running.index.status().docs, docs);
    for (q, expected) in queries.iter().zip(&before) {
        assert_eq!(&ids(&running.index, &acme, q).await, expected, "{q} after corruption");
    }
    running.stop().await;
}

async fn an_index_behind_the_outbox_pruning_is_rebuilt(backend: Backend) {
    let (_db, store) = crate::storage_runs::store(backend).await;
    let dir = tempfile::tempdir().expect("dir");
    let clock: Arc<dyn Clock> = Arc::new(maestro_host::accounts::SystemClock);
    let acme = tenant(&store, "acme").await;
    let session = new_session(&store, &acme).await;
    say(&store, &session, "seen by the index: heron").await;
    let running = start(open(&store, clock.clone(), dir.path()));
    caught_up(&store, &running.index).await;
    drop(running.stop().await);

    // Written and pruned while this replica was down: it can never read that row.
    let missed = say(&store, &session, "pruned before it was read: egret").await;
    let mut pruned = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while pruned < 2 && tokio::time::Instant::now() < deadline {
        // Rows of transactions other tests hold back settle a moment later.
        pruned += store.prune_outbox(t0() + chrono::Duration::days(1)).await.expect("prune");
    }
    assert_eq!(pruned, 2);
    let status = store.outbox_status(OutboxPosition::START).await.expect("status");
    assert_eq!(status.head, None);
    assert_eq!(status.pending, 0);

    let running = start(open(&store, clock, dir.path()));
    let mut watch = running.index.watch();
    let rebuilt = tokio::time::timeout(Duration::from_secs(60), watch.wait_for(|s| s.rebuilds > 0)).await;
    assert!(rebuilt.is_ok(), "the index rebuilds: {:?}", running.index.status());
    caught_up(&store, &running.index).await;
    assert_eq!(ids(&running.index, &acme, "egret").await, [missed]);
    running.stop().await;
}

async fn index_rebuild_and_status_commands_work_offline(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    let acme = tenant(&store, "acme").await;
    let session = new_session(&store, &acme).await;
    for text in ["one puffin", "two puffins", "three"] {
        say(&store, &session, text).await;
    }
    let command = |args: &[&str]| {
        let mut c = maestro(&db, backend);
        c.env("MAESTRO_DATABASE_URL", &db.url).args(args);
        c
    };
    let rebuilt = stdout(&run(command(&["index", "rebuild"])));
    assert!(rebuilt.contains("rebuilt the index: 3 documents"), "{rebuilt}");
    say(&store, &session, "four").await;
    let status: Value = serde_json::from_str(&stdout(&run(command(&["index", "status", "--json"])))).expect("json");
    assert_eq!(status["docs"], 3, "{status}");
    assert_eq!(status["pending"], 1, "the message written after the rebuild waits: {status}");
    assert_eq!(status["needs_rebuild"], false, "{status}");
    assert!(status["size_bytes"].as_u64().expect("size") > 0, "{status}");
    assert!(status["last_commit"].is_string(), "{status}");
    let text = stdout(&run(command(&["index", "status"])));
    assert!(text.contains("documents:    3"), "{text}");
}

/// The settled outbox rows after `after` once there are `n` of them. Transaction ids
/// are server-wide, so another test's open transaction may hold rows back a moment.
async fn settled(store: &Arc<dyn Store>, after: OutboxPosition, n: usize) -> Vec<maestro_core::search::OutboxEntry> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let rows = store.outbox_after(after, 100).await.expect("read");
        if rows.len() >= n || tokio::time::Instant::now() > deadline {
            return rows;
        }
        tokio::task::yield_now().await;
    }
}

/// Postgres commits transactions in any order: a follower must never pass a row whose
/// transaction is still open, whatever the ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_follower_never_passes_a_row_committed_out_of_order_on_postgres() {
    let (_db, store) = crate::storage_runs::store(Backend::Postgres).await;
    let acme = tenant(&store, "acme").await;
    let change = |object: &str| SearchChange {
        tenant: acme.clone(),
        kind: SearchKind::Memory,
        object: object.into(),
        op: ChangeOp::Upsert,
        at: t0(),
    };
    let objects = |entries: &[maestro_core::search::OutboxEntry]| {
        entries.iter().map(|e| e.change.object.clone()).collect::<Vec<_>>()
    };

    // B takes its transaction id first, A takes an id in between, B writes again.
    let mut b = store.begin().await.expect("begin b");
    b.record_search_change(&change("b1")).await.expect("b1");
    let mut a = store.begin().await.expect("begin a");
    a.record_search_change(&change("a")).await.expect("a");
    b.record_search_change(&change("b2")).await.expect("b2");
    // A commits first: its row has a smaller id than b2 but B is still open.
    a.commit().await.expect("commit a");
    let seen = store.outbox_after(OutboxPosition::START, 100).await.expect("read");
    assert!(seen.is_empty(), "a row is read only once no open transaction can precede it: {seen:?}");
    let status = store.outbox_status(OutboxPosition::START).await.expect("status");
    assert_eq!(status.head, None);
    assert_eq!(status.pending, 1, "pending counts committed rows not yet settled (a)");
    b.commit().await.expect("commit b");
    let seen = settled(&store, OutboxPosition::START, 3).await;
    assert_eq!(objects(&seen), ["b1", "b2", "a"], "read in (transaction, id) order");
    let watermark = seen[1].position;
    let rest = settled(&store, watermark, 1).await;
    assert_eq!(objects(&rest), ["a"], "a follower stopped after b2 still reads a");

    // The naive order would lose a row: A2 takes a smaller id, commits after B3.
    let mut a2 = store.begin().await.expect("begin a2");
    a2.record_search_change(&change("a2")).await.expect("a2");
    let mut b3 = store.begin().await.expect("begin b3");
    b3.record_search_change(&change("b3")).await.expect("b3");
    b3.commit().await.expect("commit b3");
    let head = seen.last().expect("a").position;
    assert!(store.outbox_after(head, 100).await.expect("read").is_empty(), "b3 waits for a2");
    a2.commit().await.expect("commit a2");
    assert_eq!(objects(&settled(&store, head, 2).await), ["a2", "b3"]);
    let settled = store.outbox_settled().await.expect("settled");
    assert!(settled >= store.outbox_status(OutboxPosition::START).await.expect("status").head.expect("head"));
}
