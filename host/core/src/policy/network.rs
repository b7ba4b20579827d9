//! Network allow-list entries (`https://api.example.com`, `https://*.example.org:8443`)
//! and the targets secrets are sent to (`https://api.example.com`, scheme, host and port).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The URL schemes a plugin may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain HTTP (default port 80).
    Http,
    /// HTTPS (default port 443).
    Https,
}

impl Scheme {
    /// `"http"` or `"https"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    /// The port used when a URL names none.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    fn parse(s: &str) -> Option<Self> {
        if s.eq_ignore_ascii_case("http") {
            Some(Scheme::Http)
        } else if s.eq_ignore_ascii_case("https") {
            Some(Scheme::Https)
        } else {
            None
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which hosts an entry covers. Names are stored lowercase and compared
/// case-insensitively; a trailing dot on the requested host is ignored.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// Exactly this DNS name.
    Name(Box<str>),
    /// Any name strictly below this domain: `*.example.com` matches `a.example.com` and
    /// `a.b.example.com`, not `example.com`. Stored without the `*.`.
    Subdomains(Box<str>),
    /// Exactly this address (`10.0.0.5`, `[::1]`).
    Ip(IpAddr),
}

impl HostPattern {
    /// Parses `api.example.com`, `*.example.com`, `10.0.0.5` or `[fd00::1]`.
    pub fn parse(input: &str) -> Result<Self, String> {
        if let Some(inner) = input.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or_else(|| "unterminated `[` in IPv6 address".to_owned())?;
            return inner
                .parse::<Ipv6Addr>()
                .map(|ip| HostPattern::Ip(IpAddr::V6(ip)))
                .map_err(|_| format!("{inner:?} is not an IPv6 address"));
        }
        if let Ok(ip) = input.parse::<Ipv4Addr>() {
            return Ok(HostPattern::Ip(IpAddr::V4(ip)));
        }
        if input.parse::<Ipv6Addr>().is_ok() {
            return Err("write IPv6 addresses in brackets, like [fd00::1]".to_owned());
        }
        let (wildcard, name) = match input.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, input),
        };
        if name.contains('*') {
            return Err("`*` is only allowed as the first label, like *.example.com".to_owned());
        }
        validate_dns_name(name)?;
        if name.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(format!("{name:?} is neither a DNS name nor an IPv4 address"));
        }
        let name = name.to_ascii_lowercase().into_boxed_str();
        if wildcard {
            if !name.contains('.') {
                return Err("a wildcard must keep at least two labels, like *.example.com".to_owned());
            }
            Ok(HostPattern::Subdomains(name))
        } else {
            Ok(HostPattern::Name(name))
        }
    }

    /// Whether `host` (a DNS name or an IP literal, IPv6 with or without brackets) is
    /// covered.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host);
        match self {
            HostPattern::Name(name) => host.eq_ignore_ascii_case(name),
            HostPattern::Subdomains(domain) => {
                host.len() > domain.len() + 1
                    && host.is_char_boundary(host.len() - domain.len() - 1)
                    && host[host.len() - domain.len()..].eq_ignore_ascii_case(domain)
                    && host.as_bytes()[host.len() - domain.len() - 1] == b'.'
            }
            HostPattern::Ip(ip) => {
                let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
                bare.parse::<IpAddr>().is_ok_and(|h| h == *ip)
            }
        }
    }

    /// Whether some host is covered by both patterns.
    pub fn overlaps(&self, other: &HostPattern) -> bool {
        use HostPattern::{Ip, Name, Subdomains};
        match (self, other) {
            (Ip(a), Ip(b)) => a == b,
            (Ip(_), _) | (_, Ip(_)) => false,
            (Name(a), b @ (Name(_) | Subdomains(_))) => b.matches(a),
            (a @ Subdomains(_), Name(b)) => a.matches(b),
            (Subdomains(a), Subdomains(b)) => {
                a == b || Subdomains(a.clone()).matches(b) || Subdomains(b.clone()).matches(a)
            }
        }
    }

    /// Whether this pattern names a loopback or private destination outright (an address
    /// in a restricted range, or `localhost`).
    fn is_obviously_private(&self) -> bool {
        match self {
            HostPattern::Ip(ip) => is_restricted_ip(*ip),
            HostPattern::Name(name) => &**name == "localhost" || name.ends_with(".localhost"),
            HostPattern::Subdomains(domain) => &**domain == "localhost",
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Name(name) => f.write_str(name),
            HostPattern::Subdomains(domain) => write!(f, "*.{domain}"),
            HostPattern::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            HostPattern::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
        }
    }
}

fn validate_dns_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("missing host".to_owned());
    }
    if name.len() > 253 {
        return Err("host name is longer than 253 characters".to_owned());
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!("{label:?} is not a valid DNS label (letters, digits and inner `-`, at most 63)"));
        }
    }
    Ok(())
}

