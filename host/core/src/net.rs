//! Which addresses a plugin may reach, and host names that are really IP literals.
//!
//! Pure: the policy compiler uses it to validate entries and the sandbox to vet every
//! resolved address and redirect target, so both always agree.
//!
//! A name like `2852039166`, `0xA9FEA9FE`, `0251.0376.0251.0376` or `169.254.43518` is
//! an IPv4 literal to the C resolver (`inet_aton`), so it must be to us as well: every
//! form is parsed here and checked like the dotted quad it means. IPv6 addresses that
//! embed an IPv4 address (mapped `::ffff:a.b.c.d`, compatible `::a.b.c.d`, NAT64
//! `64:ff9b::a.b.c.d`, 6to4 `2002:AABB:CCDD::/48`) are judged by the IPv4 address they
//! carry. Teredo (`2001::/32`, whose client address is the bitwise NOT of the last 32
//! bits) and local-use NAT64 (`64:ff9b:1::/48`, RFC 8215: it translates to whatever the
//! local network chooses) are restricted outright: where they lead cannot be read from
//! the address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is off limits unless a rule explicitly allows private targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restricted {
    /// `0.0.0.0/8`, `::`.
    Unspecified,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// RFC 1918 private ranges.
    Private,
    /// `169.254.0.0/16` and `fe80::/10` (cloud metadata lives here).
    LinkLocal,
    /// `100.64.0.0/10`.
    CarrierGradeNat,
    /// `fc00::/7`.
    UniqueLocal,
    /// Multicast and broadcast.
    Multicast,
    /// Documentation, benchmarking, reserved and other special-purpose ranges.
    Reserved,
}

impl Restricted {
    /// A short description for denial messages.
    pub fn describe(self) -> &'static str {
        match self {
            Restricted::Unspecified => "unspecified address",
            Restricted::Loopback => "loopback address",
            Restricted::Private => "private address",
            Restricted::LinkLocal => "link-local or metadata address",
            Restricted::CarrierGradeNat => "carrier-grade NAT address",
            Restricted::UniqueLocal => "unique-local address",
            Restricted::Multicast => "multicast or broadcast address",
            Restricted::Reserved => "reserved address",
        }
    }
}

/// Classifies an address: `None` for a public unicast address.
pub fn restriction(ip: IpAddr) -> Option<Restricted> {
    match ip {
        IpAddr::V4(v4) => restriction_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => restriction_v4(v4),
            None => restriction_v6(v6),
        },
    }
}

fn restriction_v4(ip: Ipv4Addr) -> Option<Restricted> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => Restricted::Unspecified,
        (127, _, _) => Restricted::Loopback,
        (10, _, _) | (192, 168, _) => Restricted::Private,
        (172, b, _) if (16..=31).contains(&b) => Restricted::Private,
        (169, 254, _) => Restricted::LinkLocal,
        (100, b, _) if (64..=127).contains(&b) => Restricted::CarrierGradeNat,
        (224..=239, _, _) | (255, 255, 255) => Restricted::Multicast,
        (192, 0, 0) | (192, 0, 2) | (198, 51, 100) | (203, 0, 113) | (240..=255, _, _) => Restricted::Reserved,
        (198, 18 | 19, _) => Restricted::Reserved,
        _ => return None,
    })
}

fn restriction_v6(ip: Ipv6Addr) -> Option<Restricted> {
    let segments = ip.segments();
    Some(match segments {
        // Teredo: a tunnel to an IPv4 host behind NAT (the client is `!last 32 bits`).
        // Reaching through a relay is never needed by plugins; name the embedded
        // client's range when it has one.
        [0x2001, 0, .., hi, lo] => {
            let client = Ipv4Addr::from(!((u32::from(hi) << 16) | u32::from(lo)));
            restriction_v4(client).unwrap_or(Restricted::Reserved)
        }
        // NAT64 local-use prefix (RFC 8215).
        [0x64, 0xff9b, 1, ..] => Restricted::Reserved,
        _ if ip.is_unspecified() => Restricted::Unspecified,
        _ if ip.is_loopback() => Restricted::Loopback,
        [s, ..] if s & 0xfe00 == 0xfc00 => Restricted::UniqueLocal,
        [s, ..] if s & 0xffc0 == 0xfe80 => Restricted::LinkLocal,
        [s, ..] if s & 0xffc0 == 0xfec0 => Restricted::LinkLocal,
        [s, ..] if s & 0xff00 == 0xff00 => Restricted::Multicast,
        [0x2001, 0x0db8, ..] | [0x0100, 0, 0, 0, ..] => Restricted::Reserved,
        _ => return None,
    })
}

