//! The HTTP API in process (`oneshot`), on both backends.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use maestro_host::config::LogFormat;
use maestro_host::http::HttpSettings;
use maestro_host::telemetry::Captured;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::harness::{Backend, TestHost, backend_tests};

/// Captures what this thread logs (in the human format, as `maestro serve` writes it)
/// until the guard drops. In-process requests (`oneshot`) run on the test's thread.
pub(crate) fn capture_logs(filter: &str) -> (Captured, tracing::subscriber::DefaultGuard) {
    // tracing caches whether each log site is enabled, for all threads. While a single
    // dispatcher is registered it asks only the registering thread's, so a site first
    // reached by another test's thread (which logs nowhere) would be cached as disabled
    // for this one too. A second, permanent dispatcher makes it ask every dispatcher.
    static SECOND: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
    SECOND.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
    let captured = Captured::default();
    let subscriber =
        maestro_host::telemetry::subscriber(filter, LogFormat::Human, captured.clone(), false).expect("subscriber");
    (captured, tracing::subscriber::set_default(subscriber))
}

async fn send(
    app: &axum::Router,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = app.clone().oneshot(request.body(Body::empty()).expect("request")).await.expect("infallible");
    let (status, headers) = (response.status(), response.headers().clone());
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, headers, body)
}

