//! Hybrid search (`POST /v1/search`, modes `hybrid` and `vector`) on both backends:
//! a memory found by meaning and a message by words in one query with each side's rank
//! shown (the real MiniLM), filters narrowing both sides, tenants kept apart, recency
//! decay reordering old and new while a pinned memory keeps its place, an unavailable
//! embedder degrading to the index alone, passages (through a fake `PassageStore`)
//! counted once per object at their best and filtered, and a served document found by
//! meaning through its passages (that one needs the passage vectors of helper `vec`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use maestro_core::TenantId;
use maestro_core::embed::Embedder;
use maestro_core::memory::MemoryScope;
use maestro_core::passage::{Passage, PassageFilter, PassageHit};
use maestro_core::ports::PassageStore;
use maestro_core::search::SearchKind;
use maestro_host::memory::{Memories, NewMemory};
use maestro_host::retrieval::{Filters, Mode, Query, Ranks, Retrieval};
use serde_json::{Value, json};

use crate::fake_embed::FakeEmbedder;
use crate::harness::{Backend, TestDb, TestHost, backend_tests};
use crate::search::{Running, caught_up, hit_ids, new_session, open, remember, say, start};
use crate::server::{Server, maestro};

backend_tests!(
    hybrid_finds_a_memory_by_meaning_and_a_message_by_words_in_one_query,
    filters_narrow_both_sides_and_memory_filters_keep_only_memories,
    another_tenants_objects_never_appear_in_hybrid_or_vector_results,
    recency_decay_reorders_old_and_new_and_spares_a_pinned_memory,
    without_an_embedder_hybrid_answers_from_the_index_alone_and_says_so,
    a_served_document_is_found_by_meaning_through_its_passages,
    passages_count_once_per_object_at_their_best_and_take_the_filters,
);

/// A test host with an index, an embedder of the test's choice, and two tenants.
struct Hybrid {
    host: TestHost,
    running: Running,
    acme: TenantId,
    acme_token: String,
    globex: TenantId,
    globex_token: String,
    memories: Arc<Memories>,
}

impl Hybrid {
    async fn new(backend: Backend, embedder: Arc<dyn Embedder>) -> Self {
        let mut host = TestHost::new(backend).await;
        host.embedder = embedder.clone();
        let memories = Arc::new(Memories::new(host.store.clone(), embedder, host.clock.clone()));
        host.memories = Some(memories.clone());
        let running = start(open(&host.store, host.clock.clone(), &host.dir().join("index")));
        host.search = Some(running.index.clone());
        let platform = host.platform_token().await;
        let acme_token = host.tenant_with_key(&platform, "acme", "viewer").await;
        let globex_token = host.tenant_with_key(&platform, "globex", "viewer").await;
        let acme = host.accounts.tenant_named("acme").await.expect("acme").id;
        let globex = host.accounts.tenant_named("globex").await.expect("globex").id;
        Self { host, running, acme, acme_token, globex, globex_token, memories }
    }

    async fn remember(&self, tenant: &TenantId, memory: NewMemory) -> String {
        self.memories.store(tenant, memory).await.expect("memory").id.to_string()
    }

    async fn indexed(&self) {
        caught_up(&self.host.store, &self.running.index).await;
    }

    async fn search(&self, token: &str, body: Value) -> crate::harness::Reply {
        let reply = self.host.post("/v1/search", Some(token), body.clone()).await;
        assert_eq!(reply.status, StatusCode::OK, "{body}: {reply:?}");
        reply
    }
}

/// The hit of `id` in a reply.
fn hit<'a>(reply: &'a crate::harness::Reply, id: &str) -> &'a Value {
    let hits = reply.body["hits"].as_array().expect("hits");
    hits.iter().find(|h| h["id"] == id).unwrap_or_else(|| panic!("{id} not in {}", reply.body))
}

fn ids(reply: &crate::harness::Reply) -> HashSet<String> {
    hit_ids(reply).into_iter().collect()
}

