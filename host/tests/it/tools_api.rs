//! Plugins, personas and tool calls over the HTTP API, with real components and real
//! policies; and hot reload of policies and plugins.

use axum::http::StatusCode;
use serde_json::json;

use crate::harness::{Backend, TestHost};

const POLICY: &str = r#"
version = 1

[[grant]]
name = "acme-members"
subjects = ["tenant:acme&role:member+"]
tools = ["calc.*", "text.*", "personas.*", "hostile.*"]
timeout = "500ms"
fuel = 1_000_000_000_000
credits = 3

[[grant]]
name = "acme-slow-tools-limited"
subjects = ["tenant:acme&role:member+"]
tools = ["hostile.echo"]
rate = "2/min"

[[deny]]
name = "no-traps-for-acme"
subjects = ["tenant:acme"]
tools = ["hostile.trap"]
"#;

async fn host() -> (TestHost, String, String) {
    let host = TestHost::with_plugins(Backend::Sqlite, &["calc", "text", "personas", "hostile"], POLICY).await;
    let platform = host.platform_token().await;
    let acme = host.tenant_with_key(&platform, "acme", "member").await;
    let globex = host.tenant_with_key(&platform, "globex", "admin").await;
    // Calls are paid in credits (see `metering`); these tests are about the calls.
    for tenant in ["acme", "globex"] {
        let id = host.accounts.tenant_named(tenant).await.expect("tenant").id;
        host.credits.grant(&id, 1_000_000, &format!("grant:{tenant}"), "test credits").await.expect("grant");
    }
    (host, acme, globex)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_see_and_call_only_what_policy_grants() {
    let (host, acme, globex) = host().await;
    let tools = host.get("/v1/tools", Some(&acme)).await;
    assert_eq!(tools.status, StatusCode::OK);
    let names: Vec<&str> =
        tools.body["tools"].as_array().expect("tools").iter().filter_map(|t| t["name"].as_str()).collect();
    assert!(names.contains(&"calc.evaluate") && names.contains(&"text.count"), "{names:?}");
    assert!(!names.contains(&"hostile.trap"), "denied tools are invisible");
    let calc =
        tools.body["tools"].as_array().expect("tools").iter().find(|t| t["name"] == "calc.evaluate").expect("calc");
    assert!(calc["input_schema"]["properties"].is_object(), "{calc}");
    assert_eq!(calc["credits"], 3);

    let other = host.get("/v1/tools", Some(&globex)).await;
    assert_eq!(other.body["tools"], json!([]), "a tenant without a grant sees nothing");
    assert_eq!(host.get("/v1/plugins", Some(&globex)).await.body["plugins"], json!([]));

    let called = host
        .post("/v1/tools/calc.evaluate/call", Some(&acme), json!({ "arguments": { "expression": "2 * (3 + 4)" } }))
        .await;
    assert_eq!(called.status, StatusCode::OK, "{called:?}");
    assert_eq!(called.body["structured"]["value"], 14.0);
    assert!(called.body["metering"]["fuel"].as_u64().is_some_and(|f| f > 0));
    assert_eq!(called.body["metering"]["credits"], 3);

    let refused =
        host.post("/v1/tools/calc.evaluate/call", Some(&globex), json!({ "arguments": { "expression": "1" } })).await;
    assert_eq!((refused.status, refused.code()), (StatusCode::FORBIDDEN, "forbidden"));
    assert!(refused.body["error"]["message"].as_str().expect("message").contains("default deny"));
    let denied = host.post("/v1/tools/hostile.trap/call", Some(&acme), json!({})).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert!(denied.body["error"]["message"].as_str().expect("message").contains("no-traps-for-acme"), "{denied:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_failures_map_to_error_codes_with_metering() {
    let (host, acme, _) = host().await;
    let cases = [
        ("hostile.spin", json!({}), StatusCode::GATEWAY_TIMEOUT, "tool_timeout"),
        ("hostile.fail", json!({}), StatusCode::UNPROCESSABLE_ENTITY, "tool_error"),
        ("hostile.huge_output", json!({ "bytes": 4 << 20 }), StatusCode::UNPROCESSABLE_ENTITY, "tool_output_too_large"),
        ("hostile.fetch", json!({ "url": "http://169.254.169.254/" }), StatusCode::FORBIDDEN, "network_denied"),
        ("calc.evaluate", json!({ "expression": "1 / 0" }), StatusCode::UNPROCESSABLE_ENTITY, "tool_error"),
        ("calc.evaluate", json!({ "nope": 1 }), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
    ];
    for (tool, arguments, status, code) in cases {
        let reply = host.post(&format!("/v1/tools/{tool}/call"), Some(&acme), json!({ "arguments": arguments })).await;
        assert_eq!((reply.status, reply.code()), (status, code), "{tool}: {reply:?}");
        assert!(reply.body["error"]["details"]["metering"]["duration_us"].is_u64(), "{tool}: {reply:?}");
    }
    let missing = host.post("/v1/tools/calc.nope/call", Some(&acme), json!({})).await;
    assert_eq!((missing.status, missing.code()), (StatusCode::NOT_FOUND, "not_found"));
    let not_object = host.post("/v1/tools/calc.evaluate/call", Some(&acme), json!({ "arguments": [1] })).await;
    assert_eq!(not_object.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_most_specific_grant_sets_the_rate() {
    let (host, acme, _) = host().await;
    for _ in 0..2 {
        let ok = host.post("/v1/tools/hostile.echo/call", Some(&acme), json!({ "arguments": { "x": 1 } })).await;
        assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
    }
    let limited = host.post("/v1/tools/hostile.echo/call", Some(&acme), json!({ "arguments": { "x": 1 } })).await;
    assert_eq!((limited.status, limited.code()), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"));
    let retry: u64 =
        limited.headers.get("retry-after").expect("retry-after").to_str().expect("ascii").parse().expect("seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    // Other tools are governed by their own grant.
    assert_eq!(host.post("/v1/tools/hostile.noop/call", Some(&acme), json!({})).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personas_and_plugins_follow_policy_and_admins_see_everything() {
    let (host, acme, globex) = host().await;
    let personas = host.get("/v1/personas", Some(&acme)).await;
    let names: Vec<&str> =
        personas.body["personas"].as_array().expect("personas").iter().filter_map(|p| p["name"].as_str()).collect();
    assert!(
        names.len() >= 4 && names.iter().all(|n| n.starts_with("personas.") || n.starts_with("hostile.")),
        "{names:?}"
    );
    assert_eq!(host.get("/v1/personas", Some(&globex)).await.body["personas"], json!([]));

    let plugins = host.get("/v1/plugins", Some(&acme)).await;
    let plugin_names: Vec<&str> =
        plugins.body["plugins"].as_array().expect("plugins").iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(plugin_names, vec!["calc", "hostile", "personas", "text"]);
    assert!(plugins.body.get("refused").is_none(), "tenants do not see refusals");

    let platform = host.platform_token_again().await;
    let admin_view = host.get("/v1/plugins", Some(&platform)).await;
    assert_eq!(admin_view.body["plugins"].as_array().expect("plugins").len(), 4);
    assert_eq!(admin_view.body["refused"], json!([]));
    let call =
        host.post("/v1/tools/calc.evaluate/call", Some(&platform), json!({ "arguments": { "expression": "1" } })).await;
    assert_eq!(call.status, StatusCode::FORBIDDEN, "platform keys administer, they do not call tools");
}
