//! A grant's network rules and secrets in the sandbox's terms ([`NetPolicy`]).

use maestro_core::policy::Grant;

use super::{CallError, Tools};
use crate::sandbox::net::{self, NetPolicy, NetRule, SecretHeader};

impl Tools {
    pub(super) fn network(&self, grant: &Grant) -> Result<NetPolicy, CallError> {
        let rules = grant
            .network
            .iter()
            .map(|rule| NetRule {
                scheme: rule.scheme.as_str().to_owned(),
                host: host_pattern(&rule.host_pattern),
                port: Some(rule.port),
                allow_private: rule.allow_private,
                origin: format!("{} ({})", grant.rule.name, grant.rule.location),
            })
            .collect();
        let mut secrets = Vec::new();
        for secret in &grant.secrets {
            let value =
                self.secrets.get(&secret.source).ok_or_else(|| CallError::SecretMissing(secret.name.clone()))?;
            let hosts: Vec<net::HostPattern> = secret.hosts.iter().map(host_pattern).collect();
            for (name, rendered) in secret.render_headers(&value) {
                let name = http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| CallError::SecretMissing(secret.name.clone()))?;
                let mut value = http::HeaderValue::from_str(&rendered)
                    .map_err(|_| CallError::SecretMissing(secret.name.clone()))?;
                value.set_sensitive(true);
                secrets.push(SecretHeader { name, value, hosts: hosts.clone() });
            }
        }
        let l = &grant.limits;
        Ok(NetPolicy {
            rules,
            secrets,
            max_requests: l.max_requests,
            max_request_bytes: l.max_request_bytes,
            max_response_bytes: l.max_response_bytes,
            request_timeout: l.request_timeout,
        })
    }
}

/// The sandbox's form of a policy host pattern (IP hosts compare as written by
/// `IpAddr`'s `Display`, which is how the sandbox keys literal hosts).
fn host_pattern(pattern: &maestro_core::policy::HostPattern) -> net::HostPattern {
    match pattern {
        maestro_core::policy::HostPattern::Name(name) => net::HostPattern::Exact(name.to_string()),
        maestro_core::policy::HostPattern::Subdomains(domain) => net::HostPattern::Subdomains(domain.to_string()),
        maestro_core::policy::HostPattern::Ip(ip) => net::HostPattern::Exact(ip.to_string()),
    }
}
