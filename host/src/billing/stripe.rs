//! The Stripe API calls billing makes (async-stripe, form-encoded requests): create a
//! customer, create a Checkout Session. The base URL is configurable so tests talk to a
//! fake Stripe on 127.0.0.1.

use std::collections::HashMap;
use std::str::FromStr as _;
use std::time::Duration;

use maestro_core::TenantId;
use stripe::{IdempotencyKey, RequestStrategy, StripeRequest as _};
use stripe_checkout::CheckoutSessionMode;
use stripe_checkout::checkout_session::{
    CreateCheckoutSession, CreateCheckoutSessionLineItems, CreateCheckoutSessionLineItemsPriceData, ProductData,
};
use stripe_core::customer::CreateCustomer;

use crate::config::CreditPack;

/// A Stripe call failed (network, an error answer, or an answer missing what we need).
#[derive(Debug, thiserror::Error)]
#[error("stripe request failed: {what}")]
pub struct StripeApiError {
    what: &'static str,
    #[source]
    source: Option<stripe::StripeError>,
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
    client: stripe::Client,
}

impl std::fmt::Debug for StripeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeApi").finish_non_exhaustive()
    }
}

impl StripeApi {
    /// A client for `api_base` (ending in `/`) authenticating with `secret_key`.
    pub(crate) fn new(secret_key: &str, api_base: &str) -> Result<Self, StripeApiError> {
        let client = stripe::ClientBuilder::new(secret_key)
            .url(api_base)
            .timeout(Duration::from_secs(30))
            .app_info("maestro", Some(env!("CARGO_PKG_VERSION").to_owned()), None)
            .build()
            .map_err(|e| StripeApiError { what: "invalid client configuration", source: Some(e) })?;
        Ok(Self { client })
    }

    /// Creates the Stripe customer for `tenant`. The idempotency key is derived from the
    /// tenant, so two concurrent first checkouts get the same customer back from Stripe.
    pub(crate) async fn create_customer(&self, tenant: &TenantId) -> Result<String, StripeApiError> {
        let metadata = HashMap::from([("maestro_tenant".to_owned(), tenant.to_string())]);
        let customer = CreateCustomer::new()
            .description(format!("maestro tenant {tenant}"))
            .metadata(metadata)
            .customize()
            .request_strategy(RequestStrategy::Idempotent(idempotency_key(&format!("maestro-customer-{tenant}"))?))
            .send(&self.client)
            .await
            .map_err(|e| StripeApiError { what: "create customer", source: Some(e) })?;
        Ok(customer.id.to_string())
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
        let mut price = CreateCheckoutSessionLineItemsPriceData::new(
            stripe_types::Currency::from_str(&pack.currency).expect("currency parsing is infallible"),
        );
        price.unit_amount = Some(pack.unit_amount);
        price.product_data = Some(ProductData::new(pack.name.clone()));
        let mut item = CreateCheckoutSessionLineItems::new();
        item.price_data = Some(price);
        item.quantity = Some(1);
        let metadata = HashMap::from([
            ("maestro_tenant".to_owned(), tenant.to_string()),
            ("maestro_pack".to_owned(), pack.id.clone()),
        ]);
        let session = CreateCheckoutSession::new()
            .mode(CheckoutSessionMode::Payment)
            .customer(customer)
            .client_reference_id(tenant.to_string())
            .line_items(vec![item])
            .metadata(metadata)
            .success_url(success_url)
            .cancel_url(cancel_url)
            .send(&self.client)
            .await
            .map_err(|e| StripeApiError { what: "create checkout session", source: Some(e) })?;
        let url = session.url.ok_or(StripeApiError { what: "checkout session has no url", source: None })?;
        Ok(CreatedSession { id: session.id.to_string(), url })
    }
}

fn idempotency_key(key: &str) -> Result<IdempotencyKey, StripeApiError> {
    IdempotencyKey::new(key).map_err(|_| StripeApiError { what: "invalid idempotency key", source: None })
}
