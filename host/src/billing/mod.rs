//! Stripe top-ups (the only module that talks to Stripe): checkout for a credit pack,
//! and the webhook that credits a tenant once paid and takes credits back on refunds.
//!
//! Exactly-once, whatever Stripe does (redeliveries, concurrency, any order):
//! - each event id is recorded once, after it was applied; a recorded id answers as a
//!   duplicate without doing anything;
//! - applying is idempotent by itself, so concurrent deliveries of one event are safe:
//!   the grant is posted under `stripe:checkout:{session}`, and every reversal step is
//!   first claimed in the store (compare-and-set on the credits reversed so far) and then
//!   posted under `stripe:refund:{session}:{reversed total}`, an amount fixed by the claim;
//! - state converges: a completion records the payment intent, a refund records the
//!   charge's cumulative refunded amount (the largest seen), and both then reconcile the
//!   session: grant if paid, then reverse up to the refunded share. A refund that arrives
//!   before its completion is applied when the completion arrives.
//!
//! Tenants are found only through what Maestro stored when it created the session (and
//! the tenant's customer mapping), never through event metadata.

mod stripe;

use std::sync::Arc;

use maestro_core::billing::{
    ChargeRefund, CheckoutCompletion, CheckoutRecord, DEFAULT_TOLERANCE, EventAction, EventError, ProcessedEvent,
    SignatureError, StripeEvent, credits_to_reverse, verify_signature,
};
use maestro_core::ports::BillingStore;
use maestro_core::{Clock, LedgerStore, StoreError, TenantId};

use self::stripe::StripeApi;
pub use self::stripe::StripeApiError;
use crate::config::{BillingSettings, CreditPack};
use crate::credits::{Credits, CreditsError};

