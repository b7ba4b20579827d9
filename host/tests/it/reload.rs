//! Policies and plugins change without a restart; broken changes keep the last good
//! version and say why.

use std::sync::Arc;
use std::time::Duration;

use maestro_core::Role;
use maestro_core::policy::Subject;
use maestro_host::plugins::{Manifest, PluginRegistry, sha256_hex};
use maestro_host::policy::PolicyStore;
use maestro_host::sandbox::CallLimits;

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

/// Installs the `hostile-start` fixture (a plugin whose start-up never finishes) under
/// `plugin_dir/<dir_name>/`.
fn install_hostile_start(plugin_dir: &std::path::Path, dir_name: &str) -> std::path::PathBuf {
    let source = crate::fixtures::source_dir("hostile-start");
    let mut manifest = Manifest::read(&source.join("plugin.toml")).expect("source manifest");
    let bytes = std::fs::read(crate::fixtures::component("hostile_start")).expect("component");
    manifest.sha256 = Some(sha256_hex(&bytes));
    let dir = plugin_dir.join(dir_name);
    std::fs::create_dir_all(&dir).expect("plugin dir");
    std::fs::write(dir.join(&manifest.component), &bytes).expect("write component");
    std::fs::write(dir.join("plugin.toml"), toml::to_string(&manifest).expect("manifest toml"))
        .expect("write manifest");
    dir
}

fn quick_loads(registry: PluginRegistry) -> PluginRegistry {
    registry.with_load_limits(CallLimits { timeout: Duration::from_millis(500), ..CallLimits::default() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_plugin_is_loaded_once_until_its_files_change() {
    let dir = tempfile::tempdir().expect("dir");
    let slow = install_hostile_start(dir.path(), "hostile-start");
    let registry = quick_loads(PluginRegistry::new(sandbox(), dir.path().to_owned()));
    assert!(registry.refresh().await);
    let refusal = registry.catalog().refused().first().cloned().expect("refused");
    assert!(refusal.reason.contains("timed out") || refusal.reason.contains("fuel"), "{}", refusal.reason);
    assert_eq!(registry.loads(), 1);

    for _ in 0..5 {
        assert!(!registry.refresh().await, "nothing changed");
    }
    assert_eq!(registry.loads(), 1, "the refusal is remembered by fingerprint, not retried every scan");
    assert_eq!(registry.catalog().refused(), std::slice::from_ref(&refusal), "and still reported");

    // Touching the files without changing them is not a change.
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    for file in ["plugin.toml", "hostile-start.wasm"] {
        std::fs::File::options().write(true).open(slow.join(file)).expect("open").set_modified(later).expect("touch");
    }
    registry.refresh().await;
    assert_eq!(registry.loads(), 1, "same content, same refusal");

    // A changed manifest is a new plugin version: loaded (and refused) again, once.
    let manifest_path = slow.join("plugin.toml");
    let mut manifest = Manifest::read(&manifest_path).expect("manifest");
    manifest.description = "the same loop, described differently".to_owned();
    std::fs::write(&manifest_path, toml::to_string(&manifest).expect("toml")).expect("write");
    registry.refresh().await;
    registry.refresh().await;
    assert_eq!(registry.loads(), 2, "reloaded once after its files changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_plugin_is_reloaded_only_when_its_content_changes() {
    let dir = tempfile::tempdir().expect("dir");
    let calc = install(dir.path(), "calc");
    let registry = PluginRegistry::new(sandbox(), dir.path().to_owned());
    assert!(registry.refresh().await);
    assert_eq!(registry.loads(), 1);
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(calc.join("plugin.toml"))
        .expect("open")
        .set_modified(later)
        .expect("touch");
    assert!(!registry.refresh().await, "a touched file with the same content changes nothing");
    assert_eq!(registry.loads(), 1);
    install(dir.path(), "calc");
    let mut manifest = Manifest::read(&calc.join("plugin.toml")).expect("manifest");
    manifest.description = "calc, re-described".to_owned();
    std::fs::write(calc.join("plugin.toml"), toml::to_string(&manifest).expect("toml")).expect("write");
    assert!(registry.refresh().await);
    assert_eq!(registry.loads(), 2);
    assert!(registry.catalog().tool("calc.evaluate").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_plugin_does_not_hold_back_the_others() {
    let dir = tempfile::tempdir().expect("dir");
    // Sorted first, so a one-at-a-time scan would load it before calc.
    install_hostile_start(dir.path(), "a-slow");
    install(dir.path(), "calc");
    let registry = Arc::new(PluginRegistry::new(sandbox(), dir.path().to_owned()).with_load_limits(CallLimits {
        fuel: u64::MAX / 2,
        timeout: Duration::from_secs(8),
        ..CallLimits::default()
    }));
    let mut changes = registry.subscribe();
    let scan = tokio::spawn({
        let registry = registry.clone();
        async move { registry.refresh().await }
    });
    loop {
        changes.changed().await.expect("registry alive");
        if registry.catalog().tool("calc.evaluate").is_some() {
            break;
        }
    }
    assert!(!scan.is_finished(), "calc is served while the slow plugin is still loading");
    assert!(registry.catalog().refused().is_empty(), "the slow one has not been judged yet");
    assert!(scan.await.expect("scan"));
    assert_eq!(registry.catalog().refused().len(), 1);
    assert!(registry.catalog().tool("calc.evaluate").is_some());
}