fn request_id(headers: &axum::http::HeaderMap) -> String {
    headers.get("x-request-id").expect("x-request-id on every response").to_str().expect("ascii").to_owned()
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_logs_inside_carry_it_too() {
    let host = TestHost::new(Backend::Sqlite).await;
    let platform = host.platform_token().await;
    let app = host.router();
    let (logs, _guard) = capture_logs("debug");

    // A well-formed incoming id is kept, and what is logged inside the request carries
    // it with the matched route (never the raw path).
    let bearer = format!("Bearer {platform}");
    let (status, headers, _) = send(
        &app,
        Method::DELETE,
        "/v1/keys/key_doesnotexist",
        &[("x-request-id", "trace-7.a:b"), ("authorization", &bearer)],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(request_id(&headers), "trace-7.a:b");
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("trace-7.a:b") && l.contains("status=404"))
        .unwrap_or_else(|| panic!("no line with the id: {text}"));
    assert!(line.contains(r#"route="/v1/keys/{id}""#) && !line.contains("key_doesnotexist"), "{line}");
    assert!(line.contains(r#"key_id="key_"#), "the authenticated key is in the span: {line}");

    // A malformed or oversized one is replaced; errors, unknown routes, 401s and /mcp
    // all answer with an id, and error bodies repeat it.
    let long = "x".repeat(65);
    for (method, uri, incoming) in [
        (Method::GET, "/healthz", "has space"),
        (Method::GET, "/nope", long.as_str()),
        (Method::GET, "/v1/tenants", "not/allowed"),
        (Method::POST, "/mcp", ""),
        (Method::from_bytes(b"FROB").expect("token"), "/healthz", "ok-id"),
    ] {
        let headers_in: Vec<(&str, &str)> = if incoming.is_empty() { vec![] } else { vec![("x-request-id", incoming)] };
        let (status, headers, body) = send(&app, method.clone(), uri, &headers_in).await;
        let id = request_id(&headers);
        if incoming == "ok-id" {
            assert_eq!(id, "ok-id");
        } else {
            assert_eq!(id.len(), 24, "{method} {uri}: a generated id, not {incoming:?}");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        }
        if !status.is_success() {
            assert_eq!(body["error"]["request_id"], id.as_str(), "{method} {uri}: {body}");
        }
    }
}

#[tokio::test]
async fn unknown_methods_and_paths_do_not_grow_the_metrics() {
    let host = TestHost::new(Backend::Sqlite).await;
    let app = host.router();
    let metrics = |app: axum::Router| async move {
        match send(&app, Method::GET, "/metrics", &[]).await.2 {
            Value::String(text) => text,
            other => panic!("metrics are text: {other}"),
        }
    };
    let random = |n: usize| {
        let mut bytes = vec![0u8; n];
        getrandom::fill(&mut bytes).expect("random");
        bytes.iter().map(|b| char::from(b'A' + b % 26)).collect::<String>()
    };
    let mut flood = Vec::new();
    for _ in 0..200 {
        flood.push((random(12), random(20)));
    }
    for (method, path) in &flood[..5] {
        send(&app, Method::from_bytes(method.as_bytes()).expect("token"), &format!("/{path}"), &[]).await;
        send(&app, Method::from_bytes(method.as_bytes()).expect("token"), "/healthz", &[]).await;
    }
    metrics(app.clone()).await;
    let before = metrics(app.clone()).await;
    for (method, path) in &flood[5..] {
        send(&app, Method::from_bytes(method.as_bytes()).expect("token"), &format!("/{path}"), &[]).await;
        send(&app, Method::from_bytes(method.as_bytes()).expect("token"), "/healthz", &[]).await;
    }
    let after = metrics(app).await;
    let series = |text: &str| text.lines().filter(|l| !l.starts_with('#')).count();
    assert_eq!(series(&before), series(&after), "no new series:\n{after}");
    assert!(!after.contains(&flood[100].0) && !after.contains(&flood[100].1), "{after}");
    assert!(after.contains(r#"method="other",route="unmatched",status="404""#), "{after}");
    assert!(after.contains(r#"method="other",route="/healthz",status="405""#), "{after}");
}

/// Makes the store fail from now on on `tables`, renamed away under the running pool.
async fn break_store(db: &crate::harness::TestDb, backend: Backend, tables: &[&str]) {
    use sqlx::Connection as _;
    let statements: String = tables.iter().map(|t| format!("ALTER TABLE {t} RENAME TO {t}_gone;\n")).collect();
    let statements = sqlx::AssertSqlSafe(statements);
    match backend {
        Backend::Sqlite => {
            let mut connection = sqlx::SqliteConnection::connect(&db.url).await.expect("connect");
            sqlx::raw_sql(statements).execute(&mut connection).await.expect("rename");
            connection.close().await.ok();
        }
        Backend::Postgres => {
            let mut connection = sqlx::PgConnection::connect(&db.url).await.expect("connect");
            sqlx::raw_sql(statements).execute(&mut connection).await.expect("rename");
            connection.close().await.ok();
        }
    }
}

/// The API over a fresh store holding `plugins` under `policy`, with the store at hand.
async fn app_over(
    backend: Backend,
    plugins: &[&str],
    policy: maestro_core::policy::PolicySet,
) -> (crate::harness::TestDb, axum::Router, String) {
    use maestro_host::accounts::Accounts;
    use maestro_host::credits::Credits;
    use maestro_host::http::{self, AppState};

    let db = crate::harness::TestDb::new(backend).await;
    let store = db.open().await;
    let clock = crate::harness::ManualClock::new();
    // Without the key cache, every request reads the key from the store, so that a test
    // breaking the store sees authentication fail.
    let no_cache = maestro_host::accounts::KeyCacheSettings { entries: 0, ..Default::default() };
    let accounts = Accounts::new(store.clone(), clock.clone()).with_key_cache(no_cache);
    let credits = Arc::new(Credits::new(store.clone(), clock.clone()));
    let jobs = Arc::new(maestro_host::jobs::Jobs::new(store.clone(), clock.clone()));
    let tools = crate::harness::tools_with(&db.dir().join("plugins"), plugins, policy, credits.clone()).await;
    let documents = Arc::new(maestro_host::documents::Documents::new(store.clone(), clock.clone()));
    let orchestrator = crate::harness::orchestrator(&store, clock.clone(), &tools);
    let schedules = crate::harness::schedules(&store, clock.clone(), &tools, Default::default());
    let artifacts = maestro_host::artifacts::Artifacts::on_disk(db.dir().join("artifacts"), store.clone(), clock);
    let platform = match accounts.bootstrap(None).await.expect("bootstrap") {
        maestro_host::accounts::Bootstrap::Generated(issued) => issued.token.expose_secret().to_owned(),
        other => panic!("{other:?}"),
    };
    let state = AppState {
        accounts,
        metrics: Arc::default(),
        tools,
        credits,
        shutdown: Default::default(),
        billing: None,
        jobs,
        orchestrator,
        documents,
        schedules,
        artifacts,
        memories: None,
        search: None,
        embedder: Arc::new(crate::fake_embed::FakeEmbedder::new()),
        retrieval: None,
    };
    let settings = HttpSettings { body_limit_bytes: 64 * 1024, cors_allow_origins: vec![], mcp: Default::default() };
    (db, http::router(state, &settings), platform)
}

async fn post_json(
    app: &axum::Router,
    uri: &str,
    token: &str,
    body: Value,
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let request = Request::post(uri)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request");
    let response = app.clone().oneshot(request).await.expect("infallible");
    let (status, headers) = (response.status(), response.headers().clone());
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
    (status, headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn store_failures_answer_a_generic_body_and_log_the_detail_once(backend: Backend) {
    let (db, app, platform) = app_over(backend, &[], maestro_core::policy::PolicySet::deny_all()).await;
    let bearer = format!("Bearer {platform}");
    assert_eq!(send(&app, Method::GET, "/v1/tenants", &[("authorization", &bearer)]).await.0, StatusCode::OK);

    break_store(&db, backend, &["api_keys"]).await;
    let (logs, _guard) = capture_logs("info");
    let (status, headers, body) = send(&app, Method::GET, "/v1/tenants", &[("authorization", &bearer)]).await;
    let id = request_id(&headers);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(
        body,
        json!({ "error": { "code": "unavailable", "message": "the store is not available, try again later",
            "request_id": id } }),
        "no backend text reaches the client"
    );
    let text = logs.text();
    let failures: Vec<&str> = text.lines().filter(|l| l.contains("request failed")).collect();
    assert_eq!(failures.len(), 1, "logged once: {text}");
    assert!(failures[0].contains(&id), "with the request id: {}", failures[0]);
    assert!(failures[0].contains("api_keys"), "with the backend's detail: {}", failures[0]);

    // The MCP endpoint's authentication fails the same way.
    let (status, headers, body) =
        send(&app, Method::POST, "/mcp", &[("authorization", &bearer), ("host", "localhost")]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!body.to_string().contains("api_keys"), "{body}");
    assert_eq!(body["error"]["request_id"], request_id(&headers).as_str());
}

backend_tests!(
    platform_admin_sets_up_a_tenant_with_admin_and_member_keys,
    member_key_cannot_manage_keys,
    revoked_and_expired_keys_get_401_with_a_challenge,
    missing_malformed_and_unknown_keys_get_401,
    bad_input_gets_4xx_and_writes_nothing,
    tenant_admins_cannot_reach_other_tenants,
    tenant_admins_cannot_create_tenants_or_platform_keys,
    tenant_names_are_validated_and_unique,
    key_creation_validates_expiry_and_names,
    health_readiness_metrics_and_openapi_answer,
    unknown_routes_and_methods_use_the_error_shape,
    store_failures_answer_a_generic_body_and_log_the_detail_once,
    a_ledger_failure_in_a_tool_call_answers_a_generic_body,
);

async fn platform_admin_sets_up_a_tenant_with_admin_and_member_keys(backend: Backend) {
    let host = TestHost::new(backend).await;
    let platform = host.platform_token().await;

    let tenant = host.post("/v1/tenants", Some(&platform), json!({ "name": "acme" })).await;
    assert_eq!(tenant.status, StatusCode::CREATED, "{tenant:?}");
    assert_eq!(tenant.body["name"], "acme");
    let tenant_id = tenant.body["id"].as_str().expect("id").to_owned();

    let admin =
        host.post("/v1/keys", Some(&platform), json!({ "tenant": "acme", "role": "admin", "name": "ops" })).await;
    assert_eq!(admin.status, StatusCode::CREATED, "{admin:?}");
    let admin_token = admin.body["token"].as_str().expect("token").to_owned();
    assert!(admin_token.starts_with("mk_"));
    assert_eq!(admin.body["key"]["tenant_id"], tenant_id.as_str());
    assert_eq!(admin.body["key"]["role"], "admin");
    assert_eq!(admin.body["key"]["status"], "active");
    assert_eq!(admin.body["key"]["prefix"], &admin_token[..11]);

    let member = host.post("/v1/keys", Some(&admin_token), json!({ "role": "member" })).await;
    assert_eq!(member.status, StatusCode::CREATED, "{member:?}");
    assert_eq!(member.body["key"]["tenant_id"], tenant_id.as_str(), "a tenant admin's key lands in its tenant");

    let listed = host.get("/v1/keys", Some(&admin_token)).await;
    assert_eq!(listed.status, StatusCode::OK);
    let keys = listed.body["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 2, "the tenant's two keys, not the platform key: {keys:?}");
    assert!(keys.iter().all(|k| k.get("token").is_none() && k.get("hash").is_none()), "no secrets listed");

    let all = host.get("/v1/keys", Some(&platform)).await;
    assert_eq!(all.body["keys"].as_array().expect("keys").len(), 3);
    let tenants = host.get("/v1/tenants", Some(&platform)).await;
    assert_eq!(tenants.body["tenants"][0]["name"], "acme");
}

async fn member_key_cannot_manage_keys(backend: Backend) {
    let host = TestHost::new(backend).await;
    let platform = host.platform_token().await;
    let member = host.tenant_with_key(&platform, "acme", "member").await;
    for reply in [
        host.get("/v1/keys", Some(&member)).await,
        host.post("/v1/keys", Some(&member), json!({ "role": "viewer" })).await,
        host.get("/v1/tenants", Some(&member)).await,
    ] {
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
        assert_eq!(reply.code(), "forbidden");
    }
    assert_eq!(host.accounts.list_keys(None).await.expect("keys").len(), 2, "nothing created");
}

async fn revoked_and_expired_keys_get_401_with_a_challenge(backend: Backend) {
    let host = TestHost::new(backend).await;
    let platform = host.platform_token().await;
    let admin = host.tenant_with_key(&platform, "acme", "admin").await;
    host.clock.advance(chrono::Duration::seconds(1));
    let doomed = host.post("/v1/keys", Some(&admin), json!({ "role": "admin" })).await;
    let doomed_token = doomed.body["token"].as_str().expect("token").to_owned();
    let doomed_id = doomed.body["key"]["id"].as_str().expect("id").to_owned();
    assert_eq!(host.get("/v1/keys", Some(&doomed_token)).await.status, StatusCode::OK);

    let revoked = host.delete(&format!("/v1/keys/{doomed_id}"), Some(&admin)).await;
    assert_eq!(revoked.status, StatusCode::OK, "{revoked:?}");
    assert_eq!(revoked.body["status"], "revoked");
    let reply = host.get("/v1/keys", Some(&doomed_token)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.code(), "unauthorized");
    assert!(reply.body["error"]["message"].as_str().expect("message").contains("revoked"));
    let challenge = reply.headers.get("www-authenticate").expect("challenge").to_str().expect("ascii");
    assert!(challenge.starts_with("Bearer") && challenge.contains("invalid_token"), "{challenge}");

    host.clock.advance(chrono::Duration::seconds(1));
    let short = host.post("/v1/keys", Some(&admin), json!({ "role": "viewer", "expires_in": "1h" })).await;
    let short_token = short.body["token"].as_str().expect("token").to_owned();
    assert_eq!(host.get("/v1/tenants", Some(&short_token)).await.status, StatusCode::FORBIDDEN, "valid, low role");
    host.clock.advance(chrono::Duration::minutes(61));
    let reply = host.get("/v1/tenants", Some(&short_token)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(reply.body["error"]["message"].as_str().expect("message").contains("expired"));
    assert!(reply.headers.contains_key("www-authenticate"));
    let listed = host.get("/v1/keys", Some(&admin)).await;
    let statuses: Vec<_> = listed.body["keys"].as_array().expect("keys").iter().map(|k| k["status"].clone()).collect();
    assert_eq!(statuses, vec![json!("active"), json!("revoked"), json!("expired")]);
}

async fn missing_malformed_and_unknown_keys_get_401(backend: Backend) {
    let host = TestHost::new(backend).await;
    let platform = host.platform_token().await;
    let unknown = format!("mk_{}", "A".repeat(40));
    // The real key with its last character changed (to one it cannot already be).
    let last = if platform.ends_with('x') { 'y' } else { 'x' };
    let almost = format!("{}{last}", &platform[..platform.len() - 1]);
    for token in [None, Some("not-a-key"), Some(unknown.as_str()), Some(almost.as_str())] {
        let reply = host.get("/v1/tenants", token).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(reply.code(), "unauthorized");
        assert!(
            reply.headers.get("www-authenticate").is_some_and(|v| v.to_str().is_ok_and(|v| v.starts_with("Bearer")))
        );
    }
    let basic = host.send_raw(Method::GET, "/v1/tenants", None, None, &[("authorization", "Basic dTpw")]).await;
    assert_eq!(basic.status, StatusCode::UNAUTHORIZED);
    let lowercase = host
        .send_raw(Method::GET, "/v1/tenants", None, None, &[("authorization", &format!("bearer {platform}"))])
        .await;
    assert_eq!(lowercase.status, StatusCode::OK, "the scheme is case-insensitive");
}

async fn bad_input_gets_4xx_and_writes_nothing(backend: Backend) {
    let host = TestHost::new(backend).await;
    let platform = host.platform_token().await;
    let json_body = |text: &str| Some(("application/json", text.as_bytes().to_vec()));
    let oversize = format!("{{\"name\":\"{}\"}}", "a".repeat(100 * 1024));
    let cases = [
        (json_body("{\"name\":"), StatusCode::BAD_REQUEST, "invalid_json"),
        (json_body("nope"), StatusCode::BAD_REQUEST, "invalid_json"),
        (json_body("{\"name\":\"acme\",\"plan\":\"gold\"}"), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (json_body("{\"name\":7}"), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (json_body("{}"), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (json_body(&oversize), StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        (
            Some(("text/plain", b"{\"name\":\"acme\"}".to_vec())),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
    ];
    for (body, status, code) in cases {
        let reply = host.send_raw(Method::POST, "/v1/tenants", Some(&platform), body, &[]).await;
        assert_eq!((reply.status, reply.code()), (status, code), "{reply:?}");
        assert!(reply.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let key_cases =
        [json!({ "tenant": "acme", "role": "owner" }), json!({ "tenant": "acme", "role": "admin", "scopes": ["all"] })];
    for body in key_cases {
        let reply = host.post("/v1/keys", Some(&platform), body).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{reply:?}");
    }
    let unauthenticated = host.post("/v1/tenants", None, json!({ "name": "sneaky" })).await;
    assert_eq!(unauthenticated.status, StatusCode::UNAUTHORIZED);
    assert!(host.accounts.list_tenants().await.expect("tenants").is_empty(), "nothing written");
    assert_eq!(host.accounts.list_keys(None).await.expect("keys").len(), 1, "only the platform key");
}

async fn tenant_admins_cannot_reach_other_tenants(backend: Backend) {
    let host = TestHost::new(backend).await;
    let platform = host.platform_token().await;
    let acme_admin = host.tenant_with_key(&platform, "acme", "admin").await;
    let globex_admin = host.tenant_with_key(&platform, "globex", "admin").await;
    let globex_keys = host.get("/v1/keys", Some(&globex_admin)).await;
    let globex_key_id = globex_keys.body["keys"][0]["id"].as_str().expect("id").to_owned();

    let reply = host.delete(&format!("/v1/keys/{globex_key_id}"), Some(&acme_admin)).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "another tenant's key is invisible: {reply:?}");
    assert_eq!(host.get("/v1/keys", Some(&globex_admin)).await.status, StatusCode::OK, "still works");

    for path in ["/v1/keys?tenant=globex", "/v1/keys?tenant=does-not-exist"] {
        let reply = host.get(path, Some(&acme_admin)).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{path}: {reply:?}");
    }
    let own = host.get("/v1/keys?tenant=acme", Some(&acme_admin)).await;
    assert_eq!(own.status, StatusCode::OK);
    let reply = host.post("/v1/keys", Some(&acme_admin), json!({ "tenant": "globex", "role": "admin" })).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(host.accounts.list_keys(None).await.expect("keys").len(), 3, "nothing created");
}

async fn tenant_admins_cannot_create_tenants_or_platform_keys(backend: Backend) {
    let host = TestHost::new(backend).await;
    let platform = host.platform_token().await;
    let admin = host.tenant_with_key(&platform, "acme", "admin").await;
    assert_eq!(host.post("/v1/tenants", Some(&admin), json!({ "name": "mine" })).await.status, StatusCode::FORBIDDEN);
    assert_eq!(host.post("/v1/keys", Some(&admin), json!({ "role": "platform" })).await.status, StatusCode::FORBIDDEN);

    let second_platform = host.post("/v1/keys", Some(&platform), json!({ "role": "platform", "name": "backup" })).await;
    assert_eq!(second_platform.status, StatusCode::CREATED, "{second_platform:?}");
    assert_eq!(second_platform.body["key"]["tenant_id"], serde_json::Value::Null);
    let bad = host.post("/v1/keys", Some(&platform), json!({ "role": "platform", "tenant": "acme" })).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    let missing = host.post("/v1/keys", Some(&platform), json!({ "role": "member" })).await;
    assert_eq!(missing.status, StatusCode::UNPROCESSABLE_ENTITY, "a platform admin must name the tenant");
    let ghost = host.post("/v1/keys", Some(&platform), json!({ "role": "member", "tenant": "ghost" })).await;
    assert_eq!((ghost.status, ghost.code()), (StatusCode::NOT_FOUND, "not_found"));
}

async fn tenant_names_are_validated_and_unique(backend: Backend) {
    let host = TestHost::new(backend).await;
    let platform = host.platform_token().await;
    assert_eq!(host.post("/v1/tenants", Some(&platform), json!({ "name": "acme" })).await.status, StatusCode::CREATED);
    let dup = host.post("/v1/tenants", Some(&platform), json!({ "name": "acme" })).await;
    assert_eq!((dup.status, dup.code()), (StatusCode::CONFLICT, "conflict"));
    for bad in ["Acme", "", "a b", "-x", &"x".repeat(64)] {
        let reply = host.post("/v1/tenants", Some(&platform), json!({ "name": bad })).await;
        assert_eq!((reply.status, reply.code()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"), "{bad}");
    }
    assert_eq!(host.accounts.list_tenants().await.expect("tenants").len(), 1);
}

async fn key_creation_validates_expiry_and_names(backend: Backend) {
    let host = TestHost::new(backend).await;
    let platform = host.platform_token().await;
    let admin = host.tenant_with_key(&platform, "acme", "admin").await;
    let past = (host.accounts.now() - chrono::Duration::days(1)).to_rfc3339();
    let future = (host.accounts.now() + chrono::Duration::days(1)).to_rfc3339();
    for body in [
        json!({ "role": "member", "expires_in": "soon" }),
        json!({ "role": "member", "expires_in": "0s" }),
        json!({ "role": "member", "expires_at": past }),
        json!({ "role": "member", "expires_at": future, "expires_in": "1d" }),
        json!({ "role": "member", "name": "x".repeat(101) }),
        json!({ "role": "member", "name": "line\nbreak" }),
    ] {
        let reply = host.post("/v1/keys", Some(&admin), body.clone()).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {reply:?}");
    }
    let ok = host.post("/v1/keys", Some(&admin), json!({ "role": "member", "expires_at": future })).await;
    assert_eq!(ok.status, StatusCode::CREATED);
    assert_eq!(host.accounts.list_keys(None).await.expect("keys").len(), 3);
}

async fn health_readiness_metrics_and_openapi_answer(backend: Backend) {
    let host = TestHost::new(backend).await;
    assert_eq!(host.get("/healthz", None).await.body, json!({ "status": "ok" }));
    let ready = host.get("/readyz", None).await;
    assert_eq!(ready.status, StatusCode::OK);
    let backend_name = if backend == Backend::Sqlite { "sqlite" } else { "postgres" };
    assert_eq!(
        ready.body,
        json!({ "status": "ready", "store": backend_name,
                "embedder": { "name": "fake/fake-a@384", "status": "ready" } })
    );

    // Metrics are per router; drive one router through a few requests.
    let router = host.router();
    for uri in ["/healthz", "/healthz", "/v1/keys", "/nope"] {
        let request = axum::http::Request::get(uri).body(axum::body::Body::empty()).expect("request");
        tower::ServiceExt::oneshot(router.clone(), request).await.expect("response");
    }
    let request = axum::http::Request::get("/metrics").body(axum::body::Body::empty()).expect("request");
    let response = tower::ServiceExt::oneshot(router, request).await.expect("response");
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
    let text = String::from_utf8(bytes.to_vec()).expect("utf-8");
    assert!(text.contains(r#"maestro_http_requests_total{method="GET",route="/healthz",status="200"} 2"#), "{text}");
    assert!(text.contains(r#"maestro_http_requests_total{method="GET",route="/v1/keys",status="401"} 1"#), "{text}");
    assert!(text.contains("maestro_tool_calls_in_flight 0"), "{text}");
    assert!(text.contains(r#"route="unmatched",status="404"} 1"#), "{text}");
    assert!(text.contains(r#"maestro_http_request_duration_seconds_count{route="/healthz"} 2"#), "{text}");

    let doc = host.get("/v1/openapi.json", None).await;
    assert_eq!(doc.status, StatusCode::OK);
    assert!(doc.body["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    for (path, method) in [
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/v1/tenants", "post"),
        ("/v1/tenants", "get"),
        ("/v1/keys", "post"),
        ("/v1/keys", "get"),
        ("/v1/keys/{id}", "delete"),
    ] {
        assert!(doc.body["paths"][path][method].is_object(), "{method} {path} missing from the OpenAPI document");
    }
    assert_eq!(doc.body["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    assert!(doc.body["components"]["schemas"]["ErrorBody"].is_object());
}

async fn unknown_routes_and_methods_use_the_error_shape(backend: Backend) {
    let host = TestHost::new(backend).await;
    let missing = host.get("/v2/everything", None).await;
    assert_eq!((missing.status, missing.code()), (StatusCode::NOT_FOUND, "not_found"));
    let wrong = host.send(Method::PUT, "/healthz", None, None).await;
    assert_eq!((wrong.status, wrong.code()), (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"));
}

#[tokio::test]
async fn cors_is_off_unless_an_allow_list_is_configured() {
    let preflight = |origin| [("origin", origin), ("access-control-request-method", "POST")];
    let off = TestHost::new(Backend::Sqlite).await;
    let reply = off.send_raw(Method::GET, "/healthz", None, None, &[("origin", "https://app.example.com")]).await;
    assert!(!reply.headers.contains_key("access-control-allow-origin"), "no CORS headers by default");

    let settings = HttpSettings {
        body_limit_bytes: 64 * 1024,
        cors_allow_origins: vec!["https://app.example.com".into()],
        mcp: Default::default(),
    };
    let on = TestHost::with_settings(Backend::Sqlite, settings).await;
    let reply = on.send_raw(Method::OPTIONS, "/v1/keys", None, None, &preflight("https://app.example.com")).await;
    assert_eq!(
        reply.headers.get("access-control-allow-origin").map(|v| v.to_str().expect("ascii")),
        Some("https://app.example.com")
    );
    let reply = on.send_raw(Method::OPTIONS, "/v1/keys", None, None, &preflight("https://evil.example")).await;
    assert!(!reply.headers.contains_key("access-control-allow-origin"), "{:?}", reply.headers);
}

async fn a_ledger_failure_in_a_tool_call_answers_a_generic_body(backend: Backend) {
    let policy =
        "version = 1\n[[grant]]\nname = \"paid\"\nsubjects = [\"tenant:acme\"]\ntools = [\"hostile.*\"]\ncredits = 7\n";
    let policy = maestro_core::policy::PolicySet::parse([("p.toml", policy)]).expect("policy");
    let (db, app, platform) = app_over(backend, &["hostile"], policy).await;
    assert_eq!(post_json(&app, "/v1/tenants", &platform, json!({ "name": "acme" })).await.0, StatusCode::CREATED);
    let (_, _, key) = post_json(&app, "/v1/keys", &platform, json!({ "tenant": "acme", "role": "member" })).await;
    let member = key["token"].as_str().expect("token").to_owned();

    break_store(&db, backend, &["ledger_holds", "ledger_balances", "ledger_entries", "ledger_transactions"]).await;
    let (logs, _guard) = capture_logs("info");
    let (status, headers, body) =
        post_json(&app, "/v1/tools/hostile.noop/call", &member, json!({ "arguments": {} })).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let id = request_id(&headers);
    assert_eq!(
        body,
        json!({ "error": { "code": "unavailable", "message": "the credit ledger is not available, try again later",
            "request_id": id } }),
        "the ledger's error text stays in the log"
    );
    // The pipeline logs the store's error once, in the request's span.
    let text = logs.text();
    let failures: Vec<&str> =
        text.lines().filter(|l| l.contains("cannot debit a call") || l.contains("request failed")).collect();
    assert_eq!(failures.len(), 1, "logged once: {text}");
    assert!(failures[0].contains(&id) && failures[0].contains("ledger"), "{}", failures[0]);
}
