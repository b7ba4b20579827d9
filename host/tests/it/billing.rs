//! Stripe top-ups against a fake Stripe on 127.0.0.1 that speaks Stripe's wire format
//! (form-encoded requests, Stripe-shaped JSON answers), with webhooks signed the way
//! Stripe signs them. On both backends.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use maestro_core::billing::{CheckoutRecord, signature_header};
use maestro_core::{Store, TenantId};
use maestro_host::billing::Billing;
use maestro_host::config::{BillingSettings, CreditPack};
use maestro_host::credits::Credits;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::harness::{Backend, TestHost, backend_tests};

backend_tests!(
    checkout_creates_the_customer_once_and_returns_the_session_url,
    checkout_is_for_tenant_admins_and_configured_packs,
    one_event_delivered_ten_times_concurrently_grants_once,
    completion_and_refund_events_in_any_order_converge,
    bad_signatures_stale_or_future_timestamps_and_modified_bodies_are_rejected,
    events_are_matched_to_tenants_by_stored_sessions_not_metadata,
);

const WEBHOOK_SECRET: &str = "whsec_test_0123456789";
const WEBHOOK: &str = "/v1/billing/stripe/webhook";

/// One request the fake Stripe received.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    authorization: String,
    idempotency_key: Option<String>,
    /// The form body, decoded into `(key, value)` pairs in order.
    form: Vec<(String, String)>,
}

