//! The OpenAPI document checked against the router: every route the router serves is
//! documented and every documented operation is served (both from the one route table,
//! `maestro_host::http::routes`), and every status a route answers is documented, by
//! rule (401/500/503 behind the bearer check, 400/413/415/422 for JSON bodies), by the
//! statuses known to each route, and by probing every route with every kind of caller
//! and body and requiring each status seen to be in the document.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use maestro_host::http::{Access, ApiDoc, Route, routes};
use serde_json::{Value, json};
use tower::ServiceExt as _;
use utoipa::OpenApi as _;

use crate::harness::{Backend, TestHost};

fn document() -> Value {
    serde_json::to_value(ApiDoc::openapi()).expect("the document serialises")
}

fn operation<'a>(doc: &'a Value, route: &Route) -> &'a Value {
    &doc["paths"][route.path][route.method.as_str().to_ascii_lowercase()]
}

fn documented_statuses(doc: &Value, route: &Route) -> BTreeSet<u16> {
    operation(doc, route)["responses"]
        .as_object()
        .unwrap_or_else(|| panic!("{} {} has no responses", route.method, route.path))
        .keys()
        .map(|status| status.parse().expect("numeric statuses"))
        .collect()
}

/// A concrete path for a template: `{id}` → `x`.
fn concrete(path: &str) -> String {
    path.split('/').map(|part| if part.starts_with('{') { "x" } else { part }).collect::<Vec<_>>().join("/")
}

async fn answer(app: &axum::Router, request: Request<Body>) -> (StatusCode, Value) {
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_document_and_the_router_serve_the_same_routes() {
    let doc = document();
    let table = routes();
    let mut served = BTreeSet::new();
    for route in &table {
        assert!(
            operation(&doc, route).is_object(),
            "{} {} is served but not in /v1/openapi.json",
            route.method,
            route.path
        );
        served.insert((route.path.to_owned(), route.method.as_str().to_ascii_lowercase()));
    }
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if ["get", "post", "put", "patch", "delete", "head", "options"].contains(&method.as_str()) {
                assert!(
                    served.contains(&(path.clone(), method.clone())),
                    "{method} {path} is documented but not served"
                );
            }
        }
    }

    // And the router really serves each: none falls through to the 404/405 fallbacks.
    let host = TestHost::new(Backend::Sqlite).await;
    let app = host.router();
    for route in &table {
        let request = Request::builder()
            .method(route.method.clone())
            .uri(concrete(route.path))
            .header("host", "localhost")
            .body(Body::empty())
            .expect("request");
        let (status, body) = answer(&app, request).await;
        let fallback = body["error"]["message"] == "no such route" || body["error"]["code"] == "method_not_allowed";
        assert!(!fallback, "{} {} is not routed: {status} {body}", route.method, route.path);
    }
}

/// Statuses each route is known to answer beyond what probing a healthy, empty server
/// shows (payments, rate limits, sandbox failures, caps).
fn known_statuses(route: &Route) -> &'static [u16] {
    match (route.method.as_str(), route.path) {
        ("POST", "/v1/tools/{name}/call") => &[200, 402, 403, 404, 422, 429, 502, 503, 504],
        ("GET", "/readyz") => &[200, 503],
        ("POST", "/v1/billing/checkout") => &[201, 403, 422, 502, 503],
        ("POST", "/v1/billing/stripe/webhook") => &[200, 400, 503],
        ("POST", "/v1/credits/grants") => &[200, 201, 403, 404, 409, 422],
        ("POST", "/v1/tenants") => &[201, 403, 409, 422],
        ("POST", "/v1/keys") => &[201, 403, 404, 422],
        ("DELETE", "/v1/keys/{id}") => &[200, 403, 404],
        ("POST", "/mcp") => &[200, 202, 400, 403, 404, 406, 413, 415, 429],
        ("GET", "/mcp") => &[200, 400, 403, 404, 405, 406],
        ("DELETE", "/mcp") => &[204, 400, 403, 404],
        _ => &[],
    }
}

