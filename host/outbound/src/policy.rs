//! What one client may reach: allow-list rules, the secrets it injects and its caps.

use std::time::Duration;

use http::{HeaderName, HeaderValue};
use maestro_core::policy::{Grant, NetworkRule, SecretSource};

/// Which hosts an allow-list entry matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Exactly this host (lowercase name or IP literal as `IpAddr` displays it).
    Exact(String),
    /// Any subdomain of this domain (`*.example.com`: `a.example.com`, not
    /// `example.com`).
    Subdomains(String),
    /// Any host (`*`).
    Any,
}

impl HostPattern {
    /// Parses `example.com`, `*.example.com` or `*`.
    pub fn parse(pattern: &str) -> Self {
        let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
        match pattern.strip_prefix("*.") {
            _ if pattern == "*" => HostPattern::Any,
            Some(domain) => HostPattern::Subdomains(domain.to_owned()),
            None => HostPattern::Exact(pattern),
        }
    }

    /// Whether `host` (lowercase) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Exact(exact) => exact == host,
            HostPattern::Subdomains(domain) => {
                host.len() > domain.len() + 1
                    && host.ends_with(domain.as_str())
                    && host[..host.len() - domain.len()].ends_with('.')
            }
        }
    }

    /// The client's form of a policy host pattern (IP hosts compare as `IpAddr`'s
    /// `Display` writes them, which is how the client keys literal hosts).
    pub fn from_policy(pattern: &maestro_core::policy::HostPattern) -> Self {
        match pattern {
            maestro_core::policy::HostPattern::Name(name) => HostPattern::Exact(name.to_string()),
            maestro_core::policy::HostPattern::Subdomains(domain) => HostPattern::Subdomains(domain.to_string()),
            maestro_core::policy::HostPattern::Ip(ip) => HostPattern::Exact(ip.to_string()),
        }
    }
}

/// One allow-list entry: `scheme://host[:port]`.
#[derive(Debug, Clone)]
pub struct NetRule {
    /// `http` or `https`.
    pub scheme: String,
    /// Hosts it matches.
    pub host: HostPattern,
    /// The port, or any port when `None`.
    pub port: Option<u16>,
    /// Whether loopback/private/link-local targets are allowed for this entry.
    pub allow_private: bool,
    /// Where the entry was written (e.g. `policies/teams.toml:14`), for messages.
    pub origin: String,
}

impl NetRule {
    /// Parses `scheme://host[:port]` strictly, as policies do: an IP literal or
    /// `localhost` in a restricted range needs `allow_private`, and even then the rule
    /// reaches only that target. `origin` names where the entry comes from (a config
    /// key, a policy line) for denial messages.
    pub fn parse(entry: &str, allow_private: bool, origin: impl Into<String>) -> Result<Self, String> {
        NetworkRule::parse(entry, allow_private).map(|rule| Self::from_policy(&rule, origin))
    }

    /// The client's form of a policy network entry.
    pub fn from_policy(rule: &NetworkRule, origin: impl Into<String>) -> Self {
        Self {
            scheme: rule.scheme.as_str().to_owned(),
            host: HostPattern::from_policy(&rule.host_pattern),
            port: Some(rule.port),
            allow_private: rule.allow_private,
            origin: origin.into(),
        }
    }

    pub(crate) fn matches(&self, scheme: &str, host: &str, port: u16) -> bool {
        self.scheme == scheme && self.host.matches(host) && self.port.is_none_or(|p| p == port)
    }
}

/// Where a secret header may go: this scheme, these hosts, this port. A request (or
/// redirect hop) gets the header only when all three match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretTarget {
    /// `http` or `https`.
    pub scheme: String,
    /// Hosts it matches.
    pub host: HostPattern,
    /// The port.
    pub port: u16,
}

impl SecretTarget {
    /// A target for `scheme://host:port`.
    pub fn new(scheme: &str, host: HostPattern, port: u16) -> Self {
        Self { scheme: scheme.to_ascii_lowercase(), host, port }
    }

    /// Parses `scheme://host[:port]` or a bare host (https on port 443), as policies do.
    pub fn parse(entry: &str) -> Result<Self, String> {
        maestro_core::policy::SecretTarget::parse(entry).map(|t| Self::from_policy(&t))
    }

    /// The client's form of a policy secret target.
    pub fn from_policy(target: &maestro_core::policy::SecretTarget) -> Self {
        Self::new(target.scheme.as_str(), HostPattern::from_policy(&target.host_pattern), target.port)
    }

    pub(crate) fn matches(&self, scheme: &str, host: &str, port: u16) -> bool {
        self.port == port && self.scheme == scheme && self.host.matches(host)
    }
}

/// A header the host adds to requests for some targets (a secret the caller never sees).
#[derive(Clone)]
pub struct SecretHeader {
    /// Header name.
    pub name: HeaderName,
    /// Header value (marked sensitive).
    pub value: HeaderValue,
    /// Where it is sent: scheme, host and port must all match.
    pub targets: Vec<SecretTarget>,
}

impl std::fmt::Debug for SecretHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretHeader")
            .field("name", &self.name)
            .field("value", &"<redacted>")
            .field("targets", &self.targets)
            .finish()
    }
}

/// What one client may do on the network.
#[derive(Debug, Clone)]
pub struct NetPolicy {
    /// Allow-list; empty denies everything.
    pub rules: Vec<NetRule>,
    /// Headers injected for matching targets.
    pub secrets: Vec<SecretHeader>,
    /// Requests over the client's life (redirect hops count).
    pub max_requests: u32,
    /// Largest request body.
    pub max_request_bytes: u64,
    /// Largest response body.
    pub max_response_bytes: u64,
    /// Time for one request: connect, send, and receive the whole response.
    pub request_timeout: Duration,
}

