//! Documents on both backends: the store's conformance (create with version 1, reads
//! and pages scoped to the tenant, conditional appends against a base with exactly one
//! winner under concurrency, append-only versions) and the `Documents` use-cases (edits
//! against a base, stale bases and edits that do not apply writing nothing, rollback,
//! diff, tenant isolation).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use maestro_core::document::{
    Appended, DocAuthor, Document, DocumentError, DocumentKind, DocumentScope, DocumentVersion, Edit, TextEdit,
};
use maestro_core::run::{RunLimits, Session, Strategy};
use maestro_core::{Store, StoreError, TenantId};
use maestro_host::documents::{Documents, DocumentsError, NewDocument};
use sqlx::Connection as _;

use crate::harness::{Backend, ManualClock, TestDb, backend_tests};
use crate::storage_runs::{fresh, store, t0, tenant};

backend_tests!(
    a_document_is_created_with_version_one_and_read_only_by_its_tenant,
    documents_are_listed_newest_first_in_pages_by_scope,
    a_document_in_another_tenants_session_is_refused,
    an_append_on_a_stale_base_writes_nothing_and_returns_the_current_version,
    concurrent_appends_on_one_base_write_exactly_one,
    document_versions_refuse_update_and_delete,
    edits_apply_against_the_base_and_a_stale_base_or_an_edit_that_does_not_apply_writes_nothing,
    a_json_document_refuses_content_that_does_not_parse,
    rollback_restores_an_old_text_as_a_new_version_and_diff_shows_the_change,
    concurrent_edits_from_two_personas_on_one_base_let_exactly_one_win,
    another_tenants_document_is_not_found_by_any_use_case,
);

async fn session(store: &Arc<dyn Store>, tenant: &TenantId) -> Session {
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
    session
}

fn user(key: &str) -> DocAuthor {
    DocAuthor::User { key: key.into() }
}

fn persona(name: &str, step: u32) -> DocAuthor {
    DocAuthor::Persona { name: name.into(), run: fresh(), step }
}

fn document(
    tenant: &TenantId,
    session: Option<&Session>,
    title: &str,
    at: DateTime<Utc>,
) -> (Document, DocumentVersion) {
    let id = fresh();
    let doc = Document {
        id,
        tenant: tenant.clone(),
        session: session.map(|s| s.id.clone()),
        title: title.into(),
        kind: DocumentKind::Markdown,
        version: 1,
        created_at: at,
        updated_at: at,
        created_by: user("key_a"),
    };
    let first = DocumentVersion {
        document: doc.id.clone(),
        version: 1,
        content: format!("# {title}\n"),
        edit: Edit::Create,
        author: user("key_a"),
        at,
    };
    (doc, first)
}

fn next(doc: &Document, version: i64, content: &str, author: DocAuthor) -> DocumentVersion {
    DocumentVersion {
        document: doc.id.clone(),
        version,
        content: content.into(),
        edit: Edit::Replace,
        author,
        at: t0(),
    }
}

async fn a_document_is_created_with_version_one_and_read_only_by_its_tenant(backend: Backend) {
    let (_db, store) = store(backend).await;
    let acme = tenant(&store, "acme").await;
    let other = tenant(&store, "other").await;
    let ses = session(&store, &acme).await;
    let (doc, first) = document(&acme, Some(&ses), "Plan", t0());
    store.create_document(&doc, &first).await.expect("create");

    assert_eq!(store.document(&acme, &doc.id).await.expect("read"), Some(doc.clone()));
    assert_eq!(store.version(&acme, &doc.id, 1).await.expect("read"), Some(first.clone()));
    assert_eq!(store.document(&other, &doc.id).await.expect("read"), None);
    assert_eq!(store.version(&other, &doc.id, 1).await.expect("read"), None);
    assert!(store.versions(&other, &doc.id, 0, 10).await.expect("read").is_empty());
    let history = store.versions(&acme, &doc.id, 0, 10).await.expect("read");
    assert_eq!(history.len(), 1);
    assert_eq!((history[0].version, history[0].bytes, &history[0].edit), (1, 7, &Edit::Create));
    assert!(matches!(store.create_document(&doc, &first).await, Err(StoreError::Conflict(_))));
}

