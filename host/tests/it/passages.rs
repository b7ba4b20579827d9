//! Vectors of messages and documents on both backends: the passage follower keeps them
//! in step with the search outbox (messages and document edits become searchable by
//! meaning, only the current version's passages stay, an unchanged passage keeps its
//! vector, deleted objects lose theirs), every search is scoped to its tenant and
//! filtered in SQL, two followers on one database write one set of passages and the
//! shared position never goes back, a follower behind the outbox's pruning reconciles
//! with the tables, a change of embedder re-embeds every passage, an unavailable
//! embedder delays passages without dropping any, and the real MiniLM finds a
//! paraphrase that shares no word with its message. Tests wait for conditions with
//! deadlines, never sleep for a fixed time.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use maestro_core::document::{DocAuthor, DocumentKind, TextEdit};
use maestro_core::embed::{EmbedError, Embedder, EmbedderInfo, EmbedderStatus};
use maestro_core::passage::{Passage, PassageFilter, PassageWrite, passages_of};
use maestro_core::run::{Author, Message, RunLimits, Session, SessionId, Strategy};
use maestro_core::search::{ChangeOp, OutboxPosition, SearchChange, SearchKind};
use maestro_core::{Clock, Store, TenantId};
use maestro_host::documents::{Documents, NewDocument};
use maestro_host::passages::{FollowerSettings, PassageFollower};
use sqlx::Connection as _;
use tokio_util::sync::CancellationToken;

use crate::fake_embed::FakeEmbedder;
use crate::harness::{Backend, TestDb, backend_tests};
use crate::storage_runs::{fresh, t0, tenant};

backend_tests!(
    messages_and_document_edits_become_searchable_by_meaning_with_filters_in_sql,
    another_tenants_passages_never_appear_even_with_the_same_words,
    a_document_edited_twice_keeps_only_its_current_passages_and_unchanged_vectors,
    a_deleted_message_document_or_session_drops_its_passages,
    two_followers_on_one_database_write_one_set_of_passages_and_never_move_back,
    a_follower_behind_the_outbox_pruning_reconciles_with_the_tables,
    changing_the_embedder_re_embeds_every_passage,
    an_unavailable_embedder_delays_passages_and_drops_none,
    the_real_model_finds_a_paraphrase_that_shares_no_word,
    of_two_leased_followers_one_embeds_and_the_other_takes_over_when_it_stops,
    interleaved_passage_writes_and_searches_find_what_a_fresh_store_finds,
);

/// Short cadences so that tests wait milliseconds; small batches so that cuts happen.
fn settings() -> FollowerSettings {
    FollowerSettings {
        poll_interval: Duration::from_millis(10),
        outbox_batch: 16,
        write_budget: 16,
        embed_batch: 8,
        reconcile_page: 7,
        max_backoff: Duration::from_millis(50),
        lease_for: Duration::from_secs(60),
    }
}

fn follower(store: &Arc<dyn Store>, embedder: Arc<dyn Embedder>) -> PassageFollower {
    PassageFollower::new(store.clone(), store.clone(), embedder, settings())
}

