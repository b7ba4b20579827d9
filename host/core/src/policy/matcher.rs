//! Subjects (`tenant:acme&role:member`) and tool patterns (`calc.*`), pre-parsed so
//! matching a call is a few string comparisons, and the specificity that ranks grants.

use std::fmt;

use crate::auth::Role;
use crate::id::KeyId;
use crate::tenant::TenantName;

/// Who is calling: the caller's tenant (by name), role and API key id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subject<'a> {
    /// The tenant's name, as policies write it (`acme`).
    pub tenant: &'a str,
    /// The key's role within the tenant.
    pub role: Role,
    /// The key's id (`key_…`).
    pub key_id: &'a str,
}

impl fmt::Display for Subject<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tenant {}, role {}, key {}", self.tenant, self.role, self.key_id)
    }
}

/// A role condition: exactly `role:member`, or `role:member+` for member and above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RoleMatch {
    role: Role,
    or_higher: bool,
}

/// One subject of a rule: the conjunction of its terms; no terms is `*` (everyone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SubjectPattern {
    tenant: Option<Box<str>>,
    role: Option<RoleMatch>,
    key: Option<Box<str>>,
}

impl SubjectPattern {
    /// Parses `*`, or terms `tenant:NAME`, `role:ROLE`, `role:ROLE+`, `key:ID` joined by
    /// `&` (each kind at most once; spaces around `&` are ignored).
    pub(crate) fn parse(input: &str) -> Result<Self, String> {
        let mut pattern = SubjectPattern { tenant: None, role: None, key: None };
        if input.trim() == "*" {
            return Ok(pattern);
        }
        for term in input.split('&').map(str::trim) {
            let Some((kind, value)) = term.split_once(':') else {
                return Err(if term == "*" {
                    "`*` cannot be combined with other terms".to_owned()
                } else {
                    format!("{term:?} is not a subject: use tenant:NAME, role:ROLE, key:ID or *, joined by &")
                });
            };
            let duplicate = || format!("`{kind}:` appears twice; a subject has one of each");
            match kind {
                "tenant" => {
                    if pattern.tenant.is_some() {
                        return Err(duplicate());
                    }
                    let name = TenantName::parse(value).map_err(|e| e.to_string())?;
                    pattern.tenant = Some(name.as_str().into());
                }
                "role" => {
                    if pattern.role.is_some() {
                        return Err(duplicate());
                    }
                    let (name, or_higher) = match value.strip_suffix('+') {
                        Some(name) => (name, true),
                        None => (value, false),
                    };
                    let role = name.parse::<Role>().map_err(|e| e.to_string())?;
                    pattern.role = Some(RoleMatch { role, or_higher });
                }
                "key" => {
                    if pattern.key.is_some() {
                        return Err(duplicate());
                    }
                    KeyId::parse(value).map_err(|e| e.to_string())?;
                    pattern.key = Some(value.into());
                }
                _ => {
                    return Err(format!("unknown subject kind `{kind}:`: use tenant:, role:, key: or *"));
                }
            }
        }
        Ok(pattern)
    }

    /// How specific the subject is: key (4) > tenant&role (3) > tenant (2) > role (1) > `*` (0).
    pub(crate) fn rank(&self) -> u8 {
        match (&self.key, &self.tenant, &self.role) {
            (Some(_), _, _) => 4,
            (None, Some(_), Some(_)) => 3,
            (None, Some(_), None) => 2,
            (None, None, Some(_)) => 1,
            (None, None, None) => 0,
        }
    }

    pub(crate) fn matches(&self, subject: &Subject<'_>) -> bool {
        self.tenant.as_deref().is_none_or(|t| t == subject.tenant)
            && self.key.as_deref().is_none_or(|k| k == subject.key_id)
            && self.role.is_none_or(
                |r| {
                    if r.or_higher { subject.role.includes(r.role) } else { subject.role == r.role }
                },
            )
    }
}

impl fmt::Display for SubjectPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut terms = Vec::with_capacity(3);
        if let Some(t) = &self.tenant {
            terms.push(format!("tenant:{t}"));
        }
        if let Some(r) = &self.role {
            terms.push(format!("role:{}{}", r.role, if r.or_higher { "+" } else { "" }));
        }
        if let Some(k) = &self.key {
            terms.push(format!("key:{k}"));
        }
        if terms.is_empty() { f.write_str("*") } else { f.write_str(&terms.join("&")) }
    }
}

/// A tool pattern: `*`, `plugin.*` (every tool of a plugin; any dotted prefix followed by
/// `.*`), or an exact `plugin.tool`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ToolPattern {
    Any,
    /// Stores the prefix including its trailing dot (`calc.`).
    Prefix(Box<str>),
    Exact(Box<str>),
}

