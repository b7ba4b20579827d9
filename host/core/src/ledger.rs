//! Credits: an append-only, double-entry ledger that never overdraws.
//!
//! Every movement of credits is a [`Posting`]: a balanced set of legs (signed amounts
//! per [`Account`], summing to zero) with an idempotency key. A stored posting is a
//! [`Transaction`] whose legs are immutable entries; an account's balance is the sum of
//! its entries, cached per account by the store. Tenant accounts (a wallet and the
//! credits held for running work) never go below zero; platform accounts (revenue,
//! Stripe clearing, promotions) are sources and sinks and may.
//!
//! Work whose cost is known only afterwards reserves credits first: a [`Hold`] moves
//! credits from the wallet to the tenant's held account, and is then settled for the
//! actual cost (the rest goes back), voided, or expired by a sweeper.
//!
//! This module holds the rules only. The store applies a posting atomically (see
//! [`crate::ports::LedgerStore`]); [`Model`] applies the same rules in memory and is the
//! reference the property tests compare stores against.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::id::{Id, IdKind, TenantId};
use crate::ports::StoreError;

/// The largest amount one posting may move (10^12 credits).
pub const MAX_AMOUNT: i64 = 1_000_000_000_000;

/// The longest idempotency key, in bytes.
pub const MAX_KEY_LEN: usize = 200;

/// Marker for ledger transaction identifiers (`tx_…`).
#[derive(Debug)]
pub enum TransactionKindId {}
impl IdKind for TransactionKindId {
    const PREFIX: &'static str = "tx";
}

/// Marker for hold identifiers (`hold_…`).
#[derive(Debug)]
pub enum HoldKind {}
impl IdKind for HoldKind {
    const PREFIX: &'static str = "hold";
}

/// A ledger transaction's identifier.
pub type TransactionId = Id<TransactionKindId>;
/// A hold's identifier.
pub type HoldId = Id<HoldKind>;

/// Why a ledger operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The wallet (or held account) would go below zero.
    #[error("insufficient credits: {available} available, {needed} needed")]
    Insufficient {
        /// What the account holds now.
        available: i64,
        /// What the posting needed from it.
        needed: i64,
    },
    /// An amount is zero, negative, above [`MAX_AMOUNT`], or overflows.
    #[error("invalid amount {0}: must be between 1 and {MAX_AMOUNT}")]
    InvalidAmount(i64),
    /// The idempotency key is empty, too long or not printable ASCII.
    #[error("invalid idempotency key: must be 1 to {MAX_KEY_LEN} printable ascii characters")]
    InvalidKey,
    /// The legs do not sum to zero, name an account twice, or name another tenant's
    /// accounts.
    #[error("unbalanced posting: {0}")]
    Unbalanced(String),
    /// The key was used before for a different request.
    #[error("idempotency key `{key}` was already used for a different request")]
    IdempotencyConflict {
        /// The reused key.
        key: String,
    },
    /// No such hold or transaction (in this tenant).
    #[error("{0} not found")]
    NotFound(String),
    /// The hold is no longer open (or has passed its expiry for a settlement).
    #[error("hold {hold} is {state}")]
    HoldClosed {
        /// The hold.
        hold: HoldId,
        /// Its state now (`expired` also when it is past its expiry but not yet swept).
        state: HoldState,
    },
    /// A settlement asked for more than the hold reserved.
    #[error("settlement of {actual} exceeds the hold of {held}")]
    ExceedsHold {
        /// What the hold reserved.
        held: i64,
        /// What the settlement asked for.
        actual: i64,
    },
    /// The transaction was already reversed (refunded) by another transaction.
    #[error("transaction {0} was already reversed")]
    AlreadyReversed(TransactionId),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One account of the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Account {
    /// A tenant's spendable credits.
    Wallet(TenantId),
    /// A tenant's credits reserved by open holds.
    Held(TenantId),
    /// Credits earned by the platform (debits land here).
    Revenue,
    /// The counterpart of purchases paid through Stripe.
    StripeClearing,
    /// The source of promotional grants.
    Promotions,
}

impl Account {
    /// The account's stable key as stored: `wallet:tn_…`, `held:tn_…`,
    /// `platform:revenue`, `platform:stripe_clearing`, `platform:promotions`.
    pub fn key(&self) -> String {
        match self {
            Self::Wallet(t) => format!("wallet:{t}"),
            Self::Held(t) => format!("held:{t}"),
            Self::Revenue => "platform:revenue".to_owned(),
            Self::StripeClearing => "platform:stripe_clearing".to_owned(),
            Self::Promotions => "platform:promotions".to_owned(),
        }
    }

    /// Parses [`Account::key`].
    pub fn parse(key: &str) -> Option<Self> {
        match key {
            "platform:revenue" => return Some(Self::Revenue),
            "platform:stripe_clearing" => return Some(Self::StripeClearing),
            "platform:promotions" => return Some(Self::Promotions),
            _ => {}
        }
        let (kind, tenant) = key.split_once(':')?;
        let tenant = TenantId::parse(tenant).ok()?;
        match kind {
            "wallet" => Some(Self::Wallet(tenant)),
            "held" => Some(Self::Held(tenant)),
            _ => None,
        }
    }

    /// The tenant owning the account, for tenant accounts.
    pub fn tenant(&self) -> Option<&TenantId> {
        match self {
            Self::Wallet(t) | Self::Held(t) => Some(t),
            _ => None,
        }
    }

    /// Whether the balance must stay at or above zero (tenant accounts).
    pub fn is_constrained(&self) -> bool {
        self.tenant().is_some()
    }

