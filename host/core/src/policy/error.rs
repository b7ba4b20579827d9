//! Policy errors: every one names the file, line and column of the offending value.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

/// A position in a policy file, shown as `file:line:column` (both 1-based; the column
/// counts characters, not bytes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Location {
    /// The file's name as the host passed it (usually its path, e.g. `policies/teams.toml`).
    pub file: Arc<str>,
    /// 1-based line.
    pub line: u32,
    /// 1-based column, in characters.
    pub column: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// What is wrong, without the location. Callers (the CLI, tests) may match on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyErrorKind {
    /// The TOML does not parse, or does not have the expected shape (unknown key, wrong
    /// type, missing field). The message is the parser's, without its own location.
    #[error("{0}")]
    Syntax(String),
    /// `version` is not one this build reads.
    #[error("unsupported policy version {found}: this maestro reads version 1")]
    UnsupportedVersion {
        /// The version the file declares.
        found: i64,
    },
    /// A rule or secret name is malformed.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name as written.
        name: String,
        /// Why it was refused.
        reason: String,
    },
    /// A list that must not be empty is.
    #[error("`{field}` must list at least one entry")]
    EmptyList {
        /// The key holding the list.
        field: &'static str,
    },
    /// A subject is malformed (`tenant:`, `role:`, `key:`, `*`, joined by `&`).
    #[error("invalid subject {subject:?}: {reason}")]
    InvalidSubject {
        /// The subject as written.
        subject: String,
        /// Why it was refused.
        reason: String,
    },
    /// A tool pattern is malformed.
    #[error("invalid tool pattern {pattern:?}: {reason}")]
    InvalidToolPattern {
        /// The pattern as written.
        pattern: String,
        /// Why it was refused.
        reason: String,
    },
    /// A rule lists neither `tools` nor `resources`.
    #[error("a rule must list `tools`, `resources` or both")]
    NothingCovered,
    /// A resource pattern is malformed.
    #[error("invalid resource pattern {pattern:?}: {reason}")]
    InvalidResourcePattern {
        /// The pattern as written.
        pattern: String,
        /// Why it was refused.
        reason: String,
    },
    /// A network allow-list entry is malformed.
    #[error("invalid network entry {entry:?}: {reason}")]
    InvalidNetworkEntry {
        /// The entry as written.
        entry: String,
        /// Why it was refused.
        reason: String,
    },
    /// A duration (`"5s"`, `"250ms"`) is malformed.
    #[error("invalid duration {value:?}: {reason}")]
    InvalidDuration {
        /// The value as written.
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// A size (`"64MiB"`) is malformed.
    #[error("invalid size {value:?}: {reason}")]
    InvalidSize {
        /// The value as written.
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// A rate (`"60/min"`) is malformed.
    #[error("invalid rate {value:?}: {reason}")]
    InvalidRate {
        /// The value as written.
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// A limit is outside the range Maestro accepts.
    #[error("{field} = {value} is out of range: must be between {min} and {max}")]
    OutOfRange {
        /// The key.
        field: &'static str,
        /// The value, rendered in the key's unit.
        value: String,
        /// The smallest accepted value.
        min: String,
        /// The hard cap.
        max: String,
    },
    /// A `[secrets.NAME]` section is malformed.
    #[error("invalid secret {name:?}: {reason}")]
    InvalidSecret {
        /// The secret's name.
        name: String,
        /// Why it was refused.
        reason: String,
    },
    /// A grant names a secret no file defines.
    #[error("undefined secret {name:?}: no [secrets.{name}] section in any policy file")]
    UndefinedSecret {
        /// The name the grant used.
        name: String,
    },
    /// A grant's secret goes only to targets (scheme, host, port) its network list never
    /// allows.
    #[error(
        "secret {name:?} applies only to hosts this grant's network list does not allow; add a matching network entry (a secret is sent only with the same scheme, host and port; a bare host means https on port 443)"
    )]
    UnreachableSecret {
        /// The secret's name.
        name: String,
    },
    /// A grant's plugin config is malformed or names a plugin the grant cannot reach.
    #[error("invalid config for plugin {plugin:?}: {reason}")]
    InvalidPluginConfig {
        /// The plugin the table is for.
        plugin: String,
        /// Why it was refused.
        reason: String,
    },
    /// Two rules, or two secrets, share a name (names are unique across all files).
    #[error("duplicate {what} name {name:?}, first defined at {first}")]
    Duplicate {
        /// `rule` or `secret`.
        what: &'static str,
        /// The shared name.
        name: String,
        /// Where the first one is.
        first: Location,
    },
    /// A grant names a model tier that does not exist.
    #[error("invalid model tier {tier:?}: expected one of fast, balanced, best")]
    InvalidModelTier {
        /// The tier as written.
        tier: String,
    },
    /// A grant sets `model_max_tokens` without granting any model tier.
    #[error("model_max_tokens is set but model_tiers is not: list the tiers the grant's plugins may use")]
    ModelTokensWithoutTiers,
    /// Two files set the same `[defaults]` key.
    #[error("defaults.{key} is also set at {first}; set each default in one file only")]
    ConflictingDefault {
        /// The key set twice.
        key: &'static str,
        /// Where it was set first.
        first: Location,
    },
}

/// One error at one place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {kind}")]
pub struct PolicyError {
    /// Where the offending value is.
    pub location: Location,
    /// What is wrong with it.
    pub kind: PolicyErrorKind,
}

/// Every error found in a set of policy files, in file order then position; displayed
/// one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl PolicyErrors {
    /// The individual errors.
    pub fn iter(&self) -> std::slice::Iter<'_, PolicyError> {
        self.0.iter()
    }

    /// How many errors there are (at least one).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false for an error returned by this module; here for completeness.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

impl<'a> IntoIterator for &'a PolicyErrors {
    type Item = &'a PolicyError;
    type IntoIter = std::slice::Iter<'a, PolicyError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Turns byte offsets of one file into [`Location`]s.
#[derive(Debug, Clone)]
pub(crate) struct SourceMap {
    file: Arc<str>,
    text: String,
    line_starts: Vec<usize>,
}

impl SourceMap {
    pub(crate) fn new(file: &str, text: &str) -> Self {
        let line_starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        Self { file: Arc::from(file), text: text.to_owned(), line_starts }
    }

    pub(crate) fn file(&self) -> &Arc<str> {
        &self.file
    }

    /// The location of a byte offset (clamped to the text).
    pub(crate) fn location(&self, offset: usize) -> Location {
        let offset = offset.min(self.text.len());
        let line_index = self.line_starts.partition_point(|&start| start <= offset).saturating_sub(1);
        let start = self.line_starts.get(line_index).copied().unwrap_or(0);
        let column = self.text.get(start..offset).map_or(offset - start, |s| s.chars().count());
        Location {
            file: Arc::clone(&self.file),
            line: u32::try_from(line_index + 1).unwrap_or(u32::MAX),
            column: u32::try_from(column + 1).unwrap_or(u32::MAX),
        }
    }

    pub(crate) fn error(&self, span: &Range<usize>, kind: PolicyErrorKind) -> PolicyError {
        PolicyError { location: self.location(span.start), kind }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_one_based_lines_and_character_columns() {
        let map = SourceMap::new("p.toml", "a = 1\nbé = \"x\"\n");
        assert_eq!(map.location(0).to_string(), "p.toml:1:1");
        assert_eq!(map.location(6).to_string(), "p.toml:2:1");
        // `=` follows a two-byte character: byte 10, but the fourth character of line 2.
        assert_eq!(map.location(10).to_string(), "p.toml:2:4");
        assert_eq!(map.location(10_000).line, 3);
    }
}
