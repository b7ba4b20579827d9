//! Credits: the use-cases on the ledger (grants, purchases, debits, refunds, holds),
//! shared by tool-call metering, the HTTP API and the CLI.
//!
//! Holds only ports (`Arc<dyn LedgerStore>`, `Arc<dyn Clock>`). The rules live in
//! [`maestro_core::ledger`]; the store applies each posting atomically and never lets a
//! wallet go below zero. Every operation that moves credits takes an idempotency key:
//! repeating a request with its key returns the first outcome (`replayed: true`) and
//! moves nothing again.

use std::sync::Arc;

use maestro_core::ledger::{HoldId, TransactionId};
use maestro_core::{
    AuditReport, Balance, Clock, Hold, HoldState, LedgerError, LedgerStore, Posted, Posting, StoreError, TenantId,
    TransactionPage, TransactionQuery,
};

use crate::random::random_bytes;

/// Why a credits operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CreditsError {
    /// The wallet holds less than the operation needs; nothing was written.
    #[error("insufficient credits: {available} available, {needed} needed")]
    Insufficient {
        /// Credits available now.
        available: i64,
        /// Credits the operation needed.
        needed: i64,
    },
    /// The amount is zero (where not allowed), negative, or above the per-posting cap.
    #[error("invalid amount {0}")]
    InvalidAmount(i64),
    /// The idempotency key is not 1 to 200 printable ASCII characters.
    #[error("invalid idempotency key: must be 1 to 200 printable ascii characters")]
    InvalidKey,
    /// A hold's lifetime must be positive.
    #[error("a hold must expire in the future")]
    InvalidExpiry,
    /// The key was used before for a different request.
    #[error("idempotency key `{key}` was already used for a different request")]
    IdempotencyConflict {
        /// The reused key.
        key: String,
    },
    /// No such hold or transaction in this tenant.
    #[error("{0} not found")]
    NotFound(String),
    /// The hold was already settled, voided or expired (or is past its expiry).
    #[error("hold {hold} is {state}")]
    HoldClosed {
        /// The hold.
        hold: HoldId,
        /// Its state.
        state: HoldState,
    },
    /// A settlement asked for more than the hold reserved.
    #[error("settlement of {actual} exceeds the hold of {held}")]
    ExceedsHold {
        /// Reserved.
        held: i64,
        /// Asked for.
        actual: i64,
    },
    /// The debit was already refunded (under another key).
    #[error("transaction {0} was already refunded")]
    AlreadyRefunded(TransactionId),
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for CreditsError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound(what) => Self::NotFound(what),
            other => Self::Store(other),
        }
    }
}

impl From<LedgerError> for CreditsError {
    fn from(err: LedgerError) -> Self {
        match err {
            LedgerError::Insufficient { available, needed } => Self::Insufficient { available, needed },
            LedgerError::InvalidAmount(amount) => Self::InvalidAmount(amount),
            LedgerError::InvalidKey => Self::InvalidKey,
            LedgerError::IdempotencyConflict { key } => Self::IdempotencyConflict { key },
            LedgerError::NotFound(what) => Self::NotFound(what),
            LedgerError::HoldClosed { hold, state } => Self::HoldClosed { hold, state },
            LedgerError::ExceedsHold { held, actual } => Self::ExceedsHold { held, actual },
            LedgerError::AlreadyReversed(tx) => Self::AlreadyRefunded(tx),
            // Postings built here are balanced by construction; an unbalanced one is a
            // bug, reported as a store-level failure rather than a caller error.
            LedgerError::Unbalanced(why) => Self::Store(StoreError::Corrupt(why)),
            LedgerError::Store(err) => Self::from(err),
        }
    }
}

/// What a purchase reversal took back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reversal {
    /// The posting, when anything could be taken back.
    pub posted: Option<Posted>,
    /// Credits taken back from the wallet.
    pub reversed: i64,
    /// Credits asked for that the wallet no longer held (already spent).
    pub unrecovered: i64,
}

