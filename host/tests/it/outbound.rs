//! The one outbound HTTP client: secrets only where their rule says (scheme, host and
//! port, on every redirect hop), private targets only by an explicit rule, and denials
//! that stay bounded however often a caller (or a hostile plugin) repeats them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, StatusCode};
use maestro_core::Role;
use maestro_core::call::Failure;
use maestro_core::policy::{PolicySet, Subject};
use maestro_host::outbound::{
    HostPattern, LOGGED_DENIALS, MAX_DENIAL_RECORDS, NetPolicy, NetRule, OutboundClient, OutboundError, SecretHeader,
    SecretTarget,
};
use maestro_host::sandbox::{CallContext, CallLimits};
use serde_json::json;

use crate::fixtures::{TestServer, component, hostile, sandbox};

fn local_rule(port: u16, allow_private: bool) -> NetRule {
    NetRule {
        scheme: "http".into(),
        host: HostPattern::parse("127.0.0.1"),
        port: Some(port),
        allow_private,
        origin: "test.toml:1".into(),
    }
}

fn secret(name: &'static str, value: &'static str, target: &str) -> SecretHeader {
    SecretHeader {
        name: HeaderName::from_static(name),
        value: HeaderValue::from_static(value),
        targets: vec![SecretTarget::parse(target).expect("target")],
    }
}

fn get(url: &str) -> Request<Bytes> {
    Request::get(url).body(Bytes::new()).expect("request")
}

