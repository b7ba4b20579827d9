//! Memories on both backends: the HTTP API (create, read, edit, delete, list with
//! filters and a cursor, search; roles; bad input; tenant isolation on every route),
//! nearest-neighbour search through the store (a small tenant's exact top-k inside a
//! large tenant's data clustered around the same query; a large tenant's filtered top-k
//! through pgvector's HNSW index with iterative scans, checked with `EXPLAIN`, recall
//! measured against an exact scan), and re-embedding after an embedder change.
//!
//! The embedder is [`FakeEmbedder`], deterministic, defined here until the shared fake
//! of the embedder work lands (`fake_embed.rs`): each lowercase word is hashed to a
//! dimension and a sign, so texts sharing words are near.

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use chrono::{DateTime, Utc};
use maestro_core::embed::{Embedder, EmbedderInfo, normalise};
use maestro_core::memory::{Memory, MemoryFilter, MemoryId, MemoryScope, TagMatch};
use maestro_core::run::{RunLimits, Session, SessionId, Strategy};
use maestro_core::{Clock as _, Store, TenantId, TenantName};
use maestro_host::memory::{Memories, Reembed};
use serde_json::{Value, json};

use crate::fake_embed::FakeEmbedder;
use crate::harness::{Backend, TestDb, TestHost, backend_tests};

backend_tests!(
    memories_are_created_read_edited_listed_and_deleted_over_http,
    listing_filters_by_scope_persona_session_tags_and_time_and_pages_with_a_cursor,
    search_returns_the_nearest_memories_of_the_tenant_with_filters_and_notes_their_use,
    another_tenants_memories_answer_404_and_never_appear,
    viewers_read_and_search_members_write_and_platform_keys_are_refused,
    bad_input_is_refused_with_a_clear_error_and_writes_nothing,
    a_small_tenant_gets_its_own_top_k_inside_large_tenants_data_clustered_around_the_query,
    changing_the_embedder_re_embeds_every_memory_in_the_background,
    a_search_sees_writes_made_through_another_store_on_the_same_database,
    interleaved_writes_and_searches_find_what_a_fresh_store_finds_and_tenants_never_mix,
);

struct Api {
    host: TestHost,
    platform: String,
    member: String,
}

async fn api(backend: Backend) -> Api {
    let host = TestHost::new(backend).await;
    let platform = host.platform_token().await;
    let member = host.tenant_with_key(&platform, "acme", "member").await;
    Api { host, platform, member }
}

impl Api {
    async fn remember(&self, token: &str, body: Value) -> Value {
        let reply = self.host.post("/v1/memories", Some(token), body).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
        reply.body
    }

    async fn tenant_id(&self, name: &str) -> TenantId {
        let name = TenantName::parse(name).expect("name");
        self.host.store.tenant_by_name(&name).await.expect("store").expect("tenant").id
    }

    async fn session(&self, tenant: &str) -> SessionId {
        new_session(&self.host.store, &self.tenant_id(tenant).await).await
    }

    fn ids(body: &Value, list: &str) -> Vec<String> {
        body[list].as_array().expect("list").iter().map(|m| m["id"].as_str().expect("id").to_owned()).collect()
    }

    async fn list(&self, token: &str, query: &str) -> Vec<String> {
        let reply = self.host.get(&format!("/v1/memories{query}"), Some(token)).await;
        assert_eq!(reply.status, StatusCode::OK, "{query}: {reply:?}");
        Self::ids(&reply.body, "memories")
    }

    async fn search(&self, token: &str, body: Value) -> Vec<(String, String)> {
        let reply = self.host.post("/v1/memories/search", Some(token), body).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        reply.body["hits"]
            .as_array()
            .expect("hits")
            .iter()
            .map(|h| {
                (
                    h["memory"]["id"].as_str().expect("id").to_owned(),
                    h["memory"]["text"].as_str().expect("text").to_owned(),
                )
            })
            .collect()
    }
}

async fn new_session(store: &Arc<dyn Store>, tenant: &TenantId) -> SessionId {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("random");
    let session = Session {
        id: SessionId::from_random(bytes),
        tenant: tenant.clone(),
        title: "a session".into(),
        personas: vec!["team.writer".into()],
        strategy: Strategy::RoundRobin,
        limits: RunLimits {
            max_steps: 5,
            max_tool_calls_per_step: 3,
            credits_budget: None,
            deadline_secs: 120,
            wait_timeout_secs: None,
        },
        created_by: "key_creator".into(),
        created_at: Utc::now(),
    };
    store.create_session(&session).await.expect("create session");
    session.id
}

