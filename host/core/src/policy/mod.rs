//! Administrator policies: who may call which plugin tool, with which limits, network,
//! secrets, plugin config, credit cost and rate.
//!
//! The format reference is the shipped `policies/default.toml`. In short:
//!
//! ```toml
//! version = 1
//!
//! [defaults]                       # fills settings the winning grant leaves out
//! timeout = "10s"
//! memory = "64MiB"
//!
//! [secrets.github]                 # injected by the host, never seen by plugins
//! source = "env:GITHUB_TOKEN"
//! headers = { Authorization = "Bearer {secret}" }
//! hosts = ["api.github.com"]     # https://api.github.com:443 only; or "http://host:port"
//!
//! [[grant]]
//! name = "acme-members-fetch"
//! subjects = ["tenant:acme&role:member+"]
//! tools = ["web.fetch"]
//! timeout = "5s"
//! network = ["https://api.github.com"]
//! secrets = ["github"]
//! credits = 2
//! rate = "60/min"
//! config.web = { user_agent = "acme-bot" }
//!
//! [[deny]]
//! name = "no-web-for-contractors"
//! subjects = ["tenant:contractors"]
//! tools = ["web.*"]
//! ```
//!
//! # Deciding a call
//!
//! 1. **Default deny**: a tool no grant covers is refused.
//! 2. **Deny rules win**: if any `[[deny]]` matches the caller and the tool, the call is
//!    refused, whatever grants say.
//! 3. Otherwise the **most specific** matching `[[grant]]` alone supplies the settings
//!    (grants are never merged). Specificity compares, in order:
//!    - the subject that matched: `key:` (4) > `tenant:…&role:…` (3) > `tenant:` (2) >
//!      `role:` (1) > `*` (0);
//!    - the tool pattern that matched: an exact `plugin.tool` > a longer `prefix.*` >
//!      a shorter one > `*`;
//!    - order: the earlier grant wins (files in the order given — the host sorts them
//!      by name — then position in the file).
//! 4. Each setting the winner leaves out comes from `[defaults]`, then from the built-in
//!    value ([`Limits::BUILT_IN`]). Network entries, secrets and plugin config come only
//!    from the winning grant.
//!
//! # Stages
//!
//! [`PolicyFile::parse`] checks the TOML's shape (unknown keys rejected) and keeps spans;
//! [`PolicySet::compile`] validates every value, resolves secrets and defaults across
//! files, and precompiles the matchers into an immutable [`PolicySet`] the host shares
//! behind an `Arc`. [`PolicySet::decide`] allocates nothing: a decision holds `Arc`s into
//! the set.

mod compile;
mod error;
mod explain;
mod matcher;
mod network;
mod raw;
mod units;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use compile::PolicyFile;
pub use error::{Location, PolicyError, PolicyErrorKind, PolicyErrors};
pub use explain::Explanation;
pub use matcher::Subject;
pub use network::{HostPattern, NetworkRule, Scheme, SecretTarget, is_restricted_ip};
pub use units::{Rate, parse_duration, parse_size};

use matcher::Matcher;
use units::{DisplayDuration, DisplaySize};

/// The resource limits of one tool call, all enforced by the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limits {
    /// WebAssembly fuel (roughly instructions).
    pub fuel: u64,
    /// Wall-clock deadline for the whole call.
    pub timeout: Duration,
    /// Largest linear memory.
    pub memory_bytes: u64,
    /// Largest result the call may return.
    pub output_bytes: u64,
    /// Most outgoing HTTP requests per call.
    pub max_requests: u32,
    /// Largest outgoing request body.
    pub max_request_bytes: u64,
    /// Largest response body the plugin may read.
    pub max_response_bytes: u64,
    /// Deadline for each outgoing request.
    pub request_timeout: Duration,
}