    /// `wallet`, `held` or `platform` (the `kind` column of the cached balances).
    pub fn class(&self) -> &'static str {
        match self {
            Self::Wallet(_) => "wallet",
            Self::Held(_) => "held",
            _ => "platform",
        }
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

impl Serialize for Account {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.key())
    }
}

/// What a transaction does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TransactionKind {
    /// Promotional credits: promotions → wallet.
    Grant,
    /// Bought credits: Stripe clearing → wallet.
    Purchase,
    /// A charge-back or refunded payment: wallet → Stripe clearing.
    PurchaseReversal,
    /// Spent credits: wallet → revenue.
    Debit,
    /// A debit given back: revenue → wallet.
    Refund,
    /// A hold opened: wallet → held.
    Reserve,
    /// A hold settled: held → revenue (actual) and held → wallet (the rest).
    Settle,
    /// A hold voided: held → wallet.
    Void,
    /// A hold expired: held → wallet.
    Expire,
}

impl TransactionKind {
    /// Every kind, in declaration order.
    pub const ALL: [Self; 9] = [
        Self::Grant,
        Self::Purchase,
        Self::PurchaseReversal,
        Self::Debit,
        Self::Refund,
        Self::Reserve,
        Self::Settle,
        Self::Void,
        Self::Expire,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grant => "grant",
            Self::Purchase => "purchase",
            Self::PurchaseReversal => "purchase_reversal",
            Self::Debit => "debit",
            Self::Refund => "refund",
            Self::Reserve => "reserve",
            Self::Settle => "settle",
            Self::Void => "void",
            Self::Expire => "expire",
        }
    }

    /// Parses [`TransactionKind::as_str`].
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for TransactionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated idempotency key: 1 to 200 printable ASCII characters (space included).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Validates a key.
    pub fn parse(key: &str) -> Result<Self, LedgerError> {
        let ok = !key.is_empty() && key.len() <= MAX_KEY_LEN && key.bytes().all(|b| (0x20..0x7f).contains(&b));
        if ok { Ok(Self(key.to_owned())) } else { Err(LedgerError::InvalidKey) }
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks that `amount` may be moved by one posting (1..=[`MAX_AMOUNT`]).
pub fn check_amount(amount: i64) -> Result<i64, LedgerError> {
    if (1..=MAX_AMOUNT).contains(&amount) { Ok(amount) } else { Err(LedgerError::InvalidAmount(amount)) }
}

/// One leg of a posting: a signed amount on an account (positive adds to the balance).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Leg {
    /// The account.
    pub account: Account,
    /// The signed amount, never zero.
    pub amount: i64,
}

/// A tenant's credits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Balance {
    /// Spendable now.
    pub available: i64,
    /// Reserved by open holds.
    pub held: i64,
}

/// What a posting does to a hold, applied in the same store transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldEffect {
    /// Opens a hold of the posting's amount.
    Open {
        /// The new hold's id (ignored on replay: the original hold is returned).
        hold: HoldId,
        /// When the sweeper may expire it.
        expires_at: DateTime<Utc>,
    },
    /// Closes an open hold.
    Close {
        /// The hold.
        hold: HoldId,
        /// Its new state (`Settled`, `Voided` or `Expired`).
        state: HoldState,
        /// For a settlement: what was charged.
        settled: i64,
    },
}

/// A request to move credits, validated: legs balance, amounts within bounds, key
/// well-formed. Build one with the constructors; a store applies it atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posting {
    /// The transaction id to use if this posting is new.
    pub id: TransactionId,
    /// What it does.
    pub kind: TransactionKind,
    /// The tenant whose accounts it touches (and whose key scope it uses).
    pub tenant: TenantId,
    /// The legs, sorted by account (the order stores lock balances in).
    pub legs: Vec<Leg>,
    /// A free-form note.
    pub memo: String,
    /// The idempotency key, unique per tenant.
    pub key: IdempotencyKey,
    /// The hold it opens or closes.
    pub hold: Option<HoldEffect>,
    /// The transaction it reverses (a refund), which may be reversed only once.
    pub reverses: Option<TransactionId>,
    /// Move at most what the (single) debited tenant account holds instead of failing
    /// with [`LedgerError::Insufficient`]; the legs give the requested amount.
    pub up_to_available: bool,
}

/// Longest memo kept, in characters.
pub const MAX_MEMO_LEN: usize = 500;

impl Posting {
    /// The transaction this posting records once applied: its legs as entries, the
    /// amount moved, and the hold it opened or closed.
    pub fn transaction(&self, entries: Vec<Leg>, amount: i64, hold: Option<HoldId>, at: DateTime<Utc>) -> Transaction {
        Transaction {
            id: self.id.clone(),
            kind: self.kind,
            tenant: self.tenant.clone(),
            entries,
            amount,
            memo: self.memo.clone(),
            idempotency_key: self.key.clone(),
            hold,
            reverses: self.reverses.clone(),
            created_at: at,
        }
    }

    /// A posting with arbitrary legs, validated: at least two legs, each non-zero and
    /// within [`MAX_AMOUNT`], no account twice, tenant accounts only of `tenant`, summing
    /// to zero.
    pub fn new(
        id: TransactionId,
        kind: TransactionKind,
        tenant: TenantId,
        mut legs: Vec<Leg>,
        key: &str,
        memo: &str,
    ) -> Result<Self, LedgerError> {
        let key = IdempotencyKey::parse(key)?;
        legs.sort_by_key(|l| l.account.key());
        check_legs(&tenant, &legs)?;
        let memo: String = memo.chars().take(MAX_MEMO_LEN).collect();
        Ok(Self { id, kind, tenant, legs, memo, key, hold: None, reverses: None, up_to_available: false })
    }