async fn memories_are_created_read_edited_listed_and_deleted_over_http(backend: Backend) {
    let api = api(backend).await;
    let created = api
        .remember(
            &api.member,
            json!({ "text": "  The customer prefers invoices in EUR  ", "tags": ["Billing", "eur"] }),
        )
        .await;
    let id = created["id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("mem_"));
    assert_eq!(created["text"], "The customer prefers invoices in EUR");
    assert_eq!(created["tags"], json!(["billing", "eur"]));
    assert_eq!((created["scope"].clone(), created["pinned"].clone()), (json!("tenant"), json!(false)));
    assert_eq!(created["embedder"], "fake/fake-a@384");
    assert_eq!(created["last_used_at"], Value::Null);

    let read = api.host.get(&format!("/v1/memories/{id}"), Some(&api.member)).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.body, created);

    api.host.clock.advance(chrono::Duration::seconds(5));
    let patched = api
        .host
        .send(
            Method::PATCH,
            &format!("/v1/memories/{id}"),
            Some(&api.member),
            Some(json!({ "text": "Invoices go out in USD", "pinned": true })),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{patched:?}");
    assert_eq!(patched.body["text"], "Invoices go out in USD");
    assert_eq!(patched.body["pinned"], true);
    assert_eq!(patched.body["tags"], json!(["billing", "eur"]), "tags not named stay");
    assert_ne!(patched.body["updated_at"], created["updated_at"]);
    assert_eq!(patched.body["created_at"], created["created_at"]);
    // The new text was re-embedded: a search for it finds it first.
    let hits = api.search(&api.member, json!({ "query": "invoices in USD", "k": 1 })).await;
    assert_eq!(hits, vec![(id.clone(), "Invoices go out in USD".to_owned())]);

    assert_eq!(api.list(&api.member, "").await, vec![id.clone()]);
    let deleted = api.host.delete(&format!("/v1/memories/{id}"), Some(&api.member)).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{deleted:?}");
    assert_eq!(api.host.get(&format!("/v1/memories/{id}"), Some(&api.member)).await.code(), "not_found");
    assert_eq!(api.host.delete(&format!("/v1/memories/{id}"), Some(&api.member)).await.status, StatusCode::NOT_FOUND);
    assert!(api.list(&api.member, "").await.is_empty());
    assert!(api.search(&api.member, json!({ "query": "invoices" })).await.is_empty());
}

async fn listing_filters_by_scope_persona_session_tags_and_time_and_pages_with_a_cursor(backend: Backend) {
    let api = api(backend).await;
    let session = api.session("acme").await;
    let mut ids = Vec::new();
    let bodies = [
        json!({ "text": "tenant fact", "tags": ["red"] }),
        json!({ "text": "writer habit", "scope": "persona", "persona": "team.writer", "tags": ["red", "blue"] }),
        json!({ "text": "critic habit", "scope": "persona", "persona": "team.critic", "tags": ["blue"] }),
        json!({ "text": "session fact", "scope": "session", "session": session.as_str() }),
    ];
    let start = api.host.clock.now();
    for body in bodies {
        api.host.clock.advance(chrono::Duration::seconds(1));
        ids.push(api.remember(&api.member, body).await["id"].as_str().expect("id").to_owned());
    }
    let newest_first = |picks: &[usize]| picks.iter().rev().map(|i| ids[*i].clone()).collect::<Vec<_>>();
    let m = &api.member;
    assert_eq!(api.list(m, "").await, newest_first(&[0, 1, 2, 3]));
    assert_eq!(api.list(m, "?scope=persona").await, newest_first(&[1, 2]));
    assert_eq!(api.list(m, "?persona=team.writer").await, newest_first(&[1]));
    assert_eq!(api.list(m, &format!("?session={}", session.as_str())).await, newest_first(&[3]));
    assert_eq!(api.list(m, "?tags=red").await, newest_first(&[0, 1]));
    assert_eq!(api.list(m, "?tags=red,blue").await, newest_first(&[0, 1, 2]));
    assert_eq!(api.list(m, "?tags=red,blue&tags_match=all").await, newest_first(&[1]));
    let at = |s: i64| (start + chrono::Duration::seconds(s)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let range = format!("?created_from={}&created_to={}", urlencode(&at(2)), urlencode(&at(4)));
    assert_eq!(api.list(m, &range).await, newest_first(&[1, 2]));
    // Pages of one, following `next`.
    let mut seen = Vec::new();
    let mut query = "?limit=1".to_owned();
    loop {
        let reply = api.host.get(&format!("/v1/memories{query}"), Some(m)).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        seen.extend(Api::ids(&reply.body, "memories"));
        match reply.body["next"].as_str() {
            Some(next) => query = format!("?limit=1&before={next}"),
            None => break,
        }
    }
    assert_eq!(seen, newest_first(&[0, 1, 2, 3]));
    // The shared filter reference agrees with the store on a filter of every kind.
    let tenant = api.tenant_id("acme").await;
    let memories = api.host.memories.clone().expect("memories");
    let all = memories.list(&tenant, &MemoryFilter::default(), None, 200).await.expect("list");
    let filter = MemoryFilter {
        tags: vec!["blue".into()],
        tag_match: TagMatch::Any,
        scope_kind: Some("persona"),
        ..Default::default()
    };
    let expected: Vec<&Memory> = all.iter().filter(|m| filter.matches(m)).collect();
    let got = memories.list(&tenant, &filter, None, 200).await.expect("list");
    assert_eq!(got.iter().collect::<Vec<_>>(), expected);
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

async fn search_returns_the_nearest_memories_of_the_tenant_with_filters_and_notes_their_use(backend: Backend) {
    let api = api(backend).await;
    let texts = [
        ("the office wifi password rotates monthly", vec!["it"]),
        ("lunch is served at noon in the cafeteria", vec!["office"]),
        ("the build server runs nightly at two", vec!["it"]),
        ("the office wifi network is called guest", vec!["office"]),
    ];
    let mut ids = Vec::new();
    for (text, tags) in texts {
        ids.push(
            api.remember(&api.member, json!({ "text": text, "tags": tags })).await["id"]
                .as_str()
                .expect("id")
                .to_owned(),
        );
    }
    let hits = api.search(&api.member, json!({ "query": "office wifi", "k": 2 })).await;
    let got: Vec<&str> = hits.iter().map(|(id, _)| id.as_str()).collect();
    let mut expected = vec![ids[0].as_str(), ids[3].as_str()];
    expected.sort();
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(sorted, expected, "{hits:?}");
    let tagged = api.search(&api.member, json!({ "query": "office wifi", "k": 5, "tags": ["it"] })).await;
    assert_eq!(tagged[0].0, ids[0]);
    assert!(tagged.iter().all(|(id, _)| *id == ids[0] || *id == ids[2]), "{tagged:?}");
    // Scores are cosine similarities, best first.
    let reply =
        api.host.post("/v1/memories/search", Some(&api.member), json!({ "query": "office wifi", "k": 4 })).await;
    let scores: Vec<f64> =
        reply.body["hits"].as_array().expect("hits").iter().map(|h| h["score"].as_f64().expect("score")).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]) && scores[0] <= 1.0001, "{scores:?}");
    // Hits note when they were used.
    let read = api.host.get(&format!("/v1/memories/{}", ids[0]), Some(&api.member)).await;
    assert_ne!(read.body["last_used_at"], Value::Null);
    let unused = api.host.get(&format!("/v1/memories/{}", ids[1]), Some(&api.member)).await;
    assert!(scores.len() == 4 || unused.body["last_used_at"] == Value::Null);
}

