//! Egress safety: where a push may connect. The check runs on the addresses a name resolved to,
//! inside the HTTP client's resolver, so the address checked is the address connected to (a
//! DNS answer that changes between a check and the connect — rebinding — cannot slip through).
//! URLs with an IP literal skip DNS and are checked before the request.
//!
//! Always refused: link-local and metadata addresses (169.254.0.0/16, fe80::/10), unspecified
//! (0.0.0.0/8, ::), multicast and broadcast. Loopback and private networks (127/8, 10/8,
//! 172.16/12, 192.168/16, 100.64/10, ::1, fc00::/7) are allowed unless the operator sets
//! `push_deny_private_networks`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why an address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{addr} is {kind}")]
pub struct EgressDenied {
    /// The refused address.
    pub addr: IpAddr,
    /// What kind of address it is.
    pub kind: &'static str,
}

/// Checks one address against the policy.
pub fn check_ip(ip: IpAddr, deny_private: bool) -> Result<(), EgressDenied> {
    let ip = match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    };
    let deny = |kind| Err(EgressDenied { addr: ip, kind });
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_link_local() {
                return deny("link-local or a metadata address (169.254.0.0/16), always refused");
            }
            if o[0] == 0 {
                return deny("unspecified (0.0.0.0/8), always refused");
            }
            if v4.is_multicast() || v4 == Ipv4Addr::BROADCAST {
                return deny("multicast or broadcast, always refused");
            }
            let private =
                v4.is_loopback() || v4.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64);
            if deny_private && private {
                return deny("loopback or private, refused by push_deny_private_networks");
            }
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if (s[0] & 0xffc0) == 0xfe80 {
                return deny("link-local (fe80::/10), always refused");
            }
            if v6 == Ipv6Addr::UNSPECIFIED {
                return deny("unspecified (::), always refused");
            }
            if v6.is_multicast() {
                return deny("multicast, always refused");
            }
            let private = v6.is_loopback() || (s[0] & 0xfe00) == 0xfc00;
            if deny_private && private {
                return deny("loopback or private, refused by push_deny_private_networks");
            }
        }
    }
    Ok(())
}

/// A resolver that drops refused addresses; a name left with none fails with the reason.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    deny_private: bool,
    /// Test hook: fixed answers for names (like an /etc/hosts entry), still checked.
    overrides: std::sync::Arc<std::collections::HashMap<String, Vec<IpAddr>>>,
}

impl GuardedResolver {
    /// A resolver with the policy.
    pub fn new(deny_private: bool) -> GuardedResolver {
        GuardedResolver {
            deny_private,
            overrides: Default::default(),
        }
    }

    /// Answers `name` with `addrs` instead of asking DNS (the answers are still checked).
    pub fn with_override(mut self, name: &str, addrs: Vec<IpAddr>) -> GuardedResolver {
        std::sync::Arc::make_mut(&mut self.overrides).insert(name.to_ascii_lowercase(), addrs);
        self
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_ascii_lowercase();
        let fixed = self.overrides.get(&host).cloned();
        let deny_private = self.deny_private;
        Box::pin(async move {
            let found: Vec<SocketAddr> = match fixed {
                Some(ips) => ips.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect(),
                None => tokio::net::lookup_host((host.as_str(), 0)).await?.collect(),
            };
            let mut first_denial = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match check_ip(a.ip(), deny_private) {
                    Ok(()) => true,
                    Err(e) => {
                        first_denial.get_or_insert(e);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let err: Box<dyn std::error::Error + Send + Sync> = match first_denial {
                    Some(e) => Box::new(e),
                    None => format!("{host} resolved to no address").into(),
                };
                return Err(err);
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(ip: &str, deny_private: bool) -> bool {
        check_ip(ip.parse().unwrap(), deny_private).is_ok()
    }

    #[test]
    fn metadata_link_local_unspecified_and_multicast_are_always_refused() {
        for ip in [
            "169.254.169.254",
            "169.254.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "fe80::1",
            "febf::1",
            "::",
            "ff02::1",
            "::ffff:169.254.169.254",
        ] {
            assert!(!ok(ip, false), "{ip} refused");
        }
    }

    #[test]
    fn private_networks_follow_the_setting_and_public_ones_pass() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(ok(ip, false), "{ip} allowed by default");
            assert!(
                !ok(ip, true),
                "{ip} refused when private networks are denied"
            );
        }
        for ip in ["8.8.8.8", "172.32.0.1", "2606:4700::1111"] {
            assert!(ok(ip, true), "{ip} is public");
        }
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_a_refused_address_fails_with_the_reason() {
        let r = GuardedResolver::new(false)
            .with_override("metadata.test", vec!["169.254.169.254".parse().unwrap()])
            .with_override(
                "mixed.test",
                vec!["169.254.1.1".parse().unwrap(), "127.0.0.1".parse().unwrap()],
            );
        let err = match r.resolve("metadata.test".parse().unwrap()).await {
            Err(e) => e,
            Ok(_) => panic!("a metadata address must not resolve"),
        };
        let denied = err.downcast_ref::<EgressDenied>().expect("typed reason");
        assert_eq!(denied.addr, "169.254.169.254".parse::<IpAddr>().unwrap());
        let left: Vec<_> = match r.resolve("mixed.test".parse().unwrap()).await {
            Ok(a) => a.collect(),
            Err(e) => panic!("{e}"),
        };
        assert_eq!(left, vec!["127.0.0.1:0".parse().unwrap()]);
        let strict = GuardedResolver::new(true);
        assert!(strict.resolve("localhost".parse().unwrap()).await.is_err());
    }
}
