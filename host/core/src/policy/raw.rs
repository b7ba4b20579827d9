//! The policy file as written: serde types with spans, checked for shape only
//! (`deny_unknown_fields`, types). Meaning is checked in `compile`.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use toml::Spanned;

/// The settings `[defaults]` and each `[[grant]]` may set; absent keys fall through.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDefaults {
    pub(crate) fuel: Option<Spanned<u64>>,
    pub(crate) timeout: Option<Spanned<String>>,
    pub(crate) memory: Option<Spanned<String>>,
    pub(crate) output: Option<Spanned<String>>,
    pub(crate) max_requests: Option<Spanned<u64>>,
    pub(crate) max_request_bytes: Option<Spanned<String>>,
    pub(crate) max_response_bytes: Option<Spanned<String>>,
    pub(crate) request_timeout: Option<Spanned<String>>,
    pub(crate) credits: Option<Spanned<u64>>,
    pub(crate) rate: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFile {
    pub(crate) version: Spanned<i64>,
    #[serde(default)]
    pub(crate) defaults: Option<RawDefaults>,
    #[serde(default)]
    pub(crate) secrets: BTreeMap<Spanned<String>, RawSecret>,
    #[serde(default)]
    pub(crate) grant: Vec<Spanned<RawGrant>>,
    #[serde(default)]
    pub(crate) deny: Vec<Spanned<RawDeny>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSecret {
    pub(crate) source: Spanned<String>,
    #[serde(default)]
    pub(crate) headers: BTreeMap<Spanned<String>, Spanned<String>>,
    pub(crate) hosts: Spanned<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGrant {
    pub(crate) name: Spanned<String>,
    pub(crate) subjects: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(crate) tools: Option<Spanned<Vec<Spanned<String>>>>,
    /// Plugins whose resources the rule covers (`notes.*`, `*`).
    #[serde(default)]
    pub(crate) resources: Option<Spanned<Vec<Spanned<String>>>>,
    // The settings, written directly in the grant (same keys as `[defaults]`).
    pub(crate) fuel: Option<Spanned<u64>>,
    pub(crate) timeout: Option<Spanned<String>>,
    pub(crate) memory: Option<Spanned<String>>,
    pub(crate) output: Option<Spanned<String>>,
    pub(crate) max_requests: Option<Spanned<u64>>,
    pub(crate) max_request_bytes: Option<Spanned<String>>,
    pub(crate) max_response_bytes: Option<Spanned<String>>,
    pub(crate) request_timeout: Option<Spanned<String>>,
    pub(crate) credits: Option<Spanned<u64>>,
    pub(crate) rate: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) network: Vec<Spanned<RawNetworkEntry>>,
    #[serde(default)]
    pub(crate) secrets: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) config: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    /// Model tiers the granted plugins may ask for completions (`fast`, `balanced`,
    /// `best`); absent: no model access.
    pub(crate) model_tiers: Option<Spanned<Vec<Spanned<String>>>>,
    /// Most answer tokens per completion.
    pub(crate) model_max_tokens: Option<Spanned<u64>>,
}

impl RawGrant {
    /// Moves the settings out into the shape `[defaults]` has.
    pub(crate) fn take_settings(&mut self) -> RawDefaults {
        RawDefaults {
            fuel: self.fuel.take(),
            timeout: self.timeout.take(),
            memory: self.memory.take(),
            output: self.output.take(),
            max_requests: self.max_requests.take(),
            max_request_bytes: self.max_request_bytes.take(),
            max_response_bytes: self.max_response_bytes.take(),
            request_timeout: self.request_timeout.take(),
            credits: self.credits.take(),
            rate: self.rate.take(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDeny {
    pub(crate) name: Spanned<String>,
    pub(crate) subjects: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(crate) tools: Option<Spanned<Vec<Spanned<String>>>>,
    /// Plugins whose resources the rule covers (`notes.*`, `*`).
    #[serde(default)]
    pub(crate) resources: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `"https://api.example.com"` or `{ url = "http://10.0.0.5:8080", allow_private = true }`.
#[derive(Debug)]
pub(crate) struct RawNetworkEntry {
    pub(crate) url: String,
    pub(crate) allow_private: bool,
}

impl<'de> Deserialize<'de> for RawNetworkEntry {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntryVisitor;

        impl<'de> Visitor<'de> for EntryVisitor {
            type Value = RawNetworkEntry;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a string like \"https://api.example.com\" or a table { url = \"…\", allow_private = true }",
                )
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawNetworkEntry { url: v.to_owned(), allow_private: false })
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut url = None;
                let mut allow_private = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "url" if url.is_none() => url = Some(map.next_value::<String>()?),
                        "allow_private" if allow_private.is_none() => {
                            allow_private = Some(map.next_value::<bool>()?);
                        }
                        "url" | "allow_private" => {
                            return Err(de::Error::custom(format!("duplicate field `{key}`")));
                        }
                        other => {
                            return Err(de::Error::unknown_field(other, &["url", "allow_private"]));
                        }
                    }
                }
                Ok(RawNetworkEntry {
                    url: url.ok_or_else(|| de::Error::missing_field("url"))?,
                    allow_private: allow_private.unwrap_or(false),
                })
            }
        }

        deserializer.deserialize_any(EntryVisitor)
    }
}
