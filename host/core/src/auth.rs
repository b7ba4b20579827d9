//! Callers, roles and API keys.
//!
//! A caller is resolved from a bearer token. Tokens look like `mk_` followed by 40
//! base-62 characters; the first eight of those form a public *lookup prefix* (shown in
//! listings as `mk_AbC12xYz`) and the whole token is stored only as a SHA-256 hash. The
//! tokens carry ~238 bits of entropy, so a plain hash is the right tool (a slow password
//! hash would only add latency to every request). Verification compares hashes in
//! constant time.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::id::{KeyId, TenantId};

/// A role within a tenant. Ordered: an `admin` may do whatever a `member` may, and a
/// `member` whatever a `viewer` may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads what the tenant has.
    Viewer,
    /// Uses tools and runs agents.
    Member,
    /// Manages the tenant's keys and settings.
    Admin,
}

/// An unknown role name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role `{0}`: expected admin, member or viewer")]
pub struct RoleError(pub String);

impl Role {
    /// Every role, highest first.
    pub const ALL: [Role; 3] = [Role::Admin, Role::Member, Role::Viewer];

    /// The role's name as written in policies, the CLI and storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Viewer => "viewer",
        }
    }

    /// Whether this role carries at least the rights of `required`.
    pub fn includes(self, required: Role) -> bool {
        self >= required
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = RoleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| RoleError(s.to_owned()))
    }
}

/// What a key may act on: the whole platform, or one tenant with a role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "scope", rename_all = "snake_case")]
pub enum KeyScope {
    /// Cross-tenant administration (creating tenants, managing any tenant's keys).
    Platform,
    /// A key of one tenant.
    Tenant {
        /// The tenant the key belongs to.
        tenant_id: TenantId,
        /// The key's role within that tenant.
        role: Role,
    },
}

impl KeyScope {
    /// The tenant of a tenant-scoped key.
    pub fn tenant_id(&self) -> Option<&TenantId> {
        match self {
            KeyScope::Platform => None,
            KeyScope::Tenant { tenant_id, .. } => Some(tenant_id),
        }
    }
}

/// Who is making a request, once their token has been verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key that authenticated the request.
    pub key_id: KeyId,
    /// What that key may act on.
    pub scope: KeyScope,
}

/// Why a caller may not do something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// The action needs a platform-admin key.
    #[error("this action needs a platform-admin key")]
    NeedsPlatformAdmin,
    /// The caller's role within its tenant is too low.
    #[error("this action needs the {required} role, the key has {actual}")]
    RoleTooLow {
        /// The role the action needs.
        required: Role,
        /// The role the key has.
        actual: Role,
    },
}

impl Caller {
    /// Whether this caller is a platform administrator.
    pub fn is_platform_admin(&self) -> bool {
        matches!(self.scope, KeyScope::Platform)
    }

    /// Requires a platform-admin key.
    pub fn require_platform_admin(&self) -> Result<(), AccessError> {
        if self.is_platform_admin() { Ok(()) } else { Err(AccessError::NeedsPlatformAdmin) }
    }

    /// Requires at least `required` within the caller's tenant. A platform admin passes
    /// and gets `None` (it acts on whichever tenant the request names); a tenant key gets
    /// its own tenant, which callers must use to scope everything they touch.
    pub fn require_role(&self, required: Role) -> Result<Option<&TenantId>, AccessError> {
        match &self.scope {
            KeyScope::Platform => Ok(None),
            KeyScope::Tenant { tenant_id, role } if role.includes(required) => Ok(Some(tenant_id)),
            KeyScope::Tenant { role, .. } => Err(AccessError::RoleTooLow { required, actual: *role }),
        }
    }
}

/// A stored API key (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Identifier used to list and revoke the key.
    pub id: KeyId,
    /// What the key may act on.
    pub scope: KeyScope,
    /// Free-form label chosen at creation.
    pub name: String,
    /// Public lookup prefix (the 8 characters after `mk_`).
    pub prefix: String,
    /// SHA-256 of the whole token.
    pub hash: [u8; 32],
    /// When the key was created.
    pub created_at: DateTime<Utc>,
    /// When the key stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When the key was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Why a stored key does not authenticate a request right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyState {
    /// Revoked by an administrator.
    #[error("the key was revoked")]
    Revoked,
    /// Past its expiry time.
    #[error("the key has expired")]
    Expired,
}

impl ApiKey {
    /// The record for a freshly generated `token`; the token itself is not kept.
    pub fn issue(
        id: KeyId,
        scope: KeyScope,
        name: String,
        token: &KeyToken,
        created_at: DateTime<Utc>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Self {
        Self {
            id,
            scope,
            name,
            prefix: token.lookup_prefix().to_owned(),
            hash: token.hash(),
            created_at,
            expires_at,
            revoked_at: None,
        }
    }

    /// Checks `token` against this key's hash (constant time) and the key's validity at
    /// `now`. Returns `None` when the token does not match at all.
    pub fn verify(&self, token: &KeyToken, now: DateTime<Utc>) -> Option<Result<(), KeyState>> {
        if !bool::from(token.hash().ct_eq(&self.hash)) {
            return None;
        }
        if self.revoked_at.is_some() {
            return Some(Err(KeyState::Revoked));
        }
        if self.expires_at.is_some_and(|at| at <= now) {
            return Some(Err(KeyState::Expired));
        }
        Some(Ok(()))
    }

    /// The prefix as shown to people: `mk_` and the lookup prefix.
    pub fn display_prefix(&self) -> String {
        format!("{}{}", KeyToken::MARKER, self.prefix)
    }
}

/// A bearer token (`mk_…`). Its `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyToken(String);

/// Why a string is not a Maestro key token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Does not start with `mk_`.
    #[error("a maestro key starts with `mk_`")]
    Marker,
    /// Wrong length or alphabet after the marker.
    #[error("a maestro key is `mk_` followed by {min} to {max} letters and digits")]
    Shape {
        /// Shortest accepted body.
        min: usize,
        /// Longest accepted body.
        max: usize,
    },
}

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

