//! The HTTP API in process (`oneshot`), on both backends.

use axum::http::{Method, StatusCode};
use maestro_host::http::HttpSettings;
use serde_json::json;

use crate::harness::{Backend, TestHost, backend_tests};

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
    let almost = format!("{}x", &platform[..platform.len() - 1]);
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
    assert_eq!(ready.body, json!({ "status": "ready", "store": backend_name }));

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