async fn another_tenants_memories_answer_404_and_never_appear(backend: Backend) {
    let api = api(backend).await;
    let other = api.host.tenant_with_key(&api.platform, "globex", "admin").await;
    let theirs = api.remember(&other, json!({ "text": "globex secret plan", "tags": ["plan"] })).await;
    let id = theirs["id"].as_str().expect("id");
    api.remember(&api.member, json!({ "text": "acme public plan", "tags": ["plan"] })).await;
    let m = &api.member;
    assert_eq!(api.host.get(&format!("/v1/memories/{id}"), Some(m)).await.code(), "not_found");
    let patched =
        api.host.send(Method::PATCH, &format!("/v1/memories/{id}"), Some(m), Some(json!({ "pinned": true }))).await;
    assert_eq!(patched.code(), "not_found");
    let edit = json!({ "text": "acme was here" });
    assert_eq!(
        api.host.send(Method::PATCH, &format!("/v1/memories/{id}"), Some(m), Some(edit)).await.code(),
        "not_found"
    );
    assert_eq!(api.host.delete(&format!("/v1/memories/{id}"), Some(m)).await.code(), "not_found");
    let listed = api.list(m, "?tags=plan").await;
    assert_eq!(listed.len(), 1);
    assert!(!listed.contains(&id.to_owned()));
    let hits = api.search(m, json!({ "query": "globex secret plan", "k": 100 })).await;
    assert!(hits.iter().all(|(hit, text)| hit != id && !text.contains("globex")), "{hits:?}");
    // A cursor of another tenant's memory gives an empty page, not theirs.
    assert!(api.list(m, &format!("?before={id}")).await.is_empty());
    // Their session cannot scope our memory.
    let their_session = api.session("globex").await;
    let reply = api
        .host
        .post("/v1/memories", Some(m), json!({ "text": "x", "scope": "session", "session": their_session.as_str() }))
        .await;
    assert_eq!(reply.code(), "not_found", "{reply:?}");
    // Untouched for its owner.
    let read = api.host.get(&format!("/v1/memories/{id}"), Some(&other)).await;
    assert_eq!(read.body, theirs);
}