impl Limits {
    /// What applies when neither the grant nor `[defaults]` sets a value.
    pub const BUILT_IN: Limits = Limits {
        fuel: 1_000_000_000,
        timeout: Duration::from_secs(10),
        memory_bytes: 64 << 20,
        output_bytes: 1 << 20,
        max_requests: 10,
        max_request_bytes: 1 << 20,
        max_response_bytes: 4 << 20,
        request_timeout: Duration::from_secs(10),
    };

    /// The largest values a policy may set; larger ones are validation errors.
    pub const CAPS: Limits = Limits {
        fuel: 1_000_000_000_000,
        timeout: Duration::from_secs(600),
        memory_bytes: 4 << 30,
        output_bytes: 64 << 20,
        max_requests: 1_000,
        max_request_bytes: 64 << 20,
        max_response_bytes: 256 << 20,
        request_timeout: Duration::from_secs(300),
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::BUILT_IN
    }
}

/// The settings a grant or `[defaults]` may set, by their key in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Setting {
    /// `fuel`
    Fuel,
    /// `timeout`
    Timeout,
    /// `memory`
    Memory,
    /// `output`
    Output,
    /// `max_requests`
    MaxRequests,
    /// `max_request_bytes`
    MaxRequestBytes,
    /// `max_response_bytes`
    MaxResponseBytes,
    /// `request_timeout`
    RequestTimeout,
    /// `credits` (per call)
    Credits,
    /// `rate`
    Rate,
}

impl Setting {
    /// Every setting, in the order `explain` lists them.
    pub const ALL: [Setting; 10] = [
        Setting::Fuel,
        Setting::Timeout,
        Setting::Memory,
        Setting::Output,
        Setting::MaxRequests,
        Setting::MaxRequestBytes,
        Setting::MaxResponseBytes,
        Setting::RequestTimeout,
        Setting::Credits,
        Setting::Rate,
    ];

    /// The key as written in policy files.
    pub fn key(self) -> &'static str {
        match self {
            Setting::Fuel => "fuel",
            Setting::Timeout => "timeout",
            Setting::Memory => "memory",
            Setting::Output => "output",
            Setting::MaxRequests => "max_requests",
            Setting::MaxRequestBytes => "max_request_bytes",
            Setting::MaxResponseBytes => "max_response_bytes",
            Setting::RequestTimeout => "request_timeout",
            Setting::Credits => "credits",
            Setting::Rate => "rate",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Where an effective setting came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// Set by the winning grant, at this location.
    Rule(Location),
    /// Set in a `[defaults]` section, at this location.
    Defaults(Location),
    /// Neither set it: the built-in value.
    BuiltIn,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Rule(at) => write!(f, "rule, {at}"),
            Source::Defaults(at) => write!(f, "defaults, {at}"),
            Source::BuiltIn => f.write_str("built-in"),
        }
    }
}

/// Whether a rule grants or denies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleKind {
    /// A `[[grant]]`.
    Grant,
    /// A `[[deny]]`.
    Deny,
}

/// Which rule decided: its kind, name, position and location.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RuleInfo {
    /// Grant or deny.
    pub kind: RuleKind,
    /// The rule's `name` (unique across all files).
    pub name: String,
    /// 0-based position among the file's rules of the same kind.
    pub index: usize,
    /// Where the rule is (its `name` key).
    pub location: Location,
}

impl fmt::Display for RuleInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            RuleKind::Grant => "grant",
            RuleKind::Deny => "deny",
        };
        write!(f, "{kind} {:?} at {}", self.name, self.location)
    }
}

/// Where the host reads a secret's value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SecretSource {
    /// `env:VAR`: the environment variable (from the map `main` reads once).
    Env(String),
    /// `file:KEY`: a file named KEY in the host's secrets directory.
    File(String),
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env(var) => write!(f, "env:{var}"),
            SecretSource::File(key) => write!(f, "file:{key}"),
        }
    }
}