async fn hybrid_finds_a_memory_by_meaning_and_a_message_by_words_in_one_query(backend: Backend) {
    let minilm: Arc<dyn Embedder> = crate::embed::model();
    let t = Hybrid::new(backend, minilm).await;
    let session = new_session(&t.host.store, &t.acme).await;
    // Shares no word with the query: only its meaning can find it.
    let by_meaning = t.remember(&t.acme, remember("Alice sneezes whenever a cat is in the room")).await;
    // Shares a word and a meaning.
    let both = t.remember(&t.acme, remember("Our office pet policy: no animals on the third floor")).await;
    let unrelated = t.remember(&t.acme, remember("The quarterly budget review moved to Friday")).await;
    // Shares the query's rare word; means something else.
    let by_words = say(&t.host.store, &session, "Ticket 4411: the allergy form is missing from the intranet").await;
    say(&t.host.store, &session, "Deploy the billing service after lunch").await;
    t.indexed().await;

    let reply = t.search(&t.acme_token, json!({ "query": "pet allergy", "limit": 5 })).await;
    assert_eq!(reply.body["mode"], "hybrid", "hybrid is the default: {}", reply.body);
    assert!(reply.body.get("degraded").is_none(), "{}", reply.body);
    let meaning = hit(&reply, &by_meaning);
    assert_eq!(meaning["kind"], "memory");
    assert!(meaning["ranks"]["text"].is_null(), "no shared word: {meaning}");
    assert!(meaning["ranks"]["vector"].as_u64().expect("a vector rank") <= 2, "{}", reply.body);
    assert_eq!(meaning["snippet"], "Alice sneezes whenever a cat is in the room");
    let words = hit(&reply, &by_words);
    assert_eq!(words["kind"], "message");
    assert!(words["ranks"]["text"].as_u64().expect("a text rank") <= 2, "{}", reply.body);
    assert!(!words["highlights"].as_array().expect("highlights").is_empty(), "{words}");
    let both_sides = hit(&reply, &both);
    assert!(both_sides["ranks"]["text"].is_u64() && both_sides["ranks"]["vector"].is_u64(), "{both_sides}");
    // Found by both sides leads; the unrelated memory trails the ones that match.
    let order = hit_ids(&reply);
    let first = &reply.body["hits"][0];
    assert!(first["ranks"]["text"].is_u64() && first["ranks"]["vector"].is_u64(), "{}", reply.body);
    let position = |id: &str| order.iter().position(|x| x == id);
    assert!(position(&unrelated).is_none_or(|p| p > position(&by_meaning).expect("found")), "{}", reply.body);
    let scores: Vec<f64> =
        reply.body["hits"].as_array().expect("hits").iter().map(|h| h["score"].as_f64().expect("score")).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "best first: {scores:?}");
    // A memory the search returned notes when it was used.
    let id = maestro_core::memory::MemoryId::parse(&by_meaning).expect("a memory id");
    let used = t.memories.get(&t.acme, &id).await.expect("the memory");
    assert!(used.last_used_at.is_some(), "{used:?}");

    // Each side alone.
    let text = t.search(&t.acme_token, json!({ "query": "pet allergy", "mode": "text" })).await;
    assert!(!ids(&text).contains(&by_meaning), "words alone miss it: {}", text.body);
    let vector =
        t.search(&t.acme_token, json!({ "query": "pet allergy", "mode": "vector", "kinds": ["memory"] })).await;
    assert_eq!(vector.body["mode"], "vector");
    let first = &vector.body["hits"][0];
    assert!(first["id"] == by_meaning.as_str() || first["id"] == both.as_str(), "{}", vector.body);
    assert!(first["ranks"]["text"].is_null() && first["ranks"]["vector"] == 1, "{first}");
    assert!(first["score"].as_f64().expect("cosine") > 0.2, "{first}");
    t.running.stop().await;
}

