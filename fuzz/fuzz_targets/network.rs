//! Source networks (`parse_cidrs`, `parse_source_address`, `source_allowed`): never panics on
//! any input; parsed CIDRs are normalised, deduplicated and bounded, and whether a source is
//! allowed agrees with an independent bit-mask model (fail closed without a source).
//!
//! Input: lines; each is a CIDR of the list and a candidate source address.
#![no_main]

use std::net::IpAddr;

use ipnet::IpNet;
use keyscope::domain::{limits, parse_cidrs, parse_source_address, source_allowed};
use libfuzzer_sys::fuzz_target;

/// IPv4-mapped IPv6 as IPv4, from the address's bits.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let o = v6.octets();
            if o[..10].iter().all(|&b| b == 0) && o[10] == 0xff && o[11] == 0xff {
                IpAddr::from([o[12], o[13], o[14], o[15]])
            } else {
                ip
            }
        }
        v4 => v4,
    }
}

/// Whether `net` holds `ip`, by masking: families never mix.
fn contains(net: &IpNet, ip: IpAddr) -> bool {
    match (net.addr(), ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(net.prefix_len())).unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(net.prefix_len())).unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let lines: Vec<String> = text.lines().take(40).map(str::to_owned).collect();

    let nets = match parse_cidrs("allowed_cidrs", &lines) {
        Ok(nets) => {
            assert!(lines.len() <= limits::CIDRS_PER_KEY_MAX);
            assert!(nets.len() <= lines.len());
            for (i, net) in nets.iter().enumerate() {
                assert_eq!(*net, net.trunc(), "stored as its network");
                assert!(!nets[..i].contains(net), "no duplicates");
                assert_eq!(canonical(net.addr()), net.addr(), "IPv4-mapped networks are stored as IPv4");
                // Normalising is idempotent: the stored form parses back to itself.
                assert_eq!(parse_cidrs("f", &[net.to_string()]).ok().as_deref(), Some(&[*net][..]));
            }
            nets
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(shown.starts_with("allowed_cidrs"), "the error names the field: {shown}");
            assert!(!shown.contains('\n'));
            Vec::new()
        }
    };

    for line in &lines {
        let Ok(source) = parse_source_address("source_address", line) else {
            assert!(line.parse::<IpAddr>().is_err(), "every IP literal is a source address: {line:?}");
            continue;
        };
        assert_eq!(source, canonical(line.parse().expect("an IP literal")), "read as canonical");
        // The allow decision agrees with the model; no list allows all; no source fails closed.
        let want = nets.is_empty() || nets.iter().any(|n| contains(n, source));
        assert_eq!(source_allowed(&nets, Some(source)), want, "{source} in {nets:?}");
        let raw: IpAddr = line.parse().expect("an IP literal");
        assert_eq!(source_allowed(&nets, Some(raw)), want, "the raw (mapped) form decides the same");
        // A key bound to exactly this address accepts it, in either form, and nothing else
        // of the other family.
        let own = parse_cidrs("allowed_cidrs", &[line.clone()]).expect("an address is a one-host CIDR");
        assert_eq!(own.len(), 1);
        assert_eq!(own[0].prefix_len(), if source.is_ipv4() { 32 } else { 128 });
        assert!(source_allowed(&own, Some(source)) && source_allowed(&own, Some(raw)));
    }
    assert!(source_allowed(&nets, None) == nets.is_empty(), "no source address: refused unless unrestricted");
});