    /// Checks the rules [`Posting::new`] enforces again (the fields are public): stores
    /// and the model refuse a posting that breaks them.
    pub fn check(&self) -> Result<(), LedgerError> {
        if !self.legs.is_sorted_by_key(|l| l.account.key()) {
            return Err(LedgerError::Unbalanced("legs are not sorted by account".to_owned()));
        }
        check_legs(&self.tenant, &self.legs)
    }

    /// Moves `amount` from one account to another; one of them must be a tenant's, and
    /// that tenant is the posting's.
    pub fn transfer(
        id: TransactionId,
        kind: TransactionKind,
        from: Account,
        to: Account,
        amount: i64,
        key: &str,
        memo: &str,
    ) -> Result<Self, LedgerError> {
        let amount = check_amount(amount)?;
        let tenant = from
            .tenant()
            .or(to.tenant())
            .cloned()
            .ok_or_else(|| LedgerError::Unbalanced("a transfer needs a tenant account".to_owned()))?;
        Self::new(
            id,
            kind,
            tenant,
            vec![Leg { account: from, amount: -amount }, Leg { account: to, amount }],
            key,
            memo,
        )
    }

    /// Promotional credits: promotions → wallet.
    pub fn grant(id: TransactionId, tenant: TenantId, amount: i64, key: &str, memo: &str) -> Result<Self, LedgerError> {
        let to = Account::Wallet(tenant.clone());
        Self::transfer(id, TransactionKind::Grant, Account::Promotions, to, amount, key, memo)
    }

    /// Bought credits: Stripe clearing → wallet.
    pub fn purchase(
        id: TransactionId,
        tenant: TenantId,
        amount: i64,
        key: &str,
        memo: &str,
    ) -> Result<Self, LedgerError> {
        let to = Account::Wallet(tenant.clone());
        Self::transfer(id, TransactionKind::Purchase, Account::StripeClearing, to, amount, key, memo)
    }

    /// A purchase taken back: wallet → Stripe clearing, at most what the wallet holds.
    pub fn purchase_reversal(
        id: TransactionId,
        tenant: TenantId,
        amount: i64,
        key: &str,
        memo: &str,
    ) -> Result<Self, LedgerError> {
        let from = Account::Wallet(tenant.clone());
        let mut posting =
            Self::transfer(id, TransactionKind::PurchaseReversal, from, Account::StripeClearing, amount, key, memo)?;
        posting.up_to_available = true;
        Ok(posting)
    }

    /// Spent credits: wallet → revenue.
    pub fn debit(id: TransactionId, tenant: TenantId, amount: i64, key: &str, memo: &str) -> Result<Self, LedgerError> {
        let from = Account::Wallet(tenant.clone());
        Self::transfer(id, TransactionKind::Debit, from, Account::Revenue, amount, key, memo)
    }

    /// Gives a debit back: revenue → wallet, for exactly the debit's amount, once.
    pub fn refund(id: TransactionId, original: &Transaction, key: &str, memo: &str) -> Result<Self, LedgerError> {
        if original.kind != TransactionKind::Debit {
            return Err(LedgerError::NotFound(format!("debit {}", original.id)));
        }
        let to = Account::Wallet(original.tenant.clone());
        let mut posting =
            Self::transfer(id, TransactionKind::Refund, Account::Revenue, to, original.amount, key, memo)?;
        posting.reverses = Some(original.id.clone());
        Ok(posting)
    }

    /// Opens a hold: wallet → held.
    pub fn reserve(
        id: TransactionId,
        tenant: TenantId,
        hold: HoldId,
        amount: i64,
        expires_at: DateTime<Utc>,
        key: &str,
        memo: &str,
    ) -> Result<Self, LedgerError> {
        let (from, to) = (Account::Wallet(tenant.clone()), Account::Held(tenant.clone()));
        let mut posting = Self::transfer(id, TransactionKind::Reserve, from, to, amount, key, memo)?;
        posting.hold = Some(HoldEffect::Open { hold, expires_at });
        Ok(posting)
    }

    /// Settles a hold for `actual` (0..=the hold's amount): held → revenue for `actual`,
    /// held → wallet for the rest. The store checks that the hold is still open and
    /// not past its expiry.
    pub fn settle(id: TransactionId, hold: &Hold, actual: i64, key: &str, memo: &str) -> Result<Self, LedgerError> {
        if actual < 0 {
            return Err(LedgerError::InvalidAmount(actual));
        }
        if actual > hold.amount {
            return Err(LedgerError::ExceedsHold { held: hold.amount, actual });
        }
        let rest = hold.amount - actual;
        let mut legs = vec![Leg { account: Account::Held(hold.tenant.clone()), amount: -hold.amount }];
        if actual > 0 {
            legs.push(Leg { account: Account::Revenue, amount: actual });
        }
        if rest > 0 {
            legs.push(Leg { account: Account::Wallet(hold.tenant.clone()), amount: rest });
        }
        let mut posting = Self::new(id, TransactionKind::Settle, hold.tenant.clone(), legs, key, memo)?;
        posting.hold = Some(HoldEffect::Close { hold: hold.id.clone(), state: HoldState::Settled, settled: actual });
        Ok(posting)
    }

    /// Voids a hold: held → wallet for all of it.
    pub fn void(id: TransactionId, hold: &Hold, key: &str, memo: &str) -> Result<Self, LedgerError> {
        Self::release(id, TransactionKind::Void, HoldState::Voided, hold, key, memo)
    }

