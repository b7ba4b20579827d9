//! The call pipeline (authorise → rate → calls in flight → charge → run → settle),
//! tested once for every entry point: each scenario of a table is driven through HTTP
//! (`POST /v1/tools/{name}/call`, `POST /v1/personas/{name}/render`) and MCP
//! (`tools/call`, `prompts/get`, in process), and every answer must carry the code of
//! the one table (`maestro_core::call::Code`) with its HTTP status and MCP treatment,
//! and charge exactly what the pipeline says. Then the per-tenant limit on calls in
//! flight against a small instance pool, and the refund of a call the host could not run.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use maestro_core::call::{
    Code, Failure, JSONRPC_INTERNAL_ERROR, Job, McpTreatment, Metering, Outcome, RunLimits, ToolExecutor,
};
use maestro_core::plugin::{Content, Rendered, ToolOutput};
use maestro_core::policy::PolicySet;
use maestro_host::plugins::PluginRegistry;
use maestro_host::policy::PolicyStore;
use maestro_host::sandbox::net::NetPolicy;
use maestro_host::sandbox::{LoadedPlugin, Sandbox, SandboxConfig};
use maestro_host::tools::{Observe, SecretValues, Tools};
use serde_json::{Value, json};

use crate::harness::{Backend, Reply, TestHost, backend_tests};

backend_tests!(a_call_the_host_cannot_run_is_refunded_exactly_once);

const POLICY: &str = r#"
version = 1

[[grant]]
name = "members"
subjects = ["tenant:acme", "tenant:broke", "tenant:busy"]
tools = ["hostile.*"]
timeout = "300ms"
credits = 2

[[grant]]
name = "limited"
subjects = ["tenant:acme"]
tools = ["hostile.echo", "hostile.saboteur"]
rate = "2/min"
credits = 2

[[grant]]
name = "spinners"
subjects = ["tenant:busy"]
tools = ["hostile.spin_until_cancelled"]
timeout = "20s"
fuel = 1_000_000_000_000
credits = 2

[[deny]]
name = "no-traps"
subjects = ["tenant:acme"]
tools = ["hostile.trap"]
"#;

/// Cargo's target directory (for the compiled-code cache the fixtures share).
fn target_dir() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.ancestors().nth(3).expect("target/<profile>/deps/<binary>").to_owned()
}

/// A host with the hostile fixture under `policy`, each tenant limited to
/// `tenant_limit` calls in flight; `max_instances` gives it its own small sandbox.
async fn host(
    backend: Backend,
    policy: &str,
    max_instances: Option<u32>,
    tenant_limit: usize,
) -> (TestHost, tempfile::TempDir) {
    let mut host = TestHost::new(backend).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let plugin_dir = dir.path().join("plugins");
    std::fs::create_dir_all(&plugin_dir).expect("plugin dir");
    crate::fixtures::install(&plugin_dir, "hostile");
    let sandbox = match max_instances {
        None => crate::fixtures::sandbox(),
        Some(max_instances) => Arc::new(
            Sandbox::new(SandboxConfig {
                cache_dir: Some(target_dir().join("maestro-test-cache")),
                max_instances,
                ..SandboxConfig::default()
            })
            .expect("sandbox starts"),
        ),
    };
    let registry = Arc::new(PluginRegistry::new(sandbox, plugin_dir));
    registry.refresh().await;
    let policies = PolicySet::parse([("pipeline.toml", policy)]).unwrap_or_else(|e| panic!("test policy: {e}"));
    let secrets = SecretValues::new(Default::default(), dir.path().join("secrets"));
    host.tools = Arc::new(
        Tools::new(registry, Arc::new(PolicyStore::fixed(policies)), secrets)
            .with_credits(host.credits.clone())
            .with_tenant_limit(tenant_limit),
    );
    (host, dir)
}

/// A member key of `tenant` (created if needed), with `credits` granted once.
async fn member(host: &TestHost, platform: &str, tenant: &str, credits: i64) -> String {
    let token = host.tenant_with_key(platform, tenant, "member").await;
    if credits > 0 {
        let id = host.accounts.tenant_named(tenant).await.expect("tenant").id;
        let key = format!("grant:{tenant}:{}", token.get(..12).unwrap_or_default());
        host.credits.grant(&id, credits, &key, "test credits").await.expect("grant");
    }
    token
}

