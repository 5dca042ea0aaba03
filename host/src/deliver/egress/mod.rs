//! Egress safety: where a push may connect. The check runs on the addresses a name resolved to,
//! inside the HTTP client's resolver, so the address checked is the address connected to (a
//! DNS answer that changes between a check and the connect — rebinding — cannot slip through).
//! URLs with an IP literal skip DNS and are checked before every request, and when the
//! subscription is created (a `400` naming the address, on both API faces).
//!
//! Always refused: cloud metadata services in every encoding (169.254.0.0/16, 100.100.100.200,
//! 168.63.129.16, fd00:ec2::254, fd20:ce::254, `metadata.google.internal`), fe80::/10,
//! 0.0.0.0/8, ::, multicast and broadcast. Loopback, private, shared (CGNAT), unique local,
//! documentation, benchmarking and reserved ranges are allowed unless the operator sets
//! `push_deny_private_networks`. [`ranges`] has the table; an IPv6 address carrying an IPv4
//! address is judged by that IPv4 address too. The threat model is in `docs/security.md`.

pub mod ranges;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

use ranges::{class_of, embedded_ipv4, Refusal};

/// Host names of cloud metadata services, refused before any DNS lookup (they resolve to
/// link-local addresses, which are refused anyway; refusing the name gives a clear error at
/// creation). Compared without case and without trailing dots.
pub const METADATA_HOSTS: &[&str] = &["metadata.google.internal", "instance-data.ec2.internal"];

/// Why a push target was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressDenied {
    /// The address itself is refused.
    #[error("{addr} is {kind}: {refusal}")]
    Address {
        /// The refused address.
        addr: IpAddr,
        /// What kind of address it is.
        kind: &'static str,
        /// Always, or by the setting.
        refusal: Refusal,
    },
    /// An IPv6 address carries a refused IPv4 address.
    #[error("{addr} carries {inner} ({encoding}), which is {kind}: {refusal}")]
    Embedded {
        /// The IPv6 address.
        addr: Ipv6Addr,
        /// The IPv4 address it carries.
        inner: Ipv4Addr,
        /// How it carries it.
        encoding: ranges::Encoding,
        /// What kind of address the IPv4 address is.
        kind: &'static str,
        /// Always, or by the setting.
        refusal: Refusal,
    },
    /// The host name is a cloud metadata service's.
    #[error("`{name}` is a cloud metadata service's host name: always refused")]
    MetadataHost {
        /// The name as given.
        name: String,
    },
}

impl EgressDenied {
    /// The address that was refused (`None` for a refused name).
    pub fn addr(&self) -> Option<IpAddr> {
        match self {
            EgressDenied::Address { addr, .. } => Some(*addr),
            EgressDenied::Embedded { addr, .. } => Some(IpAddr::V6(*addr)),
            EgressDenied::MetadataHost { .. } => None,
        }
    }
}

/// Checks one address against the policy: the address itself, then every IPv4 address it
/// carries.
pub fn check_ip(ip: IpAddr, deny_private: bool) -> Result<(), EgressDenied> {
    let refused = |r: Refusal| r == Refusal::Always || deny_private;
    if let Some(c) = class_of(ip).filter(|c| refused(c.refusal)) {
        return Err(EgressDenied::Address {
            addr: ip,
            kind: c.kind,
            refusal: c.refusal,
        });
    }
    let IpAddr::V6(v6) = ip else { return Ok(()) };
    let worst = embedded_ipv4(v6)
        .into_iter()
        .filter_map(|(inner, encoding)| {
            let c = class_of(IpAddr::V4(inner)).filter(|c| refused(c.refusal))?;
            Some((inner, encoding, c))
        })
        .min_by_key(|(_, _, c)| c.refusal);
    match worst {
        None => Ok(()),
        Some((inner, encoding, c)) => Err(EgressDenied::Embedded {
            addr: v6,
            inner,
            encoding,
            kind: c.kind,
            refusal: c.refusal,
        }),
    }
}

/// Checks a host name before it is resolved: metadata service names are refused.
pub fn check_name(name: &str) -> Result<(), EgressDenied> {
    let bare = name.trim_end_matches('.');
    if METADATA_HOSTS.iter().any(|m| m.eq_ignore_ascii_case(bare)) {
        return Err(EgressDenied::MetadataHost {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Checks what can be checked of a URL without DNS: an IP literal host (in any spelling the
/// URL parser accepts — `0xA9FEA9FE`, `2852039166`, `0251.0376.0251.0376`, `169.254.43518` are
/// all 169.254.169.254 once parsed) or a metadata host name. A URL without a host passes (the
/// caller's URL validation refuses it).
pub fn check_url(url: &Url, deny_private: bool) -> Result<(), EgressDenied> {
    let Some(host) = url.host_str() else {
        return Ok(());
    };
    // The parser writes an IPv4 host in dotted decimal and an IPv6 host in brackets; a host
    // that is neither is a name (a name that looks like a number is an IPv4 host or no URL).
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) => check_ip(ip, deny_private),
        Err(_) => check_name(host),
    }
}

/// Push targets refused by the policy, for `/metrics`.
#[derive(Debug, Default)]
pub struct EgressCounters {
    /// Subscriptions refused at creation.
    pub refused_at_create: AtomicU64,
    /// Push attempts refused before connecting.
    pub refused_at_connect: AtomicU64,
}

/// The egress policy as configured, with its counters; cloned into the API and every push
/// worker.
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    /// Refuse loopback and private ranges too (`push_deny_private_networks`).
    pub deny_private_networks: bool,
    /// Shared by every clone.
    pub counters: Arc<EgressCounters>,
}

impl EgressPolicy {
    /// A policy with fresh counters.
    pub fn new(deny_private_networks: bool) -> EgressPolicy {
        EgressPolicy {
            deny_private_networks,
            counters: Arc::default(),
        }
    }

    /// Checks the URL of a subscription being created; counts a refusal. A URL that does not
    /// parse passes here: the subscription's validation refuses it with the parser's reason.
    pub fn check_new_endpoint(&self, url: &str) -> Result<(), String> {
        let Ok(parsed) = Url::parse(url) else {
            return Ok(());
        };
        check_url(&parsed, self.deny_private_networks).map_err(|e| {
            self.counters
                .refused_at_create
                .fetch_add(1, Ordering::Relaxed);
            format!("`{url}` is not a permitted push endpoint: {e} (see docs/security.md)")
        })
    }

    /// Counts a push attempt refused before connecting.
    pub fn count_refused_connect(&self) {
        self.counters
            .refused_at_connect
            .fetch_add(1, Ordering::Relaxed);
    }
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
            check_name(&host)?;
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
mod tests;
