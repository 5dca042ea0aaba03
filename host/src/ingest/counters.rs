//! Counters of the ingest stage, kept as atomics so every connection can bump them without a
//! lock; the metrics endpoint reads a snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

/// Running totals for the ingest stage (shared by the listener, its sessions and the router).
#[derive(Debug, Default)]
pub struct IngestCounters {
    /// Connections accepted (TCP), total.
    pub connections_total: AtomicU64,
    /// Sessions currently connected (CONNACK sent, not yet closed).
    pub sessions_active: AtomicU64,
    /// CONNECTs refused with a non-zero CONNACK code.
    pub connects_refused_total: AtomicU64,
    /// PUBLISH packets handed to the sink.
    pub publishes_in_total: AtomicU64,
    /// PUBACK/PUBREC (positive) sent after a commit.
    pub acks_total: AtomicU64,
    /// Publishes the pipeline rejected (negative ack or disconnect).
    pub rejected_total: AtomicU64,
    /// PUBLISH or SUBSCRIBE refused by the policy.
    pub refused_total: AtomicU64,
    /// Connections closed for a malformed or unexpected packet.
    pub malformed_total: AtomicU64,
    /// Connections closed because the keep-alive expired.
    pub keepalive_timeouts_total: AtomicU64,
    /// Downlink messages delivered into a session's queue.
    pub downlink_total: AtomicU64,
    /// Downlink messages dropped because a session's queue was full.
    pub downlink_dropped_total: AtomicU64,
    /// Connections closed at accept: the total or per-address connection cap was reached.
    pub connections_refused_total: AtomicU64,
    /// Connections closed because no complete CONNECT (or TLS handshake) came in time.
    pub connect_timeouts_total: AtomicU64,
    /// Sessions without keep-alive closed after the maximum idle time.
    pub idle_timeouts_total: AtomicU64,
    /// SUBSCRIBE filters refused because the session holds its maximum of subscriptions.
    pub subscriptions_over_limit_total: AtomicU64,
    /// Connections closed for a SUBSCRIBE or UNSUBSCRIBE with more filters than allowed in one packet.
    pub too_many_filters_total: AtomicU64,
    /// Saved persistent sessions dropped because too many were saved (oldest first).
    pub saved_sessions_evicted_total: AtomicU64,
    /// Saved persistent sessions dropped after their expiry.
    pub saved_sessions_expired_total: AtomicU64,
    /// Synchronous calls (RRPC) that started waiting for a device's answer.
    pub rrpc_calls_total: AtomicU64,
    /// Synchronous calls the device answered in time.
    pub rrpc_answered_total: AtomicU64,
    /// Synchronous calls that ended without an answer.
    pub rrpc_timeouts_total: AtomicU64,
    /// Synchronous calls refused because the most allowed were waiting already.
    pub rrpc_refused_total: AtomicU64,
    /// QoS 1 downlink messages kept for an offline persistent session.
    pub offline_stored_total: AtomicU64,
    /// Downlink messages refused because the session's offline store was full.
    pub offline_refused_total: AtomicU64,
    /// Kept downlink messages dropped unsent after their retention.
    pub offline_expired_total: AtomicU64,
    /// Kept downlink messages the device acknowledged after it came back.
    pub offline_delivered_total: AtomicU64,
}