/// A hold just opened (or the original one, on a replay).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The hold.
    pub hold: Hold,
    /// The reserving transaction.
    pub posted: Posted,
}

/// How many holds the sweeper expires per store round trip.
const EXPIRE_BATCH: u32 = 100;

/// The credits use-cases.
#[derive(Debug, Clone)]
pub struct Credits {
    store: Arc<dyn LedgerStore>,
    clock: Arc<dyn Clock>,
}

impl Credits {
    /// Builds the use-cases over the ledger port and a clock.
    pub fn new(store: Arc<dyn LedgerStore>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
    }

    /// A tenant's balance (zero for a tenant that never had credits).
    pub async fn balance(&self, tenant: &TenantId) -> Result<Balance, CreditsError> {
        Ok(self.store.balance(tenant).await?)
    }

    /// Promotional credits: promotions → wallet.
    pub async fn grant(&self, tenant: &TenantId, amount: i64, key: &str, memo: &str) -> Result<Posted, CreditsError> {
        self.post(Posting::grant(tx_id(), tenant.clone(), amount, key, memo)?).await
    }

    /// Bought credits: Stripe clearing → wallet.
    pub async fn purchase(
        &self,
        tenant: &TenantId,
        amount: i64,
        key: &str,
        memo: &str,
    ) -> Result<Posted, CreditsError> {
        self.post(Posting::purchase(tx_id(), tenant.clone(), amount, key, memo)?).await
    }

