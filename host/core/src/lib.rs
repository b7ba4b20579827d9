//! Maestro's pure domain.
//!
//! This crate holds the types every part of Maestro agrees on — identifiers, tenants,
//! roles, API keys, policies — and the *ports* (traits) that adapters in `maestro-host`
//! implement. It performs no I/O and depends on no runtime, web, database or WASM
//! library: a test of anything in here runs in microseconds and needs nothing from the
//! machine.
#![forbid(unsafe_code)]

pub mod artifact;
pub mod auth;
pub mod billing;
pub mod call;
pub mod document;
pub mod embed;
pub mod id;
pub mod jobs;
pub mod ledger;
pub mod llm;
pub mod memory;
pub mod net;
pub mod passage;
pub mod plugin;
pub mod policy;
pub mod ports;
pub mod retrieval;
pub mod run;
pub mod schedule;
pub mod search;
pub mod tenant;

pub use auth::{AccessError, ApiKey, Caller, KeyScope, KeyState, KeyToken, Role, RoleError, TokenError};
pub use id::{Id, IdError};
pub use id::{KeyId, TenantId};
pub use jobs::{Enqueued, InvalidJob, Job, JobFailure, JobPage, JobQuery, JobState, NewJob};
pub use ledger::{
    Account, AuditReport, Balance, Hold, HoldId, HoldState, IdempotencyKey, LedgerError, Posted, Posting, Transaction,
    TransactionId, TransactionKind, TransactionPage, TransactionQuery,
};
pub use policy::{Decision, Limits, PolicyError, PolicyErrors, PolicySet, Subject};
pub use ports::SearchStore;
pub use ports::{
    AccountStore, Clock, DocumentStore, JobStore, KeyStore, LedgerStore, RunStore, Store, StoreError, StoreProbe,
    TenantStore, Tx, UnitOfWork,
};
pub use ports::{DocumentNotice, EventNotice, EventSignal, MemoryNotice, ScheduleStore};
pub use tenant::{Tenant, TenantName, TenantNameError};