/// A plain copy of [`IngestCounters`] at one moment, for tests and the metrics endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestCountersSnapshot {
    /// See [`IngestCounters::connections_total`].
    pub connections_total: u64,
    /// See [`IngestCounters::sessions_active`].
    pub sessions_active: u64,
    /// See [`IngestCounters::connects_refused_total`].
    pub connects_refused_total: u64,
    /// See [`IngestCounters::publishes_in_total`].
    pub publishes_in_total: u64,
    /// See [`IngestCounters::acks_total`].
    pub acks_total: u64,
    /// See [`IngestCounters::rejected_total`].
    pub rejected_total: u64,
    /// See [`IngestCounters::refused_total`].
    pub refused_total: u64,
    /// See [`IngestCounters::malformed_total`].
    pub malformed_total: u64,
    /// See [`IngestCounters::keepalive_timeouts_total`].
    pub keepalive_timeouts_total: u64,
    /// See [`IngestCounters::downlink_total`].
    pub downlink_total: u64,
    /// See [`IngestCounters::downlink_dropped_total`].
    pub downlink_dropped_total: u64,
    /// See [`IngestCounters::connections_refused_total`].
    pub connections_refused_total: u64,
    /// See [`IngestCounters::connect_timeouts_total`].
    pub connect_timeouts_total: u64,
    /// See [`IngestCounters::idle_timeouts_total`].
    pub idle_timeouts_total: u64,
    /// See [`IngestCounters::subscriptions_over_limit_total`].
    pub subscriptions_over_limit_total: u64,
    /// See [`IngestCounters::too_many_filters_total`].
    pub too_many_filters_total: u64,
    /// See [`IngestCounters::saved_sessions_evicted_total`].
    pub saved_sessions_evicted_total: u64,
    /// See [`IngestCounters::saved_sessions_expired_total`].
    pub saved_sessions_expired_total: u64,
    /// See [`IngestCounters::rrpc_calls_total`].
    pub rrpc_calls_total: u64,
    /// See [`IngestCounters::rrpc_answered_total`].
    pub rrpc_answered_total: u64,
    /// See [`IngestCounters::rrpc_timeouts_total`].
    pub rrpc_timeouts_total: u64,
    /// See [`IngestCounters::rrpc_refused_total`].
    pub rrpc_refused_total: u64,
    /// See [`IngestCounters::offline_stored_total`].
    pub offline_stored_total: u64,
    /// See [`IngestCounters::offline_refused_total`].
    pub offline_refused_total: u64,
    /// See [`IngestCounters::offline_expired_total`].
    pub offline_expired_total: u64,
    /// See [`IngestCounters::offline_delivered_total`].
    pub offline_delivered_total: u64,
}

impl IngestCounters {
    /// Reads every counter (relaxed: they are statistics, not synchronisation).
    pub fn snapshot(&self) -> IngestCountersSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        IngestCountersSnapshot {
            connections_total: r(&self.connections_total),
            sessions_active: r(&self.sessions_active),
            connects_refused_total: r(&self.connects_refused_total),
            publishes_in_total: r(&self.publishes_in_total),
            acks_total: r(&self.acks_total),
            rejected_total: r(&self.rejected_total),
            refused_total: r(&self.refused_total),
            malformed_total: r(&self.malformed_total),
            keepalive_timeouts_total: r(&self.keepalive_timeouts_total),
            downlink_total: r(&self.downlink_total),
            downlink_dropped_total: r(&self.downlink_dropped_total),
            connections_refused_total: r(&self.connections_refused_total),
            connect_timeouts_total: r(&self.connect_timeouts_total),
            idle_timeouts_total: r(&self.idle_timeouts_total),
            subscriptions_over_limit_total: r(&self.subscriptions_over_limit_total),
            too_many_filters_total: r(&self.too_many_filters_total),
            saved_sessions_evicted_total: r(&self.saved_sessions_evicted_total),
            saved_sessions_expired_total: r(&self.saved_sessions_expired_total),
            rrpc_calls_total: r(&self.rrpc_calls_total),
            rrpc_answered_total: r(&self.rrpc_answered_total),
            rrpc_timeouts_total: r(&self.rrpc_timeouts_total),
            rrpc_refused_total: r(&self.rrpc_refused_total),
            offline_stored_total: r(&self.offline_stored_total),
            offline_refused_total: r(&self.offline_refused_total),
            offline_expired_total: r(&self.offline_expired_total),
            offline_delivered_total: r(&self.offline_delivered_total),
        }
    }
}

/// Adds one to a counter.
pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}