async fn filters_narrow_both_sides_and_memory_filters_keep_only_memories(backend: Backend) {
    let t = Hybrid::new(backend, Arc::new(FakeEmbedder::named("fake-a"))).await;
    let (acme, store) = (&t.acme, &t.host.store);
    let session = new_session(store, acme).await;
    let other_session = new_session(store, acme).await;
    let message = say(store, &session, "kiwi harvest report").await;
    let other_message = say(store, &other_session, "kiwi harvest planning").await;
    let tenant_wide =
        t.remember(acme, NewMemory { tags: vec!["fruit".into()], ..remember("kiwi harvest starts in May") }).await;
    let tagged_both = t
        .remember(
            acme,
            NewMemory { tags: vec!["fruit".into(), "farm".into()], ..remember("kiwi harvest needs ten pickers") },
        )
        .await;
    let persona = t
        .remember(
            acme,
            NewMemory { scope: MemoryScope::Persona("team.writer".into()), ..remember("kiwi harvest tone: cheerful") },
        )
        .await;
    let in_session = t
        .remember(
            acme,
            NewMemory { scope: MemoryScope::Session(session.clone()), ..remember("kiwi harvest in this session") },
        )
        .await;
    t.indexed().await;

    let everything: HashSet<String> =
        [&message, &other_message, &tenant_wide, &tagged_both, &persona, &in_session].into_iter().cloned().collect();
    let all = t.search(&t.acme_token, json!({ "query": "kiwi harvest", "limit": 50 })).await;
    assert_eq!(ids(&all), everything);
    for hit in all.body["hits"].as_array().expect("hits") {
        assert!(hit["ranks"]["text"].is_u64(), "every object holds both words: {hit}");
        if hit["kind"] == "memory" {
            assert!(hit["ranks"]["vector"].is_u64(), "memories have vectors: {hit}");
        }
    }

    // Each filter, on both sides, in hybrid and vector modes alike.
    let cases: Vec<(Value, HashSet<&String>)> = vec![
        (json!({ "kinds": ["memory"] }), HashSet::from([&tenant_wide, &tagged_both, &persona, &in_session])),
        (json!({ "kinds": ["message"] }), HashSet::from([&message, &other_message])),
        (json!({ "tags": ["fruit"] }), HashSet::from([&tenant_wide, &tagged_both])),
        (json!({ "tags": ["fruit", "farm"], "tags_match": "all" }), HashSet::from([&tagged_both])),
        (json!({ "scope": "persona" }), HashSet::from([&persona])),
        (json!({ "persona": "team.writer" }), HashSet::from([&persona])),
        (json!({ "scope": "tenant", "tags": ["farm"] }), HashSet::from([&tagged_both])),
        (json!({ "session": session.to_string() }), HashSet::from([&message, &in_session])),
        (json!({ "author": "team.writer", "kinds": ["memory"] }), HashSet::from([&persona])),
        (json!({ "persona": "team.writer", "author": "team.critic" }), HashSet::new()),
        (json!({ "tags": ["fruit"], "kinds": ["message"] }), HashSet::new()),
        (json!({ "until": "2000-01-01T00:00:00Z" }), HashSet::new()),
    ];
    for (filters, expected) in cases {
        let expected: HashSet<String> = expected.into_iter().cloned().collect();
        for mode in ["hybrid", "vector"] {
            let mut body = json!({ "query": "kiwi harvest", "mode": mode, "limit": 50 });
            for (key, value) in filters.as_object().expect("filters") {
                body[key] = value.clone();
            }
            let reply = t.search(&t.acme_token, body.clone()).await;
            let got = ids(&reply);
            if mode == "hybrid" {
                assert_eq!(got, expected, "{body}");
            } else {
                // Messages have no vectors until passages are built: memories only here.
                let memories: HashSet<String> = expected.iter().filter(|id| id.starts_with("mem_")).cloned().collect();
                assert_eq!(
                    got.iter().filter(|id| id.starts_with("mem_")).cloned().collect::<HashSet<_>>(),
                    memories,
                    "{body}"
                );
                assert!(got.is_subset(&expected), "{body}: {got:?}");
            }
        }
    }
    // A limit of 2 keeps the best 2 of the fused list.
    let two = t.search(&t.acme_token, json!({ "query": "kiwi harvest", "limit": 2 })).await;
    assert_eq!(hit_ids(&two), hit_ids(&all)[..2]);

    for (body, message) in [
        (json!({ "query": "kiwi", "scope": "galaxy" }), "unknown scope"),
        (json!({ "query": "kiwi", "tags": ["has space"] }), "tag"),
        (json!({ "query": "kiwi", "persona": "writer" }), "qualified persona name"),
        (json!({ "query": "kiwi", "half_life": "soon" }), "half_life"),
        (json!({ "query": "kiwi", "mode": "text", "half_life": "7d" }), "hybrid searches only"),
        (json!({ "query": "kiwi", "limit": 101 }), "limit"),
        (json!({ "query": " " }), "empty"),
    ] {
        let reply = t.host.post("/v1/search", Some(&t.acme_token), body.clone()).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {reply:?}");
        assert_eq!(reply.code(), "invalid_request");
        assert!(reply.body["error"]["message"].as_str().expect("message").contains(message), "{body}: {reply:?}");
    }
    t.running.stop().await;
}