/// Whether an address is one plugins may not reach unless a rule says
/// `allow_private = true`: loopback, private (RFC 1918, unique-local), link-local
/// (including the cloud metadata address 169.254.169.254), carrier-grade NAT,
/// unspecified, broadcast, multicast, documentation and reserved ranges, and IPv4
/// addresses carried in IPv6 (mapped, compatible, NAT64). One classification
/// ([`crate::net::restriction`]) serves policy validation and the sandbox alike.
pub fn is_restricted_ip(ip: IpAddr) -> bool {
    crate::net::restriction(ip).is_some()
}

/// One allow-list entry: outgoing requests to `scheme://host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NetworkRule {
    /// The scheme the request must use.
    pub scheme: Scheme,
    /// The hosts it may reach.
    pub host_pattern: HostPattern,
    /// The port (the scheme's default when the entry names none).
    pub port: u16,
    /// Whether the host may connect when the name resolves to a restricted address (see
    /// [`is_restricted_ip`]). Default false.
    pub allow_private: bool,
}

impl NetworkRule {
    /// Parses `scheme://host[:port]` strictly: scheme http or https, no user info, path,
    /// query or fragment. An IP literal or `localhost` in a restricted range needs
    /// `allow_private`.
    pub fn parse(input: &str, allow_private: bool) -> Result<Self, String> {
        let Some((scheme, rest)) = input.split_once("://") else {
            return Err("expected scheme://host[:port], like https://api.example.com".to_owned());
        };
        let scheme = Scheme::parse(scheme).ok_or_else(|| "scheme must be http or https".to_owned())?;
        if rest.contains('@') {
            return Err("user info (`user@`) is not allowed".to_owned());
        }
        if let Some(i) = rest.find(['/', '?', '#']) {
            let what = match rest.as_bytes()[i] {
                b'/' => "a path",
                b'?' => "a query",
                _ => "a fragment",
            };
            return Err(format!("{what} is not allowed; an entry names scheme://host[:port] only"));
        }
        let (host, port) = split_port(rest)?;
        let host_pattern = HostPattern::parse(host)?;
        let port = match port {
            Some(p) => p,
            None => scheme.default_port(),
        };
        if host_pattern.is_obviously_private() && !allow_private {
            return Err(format!(
                "{host_pattern} is a loopback or private address; add allow_private = true to permit it"
            ));
        }
        Ok(Self { scheme, host_pattern, port, allow_private })
    }

    /// Whether a request to `scheme://host:port` is allowed by this entry. `scheme` is
    /// compared case-insensitively; the host as in [`HostPattern::matches`].
    pub fn matches(&self, scheme: &str, host: &str, port: u16) -> bool {
        port == self.port && scheme.eq_ignore_ascii_case(self.scheme.as_str()) && self.host_pattern.matches(host)
    }
}

impl fmt::Display for NetworkRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host_pattern)?;
        if self.port != self.scheme.default_port() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

/// Where a secret's headers may be sent: one scheme, host pattern and port.
///
/// Written `scheme://host[:port]` like a network entry; a bare host (`api.github.com`)
/// means `https://api.github.com:443`, so a secret is never sent in clear text unless an
/// entry says `http://` outright. A request gets the headers only when its scheme, host
/// and port all match, on the first request and on every redirect hop.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SecretTarget {
    /// The scheme the request must use.
    pub scheme: Scheme,
    /// The hosts it may go to.
    pub host_pattern: HostPattern,
    /// The port (the scheme's default when the entry names none).
    pub port: u16,
}

impl SecretTarget {
    /// Parses `scheme://host[:port]` (no user info, path, query or fragment) or a bare
    /// host pattern, which means HTTPS on port 443.
    pub fn parse(input: &str) -> Result<Self, String> {
        if !input.contains("://") {
            let host_pattern = HostPattern::parse(input)?;
            return Ok(Self { scheme: Scheme::Https, host_pattern, port: Scheme::Https.default_port() });
        }
        // A secret target names where a header goes; whether that place is reachable
        // (private addresses included) is the network list's business.
        let rule = NetworkRule::parse(input, true)?;
        Ok(Self { scheme: rule.scheme, host_pattern: rule.host_pattern, port: rule.port })
    }

    /// Whether a request to `scheme://host:port` gets the secret. `scheme` is compared
    /// case-insensitively; the host as in [`HostPattern::matches`].
    pub fn matches(&self, scheme: &str, host: &str, port: u16) -> bool {
        port == self.port && scheme.eq_ignore_ascii_case(self.scheme.as_str()) && self.host_pattern.matches(host)
    }

    /// Whether some request `rule` allows would get the secret (same scheme and port,
    /// overlapping hosts).
    pub fn reachable_through(&self, rule: &NetworkRule) -> bool {
        self.scheme == rule.scheme && self.port == rule.port && self.host_pattern.overlaps(&rule.host_pattern)
    }
}

impl fmt::Display for SecretTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host_pattern)?;
        if self.port != self.scheme.default_port() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