/// Steps `follower` until the outbox holds nothing after the shared position and no
/// reconcile is under way (rows of transactions open elsewhere on the Postgres server
/// settle a moment later: poll, with a deadline).
async fn settle(store: &Arc<dyn Store>, follower: &PassageFollower) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        follower.catch_up().await.expect("the follower steps");
        let state = store.passage_follower().await.expect("state");
        let pending = store.outbox_status(state.position).await.expect("outbox").pending;
        if pending == 0 && !follower.status().reconciling {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the follower did not catch up: {:?}", follower.status());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until a spawned follower has caught up (as [`settle`], without stepping).
async fn caught_up(store: &Arc<dyn Store>, followers: &[&PassageFollower]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let state = store.passage_follower().await.expect("state");
        let pending = store.outbox_status(state.position).await.expect("outbox").pending;
        if pending == 0 && followers.iter().all(|f| !f.status().reconciling && f.status().position.is_some()) {
            return;
        }
        let statuses: Vec<_> = followers.iter().map(|f| f.status()).collect();
        assert!(tokio::time::Instant::now() < deadline, "the followers did not catch up: {statuses:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn new_session(store: &Arc<dyn Store>, tenant: &TenantId) -> SessionId {
    let session = Session {
        id: fresh(),
        tenant: tenant.clone(),
        title: "passages".into(),
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

/// Writes a message by `author` through a unit of work, as the orchestrator does.
async fn say_as(store: &Arc<dyn Store>, session: &SessionId, author: &str, text: &str) -> String {
    let message = Message {
        id: fresh(),
        session: session.clone(),
        seq: 0,
        author: Author::Persona { name: author.into() },
        content: text.into(),
        run: None,
        at: t0(),
    };
    let mut tx = store.begin().await.expect("begin");
    let stored = tx.insert_message(&message).await.expect("insert");
    tx.commit().await.expect("commit");
    stored.id.to_string()
}

async fn say(store: &Arc<dyn Store>, session: &SessionId, text: &str) -> String {
    say_as(store, session, "team.writer", text).await
}

fn documents(store: &Arc<dyn Store>) -> Documents {
    let clock: Arc<dyn Clock> = Arc::new(maestro_host::accounts::SystemClock);
    Documents::new(store.clone(), clock)
}

fn user() -> DocAuthor {
    DocAuthor::User { key: "key_test".into() }
}

/// The ids of `tenant`'s nearest passages to `query` (embedded by the fake), best
/// first, one per object.
async fn nearest(
    store: &Arc<dyn Store>,
    tenant: &TenantId,
    embedder: &EmbedderInfo,
    query: &str,
    filter: &PassageFilter,
) -> Vec<String> {
    let hits = store.search_passages(tenant, embedder, &FakeEmbedder::vector(query), filter, 50).await.expect("search");
    let mut seen = HashSet::new();
    for pair in hits.windows(2) {
        assert!(pair[0].score >= pair[1].score, "nearest first");
    }
    hits.into_iter().filter(|h| seen.insert(h.passage.object.clone())).map(|h| h.passage.object).collect()
}

fn fake_a() -> EmbedderInfo {
    FakeEmbedder::named("fake-a").info().clone()
}

/// Every stored passage of one object, as its current content would cut it.
async fn stored_texts(store: &Arc<dyn Store>, kind: SearchKind, id: &str) -> Vec<String> {
    let stored = store.stored_passages(kind, &[id.to_owned()]).await.expect("stored");
    stored.into_iter().map(|s| s.passage.text).collect()
}

async fn messages_and_document_edits_become_searchable_by_meaning_with_filters_in_sql(backend: Backend) {
    let (_db, store) = crate::storage_runs::store(backend).await;
    let embedder = Arc::new(FakeEmbedder::named("fake-a"));
    let follower = follower(&store, embedder.clone());
    let acme = tenant(&store, "acme").await;
    let planning = new_session(&store, &acme).await;
    let chatter = new_session(&store, &acme).await;
    let before = t0() - chrono::Duration::seconds(1);
    let plan = say(&store, &planning, "the zebra migration plan is ready for review").await;
    let critic = say_as(&store, &planning, "team.critic", "zebra migration risks were not reviewed").await;
    let crossing = say(&store, &chatter, "a zebra crossing near the office").await;
    let created = documents(&store)
        .create(
            &acme,
            NewDocument {
                title: "Bird survey".into(),
                kind: DocumentKind::Markdown,
                content: "We counted pelicans on the lake.".into(),
                session: Some(planning.clone()),
            },
            user(),
        )
        .await
        .expect("document");
    let doc = created.document.id.to_string();
    let edit = vec![TextEdit { old: "pelicans".into(), new: "flamingos".into() }];
    documents(&store).edit(&acme, &created.document.id, 1, edit, user()).await.expect("edit");
    settle(&store, &follower).await;

    let all = PassageFilter::default();
    let info = fake_a();
    assert_eq!(nearest(&store, &acme, &info, "zebra migration plan", &all).await[0], plan);
    assert_eq!(nearest(&store, &acme, &info, "flamingos counted", &all).await[0], doc);
    assert_eq!(
        stored_texts(&store, SearchKind::Document, &doc).await,
        ["Bird survey\n\nWe counted flamingos on the lake."],
        "the current version, its title first"
    );
    // Filters narrow in SQL (k = 50 holds every passage: the results are exact sets).
    let only = |filter: PassageFilter| {
        let (store, acme, info) = (store.clone(), acme.clone(), info.clone());
        async move { nearest(&store, &acme, &info, "zebra", &filter).await.into_iter().collect::<HashSet<_>>() }
    };
    let set = |ids: &[&String]| ids.iter().map(|s| (*s).clone()).collect::<HashSet<_>>();
    assert_eq!(only(all.clone()).await, set(&[&plan, &critic, &crossing, &doc]));
    assert_eq!(
        only(PassageFilter { kinds: vec![SearchKind::Message], ..Default::default() }).await,
        set(&[&plan, &critic, &crossing])
    );
    assert_eq!(only(PassageFilter { kinds: vec![SearchKind::Document], ..Default::default() }).await, set(&[&doc]));
    assert!(only(PassageFilter { kinds: vec![SearchKind::Memory], ..Default::default() }).await.is_empty());
    assert_eq!(
        only(PassageFilter { session: Some(planning.clone()), ..Default::default() }).await,
        set(&[&plan, &critic, &doc])
    );
    assert_eq!(
        only(PassageFilter { exclude_session: Some(planning.clone()), ..Default::default() }).await,
        set(&[&crossing])
    );
    assert_eq!(only(PassageFilter { author: Some("team.critic".into()), ..Default::default() }).await, set(&[&critic]));
    assert_eq!(only(PassageFilter { since: Some(before), ..Default::default() }).await.len(), 4);
    assert!(only(PassageFilter { until: Some(before), ..Default::default() }).await.is_empty());
    assert!(
        only(PassageFilter { since: Some(t0() + chrono::Duration::hours(1)), ..Default::default() }).await.is_empty()
    );
    // Only vectors of the query's embedder are compared.
    let other = FakeEmbedder::named("fake-b").info().clone();
    assert!(nearest(&store, &acme, &other, "zebra", &all).await.is_empty());
    // A later message is followed too.
    let later = say(&store, &chatter, "okapi sightings this week").await;
    settle(&store, &follower).await;
    assert_eq!(nearest(&store, &acme, &info, "okapi sightings", &all).await[0], later);
    assert!(embedder.texts() >= 5);
}

async fn another_tenants_passages_never_appear_even_with_the_same_words(backend: Backend) {
    let (_db, store) = crate::storage_runs::store(backend).await;
    let follower = follower(&store, Arc::new(FakeEmbedder::named("fake-a")));
    let acme = tenant(&store, "acme").await;
    let globex = tenant(&store, "globex").await;
    let (mine, theirs) = (new_session(&store, &acme).await, new_session(&store, &globex).await);
    let mut acme_ids = HashSet::new();
    let mut globex_ids = HashSet::new();
    for text in ["shared words alpha beta", "alpha only here", "the quarterly secret plan"] {
        acme_ids.insert(say(&store, &mine, text).await);
        // The other tenant holds the very same texts, and closer ones.
        globex_ids.insert(say(&store, &theirs, text).await);
        globex_ids.insert(say(&store, &theirs, &format!("{text} {text}")).await);
    }
    settle(&store, &follower).await;
    let info = fake_a();
    for query in ["shared words alpha beta", "the quarterly secret plan", "alpha", "globex"] {
        for filter in [
            PassageFilter::default(),
            PassageFilter { session: Some(theirs.clone()), ..Default::default() },
            PassageFilter { exclude_session: Some(mine.clone()), ..Default::default() },
        ] {
            for id in nearest(&store, &acme, &info, query, &filter).await {
                assert!(acme_ids.contains(&id) && !globex_ids.contains(&id), "{query:?} {filter:?} returned {id}");
            }
        }
        let theirs_found: HashSet<String> =
            nearest(&store, &globex, &info, query, &PassageFilter::default()).await.into_iter().collect();
        assert_eq!(theirs_found, globex_ids, "each tenant sees all of its own");
    }
}

async fn a_document_edited_twice_keeps_only_its_current_passages_and_unchanged_vectors(backend: Backend) {
    let (_db, store) = crate::storage_runs::store(backend).await;
    let embedder = Arc::new(FakeEmbedder::named("fake-a"));
    let follower = follower(&store, embedder.clone());
    let acme = tenant(&store, "acme").await;
    let words = |prefix: &str, n: usize| (0..n).map(|i| format!("{prefix}{i}")).collect::<Vec<_>>().join(" ");
    // 400 words: three passages (180 words, overlapping by 30).
    let content = format!("{} tailword", words("w", 399));
    let docs = documents(&store);
    let new = NewDocument { title: "Long".into(), kind: DocumentKind::Markdown, content, session: None };
    let created = docs.create(&acme, new, user()).await.expect("document");
    let id = created.document.id.clone();
    settle(&store, &follower).await;
    assert_eq!(stored_texts(&store, SearchKind::Document, id.as_str()).await.len(), 3);

    // The first edit changes the first passage only; the second the last only.
    let edit = vec![TextEdit { old: "w0 ".into(), new: "capybara ".into() }];
    docs.edit(&acme, &id, 1, edit, user()).await.expect("first edit");
    let edit = vec![TextEdit { old: "tailword".into(), new: "axolotl".into() }];
    docs.edit(&acme, &id, 2, edit, user()).await.expect("second edit");
    let embedded_before = embedder.texts();
    settle(&store, &follower).await;
    let current = store.searchables(SearchKind::Document, &[id.to_string()]).await.expect("current");
    let expected: Vec<String> = passages_of(&current[0]).into_iter().map(|p| p.text).collect();
    assert_eq!(stored_texts(&store, SearchKind::Document, id.as_str()).await, expected);
    assert!(expected[0].contains("capybara") && expected[2].ends_with("axolotl"));
    assert!(
        embedder.texts() - embedded_before <= 2,
        "unchanged passages keep their vectors: {} embedded",
        embedder.texts() - embedded_before
    );
    let info = fake_a();
    let hits = store
        .search_passages(&acme, &info, &FakeEmbedder::vector("axolotl"), &PassageFilter::default(), 10)
        .await
        .expect("search");
    assert_eq!(hits.len(), 3, "one set of passages, of the current version");
    assert_eq!((hits[0].passage.chunk, hits[0].passage.object.as_str()), (2, id.as_str()));
    assert_eq!(hits[0].passage.at, current[0].at);
    assert!(hits.iter().all(|h| !h.passage.text.contains("tailword") && !h.passage.text.contains("w0 ")));
}

/// A connection to the test database beside the store, for what no port does yet
/// (deleting rows).
async fn raw_sql(db: &TestDb, backend: Backend, statements: &[String]) {
    match backend {
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url).await.expect("connect");
            sqlx::raw_sql("PRAGMA foreign_keys = ON").execute(&mut conn).await.expect("pragma");
            for sql in statements {
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone())).execute(&mut conn).await.expect("sql");
            }
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
            for sql in statements {
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone())).execute(&mut conn).await.expect("sql");
            }
        }
    }
}