async fn documents_are_listed_newest_first_in_pages_by_scope(backend: Backend) {
    let (_db, store) = store(backend).await;
    let acme = tenant(&store, "acme").await;
    let other = tenant(&store, "other").await;
    let (one, two) = (session(&store, &acme).await, session(&store, &acme).await);
    let base = t0();
    let mut made = Vec::new();
    for i in 0..7i64 {
        let ses = match i % 3 {
            0 => Some(&one),
            1 => Some(&two),
            _ => None,
        };
        let (doc, first) = document(&acme, ses, &format!("doc {i}"), base + chrono::Duration::milliseconds(i));
        store.create_document(&doc, &first).await.expect("create");
        made.push(doc);
    }
    let (theirs, first) = document(&other, None, "theirs", base);
    store.create_document(&theirs, &first).await.expect("create");

    let newest_first: Vec<Document> = made.iter().rev().cloned().collect();
    let mut read = Vec::new();
    let mut before = None;
    loop {
        let page = store.documents(&acme, &DocumentScope::All, before.as_ref(), 3).await.expect("page");
        let Some(last) = page.last() else { break };
        before = Some(last.id.clone());
        read.extend(page);
    }
    assert_eq!(read, newest_first);
    let ids = |docs: Vec<Document>| docs.into_iter().map(|d| d.title).collect::<Vec<_>>();
    let of_one = store.documents(&acme, &DocumentScope::Session(one.id.clone()), None, 50).await.expect("page");
    assert_eq!(ids(of_one), ["doc 6", "doc 3", "doc 0"]);
    let seen = store.documents(&acme, &DocumentScope::SessionAndShared(one.id.clone()), None, 50).await.expect("page");
    assert_eq!(ids(seen), ["doc 6", "doc 5", "doc 3", "doc 2", "doc 0"]);
    let foreign_cursor = store.documents(&acme, &DocumentScope::All, Some(&theirs.id), 50).await.expect("page");
    assert!(foreign_cursor.is_empty(), "another tenant's cursor is an empty page");
}

async fn a_document_in_another_tenants_session_is_refused(backend: Backend) {
    let (_db, store) = store(backend).await;
    let acme = tenant(&store, "acme").await;
    let other = tenant(&store, "other").await;
    let theirs = session(&store, &other).await;
    let (doc, first) = document(&acme, Some(&theirs), "x", t0());
    assert!(matches!(store.create_document(&doc, &first).await, Err(StoreError::NotFound(_))));
    assert_eq!(store.document(&acme, &doc.id).await.expect("read"), None, "nothing was written");
}

async fn an_append_on_a_stale_base_writes_nothing_and_returns_the_current_version(backend: Backend) {
    let (_db, store) = store(backend).await;
    let acme = tenant(&store, "acme").await;
    let (doc, first) = document(&acme, None, "Plan", t0());
    store.create_document(&doc, &first).await.expect("create");

    let v2 = next(&doc, 2, "two", persona("team.writer", 1));
    let Appended::Written(now) = store.append_version(&acme, 1, &v2).await.expect("append") else {
        panic!("the base is current")
    };
    assert_eq!(now.version, 2);
    let late = next(&doc, 2, "late", persona("team.critic", 2));
    assert_eq!(store.append_version(&acme, 1, &late).await.expect("append"), Appended::Stale { current: 2 });
    assert_eq!(store.version(&acme, &doc.id, 2).await.expect("read").map(|v| v.content), Some("two".into()));
    assert_eq!(store.versions(&acme, &doc.id, 0, 10).await.expect("read").len(), 2);
    let other = tenant(&store, "other").await;
    let v3 = next(&doc, 3, "three", user("key_x"));
    assert!(matches!(store.append_version(&other, 2, &v3).await, Err(StoreError::NotFound(_))));
    assert!(matches!(store.append_version(&acme, 1, &v3).await, Err(StoreError::Conflict(_))), "3 is not 1 + 1");
}