/// A grant's secret the host cannot supply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("secret `{secret}` is not available on this host")]
pub struct SecretUnavailable {
    /// The `[secrets.NAME]` name.
    pub secret: String,
}

impl NetPolicy {
    /// No network at all.
    pub fn deny_all() -> Self {
        Self {
            rules: Vec::new(),
            secrets: Vec::new(),
            max_requests: 0,
            max_request_bytes: 0,
            max_response_bytes: 0,
            request_timeout: Duration::from_secs(10),
        }
    }

    /// Only these rules, with generous caps for a long-lived client (a model provider,
    /// an embedder, webhooks): unlimited requests, 1 MiB requests, 16 MiB responses, 60 s
    /// per request. Adjust the fields for other needs.
    pub fn allowing(rules: Vec<NetRule>) -> Self {
        Self {
            rules,
            secrets: Vec::new(),
            max_requests: u32::MAX,
            max_request_bytes: 1 << 20,
            max_response_bytes: 16 << 20,
            request_timeout: Duration::from_secs(60),
        }
    }

    /// The policy a plugin call gets from its grant: the grant's network entries, its
    /// secrets (values from `secret_value`) bound to their targets, and its limits.
    pub fn from_grant(
        grant: &Grant,
        secret_value: impl Fn(&SecretSource) -> Option<String>,
    ) -> Result<Self, SecretUnavailable> {
        let origin = format!("{} ({})", grant.rule.name, grant.rule.location);
        let rules = grant.network.iter().map(|rule| NetRule::from_policy(rule, origin.clone())).collect();
        let mut secrets = Vec::new();
        for secret in &grant.secrets {
            let unavailable = || SecretUnavailable { secret: secret.name.clone() };
            let value = secret_value(&secret.source).ok_or_else(unavailable)?;
            let targets: Vec<SecretTarget> = secret.hosts.iter().map(SecretTarget::from_policy).collect();
            for (name, rendered) in secret.render_headers(&value) {
                let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| unavailable())?;
                let mut value = HeaderValue::from_str(&rendered).map_err(|_| unavailable())?;
                value.set_sensitive(true);
                secrets.push(SecretHeader { name, value, targets: targets.clone() });
            }
        }
        let l = &grant.limits;
        Ok(Self {
            rules,
            secrets,
            max_requests: l.max_requests,
            max_request_bytes: l.max_request_bytes,
            max_response_bytes: l.max_response_bytes,
            request_timeout: l.request_timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use maestro_core::Role;
    use maestro_core::policy::{PolicySet, Subject};

    use super::*;

    #[test]
    fn host_patterns_match_exactly_what_they_say() {
        let sub = HostPattern::parse("*.Example.com");
        assert!(sub.matches("api.example.com") && sub.matches("a.b.example.com"));
        assert!(!sub.matches("example.com") && !sub.matches("evilexample.com") && !sub.matches("example.com.evil.io"));
        let exact = HostPattern::parse("example.com");
        assert!(exact.matches("example.com") && !exact.matches("api.example.com"));
        assert!(HostPattern::parse("*").matches("anything.at.all"));
    }

    #[test]
    fn a_grant_binds_each_secret_to_its_scheme_host_and_port() {
        let set = PolicySet::parse([(
            "p.toml",
            r#"version = 1
[secrets.tls-only]
source = "env:TOKEN"
headers = { Authorization = "Bearer {secret}" }
hosts = ["api.example.com"]
[secrets.plain]
source = "env:TOKEN"
headers = { X-Internal = "{secret}" }
hosts = ["http://10.0.0.5:8080"]
[[grant]]
name = "g"
subjects = ["*"]
tools = ["web.fetch"]
network = ["https://api.example.com", "http://api.example.com", { url = "http://10.0.0.5:8080", allow_private = true }]
secrets = ["tls-only", "plain"]
"#,
        )])
        .expect("valid");
        let subject = Subject { tenant: "acme", role: Role::Member, key_id: "k" };
        let decision = set.decide(&subject, "web.fetch");
        let grant = decision.grant().expect("allowed");
        let policy = NetPolicy::from_grant(grant, |_| Some("t0k".to_owned())).expect("secrets available");
        let sent = |scheme: &str, host: &str, port: u16| -> Vec<String> {
            policy
                .secrets
                .iter()
                .filter(|s| s.targets.iter().any(|t| t.matches(scheme, host, port)))
                .map(|s| s.name.to_string())
                .collect()
        };
        assert_eq!(sent("https", "api.example.com", 443), ["authorization"]);
        assert!(sent("http", "api.example.com", 80).is_empty(), "never in clear text");
        assert!(sent("http", "api.example.com", 443).is_empty(), "not over http on 443 either");
        assert!(sent("https", "api.example.com", 8443).is_empty(), "not to another port");
        assert_eq!(sent("http", "10.0.0.5", 8080), ["x-internal"]);
        assert!(sent("http", "10.0.0.5", 8081).is_empty());
        assert!(policy.rules.iter().any(|r| r.matches("http", "10.0.0.5", 8080) && r.allow_private));

        let missing = NetPolicy::from_grant(grant, |_| None).expect_err("no value");
        assert_eq!(missing.to_string(), "secret `tls-only` is not available on this host");
    }

    #[test]
    fn rules_from_entries_keep_private_targets_explicit() {
        let err = NetRule::parse("http://127.0.0.1:11434", false, "config").expect_err("loopback needs the flag");
        assert!(err.contains("allow_private"), "{err}");
        let ollama = NetRule::parse("http://127.0.0.1:11434", true, "config").expect("explicit");
        assert!(ollama.allow_private && ollama.matches("http", "127.0.0.1", 11434));
        assert!(!ollama.matches("http", "127.0.0.1", 11435));
    }
}