async fn viewers_read_and_search_members_write_and_platform_keys_are_refused(backend: Backend) {
    let api = api(backend).await;
    let viewer = api.host.key(&api.platform, json!({ "tenant": "acme", "role": "viewer" })).await;
    let id = api.remember(&api.member, json!({ "text": "a fact" })).await["id"].as_str().expect("id").to_owned();
    assert_eq!(api.list(&viewer, "").await, vec![id.clone()]);
    assert_eq!(api.search(&viewer, json!({ "query": "a fact" })).await.len(), 1);
    assert_eq!(api.host.get(&format!("/v1/memories/{id}"), Some(&viewer)).await.status, StatusCode::OK);
    assert_eq!(api.host.post("/v1/memories", Some(&viewer), json!({ "text": "no" })).await.code(), "forbidden");
    let patch = api
        .host
        .send(Method::PATCH, &format!("/v1/memories/{id}"), Some(&viewer), Some(json!({ "pinned": true })))
        .await;
    assert_eq!(patch.code(), "forbidden");
    assert_eq!(api.host.delete(&format!("/v1/memories/{id}"), Some(&viewer)).await.code(), "forbidden");
    assert_eq!(api.host.get("/v1/memories", Some(&api.platform)).await.code(), "forbidden");
    assert_eq!(api.host.get("/v1/memories", None).await.code(), "unauthorized");
    assert_eq!(api.list(&api.member, "").await, vec![id]);
}

async fn bad_input_is_refused_with_a_clear_error_and_writes_nothing(backend: Backend) {
    let api = api(backend).await;
    let m = &api.member;
    let refused = [
        (json!({ "text": "" }), "empty"),
        (json!({ "text": "   \n " }), "empty"),
        (json!({ "text": "x".repeat(4097) }), "4097 bytes"),
        (json!({ "text": "a\u{0007}b" }), "control"),
        (json!({ "text": "ok", "scope": "galaxy" }), "unknown scope"),
        (json!({ "text": "ok", "scope": "persona" }), "needs its name"),
        (json!({ "text": "ok", "scope": "persona", "persona": "nodot" }), "qualified"),
        (json!({ "text": "ok", "scope": "session", "session": "ses_bad" }), "session id"),
        (json!({ "text": "ok", "persona": "team.writer" }), "names nothing"),
        (json!({ "text": "ok", "tags": ["has space"] }), "tag"),
        (json!({ "text": "ok", "tags": (0..17).map(|i| format!("t{i}")).collect::<Vec<_>>() }), "at most 16"),
        (json!({ "text": "ok", "surprise": 1 }), "surprise"),
    ];
    for (body, says) in refused {
        let reply = api.host.post("/v1/memories", Some(m), body.clone()).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {reply:?}");
        assert_eq!(reply.code(), "invalid_request");
        let message = reply.body["error"]["message"].as_str().expect("message");
        assert!(message.contains(says), "{body}: {message}");
    }
    let valid_session = SessionId::from_random([9; 16]);
    let reply = api
        .host
        .post("/v1/memories", Some(m), json!({ "text": "ok", "scope": "session", "session": valid_session.as_str() }))
        .await;
    assert_eq!(reply.code(), "not_found", "an unknown session: {reply:?}");
    assert!(api.list(m, "").await.is_empty(), "nothing was written");
    let id = api.remember(m, json!({ "text": "kept" })).await["id"].as_str().expect("id").to_owned();
    let empty =
        api.host.send(Method::PATCH, &format!("/v1/memories/{id}"), Some(m), Some(json!({ "text": " " }))).await;
    assert_eq!(empty.code(), "invalid_request");
    assert_eq!(api.host.get(&format!("/v1/memories/{id}"), Some(m)).await.body["text"], "kept");
    for (query, says) in
        [("?scope=galaxy", "unknown scope"), ("?limit=0", "limit"), ("?before=nope", "cursor"), ("?tags=a%20b", "tag")]
    {
        let reply = api.host.get(&format!("/v1/memories{query}"), Some(m)).await;
        assert_eq!(reply.code(), "invalid_request", "{query}: {reply:?}");
        assert!(reply.body["error"]["message"].as_str().expect("message").contains(says), "{query}: {reply:?}");
    }
    for body in [
        json!({ "query": "" }),
        json!({ "query": "x", "k": 0 }),
        json!({ "query": "x", "k": 101 }),
        json!({ "query": "x", "scope": "nope" }),
    ] {
        let reply = api.host.post("/v1/memories/search", Some(m), body.clone()).await;
        assert_eq!(reply.code(), "invalid_request", "{body}: {reply:?}");
    }
    assert_eq!(api.host.get("/v1/memories/mem_nope", Some(m)).await.code(), "not_found");
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    /// A unit vector near `center` (noise of `spread`).
    fn near(&mut self, center: &[f32], spread: f32) -> Vec<f32> {
        let mut v: Vec<f32> = center.iter().map(|c| c + spread * self.next()).collect();
        normalise(&mut v);
        v
    }
}

fn stored(tenant: &TenantId, embedder: &EmbedderInfo, tags: &[&str], at: DateTime<Utc>) -> Memory {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("random");
    Memory {
        id: MemoryId::from_random(bytes),
        tenant: tenant.clone(),
        scope: MemoryScope::Tenant,
        text: "generated".into(),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        pinned: false,
        source: None,
        created_at: at,
        updated_at: at,
        last_used_at: None,
        embedder: embedder.clone(),
    }
}

