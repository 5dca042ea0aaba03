//! Which addresses a push may not connect to, and why.
//!
//! std's `Ipv4Addr`/`Ipv6Addr` methods cover the ranges they name in stable Rust; everything
//! else is one table ([`RANGES`]). An IPv6 address that carries an IPv4 address (IPv4-mapped,
//! IPv4-compatible, SIIT, NAT64, 6to4, Teredo) is refused when the IPv4 address it carries is:
//! a host with a NAT64 translator, a 6to4 relay or a Teredo tunnel would otherwise reach
//! 169.254.169.254 through `[64:ff9b::a9fe:a9fe]`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// How firmly an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// Whatever the settings: cloud metadata services and addresses no push can mean.
    Always,
    /// Only with `push_deny_private_networks`: loopback, private and reserved ranges.
    Private,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::Always => "always refused",
            Refusal::Private => "refused by push_deny_private_networks",
        })
    }
}

/// What an address is, when it is refused at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    /// What kind of address it is, for the error.
    pub kind: &'static str,
    /// How firmly it is refused.
    pub refusal: Refusal,
}

/// One refused range of the table.
struct Range {
    net: IpAddr,
    prefix: u8,
    kind: &'static str,
    refusal: Refusal,
}

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8, kind: &'static str, r: Refusal) -> Range {
    Range {
        net: IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
        prefix,
        kind,
        refusal: r,
    }
}

const fn v6(s: [u16; 8], prefix: u8, kind: &'static str, r: Refusal) -> Range {
    Range {
        net: IpAddr::V6(Ipv6Addr::new(
            s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7],
        )),
        prefix,
        kind,
        refusal: r,
    }
}

use Refusal::{Always, Private};

/// The refused ranges std has no stable method for. A metadata address inside a private range
/// (100.100.100.200 in 100.64.0.0/10, fd00:ec2::254 in fc00::/7) is listed on its own as
/// `Always`; the strictest match wins.
const RANGES: &[Range] = &[
    v4(
        0,
        0,
        0,
        0,
        8,
        "\"this network\" (0.0.0.0/8; Linux connects 0.0.0.0 to the host itself)",
        Always,
    ),
    v4(
        100,
        100,
        100,
        200,
        32,
        "the Alibaba Cloud metadata service (100.100.100.200)",
        Always,
    ),
    v4(
        168,
        63,
        129,
        16,
        32,
        "the Azure WireServer (168.63.129.16), which hands out VM configuration",
        Always,
    ),
    v4(
        100,
        64,
        0,
        0,
        10,
        "shared address space (carrier-grade NAT, 100.64.0.0/10)",
        Private,
    ),
    v4(
        192,
        0,
        0,
        0,
        24,
        "IETF protocol assignments (192.0.0.0/24)",
        Private,
    ),
    v4(198, 18, 0, 0, 15, "benchmarking (198.18.0.0/15)", Private),
    v4(240, 0, 0, 0, 4, "reserved (240.0.0.0/4)", Private),
    v6(
        [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254],
        128,
        "the AWS metadata service (fd00:ec2::254)",
        Always,
    ),
    v6(
        [0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254],
        128,
        "the Google Cloud metadata service (fd20:ce::254)",
        Always,
    ),
    v6(
        [0xfec0, 0, 0, 0, 0, 0, 0, 0],
        10,
        "site-local (fec0::/10)",
        Private,
    ),
    v6(
        [0x100, 0, 0, 0, 0, 0, 0, 0],
        64,
        "discard-only (100::/64)",
        Private,
    ),
    v6(
        [0x2001, 0x2, 0, 0, 0, 0, 0, 0],
        48,
        "benchmarking (2001:2::/48)",
        Private,
    ),
    v6(
        [0x2001, 0xdb8, 0, 0, 0, 0, 0, 0],
        32,
        "documentation (2001:db8::/32)",
        Private,
    ),
    v6(
        [0x3fff, 0, 0, 0, 0, 0, 0, 0],
        20,
        "documentation (3fff::/20)",
        Private,
    ),
];

fn in_range(ip: IpAddr, r: &Range) -> bool {
    match (ip, r.net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(r.prefix)).unwrap_or(0);
            a.to_bits() & mask == n.to_bits() & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(r.prefix))
                .unwrap_or(0);
            a.to_bits() & mask == n.to_bits() & mask
        }
        _ => false,
    }
}

