//! Charging for calls: the grant's price is debited before the plugin runs (atomically
//! with the balance check) and refunded, exactly once, only when the host failed to run
//! the call. Ledger errors are logged here with their detail; the caller gets
//! [`CallError::LedgerUnavailable`], which names no backend.

use std::sync::Arc;

use super::{CallError, Principal};
use crate::credits::{Credits, CreditsError};

/// Debits and refunds on the credit ledger (none: calls are free, as in some tests).
#[derive(Debug, Default)]
pub(super) struct Charger {
    credits: Option<Arc<Credits>>,
}

/// A debit that stands until refunded.
#[derive(Debug)]
pub(super) struct Charge {
    key: String,
    price: u64,
}

impl Charge {
    /// The credits debited.
    pub(super) fn price(&self) -> u64 {
        self.price
    }
}

impl Charger {
    pub(super) fn new(credits: Arc<Credits>) -> Self {
        Self { credits: Some(credits) }
    }

    /// The ledger, if calls are metered.
    pub(super) fn credits(&self) -> Option<&Arc<Credits>> {
        self.credits.as_ref()
    }

    /// Debits `price` for one call of `what` before it runs; `None` when nothing was
    /// charged (free, or no ledger).
    pub(super) async fn charge(
        &self,
        principal: &Principal,
        price: u64,
        what: &str,
    ) -> Result<Option<Charge>, CallError> {
        let Some(credits) = self.credits.as_ref().filter(|_| price > 0) else { return Ok(None) };
        let amount = i64::try_from(price).map_err(|_| CallError::InsufficientCredits { available: 0, price })?;
        let key = format!("call:{}", hex::encode(crate::random::random_bytes::<12>()));
        match credits.debit(&principal.tenant_id, amount, &key, what).await {
            Ok(_) => Ok(Some(Charge { key, price })),
            Err(CreditsError::Insufficient { available, .. }) => {
                Err(CallError::InsufficientCredits { available, price })
            }
            Err(err) => {
                let error = crate::telemetry::error_chain(&err);
                tracing::error!(%error, tenant = %principal.tenant, what, "cannot debit a call");
                Err(CallError::LedgerUnavailable)
            }
        }
    }

    /// Refunds a charged call the host failed to run (consumes the charge: at most
    /// once; the idempotency key makes a replay harmless too).
    pub(super) async fn refund(&self, principal: &Principal, charge: Charge) {
        let Some(credits) = &self.credits else { return };
        let key = format!("refund:{}", charge.key);
        if let Err(err) =
            credits.refund_debit(&principal.tenant_id, &charge.key, &key, "the host could not run the call").await
        {
            // The debit stands; `maestro credits audit` stays clean, and the refund can be
            // replayed with the same key.
            let error = crate::telemetry::error_chain(&err);
            tracing::error!(%error, tenant = %principal.tenant, charge = %charge.key, "cannot refund a failed call");
        }
    }
}