async fn concurrent_appends_on_one_base_write_exactly_one(backend: Backend) {
    let (_db, store) = store(backend).await;
    let acme = tenant(&store, "acme").await;
    let (doc, first) = document(&acme, None, "Plan", t0());
    store.create_document(&doc, &first).await.expect("create");

    for base in 1..=3i64 {
        let tasks: Vec<_> = (0..6)
            .map(|i| {
                let (store, acme, version) =
                    (store.clone(), acme.clone(), next(&doc, base + 1, &format!("b{base} w{i}"), user("key_w")));
                tokio::spawn(async move { store.append_version(&acme, base, &version).await })
            })
            .collect();
        let mut written = 0;
        for task in tasks {
            match task.await.expect("task").expect("append") {
                Appended::Written(now) => {
                    written += 1;
                    assert_eq!(now.version, base + 1);
                }
                Appended::Stale { current } => assert_eq!(current, base + 1),
            }
        }
        assert_eq!(written, 1, "exactly one writer wins base {base}");
    }
    let history = store.versions(&acme, &doc.id, 0, 10).await.expect("read");
    assert_eq!(history.iter().map(|v| v.version).collect::<Vec<_>>(), [1, 2, 3, 4]);
}

async fn raw_execute(db: &TestDb, backend: Backend, sql: &str) -> Result<u64, sqlx::Error> {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    match backend {
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url).await.expect("connect");
            sqlx::raw_sql(sql).execute(&mut conn).await.map(|r| r.rows_affected())
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
            sqlx::raw_sql(sql).execute(&mut conn).await.map(|r| r.rows_affected())
        }
    }
}

async fn document_versions_refuse_update_and_delete(backend: Backend) {
    let (db, store) = store(backend).await;
    let acme = tenant(&store, "acme").await;
    let (doc, first) = document(&acme, None, "Plan", t0());
    store.create_document(&doc, &first).await.expect("create");
    for sql in [
        "UPDATE document_versions SET content = 'rewritten'",
        "UPDATE document_versions SET version = version + 1",
        "DELETE FROM document_versions",
    ] {
        let err = raw_execute(&db, backend, sql).await.expect_err(sql);
        assert!(err.to_string().contains("document versions are immutable"), "{sql}: {err}");
    }
    assert_eq!(store.version(&acme, &doc.id, 1).await.expect("read"), Some(first));
}

fn use_cases(store: &Arc<dyn Store>) -> Documents {
    Documents::new(store.clone(), ManualClock::new())
}

fn markdown(title: &str, content: &str) -> NewDocument {
    NewDocument { title: title.into(), kind: DocumentKind::Markdown, content: content.into(), session: None }
}

fn edit(old: &str, new: &str) -> TextEdit {
    TextEdit { old: old.into(), new: new.into() }
}

