//! Typed, prefixed identifiers (`tn_…` for tenants, `key_…` for API keys).
//!
//! Identifiers are opaque strings with a kind prefix so that a key id pasted where a
//! tenant id belongs is rejected at the edge instead of matching nothing.

use std::fmt;
use std::marker::PhantomData;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The kind of thing an [`Id`] names, fixing its prefix.
pub trait IdKind {
    /// The prefix, without the separating underscore.
    const PREFIX: &'static str;
}

/// Random part length, in characters of the lowercase base-32 alphabet (100 bits).
pub const RANDOM_LEN: usize = 20;
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// An identifier of kind `K`, e.g. `Id<TenantKind>` renders as `tn_8h2k…`.
pub struct Id<K> {
    value: String,
    kind: PhantomData<fn() -> K>,
}

/// Why a string is not an identifier of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a valid {prefix}_ identifier")]
pub struct IdError {
    /// The rejected input, truncated to keep messages short.
    pub value: String,
    /// The prefix that was expected.
    pub prefix: &'static str,
}

impl<K: IdKind> Id<K> {
    /// Builds an identifier from random bytes supplied by the caller (the host owns
    /// the randomness source; this crate does no I/O).
    pub fn from_random(bytes: [u8; 16]) -> Self {
        let mut value = String::with_capacity(K::PREFIX.len() + 1 + RANDOM_LEN);
        value.push_str(K::PREFIX);
        value.push('_');
        let mut acc = u128::from_be_bytes(bytes);
        for _ in 0..RANDOM_LEN {
            value.push(char::from(ALPHABET[(acc & 31) as usize]));
            acc >>= 5;
        }
        Self { value, kind: PhantomData }
    }

    /// Builds an identifier that sorts by time: its first half is `millis` (a Unix time
    /// in milliseconds, 50 bits, most significant character first), its second half the
    /// low 50 bits of `bytes` (random, from the caller). Identifiers made in a later
    /// millisecond sort after earlier ones, so a B-tree index on them grows at its right
    /// edge: a batch of new rows dirties one or two of its pages, not one each. Within a
    /// millisecond, 2^50 random values keep identifiers apart. The same shape and
    /// alphabet as [`Id::from_random`]: [`Id::parse`] takes both.
    pub fn from_time_and_random(millis: u64, bytes: [u8; 8]) -> Self {
        const HALF: usize = RANDOM_LEN / 2;
        let mut value = String::with_capacity(K::PREFIX.len() + 1 + RANDOM_LEN);
        value.push_str(K::PREFIX);
        value.push('_');
        // The alphabet is in ASCII order, so the characters compare as the numbers do.
        for i in (0..HALF).rev() {
            value.push(char::from(ALPHABET[((millis >> (5 * i)) & 31) as usize]));
        }
        let mut random = u64::from_be_bytes(bytes);
        for _ in 0..HALF {
            value.push(char::from(ALPHABET[(random & 31) as usize]));
            random >>= 5;
        }
        Self { value, kind: PhantomData }
    }

    /// Parses and validates an identifier of this kind.
    pub fn parse(input: &str) -> Result<Self, IdError> {
        let err = || IdError { value: input.chars().take(64).collect(), prefix: K::PREFIX };
        let rest = input.strip_prefix(K::PREFIX).and_then(|r| r.strip_prefix('_')).ok_or_else(err)?;
        if rest.len() != RANDOM_LEN || !rest.bytes().all(|b| ALPHABET.contains(&b)) {
            return Err(err());
        }
        Ok(Self { value: input.to_owned(), kind: PhantomData })
    }

    /// The identifier as stored and shown.
    pub fn as_str(&self) -> &str {
        &self.value
    }
}

impl<K> Clone for Id<K> {
    fn clone(&self) -> Self {
        Self { value: self.value.clone(), kind: PhantomData }
    }
}
impl<K> PartialEq for Id<K> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}
impl<K> Eq for Id<K> {}
impl<K> std::hash::Hash for Id<K> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.value.hash(state);
    }
}
impl<K> fmt::Debug for Id<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value)
    }
}
impl<K> fmt::Display for Id<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value)
    }
}
impl<K> Serialize for Id<K> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.value)
    }
}
impl<'de, K: IdKind> Deserialize<'de> for Id<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Marker for tenant identifiers (`tn_…`).
#[derive(Debug)]
pub enum TenantKind {}
impl IdKind for TenantKind {
    const PREFIX: &'static str = "tn";
}

/// Marker for API key identifiers (`key_…`).
#[derive(Debug)]
pub enum KeyKind {}
impl IdKind for KeyKind {
    const PREFIX: &'static str = "key";
}

/// A tenant's identifier.
pub type TenantId = Id<TenantKind>;
/// An API key's identifier (not the secret token).
pub type KeyId = Id<KeyKind>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_round_trip_through_parse() {
        let id = TenantId::from_random([7; 16]);
        assert!(id.as_str().starts_with("tn_"));
        assert_eq!(TenantId::parse(id.as_str()).expect("valid"), id);
    }

    #[test]
    fn rejects_ids_of_another_kind_or_shape() {
        let key = KeyId::from_random([1; 16]);
        assert!(TenantId::parse(key.as_str()).is_err());
        assert!(TenantId::parse("tn_").is_err());
        assert!(TenantId::parse("tn_ABCDEFGHJKMNPQRSTVWX").is_err());
        assert!(TenantId::parse("tn_0000000000000000000i").is_err());
    }

    #[test]
    fn time_ordered_ids_sort_by_their_millisecond_and_parse() {
        let at = 1_795_000_000_123; // late 2026
        let made = [(at, [0xff; 8]), (at + 1, [0; 8]), (at + 1, [1; 8]), (at + 32, [0; 8]), (1 << 49, [7; 8])];
        let ids: Vec<KeyId> = made.into_iter().map(|(ms, bytes)| KeyId::from_time_and_random(ms, bytes)).collect();
        let time = |id: &KeyId| id.as_str()[id.as_str().len() - RANDOM_LEN..][..RANDOM_LEN / 2].to_owned();
        for pair in ids.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            assert_eq!(KeyId::parse(a.as_str()).expect("valid"), *a);
            assert!(a.as_str() < b.as_str() || time(a) == time(b), "{a} then {b}");
        }
        assert!(ids[0].as_str() < ids[1].as_str(), "a later millisecond sorts after, whatever the random part");
        assert_eq!(time(&ids[1]), time(&ids[2]));
        assert_ne!(ids[1], ids[2], "the random part tells one millisecond's ids apart");
    }

    #[test]
    fn distinct_random_bytes_give_distinct_ids() {
        let a = KeyId::from_random([0; 16]);
        let mut bytes = [0; 16];
        bytes[15] = 1;
        assert_ne!(a, KeyId::from_random(bytes));
    }
}
