//! Credits: the use-cases on the ledger (grants, purchases, debits, refunds, holds),
//! shared by tool-call metering, the HTTP API and the CLI.
//!
//! Holds only ports (`Arc<dyn LedgerStore>`, `Arc<dyn Clock>`). The rules live in
//! [`maestro_core::ledger`]; the store applies each posting atomically and never lets a
//! wallet go below zero. Every operation that moves credits takes an idempotency key:
//! repeating a request with its key returns the first outcome (`replayed: true`) and
//! moves nothing again.
//!
//! **Group commit.** Postings go through `GroupCommit`, in one of the store's lanes
//! ([`LedgerStore::posting_lanes`]; one on both stores today: SQLite's writers take
//! turns anyway, and a Postgres batch costs mostly per batch) chosen by tenant (so one
//! tenant's postings always share a lane): a caller alone posts at once (no added wait);
//! callers arriving while a posting of their lane is in flight queue up, and when it ends
//! the first of them posts the whole queue as one batch ([`LedgerStore::post_batch`]:
//! one statement and one durable commit on Postgres, one write transaction and one
//! fsync on SQLite). Each caller still gets its own exact outcome, in arrival order,
//! exactly as if the postings had been posted one after another: a batch where the
//! wallet runs out half-way pays the first callers and refuses the rest. So a busy
//! tenant pays one commit per batch instead of one per posting, and waits on its wallet
//! row once per batch; and many tenants posting at once share commits too (a lane's
//! batch may hold several tenants' postings).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
    group: Arc<GroupCommit>,
}

impl Credits {
    /// Builds the use-cases over the ledger port and a clock.
    pub fn new(store: Arc<dyn LedgerStore>, clock: Arc<dyn Clock>) -> Self {
        let group = Arc::new(GroupCommit::new(store.posting_lanes()));
        Self { store, clock, group }
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
        match self.group.post(&*self.store, &*self.clock, posting).await {
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
        let posted = self.group.post(&*self.store, &*self.clock, posting).await?;
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
        Ok(self.group.post(&*self.store, &*self.clock, posting).await?)
    }
}

/// Group commit of concurrent postings (see the module notes).
///
/// A lane with a posting in flight has a queue here; its presence means "busy". The
/// caller that found no queue leads: it posts (with whoever queued meanwhile, when it
/// was handed the lead), answers the others, and hands the lead to the first caller
/// still waiting, or removes the queue. The mutex is never held across an await.
///
/// A tenant's postings always go to the same lane, so they stay in arrival order and
/// coalesce; several lanes let unrelated tenants' batches commit side by side where the
/// store can run them so (one per lane at most: the number of batches in flight).
struct GroupCommit {
    queues: Mutex<HashMap<u64, Vec<Waiter>>>,
    lanes: u64,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let busy = self.queues.lock().map_or(0, |q| q.len());
        f.debug_struct("GroupCommit").field("lanes", &self.lanes).field("busy_lanes", &busy).finish()
    }
}

/// A caller waiting for its turn.
struct Waiter {
    posting: Posting,
    turn: tokio::sync::oneshot::Sender<Turn>,
}

/// What a waiting caller is told.
enum Turn {
    /// Its posting was applied (or refused) in another caller's batch.
    Done(Result<Posted, LedgerError>),
    /// It leads the next batch: its own posting, then these (in arrival order).
    Lead(Vec<Waiter>),
}

impl GroupCommit {
    fn new(lanes: usize) -> Self {
        Self { queues: Mutex::default(), lanes: lanes.max(1) as u64 }
    }

    /// The lane of a tenant's postings.
    fn lane(&self, tenant: &TenantId) -> u64 {
        use std::hash::{Hash as _, Hasher as _};
        let mut hasher = std::hash::DefaultHasher::new();
        tenant.as_str().hash(&mut hasher);
        hasher.finish() % self.lanes
    }