    /// Takes back a purchase (refunded payment, charge-back): wallet → Stripe clearing,
    /// at most what the wallet holds now — never overdrawing. The result says how much
    /// could not be recovered. When the wallet is empty nothing is written (a retry with
    /// the same key may then recover credits received since).
    pub async fn reverse_purchase(
        &self,
        tenant: &TenantId,
        amount: i64,
        key: &str,
        memo: &str,
    ) -> Result<Reversal, CreditsError> {
        let posting = Posting::purchase_reversal(tx_id(), tenant.clone(), amount, key, memo)?;
        match self.store.post(&posting, self.clock.now()).await {
            Ok(posted) => {
                let reversed = posted.transaction.amount;
                Ok(Reversal { posted: Some(posted), reversed, unrecovered: amount - reversed })
            }
            Err(LedgerError::Insufficient { available: 0, .. }) => {
                Ok(Reversal { posted: None, reversed: 0, unrecovered: amount })
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Spends credits: wallet → revenue. An amount of 0 succeeds without writing
    /// anything (`None`); otherwise the wallet must hold `amount`.
    pub async fn debit(
        &self,
        tenant: &TenantId,
        amount: i64,
        key: &str,
        memo: &str,
    ) -> Result<Option<Posted>, CreditsError> {
        if amount == 0 {
            maestro_core::IdempotencyKey::parse(key)?;
            return Ok(None);
        }
        self.post(Posting::debit(tx_id(), tenant.clone(), amount, key, memo)?).await.map(Some)
    }

    /// Gives back the debit posted with `original_key`: revenue → wallet for exactly its
    /// amount. A debit is refunded at most once, whatever the key
    /// ([`CreditsError::AlreadyRefunded`]).
    pub async fn refund_debit(
        &self,
        tenant: &TenantId,
        original_key: &str,
        key: &str,
        memo: &str,
    ) -> Result<Posted, CreditsError> {
        let original = self
            .store
            .transaction_by_key(tenant, original_key)
            .await?
            .filter(|t| t.kind == maestro_core::TransactionKind::Debit)
            .ok_or_else(|| CreditsError::NotFound(format!("debit `{original_key}`")))?;
        self.post(Posting::refund(tx_id(), &original, key, memo)?).await
    }

    /// Reserves `amount` for work whose cost is known afterwards: wallet → held, until
    /// settled, voided, or expired `expires_in` from now.
    pub async fn reserve(
        &self,
        tenant: &TenantId,
        amount: i64,
        expires_in: chrono::Duration,
        key: &str,
        memo: &str,
    ) -> Result<Reservation, CreditsError> {
        if expires_in <= chrono::Duration::zero() {
            return Err(CreditsError::InvalidExpiry);
        }
        let now = self.clock.now();
        let posting = Posting::reserve(tx_id(), tenant.clone(), hold_id(), amount, now + expires_in, key, memo)?;
        let posted = self.store.post(&posting, now).await?;
        let id = posted.transaction.hold.clone().ok_or_else(|| {
            CreditsError::Store(StoreError::Corrupt(format!("reserve {} has no hold", posted.transaction.id)))
        })?;
        let hold = self.hold(tenant, &id).await?;
        Ok(Reservation { hold, posted })
    }

    /// Settles a hold for the actual cost (0 up to the reserved amount): that much goes
    /// to revenue, the rest back to the wallet. Refused once the hold has expired.
    pub async fn settle(
        &self,
        tenant: &TenantId,
        hold: &HoldId,
        actual: i64,
        key: &str,
    ) -> Result<Posted, CreditsError> {
        let stored = self.hold(tenant, hold).await?;
        self.post(Posting::settle(tx_id(), &stored, actual, key, "settle")?).await
    }

    /// Voids a hold: all of it goes back to the wallet.
    pub async fn void(&self, tenant: &TenantId, hold: &HoldId, key: &str) -> Result<Posted, CreditsError> {
        let stored = self.hold(tenant, hold).await?;
        self.post(Posting::void(tx_id(), &stored, key, "void")?).await
    }

    /// Expires every open hold past its expiry (the sweeper): each goes back to its
    /// wallet. Returns how many this call expired; a hold settled or voided meanwhile
    /// is left alone.
    pub async fn expire_holds(&self) -> Result<usize, CreditsError> {
        let now = self.clock.now();
        let mut expired = 0;
        loop {
            let due = self.store.due_holds(now, EXPIRE_BATCH).await?;
            let mut progress = false;
            for hold in &due {
                match self.store.post(&Posting::expire(tx_id(), hold)?, now).await {
                    Ok(posted) => {
                        progress = true;
                        if !posted.replayed {
                            expired += 1;
                        }
                    }
                    Err(LedgerError::HoldClosed { .. }) => progress = true,
                    Err(err) => return Err(err.into()),
                }
            }
            if due.len() < EXPIRE_BATCH as usize || !progress {
                return Ok(expired);
            }
        }
    }

    /// A hold of this tenant.
    pub async fn hold(&self, tenant: &TenantId, hold: &HoldId) -> Result<Hold, CreditsError> {
        self.store.hold(hold, Some(tenant)).await?.ok_or_else(|| CreditsError::NotFound(format!("hold {hold}")))
    }

    /// The hold a tenant's reservation posted under `key` opened, if any (callers that
    /// derive keys deterministically find what an earlier, interrupted attempt reserved).
    pub async fn hold_by_key(&self, tenant: &TenantId, key: &str) -> Result<Option<Hold>, CreditsError> {
        let Some(transaction) = self.store.transaction_by_key(tenant, key).await? else { return Ok(None) };
        match transaction.hold {
            Some(id) => Ok(self.store.hold(&id, Some(tenant)).await?),
            None => Ok(None),
        }
    }

    /// A page of a tenant's transactions, oldest first.
    pub async fn transactions(
        &self,
        tenant: &TenantId,
        query: &TransactionQuery,
    ) -> Result<TransactionPage, CreditsError> {
        Ok(self.store.transactions(tenant, query).await?)
    }

    /// Checks the whole ledger (see [`maestro_core::LedgerStore::audit`]).
    pub async fn audit(&self) -> Result<AuditReport, CreditsError> {
        Ok(self.store.audit().await?)
    }

    async fn post(&self, posting: Posting) -> Result<Posted, CreditsError> {
        Ok(self.store.post(&posting, self.clock.now()).await?)
    }
}

fn tx_id() -> TransactionId {
    TransactionId::from_random(random_bytes())
}

fn hold_id() -> HoldId {
    HoldId::from_random(random_bytes())
}