async fn balance(host: &TestHost, tenant: &str) -> i64 {
    let id = host.accounts.tenant_named(tenant).await.expect("tenant").id;
    host.credits.balance(&id).await.expect("balance").available
}

/// One stateless (2026-07-28) MCP request through the in-process router.
async fn mcp(host: &TestHost, token: &str, method: &str, name: &str, mut params: Value) -> Value {
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {} });
    let body = json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params });
    let reply = host
        .send_raw(
            Method::POST,
            "/mcp",
            Some(token),
            Some(("application/json", body.to_string().into_bytes())),
            &[
                ("accept", "application/json, text/event-stream"),
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", method),
                ("mcp-name", name),
                ("host", "localhost"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply.body
}

/// What a scenario expects: a code from the one table, or success; and whether the
/// call is charged (the plugin ran).
#[derive(Debug, Clone, Copy)]
struct Expect {
    code: Option<Code>,
    charged: bool,
}

const OK: Expect = Expect { code: None, charged: true };

const fn refused(code: Code) -> Expect {
    Expect { code: Some(code), charged: false }
}

const fn ran_and_failed(code: Code) -> Expect {
    Expect { code: Some(code), charged: true }
}

fn check_http(what: &str, reply: &Reply, expect: Expect) {
    match expect.code {
        None => assert_eq!(reply.status, StatusCode::OK, "{what}: {reply:?}"),
        Some(code) => {
            assert_eq!((reply.status.as_u16(), reply.code()), (code.http_status(), code.as_str()), "{what}: {reply:?}");
            if matches!(code, Code::RateLimited | Code::TooManyCallsInFlight) {
                assert!(reply.headers.contains_key("retry-after"), "{what}: {reply:?}");
            }
            if code == Code::Unavailable {
                assert!(!reply.body.to_string().contains("concurrent"), "{what}: host detail leaked: {reply:?}");
            }
        }
    }
}

fn check_mcp_tool(what: &str, answer: &Value, expect: Expect) {
    let Some(code) = expect.code else {
        assert_eq!(answer["result"]["isError"], false, "{what}: {answer}");
        return;
    };
    match code.mcp() {
        McpTreatment::Protocol(rpc) => {
            assert_eq!(answer["error"]["code"], rpc, "{what}: {answer}");
            assert_eq!(answer["error"]["data"]["code"], code.as_str(), "{what}: {answer}");
        }
        McpTreatment::IsError => {
            assert_eq!(answer["result"]["isError"], true, "{what}: {answer}");
            let text = answer["result"]["content"][0]["text"].as_str().unwrap_or_default();
            assert!(text.starts_with(&format!("{code}: ")), "{what}: {answer}");
        }
    }
}

fn check_mcp_prompt(what: &str, answer: &Value, expect: Expect) {
    let Some(code) = expect.code else {
        let text = answer["result"]["messages"][0]["content"]["text"].as_str().unwrap_or_default();
        assert!(text.starts_with("You test the sandbox"), "{what}: {answer}");
        return;
    };
    let rpc = match code.mcp() {
        McpTreatment::Protocol(rpc) => rpc,
        McpTreatment::IsError => JSONRPC_INTERNAL_ERROR,
    };
    assert_eq!(answer["error"]["code"], rpc, "{what}: {answer}");
    assert_eq!(answer["error"]["data"]["code"], code.as_str(), "{what}: {answer}");
}

/// A scenario: who calls, the tool call and persona rendering it makes (where it
/// applies), and what all entry points must answer.
struct Scenario {
    name: &'static str,
    tenant: &'static str,
    token: String,
    tool: Option<(&'static str, Value, Expect)>,
    persona: Option<(&'static str, Value, Expect)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_entry_point_answers_each_scenario_with_the_same_code_and_charge() {
    let (host, _dir) = host(Backend::Sqlite, POLICY, None, 2).await;
    let platform = host.platform_token().await;
    let acme = member(&host, &platform, "acme", 1_000).await;
    let globex = member(&host, &platform, "globex", 1_000).await;
    let broke = member(&host, &platform, "broke", 0).await;
    let busy = member(&host, &platform, "busy", 1_000).await;

    // Rate: a key that has used its two calls (tool) and renderings (persona) a minute.
    let tool_rate = member(&host, &platform, "acme", 0).await;
    let persona_rate = member(&host, &platform, "acme", 0).await;
    for _ in 0..2 {
        let echo = host.post("/v1/tools/hostile.echo/call", Some(&tool_rate), json!({ "arguments": {} })).await;
        assert_eq!(echo.status, StatusCode::OK, "{echo:?}");
        let render = host
            .post(
                "/v1/personas/hostile.saboteur/render",
                Some(&persona_rate),
                json!({ "arguments": { "target": "t" } }),
            )
            .await;
        assert_eq!(render.status, StatusCode::OK, "{render:?}");
    }
    // Calls in flight: `busy` runs its two calls (its limit) until cancelled.
    let busy_id = host.accounts.tenant_named("busy").await.expect("tenant").id;
    let busy_principal = maestro_host::tools::Principal {
        tenant: "busy".into(),
        tenant_id: busy_id,
        role: maestro_core::Role::Member,
        key_id: "spinner".into(),
    };
    let mut spinners = Vec::new();
    for _ in 0..2 {
        let (tools, principal, observe) = (host.tools.clone(), busy_principal.clone(), Observe::default());
        let cancel = observe.cancel.clone();
        let task = tokio::spawn(async move {
            tools.call(&principal, "hostile.spin_until_cancelled", json!({}), observe).await.map(|c| c.charged)
        });
        spinners.push((cancel, task));
    }
    while host.tools.calls_in_flight() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let target = json!({ "target": "the pipeline" });
    let scenarios = [
        Scenario {
            name: "unknown",
            tenant: "acme",
            token: acme.clone(),
            tool: Some(("hostile.nothing", json!({}), refused(Code::NotFound))),
            persona: Some(("hostile.nobody", json!({}), refused(Code::NotFound))),
        },
        Scenario {
            name: "denied",
            tenant: "globex",
            token: globex.clone(),
            tool: Some(("hostile.noop", json!({}), refused(Code::Forbidden))),
            persona: Some(("hostile.saboteur", target.clone(), refused(Code::Forbidden))),
        },
        Scenario {
            name: "denied by a deny rule",
            tenant: "acme",
            token: acme.clone(),
            tool: Some(("hostile.trap", json!({}), refused(Code::Forbidden))),
            persona: None,
        },
        Scenario {
            name: "bad arguments",
            tenant: "acme",
            token: acme.clone(),
            // The tool itself rejects them: it ran, so it is charged.
            tool: Some(("hostile.grow_memory", json!({ "mb": "lots" }), ran_and_failed(Code::InvalidRequest))),
            // The pipeline checks a persona's arguments against its spec before it runs.
            persona: Some(("hostile.saboteur", json!({ "style": "loud" }), refused(Code::InvalidRequest))),
        },
        Scenario {
            name: "rate limited",
            tenant: "acme",
            token: tool_rate.clone(),
            tool: Some(("hostile.echo", json!({}), refused(Code::RateLimited))),
            persona: None,
        },
        Scenario {
            name: "persona rate limited",
            tenant: "acme",
            token: persona_rate.clone(),
            tool: None,
            persona: Some(("hostile.saboteur", target.clone(), refused(Code::RateLimited))),
        },
        Scenario {
            name: "insufficient credits",
            tenant: "broke",
            token: broke.clone(),
            tool: Some(("hostile.noop", json!({}), refused(Code::InsufficientCredits))),
            persona: Some(("hostile.saboteur", target.clone(), refused(Code::InsufficientCredits))),
        },
        Scenario {
            name: "calls in flight",
            tenant: "busy",
            token: busy.clone(),
            tool: Some(("hostile.noop", json!({}), refused(Code::TooManyCallsInFlight))),
            persona: Some(("hostile.saboteur", target.clone(), refused(Code::TooManyCallsInFlight))),
        },
        Scenario {
            name: "tool error",
            tenant: "acme",
            token: acme.clone(),
            tool: Some(("hostile.fail", json!({}), ran_and_failed(Code::ToolError))),
            persona: None,
        },
        Scenario {
            name: "timeout",
            tenant: "acme",
            token: acme.clone(),
            tool: Some(("hostile.spin", json!({}), ran_and_failed(Code::ToolTimeout))),
            persona: None,
        },
        Scenario {
            name: "success with charge",
            tenant: "acme",
            token: acme.clone(),
            tool: Some(("hostile.noop", json!({}), OK)),
            persona: Some(("hostile.saboteur", target.clone(), OK)),
        },
    ];

    for scenario in &scenarios {
        let token = scenario.token.as_str();
        if let Some((tool, arguments, expect)) = &scenario.tool {
            let charge = if expect.charged { 2 } else { 0 };
            let what = format!("{} (http tool call)", scenario.name);
            let before = balance(&host, scenario.tenant).await;
            let reply =
                host.post(&format!("/v1/tools/{tool}/call"), Some(token), json!({ "arguments": arguments })).await;
            check_http(&what, &reply, *expect);
            assert_eq!(before - balance(&host, scenario.tenant).await, charge, "{what}");

            let what = format!("{} (mcp tools/call)", scenario.name);
            let before = balance(&host, scenario.tenant).await;
            let answer = mcp(&host, token, "tools/call", tool, json!({ "name": tool, "arguments": arguments })).await;
            check_mcp_tool(&what, &answer, *expect);
            assert_eq!(before - balance(&host, scenario.tenant).await, charge, "{what}");
        }
        if let Some((persona, arguments, expect)) = &scenario.persona {
            let charge = if expect.charged { 2 } else { 0 };
            let what = format!("{} (http persona render)", scenario.name);
            let before = balance(&host, scenario.tenant).await;
            let reply = host
                .post(&format!("/v1/personas/{persona}/render"), Some(token), json!({ "arguments": arguments }))
                .await;
            check_http(&what, &reply, *expect);
            if expect.code.is_none() {
                assert!(reply.body["prompt"].as_str().is_some_and(|p| p.starts_with("You test")), "{what}: {reply:?}");
                assert_eq!(reply.body["metering"]["credits"], 2, "{what}: {reply:?}");
            }
            assert_eq!(before - balance(&host, scenario.tenant).await, charge, "{what}");

            let what = format!("{} (mcp prompts/get)", scenario.name);
            let before = balance(&host, scenario.tenant).await;
            let answer =
                mcp(&host, token, "prompts/get", persona, json!({ "name": persona, "arguments": arguments })).await;
            check_mcp_prompt(&what, &answer, *expect);
            assert_eq!(before - balance(&host, scenario.tenant).await, charge, "{what}");
        }
    }

    for (cancel, task) in spinners {
        cancel.cancel();
        let charged = task.await.expect("spinner task").expect("the spinner ran");
        assert_eq!(charged, 2, "a cancelled call ran and is charged");
    }
    assert!(host.credits.audit().await.expect("audit").is_clean());
}

/// Starts `n` calls of `tenant` that spin until cancelled.
async fn spin(
    host: &TestHost,
    tenant: &str,
    n: usize,
) -> Vec<(maestro_core::call::CancelToken, tokio::task::JoinHandle<()>)> {
    let id = host.accounts.tenant_named(tenant).await.expect("tenant").id;
    let principal = maestro_host::tools::Principal {
        tenant: tenant.into(),
        tenant_id: id,
        role: maestro_core::Role::Member,
        key_id: format!("{tenant}-spinner"),
    };
    let before = host.tools.calls_in_flight();
    let mut spinners = Vec::new();
    for _ in 0..n {
        let (tools, principal, observe) = (host.tools.clone(), principal.clone(), Observe::default());
        let cancel = observe.cancel.clone();
        let task = tokio::spawn(async move {
            let call = tools.call(&principal, "hostile.spin_until_cancelled", json!({}), observe).await;
            let call = call.expect("the spinner is admitted");
            assert!(call.outcome.result.is_err(), "a spinner only stops when cancelled");
        });
        spinners.push((cancel, task));
    }
    while host.tools.calls_in_flight() < before + n {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Admitted calls take their instance slot a moment later.
    tokio::time::sleep(Duration::from_millis(300)).await;
    spinners
}

async fn stop(spinners: Vec<(maestro_core::call::CancelToken, tokio::task::JoinHandle<()>)>) {
    for (cancel, task) in spinners {
        cancel.cancel();
        task.await.expect("spinner task");
    }
}

const SPINNERS: &str = r#"
version = 1

[[grant]]
name = "members"
subjects = ["tenant:a", "tenant:b"]
tools = ["hostile.*"]
timeout = "20s"
fuel = 1_000_000_000_000
credits = 5
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_spinning_at_its_limit_is_refused_more_and_cannot_starve_another() {
    // Three instance slots; each tenant may hold two.
    let (host, _dir) = host(Backend::Sqlite, SPINNERS, Some(3), 2).await;
    let platform = host.platform_token().await;
    let a = member(&host, &platform, "a", 100).await;
    let b = member(&host, &platform, "b", 100).await;
    let spinners = spin(&host, "a", 2).await;

    let extra = host.post("/v1/tools/hostile.spin_until_cancelled/call", Some(&a), json!({})).await;
    assert_eq!((extra.status, extra.code()), (StatusCode::TOO_MANY_REQUESTS, "too_many_calls_in_flight"), "{extra:?}");
    assert_eq!(extra.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    assert_eq!(balance(&host, "a").await, 100 - 2 * 5, "the refused call is not charged");

    // The third slot is still free for another tenant.
    let other = host.post("/v1/tools/hostile.noop/call", Some(&b), json!({})).await;
    assert_eq!(other.status, StatusCode::OK, "{other:?}");
    stop(spinners).await;
    assert_eq!(host.tools.calls_in_flight(), 0);
    assert_eq!(host.post("/v1/tools/hostile.noop/call", Some(&a), json!({})).await.status, StatusCode::OK);
}

async fn a_call_the_host_cannot_run_is_refunded_exactly_once(backend: Backend) {
    // Two instance slots, both held by spinners: the next call cannot be instantiated.
    let (host, _dir) = host(backend, SPINNERS, Some(2), 8).await;
    let platform = host.platform_token().await;
    let a = member(&host, &platform, "a", 100).await;
    let spinners = spin(&host, "a", 2).await;

    let refused = host.post("/v1/tools/hostile.noop/call", Some(&a), json!({})).await;
    check_http("tool call without a slot", &refused, refused_unavailable());
    assert_eq!(refused.body["error"]["details"]["metering"]["credits"], 0, "{refused:?}");
    assert_eq!(refused.body["error"]["message"], "the host could not run the call, try again later");
    let rendered =
        host.post("/v1/personas/hostile.saboteur/render", Some(&a), json!({ "arguments": { "target": "t" } })).await;
    check_http("persona rendering without a slot", &rendered, refused_unavailable());
    assert_eq!(balance(&host, "a").await, 100 - 2 * 5, "both refused calls were refunded");

    let refunds = host.get("/v1/credits/ledger?tenant=a&kind=refund", Some(&platform)).await;
    let refunds = refunds.body["transactions"].as_array().expect("transactions").clone();
    assert_eq!(refunds.len(), 2, "one refund per refused call: {refunds:?}");
    assert!(refunds.iter().all(|t| t["amount"] == 5), "{refunds:?}");

    stop(spinners).await;
    assert_eq!(balance(&host, "a").await, 100 - 2 * 5, "the spinners ran and stay charged");
    assert!(host.credits.audit().await.expect("audit").is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persona_rendering_reports_the_fuel_time_and_bytes_it_used_like_a_tool_call() {
    let (host, _dir) = host(Backend::Sqlite, POLICY, None, 2).await;
    let platform = host.platform_token().await;
    let acme = member(&host, &platform, "acme", 1_000).await;
    let rendered =
        host.post("/v1/personas/hostile.saboteur/render", Some(&acme), json!({ "arguments": { "target": "t" } })).await;
    assert_eq!(rendered.status, StatusCode::OK, "{rendered:?}");
    let metering = &rendered.body["metering"];
    assert!(metering["fuel"].as_u64().is_some_and(|fuel| fuel > 0), "a rendering runs guest code: {metering}");
    assert!(metering["duration_us"].as_u64().is_some_and(|us| us > 0), "{metering}");
    assert!(metering["bytes_in"].as_u64().is_some_and(|bytes| bytes > 0), "{metering}");
    let prompt = rendered.body["prompt"].as_str().expect("prompt");
    assert_eq!(metering["bytes_out"], prompt.len(), "{metering}");

    // A rendering that fails is metered too.
    let failed = host
        .post(
            "/v1/personas/hostile.saboteur/render",
            Some(&acme),
            json!({ "arguments": { "target": "t", "fail": "3" } }),
        )
        .await;
    check_http("failed rendering", &failed, ran_and_failed(Code::ToolError));
    let metering = &failed.body["error"]["details"]["metering"];
    assert!(metering["fuel"].as_u64().is_some_and(|fuel| fuel > 0), "{failed:?}");
}

fn refused_unavailable() -> Expect {
    refused(Code::Unavailable)
}

/// A stand-in executor behind the port: records what the pipeline hands it and answers
/// success, or (when `unavailable`) a host-side failure whose detail must stay in the log.
#[derive(Debug, Default)]
struct StandIn {
    jobs: std::sync::Mutex<Vec<(String, RunLimits, String)>>,
    unavailable: bool,
}

impl StandIn {
    fn record(&self, job: &Job<NetPolicy>) {
        let entry = (job.item.clone(), job.limits.clone(), job.config_json.to_string());
        self.jobs.lock().expect("jobs").push(entry);
    }
}

#[async_trait::async_trait]
impl ToolExecutor for StandIn {
    type Plugin = LoadedPlugin;
    type Network = NetPolicy;

    async fn call_tool(&self, _plugin: &LoadedPlugin, job: Job<NetPolicy>) -> Outcome<ToolOutput> {
        self.record(&job);
        let result = if self.unavailable {
            Err(Failure::Unavailable { detail: "stand-in has no capacity (/var/lib/secret-path)".into() })
        } else {
            Ok(ToolOutput { content: vec![Content::Text { text: "from the stand-in".into() }], structured: None })
        };
        Outcome { result, metering: Metering { fuel: 7, ..Metering::default() } }
    }

    async fn render_persona(&self, _plugin: &LoadedPlugin, job: Job<NetPolicy>) -> Outcome<Rendered> {
        self.record(&job);
        Outcome { result: Ok(Rendered::default()), metering: Metering::default() }
    }
}

const STAND_IN: &str = r#"
version = 1

[[grant]]
name = "members"
subjects = ["tenant:a"]
tools = ["hostile.*"]
timeout = "750ms"
credits = 3
config.hostile = { mode = "stand-in" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_executor_behind_the_port_runs_what_the_grant_decided_and_is_settled_alike() {
    for unavailable in [false, true] {
        let (mut host, _dir) = host(Backend::Sqlite, STAND_IN, None, 4).await;
        let stand_in = Arc::new(StandIn { unavailable, ..StandIn::default() });
        let tools = Arc::into_inner(host.tools).expect("the only reference to the tools");
        host.tools = Arc::new(tools.with_executor(stand_in.clone()));
        let platform = host.platform_token().await;
        let a = member(&host, &platform, "a", 10).await;

        let called = host.post("/v1/tools/hostile.noop/call", Some(&a), json!({ "arguments": {} })).await;
        let rendered = host
            .post("/v1/personas/hostile.saboteur/render", Some(&a), json!({ "arguments": { "target": "t" } }))
            .await;
        if unavailable {
            check_http("stand-in tool call", &called, refused(Code::Unavailable));
            assert!(!called.body.to_string().contains("secret-path"), "{called:?}");
            // Renderings succeed (the stand-in has no renderer: the system prompt is the prompt).
            assert_eq!(balance(&host, "a").await, 10 - 3, "the failed call was refunded, the rendering charged");
        } else {
            assert_eq!(called.status, StatusCode::OK, "{called:?}");
            assert_eq!(called.body["content"][0]["text"], "from the stand-in");
            assert_eq!(
                (called.body["metering"]["fuel"].as_u64(), called.body["metering"]["credits"].as_u64()),
                (Some(7), Some(3))
            );
            assert_eq!(balance(&host, "a").await, 10 - 6);
        }
        assert_eq!(rendered.status, StatusCode::OK, "{rendered:?}");
        assert!(
            rendered.body["prompt"].as_str().is_some_and(|p| p.starts_with("You test the sandbox")),
            "{rendered:?}"
        );

        let jobs = stand_in.jobs.lock().expect("jobs").clone();
        assert_eq!(jobs.len(), 2, "{jobs:?}");
        for (item, (job_item, limits, config)) in ["noop", "saboteur"].iter().zip(&jobs) {
            assert_eq!(job_item, item);
            assert_eq!(limits.timeout, Duration::from_millis(750));
            assert_eq!(serde_json::from_str::<Value>(config).expect("config json"), json!({ "mode": "stand-in" }));
        }
        assert!(host.credits.audit().await.expect("audit").is_clean());
    }
}
