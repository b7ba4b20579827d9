//! `list_changed` over `subscriptions/listen` (the stateless 2026-07-28 revision): a
//! client holding a listen request open is told when a policy or plugin reload changes
//! its lists, and only about its own lists.

use std::sync::Arc;
use std::time::{Duration, Instant};

use maestro_host::plugins::PluginRegistry;
use maestro_host::policy::PolicyStore;
use maestro_host::tools::{SecretValues, Tools};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Backend, TestHost};
use crate::mcp::{STATELESS, Served};

/// Reads SSE messages from `stream` into `seen` until `count` of them have `method`,
/// or `within` passes. Returns whether they arrived.
async fn wait_for(
    stream: &mut reqwest::Response,
    seen: &mut Vec<Value>,
    method: &str,
    count: usize,
    within: Duration,
) -> bool {
    let deadline = Instant::now() + within;
    let mut buffer = String::new();
    let arrived = |seen: &Vec<Value>| seen.iter().filter(|m| m["method"] == method).count() >= count;
    loop {
        if arrived(seen) {
            return true;
        }
        let Ok(chunk) = tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), stream.chunk()).await
        else {
            return false;
        };
        match chunk.expect("stream") {
            Some(bytes) => buffer.push_str(&String::from_utf8_lossy(&bytes)),
            None => return arrived(seen),
        }
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            for data in event.lines().filter_map(|line| line.strip_prefix("data:")) {
                if let Ok(message) = serde_json::from_str(data.trim()) {
                    seen.push(message);
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_stream_receives_list_changed_when_a_policy_or_plugin_reload_changes_the_lists() {
    let mut host = TestHost::new(Backend::Sqlite).await;
    let dir = tempfile::tempdir().expect("dir");
    let (plugins, policies) = (dir.path().join("plugins"), dir.path().join("policies"));
    std::fs::create_dir_all(&policies).expect("policies");
    for plugin in ["hostile", "calc"] {
        crate::fixtures::install(&plugins, plugin);
    }
    let grant = |tenant: &str, tools: &str| {
        format!("[[grant]]\nname = \"{tenant}\"\nsubjects = [\"tenant:{tenant}\"]\ntools = [{tools}]\n")
    };
    // acme may also use `text.*`, which is not installed yet.
    let write_policy = |acme_tools: &str| {
        let acme_tools = format!("{acme_tools}, \"text.*\"");
        let text = format!("version = 1\n{}{}", grant("acme", &acme_tools), grant("beta", "\"calc.*\""));
        std::fs::write(policies.join("p.toml"), text).expect("write");
    };
    write_policy("\"calc.*\"");
    let registry = Arc::new(PluginRegistry::new(crate::fixtures::sandbox(), plugins.clone()));
    registry.refresh().await;
    let store = Arc::new(PolicyStore::open(policies.clone()).expect("policies"));
    host.tools = Arc::new(Tools::new(
        registry.clone(),
        store.clone(),
        SecretValues::new(Default::default(), dir.path().join("s")),
    ));
    let served = Served::start(host).await;
    let (acme, beta) = (served.member_of("acme").await, served.member_of("beta").await);
    let acme_client = served.client(&acme, STATELESS);
    assert_eq!(acme_client.tool_names().await, vec!["calc.evaluate"]);

    let listen = |client: &crate::mcp::Client| {
        let params = json!({ "notifications": {
            "toolsListChanged": true, "promptsListChanged": true, "resourcesListChanged": true } });
        let body = client.body(11, "subscriptions/listen", params, json!({}));
        client.builder("subscriptions/listen", None).json(&body).send()
    };
    let mut acme_stream = listen(&acme_client).await.expect("listen");
    assert_eq!(acme_stream.status(), StatusCode::OK);
    let content_type = acme_stream.headers().get("content-type").map(|v| v.to_str().expect("ascii").to_owned());
    assert!(content_type.as_deref().is_some_and(|t| t.starts_with("text/event-stream")), "{content_type:?}");
    let beta_client = served.client(&beta, STATELESS);
    let mut beta_stream = listen(&beta_client).await.expect("listen");
    let (mut acme_seen, mut beta_seen) = (Vec::new(), Vec::new());
    let acknowledged = "notifications/subscriptions/acknowledged";
    assert!(wait_for(&mut acme_stream, &mut acme_seen, acknowledged, 1, Duration::from_secs(5)).await, "{acme_seen:?}");
    assert!(wait_for(&mut beta_stream, &mut beta_seen, acknowledged, 1, Duration::from_secs(5)).await, "{beta_seen:?}");

    // The listen is acknowledged before the server watches reloads, so a reload in
    // that instant would go unseen: change the list again until a notification comes.
    let changes = ["\"calc.*\", \"hostile.noop\"", "\"calc.*\"", "\"calc.*\", \"hostile.noop\""];
    let mut delivered = false;
    for tools in changes {
        write_policy(tools);
        assert!(store.refresh().expect("reload"), "the policy changed");
        if wait_for(&mut acme_stream, &mut acme_seen, "notifications/tools/list_changed", 1, Duration::from_secs(2))
            .await
        {
            delivered = true;
            break;
        }
    }
    assert!(delivered, "no tools/list_changed on the listen stream: {acme_seen:?}");
    assert!(!acme_seen.iter().any(|m| m["method"] == "notifications/prompts/list_changed"), "{acme_seen:?}");

    // A plugin reload that adds tools acme may use: its tools and resources change.
    crate::fixtures::install(&plugins, "text");
    registry.refresh().await;
    let tools_changed = "notifications/tools/list_changed";
    assert!(
        wait_for(&mut acme_stream, &mut acme_seen, tools_changed, 2, Duration::from_secs(5)).await,
        "no tools/list_changed after the plugin reload: {acme_seen:?}"
    );
    let resources_changed = "notifications/resources/list_changed";
    assert!(
        wait_for(&mut acme_stream, &mut acme_seen, resources_changed, 1, Duration::from_secs(5)).await,
        "{acme_seen:?}"
    );
    assert!(acme_client.tool_names().await.iter().any(|name| name.starts_with("text.")));

    // beta's lists changed neither time: its stream stays quiet.
    assert!(
        !wait_for(&mut beta_stream, &mut beta_seen, tools_changed, 1, Duration::from_millis(300)).await,
        "{beta_seen:?}"
    );
}
