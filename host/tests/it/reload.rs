//! Policies and plugins change without a restart; broken changes keep the last good
//! version and say why.

use std::sync::Arc;

use maestro_core::Role;
use maestro_core::policy::Subject;
use maestro_host::plugins::PluginRegistry;
use maestro_host::policy::PolicyStore;

use crate::fixtures::{install, sandbox};

const SUBJECT: Subject<'static> = Subject { tenant: "acme", role: Role::Member, key_id: "key_x" };

fn grant(tools: &str) -> String {
    format!("version = 1\n\n[[grant]]\nname = \"members\"\nsubjects = [\"tenant:acme\"]\ntools = [\"{tools}\"]\n")
}

#[test]
fn a_valid_policy_change_takes_effect_and_a_broken_one_keeps_the_last_good() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("team.toml"), grant("calc.*")).expect("write");
    let store = PolicyStore::open(dir.path().to_owned()).expect("valid policies");
    assert!(store.current().decide(&SUBJECT, "calc.evaluate").is_allowed());
    assert!(!store.current().decide(&SUBJECT, "text.count").is_allowed());
    assert!(!store.refresh().expect("unchanged"), "nothing changed");

    std::fs::write(dir.path().join("team.toml"), grant("text.*")).expect("write");
    assert!(store.refresh().expect("valid change"));
    assert!(store.current().decide(&SUBJECT, "text.count").is_allowed());
    assert!(!store.current().decide(&SUBJECT, "calc.evaluate").is_allowed());

    std::fs::write(
        dir.path().join("team.toml"),
        "version = 1\n[[grant]]\nname = \"x\"\nsubjects = [\"team:acme\"]\ntools = [\"*\"]\n",
    )
    .expect("write");
    let err = store.refresh().expect_err("broken change");
    let message = err.to_string();
    assert!(message.contains("team.toml:4"), "errors name file and line: {message}");
    assert!(store.current().decide(&SUBJECT, "text.count").is_allowed(), "the last good policies stay in force");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_are_verified_reloaded_and_refused_with_reasons() {
    let dir = tempfile::tempdir().expect("dir");
    install(dir.path(), "calc");
    let text_dir = install(dir.path(), "text");
    let registry = Arc::new(PluginRegistry::new(sandbox(), dir.path().to_owned()));
    assert!(registry.refresh().await);
    let catalog = registry.catalog();
    assert!(catalog.tool("calc.evaluate").is_some() && catalog.tool("text.count").is_some());
    let generation = catalog.generation();

    // Replacing a plugin with a component whose hash does not match: refused, the last
    // good version keeps serving, and the others are untouched.
    std::fs::write(text_dir.join("text.wasm"), b"\0asm garbage").expect("corrupt");
    assert!(registry.refresh().await);
    let catalog = registry.catalog();
    assert!(catalog.generation() > generation);
    assert!(catalog.tool("text.count").is_some(), "last good version kept");
    let refusal = catalog.refused().first().expect("a refusal");
    assert!(refusal.reason.contains("sha256 mismatch"), "{}", refusal.reason);

    // A manifest that is not valid.
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).expect("dir");
    std::fs::write(bad.join("plugin.toml"), "name = \"Bad Name\"\n").expect("write");
    registry.refresh().await;
    let reasons: Vec<String> = registry.catalog().refused().iter().map(|r| r.reason.clone()).collect();
    assert!(reasons.iter().any(|r| r.contains("missing field") || r.contains("must match")), "{reasons:?}");

    // A valid replacement takes effect; removing a plugin unloads it.
    install(dir.path(), "text");
    std::fs::remove_dir_all(dir.path().join("calc")).expect("remove");
    registry.refresh().await;
    let catalog = registry.catalog();
    assert!(catalog.tool("calc.evaluate").is_none(), "removed plugin unloaded");
    assert!(catalog.tool("text.count").is_some());
    assert!(catalog.refused().iter().all(|r| !r.path.starts_with(dir.path().join("text"))), "text is healthy again");
}