/// A secret a grant lets the host inject into outgoing requests. Holds the secret's
/// name and source, never its value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SecretGrant {
    /// The `[secrets.NAME]` name.
    pub name: String,
    /// Where the host reads the value.
    pub source: SecretSource,
    /// Headers to set, as `(name, template)`; `{secret}` in the template stands for the
    /// value.
    pub headers: Vec<(String, String)>,
    /// Requests to these targets (scheme, host and port) get the headers.
    pub hosts: Vec<SecretTarget>,
    /// Where the secret is defined.
    pub location: Location,
}

impl SecretGrant {
    /// The placeholder a header template uses for the secret's value.
    pub const PLACEHOLDER: &'static str = "{secret}";

    /// Whether a request to `scheme://host:port` gets this secret's headers.
    pub fn applies_to(&self, scheme: &str, host: &str, port: u16) -> bool {
        self.hosts.iter().any(|t| t.matches(scheme, host, port))
    }

    /// The headers to set, with the value substituted.
    pub fn render_headers<'a>(&'a self, value: &'a str) -> impl Iterator<Item = (&'a str, String)> + 'a {
        self.headers.iter().map(move |(name, template)| (name.as_str(), template.replace(Self::PLACEHOLDER, value)))
    }
}

/// What an allowing decision grants: the winning grant with every setting resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    /// The grant that won.
    pub rule: RuleInfo,
    /// Effective limits (grant, then `[defaults]`, then built-in).
    pub limits: Limits,
    /// Credits charged per call.
    pub credits: u64,
    /// Most calls per window, if limited.
    pub rate: Option<Rate>,
    /// Where outgoing requests may go; empty means no network.
    pub network: Vec<NetworkRule>,
    /// Secrets the host injects into matching requests.
    pub secrets: Vec<SecretGrant>,
    /// Config per plugin name, as JSON.
    pub config: BTreeMap<String, serde_json::Value>,
    /// Whether the granted plugins may ask the platform's models for completions, and
    /// within which bounds; `None` (the default): they may not.
    pub models: Option<ModelGrant>,
    sources: [Source; Setting::ALL.len()],
}

impl Grant {
    /// Where a setting's effective value came from.
    pub fn source(&self, setting: Setting) -> &Source {
        &self.sources[setting.index()]
    }

    /// The config for one plugin (`web` for `web.fetch`), if the grant sets one.
    pub fn config_for(&self, plugin: &str) -> Option<&serde_json::Value> {
        self.config.get(plugin)
    }

    /// The first network entry allowing `scheme://host:port`, if any.
    pub fn network_rule_for(&self, scheme: &str, host: &str, port: u16) -> Option<&NetworkRule> {
        self.network.iter().find(|r| r.matches(scheme, host, port))
    }

    /// The secrets whose headers go on a request to `scheme://host:port`.
    pub fn secrets_for<'a>(
        &'a self,
        scheme: &'a str,
        host: &'a str,
        port: u16,
    ) -> impl Iterator<Item = &'a SecretGrant> + 'a {
        self.secrets.iter().filter(move |s| s.applies_to(scheme, host, port))
    }

    /// A setting's effective value, rendered as a policy file would write it.
    pub fn display_value(&self, setting: Setting) -> String {
        let l = &self.limits;
        match setting {
            Setting::Fuel => l.fuel.to_string(),
            Setting::Timeout => DisplayDuration(l.timeout).to_string(),
            Setting::Memory => DisplaySize(l.memory_bytes).to_string(),
            Setting::Output => DisplaySize(l.output_bytes).to_string(),
            Setting::MaxRequests => l.max_requests.to_string(),
            Setting::MaxRequestBytes => DisplaySize(l.max_request_bytes).to_string(),
            Setting::MaxResponseBytes => DisplaySize(l.max_response_bytes).to_string(),
            Setting::RequestTimeout => DisplayDuration(l.request_timeout).to_string(),
            Setting::Credits => self.credits.to_string(),
            Setting::Rate => self.rate.map_or_else(|| "unlimited".to_owned(), |r| r.to_string()),
        }
    }
}