/// Deletes a document and its versions (no port deletes documents yet; versions are
/// otherwise immutable, so the test lifts that for itself).
fn delete_document(backend: Backend, id: &str) -> Vec<String> {
    let (off, on) = match backend {
        Backend::Sqlite => (
            "DROP TRIGGER document_versions_no_delete".to_owned(),
            "CREATE TRIGGER document_versions_no_delete BEFORE DELETE ON document_versions \
             BEGIN SELECT RAISE(ABORT, 'document versions are immutable'); END"
                .to_owned(),
        ),
        Backend::Postgres => (
            "ALTER TABLE document_versions DISABLE TRIGGER document_versions_immutable".to_owned(),
            "ALTER TABLE document_versions ENABLE TRIGGER document_versions_immutable".to_owned(),
        ),
    };
    vec![
        off,
        format!("DELETE FROM document_versions WHERE document_id = '{id}'"),
        format!("DELETE FROM documents WHERE id = '{id}'"),
        on,
    ]
}

async fn record_deleted(store: &Arc<dyn Store>, tenant: &TenantId, kind: SearchKind, id: &str) {
    let mut tx = store.begin().await.expect("begin");
    let change = SearchChange { tenant: tenant.clone(), kind, object: id.to_owned(), op: ChangeOp::Delete, at: t0() };
    tx.record_search_change(&change).await.expect("record");
    tx.commit().await.expect("commit");
}

