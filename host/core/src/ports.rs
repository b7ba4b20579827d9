//! Ports: the traits that storage (and later other) adapters implement.
//!
//! Each area of the domain gets its own trait (`TenantStore`, `KeyStore`, and in later
//! capabilities ledger, documents, runs…); [`Store`] bundles them so the composition
//! root hands one `Arc<dyn Store>` to the use-cases. Every adapter must pass the one
//! conformance suite in `host/tests/it/storage.rs`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::auth::ApiKey;
use crate::id::{KeyId, TenantId};
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
pub trait TenantStore: Send + Sync {
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
pub trait KeyStore: Send + Sync {
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
}

/// Everything the host persists.
#[async_trait]
pub trait Store: TenantStore + KeyStore + std::fmt::Debug {
    /// The backend's name (`sqlite`, `postgres`), for logs and `/readyz`.
    fn backend(&self) -> &'static str;
    /// Checks that the store answers.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// The time source. Injected so that tests can move time (e.g. past a key's expiry)
/// without sleeping.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time, truncated to milliseconds (what both stores keep exactly).
    fn now(&self) -> DateTime<Utc>;
}