    /// Posts `posting` alone when its lane has nothing in flight, else in the lane's next
    /// batch; the outcome is the posting's own, as if posted alone in arrival order.
    async fn post(&self, store: &dyn LedgerStore, clock: &dyn Clock, posting: Posting) -> Result<Posted, LedgerError> {
        let lane = self.lane(&posting.tenant);
        let queued = {
            let mut queues = self.lock();
            match queues.get_mut(&lane) {
                None => {
                    queues.insert(lane, Vec::new());
                    None
                }
                Some(queue) => {
                    let (turn, told) = tokio::sync::oneshot::channel();
                    queue.push(Waiter { posting: posting.clone(), turn });
                    Some(told)
                }
            }
        };
        let followers = match queued {
            None => Vec::new(),
            Some(told) => match told.await {
                Ok(Turn::Done(outcome)) => return outcome,
                Ok(Turn::Lead(followers)) => followers,
                // The caller leading our batch was dropped mid-commit, so whether our
                // posting was applied is unknown: post it again (its key makes that safe;
                // finding its own transaction id means the first attempt committed).
                Err(_) => return repost(store, clock, &posting).await,
            },
        };
        let handover = Handover { group: self, lane };
        let (postings, turns): (Vec<Posting>, Vec<_>) =
            std::iter::once((posting, None)).chain(followers.into_iter().map(|w| (w.posting, Some(w.turn)))).unzip();
        let outcomes = if let [alone] = postings.as_slice() {
            vec![store.post(alone, clock.now()).await]
        } else {
            store.post_batch(&postings, clock.now()).await
        };
        let mut own = None;
        for (turn, outcome) in turns.into_iter().zip(outcomes) {
            match turn {
                None => own = Some(outcome),
                // A caller that left meanwhile just misses its answer.
                Some(turn) => drop(turn.send(Turn::Done(outcome))),
            }
        }
        drop(handover);
        own.unwrap_or_else(|| {
            Err(LedgerError::Store(maestro_core::StoreError::Corrupt("the store answered fewer postings".into())))
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Vec<Waiter>>> {
        // A panic while holding the lock leaves the map consistent (each step is one
        // insert, push, take or remove): keep going with it.
        self.queues.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Hands the lane's lead to the first caller still waiting, or ends its busy state.
    fn hand_over(&self, lane: u64) {
        let mut queues = self.lock();
        let Some(queue) = queues.get_mut(&lane) else { return };
        let mut waiting: Vec<Waiter> = std::mem::take(queue).into_iter().filter(|w| !w.turn.is_closed()).collect();
        while !waiting.is_empty() {
            let first = waiting.remove(0);
            match first.turn.send(Turn::Lead(waiting)) {
                Ok(()) => return,
                // That caller left just now: the next one leads.
                Err(Turn::Lead(rest)) => waiting = rest,
                Err(Turn::Done(_)) => return,
            }
        }
        queues.remove(&lane);
    }
}

/// Passes the lead on when the leading caller finishes, or is dropped mid-commit (its
/// followers, whose answers are lost with it, then post again on their own).
struct Handover<'a> {
    group: &'a GroupCommit,
    lane: u64,
}

impl Drop for Handover<'_> {
    fn drop(&mut self) {
        self.group.hand_over(self.lane);
    }
}

/// Posts again a posting whose batch's outcome was lost.
async fn repost(store: &dyn LedgerStore, clock: &dyn Clock, posting: &Posting) -> Result<Posted, LedgerError> {
    let mut posted = store.post(posting, clock.now()).await?;
    if posted.replayed && posted.transaction.id == posting.id {
        posted.replayed = false;
    }
    Ok(posted)
}

/// A new transaction id, ordered by the time it was made (so the ledger's indexes on
/// transaction ids grow at their right edge, see [`TransactionId::from_time_and_random`]).
pub(crate) fn tx_id() -> TransactionId {
    let millis = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    TransactionId::from_time_and_random(u64::try_from(millis).unwrap_or(u64::MAX), random_bytes())
}

fn hold_id() -> HoldId {
    HoldId::from_random(random_bytes())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use chrono::{DateTime, Utc};
    use maestro_core::{HoldId, Store, Transaction, TransactionPage};
    use tokio::sync::Semaphore;

    use super::*;
    use crate::accounts::SystemClock;

    /// The real (SQLite) store, whose postings wait at a gate the test opens.
    #[derive(Debug)]
    struct Gated {
        inner: Arc<dyn Store>,
        gate: Semaphore,
        entered: AtomicUsize,
    }

    impl Gated {
        async fn pass(&self) {
            self.entered.fetch_add(1, Ordering::SeqCst);
            self.gate.acquire().await.expect("gate open").forget();
        }
    }

    #[async_trait::async_trait]
    impl LedgerStore for Gated {
        async fn post(&self, posting: &Posting, at: DateTime<Utc>) -> Result<Posted, LedgerError> {
            self.pass().await;
            self.inner.post(posting, at).await
        }
        async fn post_batch(&self, postings: &[Posting], at: DateTime<Utc>) -> Vec<Result<Posted, LedgerError>> {
            self.pass().await;
            self.inner.post_batch(postings, at).await
        }
        async fn balance(&self, tenant: &TenantId) -> Result<Balance, StoreError> {
            self.inner.balance(tenant).await
        }
        async fn hold(&self, id: &HoldId, tenant: Option<&TenantId>) -> Result<Option<Hold>, StoreError> {
            self.inner.hold(id, tenant).await
        }
        async fn due_holds(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<Hold>, StoreError> {
            self.inner.due_holds(now, limit).await
        }
        async fn transaction_by_key(&self, tenant: &TenantId, key: &str) -> Result<Option<Transaction>, StoreError> {
            self.inner.transaction_by_key(tenant, key).await
        }
        async fn transactions(
            &self,
            tenant: &TenantId,
            query: &TransactionQuery,
        ) -> Result<TransactionPage, StoreError> {
            self.inner.transactions(tenant, query).await
        }
        async fn audit(&self) -> Result<AuditReport, StoreError> {
            self.inner.audit().await
        }
    }

    /// Waits (bounded) until `condition` holds.
    async fn until(what: &str, condition: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leader_dropped_mid_commit_hands_over_and_its_followers_post_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        let location = crate::storage::StoreLocation::Sqlite(dir.path().join("ledger.db"));
        let inner = crate::storage::open(&location).await.expect("store");
        let acme = TenantId::from_random([1; 16]);
        let grant = Posting::grant(tx_id(), acme.clone(), 100, "g", "").expect("valid");
        inner.post(&grant, Utc::now()).await.expect("grant");
        let store = Arc::new(Gated { inner: inner.clone(), gate: Semaphore::new(0), entered: AtomicUsize::new(0) });
        let group = Arc::new(GroupCommit::new(4));
        let debit = |key: &str| {
            let (group, store, posting) =
                (group.clone(), store.clone(), Posting::debit(tx_id(), acme.clone(), 10, key, "").expect("valid"));
            tokio::spawn(async move { group.post(&*store, &SystemClock, posting).await })
        };
        let queued = |n: usize| {
            let (group, acme) = (group.clone(), acme.clone());
            move || group.lock().get(&group.lane(&acme)).map_or(0, Vec::len) == n
        };

        // A posts alone; B and C queue behind it.
        let a = debit("a");
        until("a at the store", || store.entered.load(Ordering::SeqCst) == 1).await;
        let b = debit("b");
        until("b queued", queued(1)).await;
        let c = debit("c");
        until("c queued", queued(2)).await;
        // A commits and hands the lead to B, which posts [b, c] as one batch.
        store.gate.add_permits(1);
        let a = a.await.expect("a").expect("a posted");
        assert_eq!(a.balance_after.available, 90);
        until("the batch at the store", || store.entered.load(Ordering::SeqCst) == 2).await;
        let d = debit("d");
        until("d queued", queued(1)).await;
        // B is dropped mid-commit: D takes the lead, C (whose answer was lost) posts again.
        b.abort();
        assert!(b.await.expect_err("aborted").is_cancelled());
        until("d and c at the store", || store.entered.load(Ordering::SeqCst) == 4).await;
        store.gate.add_permits(10);
        let c = c.await.expect("c").expect("c posted");
        let d = d.await.expect("d").expect("d posted");
        assert!(!c.replayed && !d.replayed);
        assert!(inner.transaction_by_key(&acme, "b").await.expect("lookup").is_none(), "b never reached the store");
        assert_eq!(inner.balance(&acme).await.expect("balance").available, 70);
        assert!(group.lock().is_empty(), "nothing left in flight");
        let report = inner.audit().await.expect("audit");
        assert!(report.is_clean(), "{report:?}");
    }
}