impl ToolPattern {
    pub(crate) fn parse(input: &str) -> Result<Self, String> {
        if input == "*" {
            return Ok(ToolPattern::Any);
        }
        let (body, wildcard) = match input.strip_suffix(".*") {
            Some(body) => (body, true),
            None => (input, false),
        };
        if body.is_empty() {
            return Err("empty pattern".to_owned());
        }
        for segment in body.split('.') {
            if segment.contains('*') {
                return Err("`*` may only stand alone or end a pattern as `.*`, like calc.*".to_owned());
            }
            let ok =
                !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok {
                return Err(format!("{segment:?} is not a valid name segment (letters, digits, `_`, `-`)"));
            }
        }
        if wildcard {
            Ok(ToolPattern::Prefix(format!("{body}.").into_boxed_str()))
        } else if body.contains('.') {
            Ok(ToolPattern::Exact(body.into()))
        } else {
            Err(format!("tool names are plugin.tool; write {body}.* for every tool of plugin {body}"))
        }
    }

    /// `Some(specificity)` when the pattern covers `tool`.
    pub(crate) fn matches(&self, tool: &str) -> Option<ToolSpecificity> {
        let covers = match self {
            ToolPattern::Any => true,
            ToolPattern::Prefix(prefix) => tool.len() > prefix.len() && tool.starts_with(&**prefix),
            ToolPattern::Exact(name) => tool == &**name,
        };
        covers.then(|| self.specificity())
    }

    fn specificity(&self) -> ToolSpecificity {
        match self {
            ToolPattern::Any => ToolSpecificity { exact: false, prefix_len: 0 },
            ToolPattern::Prefix(p) => {
                ToolSpecificity { exact: false, prefix_len: u16::try_from(p.len()).unwrap_or(u16::MAX) }
            }
            ToolPattern::Exact(n) => {
                ToolSpecificity { exact: true, prefix_len: u16::try_from(n.len()).unwrap_or(u16::MAX) }
            }
        }
    }

    /// Whether the pattern could cover some tool of `plugin`.
    pub(crate) fn may_cover_plugin(&self, plugin: &str) -> bool {
        let in_plugin = |s: &str| s.strip_prefix(plugin).is_some_and(|r| r.starts_with('.'));
        match self {
            ToolPattern::Any => true,
            ToolPattern::Prefix(p) => in_plugin(p) || p.strip_suffix('.') == Some(plugin),
            ToolPattern::Exact(n) => in_plugin(n),
        }
    }
}

impl fmt::Display for ToolPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ToolPattern::Any => f.write_str("*"),
            ToolPattern::Prefix(p) => write!(f, "{p}*"),
            ToolPattern::Exact(n) => f.write_str(n),
        }
    }
}

impl ToolPattern {
    /// A resource pattern: `*` (every plugin's resources) or `plugin.*` (one plugin's);
    /// resources are granted per plugin.
    pub(crate) fn parse_resources(input: &str) -> Result<Self, String> {
        let plugin = match input.strip_suffix(".*") {
            Some(plugin) => plugin,
            None if input == "*" => return Ok(ToolPattern::Any),
            None if !input.contains('.') && !input.contains('*') => {
                return Err(format!("resources are granted per plugin: write {input}.* for plugin {input}"));
            }
            None => return Err("resources are granted per plugin: write `plugin.*` or `*`".to_owned()),
        };
        if !crate::plugin::valid_plugin_name(plugin) {
            return Err(format!("{plugin:?} is not a plugin name (a-z, 0-9, `_`, `-`; starting with a letter)"));
        }
        Ok(ToolPattern::Prefix(format!("{plugin}.").into_boxed_str()))
    }

    /// `Some(specificity)` when this resource pattern covers `plugin`'s resources.
    pub(crate) fn covers_resources_of(&self, plugin: &str) -> Option<ToolSpecificity> {
        let covers = match self {
            ToolPattern::Any => true,
            ToolPattern::Prefix(prefix) => prefix.strip_suffix('.') == Some(plugin),
            ToolPattern::Exact(_) => false,
        };
        covers.then(|| self.specificity())
    }
}

/// How precisely a tool pattern names a tool: an exact name beats any prefix, a longer
/// prefix beats a shorter one, `*` is least specific.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ToolSpecificity {
    exact: bool,
    prefix_len: u16,
}

/// How specifically a rule matched one call; larger wins. Subject first, then tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Specificity {
    pub(crate) subject: u8,
    pub(crate) tool: ToolSpecificity,
}