/// The exact top-k ids of `rows` for `query` (the reference recall is measured against).
fn exact(rows: &[(Memory, Vec<f32>)], query: &[f32], k: usize, keep: impl Fn(&Memory) -> bool) -> Vec<MemoryId> {
    let mut scored: Vec<(f32, &MemoryId)> =
        rows.iter().filter(|(m, _)| keep(m)).map(|(m, v)| (maestro_core::embed::dot(query, v), &m.id)).collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored.into_iter().take(k).map(|(_, id)| id.clone()).collect()
}

fn recall(got: &[MemoryId], expected: &[MemoryId]) -> f64 {
    let found = expected.iter().filter(|id| got.contains(id)).count();
    found as f64 / expected.len().max(1) as f64
}

async fn a_small_tenant_gets_its_own_top_k_inside_large_tenants_data_clustered_around_the_query(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    let embedder = FakeEmbedder::named("fake-a").info().clone();
    let at = Utc::now();
    let tenant = |name: &'static str| {
        let store = store.clone();
        async move {
            let mut bytes = [0u8; 16];
            getrandom::fill(&mut bytes).expect("random");
            let t = maestro_core::Tenant {
                id: TenantId::from_random(bytes),
                name: TenantName::parse(name).expect("name"),
                created_at: at,
            };
            store.create_tenant(&t).await.expect("tenant");
            t.id
        }
    };
    let (big, large, small) = (tenant("big").await, tenant("large").await, tenant("small").await);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let center: Vec<f32> = (0..crate::fake_embed::DIMENSIONS).map(|_| rng.next()).collect();
    let query = rng.near(&center, 0.05);
    // Two large tenants clustered tightly around the query, above the exact-scan
    // threshold so that their searches go through HNSW on Postgres; one in ten rows of
    // `large` tagged `rare`.
    let per_large = usize::try_from(maestro_host::storage::memories::EXACT_SCAN_BELOW).expect("small") + 500;
    let mut rows_large = Vec::new();
    for (t, rows) in [(&big, &mut Vec::new()), (&large, &mut rows_large)] {
        for i in 0..per_large {
            let tags: &[&str] = if i % 10 == 0 { &["rare"] } else { &[] };
            rows.push((stored(t, &embedder, tags, at), rng.near(&center, 0.3)));
        }
        for chunk in rows.chunks(500) {
            store.insert_memories(chunk).await.expect("insert");
        }
    }
    // The small tenant: ten memories, looser around the same centre.
    let rows_small: Vec<(Memory, Vec<f32>)> =
        (0..10).map(|_| (stored(&small, &embedder, &[], at), rng.near(&center, 0.6))).collect();
    store.insert_memories(&rows_small).await.expect("insert");

    let any = MemoryFilter::default();
    let hits = store.search_memories(&small, &embedder, &query, &any, 10).await.expect("search");
    let got: Vec<MemoryId> = hits.iter().map(|h| h.memory.id.clone()).collect();
    assert!(hits.iter().all(|h| h.memory.tenant == small), "a foreign row in the small tenant's hits");
    assert_eq!(got, exact(&rows_small, &query, 10, |_| true), "the small tenant's exact top 10, in order");
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));

    // A large tenant through the index: its own rows only, recall@10 ≥ 0.9 against exact.
    let hits = store.search_memories(&large, &embedder, &query, &any, 10).await.expect("search");
    assert_eq!(hits.len(), 10);
    assert!(hits.iter().all(|h| h.memory.tenant == large));
    let got: Vec<MemoryId> = hits.iter().map(|h| h.memory.id.clone()).collect();
    let r = recall(&got, &exact(&rows_large, &query, 10, |_| true));
    assert!(r >= 0.9, "recall@10 {r}");
    // Filtered to one row in ten: the iterative scan still finds ten.
    let rare = MemoryFilter { tags: vec!["rare".into()], ..Default::default() };
    let hits = store.search_memories(&large, &embedder, &query, &rare, 10).await.expect("search");
    assert_eq!(hits.len(), 10, "a filtered search returns its top k");
    assert!(hits.iter().all(|h| h.memory.tenant == large && h.memory.tags == ["rare"]));
    let got: Vec<MemoryId> = hits.iter().map(|h| h.memory.id.clone()).collect();
    let r = recall(&got, &exact(&rows_large, &query, 10, |m| m.tags == ["rare"]));
    assert!(r >= 0.9, "filtered recall@10 {r}");

    if backend == Backend::Postgres {
        let pg = maestro_host::storage::postgres::PostgresStore::open(&db.url).await.expect("open");
        let plan = pg.explain_memory_search(&large, &embedder, &query, &rare, 10).await.expect("explain").join("\n");
        assert!(plan.contains("memories_hnsw_384"), "the large tenant's search uses the HNSW index:\n{plan}");
        let plan = pg.explain_memory_search(&small, &embedder, &query, &any, 10).await.expect("explain").join("\n");
        assert!(!plan.contains("hnsw"), "the small tenant is scanned exactly:\n{plan}");
    }
}