/// Model access a grant gives its plugins (`model_tiers`, `model_max_tokens`): the
/// completions they ask for are paid from the caller's credits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelGrant {
    /// The tiers they may ask for.
    pub tiers: Vec<crate::plugin::ModelTier>,
    /// Most answer tokens per completion.
    pub max_tokens: u32,
}

impl ModelGrant {
    /// `model_max_tokens` when a grant lists tiers without it.
    pub const DEFAULT_MAX_TOKENS: u32 = 1024;
    /// The largest `model_max_tokens` a policy may set.
    pub const MAX_TOKENS_CAP: u32 = 1_000_000;
}

/// Why a call is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// A `[[deny]]` rule matched.
    Rule(Arc<RuleInfo>),
    /// No grant covers the tool for this caller.
    NoGrant,
}

/// The outcome for one caller and tool. Cheap to clone and `'static`: it shares the
/// policy set's data.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The call may run with these settings.
    Allow(Arc<Grant>),
    /// The call is refused.
    Deny(Denial),
}

impl Decision {
    /// Whether the call may run.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }

    /// The grant, when allowed.
    pub fn grant(&self) -> Option<&Grant> {
        match self {
            Decision::Allow(grant) => Some(grant),
            Decision::Deny(_) => None,
        }
    }

    /// The rule that decided; `None` for the default deny.
    pub fn rule(&self) -> Option<&RuleInfo> {
        match self {
            Decision::Allow(grant) => Some(&grant.rule),
            Decision::Deny(Denial::Rule(rule)) => Some(rule),
            Decision::Deny(Denial::NoGrant) => None,
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Allow(grant) => write!(f, "allowed by {}", grant.rule),
            Decision::Deny(Denial::Rule(rule)) => write!(f, "denied by {rule}"),
            Decision::Deny(Denial::NoGrant) => f.write_str("no rule grants this tool (default deny)"),
        }
    }
}

#[derive(Debug)]
struct CompiledGrant {
    matcher: Matcher,
    grant: Arc<Grant>,
}

#[derive(Debug)]
struct CompiledDeny {
    matcher: Matcher,
    rule: Arc<RuleInfo>,
}

/// Every policy file, validated and compiled. Immutable; the host swaps a new one in on
/// reload.
#[derive(Debug, Default)]
pub struct PolicySet {
    grants: Vec<CompiledGrant>,
    denies: Vec<CompiledDeny>,
    files: Vec<Arc<str>>,
}

impl PolicySet {
    /// A set with no rules: every call is refused.
    pub fn deny_all() -> Self {
        Self::default()
    }

