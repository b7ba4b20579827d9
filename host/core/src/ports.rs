//! Ports: the traits that storage (and later other) adapters implement.
//!
//! Each area of the domain gets its own trait (`TenantStore`, `KeyStore`, `LedgerStore`,
//! `BillingStore`, `JobStore`, and later documents, runs…), and each use-case holds only
//! the ports it needs (`Accounts`: [`AccountStore`]; `Credits`: [`LedgerStore`];
//! `Billing`: [`BillingStore`] and [`LedgerStore`]; jobs: [`JobStore`]). [`Store`] is
//! the whole backend: only the composition root (and tests) hold it, and hand out its
//! ports (an `Arc<dyn Store>` coerces to any of them).
//!
//! Writes that must happen together go through a [`UnitOfWork`]: [`UnitOfWork::begin`]
//! opens a [`Tx`] through which the ports' write operations run in one store
//! transaction, committed by [`Tx::commit`] or rolled back by [`Tx::rollback`] or by
//! dropping it. Every adapter must pass the one conformance suite in
//! `host/tests/it/storage.rs`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::artifact::{Artifact, BlobError, ExportOrigin, Sha256};
use crate::auth::ApiKey;
use crate::billing::{ChargeRefund, CheckoutRecord, ProcessedEvent};
use crate::document::{Appended, Document, DocumentId, DocumentScope, DocumentVersion, VersionSummary};
use crate::embed::EmbedderInfo;
use crate::id::{KeyId, TenantId};
use crate::jobs::{Enqueued, Job, JobFailure, JobPage, JobQuery, JobState, NewJob};
use crate::ledger::{
    AuditReport, Balance, Hold, HoldId, LedgerError, Posted, Posting, Transaction, TransactionPage, TransactionQuery,
};
use crate::memory::{Memory, MemoryFilter, MemoryHit, MemoryId, MemoryPatch};
use crate::run::{Message, NewEvent, Run, RunEvent, RunId, RunState, Session, SessionId};
use crate::schedule::{Schedule, ScheduleFire, ScheduleId};
use crate::search::{OutboxEntry, OutboxPosition, OutboxStatus, SearchChange, SearchKind, Searchable};
use crate::tenant::{Tenant, TenantName};

/// What can go wrong in a store, in terms callers match on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule was violated (e.g. a tenant name that already exists).
    #[error("{0} already exists")]
    Conflict(String),
    /// The thing to change does not exist (or is not visible to the caller).
    #[error("{0} not found")]
    NotFound(String),
    /// A stored row could not be turned back into a domain value.
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// The backend failed (connection, I/O, migration, SQL).
    #[error("storage backend failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Tenants.