impl KeyToken {
    /// Every token starts with this marker, so scanners and people recognise it.
    pub const MARKER: &'static str = "mk_";
    /// Length of generated token bodies.
    pub const GENERATED_LEN: usize = 40;
    /// Shortest body accepted (for operator-supplied keys such as `MAESTRO_ADMIN_KEY`).
    pub const MIN_LEN: usize = 32;
    /// Longest body accepted.
    pub const MAX_LEN: usize = 64;
    /// Characters of the body used as the public lookup prefix.
    pub const PREFIX_LEN: usize = 8;

    /// Builds a token from random bytes supplied by the host. Each byte picks one of 62
    /// characters; the slight modulo bias leaves ~238 bits of entropy.
    pub fn from_random(bytes: [u8; Self::GENERATED_LEN]) -> Self {
        let mut s = String::with_capacity(Self::MARKER.len() + Self::GENERATED_LEN);
        s.push_str(Self::MARKER);
        s.extend(bytes.iter().map(|b| char::from(BASE62[usize::from(*b) % BASE62.len()])));
        Self(s)
    }

    /// Parses a token presented by a caller or an operator.
    pub fn parse(input: &str) -> Result<Self, TokenError> {
        let body = input.strip_prefix(Self::MARKER).ok_or(TokenError::Marker)?;
        if !(Self::MIN_LEN..=Self::MAX_LEN).contains(&body.len()) || !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(TokenError::Shape { min: Self::MIN_LEN, max: Self::MAX_LEN });
        }
        Ok(Self(input.to_owned()))
    }

    /// The public lookup prefix (the first characters after `mk_`).
    pub fn lookup_prefix(&self) -> &str {
        &self.0[Self::MARKER.len()..Self::MARKER.len() + Self::PREFIX_LEN]
    }

    /// SHA-256 of the whole token, as stored.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.0.as_bytes()).into()
    }

    /// The secret itself, for printing once at creation.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for KeyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyToken({}{}…)", Self::MARKER, self.lookup_prefix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn token(seed: u8) -> KeyToken {
        let mut bytes = [0u8; KeyToken::GENERATED_LEN];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = seed.wrapping_mul(31).wrapping_add(u8::try_from(i).expect("small"));
        }
        KeyToken::from_random(bytes)
    }

    fn key_for(token: &KeyToken) -> ApiKey {
        let at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().expect("valid date");
        ApiKey::issue(KeyId::from_random([3; 16]), KeyScope::Platform, "k".into(), token, at, None)
    }

    #[test]
    fn generated_tokens_parse_and_expose_their_prefix() {
        let t = token(1);
        assert!(t.expose_secret().starts_with("mk_"));
        assert_eq!(t.expose_secret().len(), 3 + KeyToken::GENERATED_LEN);
        assert_eq!(KeyToken::parse(t.expose_secret()).expect("parses"), t);
        assert_eq!(t.lookup_prefix(), &t.expose_secret()[3..11]);
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let t = token(2);
        let shown = format!("{t:?}");
        assert!(!shown.contains(&t.expose_secret()[11..]), "{shown}");
    }

    #[test]
    fn rejects_malformed_tokens() {
        assert_eq!(KeyToken::parse("sk_live_abc"), Err(TokenError::Marker));
        assert!(matches!(KeyToken::parse("mk_short"), Err(TokenError::Shape { .. })));
        assert!(matches!(KeyToken::parse(&format!("mk_{}", "a".repeat(65))), Err(TokenError::Shape { .. })));
        assert!(matches!(KeyToken::parse(&format!("mk_{}-", "a".repeat(40))), Err(TokenError::Shape { .. })));
    }

    #[test]
    fn verify_distinguishes_wrong_revoked_and_expired_keys() {
        let t = token(4);
        let mut key = key_for(&t);
        let now = key.created_at + chrono::Duration::days(1);
        assert_eq!(key.verify(&t, now), Some(Ok(())));
        assert_eq!(key.verify(&token(5), now), None);
        key.expires_at = Some(now);
        assert_eq!(key.verify(&t, now), Some(Err(KeyState::Expired)));
        key.revoked_at = Some(now);
        assert_eq!(key.verify(&t, now), Some(Err(KeyState::Revoked)));
    }

    #[test]
    fn roles_are_ordered_and_enforced() {
        assert!(Role::Admin.includes(Role::Member));
        assert!(!Role::Viewer.includes(Role::Member));
        let tenant_id = TenantId::from_random([9; 16]);
        let caller = |role| Caller {
            key_id: KeyId::from_random([1; 16]),
            scope: KeyScope::Tenant { tenant_id: tenant_id.clone(), role },
        };
        assert_eq!(caller(Role::Admin).require_role(Role::Admin), Ok(Some(&tenant_id)));
        assert_eq!(
            caller(Role::Member).require_role(Role::Admin),
            Err(AccessError::RoleTooLow { required: Role::Admin, actual: Role::Member })
        );
        assert!(caller(Role::Admin).require_platform_admin().is_err());
        let platform = Caller { key_id: KeyId::from_random([2; 16]), scope: KeyScope::Platform };
        assert_eq!(platform.require_role(Role::Admin), Ok(None));
    }

    #[test]
    fn roles_round_trip_through_their_names() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("owner".parse::<Role>().is_err());
    }
}