async fn another_tenants_objects_never_appear_in_hybrid_or_vector_results(backend: Backend) {
    let t = Hybrid::new(backend, Arc::new(FakeEmbedder::named("fake-a"))).await;
    let mine = new_session(&t.host.store, &t.acme).await;
    let theirs = new_session(&t.host.store, &t.globex).await;
    let text = "the secret recipe uses saffron";
    let acme_ids: HashSet<String> =
        HashSet::from([t.remember(&t.acme, remember(text)).await, say(&t.host.store, &mine, text).await]);
    let globex_ids: HashSet<String> = HashSet::from([
        t.remember(&t.globex, remember(text)).await,
        t.remember(&t.globex, NewMemory { pinned: true, ..remember("saffron saffron saffron") }).await,
        say(&t.host.store, &theirs, text).await,
    ]);
    t.indexed().await;
    for mode in ["hybrid", "vector", "text"] {
        for query in [text, "saffron", "*", &format!("tenant:{}", t.globex)] {
            let body = json!({ "query": query, "mode": mode, "limit": 100, "half_life": if mode == "hybrid" { json!("1d") } else { Value::Null } });
            let mine = ids(&t.search(&t.acme_token, body.clone()).await);
            assert!(mine.is_subset(&acme_ids), "{body}: {mine:?}");
            let theirs = ids(&t.search(&t.globex_token, body.clone()).await);
            assert!(theirs.is_subset(&globex_ids), "{body}: {theirs:?}");
        }
    }
    let mine = ids(&t.search(&t.acme_token, json!({ "query": text })).await);
    assert_eq!(mine, acme_ids, "both of acme's, by words and by meaning");
    t.running.stop().await;
}