/// Why a billing request failed.
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    /// The requested pack is not configured.
    #[error("no credit pack `{0}`")]
    UnknownPack(String),
    /// The webhook's signature does not hold.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The webhook's body (correctly signed) is not an event we can read.
    #[error(transparent)]
    InvalidEvent(#[from] EventError),
    /// Stripe failed or answered something unusable.
    #[error(transparent)]
    Stripe(#[from] StripeApiError),
    /// The ledger refused or failed.
    #[error("ledger: {0}")]
    Credits(#[from] CreditsError),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// A Checkout Session ready for the customer.
#[derive(Debug, Clone)]
pub struct CheckoutStarted {
    /// `cs_…`.
    pub id: String,
    /// The Stripe-hosted payment page.
    pub url: String,
    /// The pack it sells.
    pub pack: CreditPack,
}

/// What a webhook delivery did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookReceipt {
    /// The event id.
    pub event_id: String,
    /// `true` when the event had been processed before (nothing was done).
    pub duplicate: bool,
    /// What was done, as recorded (e.g. `granted`, `reversed`, `refund_pending`).
    pub outcome: String,
}

/// Billing use-cases over the store, the ledger and Stripe.
#[derive(Debug)]
pub struct Billing {
    store: Arc<dyn BillingStore>,
    credits: Credits,
    clock: Arc<dyn Clock>,
    stripe: StripeApi,
    settings: BillingSettings,
}

impl Billing {
    /// Billing with the given settings, over its records and the ledger.
    pub fn new(
        store: Arc<dyn BillingStore>,
        ledger: Arc<dyn LedgerStore>,
        clock: Arc<dyn Clock>,
        settings: BillingSettings,
    ) -> Result<Self, BillingError> {
        let stripe = StripeApi::new(&settings.secret_key, &settings.api_base)?;
        let credits = Credits::new(ledger, clock.clone());
        Ok(Self { store, credits, clock, stripe, settings })
    }

    /// The packs on sale.
    pub fn packs(&self) -> &[CreditPack] {
        &self.settings.packs
    }

    /// Opens a Checkout Session for `pack`, creating the tenant's Stripe customer on its
    /// first purchase, and records the session so its webhooks can be trusted.
    pub async fn checkout(&self, tenant: &TenantId, pack: &str) -> Result<CheckoutStarted, BillingError> {
        let pack = self.packs().iter().find(|p| p.id == pack).ok_or_else(|| BillingError::UnknownPack(pack.into()))?;
        let customer = match self.store.stripe_customer(tenant).await? {
            Some(customer) => customer,
            None => {
                let created = self.stripe.create_customer(tenant).await?;
                let mapped = self.store.insert_stripe_customer(tenant, &created, self.clock.now()).await?;
                tracing::info!(%tenant, customer = %mapped, "stripe customer created");
                mapped
            }
        };
        let session = self
            .stripe
            .create_checkout(&customer, tenant, pack, &self.settings.success_url, &self.settings.cancel_url)
            .await?;
        self.store
            .insert_checkout(&CheckoutRecord {
                id: session.id.clone(),
                tenant_id: tenant.clone(),
                pack: pack.id.clone(),
                credits: pack.credits,
                amount: pack.unit_amount,
                currency: pack.currency.clone(),
                paid: false,
                payment_intent: None,
                reversed_credits: 0,
                reversed_from: 0,
                created_at: self.clock.now(),
            })
            .await?;
        tracing::info!(%tenant, session = %session.id, pack = %pack.id, "checkout session created");
        Ok(CheckoutStarted { id: session.id, url: session.url, pack: pack.clone() })
    }

    /// Handles one webhook delivery: verifies `signature` over the raw `payload`, then
    /// applies the event once. Nothing is written when the signature does not hold.
    pub async fn handle_webhook(&self, signature: &str, payload: &[u8]) -> Result<WebhookReceipt, BillingError> {
        verify_signature(signature, payload, &self.settings.webhook_secret, self.clock.now(), DEFAULT_TOLERANCE)?;
        let event = StripeEvent::parse(payload)?;
        if let Some(done) = self.store.processed_event(&event.id).await? {
            return Ok(WebhookReceipt { event_id: event.id, duplicate: true, outcome: done.outcome });
        }
        let outcome = match &event.action {
            EventAction::Checkout(completion) => self.on_completion(completion).await?,
            EventAction::Refund(refund) => self.on_refund(refund).await?,
            EventAction::Ignored => Outcome::Ignored,
        };
        let outcome = outcome.as_str().to_owned();
        let record = ProcessedEvent {
            id: event.id.clone(),
            kind: event.kind.clone(),
            received_at: self.clock.now(),
            outcome: outcome.clone(),
        };
        let first = self.store.record_event(&record).await?;
        tracing::info!(event = %event.id, kind = %event.kind, %outcome, "stripe event processed");
        Ok(WebhookReceipt { event_id: event.id, duplicate: !first, outcome })
    }

    async fn on_completion(&self, completion: &CheckoutCompletion) -> Result<Outcome, BillingError> {
        let Some(session) = self.store.checkout(&completion.session_id).await? else {
            tracing::warn!(session = %completion.session_id, "stripe event for a checkout session maestro did not create");
            return Ok(Outcome::UnknownSession);
        };
        if let Some(customer) = &completion.customer
            && !self.is_customer_of(customer, &session.tenant_id).await?
        {
            tracing::warn!(session = %session.id, %customer, tenant = %session.tenant_id, "checkout customer is not the tenant's");
            return Ok(Outcome::CustomerMismatch);
        }
        let session = self
            .store
            .complete_checkout(&session.id, completion.payment_intent.as_deref(), completion.paid)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("checkout {}", session.id)))?;
        self.reconcile(session).await
    }

    async fn on_refund(&self, refund: &ChargeRefund) -> Result<Outcome, BillingError> {
        let Some(payment_intent) = refund.payment_intent.as_deref() else {
            tracing::info!(charge = %refund.charge_id, "refund of a charge without a payment intent: not a checkout");
            return Ok(Outcome::Ignored);
        };
        self.store.record_refund(refund, self.clock.now()).await?;
        match self.store.checkout_by_payment_intent(payment_intent).await? {
            Some(session) => self.reconcile(session).await,
            // Its completion has not arrived yet; it will apply this refund.
            None => Ok(Outcome::RefundPending),
        }
    }

    /// Brings the ledger in line with the session's state: the grant once paid, then
    /// reversals up to the refunded share. Safe to run any number of times, concurrently.
    async fn reconcile(&self, mut session: CheckoutRecord) -> Result<Outcome, BillingError> {
        if !session.paid {
            return Ok(Outcome::AwaitingPayment);
        }
        let tenant = session.tenant_id.clone();
        let granted = self
            .credits
            .purchase(
                &tenant,
                session.credits,
                &format!("stripe:checkout:{}", session.id),
                &format!("stripe checkout {} ({})", session.id, session.pack),
            )
            .await?;
        let mut outcome = if granted.replayed { Outcome::NoChange } else { Outcome::Granted };
        // A step claimed but perhaps not posted (a crash in between): post it again; the
        // key makes this a no-op when it was posted.
        if session.reversed_credits > session.reversed_from {
            self.post_reversal(&session, session.reversed_from, session.reversed_credits).await?;
        }
        let Some(refund) = self.refund_of(&session).await? else {
            return Ok(outcome);
        };
        if let Some(customer) = &refund.customer
            && !self.is_customer_of(customer, &tenant).await?
        {
            tracing::warn!(session = %session.id, %customer, %tenant, "refunded charge's customer is not the tenant's");
            return Ok(Outcome::CustomerMismatch);
        }
        let target = credits_to_reverse(session.credits, refund.amount, refund.amount_refunded);
        while target > session.reversed_credits {
            let from = session.reversed_credits;
            if self.store.claim_reversal(&session.id, from, target).await? {
                let unrecovered = self.post_reversal(&session, from, target).await?;
                outcome = match (outcome, unrecovered) {
                    (_, 1..) => Outcome::PartlyReversed,
                    (Outcome::Granted, _) => Outcome::GrantedAndReversed,
                    _ => Outcome::Reversed,
                };
                break;
            }
            // Another delivery moved it first: look again.
            session = self
                .store
                .checkout(&session.id)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("checkout {}", session.id)))?;
        }
        Ok(outcome)
    }

    async fn refund_of(&self, session: &CheckoutRecord) -> Result<Option<ChargeRefund>, BillingError> {
        match &session.payment_intent {
            Some(payment_intent) => Ok(self.store.refund_by_payment_intent(payment_intent).await?),
            None => Ok(None),
        }
    }

    /// Posts the reversal step `from → to` (credits reversed in total for the session);
    /// returns the credits the wallet no longer held (already spent), which stay spent.
    async fn post_reversal(&self, session: &CheckoutRecord, from: i64, to: i64) -> Result<i64, BillingError> {
        let amount = to - from;
        let reversal = self
            .credits
            .reverse_purchase(
                &session.tenant_id,
                amount,
                &format!("stripe:refund:{}:{to}", session.id),
                &format!("stripe refund of checkout {} ({to} of {} credits)", session.id, session.credits),
            )
            .await?;
        let replayed = reversal.posted.as_ref().is_some_and(|p| p.replayed);
        if reversal.unrecovered > 0 && !replayed {
            tracing::warn!(
                tenant = %session.tenant_id,
                session = %session.id,
                requested = amount,
                recovered = reversal.reversed,
                unrecovered = reversal.unrecovered,
                "refund asked back more credits than the wallet held; the rest was already spent"
            );
        }
        Ok(reversal.unrecovered)
    }

    async fn is_customer_of(&self, customer: &str, tenant: &TenantId) -> Result<bool, BillingError> {
        Ok(self.store.stripe_customer(tenant).await?.as_deref() == Some(customer))
    }
}

/// What applying one event did; recorded with the event id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Granted,
    GrantedAndReversed,
    Reversed,
    PartlyReversed,
    NoChange,
    AwaitingPayment,
    RefundPending,
    UnknownSession,
    CustomerMismatch,
    Ignored,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Granted => "granted",
            Outcome::GrantedAndReversed => "granted_and_reversed",
            Outcome::Reversed => "reversed",
            Outcome::PartlyReversed => "partly_reversed",
            Outcome::NoChange => "no_change",
            Outcome::AwaitingPayment => "awaiting_payment",
            Outcome::RefundPending => "refund_pending",
            Outcome::UnknownSession => "unknown_session",
            Outcome::CustomerMismatch => "customer_mismatch",
            Outcome::Ignored => "ignored",
        }
    }
}
