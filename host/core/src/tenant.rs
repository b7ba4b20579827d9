//! Tenants: the unit of isolation. Every key, policy decision, credit and document
//! belongs to exactly one tenant.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::id::TenantId;

/// A tenant as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tenant {
    /// Stable identifier.
    pub id: TenantId,
    /// Unique, human-chosen name used by the CLI and in policies (`tenant:acme`).
    pub name: TenantName,
    /// When the tenant was created.
    pub created_at: DateTime<Utc>,
}

/// A validated tenant name: 1–63 characters of `a-z`, `0-9` and `-`, starting with a
/// letter or digit. Policies refer to tenants by name, so the alphabet is kept to what
/// needs no quoting anywhere (TOML keys, URLs, shell).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct TenantName(String);

/// Why a tenant name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantNameError {
    /// Empty or longer than 63 characters.
    #[error("tenant name must be 1 to 63 characters long, got {0}")]
    Length(usize),
    /// Contains something other than lowercase letters, digits and dashes.
    #[error(
        "tenant name `{0}` may contain only lowercase letters, digits and `-`, and must start with a letter or digit"
    )]
    Alphabet(String),
}

impl TenantName {
    /// Longest accepted name.
    pub const MAX_LEN: usize = 63;

    /// Validates a tenant name.
    pub fn parse(input: &str) -> Result<Self, TenantNameError> {
        let len = input.chars().count();
        if len == 0 || len > Self::MAX_LEN {
            return Err(TenantNameError::Length(len));
        }
        let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
        let first_ok = input.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !first_ok || !input.chars().all(ok_char) {
            return Err(TenantNameError::Alphabet(input.to_owned()));
        }
        Ok(Self(input.to_owned()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TenantName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_plain_names() {
        for name in ["acme", "a", "team-7", "0day"] {
            assert_eq!(TenantName::parse(name).expect(name).as_str(), name);
        }
    }

    #[test]
    fn rejects_bad_names_with_reason() {
        assert_eq!(TenantName::parse(""), Err(TenantNameError::Length(0)));
        assert!(matches!(TenantName::parse(&"a".repeat(64)), Err(TenantNameError::Length(64))));
        for bad in ["Acme", "-acme", "ac me", "acme_1", "acmé", "a/b"] {
            assert!(matches!(TenantName::parse(bad), Err(TenantNameError::Alphabet(_))), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn parse_accepts_exactly_the_documented_alphabet(s in "\\PC{0,70}") {
            let expected = !s.is_empty()
                && s.chars().count() <= 63
                && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !s.starts_with('-');
            prop_assert_eq!(TenantName::parse(&s).is_ok(), expected);
        }
    }
}