async fn changing_the_embedder_re_embeds_every_memory_in_the_background(backend: Backend) {
    let api = api(backend).await;
    let texts = ["alpha beta", "gamma delta", "epsilon zeta"];
    let mut ids = Vec::new();
    for text in texts {
        ids.push(api.remember(&api.member, json!({ "text": text })).await["id"].as_str().expect("id").to_owned());
    }
    let tenant = api.tenant_id("acme").await;
    let old = api.host.memories.clone().expect("memories");
    assert!(!old.enqueue_reembed(api.host.store.as_ref()).await.expect("enqueue"), "nothing stale yet");
    // The server restarts with another embedder.
    let new = Arc::new(Memories::new(
        api.host.store.clone(),
        Arc::new(FakeEmbedder::named("fake-b")),
        api.host.clock.clone(),
    ));
    let none = new.search(&tenant, "gamma delta", &MemoryFilter::default(), 3).await.expect("search");
    assert!(none.is_empty(), "vectors of another embedder are never compared: {none:?}");
    assert!(new.enqueue_reembed(api.host.store.as_ref()).await.expect("enqueue"));
    let jobs = api.host.jobs.list(&maestro_core::JobQuery::default()).await.expect("jobs");
    let job =
        jobs.jobs.iter().find(|j| j.kind == maestro_host::memory::REEMBED_JOB).expect("a re-embedding job").clone();
    maestro_host::jobs::JobHandler::handle(&Reembed(new.clone()), &job).await.expect("re-embeds");
    let listed = new.list(&tenant, &MemoryFilter::default(), None, 10).await.expect("list");
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|m| m.embedder.model == "fake-b"), "{listed:?}");
    let hits = new.search(&tenant, "gamma delta", &MemoryFilter::default(), 1).await.expect("search");
    assert_eq!(hits[0].memory.id.as_str(), ids[1]);
    assert!(!new.enqueue_reembed(api.host.store.as_ref()).await.expect("enqueue"), "nothing left to re-embed");
    // Running the job again does nothing (idempotent).
    maestro_host::jobs::JobHandler::handle(&Reembed(new), &job).await.expect("again");
}

async fn a_search_sees_writes_made_through_another_store_on_the_same_database(backend: Backend) {
    // SQLite keeps a tenant's vectors in memory between searches; a write by another
    // process (here: another store on the same file) must still be seen.
    let db = TestDb::new(backend).await;
    let (first, second) = (db.open().await, db.open().await);
    let embedder = FakeEmbedder::named("fake-a");
    let info = embedder.info().clone();
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("random");
    let tenant = maestro_core::Tenant {
        id: TenantId::from_random(bytes),
        name: TenantName::parse("acme").expect("name"),
        created_at: Utc::now(),
    };
    first.create_tenant(&tenant).await.expect("tenant");
    let t = &tenant.id;
    let any = MemoryFilter::default();
    let query = FakeEmbedder::vector("blue whale");
    let whale = (stored(t, &info, &[], Utc::now()), FakeEmbedder::vector("blue whale"));
    first.insert_memories(std::slice::from_ref(&whale)).await.expect("insert");
    let ids = |hits: Vec<maestro_core::memory::MemoryHit>| hits.into_iter().map(|h| h.memory.id).collect::<Vec<_>>();
    assert_eq!(ids(first.search_memories(t, &info, &query, &any, 5).await.expect("search")), vec![whale.0.id.clone()]);
    // Inserted, edited and deleted through the other store: the first one sees each.
    let shark = (stored(t, &info, &["fish"], Utc::now()), FakeEmbedder::vector("blue shark"));
    second.insert_memories(std::slice::from_ref(&shark)).await.expect("insert");
    let found = ids(first.search_memories(t, &info, &query, &any, 5).await.expect("search"));
    assert_eq!(found, vec![whale.0.id.clone(), shark.0.id.clone()]);
    let patch = maestro_core::memory::MemoryPatch { tags: Some(vec!["mammal".into()]), ..Default::default() };
    second.update_memory(t, &whale.0.id, &patch, Utc::now()).await.expect("update").expect("found");
    let mammals = MemoryFilter { tags: vec!["mammal".into()], ..Default::default() };
    let found = ids(first.search_memories(t, &info, &query, &mammals, 5).await.expect("search"));
    assert_eq!(found, vec![whale.0.id.clone()]);
    assert!(second.delete_memory(t, &whale.0.id).await.expect("delete"));
    let found = ids(first.search_memories(t, &info, &query, &any, 5).await.expect("search"));
    assert_eq!(found, vec![shark.0.id.clone()]);
    // Noting use does not count as a change, and does not hide anything.
    first.touch_memories(t, std::slice::from_ref(&shark.0.id), Utc::now()).await.expect("touch");
    assert_eq!(ids(first.search_memories(t, &info, &query, &any, 5).await.expect("search")), vec![shark.0.id]);
}