async fn recency_decay_reorders_old_and_new_and_spares_a_pinned_memory(backend: Backend) {
    let mut t = Hybrid::new(backend, Arc::new(FakeEmbedder::named("fake-a"))).await;
    let old = t.remember(&t.acme, remember("heliotrope launch code")).await;
    let pinned = t.remember(&t.acme, NewMemory { pinned: true, ..remember("heliotrope launch code!") }).await;
    t.host.clock.advance(chrono::Duration::days(60));
    let new = t.remember(&t.acme, remember("today the heliotrope launch code changed again, said the team lead")).await;
    t.indexed().await;
    let order = |reply: &crate::harness::Reply| hit_ids(reply);
    let query = json!({ "query": "heliotrope launch code" });

    let plain = t.search(&t.acme_token, query.clone()).await;
    assert_eq!(order(&plain)[2], new, "without decay the closer old texts lead: {}", plain.body);
    for half_life in [json!("0s"), Value::Null] {
        let mut body = query.clone();
        body["half_life"] = half_life;
        assert_eq!(order(&t.search(&t.acme_token, body).await), order(&plain), "no decay by default or with 0s");
    }

    let mut decayed = query.clone();
    decayed["half_life"] = json!("7d");
    let reply = t.search(&t.acme_token, decayed).await;
    assert_eq!(order(&reply), [pinned.clone(), new.clone(), old.clone()], "{}", reply.body);
    assert_eq!(hit(&reply, &pinned)["pinned"], true);
    let score = |reply: &crate::harness::Reply, id: &str| hit(reply, id)["score"].as_f64().expect("score");
    assert_eq!(score(&reply, &pinned), score(&plain, &pinned), "a pinned memory keeps its score");
    assert_eq!(score(&reply, &new), score(&plain, &new), "age zero keeps its score");
    let factor = score(&reply, &old) / score(&plain, &old);
    assert!((factor - 0.5f64.powf(60.0 / 7.0)).abs() < 1e-9, "halved per half-life: {factor}");
    // Ranks are each side's, before decay.
    assert_eq!(hit(&reply, &old)["ranks"], hit(&plain, &old)["ranks"]);

    // The configured default applies when the request says nothing.
    t.host.half_life = Some(Duration::from_secs(7 * 86_400));
    assert_eq!(order(&t.search(&t.acme_token, query.clone()).await), [pinned, new, old]);
    t.running.stop().await;
}

async fn without_an_embedder_hybrid_answers_from_the_index_alone_and_says_so(backend: Backend) {
    let fake = Arc::new(FakeEmbedder::named("fake-a"));
    let t = Hybrid::new(backend, fake.clone()).await;
    let session = new_session(&t.host.store, &t.acme).await;
    let message = say(&t.host.store, &session, "the walrus report is due").await;
    let memory = t.remember(&t.acme, remember("walrus facts")).await;
    t.indexed().await;
    fake.fail_with("the model is not here");

    let reply = t.search(&t.acme_token, json!({ "query": "walrus" })).await;
    assert_eq!(ids(&reply), HashSet::from([message, memory]));
    for hit in reply.body["hits"].as_array().expect("hits") {
        assert!(hit["ranks"]["vector"].is_null() && hit["ranks"]["text"].is_u64(), "{hit}");
    }
    let degraded = reply.body["degraded"].as_str().expect("a degraded note");
    assert!(degraded.contains("full-text results only"), "{degraded}");

    let vector = t.host.post("/v1/search", Some(&t.acme_token), json!({ "query": "walrus", "mode": "vector" })).await;
    assert_eq!(vector.status, StatusCode::SERVICE_UNAVAILABLE, "{vector:?}");
    assert_eq!(vector.code(), "embedder_unavailable");
    assert!(!vector.body.to_string().contains("not here"), "5xx bodies stay generic: {vector:?}");
    t.running.stop().await;
}