    /// Expires a hold (the sweeper): held → wallet, keyed `expire:<hold id>`.
    pub fn expire(id: TransactionId, hold: &Hold) -> Result<Self, LedgerError> {
        let key = format!("expire:{}", hold.id);
        Self::release(id, TransactionKind::Expire, HoldState::Expired, hold, &key, "hold expired")
    }

    fn release(
        id: TransactionId,
        kind: TransactionKind,
        state: HoldState,
        hold: &Hold,
        key: &str,
        memo: &str,
    ) -> Result<Self, LedgerError> {
        let (from, to) = (Account::Held(hold.tenant.clone()), Account::Wallet(hold.tenant.clone()));
        let mut posting = Self::transfer(id, kind, from, to, hold.amount, key, memo)?;
        posting.hold = Some(HoldEffect::Close { hold: hold.id.clone(), state, settled: 0 });
        Ok(posting)
    }

    /// The total moved: the sum of the positive legs.
    pub fn amount(&self) -> i64 {
        self.legs.iter().filter(|l| l.amount > 0).map(|l| l.amount).sum()
    }

    /// A digest of what was asked (kind, tenant, legs, memo, hold, reversal), but not
    /// of the fresh ids a retry would draw: a replay with the same key must match it.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        let mut field = |s: &str| {
            h.update((s.len() as u64).to_be_bytes());
            h.update(s.as_bytes());
        };
        field(self.kind.as_str());
        field(self.tenant.as_str());
        for leg in &self.legs {
            field(&leg.account.key());
            field(&leg.amount.to_string());
        }
        field(&self.memo);
        match &self.hold {
            None => field("-"),
            Some(HoldEffect::Open { expires_at, .. }) => {
                field("open");
                field(&expires_at.timestamp_millis().to_string());
            }
            Some(HoldEffect::Close { hold, state, settled }) => {
                field("close");
                field(hold.as_str());
                field(state.as_str());
                field(&settled.to_string());
            }
        }
        field(self.reverses.as_ref().map_or("-", |t| t.as_str()));
        field(if self.up_to_available { "up-to" } else { "exact" });
        hex(&h.finalize())
    }

    /// For [`Posting::up_to_available`]: the legs scaled down to move `amount` instead.
    pub fn capped_legs(&self, amount: i64) -> Vec<Leg> {
        self.legs.iter().map(|l| Leg { account: l.account.clone(), amount: l.amount.signum() * amount }).collect()
    }

    /// For [`Posting::up_to_available`]: the debited (constrained) account.
    pub fn capped_account(&self) -> Option<&Account> {
        match self.legs.as_slice() {
            [a, b] if self.up_to_available => {
                [a, b].into_iter().find(|l| l.amount < 0 && l.account.is_constrained()).map(|l| &l.account)
            }
            _ => None,
        }
    }
}

/// At least two legs on distinct accounts (sorted by key), each non-zero and within
/// [`MAX_AMOUNT`], tenant accounts only of `tenant`, summing to zero, moving at most
/// [`MAX_AMOUNT`] in total.
fn check_legs(tenant: &TenantId, legs: &[Leg]) -> Result<(), LedgerError> {
    if legs.len() < 2 {
        return Err(LedgerError::Unbalanced("a posting needs at least two legs".to_owned()));
    }
    let (mut sum, mut moved) = (0i64, 0i64);
    for leg in legs {
        check_amount(leg.amount.checked_abs().ok_or(LedgerError::InvalidAmount(leg.amount))?)?;
        if leg.account.tenant().is_some_and(|t| t != tenant) {
            return Err(LedgerError::Unbalanced(format!("{} belongs to another tenant", leg.account)));
        }
        sum = sum.checked_add(leg.amount).ok_or(LedgerError::InvalidAmount(leg.amount))?;
        if leg.amount > 0 {
            moved = moved.checked_add(leg.amount).ok_or(LedgerError::InvalidAmount(leg.amount))?;
        }
    }
    if sum != 0 {
        return Err(LedgerError::Unbalanced(format!("legs sum to {sum}")));
    }
    if legs.windows(2).any(|w| w[0].account == w[1].account) {
        return Err(LedgerError::Unbalanced("an account appears twice".to_owned()));
    }
    check_amount(moved).map(|_| ())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A stored posting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Transaction {
    /// Its id.
    pub id: TransactionId,
    /// What it did.
    pub kind: TransactionKind,
    /// The tenant it concerns.
    pub tenant: TenantId,
    /// Its immutable entries, sorted by account.
    pub entries: Vec<Leg>,
    /// The total moved (sum of the positive entries).
    pub amount: i64,
    /// The note given.
    pub memo: String,
    /// The idempotency key.
    pub idempotency_key: IdempotencyKey,
    /// The hold it opened or closed.
    pub hold: Option<HoldId>,
    /// The transaction it reversed.
    pub reverses: Option<TransactionId>,
    /// When it was posted.
    pub created_at: DateTime<Utc>,
}

/// The outcome of a posting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Posted {
    /// The transaction (the original one on a replay).
    pub transaction: Transaction,
    /// The tenant's balance right after it was posted (as then, also on a replay).
    pub balance_after: Balance,
    /// Whether this was a replay of an earlier request with the same key.
    pub replayed: bool,
}

/// Where a hold is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldState {
    /// Credits reserved.
    Open,
    /// Charged for the actual cost, the rest released.
    Settled,
    /// Released in full on request.
    Voided,
    /// Released in full by the sweeper.
    Expired,
}

impl HoldState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Settled => "settled",
            Self::Voided => "voided",
            Self::Expired => "expired",
        }
    }

    /// Parses [`HoldState::as_str`].
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Open, Self::Settled, Self::Voided, Self::Expired].into_iter().find(|s| s.as_str() == name)
    }
}