/// Postgres chooses between the HNSW index and an exact scan from a count of the
/// tenant's vectors per embedder that triggers keep (migration 0013): after inserts,
/// edits that change the embedder, re-embedding and deletes the counts equal a fresh
/// count of the rows, and the search path follows them across the threshold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_vector_counts_follow_every_write_and_choose_the_search_path() {
    use maestro_core::memory::MemoryPatch;
    use maestro_host::storage::memories::EXACT_SCAN_BELOW;

    let db = TestDb::new(Backend::Postgres).await;
    let store = db.open().await;
    let pg = maestro_host::storage::postgres::PostgresStore::open(&db.url).await.expect("open");
    let sql = sqlx::PgPool::connect(&db.url).await.expect("connect");
    let counts_match = || {
        let sql = sql.clone();
        async move {
            let kept: Vec<(String, String, i32, i64)> =
                sqlx::query_as("SELECT tenant_id, model, dims, n FROM memory_counts ORDER BY 1, 2, 3")
                    .fetch_all(&sql)
                    .await
                    .expect("counts");
            let fresh: Vec<(String, String, i32, i64)> = sqlx::query_as(
                "SELECT tenant_id, model, dims, count(*) FROM memories GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
            )
            .fetch_all(&sql)
            .await
            .expect("fresh counts");
            assert_eq!(kept, fresh, "the kept counts are the rows' counts");
            kept
        }
    };
    let (a, b) = (FakeEmbedder::named("fake-a").info().clone(), FakeEmbedder::named("fake-b").info().clone());
    let mut tenants = Vec::new();
    for name in ["acme", "globex"] {
        let t = maestro_core::Tenant {
            id: TenantId::from_random(rand_bytes()),
            name: TenantName::parse(name).expect("name"),
            created_at: Utc::now(),
        };
        store.create_tenant(&t).await.expect("tenant");
        tenants.push(t.id);
    }
    let (acme, globex) = (&tenants[0], &tenants[1]);
    let mut rng = Rng(7);
    let centre: Vec<f32> = (0..crate::fake_embed::DIMENSIONS).map(|_| rng.next()).collect();
    let threshold = usize::try_from(EXACT_SCAN_BELOW).expect("small");
    let rows: Vec<(Memory, Vec<f32>)> =
        (0..threshold).map(|_| (stored(acme, &a, &[], Utc::now()), rng.near(&centre, 0.3))).collect();
    for chunk in rows.chunks(500) {
        store.insert_memories(chunk).await.expect("insert");
    }
    store.insert_memories(&[(stored(globex, &a, &[], Utc::now()), rng.near(&centre, 0.3))]).await.expect("insert");
    sqlx::query("ANALYZE memories").execute(&sql).await.expect("analyze");
    let kept = counts_match().await;
    assert_eq!(kept.iter().map(|r| r.3).sum::<i64>(), i64::try_from(threshold + 1).expect("small"));
    let query = rng.near(&centre, 0.05);
    let any = MemoryFilter::default();
    let plan = pg.explain_memory_search(acme, &a, &query, &any, 10).await.expect("explain").join("\n");
    assert!(plan.contains("memories_hnsw_384"), "at the threshold the index is used:\n{plan}");

    // One memory re-embedded by an edit under another embedder, one deleted: below the
    // threshold in fake-a's space, so scanned exactly.
    let patch = MemoryPatch { text: Some(("edited".into(), rng.near(&centre, 0.3), b.clone())), ..Default::default() };
    store.update_memory(acme, &rows[0].0.id, &patch, Utc::now()).await.expect("update").expect("found");
    assert!(store.delete_memory(acme, &rows[1].0.id).await.expect("delete"));
    counts_match().await;
    let plan = pg.explain_memory_search(acme, &a, &query, &any, 10).await.expect("explain").join("\n");
    assert!(!plan.contains("hnsw"), "below the threshold the scan is exact:\n{plan}");

    // Re-embedding moves the rest to fake-b; touching changes nothing.
    let stale = store.stale_memories(&b, 10_000).await.expect("stale");
    for memory in &stale {
        assert!(store.replace_vector(memory, &rng.near(&centre, 0.3), &b).await.expect("replace"));
    }
    let ids: Vec<MemoryId> = rows.iter().skip(2).take(10).map(|(m, _)| m.id.clone()).collect();
    store.touch_memories(acme, &ids, Utc::now()).await.expect("touch");
    let kept = counts_match().await;
    assert!(kept.iter().all(|r| r.1 == "fake-b"), "{kept:?}");
    let hits = store.search_memories(acme, &b, &query, &any, 10).await.expect("search");
    assert_eq!(hits.len(), 10);
    assert!(hits.iter().all(|h| &h.memory.tenant == acme));
}

fn rand_bytes() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("random");
    bytes
}

