//! The first-party plugins as WebAssembly components in the real sandbox (their logic
//! is unit-tested natively in their crates).

use std::sync::Arc;
use std::time::Duration;

use maestro_core::call::Failure;
use maestro_core::plugin::ToolError;
use maestro_host::sandbox::net::{HostPattern, NetPolicy, NetRule};
use maestro_host::sandbox::{CallContext, CallLimits, LoadedPlugin};
use serde_json::{Value, json};

use crate::fixtures::{TestServer, component, sandbox};

async fn load(name: &str) -> LoadedPlugin {
    let bytes = std::fs::read(component(name)).expect("component");
    sandbox().load(name, bytes, CallLimits::default()).await.expect("loads")
}

async fn call(plugin: &LoadedPlugin, tool: &str, args: Value, context: &CallContext) -> Result<Value, Failure> {
    let outcome = sandbox().call_tool(plugin, tool, args.to_string(), context).await;
    outcome.result.map(|o| o.structured.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calc_evaluates_and_reports_errors() {
    let calc = load("calc").await;
    let ctx = CallContext::default();
    assert_eq!(
        call(&calc, "evaluate", json!({ "expression": "2^10 / 4 - sqrt(16)" }), &ctx).await.expect("ok")["value"],
        252.0
    );
    for bad in ["1 / 0", "2 +", "(((", "sqrt(-1)"] {
        let err = call(&calc, "evaluate", json!({ "expression": bad }), &ctx).await.expect_err(bad);
        assert!(
            matches!(err, Failure::ToolError(ToolError::InvalidArguments(_) | ToolError::Failed(_))),
            "{bad}: {err:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_counts_extracts_queries_and_diffs() {
    let text = load("text").await;
    let ctx = CallContext::default();
    let counts = call(&text, "count", json!({ "text": "one two\nthree" }), &ctx).await.expect("count");
    assert_eq!((counts["words"].clone(), counts["lines"].clone()), (json!(3), json!(2)));
    let found =
        call(&text, "regex_extract", json!({ "pattern": "[0-9]+", "text": "a1 b22 c333" }), &ctx).await.expect("regex");
    assert_eq!(found.to_string().matches("333").count(), 1, "{found}");
    let doc = json!({ "team": [{ "name": "ada" }, { "name": "grace" }] });
    let by_path =
        call(&text, "json_query", json!({ "document": doc, "path": "$.team[*].name" }), &ctx).await.expect("path");
    assert!(by_path.to_string().contains("grace"), "{by_path}");
    let by_pointer =
        call(&text, "json_query", json!({ "document": doc, "pointer": "/team/0/name" }), &ctx).await.expect("ptr");
    assert!(by_pointer.to_string().contains("ada"), "{by_pointer}");
    let diff = call(&text, "diff", json!({ "old": "a\nb\n", "new": "a\nc\n" }), &ctx).await.expect("diff");
    let rendered = diff.to_string();
    assert!(rendered.contains("-b") && rendered.contains("+c"), "{rendered}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_fetches_readable_markdown_only_where_policy_allows() {
    let page = "<html><head><title>Docs</title><script>evil()</script></head><body><h1>Hello</h1>\
                <p>See <a href=\"/next\">next</a>.</p><ul><li>one</li><li>two</li></ul></body></html>";
    let server = TestServer::start(move |_| {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
            page.len()
        )
    })
    .await;
    let web = load("web").await;
    let url = format!("http://127.0.0.1:{}/docs", server.addr.port());
    let allowed = CallContext {
        network: Arc::new(NetPolicy {
            rules: vec![NetRule {
                scheme: "http".into(),
                host: HostPattern::parse("127.0.0.1"),
                port: Some(server.addr.port()),
                allow_private: true,
                origin: "test.toml:1".into(),
            }],
            secrets: Vec::new(),
            max_requests: 5,
            max_request_bytes: 1 << 20,
            max_response_bytes: 1 << 20,
            request_timeout: Duration::from_secs(5),
        }),
        ..CallContext::default()
    };
    let fetched = call(&web, "fetch", json!({ "url": url, "format": "markdown" }), &allowed).await.expect("fetch");
    assert_eq!(fetched["title"], "Docs");
    let content = fetched["content"].as_str().expect("content");
    assert!(content.contains("# Hello") && content.contains("- one"), "{content}");
    assert!(!content.contains("evil"), "scripts are dropped: {content}");

    let before = server.accepted();
    let denied = call(&web, "fetch", json!({ "url": url }), &CallContext::default()).await.expect_err("default deny");
    assert!(matches!(denied, Failure::NetworkDenied { .. }), "{denied:?}");
    assert_eq!(server.accepted(), before, "no connection without a grant");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personas_describe_the_team_and_render_prompts() {
    let personas = load("personas").await;
    let names: Vec<&str> = personas.personas.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, vec!["product_manager", "architect", "critic", "writer"]);
    assert!(personas.tools.is_empty());
    let pm = &personas.personas[0];
    assert!(pm.arguments.iter().any(|a| a.name == "idea" && a.required));
    assert!(pm.arguments.iter().any(|a| !a.values.is_empty()), "enumerable arguments for completion");

    let ctx = CallContext::default();
    let rendered = sandbox()
        .render_persona(
            &personas,
            "product_manager",
            json!({ "idea": "a tool library for neighbours" }).to_string(),
            &ctx,
        )
        .await
        .result
        .expect("renders")
        .system
        .expect("a rendered prompt");
    assert!(rendered.contains("a tool library for neighbours"), "{rendered}");
    let missing = sandbox().render_persona(&personas, "product_manager", "{}".into(), &ctx).await.result;
    assert!(matches!(&missing, Err(Failure::ToolError(ToolError::Failed(m))) if m.contains("idea")), "{missing:?}");
}