impl fmt::Display for HoldState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Credits reserved for work whose cost is known afterwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hold {
    /// Its id.
    pub id: HoldId,
    /// The tenant.
    pub tenant: TenantId,
    /// Credits reserved.
    pub amount: i64,
    /// When the sweeper may release it.
    pub expires_at: DateTime<Utc>,
    /// Where it is in its life.
    pub state: HoldState,
    /// What a settlement charged.
    pub settled_amount: Option<i64>,
    /// When it was opened.
    pub created_at: DateTime<Utc>,
    /// When it was settled, voided or expired.
    pub closed_at: Option<DateTime<Utc>>,
}

impl Hold {
    /// Checks that `posting` (closing this hold to `state`) may apply at `at`: the hold
    /// is open, and a settlement or void comes before its expiry while an expiry comes
    /// at or after it. Stores run this check on the row they locked.
    pub fn check_close(&self, state: HoldState, at: DateTime<Utc>) -> Result<(), LedgerError> {
        let closed = |state| LedgerError::HoldClosed { hold: self.id.clone(), state };
        if self.state != HoldState::Open {
            return Err(closed(self.state));
        }
        match state {
            HoldState::Settled if at >= self.expires_at => Err(closed(HoldState::Expired)),
            HoldState::Expired if at < self.expires_at => Err(closed(HoldState::Open)),
            _ => Ok(()),
        }
    }
}

/// Which transactions to list: one tenant's, oldest first, after a cursor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransactionQuery {
    /// Continue after this cursor (from [`TransactionPage::next`]).
    pub after: Option<String>,
    /// Only those posted at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only those posted before this time.
    pub until: Option<DateTime<Utc>>,
    /// Only these kinds (all when empty).
    pub kinds: Vec<TransactionKind>,
    /// At most this many (clamped to 1..=[`TransactionQuery::MAX_LIMIT`]; 0 means the default 50).
    pub limit: u32,
}

impl TransactionQuery {
    /// The largest page.
    pub const MAX_LIMIT: u32 = 500;

    /// The page size to use.
    pub fn effective_limit(&self) -> u32 {
        if self.limit == 0 { 50 } else { self.limit.min(Self::MAX_LIMIT) }
    }
}

/// One page of transactions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransactionPage {
    /// The transactions, oldest first.
    pub transactions: Vec<Transaction>,
    /// The cursor for the next page, when the page was full.
    pub next: Option<String>,
}

/// A cached balance that differs from the sum of its account's entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BalanceMismatch {
    /// The account (its stored key).
    pub account: String,
    /// The cached balance.
    pub cached: i64,
    /// The sum of its entries.
    pub computed: i64,
}

/// What [`crate::ports::LedgerStore::audit`] found. No violations means the ledger is
/// consistent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    /// Transactions stored.
    pub transactions: u64,
    /// Entries stored.
    pub entries: u64,
    /// Transactions whose entries do not sum to zero, with their sum.
    pub imbalanced: Vec<(String, i64)>,
    /// Cached balances that differ from the sum of entries.
    pub mismatches: Vec<BalanceMismatch>,
    /// Tenant accounts below zero.
    pub negative: Vec<(String, i64)>,
    /// Held accounts that differ from the sum of their tenant's open holds.
    pub holds_mismatched: Vec<BalanceMismatch>,
    /// Transaction ids that entries name but no stored transaction has (on Postgres no
    /// foreign key checks this since migration 0018: only the posting functions write
    /// entries, in the statement that writes their transaction).
    pub orphaned: Vec<String>,
}

impl AuditReport {
    /// Whether nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.imbalanced.is_empty()
            && self.mismatches.is_empty()
            && self.negative.is_empty()
            && self.holds_mismatched.is_empty()
            && self.orphaned.is_empty()
    }
}

/// The ledger in memory: the reference the stores are tested against, applying the
/// same rules as [`crate::ports::LedgerStore::post`].
#[derive(Debug, Clone, Default)]
pub struct Model {
    balances: HashMap<Account, i64>,
    transactions: Vec<(Transaction, String, Balance)>,
    by_key: HashMap<(TenantId, IdempotencyKey), usize>,
    reversed: HashMap<TransactionId, TransactionId>,
    holds: BTreeMap<String, Hold>,
}

impl Model {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// A tenant's balance.
    pub fn balance(&self, tenant: &TenantId) -> Balance {
        Balance {
            available: self.account(&Account::Wallet(tenant.clone())),
            held: self.account(&Account::Held(tenant.clone())),
        }
    }

    /// An account's balance.
    pub fn account(&self, account: &Account) -> i64 {
        self.balances.get(account).copied().unwrap_or(0)
    }

    /// A hold.
    pub fn hold(&self, id: &HoldId) -> Option<&Hold> {
        self.holds.get(id.as_str())
    }

    /// Open holds due at `now`, oldest expiry first.
    pub fn due_holds(&self, now: DateTime<Utc>) -> Vec<Hold> {
        let mut due: Vec<Hold> =
            self.holds.values().filter(|h| h.state == HoldState::Open && h.expires_at <= now).cloned().collect();
        due.sort_by(|a, b| (a.expires_at, a.id.as_str()).cmp(&(b.expires_at, b.id.as_str())));
        due
    }

    /// A transaction by its key.
    pub fn transaction_by_key(&self, tenant: &TenantId, key: &str) -> Option<&Transaction> {
        let key = IdempotencyKey::parse(key).ok()?;
        self.by_key.get(&(tenant.clone(), key)).map(|&i| &self.transactions[i].0)
    }