/// Splits `host:port` (`[v6]:port` for IPv6), validating the port.
fn split_port(rest: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if rest.starts_with('[') {
        match rest.find(']') {
            Some(end) => {
                let after = &rest[end + 1..];
                match after.strip_prefix(':') {
                    Some(port) => (&rest[..=end], Some(port)),
                    None if after.is_empty() => (rest, None),
                    None => return Err("unexpected text after `]`".to_owned()),
                }
            }
            None => return Err("unterminated `[` in IPv6 address".to_owned()),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => {
            let valid = !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
            match p.parse::<u16>() {
                Ok(n) if valid && n > 0 => Some(n),
                _ => return Err(format!("port {p:?} must be a number from 1 to 65535")),
            }
        }
    };
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> NetworkRule {
        NetworkRule::parse(s, false).expect(s)
    }

    #[test]
    fn exact_host_matches_only_itself_on_the_default_port() {
        let r = rule("https://api.example.com");
        assert!(r.matches("https", "api.example.com", 443));
        assert!(r.matches("HTTPS", "API.Example.com.", 443));
        assert!(!r.matches("https", "api.example.com", 8443));
        assert!(!r.matches("http", "api.example.com", 443));
        assert!(!r.matches("https", "evil-api.example.com", 443));
        assert!(!r.matches("https", "api.example.com.evil.net", 443));
    }

    #[test]
    fn wildcard_matches_subdomains_but_not_the_apex() {
        let r = rule("https://*.example.org:8443");
        assert_eq!(r.port, 8443);
        assert!(r.matches("https", "a.example.org", 8443));
        assert!(r.matches("https", "a.b.example.org", 8443));
        assert!(!r.matches("https", "example.org", 8443));
        assert!(!r.matches("https", "badexample.org", 8443));
        assert!(!r.matches("https", ".example.org", 8443));
    }

    #[test]
    fn rejects_malformed_entries() {
        for (bad, why) in [
            ("ftp://x.example", "scheme must be http or https"),
            ("api.example.com", "expected scheme://host"),
            ("https://", "missing host"),
            ("https://api.example.com/", "a path"),
            ("https://api.example.com/v1", "a path"),
            ("https://api.example.com?x", "a query"),
            ("https://user@api.example.com", "user info"),
            ("https://api.example.com:0", "port"),
            ("https://api.example.com:70000", "port"),
            ("https://api.example.com:", "port"),
            ("https://*.com", "two labels"),
            ("https://a.*.com", "first label"),
            ("https://*", "first label"),
            ("https://exa mple.com", "DNS label"),
            ("https://-x.com", "DNS label"),
            ("https://::1", "DNS label"),
            ("https://127.0.0.1", "allow_private"),
            ("http://localhost:8080", "allow_private"),
            ("http://[::1]:8080", "allow_private"),
            ("http://169.254.169.254", "allow_private"),
            ("http://1.2.3", "neither"),
        ] {
            let err = NetworkRule::parse(bad, false).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn private_addresses_need_the_flag() {
        let r = NetworkRule::parse("http://10.0.0.5:8080", true).expect("allowed");
        assert!(r.allow_private);
        assert!(r.matches("http", "10.0.0.5", 8080));
        let v6 = NetworkRule::parse("http://[fd00::1]:80", true).expect("allowed");
        assert!(v6.matches("http", "[fd00::1]", 80));
        assert!(v6.matches("http", "fd00::1", 80));
        assert_eq!(v6.to_string(), "http://[fd00::1]");
    }

    #[test]
    fn restricted_ranges() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd12::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_restricted_ip(ip.parse().expect(ip)), "{ip}");
        }
        for ip in ["8.8.8.8", "2606:4700::1111", "100.128.0.1"] {
            assert!(!is_restricted_ip(ip.parse().expect(ip)), "{ip}");
        }
    }

    #[test]
    fn secret_targets_bind_scheme_host_and_port() {
        let bare = SecretTarget::parse("api.example.com").expect("bare host");
        assert_eq!(bare.to_string(), "https://api.example.com");
        assert!(bare.matches("https", "api.example.com", 443));
        assert!(!bare.matches("http", "api.example.com", 443), "never over http");
        assert!(!bare.matches("http", "api.example.com", 80), "never over http");
        assert!(!bare.matches("https", "api.example.com", 8443), "never to another port");

        let plain = SecretTarget::parse("http://10.0.0.5:8080").expect("explicit http");
        assert!(plain.matches("http", "10.0.0.5", 8080));
        assert!(!plain.matches("http", "10.0.0.5", 8081));
        assert!(!plain.matches("https", "10.0.0.5", 8080));
        assert_eq!(plain.to_string(), "http://10.0.0.5:8080");

        let https_rule = rule("https://*.example.com");
        assert!(bare.reachable_through(&https_rule));
        assert!(!bare.reachable_through(&rule("http://api.example.com")));
        assert!(!bare.reachable_through(&rule("https://api.example.com:8443")));
        for bad in ["ftp://a.example", "https://a.example/path", "https://a.example:0", "*.com", "https://"] {
            assert!(SecretTarget::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_patterns_overlap() {
        let p = |s: &str| HostPattern::parse(s).expect(s);
        assert!(p("api.github.com").overlaps(&p("*.github.com")));
        assert!(p("*.github.com").overlaps(&p("api.github.com")));
        assert!(p("*.a.github.com").overlaps(&p("*.github.com")));
        assert!(!p("github.com").overlaps(&p("*.github.com")));
        assert!(!p("api.gitlab.com").overlaps(&p("*.github.com")));
    }
}