/// The strictest class of `ip` itself (an IPv6 address's embedded IPv4 address is not looked
/// at here; see [`embedded_ipv4`]). `None`: a public address.
pub fn class_of(ip: IpAddr) -> Option<Class> {
    let c = |hit: bool, kind, refusal| hit.then_some(Class { kind, refusal });
    let named: [Option<Class>; 6] = match ip {
        IpAddr::V4(a) => [
            c(
                a.is_link_local(),
                "link-local (169.254.0.0/16), where cloud metadata services answer \
                 (169.254.169.254 on AWS, GCP, Azure, OpenStack, ...)",
                Always,
            ),
            c(a.is_multicast(), "multicast (224.0.0.0/4)", Always),
            c(a.is_broadcast(), "broadcast (255.255.255.255)", Always),
            c(a.is_loopback(), "loopback (127.0.0.0/8)", Private),
            c(
                a.is_private(),
                "private (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16)",
                Private,
            ),
            c(
                a.is_documentation(),
                "documentation (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24)",
                Private,
            ),
        ],
        IpAddr::V6(a) => [
            c(a.is_unicast_link_local(), "link-local (fe80::/10)", Always),
            c(a.is_multicast(), "multicast (ff00::/8)", Always),
            c(
                a.is_unspecified(),
                "unspecified (::; Linux connects it to the host itself)",
                Always,
            ),
            c(a.is_loopback(), "loopback (::1)", Private),
            c(a.is_unique_local(), "unique local (fc00::/7)", Private),
            None,
        ],
    };
    named
        .into_iter()
        .flatten()
        .chain(RANGES.iter().filter(|r| in_range(ip, r)).map(|r| Class {
            kind: r.kind,
            refusal: r.refusal,
        }))
        .min_by_key(|c| c.refusal)
}

/// How an IPv6 address carries an IPv4 address.
pub type Encoding = &'static str;

/// The IPv4 addresses `ip` carries, with how. Addresses of the NAT64 local-use prefix
/// (64:ff9b:1::/48) are read at every position RFC 6052 allows inside it (prefix lengths 48,
/// 56, 64 and 96) that fits the address, since the operator's choice is unknown here.
pub fn embedded_ipv4(ip: Ipv6Addr) -> Vec<(Ipv4Addr, Encoding)> {
    let o = ip.octets();
    let s = ip.segments();
    let at = |i: [usize; 4]| Ipv4Addr::new(o[i[0]], o[i[1]], o[i[2]], o[i[3]]);
    let last = at([12, 13, 14, 15]);
    let mut out = Vec::new();
    if let Some(a) = ip.to_ipv4_mapped() {
        out.push((a, "IPv4-mapped, ::ffff:0:0/96"));
    }
    // IPv4-compatible (::a.b.c.d); :: and ::1 are IPv6's own unspecified and loopback.
    if s[..6] == [0; 6] && ip.to_bits() > 1 {
        out.push((last, "IPv4-compatible, ::/96"));
    }
    if s[..6] == [0, 0, 0, 0, 0xffff, 0] {
        out.push((last, "IPv4-translated (SIIT), ::ffff:0:0:0/96"));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        out.push((last, "NAT64, 64:ff9b::/96"));
    }
    if s[..3] == [0x64, 0xff9b, 1] {
        let how = "NAT64 local use, 64:ff9b:1::/48";
        // RFC 6052: below /96 the u octet (8) and every bit after the IPv4 address are zero,
        // so only positions with a zero tail can hold one. An all-zero field holds nothing.
        let tail_zero = |from: usize| o[8] == 0 && o[from..].iter().all(|b| *b == 0);
        let candidates = [
            (tail_zero(11), at([6, 7, 9, 10])),
            (tail_zero(12), at([7, 9, 10, 11])),
            (tail_zero(13), at([9, 10, 11, 12])),
            (true, last),
        ];
        for (_, a) in candidates
            .into_iter()
            .filter(|(fits, a)| *fits && !a.is_unspecified())
        {
            out.push((a, how));
        }
    }
    if s[0] == 0x2002 {
        out.push((at([2, 3, 4, 5]), "6to4, 2002::/16"));
    }
    if s[..2] == [0x2001, 0] {
        // Teredo: the server's address, then the client's, stored inverted.
        out.push((at([4, 5, 6, 7]), "Teredo server, 2001::/32"));
        let client = Ipv4Addr::from_bits(!last.to_bits());
        out.push((client, "Teredo client, 2001::/32"));
    }
    out
}
