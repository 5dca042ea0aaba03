//! Caps on concurrent connections, in total and per source address, shared by the MQTT listener
//! (plain and TLS) and the HTTP API (HTTP and HTTPS).
//!
//! Every accepted socket takes a [`ConnPermit`] before anything else is done with it; a socket
//! that gets none is closed at once and counted. The permit is released when the connection's
//! task drops it, however the connection ends. Without the caps one address could hold every
//! file descriptor of the process (a thousand half-open HTTP requests did), and no other device
//! or consumer could connect.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// How many connections are allowed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Connections open at once, from everyone.
    pub max_total: usize,
    /// Connections open at once from one source address (IPv4, or IPv6 including IPv4-mapped
    /// addresses taken as IPv4).
    pub max_per_ip: usize,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `max_total` connections are open.
    Total,
    /// `max_per_ip` connections from this address are open.
    PerIp,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

#[derive(Debug)]
struct Inner {
    limits: ConnLimits,
    open: Mutex<Open>,
    refused_total: AtomicU64,
}

/// Counts open connections and admits new ones while under both caps. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ConnLimiter {
    inner: Arc<Inner>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct ConnPermit {
    inner: Arc<Inner>,
    ip: IpAddr,
}

impl ConnLimiter {
    /// A limiter with nothing open.
    pub fn new(limits: ConnLimits) -> ConnLimiter {
        ConnLimiter {
            inner: Arc::new(Inner {
                limits,
                open: Mutex::new(Open::default()),
                refused_total: AtomicU64::new(0),
            }),
        }
    }

    /// Admits a connection from `ip`, or says which cap it hit (and counts the refusal).
    pub fn try_admit(&self, ip: IpAddr) -> Result<ConnPermit, Refused> {
        let ip = ip.to_canonical();
        let limits = self.inner.limits;
        let mut open = self
            .inner
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let refused = if open.total >= limits.max_total {
            Some(Refused::Total)
        } else if open.by_ip.get(&ip).copied().unwrap_or(0) >= limits.max_per_ip {
            Some(Refused::PerIp)
        } else {
            None
        };
        if let Some(why) = refused {
            self.inner.refused_total.fetch_add(1, Ordering::Relaxed);
            return Err(why);
        }
        open.total += 1;
        *open.by_ip.entry(ip).or_default() += 1;
        Ok(ConnPermit {
            inner: self.inner.clone(),
            ip,
        })
    }

    /// Connections refused so far (either cap).
    pub fn refused_total(&self) -> u64 {
        self.inner.refused_total.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.inner
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }

    /// The caps in force.
    pub fn limits(&self) -> ConnLimits {
        self.inner.limits
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut open = self
            .inner
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.by_ip.remove(&self.ip);
            }
        }
    }
}

/// Logs a refusal at debug level (a flood would fill the log; the counter shows it), naming
/// the config key that raises the cap.
pub fn log_refused(peer: std::net::SocketAddr, why: Refused, limits: ConnLimits, keys: [&str; 2]) {
    match why {
        Refused::Total => {
            tracing::debug!(%peer, "connection refused: {} connections are open; raise `{}` to allow more", limits.max_total, keys[0])
        }
        Refused::PerIp => {
            tracing::debug!(%peer, "connection refused: {} connections from this address are open; raise `{}` to allow more", limits.max_per_ip, keys[1])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_under_both_caps_and_frees_on_drop() {
        // Proves both caps: the per-address cap refuses the third connection of one address
        // while another address still gets in, the total cap refuses everyone, and dropping a
        // permit frees its place; IPv4-mapped IPv6 counts as the IPv4 address.
        let l = ConnLimiter::new(ConnLimits {
            max_total: 3,
            max_per_ip: 2,
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let a6: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = l.try_admit(a).unwrap();
        let _p2 = l.try_admit(a6).unwrap();
        assert_eq!(l.try_admit(a).unwrap_err(), Refused::PerIp);
        let _p3 = l.try_admit(b).unwrap();
        assert_eq!(l.try_admit(b).unwrap_err(), Refused::Total);
        assert_eq!(l.refused_total(), 2);
        drop(p1);
        assert_eq!(l.open(), 2);
        let _p4 = l.try_admit(a).unwrap();
    }
}