fn heads(server: &TestServer) -> Vec<String> {
    server.heads.lock().expect("heads").iter().map(|h| h.to_ascii_lowercase()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_bound_to_https_is_never_sent_over_http() {
    let server = TestServer::ok("ok").await;
    let port = server.addr.port();
    let policy = NetPolicy {
        secrets: vec![
            secret("authorization", "Bearer tls-only", &format!("https://127.0.0.1:{port}")),
            secret("x-plain", "meant-for-http", &format!("http://127.0.0.1:{port}")),
            secret("x-bare", "bare-means-https", "127.0.0.1"),
        ],
        ..NetPolicy::allowing(vec![local_rule(port, true)])
    };
    let client = OutboundClient::new("test", Arc::new(policy));
    let response = client.send(get(&format!("http://127.0.0.1:{port}/"))).await.expect("allowed");
    assert_eq!(response.status(), StatusCode::OK);
    let heads = heads(&server);
    let head = heads.first().expect("one request");
    assert!(!head.contains("tls-only"), "an https secret went over http: {head}");
    assert!(!head.contains("bare-means-https"), "a bare-host secret went over http: {head}");
    assert!(head.contains("x-plain: meant-for-http"), "the http secret is sent where its rule says: {head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_for_one_port_is_not_sent_after_a_redirect_to_another() {
    let b = TestServer::ok("b").await;
    let a = TestServer::redirect(format!("http://127.0.0.1:{}/landed", b.addr.port())).await;
    let policy = NetPolicy {
        secrets: vec![secret("x-token", "for-port-a-only", &format!("http://127.0.0.1:{}", a.addr.port()))],
        ..NetPolicy::allowing(vec![local_rule(a.addr.port(), true), local_rule(b.addr.port(), true)])
    };
    let client = OutboundClient::new("test", Arc::new(policy));
    let request = Request::get(format!("http://127.0.0.1:{}/start", a.addr.port()))
        .header("authorization", "Bearer callers-own")
        .body(Bytes::new())
        .expect("request");
    let response = client.send(request).await.expect("followed");
    assert_eq!(response.body().as_ref(), b"b");
    let at_a = heads(&a);
    let at_b = heads(&b);
    assert!(at_a[0].contains("x-token: for-port-a-only"), "{}", at_a[0]);
    assert!(at_a[0].contains("bearer callers-own"), "{}", at_a[0]);
    assert!(at_b[0].starts_with("get /landed"), "{}", at_b[0]);
    assert!(!at_b[0].contains("for-port-a-only"), "the secret followed the redirect: {}", at_b[0]);
    assert!(!at_b[0].contains("callers-own"), "the caller's credentials followed the redirect: {}", at_b[0]);
    assert_eq!(client.log().requests, 2, "both hops count");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_address_needs_a_rule_that_allows_it() {
    // A model server on loopback, like a local Ollama.
    let model = TestServer::ok("{\"models\":[]}").await;
    let url = format!("http://127.0.0.1:{}/api/tags", model.addr.port());

    let public_only =
        OutboundClient::new("model", Arc::new(NetPolicy::allowing(vec![local_rule(model.addr.port(), false)])));
    match public_only.send(get(&url)).await {
        Err(OutboundError::Denied { reason, .. }) => {
            assert!(reason.contains("does not allow private targets"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(model.accepted(), 0, "no connection without the explicit allow");

    let rule = NetRule::parse(&format!("http://127.0.0.1:{}", model.addr.port()), true, "config: models.local")
        .expect("an explicit private rule");
    let explicit = OutboundClient::new("model", Arc::new(NetPolicy::allowing(vec![rule])));
    let response = explicit.send(get(&url)).await.expect("allowed explicitly");
    assert_eq!(response.body().as_ref(), b"{\"models\":[]}");

    let other_port = explicit.send(get(&format!("http://127.0.0.1:{}/", model.addr.port() ^ 1))).await;
    assert!(matches!(other_port, Err(OutboundError::Denied { .. })), "{other_port:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_past_the_cap_fail() {
    let big = TestServer::start(|_| {
        format!(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n1000\r\n{}\r\n0\r\n\r\n",
            "x".repeat(4096)
        )
    })
    .await;
    let policy = NetPolicy { max_response_bytes: 1024, ..NetPolicy::allowing(vec![local_rule(big.addr.port(), true)]) };
    let client = OutboundClient::new("test", Arc::new(policy));
    let err = client.send(get(&format!("http://127.0.0.1:{}/", big.addr.port()))).await.expect_err("too large");
    assert!(matches!(err, OutboundError::ResponseTooLarge { limit: 1024, .. }), "{err:?}");
}

/// Log lines written while a closure runs on this thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("buffer").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_denial_flood_keeps_the_log_and_the_record_bounded() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .without_time()
        .finish();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (no_grant, limited) = tracing::subscriber::with_default(subscriber, || {
        runtime.block_on(async {
            // No network grant at all.
            let no_grant = OutboundClient::new("plugin", Arc::new(NetPolicy::deny_all()));
            for _ in 0..10_000 {
                let err = no_grant.send(get("http://169.254.169.254/latest/meta-data/")).await.expect_err("denied");
                assert!(matches!(err, OutboundError::Denied { .. }));
            }
            // A grant whose request cap is spent.
            let limited = OutboundClient::new(
                "plugin",
                Arc::new(NetPolicy { max_requests: 0, ..NetPolicy::allowing(vec![local_rule(9, true)]) }),
            );
            for _ in 0..10_000 {
                limited.send(get("http://127.0.0.1:9/")).await.expect_err("over the cap");
            }
            (no_grant.log(), limited.log())
        })
    });
    for log in [&no_grant, &limited] {
        assert_eq!(log.denials, 10_000, "every attempt is counted");
        assert_eq!(log.denied.len(), MAX_DENIAL_RECORDS, "but only a bounded number is kept");
    }
    assert!(no_grant.denied[0].reason.contains("no network access is granted"), "{:?}", no_grant.denied[0]);
    assert!(limited.denied[0].reason.contains("request limit of 0 reached"), "{:?}", limited.denied[0]);
    let text = String::from_utf8(captured.0.lock().expect("buffer").clone()).expect("utf-8");
    let denied_lines = text.lines().filter(|l| l.contains("outbound request denied")).count();
    let summaries = text.lines().filter(|l| l.contains("counted, not logged")).count();
    assert_eq!(denied_lines as u64, 2 * LOGGED_DENIALS, "first few per client only:\n{text}");
    assert_eq!(summaries, 2, "{text}");
    assert!(text.lines().count() <= 2 * (LOGGED_DENIALS as usize + 1), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_attempting_100k_denied_requests_ends_with_network_denied_and_bounded_records() {
    let bytes = std::fs::read(component("hostile_net")).expect("component");
    let plugin = sandbox().load("hostile-net", bytes, CallLimits::default()).await.expect("loads");
    let context = CallContext {
        limits: CallLimits { fuel: u64::MAX / 2, timeout: Duration::from_secs(300), ..CallLimits::default() },
        ..CallContext::default()
    };
    let arguments = json!({ "url": "http://169.254.169.254/latest/meta-data/", "n": 100_000 }).to_string();
    let outcome = sandbox().call_tool(&plugin, "flood", arguments, &context).await;
    match &outcome.result {
        Err(failure @ Failure::NetworkDenied { url, reason }) => {
            assert_eq!(failure.kind(), "network_denied");
            assert!(url.starts_with("http://169.254.169.254/"), "{url}");
            assert!(reason.contains("no network access is granted"), "{reason}");
        }
        other => panic!("expected network_denied, got {other:?}"),
    }
    assert_eq!(outcome.network.denials, 100_000, "every attempt was refused and counted");
    assert!(outcome.network.denied.len() <= MAX_DENIAL_RECORDS, "{}", outcome.network.denied.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_secret_for_https_never_leaves_a_plugin_call_over_http() {
    let server = TestServer::ok("ok").await;
    let port = server.addr.port();
    let policies = format!(
        r#"version = 1
[secrets.api]
source = "env:API_TOKEN"
headers = {{ Authorization = "Bearer {{secret}}" }}
hosts = ["https://127.0.0.1:{port}"]
[[grant]]
name = "fetch"
subjects = ["*"]
tools = ["hostile.fetch"]
network = [{{ url = "https://127.0.0.1:{port}", allow_private = true }}, {{ url = "http://127.0.0.1:{port}", allow_private = true }}]
secrets = ["api"]
"#
    );
    let set = PolicySet::parse([("p.toml", policies.as_str())]).unwrap_or_else(|e| panic!("{e}"));
    let subject = Subject { tenant: "acme", role: Role::Member, key_id: "k" };
    let decision = set.decide(&subject, "hostile.fetch");
    let grant = decision.grant().expect("allowed");
    let network = NetPolicy::from_grant(grant, |_| Some("s3cr3t".to_owned())).expect("secret available");
    let context = CallContext { network: Arc::new(network), ..CallContext::default() };
    let arguments = json!({ "url": format!("http://127.0.0.1:{port}/") }).to_string();
    let outcome = sandbox().call_tool(&hostile().await, "fetch", arguments, &context).await;
    assert!(outcome.result.is_ok(), "{:?}", outcome.result);
    let heads = heads(&server);
    assert_eq!(heads.len(), 1);
    assert!(!heads[0].contains("s3cr3t"), "the https-only secret went over http: {}", heads[0]);
}
