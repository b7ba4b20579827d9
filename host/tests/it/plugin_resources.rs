//! Plugin resources (`maestro:plugin/resources@0.2.0`) served over MCP: listing and
//! templates under the `resources` policy rule, text, binary and templated reads in the
//! sandbox, unknown and denied URIs alike "not found", reads over the output limit
//! refused cleanly, overlapping URIs refused at load naming both plugins, a 0.1.0
//! component loading beside them, subscriptions told when the plugin is reloaded, and
//! the stdio server. The fixture is `host/tests/plugins/conformance` (the resources the
//! official suite reads: `test://static-text`, `test://static-binary`,
//! `test://template/{id}/data`, `test://watched-resource`).

use serde_json::{Value, json};

use maestro_host::plugins::{Manifest, PluginRegistry};

use crate::harness::{Backend, TestHost, backend_tests};
use crate::mcp::{SESSIONS, STATELESS, Served};

const POLICY: &str = r#"
version = 1

[[grant]]
name = "acme-conformance"
subjects = ["tenant:acme"]
tools = ["conformance.*", "legacy.*"]
resources = ["conformance.*"]

# Tools but no resources: the resources are neither listed nor readable.
[[grant]]
name = "beta-tools-only"
subjects = ["tenant:beta"]
tools = ["conformance.*"]

# Resources under a tiny output limit.
[[grant]]
name = "tiny-output"
subjects = ["tenant:tiny"]
resources = ["*"]
output = "64B"

# Denied outright, whatever the grant.
[[grant]]
name = "gamma-everything"
subjects = ["tenant:gamma"]
resources = ["*"]
[[deny]]
name = "no-conformance-resources-for-gamma"
subjects = ["tenant:gamma"]
resources = ["conformance.*"]
"#;

backend_tests!(lists_and_reads_plugin_resources_under_the_callers_policy);

fn uris(list: &Value, key: &str, field: &str) -> Vec<String> {
    list[key].as_array().expect("a list").iter().map(|r| r[field].as_str().expect("uri").to_owned()).collect()
}

async fn lists_and_reads_plugin_resources_under_the_callers_policy(backend: Backend) {
    let served = Served::start(TestHost::with_plugins(backend, &["conformance", "legacy"], POLICY).await).await;
    let catalog = served.host.tools.catalog();
    let legacy = catalog.plugin("legacy").expect("the 0.1.0 component still loads");
    assert_eq!(legacy.loaded.contract_version(), "0.1.0");
    assert!(legacy.loaded.resources.is_empty(), "0.1.0 components export no resources");
    let (acme, beta, tiny, gamma) = (
        served.member_of("acme").await,
        served.member_of("beta").await,
        served.member_of("tiny").await,
        served.member_of("gamma").await,
    );
    for revision in [SESSIONS, STATELESS] {
        let mut client = served.client(&acme, revision);
        client.initialize().await;
        let listed = client.request("resources/list", json!({})).await;
        let listed = uris(listed.result(), "resources", "uri");
        for uri in ["test://static-text", "test://static-binary", "test://watched-resource"] {
            assert!(listed.contains(&uri.to_owned()), "{revision}: {uri} not in {listed:?}");
        }
        assert!(listed.contains(&"maestro://policy/effective".to_owned()), "host resources stay: {listed:?}");
        let templates = client.request("resources/templates/list", json!({})).await;
        assert!(
            uris(templates.result(), "resourceTemplates", "uriTemplate").contains(&"test://template/{id}/data".into()),
            "{templates:?}"
        );

        let text = client.request("resources/read", json!({ "uri": "test://static-text" })).await;
        let contents = &text.result()["contents"][0];
        assert_eq!(contents["uri"], "test://static-text");
        assert_eq!(contents["mimeType"], "text/plain");
        assert_eq!(contents["text"], "This is the content of the static text resource.");

        let binary = client.request("resources/read", json!({ "uri": "test://static-binary" })).await;
        let contents = &binary.result()["contents"][0];
        assert_eq!(contents["mimeType"], "image/png");
        assert!(contents["blob"].as_str().expect("a blob").starts_with("iVBORw0KGgo"), "{contents}");

        let templated = client.request("resources/read", json!({ "uri": "test://template/123/data" })).await;
        let contents = &templated.result()["contents"][0];
        assert_eq!(contents["uri"], "test://template/123/data");
        let data: Value = serde_json::from_str(contents["text"].as_str().expect("text")).expect("json");
        assert_eq!(data, json!({ "id": "123", "templateTest": true, "data": "Data for ID: 123" }));

        // Unknown: no plugin serves it, a template that does not match, the plugin's own
        // not-found for nothing it declares: all the same error, naming the URI.
        for unknown in ["test://nope", "test://template/1/2/data", "other://x"] {
            let reply = client.request("resources/read", json!({ "uri": unknown })).await;
            let error = &reply.response()["error"];
            assert_eq!(error["data"]["uri"], unknown, "{revision}: {error}");
        }
        let unknown_code = client.request("resources/read", json!({ "uri": "test://nope" })).await.error_code();

        // A tenant whose policy grants the tools but not the resources sees nothing of them.
        let mut other = served.client(&beta, revision);
        other.initialize().await;
        let listed = other.request("resources/list", json!({})).await;
        assert!(uris(listed.result(), "resources", "uri").iter().all(|u| !u.starts_with("test://")), "{listed:?}");
        let templates = other.request("resources/templates/list", json!({})).await;
        let templates = uris(templates.result(), "resourceTemplates", "uriTemplate");
        assert!(templates.iter().all(|u| !u.starts_with("test://")), "{templates:?}");
        for denied in [&other, &{
            let mut gamma = served.client(&gamma, revision);
            gamma.initialize().await;
            gamma
        }] {
            let reply = denied.request("resources/read", json!({ "uri": "test://static-text" })).await;
            assert_eq!(reply.error_code(), unknown_code, "denied reads answer like unknown ones: {reply:?}");
            assert_eq!(reply.response()["error"]["message"], "no resource `test://static-text`");
        }

        // Over the output limit: refused with the stable code, nothing of the contents.
        let mut small = served.client(&tiny, revision);
        small.initialize().await;
        let reply = small.request("resources/read", json!({ "uri": "test://static-text" })).await;
        let error = &reply.response()["error"];
        assert_eq!(error["data"]["code"], "tool_output_too_large", "{error}");
        assert!(!error.to_string().contains("static text resource"), "{error}");
    }
}

