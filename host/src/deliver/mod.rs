//! HTTP push: delivery workers for the HTTP subscriptions of topics.
//!
//! # Shape
//! A supervisor ([`start`]) runs one worker per HTTP subscription and restarts, updates or
//! stops them when the store signals a catalog change (create, delete, enable, disable, secret
//! rotation). A worker owns its subscription's HTTP client (its own keep-alive connection pool,
//! redirects off, the egress-checking resolver) and at most `max_concurrency` requests in
//! flight, so a slow or dead endpoint holds back only itself.
//!
//! A worker is driven by the store, never by polling the database: each
//! [`Store::push_cycle`](crate::store::Store::push_cycle) reports the outcomes of finished
//! attempts and claims rows that are due, in one writer round trip; in between the worker
//! sleeps until whichever comes first: an attempt finishing, its subscription's waker (notified
//! right after a commit that gave it new work: a publish, a redrive, an enable), or the next
//! due time the store returned.
//!
//! # One attempt
//! Render the body ([`format`]), sign it as the subscription's [`SigningMode`] says ([`sign`]:
//! Standard Webhooks, fresh timestamp, same `webhook-id` on every attempt; [`mns_sign`]: the
//! MNS `Authorization` signature with sluice's key from [`signing_keys`]; or both), POST it, and bound everything by the push timeout: connect,
//! headers, and reading at most [`RESPONSE_BODY_CAP`] bytes of the answer (then discarded).
//! [`classify`] turns the result into a verdict, [`schedule`] the verdict into the next due time
//! or the end of the schedule.
//!
//! # Delivery guarantee
//! At least once. A crash after the endpoint answered 2xx but before the outcome committed
//! means the push is sent again, with the same `webhook-id`, after restart.

pub mod classify;
pub mod egress;
pub mod format;
pub mod mns_sign;
pub mod schedule;
pub mod sign;
pub mod signing_keys;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

#[cfg(doc)]
use crate::store::SigningMode;
use crate::store::Store;

pub use worker::{attempt_result, next_result};

/// Most bytes of an endpoint's answer that are read (and discarded): enough to let a small
/// answer finish so the connection can be reused, small enough that an endless body costs
/// nothing.
pub const RESPONSE_BODY_CAP: usize = 4096;
/// How long a stopping sluice lets pushes in flight finish before abandoning them (they are
/// pushed again after the restart).
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Settings of the delivery stage.
#[derive(Debug, Clone)]
pub struct DeliverConfig {
    /// Where pushes may connect (`push_deny_private_networks`), with its refusal counters.
    pub egress: egress::EgressPolicy,
    /// Multiplies every scheduled retry wait. 1.0 in production; tests set e.g. 0.01 so the
    /// schedules run in seconds (`push_retry_scale`, documented as a test knob). `Retry-After`
    /// is not scaled.
    pub retry_scale: f64,
    /// See [`DEFAULT_SHUTDOWN_GRACE`].
    pub shutdown_grace: Duration,
    /// Fixed DNS answers (tests: a name that resolves to a refused address). Still checked.
    pub resolve_overrides: Vec<(String, Vec<std::net::IpAddr>)>,
    /// The keys that sign MNS-signed pushes; without them such pushes fail (and are retried).
    pub signing_keys: Option<Arc<signing_keys::SigningKeys>>,
}

impl Default for DeliverConfig {
    fn default() -> Self {
        DeliverConfig {
            egress: egress::EgressPolicy::default(),
            retry_scale: 1.0,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            resolve_overrides: Vec::new(),
            signing_keys: None,
        }
    }
}

/// Why the delivery stage could not do something.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// The store refused or is closed.
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// A subscription's HTTP client could not be built.
    #[error("HTTP client for subscription `{subscription}`: {source}")]
    Client {
        /// The subscription.
        subscription: String,
        /// Why.
        source: reqwest::Error,
    },
    /// A stored secret is not a `whsec_` secret.
    #[error("signing secret: {0}")]
    BadSecret(&'static str),
}

/// Starts the delivery stage; it stops (after at most the shutdown grace) when `shutdown` is
/// cancelled. Await the handle to know it is done.
pub fn start(
    store: Store,
    config: DeliverConfig,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(worker::supervise(store, Arc::new(config), shutdown))
}
