//! Source networks: the CIDRs a key may be used from, and the source address of a check.

use std::net::IpAddr;

use ipnet::IpNet;

use super::{error::InputError, limits};

/// A key's allowed networks from the wire: at most [`limits::CIDRS_PER_KEY_MAX`] entries, each
/// an IPv4 or IPv6 CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a bare address (one host). Each is
/// normalised to its network (`10.1.2.3/8` becomes `10.0.0.0/8`; IPv4-mapped IPv6 to IPv4);
/// duplicates after normalisation are dropped, the first kept.
pub fn parse_cidrs(field: &str, raw: &[String]) -> Result<Vec<IpNet>, InputError> {
    InputError::check_count(field, raw.len(), limits::CIDRS_PER_KEY_MAX)?;
    let mut out: Vec<IpNet> = Vec::with_capacity(raw.len());
    for (i, text) in raw.iter().enumerate() {
        let net = parse_cidr(text).ok_or_else(|| {
            InputError::invalid(
                format!("{field}[{i}]"),
                format!(
                    "`{}` is not an IPv4 or IPv6 CIDR (`10.0.0.0/8`, `2001:db8::/32`) or address",
                    super::ids::shorten(text)
                ),
            )
        })?;
        if !out.contains(&net) {
            out.push(net);
        }
    }
    Ok(out)
}

fn parse_cidr(text: &str) -> Option<IpNet> {
    let net = match text.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => IpNet::from(text.parse::<IpAddr>().ok()?),
    };
    let net = match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).ok()?,
            None => net,
        },
        _ => net,
    };
    Some(net.trunc())
}

/// A check's source address from the wire: an IPv4 or IPv6 literal (IPv4-mapped IPv6 is read
/// as IPv4, as dual-stack sockets report IPv4 peers).
pub fn parse_source_address(field: &str, raw: &str) -> Result<IpAddr, InputError> {
    raw.parse::<IpAddr>()
        .map(canonical)
        .map_err(|_| InputError::invalid(field, "must be an IPv4 or IPv6 address, e.g. `203.0.113.7` or `2001:db8::1`"))
}

/// IPv4-mapped IPv6 addresses as IPv4; every other address as it is.
pub fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether a check from `source` may use a key allowing `cidrs`: any source when the list is
/// empty; otherwise only a known source inside one of them (no source: refused, fail closed).
pub fn source_allowed(cidrs: &[IpNet], source: Option<IpAddr>) -> bool {
    if cidrs.is_empty() {
        return true;
    }
    let Some(source) = source.map(canonical) else { return false };
    cidrs.iter().any(|net| net.contains(&source))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(list: &[&str]) -> Vec<IpNet> {
        let raw: Vec<String> = list.iter().map(|s| (*s).to_owned()).collect();
        parse_cidrs("allowed_cidrs", &raw).expect("valid cidrs")
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().expect("test address"))
    }

    #[test]
    fn cidrs_are_normalised_and_deduplicated() {
        let got: Vec<String> =
            cidrs(&["10.1.2.3/8", "10.0.0.0/8", "192.0.2.7", "2001:db8::1/32", "::ffff:198.51.100.0/120"])
                .iter()
                .map(ToString::to_string)
                .collect();
        assert_eq!(got, ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32", "198.51.100.0/24"]);
    }

    #[test]
    fn bad_cidrs_name_the_entry() {
        for bad in ["", "10.0.0.0/33", "10.0.0", "example.com", "fe80::1%eth0", "2001:db8::/129", " 10.0.0.1"] {
            let raw = vec!["10.0.0.0/8".to_owned(), bad.to_owned()];
            let err = parse_cidrs("allowed_cidrs", &raw).expect_err(bad);
            assert_eq!(err.field(), "allowed_cidrs[1]", "{bad}");
        }
        let many: Vec<String> = (0..33).map(|i| format!("10.0.0.{i}")).collect();
        assert!(matches!(parse_cidrs("allowed_cidrs", &many), Err(InputError::TooMany { limit: 32, .. })));
    }

    #[test]
    fn sources_match_v4_and_v6_networks_and_fail_closed() {
        let nets = cidrs(&["10.0.0.0/8", "2001:db8::/32"]);
        assert!(source_allowed(&nets, ip("10.200.1.1")));
        assert!(source_allowed(&nets, ip("::ffff:10.0.0.1")));
        assert!(source_allowed(&nets, ip("2001:db8:ffff::1")));
        assert!(!source_allowed(&nets, ip("11.0.0.1")));
        assert!(!source_allowed(&nets, ip("2001:db9::1")));
        assert!(!source_allowed(&nets, None));
        assert!(source_allowed(&[], None));
    }

    #[test]
    fn source_addresses_must_be_ip_literals() {
        assert_eq!(parse_source_address("source_address", "::ffff:192.0.2.1"), Ok("192.0.2.1".parse().expect("ip")));
        for bad in ["", "192.0.2.1:80", "10.0.0.0/8", "localhost", "[::1]"] {
            assert_eq!(
                parse_source_address("source_address", bad).map_err(|e| e.field().to_owned()),
                Err("source_address".to_owned()),
                "{bad}"
            );
        }
    }
}
