//! Tenants and API keys: the use-cases behind both the CLI and the HTTP API.
//!
//! Holds only ports (`Arc<dyn AccountStore>`: tenants and keys; `Arc<dyn Clock>`), never
//! adapter types.
//!
//! Authentication keeps a bounded cache of the stored keys it read, by lookup prefix
//! (`KeyCache`, bounded by [`KeyCacheSettings`]): a hit still checks the presented token against the stored hash in
//! constant time, and the key's revocation and expiry against the clock, so the cache
//! holds what the store said about a key, never "this string is valid". An entry is
//! trusted only while the store's key generation
//! ([`maestro_core::KeyStore::key_generation`]) is the one it was read under, and for
//! at most its time to live; a prefix with no key is never cached.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use maestro_core::auth::KeyState;
use maestro_core::{
    AccountStore, ApiKey, Caller, Clock, KeyId, KeyScope, KeyToken, StoreError, Tenant, TenantId, TenantName,
    TenantNameError,
};

use crate::random::random_bytes;

/// Why an accounts operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    /// The tenant name is not acceptable.
    #[error(transparent)]
    InvalidName(#[from] TenantNameError),
    /// No tenant by that name (or id).
    #[error("tenant `{0}` not found")]
    TenantNotFound(String),
    /// No key with that id is visible to the caller.
    #[error("key `{0}` not found")]
    KeyNotFound(String),
    /// A tenant with that name exists already.
    #[error("tenant `{0}` already exists")]
    TenantExists(String),
    /// The requested expiry is not in the future.
    #[error("expiry {0} is not in the future")]
    ExpiryInPast(DateTime<Utc>),
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for AccountsError {
    fn from(err: StoreError) -> Self {
        Self::Store(err)
    }
}

/// Why a bearer token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("missing bearer token")]
    Missing,
    /// Not a Maestro key, or no such key.
    #[error("invalid api key")]
    Invalid,
    /// Revoked or expired.
    #[error(transparent)]
    Inactive(#[from] KeyState),
}

/// A key that was just created, with its token (shown once, never stored).
#[derive(Debug)]
pub struct IssuedKey {
    /// The stored record.
    pub key: ApiKey,
    /// The secret token.
    pub token: KeyToken,
}

/// What the first start did about the platform-admin key.
#[derive(Debug)]
pub enum Bootstrap {
    /// The store already had keys (or was bootstrapped before): nothing done.
    AlreadyDone,
    /// Registered the operator's `MAESTRO_ADMIN_KEY`.
    RegisteredConfiguredKey(ApiKey),
    /// Generated a key; its token must be shown to the operator once.
    Generated(IssuedKey),
}

/// Tenant and key management.
#[derive(Debug, Clone)]
pub struct Accounts {
    store: Arc<dyn AccountStore>,
    clock: Arc<dyn Clock>,
    /// Tenant names never change, so they are cached after the first lookup.
    tenant_names: Arc<std::sync::RwLock<std::collections::HashMap<TenantId, TenantName>>>,
    /// Keys read by authentication (shared by clones).
    keys: Arc<KeyCache>,
}

impl Accounts {
    /// Builds the use-cases over the tenant and key ports and a clock, with the default
    /// key cache ([`KeyCacheSettings::default`]).
    pub fn new(store: Arc<dyn AccountStore>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock, tenant_names: Arc::default(), keys: Arc::new(KeyCache::new(KeyCacheSettings::default())) }
    }

    /// The same use-cases with a key cache of these settings (an empty one).
    pub fn with_key_cache(mut self, settings: KeyCacheSettings) -> Self {
        self.keys = Arc::new(KeyCache::new(settings));
        self
    }

    /// How many keys the authentication cache holds now.
    pub fn cached_keys(&self) -> usize {
        self.keys.len()
    }

    /// The name of a tenant (cached).
    pub async fn tenant_name(&self, id: &TenantId) -> Result<TenantName, AccountsError> {
        if let Some(name) = self.tenant_names.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(id) {
            return Ok(name.clone());
        }
        let tenant = self.store.tenant(id).await?.ok_or_else(|| AccountsError::TenantNotFound(id.to_string()))?;
        self.tenant_names
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(tenant.id, tenant.name.clone());
        Ok(tenant.name)
    }

    /// The tenant and key store (readiness pings it).
    pub fn store(&self) -> &Arc<dyn AccountStore> {
        &self.store
    }

    /// The current time according to the injected clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Creates a tenant.
    pub async fn create_tenant(&self, name: &str) -> Result<Tenant, AccountsError> {
        let name = TenantName::parse(name)?;
        let tenant = Tenant { id: TenantId::from_random(random_bytes()), name, created_at: self.clock.now() };
        match self.store.create_tenant(&tenant).await {
            Err(StoreError::Conflict(_)) => Err(AccountsError::TenantExists(tenant.name.to_string())),
            other => other.map(|()| tenant).map_err(AccountsError::from),
        }
    }

    /// All tenants, oldest first.
    pub async fn list_tenants(&self) -> Result<Vec<Tenant>, AccountsError> {
        Ok(self.store.list_tenants().await?)
    }

    /// A tenant by name.
    pub async fn tenant_named(&self, name: &str) -> Result<Tenant, AccountsError> {
        let parsed = TenantName::parse(name).map_err(|_| AccountsError::TenantNotFound(name.to_owned()))?;
        self.store.tenant_by_name(&parsed).await?.ok_or_else(|| AccountsError::TenantNotFound(name.to_owned()))
    }

    /// Creates a key with a fresh token. `expires_at` must be in the future.
    pub async fn create_key(
        &self,
        scope: KeyScope,
        name: String,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<IssuedKey, AccountsError> {
        let now = self.clock.now();
        if let Some(at) = expires_at.filter(|at| *at <= now) {
            return Err(AccountsError::ExpiryInPast(at));
        }
        // A lookup-prefix collision (1 in 62^8 per existing key) just draws again.
        let mut attempts = 0;
        loop {
            let token = KeyToken::from_random(random_bytes());
            let key =
                ApiKey::issue(KeyId::from_random(random_bytes()), scope.clone(), name.clone(), &token, now, expires_at);
            match self.store.insert_key(&key).await {
                Ok(()) => return Ok(IssuedKey { key, token }),
                Err(StoreError::Conflict(_)) if attempts < 3 => attempts += 1,
                Err(StoreError::NotFound(_)) => {
                    let tenant = scope.tenant_id().map_or_else(String::new, ToString::to_string);
                    return Err(AccountsError::TenantNotFound(tenant));
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Keys of one tenant, or all keys.
    pub async fn list_keys(&self, tenant: Option<&TenantId>) -> Result<Vec<ApiKey>, AccountsError> {
        Ok(self.store.list_keys(tenant).await?)
    }

    /// Revokes a key, restricted to `tenant` when given (a tenant admin cannot even
    /// learn that another tenant's key exists).
    pub async fn revoke_key(&self, id: &str, tenant: Option<&TenantId>) -> Result<ApiKey, AccountsError> {
        let not_found = || AccountsError::KeyNotFound(id.chars().take(64).collect());
        let key_id = KeyId::parse(id).map_err(|_| not_found())?;
        let revoked = self.store.revoke_key(&key_id, tenant, self.clock.now()).await;
        // The store announces the write to every process; this one need not even wait.
        self.keys.clear();
        match revoked {
            Err(StoreError::NotFound(_)) => Err(not_found()),
            other => Ok(other?),
        }
    }

    /// Resolves the caller behind a bearer token, separating "not accepted" (inner
    /// error) from a store failure (outer error) so that HTTP can answer 401 or 503.
    pub async fn authenticate(&self, bearer: Option<&str>) -> Result<Result<Caller, AuthError>, StoreError> {
        let Some(bearer) = bearer else {
            return Ok(Err(AuthError::Missing));
        };
        let Ok(token) = KeyToken::parse(bearer) else {
            return Ok(Err(AuthError::Invalid));
        };
        let prefix = token.lookup_prefix();
        // Read before the store, so that a key write committed after the store's read
        // moves it away from the value the entry is filed under.
        let generation = self.store.key_generation();
        let now = self.clock.now();
        let cached = generation.and_then(|generation| self.keys.get(prefix, generation, now));
        let key = match cached {
            Some(key) => key,
            None => {
                let Some(key) = self.store.key_by_prefix(prefix).await? else {
                    return Ok(Err(AuthError::Invalid));
                };
                let key = Arc::new(key);
                if let Some(generation) = generation {
                    self.keys.insert(key.clone(), generation, now);
                }
                key
            }
        };
        Ok(match key.verify(&token, now) {
            None => Err(AuthError::Invalid),
            Some(Err(state)) => Err(AuthError::Inactive(state)),
            Some(Ok(())) => Ok(Caller { key_id: key.id.clone(), scope: key.scope.clone() }),
        })
    }

    /// On a store that has never had a key, creates the first platform-admin key: the
    /// configured one if given, else a generated one whose token the caller must show.
    pub async fn bootstrap(&self, configured: Option<&KeyToken>) -> Result<Bootstrap, AccountsError> {
        let generated = configured.is_none().then(|| KeyToken::from_random(random_bytes()));
        let token = configured.or(generated.as_ref()).expect("one of configured and generated is set");
        let name = if configured.is_some() { "bootstrap (MAESTRO_ADMIN_KEY)" } else { "bootstrap" };
        let key = ApiKey::issue(
            KeyId::from_random(random_bytes()),
            KeyScope::Platform,
            name.to_owned(),
            token,
            self.clock.now(),
            None,
        );
        if !self.store.insert_bootstrap_key(&key).await? {
            return Ok(Bootstrap::AlreadyDone);
        }
        Ok(match generated {
            Some(token) => Bootstrap::Generated(IssuedKey { key, token }),
            None => Bootstrap::RegisteredConfiguredKey(key),
        })
    }
}

/// The bounds of the authentication key cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyCacheSettings {
    /// The most keys held; past it, inserting evicts an arbitrary entry. `0` turns the
    /// cache off.
    pub entries: usize,
    /// How long an entry is trusted at most, whatever the store's key generation says:
    /// the backstop for a key change whose announcement was lost (a process that died
    /// between its commit and its announcement, a Postgres notice lost on a connection
    /// not yet known to be broken, an edit made outside Maestro).
    pub ttl: std::time::Duration,
}

impl Default for KeyCacheSettings {
    fn default() -> Self {
        Self { entries: 10_000, ttl: std::time::Duration::from_secs(5) }
    }
}

/// Stored keys by lookup prefix, all read under one key generation of the store.
#[derive(Debug)]
struct KeyCache {
    settings: KeyCacheSettings,
    inner: std::sync::Mutex<CacheInner>,
}

#[derive(Debug, Default)]
struct CacheInner {
    /// The store's key generation every entry was read under.
    generation: Option<u64>,
    keys: std::collections::HashMap<String, CachedKey>,
}

#[derive(Debug)]
struct CachedKey {
    key: Arc<ApiKey>,
    read_at: DateTime<Utc>,
}

impl KeyCache {
    fn new(settings: KeyCacheSettings) -> Self {
        Self { settings, inner: std::sync::Mutex::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The key filed under `prefix`, if it was read under `generation` less than the
    /// time to live before `now`. A new generation empties the cache.
    fn get(&self, prefix: &str, generation: u64, now: DateTime<Utc>) -> Option<Arc<ApiKey>> {
        let mut inner = self.lock();
        if inner.generation != Some(generation) {
            inner.keys.clear();
            inner.generation = Some(generation);
            return None;
        }
        let entry = inner.keys.get(prefix)?;
        let age = now.signed_duration_since(entry.read_at).to_std().ok();
        // A clock that went back, or an entry past its time to live, is read again.
        if age.is_none_or(|age| age >= self.settings.ttl) {
            inner.keys.remove(prefix);
            return None;
        }
        Some(entry.key.clone())
    }

    /// Files a key read from the store under `generation` (read before the store was).
    fn insert(&self, key: Arc<ApiKey>, generation: u64, now: DateTime<Utc>) {
        if self.settings.entries == 0 || self.settings.ttl.is_zero() {
            return;
        }
        let mut inner = self.lock();
        if inner.generation != Some(generation) {
            // Whichever is newer, entries of two generations never mix: the next `get`
            // compares the store's generation with this one again.
            inner.keys.clear();
            inner.generation = Some(generation);
        }
        if inner.keys.len() >= self.settings.entries && !inner.keys.contains_key(&key.prefix) {
            // The map's iteration order is seeded per process: an arbitrary victim.
            if let Some(victim) = inner.keys.keys().next().cloned() {
                inner.keys.remove(&victim);
            }
        }
        inner.keys.insert(key.prefix.clone(), CachedKey { key, read_at: now });
    }

    fn clear(&self) {
        let mut inner = self.lock();
        inner.keys.clear();
        inner.generation = None;
    }

    fn len(&self) -> usize {
        self.lock().keys.len()
    }
}

/// The wall clock, truncated to milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        let now = Utc::now();
        DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
    }
}

/// Longest accepted key name.
pub const MAX_KEY_NAME: usize = 100;

/// Validates a key's label: at most [`MAX_KEY_NAME`] characters, no control characters.
pub fn validate_key_name(name: &str) -> Result<String, String> {
    let name = name.trim();
    if name.chars().count() > MAX_KEY_NAME {
        return Err(format!("key name must be at most {MAX_KEY_NAME} characters"));
    }
    if name.chars().any(char::is_control) {
        return Err("key name must not contain control characters".to_owned());
    }
    Ok(name.to_owned())
}

/// `now` plus a human duration such as `30d`, `12h`, `90m` or `1y` (at most 10 years).
pub fn expiry_after(now: DateTime<Utc>, text: &str) -> Result<DateTime<Utc>, String> {
    const MAX: std::time::Duration = std::time::Duration::from_secs(10 * 366 * 24 * 3600);
    let duration = humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration `{text}`: {e} (examples: 30d, 12h, 90m)"))?;
    if duration.is_zero() || duration > MAX {
        return Err(format!("duration `{text}` must be more than zero and at most 10 years"));
    }
    let duration = chrono::Duration::from_std(duration).map_err(|e| e.to_string())?;
    now.checked_add_signed(duration).ok_or_else(|| format!("duration `{text}` is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_accepts_human_durations_and_rejects_nonsense() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).expect("valid");
        assert_eq!(expiry_after(now, "30d"), Ok(now + chrono::Duration::days(30)));
        assert_eq!(expiry_after(now, "90m"), Ok(now + chrono::Duration::minutes(90)));
        for bad in ["", "0s", "soon", "-5d", "11y", "99999999999999999999d"] {
            assert!(expiry_after(now, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn key_names_are_bounded_and_printable() {
        assert_eq!(validate_key_name("  ci bot "), Ok("ci bot".to_owned()));
        assert!(validate_key_name(&"x".repeat(101)).is_err());
        assert!(validate_key_name("a\nb").is_err());
    }
}