async fn a_deleted_message_document_or_session_drops_its_passages(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    let follower = follower(&store, Arc::new(FakeEmbedder::named("fake-a")));
    let acme = tenant(&store, "acme").await;
    let kept = new_session(&store, &acme).await;
    let doomed = new_session(&store, &acme).await;
    let stays = say(&store, &kept, "this message stays").await;
    let goes = say(&store, &kept, "this message goes").await;
    let with_session = say(&store, &doomed, "gone with its session").await;
    let new = NewDocument {
        title: "Doomed".into(),
        kind: DocumentKind::Markdown,
        content: "a document about to be deleted".into(),
        session: None,
    };
    let doc = documents(&store).create(&acme, new, user()).await.expect("document").document.id.to_string();
    settle(&store, &follower).await;
    let objects = |kind| {
        let store = store.clone();
        async move { store.passage_objects_between(kind, None, None).await.expect("objects") }
    };
    assert_eq!(objects(SearchKind::Message).await.len(), 3);
    assert_eq!(objects(SearchKind::Document).await, std::slice::from_ref(&doc));

    // A message and a document deleted with their outbox rows: the follower drops them.
    let mut statements = vec![format!("DELETE FROM messages WHERE id = '{goes}'")];
    statements.extend(delete_document(backend, &doc));
    raw_sql(&db, backend, &statements).await;
    record_deleted(&store, &acme, SearchKind::Message, &goes).await;
    record_deleted(&store, &acme, SearchKind::Document, &doc).await;
    settle(&store, &follower).await;
    let left: HashSet<String> = objects(SearchKind::Message).await.into_iter().collect();
    assert_eq!(left, HashSet::from([stays.clone(), with_session.clone()]));
    assert!(objects(SearchKind::Document).await.is_empty());

    // A deleted session takes its passages with it (the foreign key cascades).
    raw_sql(
        &db,
        backend,
        &[
            format!("DELETE FROM messages WHERE session_id = '{doomed}'"),
            format!("DELETE FROM sessions WHERE id = '{doomed}'"),
        ],
    )
    .await;
    assert_eq!(objects(SearchKind::Message).await, [stays]);
    let hits = store
        .search_passages(
            &acme,
            &fake_a(),
            &FakeEmbedder::vector("gone with its session"),
            &PassageFilter::default(),
            10,
        )
        .await
        .expect("search");
    assert!(hits.iter().all(|h| h.passage.object != with_session), "{hits:?}");
}