    /// All transactions, in posting order.
    pub fn transactions(&self) -> impl Iterator<Item = &Transaction> {
        self.transactions.iter().map(|(t, _, _)| t)
    }

    /// Applies a posting, all or nothing.
    pub fn post(&mut self, posting: &Posting, at: DateTime<Utc>) -> Result<Posted, LedgerError> {
        posting.check()?;
        let fingerprint = posting.fingerprint();
        if let Some(&i) = self.by_key.get(&(posting.tenant.clone(), posting.key.clone())) {
            let (transaction, original, balance_after) = &self.transactions[i];
            if *original != fingerprint {
                return Err(LedgerError::IdempotencyConflict { key: posting.key.to_string() });
            }
            return Ok(Posted { transaction: transaction.clone(), balance_after: *balance_after, replayed: true });
        }
        if let Some(original) = &posting.reverses
            && self.reversed.contains_key(original)
        {
            return Err(LedgerError::AlreadyReversed(original.clone()));
        }
        if let Some(HoldEffect::Close { hold, state, .. }) = &posting.hold {
            let stored = self.holds.get(hold.as_str()).ok_or_else(|| LedgerError::NotFound(format!("hold {hold}")))?;
            stored.check_close(*state, at)?;
        }
        let mut legs = posting.legs.clone();
        if let Some(account) = posting.capped_account() {
            let available = self.account(account);
            let amount = posting.amount().min(available);
            if amount == 0 {
                return Err(LedgerError::Insufficient { available, needed: posting.amount() });
            }
            legs = posting.capped_legs(amount);
        }
        let mut next = self.balances.clone();
        for leg in &legs {
            let balance = next.entry(leg.account.clone()).or_insert(0);
            let after = balance.checked_add(leg.amount).ok_or(LedgerError::InvalidAmount(leg.amount))?;
            if leg.account.is_constrained() && after < 0 {
                return Err(LedgerError::Insufficient { available: *balance, needed: -leg.amount });
            }
            *balance = after;
        }
        self.balances = next;
        let amount = legs.iter().filter(|l| l.amount > 0).map(|l| l.amount).sum();
        let hold_id = match &posting.hold {
            None => None,
            Some(HoldEffect::Open { hold, expires_at }) => {
                let opened = Hold {
                    id: hold.clone(),
                    tenant: posting.tenant.clone(),
                    amount,
                    expires_at: *expires_at,
                    state: HoldState::Open,
                    settled_amount: None,
                    created_at: at,
                    closed_at: None,
                };
                self.holds.insert(hold.to_string(), opened);
                Some(hold.clone())
            }
            Some(HoldEffect::Close { hold, state, settled }) => {
                let stored = self.holds.get_mut(hold.as_str()).expect("checked above");
                stored.state = *state;
                stored.closed_at = Some(at);
                stored.settled_amount = (*state == HoldState::Settled).then_some(*settled);
                Some(hold.clone())
            }
        };
        let transaction = posting.transaction(legs, amount, hold_id, at);
        if let Some(original) = &posting.reverses {
            self.reversed.insert(original.clone(), posting.id.clone());
        }
        let balance_after = self.balance(&posting.tenant);
        self.by_key.insert((posting.tenant.clone(), posting.key.clone()), self.transactions.len());
        self.transactions.push((transaction.clone(), fingerprint, balance_after));
        Ok(Posted { transaction, balance_after, replayed: false })
    }