/// A random unit vector of `dims` numbers from `state` (xorshift).
pub(crate) fn random_unit(state: &mut u64, dims: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..dims)
        .map(|_| {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            (*state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect();
    normalise(&mut v);
    v
}

async fn interleaved_writes_and_searches_find_what_a_fresh_store_finds_and_tenants_never_mix(backend: Backend) {
    // SQLite brings a tenant's cached vectors forward by the rows changed since (and
    // the tombstones of those deleted), or reads them whole when far behind: after
    // every kind of write, a long-lived store's search equals a new store's (which
    // reads everything) and the exact top 5 of the rows as the test keeps them.
    let db = TestDb::new(backend).await;
    let cached = db.open().await;
    let (a, b) =
        (crate::storage_runs::tenant(&cached, "acme").await, crate::storage_runs::tenant(&cached, "beta").await);
    let (info, other) = (FakeEmbedder::named("fake-a").info().clone(), FakeEmbedder::named("fake-b").info().clone());
    let dims = info.dimensions as usize;
    let mut state = 0x5eed_1234_u64;
    let mut live: Vec<(Memory, Vec<f32>)> = Vec::new();
    let red = MemoryFilter { tags: vec!["red".into()], ..Default::default() };
    let mut searches = 0;
    for step in 0..90u64 {
        let pick = |state: &mut u64, n: usize| {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            (*state % n.max(1) as u64) as usize
        };
        let op = if live.len() < 8 { 0 } else { pick(&mut state, 6) };
        match op {
            // Inserted, one to three at a time.
            0 | 1 => {
                let batch: Vec<(Memory, Vec<f32>)> = (0..=pick(&mut state, 3))
                    .map(|i| {
                        let tags: &[&str] = if (step + i as u64).is_multiple_of(3) { &["red"] } else { &[] };
                        (stored(&a, &info, tags, Utc::now()), random_unit(&mut state, dims))
                    })
                    .collect();
                cached.insert_memories(&batch).await.expect("insert");
                live.extend(batch);
            }
            // New text and vector.
            2 => {
                let i = pick(&mut state, live.len());
                let vector = random_unit(&mut state, dims);
                let patch = maestro_core::memory::MemoryPatch {
                    text: Some((format!("text {step}"), vector.clone(), info.clone())),
                    ..Default::default()
                };
                cached.update_memory(&a, &live[i].0.id, &patch, Utc::now()).await.expect("update").expect("found");
                live[i].1 = vector;
            }
            // Tags changed.
            3 => {
                let i = pick(&mut state, live.len());
                let tags = if live[i].0.tags.is_empty() { vec!["red".to_owned()] } else { Vec::new() };
                let patch = maestro_core::memory::MemoryPatch { tags: Some(tags.clone()), ..Default::default() };
                cached.update_memory(&a, &live[i].0.id, &patch, Utc::now()).await.expect("update").expect("found");
                live[i].0.tags = tags;
            }
            // Deleted.
            4 => {
                let (gone, _) = live.swap_remove(pick(&mut state, live.len()));
                assert!(cached.delete_memory(&a, &gone.id).await.expect("delete"));
            }
            // Re-embedded by another embedder: no longer among fake-a's vectors.
            _ => {
                let (gone, _) = live.swap_remove(pick(&mut state, live.len()));
                let patch = maestro_core::memory::MemoryPatch {
                    text: Some(("elsewhere".into(), random_unit(&mut state, dims), other.clone())),
                    ..Default::default()
                };
                cached.update_memory(&a, &gone.id, &patch, Utc::now()).await.expect("update").expect("found");
            }
        }
        // The other tenant holds vectors right at the query.
        let query = random_unit(&mut state, dims);
        if step % 10 == 0 {
            let near = (stored(&b, &info, &["red"], Utc::now()), query.clone());
            cached.insert_memories(std::slice::from_ref(&near)).await.expect("insert");
        }
        if step % 2 == 1 {
            continue;
        }
        let fresh = db.open().await;
        for filter in [MemoryFilter::default(), red.clone()] {
            let got = cached.search_memories(&a, &info, &query, &filter, 5).await.expect("search");
            assert!(got.iter().all(|h| h.memory.tenant == a), "step {step}: only the tenant's own");
            let got: Vec<MemoryId> = got.into_iter().map(|h| h.memory.id).collect();
            let full = fresh.search_memories(&a, &info, &query, &filter, 5).await.expect("search");
            let full: Vec<MemoryId> = full.into_iter().map(|h| h.memory.id).collect();
            assert_eq!(got, full, "step {step}: as a full load finds");
            assert_eq!(got, exact(&live, &query, 5, |m| filter.matches(m)), "step {step}: the exact top 5");
            searches += 1;
        }
    }
    assert_eq!(searches, 90);
    // Further behind than a delta brings forward (one batch of 1,100 rows): read whole.
    let batch: Vec<(Memory, Vec<f32>)> =
        (0..1_100).map(|_| (stored(&a, &info, &[], Utc::now()), random_unit(&mut state, dims))).collect();
    cached.insert_memories(&batch).await.expect("insert");
    live.extend(batch);
    let query = random_unit(&mut state, dims);
    let got = cached.search_memories(&a, &info, &query, &MemoryFilter::default(), 5).await.expect("search");
    let got: Vec<MemoryId> = got.into_iter().map(|h| h.memory.id).collect();
    assert_eq!(got, exact(&live, &query, 5, |_| true), "after a large batch");
}
