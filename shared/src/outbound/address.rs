//! Which IP addresses an outbound call may reach: the public internet only.
//!
//! Everything else is refused, with the reason named: loopback, link-local (which holds the
//! instance metadata service, `169.254.169.254` and `fd00:ec2::254`), private and unique-local
//! ranges, CGNAT shared space, unspecified, multicast, broadcast, documentation, benchmarking
//! and reserved ranges. IPv6 forms that carry an IPv4 address (IPv4-mapped `::ffff:a.b.c.d`,
//! IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are judged by the
//! IPv4 address they carry, so `::ffff:127.0.0.1` is as loopback as `127.0.0.1`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is refused, as the end of a sentence: "`10.0.0.1` is *a private address*".
pub fn refusal(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refuse_v4(v4),
        IpAddr::V6(v6) => refuse_v6(v6),
    }
}

fn refuse_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    let why = match (a, b, c) {
        (0, _, _) => "an unspecified address",
        (127, _, _) => "a loopback address",
        (169, 254, _) => "a link-local address (instance metadata lives there)",
        (10, _, _) | (192, 168, _) => "a private address",
        (172, 16..=31, _) => "a private address",
        (100, 64..=127, _) => "a shared (CGNAT) address",
        (192, 0, 0) => "a reserved address",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "a documentation address",
        (198, 18..=19, _) => "a benchmarking address",
        (224..=239, _, _) => "a multicast address",
        (240..=255, _, _) => "a reserved address",
        _ => return None,
    };
    Some(why)
}

fn refuse_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = embedded_v4(ip) {
        return refuse_v4(v4);
    }
    let segments = ip.segments();
    let why = if ip.is_unspecified() {
        "an unspecified address"
    } else if ip.is_loopback() {
        "a loopback address"
    } else if segments[0] & 0xffc0 == 0xfe80 {
        "a link-local address"
    } else if segments[0] & 0xfe00 == 0xfc00 {
        // fc00::/7, unique local; holds fd00:ec2::254, the IPv6 instance metadata service.
        "a private (unique local) address"
    } else if segments[0] & 0xffc0 == 0xfec0 {
        "a private (site-local) address"
    } else if segments[0] & 0xff00 == 0xff00 {
        "a multicast address"
    } else if segments[0] == 0x2001 && segments[1] == 0x0db8 {
        "a documentation address"
    } else if segments[0] == 0x2001 && segments[1] == 0 {
        "a Teredo tunnel address"
    } else if segments[..4] == [0x0100, 0, 0, 0] {
        "a discard address"
    } else if segments[..6] == [0; 6] {
        // ::/96 other than :: and ::1: deprecated IPv4-compatible addresses.
        "a reserved address"
    } else {
        return None;
    };
    Some(why)
}

/// The IPv4 address an IPv6 address stands for, in the forms that route to it.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = || Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    // IPv4-compatible (deprecated), but not :: and ::1 themselves.
    if s[..6] == [0; 6] && (s[6] != 0 || s[7] > 1) {
        return Some(tail());
    }
    // NAT64 well-known prefix.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(tail());
    }
    // 6to4: 2002:AABB:CCDD::/48 routes to AA.BB.CC.DD.
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn why(text: &str) -> Option<&'static str> {
        refusal(text.parse().unwrap())
    }

    #[test]
    fn public_addresses_pass() {
        for ok in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert_eq!(why(ok), None, "{ok}");
        }
    }

    #[test]
    fn every_internal_range_is_refused_with_its_reason() {
        let cases = [
            ("127.0.0.1", "a loopback address"),
            ("127.8.9.10", "a loopback address"),
            ("0.0.0.0", "an unspecified address"),
            ("10.1.2.3", "a private address"),
            ("172.16.0.1", "a private address"),
            ("172.31.255.255", "a private address"),
            ("192.168.1.1", "a private address"),
            ("100.64.0.1", "a shared (CGNAT) address"),
            ("100.127.255.255", "a shared (CGNAT) address"),
            (
                "169.254.169.254",
                "a link-local address (instance metadata lives there)",
            ),
            ("224.0.0.1", "a multicast address"),
            ("255.255.255.255", "a reserved address"),
            ("192.0.2.10", "a documentation address"),
            ("198.18.0.1", "a benchmarking address"),
            ("::1", "a loopback address"),
            ("::", "an unspecified address"),
            ("fe80::1", "a link-local address"),
            ("fd00:ec2::254", "a private (unique local) address"),
            ("fc00::1", "a private (unique local) address"),
            ("ff02::1", "a multicast address"),
            ("2001:db8::1", "a documentation address"),
        ];
        for (ip, expected) in cases {
            assert_eq!(why(ip), Some(expected), "{ip}");
        }
    }

    #[test]
    fn ipv6_forms_of_refused_ipv4_addresses_are_refused() {
        for (ip, expected) in [
            ("::ffff:127.0.0.1", "a loopback address"),
            ("::ffff:7f00:1", "a loopback address"),
            (
                "::ffff:169.254.169.254",
                "a link-local address (instance metadata lives there)",
            ),
            ("::127.0.0.1", "a loopback address"),
            ("::10.0.0.1", "a private address"),
            (
                "64:ff9b::a9fe:a9fe",
                "a link-local address (instance metadata lives there)",
            ),
            ("64:ff9b::7f00:1", "a loopback address"),
            ("2002:7f00:1::", "a loopback address"),
            ("2002:a00:1::1", "a private address"),
        ] {
            assert_eq!(why(ip), Some(expected), "{ip}");
        }
    }
}