/// Through a real server: a document's passages get vectors in the background (helper
/// `vec`'s follower), and hybrid search finds the document by meaning. Fails until the
/// passage vectors are merged (the placeholder store answers no passage).
async fn a_served_document_is_found_by_meaning_through_its_passages(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut command = maestro(&db, backend);
    command.env("MAESTRO_EMBEDDINGS_MODEL_DIR", crate::embed::model_dir());
    let server = Server::start(command, &db.dir(), 1).await;
    let platform = server.bootstrap_token();
    let (status, _) =
        server.call(reqwest::Method::POST, "/v1/tenants", &platform, Some(json!({ "name": "acme" }))).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, key) = server
        .call(reqwest::Method::POST, "/v1/keys", &platform, Some(json!({ "tenant": "acme", "role": "member" })))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let token = key["token"].as_str().expect("token").to_owned();
    let document = json!({
        "title": "Field notes",
        "kind": "markdown",
        "content": "Our golden retriever barks at the mail carrier every single morning.",
    });
    let (status, created) = server.call(reqwest::Method::POST, "/v1/documents", &token, Some(document)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().expect("id").to_owned();

    // No shared word with the document: only its passage's vector can find it.
    let query = json!({ "query": "noisy puppy", "mode": "hybrid" });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    loop {
        let (status, reply) = server.call(reqwest::Method::POST, "/v1/search", &token, Some(query.clone())).await;
        assert_eq!(status, StatusCode::OK, "{reply}");
        let found = reply["hits"].as_array().expect("hits").iter().find(|h| h["id"] == id.as_str()).cloned();
        if let Some(hit) = found {
            assert_eq!(hit["kind"], "document");
            assert!(hit["ranks"]["text"].is_null() && hit["ranks"]["vector"].is_u64(), "{hit}");
            assert!(hit["snippet"].as_str().expect("snippet").contains("golden retriever"), "{hit}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the document was never found by meaning (are passage vectors built?): {reply}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.stop().await;
}

/// A `PassageStore` answering from passages the test gives it (the real one is helper
/// `vec`'s): the tenant's passages of the query's embedder passing the filter, nearest
/// first; it records the filters it was asked with.
#[derive(Debug, Default)]
struct FakePassages {
    passages: Vec<(Passage, Vec<f32>)>,
    asked: std::sync::Mutex<Vec<PassageFilter>>,
}

#[async_trait::async_trait]
impl PassageStore for FakePassages {
    async fn search_passages(
        &self,
        tenant: &TenantId,
        _embedder: &maestro_core::embed::EmbedderInfo,
        query: &[f32],
        filter: &PassageFilter,
        k: u32,
    ) -> Result<Vec<PassageHit>, maestro_core::StoreError> {
        self.asked.lock().expect("asked").push(filter.clone());
        let mut hits: Vec<PassageHit> = self
            .passages
            .iter()
            .filter(|(p, _)| &p.tenant == tenant && filter.matches(p))
            .map(|(p, v)| PassageHit { passage: p.clone(), score: maestro_core::embed::dot(query, v) })
            .collect();
        hits.sort_by(|a, b| b.score.total_cmp(&a.score));
        hits.truncate(k as usize);
        Ok(hits)
    }

    // The follower's side: search never calls it.
    async fn passage_follower(&self) -> Result<maestro_core::passage::FollowerState, maestro_core::StoreError> {
        Err(not_searching())
    }

    async fn stored_passages(
        &self,
        _kind: SearchKind,
        _ids: &[String],
    ) -> Result<Vec<maestro_core::passage::StoredPassage>, maestro_core::StoreError> {
        Err(not_searching())
    }

    async fn passage_objects_between(
        &self,
        _kind: SearchKind,
        _after: Option<&str>,
        _through: Option<&str>,
    ) -> Result<Vec<String>, maestro_core::StoreError> {
        Err(not_searching())
    }

    async fn write_passages(
        &self,
        _write: &maestro_core::passage::PassageWrite,
    ) -> Result<bool, maestro_core::StoreError> {
        Err(not_searching())
    }

    async fn has_stale_passages(
        &self,
        _current: &maestro_core::embed::EmbedderInfo,
    ) -> Result<bool, maestro_core::StoreError> {
        Err(not_searching())
    }
}

fn not_searching() -> maestro_core::StoreError {
    maestro_core::StoreError::Corrupt("the fake passage store only searches".into())
}

async fn passages_count_once_per_object_at_their_best_and_take_the_filters(backend: Backend) {
    let t = Hybrid::new(backend, Arc::new(FakeEmbedder::named("fake-a"))).await;
    let session = new_session(&t.host.store, &t.acme).await;
    let message = say(&t.host.store, &session, "photos of the fishing trip").await;
    t.indexed().await;
    let at = chrono::DateTime::from_timestamp_millis(1_700_000_000_000).expect("time");
    let passage =
        |tenant: &TenantId, kind, object: &str, chunk, session: Option<maestro_core::run::SessionId>, text: &str| {
            let passage = Passage {
                tenant: tenant.clone(),
                kind,
                object: object.into(),
                chunk,
                session,
                author: Some("team.writer".into()),
                at,
                text: text.into(),
            };
            let vector = FakeEmbedder::vector(text);
            (passage, vector)
        };
    let fake = Arc::new(FakePassages {
        passages: vec![
            passage(&t.acme, SearchKind::Document, "doc_quotas", 0, None, "deep sea fishing quotas for next year"),
            passage(&t.acme, SearchKind::Document, "doc_quotas", 1, None, "the boats were repaired in March"),
            passage(&t.acme, SearchKind::Document, "doc_quotas", 2, None, "fishing quotas fishing quotas"),
            passage(&t.acme, SearchKind::Message, &message, 0, Some(session.clone()), "photos of the fishing trip"),
            passage(&t.globex, SearchKind::Document, "doc_theirs", 0, None, "fishing quotas of globex"),
        ],
        asked: Default::default(),
    });
    let retrieval = Retrieval::new(
        Some(t.running.index.clone()),
        t.host.store.clone(),
        fake.clone(),
        t.host.embedder.clone(),
        t.host.clock.clone(),
        None,
    );
    let query =
        |mode, filters: Filters| Query { text: "fishing quotas".into(), mode, filters, limit: 10, half_life: None };

    let found = retrieval.search(&t.acme, &query(Mode::Vector, Filters::default())).await.expect("vector");
    let keys: Vec<(SearchKind, &str)> = found.hits.iter().map(|h| (h.kind, h.id.as_str())).collect();
    assert_eq!(keys, [(SearchKind::Document, "doc_quotas"), (SearchKind::Message, message.as_str())], "{found:?}");
    let document = &found.hits[0];
    assert_eq!(document.snippet, "fishing quotas fishing quotas", "its best passage");
    assert_eq!(document.ranks, Ranks { text: None, vector: Some(1) });
    assert_eq!((document.author.as_deref(), document.at), (Some("team.writer"), at));
    assert_eq!(found.hits[1].session.as_deref(), Some(session.as_str()));

    // Hybrid: the message found by both sides, the document by its vectors only.
    let fused = retrieval.search(&t.acme, &query(Mode::Hybrid, Filters::default())).await.expect("hybrid");
    let message_hit = fused.hits.iter().find(|h| h.id == message).expect("the message");
    assert_eq!(message_hit.ranks, Ranks { text: Some(1), vector: Some(2) });
    assert!(!message_hit.highlights.is_empty(), "the index's snippet: {message_hit:?}");
    assert!(fused.hits.iter().all(|h| h.id != "doc_theirs"));

    // Filters reach the passage side as they are; memory filters keep passages out.
    fake.asked.lock().expect("asked").clear();
    let since = at - chrono::Duration::days(1);
    let filters = Filters {
        kinds: vec![SearchKind::Message],
        session: Some(session.clone()),
        author: Some("team.writer".into()),
        since: Some(since),
        ..Filters::default()
    };
    let narrowed = retrieval.search(&t.acme, &query(Mode::Hybrid, filters)).await.expect("filtered");
    assert_eq!(narrowed.hits.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(), [message.as_str()]);
    let asked = fake.asked.lock().expect("asked").clone();
    assert_eq!(
        asked,
        [PassageFilter {
            kinds: vec![SearchKind::Message],
            session: Some(session.clone()),
            exclude_session: None,
            author: Some("team.writer".into()),
            since: Some(since),
            until: None,
        }]
    );
    fake.asked.lock().expect("asked").clear();
    let tagged = Filters { tags: vec!["fishing".into()], ..Filters::default() };
    retrieval.search(&t.acme, &query(Mode::Hybrid, tagged)).await.expect("tagged");
    assert!(fake.asked.lock().expect("asked").is_empty(), "passages carry no tags: not asked");
    t.running.stop().await;
}