/// The IPv4 address an IPv6 address carries, for the forms that route to it.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(tail),
        // IPv4-compatible (deprecated, but some stacks still route it); not ::, ::1.
        [0, 0, 0, 0, 0, 0, hi, _] if hi != 0 => Some(tail),
        // NAT64 well-known prefix.
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail),
        // 6to4: the IPv4 address of the tunnel end is in bits 16..48.
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8)),
        _ => None,
    }
}

/// What a URL host means: an IP literal in any form the resolver would accept, or a
/// name to resolve. `Err` for a host that looks numeric but is not a valid address
/// (refused rather than handed to a resolver that might read it differently).
pub fn parse_host(host: &str) -> Result<HostKind, String> {
    let bracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    if let Some(inner) = bracketed {
        let inner = inner.split('%').next().unwrap_or(inner);
        return inner
            .parse::<Ipv6Addr>()
            .map(|ip| HostKind::Ip(IpAddr::V6(ip)))
            .map_err(|_| format!("invalid IPv6 literal `{host}`"));
    }
    if let Ok(ip) = host.parse::<Ipv6Addr>() {
        return Ok(HostKind::Ip(IpAddr::V6(ip)));
    }
    let looks_numeric = host.split('.').filter(|p| !p.is_empty()).all(|part| {
        let part = part.to_ascii_lowercase();
        part.bytes().all(|b| b.is_ascii_digit())
            || (part.starts_with("0x") && part[2..].bytes().all(|b| b.is_ascii_hexdigit()))
    });
    if !host.is_empty() && looks_numeric {
        return parse_ipv4_loose(host)
            .map(|ip| HostKind::Ip(IpAddr::V4(ip)))
            .ok_or_else(|| format!("invalid numeric host `{host}`"));
    }
    Ok(HostKind::Name(host.trim_end_matches('.').to_ascii_lowercase()))
}

/// A URL host, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKind {
    /// An IP literal.
    Ip(IpAddr),
    /// A DNS name (lowercase, no trailing dot).
    Name(String),
}

/// `inet_aton`: one to four parts, each decimal, `0x` hex or `0` octal; the last part
/// fills the remaining bytes.
fn parse_ipv4_loose(host: &str) -> Option<Ipv4Addr> {
    let host = host.strip_suffix('.').unwrap_or(host);
    let parts: Vec<u64> = host.split('.').map(parse_part).collect::<Option<_>>()?;
    let (last, init) = parts.split_last()?;
    if init.len() > 3 || init.iter().any(|p| *p > 255) {
        return None;
    }
    let last_bits = 8 * (4 - init.len() as u32);
    if last_bits < 64 && *last >= (1u64 << last_bits) {
        return None;
    }
    let mut value: u64 = 0;
    for part in init {
        value = (value << 8) | part;
    }
    value = (value << last_bits) | last;
    u32::try_from(value).ok().map(Ipv4Addr::from)
}