async fn edits_apply_against_the_base_and_a_stale_base_or_an_edit_that_does_not_apply_writes_nothing(backend: Backend) {
    let (_db, store) = store(backend).await;
    let acme = tenant(&store, "acme").await;
    let docs = use_cases(&store);
    let made = docs.create(&acme, markdown("Plan", "# Plan\n\n- one\n"), user("key_a")).await.expect("create");
    let id = made.document.id.clone();

    let v2 = docs.edit(&acme, &id, 1, vec![edit("- one", "- one\n- two")], persona("team.writer", 1)).await;
    let v2 = v2.expect("applies");
    assert_eq!((v2.document.version, v2.content.as_str()), (2, "# Plan\n\n- one\n- two\n"));

    let stale = docs.edit(&acme, &id, 1, vec![edit("- two", "- 2")], persona("team.critic", 2)).await;
    let Err(DocumentsError::Stale { base: 1, current }) = stale else { panic!("stale: {stale:?}") };
    assert_eq!((current.document.version, current.content.as_str()), (2, v2.content.as_str()));

    let missing = docs.edit(&acme, &id, 2, vec![edit("- two", "- 2"), edit("- three", "x")], user("key_a")).await;
    let Err(DocumentsError::Rejected { reason, current }) = missing else { panic!("rejected: {missing:?}") };
    assert_eq!(reason, DocumentError::OldNotFound { index: 1 });
    assert_eq!(current.document.version, 2);
    let twice = docs.edit(&acme, &id, 2, vec![edit("- ", "* ")], user("key_a")).await;
    assert!(matches!(
        twice,
        Err(DocumentsError::Rejected { reason: DocumentError::OldAmbiguous { index: 0, count: 2 }, .. })
    ));

    let put = docs.put(&acme, &id, 2, "# Plan\n\nreplaced\n".into(), user("key_b")).await.expect("put");
    assert_eq!(put.document.version, 3);
    let history = docs.versions(&acme, &id, 0, 50).await.expect("history");
    let summary: Vec<(i64, String, &str)> = history
        .iter()
        .map(|v| {
            let op = match &v.edit {
                Edit::Create => "create",
                Edit::Patch { .. } => "patch",
                Edit::Replace => "replace",
                Edit::Rollback { .. } => "rollback",
            };
            (v.version, v.author.label().to_owned(), op)
        })
        .collect();
    assert_eq!(
        summary,
        [(1, "key_a".into(), "create"), (2, "team.writer".into(), "patch"), (3, "key_b".into(), "replace")],
        "every version has its author and edit; refused writes left nothing"
    );
    let patch = docs.version(&acme, &id, 2).await.expect("v2");
    assert_eq!(patch.edit, Edit::Patch { edits: vec![edit("- one", "- one\n- two")] });
    assert!(matches!(docs.version(&acme, &id, 9).await, Err(DocumentsError::VersionNotFound(9))));
}

async fn a_json_document_refuses_content_that_does_not_parse(backend: Backend) {
    let (_db, store) = store(backend).await;
    let acme = tenant(&store, "acme").await;
    let docs = use_cases(&store);
    let bad = NewDocument { kind: DocumentKind::Json, ..markdown("Data", "{\"a\": ") };
    assert!(matches!(
        docs.create(&acme, bad, user("k")).await,
        Err(DocumentsError::Invalid(DocumentError::InvalidJson(_)))
    ));
    let good = NewDocument { kind: DocumentKind::Json, ..markdown("Data", "{\"a\": 1}") };
    let made = docs.create(&acme, good, user("k")).await.expect("create");
    let broken = docs.edit(&acme, &made.document.id, 1, vec![edit("1}", "1")], user("k")).await;
    assert!(matches!(broken, Err(DocumentsError::Rejected { reason: DocumentError::InvalidJson(_), .. })));
    let fixed = docs.edit(&acme, &made.document.id, 1, vec![edit("1", "[1, 2]")], user("k")).await.expect("valid");
    assert_eq!(fixed.content, "{\"a\": [1, 2]}");
    assert!(matches!(
        docs.create(&acme, markdown(" ", "x"), user("k")).await,
        Err(DocumentsError::Invalid(DocumentError::EmptyTitle))
    ));
}

