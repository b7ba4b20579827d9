//! Tool calls paid in credits, over HTTP and MCP, on both stores: the price is debited
//! before the plugin runs, a tenant that cannot pay is refused with its balance and the
//! price (and nothing runs), and the ledger stays balanced.

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::fixtures::TestServer;
use crate::harness::{Backend, TestHost, backend_tests};

backend_tests!(
    a_tenant_without_credits_cannot_run_a_priced_tool_over_http_or_mcp,
    priced_calls_debit_exactly_their_price_and_the_ledger_shows_them,
    credits_api_reads_balances_and_grants_once_per_idempotency_key,
);

fn policy(port: u16) -> String {
    format!(
        "version = 1\n[[grant]]\nname = \"paid\"\nsubjects = [\"tenant:acme\"]\ntools = [\"hostile.*\"]\ncredits = 7\n\
         network = [{{ url = \"http://127.0.0.1:{port}\", allow_private = true }}]\n"
    )
}

async fn acme(host: &TestHost) -> (String, String, maestro_core::TenantId) {
    let platform = host.platform_token().await;
    let member = host.tenant_with_key(&platform, "acme", "member").await;
    let tenant = host.accounts.tenant_named("acme").await.expect("tenant").id;
    (platform, member, tenant)
}

/// An MCP `tools/call` over the stateless revision, through the in-process router.
async fn mcp_call(host: &TestHost, token: &str, tool: &str, arguments: Value) -> Value {
    let body = json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": tool, "arguments": arguments, "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {} } } });
    let reply = host
        .send_raw(
            axum::http::Method::POST,
            "/mcp",
            Some(token),
            Some(("application/json", body.to_string().into_bytes())),
            &[
                ("accept", "application/json, text/event-stream"),
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
                ("mcp-name", tool),
                ("host", "localhost"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply.body
}

async fn a_tenant_without_credits_cannot_run_a_priced_tool_over_http_or_mcp(backend: Backend) {
    let target = TestServer::ok("fetched").await;
    let host = TestHost::with_plugins(backend, &["hostile"], &policy(target.addr.port())).await;
    let (platform, member, tenant) = acme(&host).await;
    let fetch = json!({ "url": format!("http://127.0.0.1:{}/", target.addr.port()) });

    let refused = host.post("/v1/tools/hostile.fetch/call", Some(&member), json!({ "arguments": fetch })).await;
    assert_eq!(refused.status, StatusCode::PAYMENT_REQUIRED, "{refused:?}");
    assert_eq!(refused.code(), "insufficient_credits");
    assert_eq!(refused.body["error"]["details"], json!({ "balance": 0, "price": 7 }));

    let over_mcp = mcp_call(&host, &member, "hostile.fetch", fetch.clone()).await;
    assert_eq!(over_mcp["result"]["isError"], true, "{over_mcp}");
    let text = over_mcp["result"]["content"][0]["text"].as_str().expect("text");
    assert!(text.starts_with("insufficient_credits:") && text.contains("balance is 0"), "{text}");
    assert_eq!(target.accepted(), 0, "the tool ran without being paid for");

    // 10 credits pay for one call of 7, not two.
    let granted = host
        .send_raw(
            axum::http::Method::POST,
            "/v1/credits/grants",
            Some(&platform),
            Some(("application/json", json!({ "tenant": "acme", "amount": 10 }).to_string().into_bytes())),
            &[("idempotency-key", "starter")],
        )
        .await;
    assert_eq!(granted.status, StatusCode::CREATED, "{granted:?}");
    let paid = mcp_call(&host, &member, "hostile.fetch", fetch.clone()).await;
    assert_eq!(paid["result"]["isError"], false, "{paid}");
    assert_eq!(target.accepted(), 1);
    let short = host.post("/v1/tools/hostile.fetch/call", Some(&member), json!({ "arguments": fetch })).await;
    assert_eq!(short.body["error"]["details"], json!({ "balance": 3, "price": 7 }));
    assert_eq!(target.accepted(), 1);
    assert_eq!(host.credits.balance(&tenant).await.expect("balance").available, 3);
    assert!(host.credits.audit().await.expect("audit").is_clean());
}

async fn priced_calls_debit_exactly_their_price_and_the_ledger_shows_them(backend: Backend) {
    let host = TestHost::with_plugins(backend, &["hostile"], &policy(9)).await;
    let (platform, member, tenant) = acme(&host).await;
    host.credits.grant(&tenant, 100, "grant:seed", "seed").await.expect("grant");

    let ok = host.post("/v1/tools/hostile.noop/call", Some(&member), json!({ "arguments": {} })).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.body["metering"]["credits"], 7);
    // A tool that ran and failed is charged too: the sandbox did the work.
    let failed = host.post("/v1/tools/hostile.fail/call", Some(&member), json!({ "arguments": {} })).await;
    assert_eq!(failed.code(), "tool_error");
    assert_eq!(failed.body["error"]["details"]["metering"]["credits"], 7);
    // A call refused before running (unknown tool, bad arguments shape) costs nothing.
    let unknown = host.post("/v1/tools/hostile.nothing/call", Some(&member), json!({ "arguments": {} })).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let not_object = host.post("/v1/tools/hostile.noop/call", Some(&member), json!({ "arguments": [1] })).await;
    assert_eq!(not_object.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(host.credits.balance(&tenant).await.expect("balance").available, 100 - 14);

    let ledger = host.get("/v1/credits/ledger?tenant=acme&kind=debit", Some(&platform)).await;
    assert_eq!(ledger.status, StatusCode::OK, "{ledger:?}");
    let debits = ledger.body["transactions"].as_array().expect("transactions");
    assert_eq!(debits.len(), 2);
    assert!(debits.iter().all(|t| t["amount"] == 7 && t["kind"] == "debit"), "{debits:?}");
    assert_eq!(debits[0]["memo"], "hostile.noop");
    // Members read the balance but not the ledger.
    assert_eq!(host.get("/v1/credits/ledger", Some(&member)).await.status, StatusCode::FORBIDDEN);
    let balance = host.get("/v1/credits", Some(&member)).await;
    assert_eq!((balance.body["available"].as_i64(), balance.body["held"].as_i64()), (Some(86), Some(0)));
    assert!(host.credits.audit().await.expect("audit").is_clean());
}

async fn credits_api_reads_balances_and_grants_once_per_idempotency_key(backend: Backend) {
    let host = TestHost::new(backend).await;
    let (platform, member, _) = acme(&host).await;
    let grant = |key: &'static str, amount: i64| {
        let body = json!({ "tenant": "acme", "amount": amount, "memo": "welcome" }).to_string().into_bytes();
        let headers: Vec<(&str, &str)> = if key.is_empty() { vec![] } else { vec![("idempotency-key", key)] };
        let (host, platform) = (&host, platform.clone());
        async move {
            host.send_raw(
                axum::http::Method::POST,
                "/v1/credits/grants",
                Some(&platform),
                Some(("application/json", body)),
                &headers,
            )
            .await
        }
    };
    let first = grant("k1", 50).await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    assert_eq!(first.body["balance"]["available"], 50);
    let replay = grant("k1", 50).await;
    assert_eq!(replay.status, StatusCode::OK);
    assert_eq!(replay.body["replayed"], true);
    assert_eq!(replay.body["transaction"]["id"], first.body["transaction"]["id"]);
    assert_eq!(grant("k1", 60).await.status, StatusCode::CONFLICT);
    assert_eq!(grant("", 50).await.code(), "invalid_request");
    for bad in [0, -5, 2_000_000_000_000] {
        assert_eq!(grant("k-bad", bad).await.code(), "invalid_request", "{bad}");
    }
    let balance = host.get("/v1/credits?tenant=acme", Some(&platform)).await;
    assert_eq!(balance.body["available"], 50);
    // Only platform admins grant; tenants see only themselves.
    let by_member = host
        .send_raw(
            axum::http::Method::POST,
            "/v1/credits/grants",
            Some(&member),
            Some(("application/json", json!({ "tenant": "acme", "amount": 5 }).to_string().into_bytes())),
            &[("idempotency-key", "x")],
        )
        .await;
    assert_eq!(by_member.status, StatusCode::FORBIDDEN);
    assert_eq!(host.get("/v1/credits?tenant=other", Some(&member)).await.status, StatusCode::FORBIDDEN);
    assert_eq!(host.get("/v1/credits", Some(&platform)).await.code(), "invalid_request");
    assert!(host.credits.audit().await.expect("audit").is_clean());
}
