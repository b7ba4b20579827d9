//! The Stripe API calls billing makes: create a customer, create a Checkout Session.
//! Two form-encoded POSTs through the one outbound client ([`crate::outbound`]), allowed
//! to reach only the configured API origin, instead of a generated SDK whose shared types
//! alone took minutes of every cold build. The base URL is configurable so tests talk to a
//! fake Stripe on 127.0.0.1.
//!
//! Wire format, as Stripe documents it: `application/x-www-form-urlencoded` bodies with
//! bracketed keys for nested values (`metadata[k]=v`, `line_items[0][price_data][currency]=usd`),
//! `Authorization: Bearer sk_…`, a pinned `Stripe-Version`, an `Idempotency-Key` on every
//! POST (so a retried request never creates a second object), and JSON answers; an error
//! answer is `{"error": {"type", "code", "message", …}}`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use maestro_core::TenantId;

use crate::config::CreditPack;
use crate::outbound::{NetPolicy, NetRule, OutboundClient};

/// The API version the requests and the fields we read are written against.
const STRIPE_VERSION: &str = "2026-09-30.endive";
/// How long one Stripe request may take, connection included.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer we read (a customer or a session is a few KiB).
const MAX_RESPONSE_BYTES: u64 = 1 << 20;

/// A Stripe call failed (network, an error answer, or an answer missing what we need).
/// The message never carries the secret key.
#[derive(Debug, thiserror::Error)]
#[error("stripe request failed: {what}{}", detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
pub struct StripeApiError {
    what: &'static str,
    /// Stripe's error type, code and message, or the transport's error.
    detail: Option<String>,
}

impl StripeApiError {
    fn new(what: &'static str, detail: impl Into<Option<String>>) -> Self {
        Self { what, detail: detail.into() }
    }
}

/// A created Checkout Session.
#[derive(Debug, Clone)]
pub(crate) struct CreatedSession {
    /// `cs_…`.
    pub(crate) id: String,
    /// The hosted payment page.
    pub(crate) url: String,
}

/// The Stripe client. `Debug` never shows the key.
pub(crate) struct StripeApi {
    authorization: HeaderValue,
    base: String,
    client: OutboundClient,
}

impl std::fmt::Debug for StripeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeApi").field("base", &self.base).finish_non_exhaustive()
    }
}

impl StripeApi {
    /// A client for `api_base` (ending in `/`) authenticating with `secret_key`.
    pub(crate) fn new(secret_key: &str, api_base: &str) -> Result<Self, StripeApiError> {
        let mut authorization = HeaderValue::from_str(&format!("Bearer {secret_key}")).map_err(|_| {
            StripeApiError::new("invalid client configuration", "the secret key is not a header value".to_owned())
        })?;
        authorization.set_sensitive(true);
        let invalid = |detail: String| StripeApiError::new("invalid client configuration", detail);
        let uri = api_base.parse::<Uri>().map_err(|e| invalid(format!("api base: {e}")))?;
        let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
            return Err(invalid("the api base is not an absolute URL".to_owned()));
        };
        let port = uri.port_u16().unwrap_or(if scheme == "https" { 443 } else { 80 });
        // The only origin the client may reach. A loopback or private address (a local
        // fake or proxy) is allowed only when the configuration names it literally.
        let literal = host == "localhost"
            || host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().is_ok();
        let rule =
            NetRule::parse(&format!("{scheme}://{host}:{port}"), literal, "billing.api_base").map_err(invalid)?;
        let policy = NetPolicy {
            max_response_bytes: MAX_RESPONSE_BYTES,
            request_timeout: TIMEOUT,
            ..NetPolicy::allowing(vec![rule])
        };
        Ok(Self { authorization, base: api_base.to_owned(), client: OutboundClient::new("stripe", Arc::new(policy)) })
    }

    /// Creates the Stripe customer for `tenant`. The idempotency key is derived from the
    /// tenant, so two concurrent first checkouts get the same customer back from Stripe.
    pub(crate) async fn create_customer(&self, tenant: &TenantId) -> Result<String, StripeApiError> {
        let form = Form::default()
            .field("description", &format!("maestro tenant {tenant}"))
            .field("metadata[maestro_tenant]", &tenant.to_string());
        let answer = self.post("v1/customers", form, &format!("maestro-customer-{tenant}"), "create customer").await?;
        string_field(&answer, "id")
            .ok_or_else(|| StripeApiError::new("create customer", "the answer has no id".to_owned()))
    }

    /// Creates a one-off payment Checkout Session selling `pack` to `customer`.
    /// `client_reference_id` and metadata name the tenant for people reading the Stripe
    /// dashboard; webhooks never trust them.
    pub(crate) async fn create_checkout(
        &self,
        customer: &str,
        tenant: &TenantId,
        pack: &CreditPack,
        success_url: &str,
        cancel_url: &str,
    ) -> Result<CreatedSession, StripeApiError> {
        let form = Form::default()
            .field("mode", "payment")
            .field("customer", customer)
            .field("client_reference_id", &tenant.to_string())
            .field("line_items[0][price_data][currency]", &pack.currency.to_ascii_lowercase())
            .field("line_items[0][price_data][unit_amount]", &pack.unit_amount.to_string())
            .field("line_items[0][price_data][product_data][name]", &pack.name)
            .field("line_items[0][quantity]", "1")
            .field("metadata[maestro_tenant]", &tenant.to_string())
            .field("metadata[maestro_pack]", &pack.id)
            .field("success_url", success_url)
            .field("cancel_url", cancel_url);
        // A fresh key per attempt: each checkout the user starts is a new session, but a
        // transport-level retry of this one request must not create a second.
        let key = format!("maestro-checkout-{}", hex::encode(crate::random::random_bytes::<16>()));
        let answer = self.post("v1/checkout/sessions", form, &key, "create checkout session").await?;
        let id = string_field(&answer, "id")
            .ok_or_else(|| StripeApiError::new("create checkout session", "the answer has no id".to_owned()))?;
        let url =
            string_field(&answer, "url").ok_or_else(|| StripeApiError::new("checkout session has no url", None))?;
        Ok(CreatedSession { id, url })
    }

    /// POSTs `form` to `path` under `idempotency_key` and returns Stripe's JSON answer.
    async fn post(
        &self,
        path: &str,
        form: Form,
        idempotency_key: &str,
        what: &'static str,
    ) -> Result<serde_json::Value, StripeApiError> {
        let uri: Uri = format!("{}{path}", self.base)
            .parse()
            .map_err(|e| StripeApiError::new(what, format!("invalid url: {e}")))?;
        let request = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(http::header::AUTHORIZATION, self.authorization.clone())
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, concat!("maestro/", env!("CARGO_PKG_VERSION")))
            .header("stripe-version", STRIPE_VERSION)
            .header("idempotency-key", idempotency_key)
            .body(Bytes::from(form.finish()))
            .map_err(|e| StripeApiError::new(what, format!("invalid request: {e}")))?;
        let response = self
            .client
            .send(request)
            .await
            .map_err(|e| StripeApiError::new(what, crate::telemetry::error_chain(&e)))?;
        let (status, body) = (response.status(), response.into_body());
        let answer: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| StripeApiError::new(what, format!("the answer (HTTP {status}) is not JSON: {e}")))?;
        if status.is_success() {
            return Ok(answer);
        }
        Err(StripeApiError::new(what, error_detail(status, &answer)))
    }
}