#[async_trait]
pub trait TenantStore: Send + Sync + std::fmt::Debug {
    /// Inserts a tenant; [`StoreError::Conflict`] if the name is taken.
    async fn create_tenant(&self, tenant: &Tenant) -> Result<(), StoreError>;
    /// A tenant by id.
    async fn tenant(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError>;
    /// A tenant by name.
    async fn tenant_by_name(&self, name: &TenantName) -> Result<Option<Tenant>, StoreError>;
    /// All tenants, oldest first.
    async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError>;
}

/// API keys.
#[async_trait]
pub trait KeyStore: Send + Sync + std::fmt::Debug {
    /// Inserts a key; [`StoreError::Conflict`] if its id or lookup prefix is taken,
    /// [`StoreError::NotFound`] if its tenant does not exist.
    async fn insert_key(&self, key: &ApiKey) -> Result<(), StoreError>;
    /// Inserts the first platform-admin key, atomically, only if the store has never
    /// been bootstrapped and holds no key at all. Returns whether it was inserted; of
    /// several servers starting at once on one store, exactly one inserts.
    async fn insert_bootstrap_key(&self, key: &ApiKey) -> Result<bool, StoreError>;
    /// The key with this lookup prefix, if any (revoked and expired keys included).
    async fn key_by_prefix(&self, prefix: &str) -> Result<Option<ApiKey>, StoreError>;
    /// Keys, oldest first: all of them, or those of one tenant.
    async fn list_keys(&self, tenant: Option<&TenantId>) -> Result<Vec<ApiKey>, StoreError>;
    /// Revokes a key at `at`, restricted to `tenant` when given. Revoking a revoked key
    /// keeps the first revocation time. [`StoreError::NotFound`] when no such key is
    /// visible.
    async fn revoke_key(&self, id: &KeyId, tenant: Option<&TenantId>, at: DateTime<Utc>) -> Result<ApiKey, StoreError>;
    /// The store's key generation, read without a round trip: a number that changes, in
    /// every process using this store, once any key write has committed (so keys read
    /// while it had one value may be kept only while it still has it). `None` when the
    /// store cannot vouch for that right now (keys must then be read from the store).
    /// The default is `None`: callers never cache keys.
    fn key_generation(&self) -> Option<u64> {
        None
    }
}

/// Stripe billing: which Stripe customer is which tenant, the checkout sessions Maestro
/// created, refunds seen, and the webhook events already processed. Events are matched
/// to tenants only through these records, never through event metadata.
#[async_trait]
pub trait BillingStore: Send + Sync + std::fmt::Debug {
    /// The Stripe customer of a tenant, if one was created.
    async fn stripe_customer(&self, tenant: &TenantId) -> Result<Option<String>, StoreError>;
    /// Maps `tenant` to `customer` unless it already has one; returns the customer now
    /// mapped (of two concurrent calls, both get the first one's).
    async fn insert_stripe_customer(
        &self,
        tenant: &TenantId,
        customer: &str,
        at: DateTime<Utc>,
    ) -> Result<String, StoreError>;
    /// Records a checkout session Maestro created; [`StoreError::Conflict`] if its id exists.
    async fn insert_checkout(&self, checkout: &CheckoutRecord) -> Result<(), StoreError>;
    /// A checkout session by Stripe id.
    async fn checkout(&self, id: &str) -> Result<Option<CheckoutRecord>, StoreError>;
    /// The checkout session paid through this payment intent.
    async fn checkout_by_payment_intent(&self, payment_intent: &str) -> Result<Option<CheckoutRecord>, StoreError>;
    /// Notes a completion: sets the payment intent if none is set yet, and marks the
    /// session paid when `paid` (never unmarks it). Returns the updated session.
    async fn complete_checkout(
        &self,
        id: &str,
        payment_intent: Option<&str>,
        paid: bool,
    ) -> Result<Option<CheckoutRecord>, StoreError>;
    /// Claims the step of reversed credits from `from` to `to` (`from < to`): succeeds
    /// only if the session's `reversed_credits` is still `from`, so each step is
    /// claimed by exactly one caller.
    async fn claim_reversal(&self, id: &str, from: i64, to: i64) -> Result<bool, StoreError>;
    /// Records a charge's refund state, keeping the largest `amount_refunded` seen (events
    /// carry cumulative amounts and may arrive in any order).
    async fn record_refund(&self, refund: &ChargeRefund, at: DateTime<Utc>) -> Result<(), StoreError>;
    /// The refund state of the charge on this payment intent.
    async fn refund_by_payment_intent(&self, payment_intent: &str) -> Result<Option<ChargeRefund>, StoreError>;
    /// A processed webhook event.
    async fn processed_event(&self, id: &str) -> Result<Option<ProcessedEvent>, StoreError>;
    /// Records a processed event once; returns whether this call recorded it.
    async fn record_event(&self, event: &ProcessedEvent) -> Result<bool, StoreError>;
}

/// The credits ledger (see [`crate::ledger`]). Each method is one atomic store
/// transaction; ledger writes are durable when they return.
#[async_trait]
pub trait LedgerStore: Send + Sync + std::fmt::Debug {
    /// Applies a posting atomically, or nothing of it: checks its idempotency key
    /// (same key and same request → the original outcome with `replayed: true`; same key
    /// and another request → [`LedgerError::IdempotencyConflict`]), applies its legs to
    /// the cached balances with a conditional update that refuses to take a tenant
    /// account below zero ([`LedgerError::Insufficient`]), applies its hold effect (the
    /// hold must be open, see [`Hold::check_close`]), records a reversal at most once
    /// ([`LedgerError::AlreadyReversed`]), and appends the transaction and its entries.
    async fn post(&self, posting: &Posting, at: DateTime<Utc>) -> Result<Posted, LedgerError>;
    /// A tenant's balance (zero for a tenant that never had credits).
    async fn balance(&self, tenant: &TenantId) -> Result<Balance, StoreError>;
    /// A hold by id, restricted to `tenant` when given.
    async fn hold(&self, id: &HoldId, tenant: Option<&TenantId>) -> Result<Option<Hold>, StoreError>;
    /// Open holds whose expiry is at or before `now`, soonest first, at most `limit`.
    async fn due_holds(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<Hold>, StoreError>;
    /// A tenant's transaction by its idempotency key.
    async fn transaction_by_key(&self, tenant: &TenantId, key: &str) -> Result<Option<Transaction>, StoreError>;
    /// A page of a tenant's transactions, oldest first.
    async fn transactions(&self, tenant: &TenantId, query: &TransactionQuery) -> Result<TransactionPage, StoreError>;
    /// Checks the whole ledger: entries of every transaction sum to zero, cached
    /// balances equal the sum of their entries, tenant accounts are not negative, held
    /// accounts equal their open holds.
    async fn audit(&self) -> Result<AuditReport, StoreError>;
    /// Applies postings in order, each exactly as [`LedgerStore::post`] would had they been
    /// posted one after another, sharing one store transaction (one durable commit) where
    /// the backend can: group commit. Returns one outcome per posting, in order; a refused
    /// posting writes nothing and does not affect the others. When the shared transaction
    /// fails as a whole, the postings are answered one by one instead (keys make that safe).
    async fn post_batch(&self, postings: &[Posting], at: DateTime<Utc>) -> Vec<Result<Posted, LedgerError>>;
    /// How many postings (each alone or a batch) gain from being in flight at once: the
    /// group commit runs at most this many side by side and queues the rest into the
    /// next batches. A backend whose writers take turns (one write lock) says 1, so that
    /// concurrent postings coalesce instead of waiting on each other's lock.
    fn posting_lanes(&self) -> usize {
        4
    }
}

/// Background jobs (see [`crate::jobs`]). Every method is one atomic store transaction.
#[async_trait]
pub trait JobStore: Send + Sync + std::fmt::Debug {
    /// Stores a queued job, or returns the job already stored under its key
    /// (`created: false`) whatever its state.
    async fn enqueue(&self, job: &NewJob, now: DateTime<Utc>) -> Result<Enqueued, StoreError>;
    /// Claims up to `limit` jobs for `owner` until `lease_until`: queued jobs whose
    /// `run_at` has passed and running jobs whose lease expired before `now` (their
    /// worker died), oldest `run_at` first. Each claim counts an attempt. Of concurrent
    /// claimers, each job goes to one. A running job whose lease expired on its last
    /// attempt becomes `dead` instead of being claimed.
    async fn claim(
        &self,
        owner: &str,
        limit: u32,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Job>, StoreError>;
    /// Extends `owner`'s lease on a running job; `false` when `owner` no longer holds it.
    async fn heartbeat(
        &self,
        id: i64,
        owner: &str,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Marks a running job `succeeded`, only if `owner` holds it; returns whether it did
    /// (a worker whose lease was taken over cannot complete the job).
    async fn complete(&self, id: i64, owner: &str, now: DateTime<Utc>) -> Result<bool, StoreError>;
    /// Records a failed attempt, only if `owner` holds the job: `queued` again at
    /// `retry_at`, `failed` without one, `dead` when out of attempts. Returns the new
    /// state, `None` when `owner` does not hold the job.
    async fn fail(
        &self,
        id: i64,
        owner: &str,
        failure: &JobFailure,
        now: DateTime<Utc>,
    ) -> Result<Option<JobState>, StoreError>;
    /// Cancels a queued job; returns whether it did (running and finished jobs are left).
    async fn cancel(&self, id: i64, now: DateTime<Utc>) -> Result<bool, StoreError>;
    /// Deletes up to `limit` finished jobs (succeeded, failed, dead, cancelled) last
    /// changed before `finished_before`; returns how many. Their keys may then be used
    /// again.
    async fn prune(&self, finished_before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError>;
    /// A job by id.
    async fn job(&self, id: i64) -> Result<Option<Job>, StoreError>;
    /// A job by key.
    async fn job_by_key(&self, key: &str) -> Result<Option<Job>, StoreError>;
    /// A page of jobs, newest first.
    async fn jobs(&self, query: &JobQuery) -> Result<JobPage, StoreError>;
}

/// Sessions, their messages, runs and run events (see [`crate::run`]). Reads are
/// scoped to a tenant wherever a caller names the object; writes go through a [`Tx`]
/// so that an event, the run's new state and a message commit together.
#[async_trait]
pub trait RunStore: Send + Sync + std::fmt::Debug {
    /// Inserts a session; [`StoreError::Conflict`] if its id exists.
    async fn create_session(&self, session: &Session) -> Result<(), StoreError>;
    /// A session of `tenant`.
    async fn session(&self, tenant: &TenantId, id: &SessionId) -> Result<Option<Session>, StoreError>;
    /// A tenant's sessions, newest first (by creation time, then id), starting after
    /// `before` (a session id from the previous page) when given, at most `limit`.
    async fn sessions(
        &self,
        tenant: &TenantId,
        before: Option<&SessionId>,
        limit: u32,
    ) -> Result<Vec<Session>, StoreError>;
    /// A session's messages with `seq > after`, oldest first, at most `limit`. Empty
    /// when the session is not `tenant`'s.
    async fn messages(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError>;
    /// A run, restricted to `tenant` when given (workers read without one).
    async fn run(&self, tenant: Option<&TenantId>, id: &RunId) -> Result<Option<Run>, StoreError>;
    /// A session's runs, newest first, at most `limit`.
    async fn runs(&self, tenant: &TenantId, session: &SessionId, limit: u32) -> Result<Vec<Run>, StoreError>;
    /// A run's events with `seq > after`, in `seq` order, at most `limit`.
    async fn run_events(&self, run: &RunId, after: i64, limit: u32) -> Result<Vec<RunEvent>, StoreError>;
    /// A session's events (all its runs) with `session_seq > after`, in that order, at
    /// most `limit`.
    async fn session_events(&self, session: &SessionId, after: i64, limit: u32) -> Result<Vec<RunEvent>, StoreError>;
    /// The session's last `session_seq` (0 before its first event).
    async fn session_head(&self, session: &SessionId) -> Result<i64, StoreError>;
    /// Marks a run of `tenant` as asked to cancel, unless it is over; returns the run
    /// as it now stands, `None` when no such run is visible. Idempotent.
    async fn request_cancel(&self, tenant: &TenantId, id: &RunId) -> Result<Option<Run>, StoreError>;
}

/// Living documents and their append-only versions (see [`crate::document`]). Every
/// read is scoped to a tenant: another tenant's document is not found.
#[async_trait]
pub trait DocumentStore: Send + Sync + std::fmt::Debug {
    /// Inserts a document with its first version (version 1), atomically;
    /// [`StoreError::Conflict`] if its id exists, [`StoreError::NotFound`] if its
    /// session is not one of its tenant's.
    async fn create_document(&self, document: &Document, first: &DocumentVersion) -> Result<(), StoreError>;
    /// A document of `tenant`.
    async fn document(&self, tenant: &TenantId, id: &DocumentId) -> Result<Option<Document>, StoreError>;
    /// A tenant's documents in `scope`, newest first (by creation time, then id),
    /// starting after `before` (a document id from the previous page) when given, at
    /// most `limit`.
    async fn documents(
        &self,
        tenant: &TenantId,
        scope: &DocumentScope,
        before: Option<&DocumentId>,
        limit: u32,
    ) -> Result<Vec<Document>, StoreError>;
    /// A document's versions with `version > after`, oldest first, at most `limit`,
    /// without their content. Empty when the document is not `tenant`'s.
    async fn versions(
        &self,
        tenant: &TenantId,
        id: &DocumentId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<VersionSummary>, StoreError>;
    /// One version of a document of `tenant`.
    async fn version(
        &self,
        tenant: &TenantId,
        id: &DocumentId,
        version: i64,
    ) -> Result<Option<DocumentVersion>, StoreError>;
    /// Appends `version` (its number must be `base + 1`) against `base`, in one
    /// transaction: the document's version moves from `base` to `base + 1` together with
    /// the new row, or nothing is written and [`Appended::Stale`] carries the current
    /// version. Of concurrent appends on one base exactly one is written.
    /// [`StoreError::NotFound`] when the document is not `tenant`'s.
    async fn append_version(
        &self,
        tenant: &TenantId,
        base: i64,
        version: &DocumentVersion,
    ) -> Result<Appended, StoreError>;
}

/// Schedules (see [`crate::schedule`]). Reads name the tenant wherever a caller names
/// the schedule; the tick and the fire job read without one.
#[async_trait]
pub trait ScheduleStore: Send + Sync + std::fmt::Debug {
    /// Inserts a schedule; [`StoreError::Conflict`] if its id exists.
    async fn create_schedule(&self, schedule: &Schedule) -> Result<(), StoreError>;
    /// A schedule, restricted to `tenant` when given.
    async fn schedule(&self, tenant: Option<&TenantId>, id: &ScheduleId) -> Result<Option<Schedule>, StoreError>;
    /// A tenant's schedules, newest first, at most `limit`; with `before`, those older
    /// than that schedule of the tenant (none when it is not one).
    async fn schedules(
        &self,
        tenant: &TenantId,
        before: Option<&ScheduleId>,
        limit: u32,
    ) -> Result<Vec<Schedule>, StoreError>;
    /// Pauses a schedule of `tenant` (its `next_fire_at` kept), or resumes it with
    /// `next_fire_at` (fires missed while paused never run). Returns it as it now
    /// stands, `None` when no such schedule is visible.
    async fn set_schedule_paused(
        &self,
        tenant: &TenantId,
        id: &ScheduleId,
        paused: bool,
        next_fire_at: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    ) -> Result<Option<Schedule>, StoreError>;
    /// Deletes a schedule of `tenant` and its fire history; returns whether it existed.
    async fn delete_schedule(&self, tenant: &TenantId, id: &ScheduleId) -> Result<bool, StoreError>;
    /// Schedules not paused whose `next_fire_at` is at or before `now`, soonest first,
    /// at most `limit`.
    async fn due_schedules(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<Schedule>, StoreError>;
    /// A schedule's latest fires, newest first, at most `limit`.
    async fn schedule_fires(&self, id: &ScheduleId, limit: u32) -> Result<Vec<ScheduleFire>, StoreError>;
}

/// A run's events committed up to these positions (what crosses replicas: readers
/// then read the events from the store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventNotice {
    /// The run.
    pub run: RunId,
    /// Its session.
    pub session: SessionId,
    /// The run's last committed `seq`.
    pub seq: i64,
    /// The session's last committed `session_seq` among them.
    pub session_seq: i64,
}

/// Live run events and document changes across replicas: after a run's events commit,
/// the writer signals; every replica listening hears it and wakes the feeds of that run
/// and session, which read from the store. A lost signal costs latency, never an event
/// (feeds also poll). Likewise after a document version commits, so that subscribers on
/// every replica hear of it. Postgres: `NOTIFY` on one channel per kind, one listening
/// connection per replica; SQLite (one replica): nothing to do.
pub trait EventSignal: Send + Sync + std::fmt::Debug {
    /// Signals events committed (never inside a transaction; never blocks: the adapter
    /// sends in the background, coalescing per run).
    fn notify(&self, notice: EventNotice);
    /// Calls `on_notice` for every signal heard from now on (from every replica, this
    /// one included), reconnecting after failures. Called once per process.
    fn listen(&self, on_notice: std::sync::Arc<dyn Fn(EventNotice) + Send + Sync>);
    /// Signals a document version committed (never inside a transaction; never blocks).
    fn notify_document(&self, notice: DocumentNotice);
    /// Calls `on_notice` for every document version another replica signals from now
    /// on (this process announces its own in process), reconnecting after failures.
    /// Called once per process.
    fn listen_documents(&self, on_notice: std::sync::Arc<dyn Fn(DocumentNotice) + Send + Sync>);
    /// Signals a memory edited, updated as a near-duplicate or deleted (never inside a
    /// transaction; never blocks). Adapters without a cross-process signal keep this
    /// default, which does nothing.
    fn notify_memory(&self, _notice: MemoryNotice) {}
    /// Calls `on_notice` for every memory change another replica signals from now on
    /// (this process announces its own in process), reconnecting after failures. Called
    /// once per process. The default hears nothing.
    fn listen_memories(&self, _on_notice: std::sync::Arc<dyn Fn(MemoryNotice) + Send + Sync>) {}
}

/// A memory changed or deleted (what crosses replicas for subscribers of memory
/// changes, such as MCP `resources/updated`: they then read the memory from the store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryNotice {
    /// The memory's tenant.
    pub tenant: TenantId,
    /// The memory.
    pub memory: MemoryId,
}

/// A document version committed (what crosses replicas for subscribers of document
/// changes, such as MCP `resources/updated`: they then read the document from the store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentNotice {
    /// The document's tenant.
    pub tenant: TenantId,
    /// The document.
    pub document: DocumentId,
    /// The version committed.
    pub version: i64,
}

/// Opens units of work: one store transaction through which several ports write.
#[async_trait]
pub trait UnitOfWork: Send + Sync + std::fmt::Debug {
    /// Begins a write transaction (SQLite: `BEGIN IMMEDIATE`, so writers queue instead
    /// of failing on lock upgrade; Postgres: durable commit). Keep a unit short and free
    /// of outside calls: on SQLite it holds the database's write lock until it ends.
    async fn begin(&self) -> Result<Box<dyn Tx>, StoreError>;
}

/// An open unit of work. Nothing written through it is visible to others until
/// [`Tx::commit`]; dropping it without committing rolls everything back.
#[async_trait]
pub trait Tx: Send {
    /// [`LedgerStore::post`] inside this transaction. A refused posting writes nothing
    /// and leaves the transaction usable.
    async fn post(&mut self, posting: &Posting, at: DateTime<Utc>) -> Result<Posted, LedgerError>;
    /// [`JobStore::enqueue`] inside this transaction.
    async fn enqueue(&mut self, job: &NewJob, now: DateTime<Utc>) -> Result<Enqueued, StoreError>;
    /// Appends a message to its session, allocating the next `seq` of the session (the
    /// `seq` passed in is ignored); returns the message as stored.
    async fn insert_message(&mut self, message: &Message) -> Result<Message, StoreError>;
    /// Inserts a run; [`StoreError::Conflict`] if its id exists.
    async fn insert_run(&mut self, run: &Run) -> Result<(), StoreError>;
    /// Writes a run's state, totals, error and timestamps (not `cancel_requested`, which
    /// only [`RunStore::request_cancel`] sets, nor `last_seq`, which appends keep).
    async fn update_run(&mut self, run: &Run) -> Result<(), StoreError>;
    /// Appends an event, allocating the next `seq` of its run and `session_seq` of its
    /// session in this transaction (dense under any concurrency: the run's and the
    /// session's rows are locked until commit); returns the event as stored.
    async fn append_event(&mut self, event: &NewEvent) -> Result<RunEvent, StoreError>;
    /// Inserts a session (a schedule's fire into a new session from its template);
    /// [`StoreError::Conflict`] if its id exists.
    async fn insert_session(&mut self, session: &Session) -> Result<(), StoreError>;
    /// Moves a schedule's `next_fire_at` from `from` to `to`, only if it is still `from`
    /// and the schedule is not paused (compare-and-set: of replicas ticking together,
    /// one advances it). Returns whether it did.
    async fn advance_schedule(
        &mut self,
        id: &ScheduleId,
        from: DateTime<Utc>,
        to: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Records a fire once; returns whether this call recorded it (`false`: the fire
    /// already posted). [`StoreError::NotFound`] when the schedule was deleted.
    async fn record_fire(&mut self, fire: &ScheduleFire) -> Result<bool, StoreError>;
    /// Makes everything written through this transaction durable and visible.
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;
    /// Discards everything written through this transaction.
    async fn rollback(self: Box<Self>) -> Result<(), StoreError>;
    /// [`Tx::update_run`] only if the run is in state `expected` (compare-and-set: of
    /// concurrent writers, one wins); returns whether it was written.
    async fn update_run_if(&mut self, run: &Run, expected: RunState) -> Result<bool, StoreError>;
    /// Records a change for the search index in this transaction (messages and
    /// document versions record theirs as they are written; other kinds call this).
    async fn record_search_change(&mut self, change: &SearchChange) -> Result<(), StoreError>;
}

/// What readiness asks of a backend.
#[async_trait]
pub trait StoreProbe: Send + Sync + std::fmt::Debug {
    /// The backend's name (`sqlite`, `postgres`), for logs and `/readyz`.
    fn backend(&self) -> &'static str;
    /// Checks that the store answers.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// What the account use-cases hold: tenants, keys, and the probe readiness asks (every
/// request authenticates through them, so they answer for the store).
pub trait AccountStore: TenantStore + KeyStore + StoreProbe {}

impl<T: TenantStore + KeyStore + StoreProbe> AccountStore for T {}

/// The whole backend: every port. Only the composition root and tests hold it; they
/// hand each use-case the ports it needs (`Arc<dyn Store>` coerces to `Arc<dyn Port>`).
pub trait Store:
    AccountStore
    + LedgerStore
    + BillingStore
    + JobStore
    + RunStore
    + DocumentStore
    + UnitOfWork
    + ScheduleStore
    + EventSignal
    + ArtifactStore
    + MemoryStore
    + SearchStore
    + PassageStore
    + LeaseStore
{
}

impl<
    T: AccountStore
        + LedgerStore
        + BillingStore
        + JobStore
        + RunStore
        + DocumentStore
        + UnitOfWork
        + ScheduleStore
        + EventSignal
        + ArtifactStore
        + MemoryStore
        + SearchStore
        + PassageStore
        + LeaseStore,
> Store for T
{
}

/// Leases: named work that one replica does at a time (the passage follower). A holder
/// renews its lease before it expires; the others stand by and take it over once it has
/// expired or was released. Times are the callers' clocks, so a lease's lifetime must
/// dwarf the replicas' clock skew.
#[async_trait]
pub trait LeaseStore: Send + Sync + std::fmt::Debug {
    /// Takes or renews lease `name` for `holder` until `until`, when it is free, expired
    /// at `now`, or already `holder`'s; returns whether `holder` holds it now. Of
    /// concurrent takers of a free lease, one gets it.
    async fn take_lease(
        &self,
        name: &str,
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Ends `holder`'s lease `name` at `now` (nothing when another holds it), so another
    /// replica takes it over at once.
    async fn release_lease(&self, name: &str, holder: &str, now: DateTime<Utc>) -> Result<(), StoreError>;
}

/// The time source. Injected so that tests can move time (e.g. past a key's expiry)
/// without sleeping.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time, truncated to milliseconds (what both stores keep exactly).
    fn now(&self) -> DateTime<Utc>;
}

/// Artifacts' metadata: one row per tenant and digest (the bytes are in a
/// [`BlobStore`], shared). Rows never change once written.
#[async_trait]
pub trait ArtifactStore: Send + Sync + std::fmt::Debug {
    /// Records `artifact` unless its tenant already has a row for its digest; returns the
    /// row now stored (the earlier one when there was one).
    async fn insert_artifact(&self, artifact: &Artifact) -> Result<Artifact, StoreError>;
    /// A tenant's artifact by digest (`None` for another tenant's).
    async fn artifact(&self, tenant: &TenantId, sha256: &Sha256) -> Result<Option<Artifact>, StoreError>;
    /// The artifact a tenant already has for this export of a document version, if any.
    async fn find_export(&self, tenant: &TenantId, origin: &ExportOrigin) -> Result<Option<Artifact>, StoreError>;
}

/// Content-addressed bytes: written once under their SHA-256, read back verified. An
/// adapter never exposes a half-written blob.
#[async_trait]
pub trait BlobStore: Send + Sync + std::fmt::Debug {
    /// Which store this is (`disk`, `s3`), for logs.
    fn kind(&self) -> &'static str;
    /// Stores `bytes` under `sha256` (their digest, which the caller computed). Storing
    /// bytes that are already there is a no-op.
    async fn put(&self, sha256: &Sha256, bytes: Vec<u8>) -> Result<(), BlobError>;
    /// The bytes under `sha256`, `None` when there are none; [`BlobError::Corrupt`] when
    /// they do not hash to it.
    async fn get(&self, sha256: &Sha256) -> Result<Option<Vec<u8>>, BlobError>;
}

/// A memory whose vector another embedder made, to re-embed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleMemory {
    /// The memory.
    pub id: crate::memory::MemoryId,
    /// Its text as it was read (the new vector replaces the old one only while the text
    /// is still this).
    pub text: String,
}

/// Memories and their vectors (see [`crate::memory`]). Every read and write a caller
/// names is scoped to a tenant: another tenant's memory is not found. Searches compare
/// only vectors of the query's embedder.
#[async_trait]
pub trait MemoryStore: Send + Sync + std::fmt::Debug {
    /// Inserts memories with their vectors, in one transaction (all or none);
    /// [`StoreError::Conflict`] if an id exists, [`StoreError::NotFound`] if a
    /// session-scoped memory's session is not its tenant's.
    async fn insert_memories(&self, memories: &[(Memory, Vec<f32>)]) -> Result<(), StoreError>;
    /// A memory of `tenant`.
    async fn memory(&self, tenant: &TenantId, id: &MemoryId) -> Result<Option<Memory>, StoreError>;
    /// Applies `patch` to a memory of `tenant` at `at` (a new text replaces the vector
    /// and its embedder too); returns it as it now stands, `None` when not visible.
    async fn update_memory(
        &self,
        tenant: &TenantId,
        id: &MemoryId,
        patch: &MemoryPatch,
        at: DateTime<Utc>,
    ) -> Result<Option<Memory>, StoreError>;
    /// Deletes a memory of `tenant`; returns whether it existed.
    async fn delete_memory(&self, tenant: &TenantId, id: &MemoryId) -> Result<bool, StoreError>;
    /// A tenant's memories passing `filter`, newest first (by creation time, then id),
    /// after the cursor `before` (a memory id of the previous page), at most `limit`.
    async fn memories(
        &self,
        tenant: &TenantId,
        filter: &MemoryFilter,
        before: Option<&MemoryId>,
        limit: u32,
    ) -> Result<Vec<Memory>, StoreError>;
    /// The `k` memories of `tenant` passing `filter` whose vectors (made by `embedder`)
    /// are nearest to `query` (unit length) by inner product, nearest first. Postgres
    /// searches its HNSW index with an iterative scan (a small tenant exactly); SQLite
    /// scans exactly.
    async fn search_memories(
        &self,
        tenant: &TenantId,
        embedder: &EmbedderInfo,
        query: &[f32],
        filter: &MemoryFilter,
        k: u32,
    ) -> Result<Vec<MemoryHit>, StoreError>;
    /// Notes that a search returned these memories of `tenant` at `at`.
    async fn touch_memories(&self, tenant: &TenantId, ids: &[MemoryId], at: DateTime<Utc>) -> Result<(), StoreError>;
    /// Up to `limit` memories (of any tenant) whose vectors another embedder than
    /// `current` made.
    async fn stale_memories(&self, current: &EmbedderInfo, limit: u32) -> Result<Vec<StaleMemory>, StoreError>;
    /// Replaces a memory's vector with one `embedder` made from `stale.text`, only if
    /// its text is still that; returns whether it did.
    async fn replace_vector(
        &self,
        stale: &StaleMemory,
        vector: &[f32],
        embedder: &EmbedderInfo,
    ) -> Result<bool, StoreError>;
    /// Remembers `memory` (with its `vector`, made by `memory.embedder`) unless a memory
    /// of its tenant passing `same_scope` is at least `min_score` near it by inner
    /// product: then the nearest such one gets `restate(it)` at `memory.updated_at`
    /// instead. The search and the write are one step against every other call for the
    /// same tenant and scope, in any replica (Postgres: a transaction-scoped advisory
    /// lock on the tenant and scope, taken before the search; SQLite: the write
    /// transaction checks that no write to the tenant's memories came between the search
    /// and itself, else searches again), so concurrent restatements of one fact end as
    /// one memory. Returns the memory as stored and whether an existing one was updated;
    /// [`StoreError::NotFound`] if a session-scoped memory's session is not its tenant's.
    async fn remember_memory(
        &self,
        memory: &Memory,
        vector: &[f32],
        same_scope: &MemoryFilter,
        min_score: f32,
        restate: &(dyn for<'m> Fn(&'m Memory) -> MemoryPatch + Send + Sync),
    ) -> Result<(Memory, bool), StoreError>;
    /// The distillation answer recorded for `run`, if any.
    async fn distillation(&self, run: &RunId) -> Result<Option<Distillation>, StoreError>;
    /// Records `distillation` unless its run has one already; returns the one stored
    /// (the earlier one when there was one). Records never change.
    async fn record_distillation(&self, distillation: &Distillation) -> Result<Distillation, StoreError>;
}

/// A completed run's distillation answer, recorded before any of its facts is written
/// (see `distil.rs` in the host): a retry reuses it rather than asking the model again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Distillation {
    /// The run distilled.
    pub run: RunId,
    /// Its tenant.
    pub tenant: TenantId,
    /// The model's answer, as it came.
    pub answer: String,
    /// The hold the call was paid from and the amount it settles for (`None`: the call
    /// cost nothing).
    pub charge: Option<(crate::ledger::HoldId, i64)>,
    /// When it was recorded.
    pub at: DateTime<Utc>,
}

/// The search outbox and the indexed objects' current content (see [`crate::search`]),
/// read by each replica's full-text index. Reads here are not tenant-scoped: the index
/// keeps every tenant's objects, each tagged with its tenant, and every query filters
/// on it.
#[async_trait]
pub trait SearchStore: Send + Sync + std::fmt::Debug {
    /// Settled outbox rows after `after`, in position order, at most `limit`. A row is
    /// settled when no transaction that could still write before it is open, so a row
    /// read here is never preceded later by one not yet seen.
    async fn outbox_after(&self, after: OutboxPosition, limit: u32) -> Result<Vec<OutboxEntry>, StoreError>;
    /// The outbox as a follower at `after` sees it.
    async fn outbox_status(&self, after: OutboxPosition) -> Result<OutboxStatus, StoreError>;
    /// A position through which every change has settled now: an index rebuilt from
    /// the tables read after this call, then following the outbox from here, misses
    /// nothing.
    async fn outbox_settled(&self) -> Result<OutboxPosition, StoreError>;
    /// Deletes settled outbox rows written before `before`, and records the last
    /// position deleted; returns how many.
    async fn prune_outbox(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;
    /// The current content of objects of one kind by id, of any tenant; ids with no
    /// such object are left out (deleted: the index drops them).
    async fn searchables(&self, kind: SearchKind, ids: &[String]) -> Result<Vec<Searchable>, StoreError>;
    /// Every object of one kind, of every tenant, by id, after `after` (an id from
    /// the previous page), at most `limit`: what a rebuild reads.
    async fn searchable_page(
        &self,
        kind: SearchKind,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Searchable>, StoreError>;
}

/// Passages of messages and documents with their vectors (see [`crate::passage`]).
/// Searches are scoped to a tenant and compare only vectors of the query's embedder.
#[async_trait]
pub trait PassageStore: Send + Sync + std::fmt::Debug {
    /// The `k` passages of `tenant` passing `filter` whose vectors (made by `embedder`)
    /// are nearest to `query` (unit length) by inner product, nearest first.
    async fn search_passages(
        &self,
        tenant: &TenantId,
        embedder: &EmbedderInfo,
        query: &[f32],
        filter: &crate::passage::PassageFilter,
        k: u32,
    ) -> Result<Vec<crate::passage::PassageHit>, StoreError>;
    /// Where the passages stand against the search outbox (the one follower position
    /// every replica shares, and the outbox's pruning).
    async fn passage_follower(&self) -> Result<crate::passage::FollowerState, StoreError>;
    /// The stored passages of objects of one kind (of any tenant) by id, with their
    /// vectors, ordered by object and chunk.
    async fn stored_passages(
        &self,
        kind: SearchKind,
        ids: &[String],
    ) -> Result<Vec<crate::passage::StoredPassage>, StoreError>;
    /// The ids of objects of one kind that have passages, after `after` and up to and
    /// including `through` (`None`: no bound), in the store's id order: what a reconcile
    /// compares with a page of [`SearchStore::searchable_page`] to find passages of
    /// objects that are gone.
    async fn passage_objects_between(
        &self,
        kind: SearchKind,
        after: Option<&str>,
        through: Option<&str>,
    ) -> Result<Vec<String>, StoreError>;
    /// Applies `write` in one transaction (see [`crate::passage::PassageWrite`]);
    /// `false`: refused, nothing written (the position moved, or pruning passed it).
    async fn write_passages(&self, write: &crate::passage::PassageWrite) -> Result<bool, StoreError>;
    /// Whether any passage's vector was made by another embedder than `current`.
    async fn has_stale_passages(&self, current: &EmbedderInfo) -> Result<bool, StoreError>;
}