impl Seen {
    fn get(&self, key: &str) -> Option<&str> {
        self.form.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// A fake Stripe API: `POST /v1/customers` and `POST /v1/checkout/sessions`.
#[derive(Debug, Clone)]
struct FakeStripe {
    base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeStripe {
    async fn start() -> Self {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}/", listener.local_addr().expect("addr"));
        let app = axum::Router::new().fallback({
            let seen = seen.clone();
            move |request: Request<Body>| {
                let seen = seen.clone();
                async move { answer(request, &seen).await }
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await.expect("fake stripe serves") });
        Self { base, seen }
    }

    fn seen(&self, path: &str) -> Vec<Seen> {
        self.seen.lock().expect("lock").iter().filter(|s| s.path == path).cloned().collect()
    }
}

async fn answer(request: Request<Body>, seen: &Mutex<Vec<Seen>>) -> (StatusCode, axum::Json<Value>) {
    let (parts, body) = request.into_parts();
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = axum::body::to_bytes(body, usize::MAX).await.expect("body");
    assert_eq!(
        header("content-type").as_deref(),
        Some("application/x-www-form-urlencoded"),
        "stripe requests are form-encoded"
    );
    let form = decode_form(std::str::from_utf8(&body).expect("utf-8 form"));
    let request = Seen {
        path: parts.uri.path().to_owned(),
        authorization: header("authorization").unwrap_or_default(),
        idempotency_key: header("idempotency-key"),
        form,
    };
    let count = {
        let mut seen = seen.lock().expect("lock");
        seen.push(request.clone());
        seen.len()
    };
    let now = chrono::Utc::now().timestamp();
    if request.authorization != "Bearer sk_test_fake" {
        let error = json!({ "error": { "type": "invalid_request_error", "message": "Invalid API Key provided" } });
        return (StatusCode::UNAUTHORIZED, axum::Json(error));
    }
    match (parts.method, request.path.as_str()) {
        (Method::POST, "/v1/customers") => {
            let customer = json!({
                "id": format!("cus_fake{count}"), "object": "customer", "created": now, "livemode": false,
                "email": null, "metadata": {}, "balance": 0, "delinquent": false, "description": request.get("description"),
            });
            (StatusCode::OK, axum::Json(customer))
        }
        (Method::POST, "/v1/checkout/sessions") => {
            let id = format!("cs_test_fake{count}");
            let session = json!({
                "id": id, "object": "checkout.session", "created": now, "expires_at": now + 86_400,
                "livemode": false, "mode": "payment", "status": "open", "payment_status": "unpaid",
                "customer": request.get("customer"), "client_reference_id": request.get("client_reference_id"),
                "currency": request.get("line_items[0][price_data][currency]"),
                "amount_total": request.get("line_items[0][price_data][unit_amount]").and_then(|v| v.parse::<i64>().ok()),
                "success_url": request.get("success_url"), "cancel_url": request.get("cancel_url"),
                "url": format!("https://checkout.stripe.com/c/pay/{id}"),
                "automatic_tax": { "enabled": false, "liability": null, "provider": null, "status": null },
                "custom_fields": [],
                "custom_text": { "after_submit": null, "shipping_address": null, "submit": null, "terms_of_service_acceptance": null },
                "payment_method_types": ["card"], "shipping_options": [], "metadata": {},
            });
            (StatusCode::OK, axum::Json(session))
        }
        _ => (StatusCode::NOT_FOUND, axum::Json(json!({ "error": { "type": "invalid_request_error" } }))),
    }
}

fn decode_form(text: &str) -> Vec<(String, String)> {
    fn decode(part: &str) -> String {
        let bytes = part.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    out.push(u8::from_str_radix(&part[i + 1..i + 3], 16).expect("hex escape"));
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).expect("utf-8")
    }
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn settings(api_base: &str) -> BillingSettings {
    let pack = |id: &str, credits, unit_amount| CreditPack {
        id: id.into(),
        name: format!("{credits} credits"),
        credits,
        unit_amount,
        currency: "usd".into(),
    };
    BillingSettings {
        secret_key: "sk_test_fake".into(),
        webhook_secret: WEBHOOK_SECRET.into(),
        api_base: api_base.into(),
        success_url: "https://app.example/billing/ok?session={CHECKOUT_SESSION_ID}".into(),
        cancel_url: "https://app.example/billing".into(),
        packs: vec![pack("starter", 1000, 500), pack("pro", 2000, 1000), pack("mini", 300, 300)],
    }
}

/// A test host with billing pointed at a fresh fake Stripe.
async fn billing_host(backend: Backend) -> (TestHost, FakeStripe) {
    let stripe = FakeStripe::start().await;
    let mut host = TestHost::new(backend).await;
    let billing = Billing::new(host.store.clone(), host.store.clone(), host.clock.clone(), settings(&stripe.base))
        .expect("billing configures");
    host.billing = Some(Arc::new(billing));
    (host, stripe)
}

fn store(host: &TestHost) -> Arc<dyn Store> {
    host.store.clone()
}

async fn available(host: &TestHost, tenant: &TenantId) -> i64 {
    Credits::new(store(host), host.clock.clone()).balance(tenant).await.expect("balance").available
}

async fn tenant_id(host: &TestHost, name: &str) -> TenantId {
    let name = maestro_core::TenantName::parse(name).expect("name");
    store(host).tenant_by_name(&name).await.expect("store").expect("tenant").id
}

fn event(id: &str, kind: &str, object: Value) -> Vec<u8> {
    json!({
        "id": id, "object": "event", "api_version": "2025-09-30.clover", "created": 1_700_000_000,
        "livemode": false, "pending_webhooks": 1, "request": { "id": null, "idempotency_key": null },
        "type": kind, "data": { "object": object },
    })
    .to_string()
    .into_bytes()
}

fn completed(id: &str, session: &str, customer: &str, payment_intent: &str, status: &str) -> Vec<u8> {
    let kind =
        if status == "async" { "checkout.session.async_payment_succeeded" } else { "checkout.session.completed" };
    let payment_status = if status == "async" { "paid" } else { status };
    event(
        id,
        kind,
        json!({
            "id": session, "object": "checkout.session", "customer": customer, "payment_intent": payment_intent,
            "payment_status": payment_status, "status": "complete", "mode": "payment", "metadata": {},
        }),
    )
}

fn refunded(id: &str, charge: &str, payment_intent: &str, customer: &str, amount: i64, refunded: i64) -> Vec<u8> {
    event(
        id,
        "charge.refunded",
        json!({
            "id": charge, "object": "charge", "amount": amount, "amount_refunded": refunded, "refunded": refunded == amount,
            "payment_intent": payment_intent, "customer": customer, "currency": "usd", "metadata": {},
        }),
    )
}

/// A webhook request signed at `at` (unix seconds) with `secret`.
fn webhook_request(payload: Vec<u8>, signature: Option<String>) -> Request<Body> {
    let mut request = Request::builder().method(Method::POST).uri(WEBHOOK).header("content-type", "application/json");
    if let Some(signature) = signature {
        request = request.header("stripe-signature", signature);
    }
    request.body(Body::from(payload)).expect("request")
}

async fn deliver_signed(host: &TestHost, payload: Vec<u8>) -> (StatusCode, Value) {
    let signature = signature_header(WEBHOOK_SECRET, host.clock_now(), &payload);
    send(host.router(), webhook_request(payload, Some(signature))).await
}

async fn send(router: axum::Router, request: Request<Body>) -> (StatusCode, Value) {
    let response = router.oneshot(request).await.expect("infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

trait ClockNow {
    fn clock_now(&self) -> i64;
}

impl ClockNow for TestHost {
    fn clock_now(&self) -> i64 {
        maestro_core::Clock::now(&*self.clock).timestamp()
    }
}

/// A session as `POST /v1/billing/checkout` records it, without going through Stripe.
async fn seed_session(host: &TestHost, tenant: &TenantId, id: &str, credits: i64, amount: i64) {
    store(host)
        .insert_checkout(&CheckoutRecord {
            id: id.into(),
            tenant_id: tenant.clone(),
            pack: "seeded".into(),
            credits,
            amount,
            currency: "usd".into(),
            paid: false,
            payment_intent: None,
            reversed_credits: 0,
            reversed_from: 0,
            created_at: maestro_core::Clock::now(&*host.clock),
        })
        .await
        .expect("seed session");
}

async fn checkout_creates_the_customer_once_and_returns_the_session_url(backend: Backend) {
    let (host, stripe) = billing_host(backend).await;
    let platform = host.platform_token().await;
    let admin = host.tenant_with_key(&platform, "acme", "admin").await;
    let tenant = tenant_id(&host, "acme").await;

    let first = host.post("/v1/billing/checkout", Some(&admin), json!({ "pack": "starter" })).await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    let session_id = first.body["id"].as_str().expect("id").to_owned();
    assert!(first.body["url"].as_str().expect("url").ends_with(&session_id));
    assert_eq!(first.body["credits"], 1000);
    let second = host.post("/v1/billing/checkout", Some(&admin), json!({ "pack": "pro" })).await;
    assert_eq!(second.status, StatusCode::CREATED, "{second:?}");

    let customers = stripe.seen("/v1/customers");
    assert_eq!(customers.len(), 1, "the customer is created once and reused");
    assert_eq!(customers[0].idempotency_key.as_deref(), Some(format!("maestro-customer-{tenant}").as_str()));
    let customer = store(&host).stripe_customer(&tenant).await.expect("store").expect("mapped");
    let sessions = stripe.seen("/v1/checkout/sessions");
    assert_eq!(sessions.len(), 2);
    let form = &sessions[0];
    assert_eq!(form.get("mode"), Some("payment"));
    assert_eq!(form.get("customer"), Some(customer.as_str()));
    assert_eq!(form.get("line_items[0][price_data][unit_amount]"), Some("500"));
    assert_eq!(form.get("line_items[0][price_data][currency]"), Some("usd"));
    assert_eq!(form.get("line_items[0][quantity]"), Some("1"));
    assert_eq!(form.get("success_url"), Some("https://app.example/billing/ok?session={CHECKOUT_SESSION_ID}"));
    let stored = store(&host).checkout(&session_id).await.expect("store").expect("recorded");
    assert_eq!((stored.tenant_id, stored.credits, stored.amount, stored.paid), (tenant, 1000, 500, false));
}

async fn checkout_is_for_tenant_admins_and_configured_packs(backend: Backend) {
    let (host, stripe) = billing_host(backend).await;
    let platform = host.platform_token().await;
    let member = host.tenant_with_key(&platform, "acme", "member").await;
    let admin = host.tenant_with_key(&platform, "acme", "admin").await;
    let reply = host.post("/v1/billing/checkout", Some(&member), json!({ "pack": "starter" })).await;
    assert_eq!((reply.status, reply.code()), (StatusCode::FORBIDDEN, "forbidden"));
    let reply = host.post("/v1/billing/checkout", Some(&platform), json!({ "pack": "starter" })).await;
    assert_eq!((reply.status, reply.code()), (StatusCode::FORBIDDEN, "forbidden"));
    let reply = host.post("/v1/billing/checkout", Some(&admin), json!({ "pack": "gold" })).await;
    assert_eq!((reply.status, reply.code()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"));
    let reply = host.post("/v1/billing/checkout", None, json!({ "pack": "starter" })).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(stripe.seen.lock().expect("lock").is_empty(), "nothing reached stripe");

    let mut off = host;
    off.billing = None;
    let reply = off.post("/v1/billing/checkout", Some(&admin), json!({ "pack": "starter" })).await;
    assert_eq!((reply.status, reply.code()), (StatusCode::SERVICE_UNAVAILABLE, "billing_not_configured"));
    let (status, body) = deliver_signed(&off, completed("evt_x", "cs_x", "cus_x", "pi_x", "paid")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
}

async fn one_event_delivered_ten_times_concurrently_grants_once(backend: Backend) {
    let (host, _stripe) = billing_host(backend).await;
    let platform = host.platform_token().await;
    let admin = host.tenant_with_key(&platform, "acme", "admin").await;
    let tenant = tenant_id(&host, "acme").await;
    let started = host.post("/v1/billing/checkout", Some(&admin), json!({ "pack": "starter" })).await;
    let session = started.body["id"].as_str().expect("id").to_owned();
    let customer = store(&host).stripe_customer(&tenant).await.expect("store").expect("customer");

    let payload = completed("evt_once", &session, &customer, "pi_once", "paid");
    let signature = signature_header(WEBHOOK_SECRET, host.clock_now(), &payload);
    let router = host.router();
    let mut deliveries = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let request = webhook_request(payload.clone(), Some(signature.clone()));
        deliveries.spawn(send(router.clone(), request));
    }
    while let Some(done) = deliveries.join_next().await {
        let (status, body) = done.expect("delivery task");
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["received"], true);
    }
    assert_eq!(available(&host, &tenant).await, 1000, "granted exactly once");
    let recorded = store(&host).processed_event("evt_once").await.expect("store").expect("recorded");
    assert_eq!(recorded.kind, "checkout.session.completed");
    // Whichever delivery recorded it first: the one that posted, or one that replayed.
    assert!(["granted", "no_change"].contains(&recorded.outcome.as_str()), "{recorded:?}");

    let (status, body) = deliver_signed(&host, payload).await;
    assert_eq!((status, body["duplicate"].clone()), (StatusCode::OK, json!(true)));
    assert_eq!(available(&host, &tenant).await, 1000);
}

/// A tiny deterministic generator, so a failing ordering can be replayed.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) as usize) % n
    }
}

async fn completion_and_refund_events_in_any_order_converge(backend: Backend) {
    let (host, _stripe) = billing_host(backend).await;
    let billing_store = store(&host);
    for round in 0..100u64 {
        let tenant = host.accounts.create_tenant(&format!("t{round}")).await.expect("tenant").id;
        let customer = format!("cus_r{round}");
        billing_store.insert_stripe_customer(&tenant, &customer, chrono::Utc::now()).await.expect("customer");
        let (a, b, c) = (format!("cs_a{round}"), format!("cs_b{round}"), format!("cs_c{round}"));
        seed_session(&host, &tenant, &a, 1000, 500).await;
        seed_session(&host, &tenant, &b, 2000, 1000).await;
        seed_session(&host, &tenant, &c, 300, 300).await;
        let (pa, pb, pc) = (format!("pi_a{round}"), format!("pi_b{round}"), format!("pi_c{round}"));
        let e = |name: &str| format!("evt_{name}{round}");
        let mut events = vec![
            // A: paid, then fully refunded -> 0.
            completed(&e("a_done"), &a, &customer, &pa, "paid"),
            refunded(&e("a_refund"), &format!("ch_a{round}"), &pa, &customer, 500, 500),
            // B: paid, refunded 250 then 500 of 1000 (cumulative) -> 2000 - 1000.
            completed(&e("b_done"), &b, &customer, &pb, "paid"),
            refunded(&e("b_refund1"), &format!("ch_b{round}"), &pb, &customer, 1000, 250),
            refunded(&e("b_refund2"), &format!("ch_b{round}"), &pb, &customer, 1000, 500),
            // C: completed awaiting an asynchronous payment, which then succeeds -> 300.
            completed(&e("c_done"), &c, &customer, &pc, "unpaid"),
            completed(&e("c_paid"), &c, &customer, &pc, "async"),
        ];
        let mut rng = Lcg(round.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xdead_beef);
        for i in (1..events.len()).rev() {
            events.swap(i, rng.below(i + 1));
        }
        // And one redelivery of a random event, somewhere later.
        let again = events[rng.below(events.len())].clone();
        events.push(again);
        for payload in events {
            let (status, body) = deliver_signed(&host, payload).await;
            assert_eq!(status, StatusCode::OK, "round {round}: {body}");
        }
        assert_eq!(available(&host, &tenant).await, 1300, "round {round}");
    }
}

async fn bad_signatures_stale_or_future_timestamps_and_modified_bodies_are_rejected(backend: Backend) {
    let (host, _stripe) = billing_host(backend).await;
    let platform = host.platform_token().await;
    let admin = host.tenant_with_key(&platform, "acme", "admin").await;
    let tenant = tenant_id(&host, "acme").await;
    let started = host.post("/v1/billing/checkout", Some(&admin), json!({ "pack": "starter" })).await;
    let session = started.body["id"].as_str().expect("id").to_owned();
    let customer = store(&host).stripe_customer(&tenant).await.expect("store").expect("customer");
    let payload = completed("evt_forged", &session, &customer, "pi_forged", "paid");
    let now = host.clock_now();

    let mut modified = payload.clone();
    let at = modified.len() - 3;
    modified[at] = b' ';
    let cases: Vec<(&str, Vec<u8>, Option<String>)> = vec![
        ("wrong secret", payload.clone(), Some(signature_header("whsec_other", now, &payload))),
        ("stale timestamp", payload.clone(), Some(signature_header(WEBHOOK_SECRET, now - 301, &payload))),
        ("future timestamp", payload.clone(), Some(signature_header(WEBHOOK_SECRET, now + 301, &payload))),
        ("modified body", modified.clone(), Some(signature_header(WEBHOOK_SECRET, now, &payload))),
        ("no v1", payload.clone(), Some(format!("t={now}"))),
        ("garbage header", payload.clone(), Some("nonsense".into())),
        ("missing header", payload.clone(), None),
    ];
    for (name, body, signature) in cases {
        let (status, reply) = send(host.router(), webhook_request(body, signature)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {reply}");
        assert_eq!(reply["error"]["code"], "signature_invalid", "{name}");
    }
    assert_eq!(store(&host).processed_event("evt_forged").await.expect("store"), None, "nothing recorded");
    assert_eq!(available(&host, &tenant).await, 0, "nothing granted");
    let stored = store(&host).checkout(&session).await.expect("store").expect("session");
    assert!(!stored.paid && stored.payment_intent.is_none(), "session untouched: {stored:?}");

    // Within the tolerance (both ways), the same event is accepted.
    let (status, body) = send(
        host.router(),
        webhook_request(payload.clone(), Some(signature_header(WEBHOOK_SECRET, now - 299, &payload))),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(available(&host, &tenant).await, 1000);
}

async fn events_are_matched_to_tenants_by_stored_sessions_not_metadata(backend: Backend) {
    let (host, _stripe) = billing_host(backend).await;
    let acme = host.accounts.create_tenant("acme").await.expect("tenant").id;
    let evil = host.accounts.create_tenant("evil").await.expect("tenant").id;
    store(&host).insert_stripe_customer(&acme, "cus_acme", chrono::Utc::now()).await.expect("customer");
    store(&host).insert_stripe_customer(&evil, "cus_evil", chrono::Utc::now()).await.expect("customer");
    seed_session(&host, &acme, "cs_acme", 1000, 500).await;

    // A session Maestro never created credits nobody, whatever its metadata says.
    let mut unknown = completed("evt_unknown", "cs_unknown", "cus_evil", "pi_u", "paid");
    let mut value: Value = serde_json::from_slice(&unknown).expect("json");
    value["data"]["object"]["metadata"] = json!({ "maestro_tenant": evil.to_string() });
    unknown = value.to_string().into_bytes();
    let (status, body) = deliver_signed(&host, unknown).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A known session completed under another tenant's customer is refused.
    let (status, body) = deliver_signed(&host, completed("evt_mix", "cs_acme", "cus_evil", "pi_m", "paid")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(available(&host, &acme).await, 0);
    assert_eq!(available(&host, &evil).await, 0);
    let outcome = |id: &'static str| {
        let store = store(&host);
        async move { store.processed_event(id).await.expect("store").expect("recorded").outcome }
    };
    assert_eq!(outcome("evt_unknown").await, "unknown_session");
    assert_eq!(outcome("evt_mix").await, "customer_mismatch");

    let (status, _) = deliver_signed(&host, completed("evt_ok", "cs_acme", "cus_acme", "pi_ok", "paid")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(available(&host, &acme).await, 1000);
    assert_eq!(available(&host, &evil).await, 0);
}