/// `HTTP 402 card_error/card_declined: Your card was declined.` from Stripe's error object.
fn error_detail(status: StatusCode, answer: &serde_json::Value) -> String {
    let error = &answer["error"];
    let kind = error["type"].as_str().unwrap_or("unknown_error");
    let code = error["code"].as_str().map(|c| format!("/{c}")).unwrap_or_default();
    let message: String = error["message"].as_str().unwrap_or("no message").chars().take(500).collect();
    format!("HTTP {} {kind}{code}: {message}", status.as_u16())
}

fn string_field(answer: &serde_json::Value, name: &str) -> Option<String> {
    answer.get(name).and_then(serde_json::Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned)
}

/// A form-encoded body, fields in the order added.
#[derive(Debug, Default)]
struct Form(Vec<(String, String)>);

impl Form {
    fn field(mut self, key: &str, value: &str) -> Self {
        self.0.push((key.to_owned(), value.to_owned()));
        self
    }

    fn finish(self) -> String {
        form_urlencoded::Serializer::new(String::new()).extend_pairs(self.0).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_encode_bracketed_keys_and_reserved_characters() {
        let body = Form::default()
            .field("metadata[maestro_tenant]", "tn_1")
            .field("success_url", "https://app.example/ok?session={CHECKOUT_SESSION_ID}&x=1")
            .finish();
        assert_eq!(
            body,
            "metadata%5Bmaestro_tenant%5D=tn_1&success_url=https%3A%2F%2Fapp.example%2Fok%3Fsession%3D%7BCHECKOUT_SESSION_ID%7D%26x%3D1"
        );
    }

    #[test]
    fn error_answers_name_the_type_code_and_message() {
        let answer = serde_json::json!({"error": {"type": "invalid_request_error", "code": "resource_missing", "message": "No such customer: 'cus_x'"}});
        assert_eq!(
            error_detail(StatusCode::BAD_REQUEST, &answer),
            "HTTP 400 invalid_request_error/resource_missing: No such customer: 'cus_x'"
        );
        assert_eq!(error_detail(StatusCode::BAD_GATEWAY, &serde_json::json!({})), "HTTP 502 unknown_error: no message");
    }

    #[test]
    fn debug_hides_the_secret_key() {
        let api = StripeApi::new("sk_test_secret", "https://api.stripe.com/").expect("valid");
        assert!(!format!("{api:?}").contains("sk_test_secret"));
    }
}