async fn rollback_restores_an_old_text_as_a_new_version_and_diff_shows_the_change(backend: Backend) {
    let (_db, store) = store(backend).await;
    let acme = tenant(&store, "acme").await;
    let docs = use_cases(&store);
    let made = docs.create(&acme, markdown("Plan", "a\nb\nc\n"), user("key_a")).await.expect("create");
    let id = made.document.id.clone();
    docs.put(&acme, &id, 1, "a\nB\nc\n".into(), user("key_a")).await.expect("v2");

    let diff = docs.diff(&acme, &id, 1, 2).await.expect("diff");
    assert_eq!(diff, format!("--- {id}@v1\n+++ {id}@v2\n@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n"));

    let rolled = docs.rollback(&acme, &id, 1, None, user("key_b")).await.expect("rollback");
    assert_eq!((rolled.document.version, rolled.content.as_str()), (3, "a\nb\nc\n"));
    assert_eq!(docs.version(&acme, &id, 3).await.expect("v3").edit, Edit::Rollback { to: 1 });
    assert_eq!(docs.version(&acme, &id, 2).await.expect("v2 kept").content, "a\nB\nc\n", "history is kept");
    assert_eq!(docs.diff(&acme, &id, 1, 3).await.expect("diff"), "");
    let stale = docs.rollback(&acme, &id, 2, Some(2), user("key_b")).await;
    assert!(matches!(stale, Err(DocumentsError::Stale { base: 2, .. })));
    assert!(matches!(docs.rollback(&acme, &id, 7, None, user("key_b")).await, Err(DocumentsError::VersionNotFound(7))));
}

async fn concurrent_edits_from_two_personas_on_one_base_let_exactly_one_win(backend: Backend) {
    let (_db, store) = store(backend).await;
    let acme = tenant(&store, "acme").await;
    let docs = use_cases(&store);
    let made = docs.create(&acme, markdown("Plan", "draft\n"), user("key_a")).await;
    let made = made.expect("create");
    let id = made.document.id.clone();
    let race = |who: &'static str| {
        let (docs, acme, id) = (docs.clone(), acme.clone(), id.clone());
        tokio::spawn(async move {
            docs.edit(&acme, &id, 1, vec![edit("draft", &format!("draft by {who}"))], persona(who, 1)).await
        })
    };
    let (a, b) = (race("team.writer"), race("team.critic"));
    let results = [a.await.expect("task"), b.await.expect("task")];
    let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let winner = winners[0];
    let loser = results.iter().find_map(|r| r.as_ref().err()).expect("one lost");
    let DocumentsError::Stale { base: 1, current } = loser else { panic!("the loser is stale: {loser:?}") };
    assert_eq!(**current, *winner, "the loser gets the winner's version back");
    assert_eq!(docs.versions(&acme, &id, 0, 10).await.expect("history").len(), 2);
}

async fn another_tenants_document_is_not_found_by_any_use_case(backend: Backend) {
    let (_db, store) = store(backend).await;
    let acme = tenant(&store, "acme").await;
    let other = tenant(&store, "other").await;
    let docs = use_cases(&store);
    let id = docs.create(&acme, markdown("Plan", "x\n"), user("k")).await.expect("create").document.id;
    let nf = |r: Result<(), DocumentsError>| assert!(matches!(r, Err(DocumentsError::NotFound)), "{r:?}");
    nf(docs.get(&other, &id).await.map(drop));
    nf(docs.versions(&other, &id, 0, 10).await.map(drop));
    nf(docs.version(&other, &id, 1).await.map(drop));
    nf(docs.edit(&other, &id, 1, vec![edit("x", "y")], user("k")).await.map(drop));
    nf(docs.put(&other, &id, 1, "y".into(), user("k")).await.map(drop));
    nf(docs.rollback(&other, &id, 1, None, user("k")).await.map(drop));
    nf(docs.diff(&other, &id, 1, 1).await.map(drop));
    assert!(docs.list(&other, &DocumentScope::All, None, 50).await.expect("list").is_empty());
    let theirs = session(&store, &other).await;
    let attached = NewDocument { session: Some(theirs.id), ..markdown("x", "y") };
    assert!(matches!(docs.create(&acme, attached, user("k")).await, Err(DocumentsError::SessionNotFound)));
}