    /// Checks the model's own invariants, like a store's audit.
    pub fn audit(&self) -> AuditReport {
        let mut report = AuditReport {
            transactions: self.transactions.len() as u64,
            entries: self.transactions.iter().map(|(t, _, _)| t.entries.len() as u64).sum(),
            ..AuditReport::default()
        };
        let mut computed: HashMap<&Account, i64> = HashMap::new();
        for (t, _, _) in &self.transactions {
            let sum: i64 = t.entries.iter().map(|e| e.amount).sum();
            if sum != 0 {
                report.imbalanced.push((t.id.to_string(), sum));
            }
            for e in &t.entries {
                *computed.entry(&e.account).or_default() += e.amount;
            }
        }
        // Like the stores, only tenant balances are cached; platform balances are sums.
        for (account, &cached) in self.balances.iter().filter(|(a, _)| a.is_constrained()) {
            let sum = computed.get(account).copied().unwrap_or(0);
            if sum != cached {
                report.mismatches.push(BalanceMismatch { account: account.key(), cached, computed: sum });
            }
            if account.is_constrained() && cached < 0 {
                report.negative.push((account.key(), cached));
            }
            if let Account::Held(tenant) = account {
                let open: i64 = self
                    .holds
                    .values()
                    .filter(|h| h.tenant == *tenant && h.state == HoldState::Open)
                    .map(|h| h.amount)
                    .sum();
                if open != cached {
                    report.holds_mismatched.push(BalanceMismatch { account: account.key(), cached, computed: open });
                }
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tenant(n: u8) -> TenantId {
        TenantId::from_random([n; 16])
    }

    fn tx(n: u64) -> TransactionId {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&n.to_be_bytes());
        TransactionId::from_random(bytes)
    }

    fn hold_id(n: u64) -> HoldId {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&n.to_be_bytes());
        HoldId::from_random(bytes)
    }

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_700_000_000_000).expect("valid time")
    }

    #[test]
    fn account_keys_round_trip() {
        let t = tenant(1);
        for account in [
            Account::Wallet(t.clone()),
            Account::Held(t),
            Account::Revenue,
            Account::StripeClearing,
            Account::Promotions,
        ] {
            assert_eq!(Account::parse(&account.key()), Some(account.clone()));
        }
        assert_eq!(Account::parse("wallet:nope"), None);
        assert_eq!(Account::parse("platform:other"), None);
        for kind in TransactionKind::ALL {
            assert_eq!(TransactionKind::parse(kind.as_str()), Some(kind));
        }
    }

    #[test]
    fn rejects_zero_negative_and_oversized_amounts() {
        for bad in [0, -1, MAX_AMOUNT + 1, i64::MIN, i64::MAX] {
            let err = Posting::grant(tx(1), tenant(1), bad, "k", "").expect_err("invalid amount");
            assert!(matches!(err, LedgerError::InvalidAmount(_)), "{bad}: {err:?}");
        }
        assert!(Posting::grant(tx(1), tenant(1), MAX_AMOUNT, "k", "").is_ok());
    }

    #[test]
    fn rejects_malformed_keys() {
        for bad in ["", "tab\there", "é", &"k".repeat(MAX_KEY_LEN + 1)] {
            assert!(matches!(IdempotencyKey::parse(bad), Err(LedgerError::InvalidKey)), "{bad:?}");
        }
        assert!(IdempotencyKey::parse(&"k".repeat(MAX_KEY_LEN)).is_ok());
        assert!(IdempotencyKey::parse("call 1/2:~").is_ok());
    }

    #[test]
    fn rejects_unbalanced_or_foreign_legs() {
        let t = tenant(1);
        let leg = |account, amount| Leg { account, amount };
        let unbalanced = vec![leg(Account::Wallet(t.clone()), 5), leg(Account::Promotions, -4)];
        assert!(matches!(
            Posting::new(tx(1), TransactionKind::Grant, t.clone(), unbalanced, "k", ""),
            Err(LedgerError::Unbalanced(_))
        ));
        let foreign = vec![leg(Account::Wallet(tenant(2)), 5), leg(Account::Promotions, -5)];
        assert!(matches!(
            Posting::new(tx(1), TransactionKind::Grant, t.clone(), foreign, "k", ""),
            Err(LedgerError::Unbalanced(_))
        ));
        let twice = vec![leg(Account::Promotions, 5), leg(Account::Promotions, -5)];
        assert!(matches!(
            Posting::new(tx(1), TransactionKind::Grant, t.clone(), twice, "k", ""),
            Err(LedgerError::Unbalanced(_))
        ));
        let single = vec![leg(Account::Promotions, 0)];
        assert!(Posting::new(tx(1), TransactionKind::Grant, t, single, "k", "").is_err());
    }

    #[test]
    fn check_refuses_a_posting_altered_after_construction() {
        let mut posting = Posting::debit(tx(1), tenant(1), 10, "k", "").expect("valid");
        assert!(posting.check().is_ok());
        posting.legs[0].amount = 11;
        assert!(matches!(posting.check(), Err(LedgerError::Unbalanced(_))));
        let mut model = Model::new();
        assert!(model.post(&posting, t0()).is_err());
        let mut swapped = Posting::debit(tx(1), tenant(1), 10, "k", "").expect("valid");
        swapped.legs.reverse();
        assert!(swapped.check().is_err(), "stores lock balances in leg order");
    }

    #[test]
    fn fingerprint_ignores_fresh_ids_but_not_the_request() {
        let t = tenant(1);
        let a = Posting::reserve(tx(1), t.clone(), hold_id(1), 10, t0(), "k", "m").expect("valid");
        let b = Posting::reserve(tx(2), t.clone(), hold_id(2), 10, t0(), "k", "m").expect("valid");
        assert_eq!(a.fingerprint(), b.fingerprint());
        let c = Posting::reserve(tx(1), t, hold_id(1), 11, t0(), "k", "m").expect("valid");
        assert_ne!(a.fingerprint(), c.fingerprint());
    }

    #[test]
    fn settle_splits_the_hold_between_revenue_and_wallet() {
        let t = tenant(1);
        let mut model = Model::new();
        model.post(&Posting::grant(tx(1), t.clone(), 100, "g", "").expect("valid"), t0()).expect("grant");
        let expires = t0() + chrono::Duration::minutes(5);
        model
            .post(&Posting::reserve(tx(2), t.clone(), hold_id(1), 60, expires, "r", "").expect("valid"), t0())
            .expect("reserve");
        assert_eq!(model.balance(&t), Balance { available: 40, held: 60 });
        let hold = model.hold(&hold_id(1)).expect("hold").clone();
        assert!(matches!(Posting::settle(tx(3), &hold, 61, "s", ""), Err(LedgerError::ExceedsHold { .. })));
        let settled = model.post(&Posting::settle(tx(3), &hold, 25, "s", "").expect("valid"), t0()).expect("settle");
        assert_eq!(settled.balance_after, Balance { available: 75, held: 0 });
        assert_eq!(model.account(&Account::Revenue), 25);
        let again = model.post(&Posting::void(tx(4), &hold, "v", "").expect("valid"), t0());
        assert!(matches!(again, Err(LedgerError::HoldClosed { state: HoldState::Settled, .. })));
        assert!(model.audit().is_clean());
    }

    #[test]
    fn holds_close_by_the_clock() {
        let t = tenant(1);
        let mut model = Model::new();
        model.post(&Posting::grant(tx(1), t.clone(), 10, "g", "").expect("valid"), t0()).expect("grant");
        let expires = t0() + chrono::Duration::seconds(1);
        model
            .post(&Posting::reserve(tx(2), t.clone(), hold_id(1), 10, expires, "r", "").expect("valid"), t0())
            .expect("reserve");
        let hold = model.hold(&hold_id(1)).expect("hold").clone();
        let early = model.post(&Posting::expire(tx(3), &hold).expect("valid"), t0());
        assert!(matches!(early, Err(LedgerError::HoldClosed { state: HoldState::Open, .. })));
        let late = model.post(&Posting::settle(tx(3), &hold, 1, "s", "").expect("valid"), expires);
        assert!(matches!(late, Err(LedgerError::HoldClosed { state: HoldState::Expired, .. })));
        assert_eq!(model.due_holds(expires).len(), 1);
        model.post(&Posting::expire(tx(3), &hold).expect("valid"), expires).expect("expire");
        assert_eq!(model.balance(&t), Balance { available: 10, held: 0 });
        assert!(model.due_holds(expires).is_empty());
    }

    #[test]
    fn replays_return_the_original_and_conflicts_are_refused() {
        let t = tenant(1);
        let mut model = Model::new();
        let first = model.post(&Posting::grant(tx(1), t.clone(), 10, "k", "").expect("valid"), t0()).expect("grant");
        let replay = model.post(&Posting::grant(tx(2), t.clone(), 10, "k", "").expect("valid"), t0()).expect("replay");
        assert!(replay.replayed);
        assert_eq!(replay.transaction, first.transaction);
        let conflict = model.post(&Posting::grant(tx(3), t.clone(), 11, "k", "").expect("valid"), t0());
        assert!(matches!(conflict, Err(LedgerError::IdempotencyConflict { .. })));
        assert_eq!(model.balance(&t).available, 10);
    }

    #[test]
    fn purchase_reversal_takes_at_most_what_is_available() {
        let t = tenant(1);
        let mut model = Model::new();
        model.post(&Posting::purchase(tx(1), t.clone(), 30, "p", "").expect("valid"), t0()).expect("purchase");
        let reversed = model
            .post(&Posting::purchase_reversal(tx(2), t.clone(), 50, "r", "").expect("valid"), t0())
            .expect("reverse");
        assert_eq!(reversed.transaction.amount, 30);
        assert_eq!(model.balance(&t).available, 0);
        let nothing = model.post(&Posting::purchase_reversal(tx(3), t, 5, "r2", "").expect("valid"), t0());
        assert!(matches!(nothing, Err(LedgerError::Insufficient { available: 0, needed: 5 })));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Grant(i64),
        Debit(i64),
        Reserve(i64, i64),
        Settle(usize, i64),
        Void(usize),
        Expire(i64),
        Refund(usize),
        Replay(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1i64..200).prop_map(Op::Grant),
            (0i64..150).prop_map(Op::Debit),
            ((1i64..150), (1i64..10)).prop_map(|(a, s)| Op::Reserve(a, s)),
            ((0usize..8), (0i64..150)).prop_map(|(h, a)| Op::Settle(h, a)),
            (0usize..8).prop_map(Op::Void),
            (0i64..10).prop_map(Op::Expire),
            (0usize..20).prop_map(Op::Refund),
            (0usize..20).prop_map(Op::Replay),
        ]
    }

    proptest! {
        #[test]
        fn model_never_overdraws_and_stays_balanced(ops in proptest::collection::vec(op(), 1..80)) {
            let t = tenant(1);
            let mut model = Model::new();
            let mut now = t0();
            let mut holds: Vec<HoldId> = Vec::new();
            let mut postings: Vec<Posting> = Vec::new();
            for (i, op) in ops.into_iter().enumerate() {
                let n = i as u64;
                let key = format!("k{i}");
                let posting = match op {
                    Op::Grant(a) => Posting::grant(tx(n), t.clone(), a, &key, ""),
                    Op::Debit(a) => Posting::debit(tx(n), t.clone(), a, &key, ""),
                    Op::Reserve(a, secs) => {
                        holds.push(hold_id(n));
                        Posting::reserve(tx(n), t.clone(), hold_id(n), a, now + chrono::Duration::seconds(secs), &key, "")
                    }
                    Op::Settle(h, a) => match holds.get(h).and_then(|h| model.hold(h)) {
                        Some(hold) => Posting::settle(tx(n), &hold.clone(), a, &key, ""),
                        None => continue,
                    },
                    Op::Void(h) => match holds.get(h).and_then(|h| model.hold(h)) {
                        Some(hold) => Posting::void(tx(n), &hold.clone(), &key, ""),
                        None => continue,
                    },
                    Op::Expire(secs) => {
                        now += chrono::Duration::seconds(secs);
                        for hold in model.due_holds(now) {
                            let posting = Posting::expire(tx(n), &hold).expect("valid");
                            prop_assert!(model.post(&posting, now).is_ok());
                        }
                        continue;
                    }
                    Op::Refund(j) => match model.transactions().filter(|t| t.kind == TransactionKind::Debit).nth(j) {
                        Some(original) => Posting::refund(tx(n), &original.clone(), &key, ""),
                        None => continue,
                    },
                    Op::Replay(j) => match postings.get(j) {
                        Some(p) => Ok(p.clone()),
                        None => continue,
                    },
                };
                let Ok(posting) = posting else { continue };
                let before = model.balance(&t);
                match model.post(&posting, now) {
                    Ok(posted) => {
                        if !posted.replayed {
                            postings.push(posting);
                        }
                    }
                    Err(_) => prop_assert_eq!(model.balance(&t), before, "a refused posting changes nothing"),
                }
                let balance = model.balance(&t);
                prop_assert!(balance.available >= 0 && balance.held >= 0);
                let report = model.audit();
                prop_assert!(report.is_clean(), "{:?}", report);
            }
            let total: i64 = model.transactions().flat_map(|t| &t.entries).map(|e| e.amount).sum();
            prop_assert_eq!(total, 0);
        }
    }
}