async fn two_followers_on_one_database_write_one_set_of_passages_and_never_move_back(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (first, second) = (db.open().await, db.open().await);
    let acme = tenant(&first, "acme").await;
    let session = new_session(&first, &acme).await;

    // The store refuses a write from a position that is not the stored one.
    let state = first.passage_follower().await.expect("state");
    assert_eq!(state.position, OutboxPosition::START);
    let stray = say(&first, &session, "a stray write").await;
    let passage = Passage {
        tenant: acme.clone(),
        kind: SearchKind::Message,
        object: stray.clone(),
        chunk: 0,
        session: Some(session.clone()),
        author: None,
        at: t0(),
        text: "a stray write".into(),
    };
    let write = |expected, next| PassageWrite {
        expected,
        next,
        follows_outbox: true,
        objects: vec![(SearchKind::Message, stray.clone())],
        embedder: fake_a(),
        passages: vec![(passage.clone(), FakeEmbedder::vector("a stray write"))],
    };
    let ahead = OutboxPosition { txid: 0, id: 1 };
    assert!(!first.write_passages(&write(ahead, ahead)).await.expect("refused"), "not the stored position");
    assert!(first.write_passages(&write(OutboxPosition::START, ahead)).await.expect("written"));
    assert!(!second.write_passages(&write(OutboxPosition::START, ahead)).await.expect("refused"), "moved already");
    assert_eq!(first.stored_passages(SearchKind::Message, &[stray]).await.expect("stored").len(), 1);
    assert_eq!(second.passage_follower().await.expect("state").position, ahead);

    // Two followers on two stores, while messages stream in.
    let (one, two) = (
        follower(&first, Arc::new(FakeEmbedder::named("fake-a"))),
        follower(&second, Arc::new(FakeEmbedder::named("fake-a"))),
    );
    let stop = CancellationToken::new();
    let tasks = [one.spawn(stop.clone()), two.spawn(stop.clone())];
    let watcher = {
        let (store, stop) = (first.clone(), stop.clone());
        tokio::spawn(async move {
            let mut last = OutboxPosition::START;
            while !stop.is_cancelled() {
                let now = store.passage_follower().await.expect("state").position;
                assert!(now >= last, "the position went back from {last} to {now}");
                last = now;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let mut written = vec![];
    for i in 0..60 {
        let store = if i % 2 == 0 { &first } else { &second };
        written.push(say(store, &session, &format!("message number {i} about tapirs")).await);
    }
    caught_up(&first, &[&one, &two]).await;
    stop.cancel();
    for task in tasks {
        task.await.expect("a follower stops");
    }
    watcher.await.expect("the position never went back");
    let stored = first.stored_passages(SearchKind::Message, &written).await.expect("stored");
    let keys: HashSet<(String, u32)> = stored.iter().map(|s| (s.passage.object.clone(), s.passage.chunk)).collect();
    assert_eq!(stored.len(), 60, "one passage per message");
    assert_eq!(keys.len(), 60);
    assert_eq!(keys.iter().map(|(o, _)| o.clone()).collect::<HashSet<_>>(), written.into_iter().collect());
    let (a, b) = (one.status(), two.status());
    assert!(a.writes + b.writes >= 1, "{a:?} {b:?}");
}

async fn a_follower_behind_the_outbox_pruning_reconciles_with_the_tables(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    let acme = tenant(&store, "acme").await;
    let session = new_session(&store, &acme).await;
    let seen = say(&store, &session, "seen by the follower: heron").await;
    let ghost = say(&store, &session, "deleted without a trace: ibis").await;
    let first = follower(&store, Arc::new(FakeEmbedder::named("fake-a")));
    settle(&store, &first).await;
    assert_eq!(first.status().reconciles, 1, "a position that never moved reconciles first");
    drop(first);

    // Written and pruned while no follower ran; a message deleted with no outbox row.
    let mut missed = vec![];
    for i in 0..10 {
        missed.push(say(&store, &session, &format!("pruned before it was read: egret {i}")).await);
    }
    raw_sql(&db, backend, &[format!("DELETE FROM messages WHERE id = '{ghost}'")]).await;
    let mut pruned = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while pruned < 12 && tokio::time::Instant::now() < deadline {
        // Rows of transactions other tests hold back settle a moment later.
        pruned += store.prune_outbox(t0() + chrono::Duration::days(1)).await.expect("prune");
    }
    assert_eq!(pruned, 12);
    let state = store.passage_follower().await.expect("state");
    assert!(state.behind_pruning(), "{state:?}");

    let second = follower(&store, Arc::new(FakeEmbedder::named("fake-a")));
    settle(&store, &second).await;
    assert_eq!(second.status().reconciles, 1);
    let state = store.passage_follower().await.expect("state");
    assert!(!state.behind_pruning(), "{state:?}");
    let mut expected: HashSet<String> = missed.into_iter().collect();
    expected.insert(seen);
    let found: HashSet<String> =
        store.passage_objects_between(SearchKind::Message, None, None).await.expect("objects").into_iter().collect();
    assert_eq!(found, expected, "the missed messages are in, the deleted one is out");
    // And it follows from there.
    let later = say(&store, &session, "after the reconcile: stork").await;
    settle(&store, &second).await;
    assert_eq!(nearest(&store, &acme, &fake_a(), "stork", &PassageFilter::default()).await[0], later);
}

async fn changing_the_embedder_re_embeds_every_passage(backend: Backend) {
    let (_db, store) = crate::storage_runs::store(backend).await;
    let acme = tenant(&store, "acme").await;
    let session = new_session(&store, &acme).await;
    let mut ids = vec![];
    for i in 0..20 {
        ids.push(say(&store, &session, &format!("note {i} on the lemur enclosure")).await);
    }
    let old = FakeEmbedder::named("fake-a");
    settle(&store, &follower(&store, Arc::new(old))).await;
    let new = Arc::new(FakeEmbedder::named("fake-b"));
    assert!(store.has_stale_passages(new.info()).await.expect("stale"));
    let after = follower(&store, new.clone());
    settle(&store, &after).await;
    assert_eq!(after.status().reconciles, 1);
    assert_eq!(new.texts(), 20, "every passage embedded again, once");
    assert!(!store.has_stale_passages(new.info()).await.expect("stale"));
    let stored = store.stored_passages(SearchKind::Message, &ids).await.expect("stored");
    assert_eq!(stored.len(), 20);
    assert!(stored.iter().all(|s| s.embedder == *new.info()));
    assert!(nearest(&store, &acme, &fake_a(), "lemur", &PassageFilter::default()).await.is_empty());
    assert_eq!(nearest(&store, &acme, new.info(), "lemur", &PassageFilter::default()).await.len(), 20);
}

/// An embedder that is unavailable until told otherwise.
#[derive(Debug)]
struct Flaky {
    inner: FakeEmbedder,
    down: AtomicBool,
}

#[async_trait]
impl Embedder for Flaky {
    fn info(&self) -> &EmbedderInfo {
        self.inner.info()
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(EmbedError::Unavailable("the service is down".into()));
        }
        self.inner.embed(texts).await
    }

    fn status(&self) -> EmbedderStatus {
        EmbedderStatus::Ready
    }
}

async fn an_unavailable_embedder_delays_passages_and_drops_none(backend: Backend) {
    let (_db, store) = crate::storage_runs::store(backend).await;
    let acme = tenant(&store, "acme").await;
    let session = new_session(&store, &acme).await;
    let flaky = Arc::new(Flaky { inner: FakeEmbedder::named("fake-a"), down: AtomicBool::new(true) });
    let follower = follower(&store, flaky.clone());
    let stop = CancellationToken::new();
    let task = follower.spawn(stop.clone());
    let mut ids = HashSet::new();
    for i in 0..5 {
        ids.insert(say(&store, &session, &format!("waiting message {i}")).await);
    }
    let mut watch = follower.watch();
    // (The borrow `wait_for` answers is dropped at once: it holds the status's lock.)
    let waiting = tokio::time::timeout(Duration::from_secs(30), watch.wait_for(|s| s.waiting.is_some())).await.is_ok();
    assert!(waiting, "the follower says why it waits: {:?}", follower.status());
    assert!(follower.status().waiting.expect("waiting").contains("down"));
    assert!(store.passage_objects_between(SearchKind::Message, None, None).await.expect("objects").is_empty());

    flaky.down.store(false, Ordering::SeqCst);
    caught_up(&store, &[&follower]).await;
    let found: HashSet<String> =
        store.passage_objects_between(SearchKind::Message, None, None).await.expect("objects").into_iter().collect();
    assert_eq!(found, ids);
    assert_eq!(follower.status().waiting, None);
    stop.cancel();
    task.await.expect("the follower stops");
}

async fn the_real_model_finds_a_paraphrase_that_shares_no_word(backend: Backend) {
    let (_db, store) = crate::storage_runs::store(backend).await;
    let model = crate::embed::model();
    let follower = PassageFollower::new(store.clone(), store.clone(), model.clone(), settings());
    let acme = tenant(&store, "acme").await;
    let session = new_session(&store, &acme).await;
    let mut ids = HashMap::new();
    for text in [
        "The quarterly budget review moved to Thursday afternoon.",
        "Our cat refuses to eat the new brand of food.",
        "The production database ran out of disk space overnight.",
        "Remember to water the tomato plants in the greenhouse.",
    ] {
        ids.insert(say(&store, &session, text).await, text);
    }
    settle(&store, &follower).await;
    let query = model.embed(&["storage filled up on the server while everyone slept".into()]).await.expect("embed");
    let hits =
        store.search_passages(&acme, model.info(), &query[0], &PassageFilter::default(), 4).await.expect("search");
    assert_eq!(hits.len(), 4);
    assert_eq!(ids[&hits[0].passage.object], "The production database ran out of disk space overnight.", "{hits:?}");
    assert!(hits[0].score > hits[1].score, "{hits:?}");
}

/// Two followers on one database, each with the lease and its own counting embedder:
/// only the lease holder embeds; when it stops (giving its lease up), the other takes
/// over and catches up with what was written since, and nothing is missed.
async fn of_two_leased_followers_one_embeds_and_the_other_takes_over_when_it_stops(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (first, second) = (db.open().await, db.open().await);
    let acme = tenant(&first, "acme").await;
    let session = new_session(&first, &acme).await;
    let embedders = [Arc::new(FakeEmbedder::named("fake-a")), Arc::new(FakeEmbedder::named("fake-a"))];
    let followers = [
        follower(&first, embedders[0].clone()).with_lease(first.clone()),
        follower(&second, embedders[1].clone()).with_lease(second.clone()),
    ];
    let stops = [CancellationToken::new(), CancellationToken::new()];
    let mut tasks: Vec<_> = followers.iter().zip(&stops).map(|(f, stop)| Some(f.spawn(stop.clone()))).collect();
    let mut written = vec![];
    for i in 0..30 {
        written.push(say(&first, &session, &format!("message number {i} about okapis")).await);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let leader = loop {
        if let Some(leader) = followers.iter().position(|f| f.status().leading) {
            break leader;
        }
        assert!(tokio::time::Instant::now() < deadline, "no follower took the lease");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    caught_up(&first, &[&followers[leader]]).await;
    let other = 1 - leader;
    assert!(
        !followers[other].status().leading,
        "one leader: {:?}",
        followers.iter().map(|f| f.status()).collect::<Vec<_>>()
    );
    assert!(embedders[leader].texts() >= 30, "the leader embedded: {}", embedders[leader].texts());
    assert_eq!(embedders[other].calls(), 0, "the other stood by");
    assert_eq!(followers[other].status().writes, 0);

    // The leader stops and gives up its lease; the other takes over.
    stops[leader].cancel();
    tasks[leader].take().expect("task").await.expect("the leader stops");
    for i in 30..45 {
        written.push(say(&second, &session, &format!("message number {i} about okapis")).await);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !followers[other].status().leading {
        assert!(tokio::time::Instant::now() < deadline, "the other never took over: {:?}", followers[other].status());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    caught_up(&first, &[&followers[other]]).await;
    assert!(embedders[other].texts() >= 15, "the new leader embedded what came since: {}", embedders[other].texts());
    let stored = first.stored_passages(SearchKind::Message, &written).await.expect("stored");
    let objects: HashSet<&str> = stored.iter().map(|p| p.passage.object.as_str()).collect();
    assert_eq!(objects.len(), written.len(), "every message has its passages, once");
    assert_eq!(stored.len(), written.len());
    stops[other].cancel();
    tasks[other].take().expect("task").await.expect("stops");
}

/// A passage write at the stored position that replaces `objects` with `passages`.
async fn replace(store: &Arc<dyn Store>, objects: &[String], passages: Vec<(Passage, Vec<f32>)>) {
    let at = store.passage_follower().await.expect("follower").position;
    let write = PassageWrite {
        expected: at,
        next: at,
        follows_outbox: false,
        objects: objects.iter().map(|o| (SearchKind::Document, o.clone())).collect(),
        embedder: fake_a(),
        passages,
    };
    assert!(store.write_passages(&write).await.expect("write"), "written");
}

async fn interleaved_passage_writes_and_searches_find_what_a_fresh_store_finds(backend: Backend) {
    // SQLite brings a tenant's cached passage vectors forward by delta (an object
    // rewritten is deleted and inserted again, under the same keys and reused rowids),
    // or reads them whole when far behind; each search equals a new store's and the
    // exact top 8 of the passages as the test keeps them, and never shows another
    // tenant's passages lying right at the query.
    let db = TestDb::new(backend).await;
    let cached = db.open().await;
    let (a, b) = (tenant(&cached, "acme").await, tenant(&cached, "beta").await);
    let dims = fake_a().dimensions as usize;
    let mut state = 0x0dd_ba11_u64;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let unit = |seed: u64| crate::memories::random_unit(&mut (seed * 2 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15), dims);
    let passage = |tenant: &TenantId, object: &str, chunk: u32, author: &str| Passage {
        tenant: tenant.clone(),
        kind: SearchKind::Document,
        object: object.to_owned(),
        chunk,
        session: None,
        author: Some(author.to_owned()),
        at: t0(),
        text: format!("{object} {chunk}"),
    };
    // What the store holds of tenant a: key → (passage, vector).
    let mut held: HashMap<(String, u32), (Passage, Vec<f32>)> = HashMap::new();
    let by_ann = PassageFilter { author: Some("ann".into()), ..Default::default() };
    let objects = |n: u64| (0..n).map(|i| format!("doc_{i}")).collect::<Vec<_>>();
    let all = objects(12);
    let mut seed = 1;
    let compare = async |held: &HashMap<(String, u32), (Passage, Vec<f32>)>, what: &str, seed: u64| {
        let query = unit(seed);
        let fresh = db.open().await;
        for filter in [PassageFilter::default(), by_ann.clone()] {
            let key = |h: maestro_core::passage::PassageHit| (h.passage.object, h.passage.chunk);
            let got = cached.search_passages(&a, &fake_a(), &query, &filter, 8).await.expect("search");
            assert!(got.iter().all(|h| h.passage.tenant == a), "{what}: only the tenant's own");
            let got: Vec<(String, u32)> = got.into_iter().map(key).collect();
            let full = fresh.search_passages(&a, &fake_a(), &query, &filter, 8).await.expect("search");
            assert_eq!(got, full.into_iter().map(key).collect::<Vec<_>>(), "{what}: as a full load finds");
            let mut exact: Vec<(f32, (String, u32))> = held
                .iter()
                .filter(|(_, (p, _))| filter.matches(p))
                .map(|(k, (_, v))| (maestro_core::embed::dot(&query, v), k.clone()))
                .collect();
            exact.sort_by(|x, y| y.0.total_cmp(&x.0));
            assert_eq!(got, exact.into_iter().take(8).map(|(_, k)| k).collect::<Vec<_>>(), "{what}: the exact top 8");
        }
    };
    for step in 0..40 {
        // One object rewritten (one to four chunks, another author, new vectors) or
        // deleted; now and then the other tenant gains a passage at the next query.
        let object = all[next(all.len() as u64) as usize].clone();
        held.retain(|(o, _), _| *o != object);
        let mut passages = Vec::new();
        if next(4) != 0 {
            let author = if next(2) == 0 { "ann" } else { "bob" };
            for chunk in 0..=next(4) as u32 {
                seed += 1;
                let p = passage(&a, &object, chunk, author);
                held.insert((object.clone(), chunk), (p.clone(), unit(seed)));
                passages.push((p, unit(seed)));
            }
        }
        if step % 5 == 0 {
            let near = format!("doc_b{step}");
            replace(&cached, std::slice::from_ref(&near), vec![(passage(&b, &near, 0, "ann"), unit(seed + 1))]).await;
        }
        replace(&cached, std::slice::from_ref(&object), passages).await;
        compare(&held, &format!("step {step}"), seed + 1).await;
    }
    // 1,200 passages written, then deleted, in single writes: further behind than a
    // delta brings forward, and the deletions' tombstones pruned to their window.
    let many = objects(20).into_iter().map(|o| format!("{o}_many")).collect::<Vec<_>>();
    let mut passages = Vec::new();
    for object in &many {
        for chunk in 0..60 {
            seed += 1;
            let p = passage(&a, object, chunk, "ann");
            held.insert((object.clone(), chunk), (p.clone(), unit(seed)));
            passages.push((p, unit(seed)));
        }
    }
    replace(&cached, &many, passages).await;
    compare(&held, "after 1,200 inserts", seed + 1).await;
    replace(&cached, &many, Vec::new()).await;
    held.retain(|(o, _), _| !o.ends_with("_many"));
    compare(&held, "after 1,200 deletes", seed + 2).await;
    // And by delta again.
    let object = all[0].clone();
    held.retain(|(o, _), _| *o != object);
    let p = passage(&a, &object, 0, "ann");
    held.insert((object.clone(), 0), (p.clone(), unit(seed + 3)));
    replace(&cached, std::slice::from_ref(&object), vec![(p, unit(seed + 3))]).await;
    compare(&held, "after the deletes, one rewrite", seed + 3).await;
}