/// A rule's subjects and tools: it applies when any subject and any tool match.
#[derive(Debug, Clone)]
pub(crate) struct Matcher {
    pub(crate) subjects: Vec<SubjectPattern>,
    pub(crate) tools: Vec<ToolPattern>,
    /// Plugins whose resources the rule covers.
    pub(crate) resources: Vec<ToolPattern>,
}

impl Matcher {
    /// `Some` with the best specificity among the matching subjects and tools.
    pub(crate) fn matches(&self, subject: &Subject<'_>, tool: &str) -> Option<Specificity> {
        let tool = self.tools.iter().filter_map(|t| t.matches(tool)).max()?;
        let subject = self.subjects.iter().filter(|s| s.matches(subject)).map(SubjectPattern::rank).max()?;
        Some(Specificity { subject, tool })
    }

    /// `Some` with the best specificity when the rule covers `plugin`'s resources for
    /// the subject.
    pub(crate) fn matches_resources(&self, subject: &Subject<'_>, plugin: &str) -> Option<Specificity> {
        let tool = self.resources.iter().filter_map(|r| r.covers_resources_of(plugin)).max()?;
        let subject = self.subjects.iter().filter(|s| s.matches(subject)).map(SubjectPattern::rank).max()?;
        Some(Specificity { subject, tool })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "key_0123456789abcdefghjk";

    fn who(tenant: &'static str, role: Role) -> Subject<'static> {
        Subject { tenant, role, key_id: KEY }
    }

    #[test]
    fn conjunction_requires_every_term() {
        let p = SubjectPattern::parse("tenant:acme & role:member").expect("valid");
        assert_eq!(p.to_string(), "tenant:acme&role:member");
        assert_eq!(p.rank(), 3);
        assert!(p.matches(&who("acme", Role::Member)));
        assert!(!p.matches(&who("acme", Role::Admin)));
        assert!(!p.matches(&who("globex", Role::Member)));
    }

    #[test]
    fn role_plus_includes_higher_roles() {
        let p = SubjectPattern::parse("role:member+").expect("valid");
        assert!(p.matches(&who("a", Role::Admin)));
        assert!(p.matches(&who("a", Role::Member)));
        assert!(!p.matches(&who("a", Role::Viewer)));
    }

    #[test]
    fn ranks_follow_the_documented_order() {
        let rank = |s: &str| SubjectPattern::parse(s).expect(s).rank();
        assert!(rank(&format!("key:{KEY}")) > rank("tenant:acme&role:admin"));
        assert!(rank("tenant:acme&role:admin") > rank("tenant:acme"));
        assert!(rank("tenant:acme") > rank("role:admin"));
        assert!(rank("role:admin") > rank("*"));
    }

    #[test]
    fn rejects_malformed_subjects() {
        for bad in [
            "",
            "acme",
            "team:acme",
            "tenant:Acme",
            "role:owner",
            "key:abc",
            "tenant:a&tenant:b",
            "*&role:admin",
            "tenant:acme&",
        ] {
            assert!(SubjectPattern::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn tool_patterns_rank_exact_over_prefix_over_any() {
        let spec = |p: &str, tool: &str| ToolPattern::parse(p).expect(p).matches(tool);
        let exact = spec("web.fetch", "web.fetch").expect("matches");
        let prefix = spec("web.*", "web.fetch").expect("matches");
        let any = spec("*", "web.fetch").expect("matches");
        assert!(exact > prefix && prefix > any);
        assert_eq!(spec("web.*", "webby.fetch"), None);
        assert_eq!(spec("web.*", "web."), None);
        assert_eq!(spec("web.fetch", "web.fetcher"), None);
    }

    #[test]
    fn resource_patterns_name_whole_plugins() {
        let covers = |p: &str, plugin: &str| ToolPattern::parse_resources(p).expect(p).covers_resources_of(plugin);
        assert!(covers("notes.*", "notes") > covers("*", "notes"));
        assert_eq!(covers("notes.*", "notebook"), None);
        for bad in ["notes", "notes.readme", "Notes.*", "a.b.*", "*.*", ""] {
            assert!(ToolPattern::parse_resources(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            ToolPattern::parse_resources("notes").expect_err("bare"),
            "resources are granted per plugin: write notes.* for plugin notes"
        );
    }

    #[test]
    fn rejects_malformed_tool_patterns() {
        for bad in ["", "calc", "calc*", "*.add", "c*.add", "calc..add", "calc.a b", ".*", "calc.**"] {
            assert!(ToolPattern::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