fn parse_part(part: &str) -> Option<u64> {
    let lower = part.to_ascii_lowercase();
    if let Some(hex) = lower.strip_prefix("0x") {
        return if hex.is_empty() { Some(0) } else { u64::from_str_radix(hex, 16).ok() };
    }
    if lower.len() > 1 && lower.starts_with('0') {
        return u64::from_str_radix(&lower[1..], 8).ok();
    }
    lower.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(host: &str) -> IpAddr {
        match parse_host(host) {
            Ok(HostKind::Ip(ip)) => ip,
            other => panic!("{host}: {other:?}"),
        }
    }

    #[test]
    fn every_literal_form_of_the_metadata_address_is_recognised() {
        let metadata = IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254));
        for host in [
            "169.254.169.254",
            "2852039166",
            "0xA9FEA9FE",
            "0xa9.0xfe.0xa9.0xfe",
            "0251.0376.0251.0376",
            "169.254.43518",
            "169.16689662",
        ] {
            assert_eq!(v4(host), metadata, "{host}");
        }
        let mapped = v4("[::ffff:169.254.169.254]");
        assert_eq!(restriction(mapped), Some(Restricted::LinkLocal));
        assert_eq!(restriction(v4("[::ffff:a9fe:a9fe]")), Some(Restricted::LinkLocal));
        assert_eq!(restriction(v4("[64:ff9b::169.254.169.254]")), Some(Restricted::LinkLocal));
    }

    #[test]
    fn classifies_restricted_ranges() {
        let cases = [
            ("127.0.0.1", Some(Restricted::Loopback)),
            ("127.1", Some(Restricted::Loopback)),
            ("0x7f000001", Some(Restricted::Loopback)),
            ("[::1]", Some(Restricted::Loopback)),
            ("10.0.0.1", Some(Restricted::Private)),
            ("172.16.5.4", Some(Restricted::Private)),
            ("172.32.0.1", None),
            ("192.168.1.1", Some(Restricted::Private)),
            ("100.64.0.1", Some(Restricted::CarrierGradeNat)),
            ("[fd00:ec2::254]", Some(Restricted::UniqueLocal)),
            ("[fe80::1]", Some(Restricted::LinkLocal)),
            ("0.0.0.0", Some(Restricted::Unspecified)),
            ("0", Some(Restricted::Unspecified)),
            ("[::]", Some(Restricted::Unspecified)),
            ("224.0.0.1", Some(Restricted::Multicast)),
            ("255.255.255.255", Some(Restricted::Multicast)),
            ("93.184.216.34", None),
            ("[2606:4700::1111]", None),
            ("8.8.8.8", None),
        ];
        for (host, expected) in cases {
            assert_eq!(restriction(v4(host)), expected, "{host}");
        }
    }

    #[test]
    fn ipv6_transition_addresses_are_judged_by_where_they_lead() {
        let cases = [
            // 6to4 carries its IPv4 address in bits 16..48.
            ("2002:7f00:1::1", Some(Restricted::Loopback)),
            ("2002:a9fe:a9fe::", Some(Restricted::LinkLocal)),
            ("2002:0a00:0001:1::5", Some(Restricted::Private)),
            ("2002:c0a8:0101::1", Some(Restricted::Private)),
            ("2002:0808:0808::1", None),
            // Teredo: restricted whatever it carries; the client is the NOT of the tail.
            ("2001:0:4136:e378:8000:63bf:80ff:fffe", Some(Restricted::Loopback)),
            ("2001:0:4136:e378:8000:63bf:5601:fef5", Some(Restricted::LinkLocal)),
            ("2001:0:4136:e378:8000:63bf:f5ff:fffe", Some(Restricted::Private)),
            ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", Some(Restricted::Reserved)),
            // NAT64: the well-known prefix carries IPv4; local-use is restricted.
            ("64:ff9b::7f00:1", Some(Restricted::Loopback)),
            ("64:ff9b::a00:1", Some(Restricted::Private)),
            ("64:ff9b::808:808", None),
            ("64:ff9b:1::808:808", Some(Restricted::Reserved)),
            ("64:ff9b:1:ffff::1", Some(Restricted::Reserved)),
            // Neighbours of those prefixes stay public.
            ("2001:4860::8888", None),
            ("2003::1", None),
            ("64:ff9b:2::1", None),
        ];
        for (ip, expected) in cases {
            let ip: IpAddr = ip.parse().expect(ip);
            assert_eq!(restriction(ip), expected, "{ip}");
        }
    }

    #[test]
    fn names_stay_names_and_bad_numbers_are_refused() {
        assert_eq!(parse_host("Example.COM."), Ok(HostKind::Name("example.com".into())));
        assert_eq!(parse_host("1e100.net"), Ok(HostKind::Name("1e100.net".into())));
        for bad in ["256.1.1.1", "1.2.3.4.5", "0x1ffffffff", "4294967296", "09.1.1.1", "[not-v6]"] {
            assert!(parse_host(bad).is_err(), "{bad}");
        }
    }
}