/// Installs the conformance component again under another plugin name (same URIs).
fn install_copy(dir: &std::path::Path, name: &str) {
    let source = crate::fixtures::install(&dir.join("staging"), "conformance");
    let mut manifest = Manifest::read(&source.join("plugin.toml")).expect("manifest");
    manifest.name = name.to_owned();
    let target = dir.join(name);
    std::fs::create_dir_all(&target).expect("dir");
    std::fs::copy(source.join(&manifest.component), target.join(&manifest.component)).expect("component");
    std::fs::write(target.join("plugin.toml"), toml::to_string(&manifest).expect("toml")).expect("manifest");
    std::fs::remove_dir_all(dir.join("staging")).expect("clean up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_whose_resources_overlap_another_plugins_is_refused_naming_both() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plugins = dir.path().join("plugins");
    install_copy(&plugins, "echo");
    let registry = PluginRegistry::new(crate::fixtures::sandbox(), plugins.clone());
    registry.refresh().await;
    assert!(registry.catalog().plugin("echo").is_some());

    // A newcomer declaring the same URIs is refused; the plugin serving them keeps them.
    crate::fixtures::install(&plugins, "conformance");
    registry.refresh().await;
    let catalog = registry.catalog();
    assert!(catalog.plugin("conformance").is_none(), "the later plugin is refused");
    let serving = catalog.resource_plugin("test://static-text").expect("still served");
    assert_eq!(serving.manifest.name, "echo");
    let refusal = catalog.refused().iter().find(|r| r.path.starts_with(plugins.join("conformance"))).expect("refused");
    assert!(refusal.reason.contains("of plugin `conformance` overlaps resource"), "{}", refusal.reason);
    assert!(refusal.reason.contains("of plugin `echo`"), "{}", refusal.reason);
    assert_eq!(catalog.resource_plugin("test://template/7/data").map(|p| p.manifest.name.clone()), Some("echo".into()));

    // Once the first one is gone, the other serves them.
    std::fs::remove_dir_all(plugins.join("echo")).expect("remove echo");
    registry.refresh().await;
    let catalog = registry.catalog();
    assert_eq!(
        catalog.resource_plugin("test://static-text").map(|p| p.manifest.name.clone()),
        Some("conformance".into())
    );
    assert!(catalog.refused().is_empty(), "{:?}", catalog.refused());
}

/// Reads the next JSON-RPC message from a session's GET stream (SSE) within a deadline.
pub(crate) async fn next_notification(stream: &mut reqwest::Response, buffer: &mut String, method: &str) -> Value {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            for data in event.lines().filter_map(|l| l.strip_prefix("data:")) {
                if let Ok(message) = serde_json::from_str::<Value>(data.trim())
                    && message["method"] == method
                {
                    return message;
                }
            }
        }
        let chunk = tokio::time::timeout_at(deadline, stream.chunk()).await.expect("a notification in time");
        buffer.push_str(&String::from_utf8_lossy(&chunk.expect("stream").expect("stream open")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_hear_of_a_plugin_reload_and_denied_callers_cannot_subscribe() {
    let served = Served::start(TestHost::with_plugins(Backend::Sqlite, &["conformance"], POLICY).await).await;
    let (acme, beta) = (served.member_of("acme").await, served.member_of("beta").await);
    let mut client = served.client(&acme, SESSIONS);
    client.initialize().await;
    let mut stream = reqwest::Client::new()
        .get(&served.url)
        .bearer_auth(&acme)
        .header("accept", "text/event-stream")
        .header("mcp-protocol-version", SESSIONS)
        .header("mcp-session-id", client.session.clone().expect("a session"))
        .send()
        .await
        .expect("GET stream");
    assert_eq!(stream.status(), reqwest::StatusCode::OK);

    let subscribed = client.request("resources/subscribe", json!({ "uri": "test://watched-resource" })).await;
    assert_eq!(subscribed.result(), &json!({}));
    let mut denied = served.client(&beta, SESSIONS);
    denied.initialize().await;
    let refused = denied.request("resources/subscribe", json!({ "uri": "test://watched-resource" })).await;
    assert_eq!(refused.response()["error"]["data"]["uri"], "test://watched-resource", "{refused:?}");

    // The operator installs a new version of the plugin: the subscriber is told.
    let dir = served.host.tools.registry().dir().join("conformance");
    let mut manifest = Manifest::read(&dir.join("plugin.toml")).expect("manifest");
    manifest.version = "0.1.1".to_owned();
    std::fs::write(dir.join("plugin.toml"), toml::to_string(&manifest).expect("toml")).expect("manifest");
    served.host.tools.registry().refresh().await;
    let mut buffer = String::new();
    let updated = next_notification(&mut stream, &mut buffer, "notifications/resources/updated").await;
    assert_eq!(updated["params"]["uri"], "test://watched-resource");

    let unsubscribed = client.request("resources/unsubscribe", json!({ "uri": "test://watched-resource" })).await;
    assert_eq!(unsubscribed.result(), &json!({}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_lists_and_reads_plugin_resources() {
    let db = crate::harness::TestDb::new(Backend::Sqlite).await;
    let maestro = || crate::server::maestro_with(&db, Backend::Sqlite, &["conformance"], POLICY);
    crate::server::run({
        let mut c = maestro();
        c.args(["tenant", "create", "acme"]);
        c
    });
    let args = ["mcp", "--tenant", "acme", "--role", "member"];
    let mut stdio = crate::server::StdioMcp::spawn(maestro(), &args, std::process::Stdio::null());
    let init = stdio.initialize(SESSIONS);
    assert_eq!(init["result"]["capabilities"]["resources"]["subscribe"], true, "{init}");
    let listed = stdio.ask(2, "resources/list", json!({}));
    assert!(uris(&listed["result"], "resources", "uri").contains(&"test://static-binary".to_owned()), "{listed}");
    let read = stdio.ask(3, "resources/read", json!({ "uri": "test://template/abc/data" }));
    assert!(read["result"]["contents"][0]["text"].as_str().expect("text").contains("Data for ID: abc"), "{read}");
    let unknown = stdio.ask(4, "resources/read", json!({ "uri": "test://nope" }));
    assert_eq!(unknown["error"]["data"]["uri"], "test://nope", "{unknown}");
    stdio.close();
}