    /// Parses and compiles `(file name, text)` pairs, in order, reporting the errors of
    /// every file at once.
    pub fn parse<'a>(sources: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, PolicyErrors> {
        let mut files = Vec::new();
        let mut names = Vec::new();
        let mut errors = Vec::new();
        for (name, text) in sources {
            names.push(Arc::from(name));
            match PolicyFile::parse(name, text) {
                Ok(file) => files.push(file),
                Err(e) => errors.extend(e.0),
            }
        }
        match Self::compile(files) {
            Ok(set) if errors.is_empty() => Ok(set),
            result => {
                errors.extend(result.err().map(|e| e.0).unwrap_or_default());
                compile::sort_errors(&mut errors, &names);
                Err(PolicyErrors(errors))
            }
        }
    }

    /// The files the set was compiled from, in order.
    pub fn files(&self) -> &[Arc<str>] {
        &self.files
    }

    /// How many `[[grant]]` and `[[deny]]` rules the set holds.
    pub fn rule_counts(&self) -> (usize, usize) {
        (self.grants.len(), self.denies.len())
    }

    /// Decides one call. Runs on every tool call: no allocation beyond an `Arc` clone.
    pub fn decide(&self, subject: &Subject<'_>, tool: &str) -> Decision {
        if let Some(deny) = self.denies.iter().find(|d| d.matcher.matches(subject, tool).is_some()) {
            return Decision::Deny(Denial::Rule(Arc::clone(&deny.rule)));
        }
        match self.best_grant(subject, tool) {
            Some(winner) => Decision::Allow(Arc::clone(&winner.grant)),
            None => Decision::Deny(Denial::NoGrant),
        }
    }

    fn best_grant(&self, subject: &Subject<'_>, tool: &str) -> Option<&CompiledGrant> {
        let mut best: Option<(matcher::Specificity, &CompiledGrant)> = None;
        for grant in &self.grants {
            if let Some(spec) = grant.matcher.matches(subject, tool) {
                // Strictly greater: on a tie the earlier grant stays.
                if best.is_none_or(|(b, _)| spec > b) {
                    best = Some((spec, grant));
                }
            }
        }
        best.map(|(_, g)| g)
    }

    /// Decides whether the subject may list and read the resources of `plugin`: the
    /// same rules as [`PolicySet::decide`] over the rules' `resources` patterns
    /// (default deny, deny beats grant, the most specific grant supplies the limits a
    /// read runs under).
    pub fn decide_resources(&self, subject: &Subject<'_>, plugin: &str) -> Decision {
        if let Some(deny) = self.denies.iter().find(|d| d.matcher.matches_resources(subject, plugin).is_some()) {
            return Decision::Deny(Denial::Rule(Arc::clone(&deny.rule)));
        }
        let mut best: Option<(matcher::Specificity, &CompiledGrant)> = None;
        for grant in &self.grants {
            if let Some(spec) = grant.matcher.matches_resources(subject, plugin)
                && best.is_none_or(|(b, _)| spec > b)
            {
                best = Some((spec, grant));
            }
        }
        match best {
            Some((_, winner)) => Decision::Allow(Arc::clone(&winner.grant)),
            None => Decision::Deny(Denial::NoGrant),
        }
    }

    /// [`PolicySet::explain`] for reading `plugin`'s resources.
    pub fn explain_resources(&self, subject: &Subject<'_>, plugin: &str) -> Explanation {
        let decision = self.decide_resources(subject, plugin);
        let decided_by = decision.rule();
        let also_matched = self
            .denies
            .iter()
            .filter(|d| d.matcher.matches_resources(subject, plugin).is_some())
            .map(|d| RuleInfo::clone(&d.rule))
            .chain(
                self.grants
                    .iter()
                    .filter(|g| g.matcher.matches_resources(subject, plugin).is_some())
                    .map(|g| g.grant.rule.clone()),
            )
            .filter(|r| Some(r) != decided_by)
            .collect();
        Explanation {
            tenant: subject.tenant.to_owned(),
            role: subject.role,
            key_id: subject.key_id.to_owned(),
            tool: format!("resources of plugin {plugin}"),
            decision,
            also_matched,
        }
    }

    /// The tools among `all_tools` this caller may call (e.g. for an MCP tool list).
    pub fn visible_tools<'t>(
        &self,
        subject: &Subject<'_>,
        all_tools: impl IntoIterator<Item = &'t str>,
    ) -> Vec<&'t str> {
        all_tools.into_iter().filter(|tool| self.decide(subject, tool).is_allowed()).collect()
    }

    /// The decision plus what a person needs to understand it; `Display` renders it.
    pub fn explain(&self, subject: &Subject<'_>, tool: &str) -> Explanation {
        let decision = self.decide(subject, tool);
        let decided_by = decision.rule();
        let also_matched = self
            .denies
            .iter()
            .filter(|d| d.matcher.matches(subject, tool).is_some())
            .map(|d| RuleInfo::clone(&d.rule))
            .chain(
                self.grants.iter().filter(|g| g.matcher.matches(subject, tool).is_some()).map(|g| g.grant.rule.clone()),
            )
            .filter(|r| Some(r) != decided_by)
            .collect();
        Explanation {
            tenant: subject.tenant.to_owned(),
            role: subject.role,
            key_id: subject.key_id.to_owned(),
            tool: tool.to_owned(),
            decision,
            also_matched,
        }
    }
}
