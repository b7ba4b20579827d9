//! Memories for agents and MCP clients, on both backends: [`Memories::remember`] (a
//! near-duplicate in the same scope updates instead of inserting).

use std::sync::Arc;

use maestro_core::memory::{MemoryFilter, MemoryScope, MemorySource};
use maestro_core::run::{RunLimits, Session, SessionId, Strategy};
use maestro_core::{Clock as _, Store, TenantId};
use maestro_host::memory::{DUPLICATE_SIMILARITY, Memories, NewMemory, Remembered};

use crate::fake_embed::FakeEmbedder;
use crate::harness::{Backend, ManualClock, backend_tests};
use crate::storage_runs::{fresh, store, t0, tenant};

backend_tests!(remembering_a_near_duplicate_in_the_same_scope_updates_it_and_anything_else_inserts,);

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
    assert!(cosine >= DUPLICATE_SIMILARITY && cosine < 0.99, "the fixture is a near-duplicate: {cosine}");

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