#[tokio::test]
async fn every_status_a_route_answers_is_documented() {
    let doc = document();
    let mut missing = Vec::new();
    for route in routes() {
        let documented = documented_statuses(&doc, &route);
        assert!(documented.iter().any(|s| (200..300).contains(s)), "{} {}: no success", route.method, route.path);
        for (status, _) in route.common_statuses() {
            if !documented.contains(status) {
                missing.push(format!("{} {}: {status} (by rule)", route.method, route.path));
            }
        }
        for status in known_statuses(&route) {
            if !documented.contains(status) {
                missing.push(format!("{} {}: {status}", route.method, route.path));
            }
        }
        if route.access == Access::Bearer {
            assert!(
                operation(&doc, &route)["security"].is_array(),
                "{} {} names its security",
                route.method,
                route.path
            );
        }
    }

    // Probe: every caller kind, every body kind; whatever comes back must be documented.
    let host = TestHost::new(Backend::Sqlite).await;
    let platform = host.platform_token().await;
    let admin = host.tenant_with_key(&platform, "acme", "admin").await;
    let member = host.key(&platform, json!({ "tenant": "acme", "role": "member" })).await;
    let viewer = host.key(&platform, json!({ "tenant": "acme", "role": "viewer" })).await;
    let app = host.router();
    let callers = [
        None,
        Some("mk_notarealkeynotarealkeynotarealkey0000000"),
        Some(&platform),
        Some(&admin),
        Some(&member),
        Some(&viewer),
    ];
    let bodies: [Option<(&str, &str)>; 5] = [
        None,
        Some(("application/json", "{")),
        Some(("application/json", "{}")),
        Some(("application/json", "{\"name\":\"probe-tenant\",\"role\":\"member\",\"tenant\":\"acme\",\"amount\":5}")),
        Some(("text/plain", "hello")),
    ];
    let queries = ["", "?tenant=nope", "?tenant=acme", "?bogus=1", "?limit=0"];
    let mut probes = 0;
    for route in routes() {
        let documented = documented_statuses(&doc, &route);
        for caller in callers {
            for (body, query) in bodies.iter().flat_map(|b| queries.iter().map(move |q| (*b, *q))) {
                let mut request = Request::builder()
                    .method(route.method.clone())
                    .uri(format!("{}{query}", concrete(route.path)))
                    .header("host", "localhost")
                    .header("accept", "application/json, text/event-stream")
                    .header("idempotency-key", "probe-1");
                if let Some(token) = caller {
                    request = request.header("authorization", format!("Bearer {token}"));
                }
                let request = match body {
                    Some((content_type, text)) => {
                        request.header("content-type", content_type).body(Body::from(text.to_owned()))
                    }
                    None => request.body(Body::empty()),
                }
                .expect("request");
                let (status, answer_body) = answer(&app, request).await;
                probes += 1;
                if !documented.contains(&status.as_u16()) {
                    missing.push(format!(
                        "{} {}{query}: answered {status} (caller {}, body {body:?}): {answer_body}",
                        route.method,
                        route.path,
                        caller.map_or("none", |t| &t[..8.min(t.len())])
                    ));
                }
            }
        }
    }
    missing.sort();
    missing.dedup();
    assert!(missing.is_empty(), "statuses not in /v1/openapi.json ({probes} probes):\n{}", missing.join("\n"));
}

#[test]
fn bearer_routes_answer_401_and_json_routes_their_body_errors_by_rule() {
    use maestro_host::http::Route;
    let route = |access, json_body| Route { method: Method::POST, path: "/p", access, json_body };
    let statuses = |r: Route| r.common_statuses().iter().map(|(s, _)| *s).collect::<Vec<_>>();
    assert_eq!(statuses(route(Access::Bearer, true)), [400, 401, 413, 415, 422, 500, 503]);
    assert_eq!(statuses(route(Access::Bearer, false)), [401, 500, 503]);
    assert!(statuses(route(Access::Public, false)).is_empty());
}
