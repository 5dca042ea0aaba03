//! `GET /metrics`: Prometheus (OpenMetrics text) counters and histograms per rule, topic, queue
//! and subscription, plus the MQTT front end, the pipeline and the store's commits.
//!
//! Nothing is registered ahead of time: every scrape reads the live counters the stages keep
//! anyway (atomics, the store's in-memory index), so recording costs the hot path nothing extra
//! and a deleted rule or queue simply stops appearing. Names follow the house convention:
//! `sluice_` prefix, snake_case, the unit in the name, `_total` on counters; labels are names of
//! things the user created (bounded by what they created) or fixed kinds, never error text.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::error::ApiError;
use super::AppState;
use crate::histogram::LatencyHistogram;
use crate::ingest::IngestCountersSnapshot;
use crate::pipeline::PipelineCounters;
use crate::rules::FailureKind;
use crate::store::metrics::QueueTotals;
use crate::store::{PushStatus, QueueInfo};

/// Counters that live outside the store and the rule registry: the MQTT front end and the
/// pipeline. Either is absent when that stage does not run (the bench's ingest-only baseline
/// keeps no pipeline counters).
#[derive(Debug, Default, Clone)]
pub struct StageCounters {
    /// The MQTT listener's or the external broker client's counters.
    pub ingest: Option<Arc<crate::ingest::IngestCounters>>,
    /// The rule pipeline's counters.
    pub pipeline: Option<Arc<PipelineCounters>>,
    /// The HTTP API's connection caps (open and refused connections).
    pub http_connections: Option<crate::conn_limit::ConnLimiter>,
}

/// Latency bounds in seconds for rule calls (a Wasm call takes microseconds; a slow rule or a
/// first call after an update takes milliseconds).
const RULE_BOUNDS_S: [f64; 12] = [
    5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 0.1, 1.0,
];
/// Commit-time bounds in seconds (an fsync is 0.1–3 ms; a big batch takes tens of ms).
const COMMIT_BOUNDS_S: [f64; 11] = [
    1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 1.0,
];
/// Requests-per-commit bounds.
const BATCH_BOUNDS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// The handler.
pub async fn scrape(State(state): State<AppState>) -> Result<Response, ApiError> {
    let snapshot = Snapshot::read(&state).await?;
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .map_err(|e| ApiError::internal(format!("cannot encode metrics: {e}")))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// Everything one scrape reports, read once so the encoder runs without awaiting.
#[derive(Debug)]
struct Snapshot {
    ingest: Option<IngestCountersSnapshot>,
    /// HTTP connections (open now, refused so far).
    http_connections: Option<(u64, u64)>,
    pipeline: Option<[(&'static str, &'static str, u64); 6]>,
    rules: Vec<RuleRow>,
    /// Live rule instances and the memory they hold.
    sandbox: (u64, u64),
    topics: Vec<(String, u32, u64)>,
    queues: Vec<(QueueInfo, QueueTotals)>,
    pushes: Vec<(String, String, PushStatus)>,
    /// Push targets refused by the egress policy: (at creation, before connecting).
    egress_refused: (u64, u64),
    /// Requests to the open signing certificate URL: (served, not found).
    signing_certificates: (u64, u64),
    store: Arc<crate::store::metrics::StoreCounters>,
    sessions: super::console::session::SessionCounts,
    tails: super::console::tail::TailCounts,
}

#[derive(Debug)]
struct RuleRow {
    name: String,
    running: bool,
    counters: Arc<crate::rules::RuleCounters>,
}

impl Snapshot {
    async fn read(state: &AppState) -> Result<Snapshot, ApiError> {
        use std::sync::atomic::Ordering::Relaxed;
        let store = &state.store;
        let pipeline = state.stages.pipeline.as_ref().map(|p| {
            [
                (
                    "messages",
                    "Device messages handed to the rules.",
                    p.messages_in.load(Relaxed),
                ),
                (
                    "acked",
                    "Device messages acknowledged after their outputs committed.",
                    p.acked.load(Relaxed),
                ),
                (
                    "rejected",
                    "Device messages whose commit failed (the device resends).",
                    p.rejected.load(Relaxed),
                ),
                (
                    "unmatched",
                    "Device messages no running rule listened to.",
                    p.unmatched.load(Relaxed),
                ),
                (
                    "outputs_committed",
                    "Rule outputs committed to topics.",
                    p.outputs_committed.load(Relaxed),
                ),
                (
                    "outputs_refused",
                    "Rule outputs the store refused for good (unknown topic, too large).",
                    p.outputs_refused.load(Relaxed),
                ),
            ]
        });
        let engine = state.rules.engine();
        let usage = engine.runtime().usage();
        let sandbox = (usage.instances(), usage.memory_bytes());
        let rules = state
            .rules
            .list()
            .into_iter()
            .map(|r| RuleRow {
                running: r.state == "running",
                counters: engine.counters_for(&r.name),
                name: r.name,
            })
            .collect();
        let counters = store.counters().clone();
        let mut topics = Vec::new();
        for t in store.list_topics().await? {
            let published = counters.topic_published(&t.name);
            topics.push((t.name, t.subscriptions, published));
        }
        let queues = store
            .list_queues()
            .await?
            .into_iter()
            .map(|q| {
                let totals = counters.queue(&q.name);
                (q, totals)
            })
            .collect();
        let mut pushes = Vec::new();
        for sub in store.push_subscriptions().await? {
            match store.push_status(&sub.topic, &sub.name).await {
                Ok(status) => pushes.push((sub.topic, sub.name, status)),
                // Deleted between the two reads.
                Err(crate::store::StoreError::SubscriptionNotExist { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Snapshot {
            ingest: state.stages.ingest.as_ref().map(|c| c.snapshot()),
            http_connections: state
                .stages
                .http_connections
                .as_ref()
                .map(|l| (l.open() as u64, l.refused_total())),
            pipeline,
            rules,
            sandbox,
            topics,
            queues,
            pushes,
            egress_refused: (
                state.push_egress.counters.refused_at_create.load(Relaxed),
                state.push_egress.counters.refused_at_connect.load(Relaxed),
            ),
            signing_certificates: (
                state.signing_keys.counters.served.load(Relaxed),
                state.signing_keys.counters.not_found.load(Relaxed),
            ),
            store: counters,
            sessions: state.keys.sessions().counts(),
            tails: state.tails.counts(),
        })
    }
}

/// Writes one family: a name, help, optional unit, type, and its labelled values.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: impl IntoIterator<Item = (Vec<(&'static str, String)>, M)>,
) -> Result<(), std::fmt::Error> {
    let mut series = series.into_iter().peekable();
    let Some((_, first)) = series.peek() else {
        return Ok(());
    };
    let metric_type = first.metric_type();
    let mut family = encoder.encode_descriptor(name, help, unit, metric_type)?;
    for (labels, metric) in series {
        if labels.is_empty() {
            // A single unlabelled series: `name 1`, not `name{} 1`.
            return metric.encode(family);
        }
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(v: u64) -> ConstCounter<u64> {
    ConstCounter::new(v)
}

fn gauge(v: u64) -> ConstGauge<i64> {
    ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX))
}

/// A [`LatencyHistogram`] as a Prometheus histogram with `bounds` (in `scale` units per
/// recorded unit: 1e-9 turns nanoseconds into seconds).
struct HistogramValue {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl HistogramValue {
    fn of(h: &LatencyHistogram, bounds: &[f64], scale: f64) -> HistogramValue {
        let raw: Vec<u64> = bounds.iter().map(|b| (b / scale).round() as u64).collect();
        let c = h.cumulative(&raw);
        // The encoder takes per-bucket counts and adds them up itself.
        let mut buckets = Vec::with_capacity(bounds.len() + 1);
        let mut below = 0;
        for (bound, at) in bounds.iter().zip(&c.at_bounds) {
            buckets.push((*bound, at - below));
            below = *at;
        }
        buckets.push((f64::MAX, c.count.saturating_sub(below)));
        HistogramValue {
            sum: c.sum_ns as f64 * scale,
            count: c.count,
            buckets,
        }
    }
}

impl std::fmt::Debug for HistogramValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistogramValue")
            .field("count", &self.count)
            .finish()
    }
}

impl EncodeMetric for HistogramValue {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            self.sum,
            self.count,
            &self.buckets,
            None,
        )
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn one<M>(metric: M) -> [(Vec<(&'static str, String)>, M); 1] {
    [(Vec::new(), metric)]
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        if let Some(i) = &self.ingest {
            for (name, help, v) in [
                (
                    "sluice_mqtt_connections",
                    "TCP connections accepted.",
                    i.connections_total,
                ),
                (
                    "sluice_mqtt_connects_refused",
                    "CONNECTs refused with a non-zero CONNACK code.",
                    i.connects_refused_total,
                ),
                (
                    "sluice_mqtt_publishes",
                    "PUBLISH packets taken in.",
                    i.publishes_in_total,
                ),
                (
                    "sluice_mqtt_acks",
                    "PUBACKs sent after the commit.",
                    i.acks_total,
                ),
                (
                    "sluice_mqtt_publishes_rejected",
                    "Publishes the pipeline could not commit (the device resends).",
                    i.rejected_total,
                ),
                (
                    "sluice_mqtt_refused",
                    "PUBLISH or SUBSCRIBE refused by the access policy.",
                    i.refused_total,
                ),
                (
                    "sluice_mqtt_malformed",
                    "Connections closed for a malformed or unexpected packet.",
                    i.malformed_total,
                ),
                (
                    "sluice_mqtt_keepalive_timeouts",
                    "Connections closed because the keep-alive expired.",
                    i.keepalive_timeouts_total,
                ),
                (
                    "sluice_mqtt_downlink",
                    "Messages delivered to device sessions (downlink, republish).",
                    i.downlink_total,
                ),
                (
                    "sluice_mqtt_downlink_dropped",
                    "Downlink messages dropped because a session's queue was full.",
                    i.downlink_dropped_total,
                ),
                (
                    "sluice_mqtt_connections_refused",
                    "Connections closed at accept: the total or per-address connection cap was reached.",
                    i.connections_refused_total,
                ),
                (
                    "sluice_mqtt_connect_timeouts",
                    "Connections closed because no complete CONNECT (or TLS handshake) came in time.",
                    i.connect_timeouts_total,
                ),
                (
                    "sluice_mqtt_idle_timeouts",
                    "Sessions without keep-alive closed after the maximum idle time.",
                    i.idle_timeouts_total,
                ),
                (
                    "sluice_mqtt_subscriptions_over_limit",
                    "SUBSCRIBE filters refused because the session holds its maximum of subscriptions.",
                    i.subscriptions_over_limit_total,
                ),
                (
                    "sluice_mqtt_too_many_filters",
                    "Connections closed for a SUBSCRIBE or UNSUBSCRIBE with more filters than allowed in one packet.",
                    i.too_many_filters_total,
                ),
                (
                    "sluice_mqtt_saved_sessions_evicted",
                    "Saved persistent sessions dropped because too many were saved (oldest first).",
                    i.saved_sessions_evicted_total,
                ),
                (
                    "sluice_mqtt_saved_sessions_expired",
                    "Saved persistent sessions dropped after their expiry.",
                    i.saved_sessions_expired_total,
                ),
                (
                    "sluice_mqtt_rrpc_calls",
                    "Synchronous calls (RRPC) that started waiting for a device's answer.",
                    i.rrpc_calls_total,
                ),
                (
                    "sluice_mqtt_rrpc_answered",
                    "Synchronous calls the device answered in time.",
                    i.rrpc_answered_total,
                ),
                (
                    "sluice_mqtt_rrpc_timeouts",
                    "Synchronous calls that ended without an answer.",
                    i.rrpc_timeouts_total,
                ),
                (
                    "sluice_mqtt_rrpc_refused",
                    "Synchronous calls refused because the most allowed were waiting already.",
                    i.rrpc_refused_total,
                ),
                (
                    "sluice_mqtt_offline_stored",
                    "QoS 1 downlink messages kept for an offline persistent session.",
                    i.offline_stored_total,
                ),
                (
                    "sluice_mqtt_offline_refused",
                    "Downlink messages refused because the session's offline store was full.",
                    i.offline_refused_total,
                ),
                (
                    "sluice_mqtt_offline_expired",
                    "Kept downlink messages dropped unsent after their retention.",
                    i.offline_expired_total,
                ),
                (
                    "sluice_mqtt_offline_delivered",
                    "Kept downlink messages the device acknowledged after it came back.",
                    i.offline_delivered_total,
                ),
            ] {
                family(&mut e, name, help, None, one(counter(v)))?;
            }
            family(
                &mut e,
                "sluice_mqtt_sessions",
                "Device sessions connected now.",
                None,
                one(gauge(i.sessions_active)),
            )?;
        }
        if let Some((open, refused)) = self.http_connections {
            family(
                &mut e,
                "sluice_http_connections_refused",
                "HTTP connections closed at accept: the total or per-address connection cap was reached.",
                None,
                one(counter(refused)),
            )?;
            family(
                &mut e,
                "sluice_http_connections",
                "HTTP connections open now.",
                None,
                one(gauge(open)),
            )?;
        }
        if let Some(p) = &self.pipeline {
            for (name, help, v) in p {
                family(
                    &mut e,
                    &format!("sluice_pipeline_{name}"),
                    help,
                    None,
                    one(counter(*v)),
                )?;
            }
        }

        // Rules.
        family(
            &mut e,
            "sluice_rule_instances",
            "Live rule instances: one per running rule per worker that ran it.",
            None,
            one(gauge(self.sandbox.0)),
        )?;
        family(
            &mut e,
            "sluice_rule_memory",
            "Linear memory and tables of every live rule instance.",
            Some(&Unit::Bytes),
            one(gauge(self.sandbox.1)),
        )?;
        let rule = |r: &RuleRow| vec![("rule", r.name.clone())];
        family(
            &mut e,
            "sluice_rule_running",
            "1 while the rule runs, 0 while it is stopped.",
            None,
            self.rules
                .iter()
                .map(|r| (rule(r), gauge(u64::from(r.running)))),
        )?;
        for (name, help, read) in [
            (
                "sluice_rule_messages",
                "Messages the rule ran on.",
                (|c: &crate::rules::RuleCounters| c.messages_in.load(Relaxed))
                    as fn(&crate::rules::RuleCounters) -> u64,
            ),
            (
                "sluice_rule_outputs",
                "Decisions the rule's actions carried out.",
                |c| c.outputs.load(Relaxed),
            ),
            (
                "sluice_rule_dropped",
                "Messages the rule chose not to forward.",
                |c| c.dropped.load(Relaxed),
            ),
            (
                "sluice_rule_invalid_payloads",
                "Messages whose payload was not what the rule's data type promises (also counted as dropped).",
                |c| c.invalid_payloads.load(Relaxed),
            ),
            (
                "sluice_rule_fuel",
                "Fuel the rule used (about one unit per Wasm instruction; host calls pay per call and per byte).",
                |c| c.fuel_used.load(Relaxed),
            ),
            (
                "sluice_rule_log_dropped",
                "Log lines the rule wrote past the rule log caps (per message and per second), dropped instead of written.",
                |c| c.log_dropped.load(Relaxed),
            ),
        ] {
            family(
                &mut e,
                name,
                help,
                None,
                self.rules
                    .iter()
                    .map(|r| (rule(r), counter(read(&r.counters)))),
            )?;
        }
        family(
            &mut e,
            "sluice_rule_failures",
            "Messages that failed in the rule, by kind.",
            None,
            self.rules.iter().flat_map(|r| {
                FailureKind::ALL.iter().enumerate().map(move |(i, kind)| {
                    (
                        vec![
                            ("rule", r.name.clone()),
                            ("kind", kind.as_str().to_string()),
                        ],
                        counter(r.counters.failed[i].load(Relaxed)),
                    )
                })
            }),
        )?;
        family(
            &mut e,
            "sluice_rule_busy",
            "Time spent inside the sandbox.",
            Some(&Unit::Seconds),
            self.rules.iter().map(|r| {
                let s = r.counters.busy_ns.load(Relaxed) as f64 * 1e-9;
                (rule(r), ConstCounter::new(s))
            }),
        )?;
        family(
            &mut e,
            "sluice_rule_latency",
            "Time one message took in the rule.",
            Some(&Unit::Seconds),
            self.rules.iter().map(|r| {
                (
                    rule(r),
                    HistogramValue::of(&r.counters.latency, &RULE_BOUNDS_S, 1e-9),
                )
            }),
        )?;

        // Console sign-ins and live tails, and the caps that refuse more.
        let by_cap = |per_key: u64, total: u64| {
            [("per_key", per_key), ("total", total)]
                .map(|(cap, n)| (vec![("cap", cap.to_string())], counter(n)))
        };
        family(
            &mut e,
            "sluice_console_sessions",
            "Console sessions signed in now.",
            None,
            one(gauge(self.sessions.live)),
        )?;
        family(
            &mut e,
            "sluice_console_sessions_refused",
            "Console sign-ins refused by a cap: per key (console_max_sessions_per_key) or in all (console_max_sessions).",
            None,
            by_cap(self.sessions.refused_per_key, self.sessions.refused_total),
        )?;
        family(
            &mut e,
            "sluice_console_tails",
            "Live tails (server-sent event streams) open now.",
            None,
            one(gauge(self.tails.open)),
        )?;
        family(
            &mut e,
            "sluice_console_tails_refused",
            "Live tails refused by a cap: per key (console_max_tails_per_key) or in all (console_max_tails).",
            None,
            by_cap(self.tails.refused_per_key, self.tails.refused_total),
        )?;

        // Topics.
        family(
            &mut e,
            "sluice_topic_published",
            "Messages committed to the topic since start.",
            None,
            self.topics
                .iter()
                .map(|(t, _, n)| (vec![("topic", t.clone())], counter(*n))),
        )?;
        family(
            &mut e,
            "sluice_topic_subscriptions",
            "Subscriptions of the topic.",
            None,
            self.topics
                .iter()
                .map(|(t, n, _)| (vec![("topic", t.clone())], gauge(u64::from(*n)))),
        )?;

        // Queues.
        let queue = |q: &QueueInfo| q.name.clone();
        family(
            &mut e,
            "sluice_queue_messages",
            "Messages in the queue by state: visible (receivable now), in_flight (received, lease running), delayed.",
            None,
            self.queues.iter().flat_map(|(q, _)| {
                [
                    ("visible", q.active_messages),
                    ("in_flight", q.inactive_messages),
                    ("delayed", q.delayed_messages),
                ]
                .map(|(state, n)| {
                    (
                        vec![("queue", queue(q)), ("state", state.to_string())],
                        gauge(n),
                    )
                })
            }),
        )?;
        family(
            &mut e,
            "sluice_queue_oldest_message_age",
            "Age of the oldest message in the queue (0 when empty).",
            Some(&Unit::Seconds),
            self.queues.iter().map(|(q, _)| {
                let age = q.oldest_message_age_ms.unwrap_or(0) as f64 / 1000.0;
                (vec![("queue", queue(q))], ConstGauge::new(age))
            }),
        )?;
        for (name, help, read) in [
            (
                "sluice_queue_enqueued",
                "Messages committed into the queue since start (sends, topic fan-out, dead letters moved in).",
                (|_: &QueueInfo, t: &QueueTotals| t.enqueued)
                    as fn(&QueueInfo, &QueueTotals) -> u64,
            ),
            (
                "sluice_queue_received",
                "Deliveries to consumers since start (a message received twice counts twice).",
                |_, t| t.received,
            ),
            (
                "sluice_queue_deleted",
                "Messages deleted by consumers since start.",
                |_, t| t.deleted,
            ),
            (
                "sluice_queue_expired",
                "Messages removed at the end of message_retention_period (since the queue was created).",
                |q, _| q.expired_total,
            ),
            (
                "sluice_queue_dead_lettered",
                "Messages moved to the dead-letter queue (since the queue was created).",
                |q, _| q.dead_lettered_total,
            ),
        ] {
            family(
                &mut e,
                name,
                help,
                None,
                self.queues
                    .iter()
                    .map(|(q, t)| (vec![("queue", queue(q))], counter(read(q, t)))),
            )?;
        }

        // HTTP subscriptions.
        let sub = |topic: &String, name: &String| {
            vec![("topic", topic.clone()), ("subscription", name.clone())]
        };
        for (name, help, read) in [
            (
                "sluice_subscription_pushed",
                "Messages pushed with a 2xx answer (since creation).",
                (|s: &PushStatus| s.delivered_total) as fn(&PushStatus) -> u64,
            ),
            (
                "sluice_subscription_push_failures",
                "Failed push attempts, including ones later retried successfully.",
                |s| s.failed_attempts_total,
            ),
            (
                "sluice_subscription_dropped",
                "Messages dropped after their last retry (no dead-letter queue).",
                |s| s.dropped_total,
            ),
            (
                "sluice_subscription_dead_lettered",
                "Messages moved to the subscription's dead letters after their last retry.",
                |s| s.dead_lettered_total,
            ),
        ] {
            family(
                &mut e,
                name,
                help,
                None,
                self.pushes
                    .iter()
                    .map(|(t, n, s)| (sub(t, n), counter(read(s)))),
            )?;
        }
        for (name, help, read) in [
            (
                "sluice_subscription_backlog",
                "Messages waiting to be pushed, in flight included.",
                (|s: &PushStatus| s.backlog) as fn(&PushStatus) -> u64,
            ),
            (
                "sluice_subscription_in_flight",
                "Pushes in progress.",
                |s| s.in_flight,
            ),
            (
                "sluice_subscription_enabled",
                "1 while the subscription is pushed to, 0 while disabled.",
                |s| u64::from(s.enabled),
            ),
        ] {
            family(
                &mut e,
                name,
                help,
                None,
                self.pushes
                    .iter()
                    .map(|(t, n, s)| (sub(t, n), gauge(read(s)))),
            )?;
        }

        family(
            &mut e,
            "sluice_push_egress_refused",
            "Push targets refused by the egress policy (metadata, link-local; private ranges \
             with push_deny_private_networks): subscriptions at creation, attempts before \
             connecting.",
            None,
            [
                (vec![("at", "create".to_string())], self.egress_refused.0),
                (vec![("at", "connect".to_string())], self.egress_refused.1),
            ]
            .map(|(labels, v)| (labels, counter(v))),
        )?;

        family(
            &mut e,
            "sluice_signing_certificate_requests",
            "Requests to the open MNS signing certificate URL: certificates served, and requests \
             for one that is not served (unknown id, grace over, malformed name).",
            None,
            [
                (
                    vec![("result", "served".to_string())],
                    self.signing_certificates.0,
                ),
                (
                    vec![("result", "not_found".to_string())],
                    self.signing_certificates.1,
                ),
            ]
            .map(|(labels, v)| (labels, counter(v))),
        )?;

        // The store's commits.
        family(
            &mut e,
            "sluice_store_commits",
            "Transactions committed by the store's writer.",
            None,
            one(counter(self.store.commits.load(Relaxed))),
        )?;
        family(
            &mut e,
            "sluice_store_unavailable_retries",
            "Store operations tried again because the message store could not take them for a moment (JetStream: a stream or consumer without a leader during an election, no answer in time); a request that then succeeded was only slower.",
            None,
            one(counter(self.store.unavailable_retries.load(Relaxed))),
        )?;
        family(
            &mut e,
            "sluice_store_commit",
            "Time one group commit took (at synchronous=FULL the fsync is sluice_store_sync, on its own thread).",
            Some(&Unit::Seconds),
            one(HistogramValue::of(
                &self.store.commit_time,
                &COMMIT_BOUNDS_S,
                1e-9,
            )),
        )?;
        family(
            &mut e,
            "sluice_store_sync",
            "Time one fsync of the write-ahead log took (synchronous=FULL); acknowledgements wait for it.",
            Some(&Unit::Seconds),
            one(HistogramValue::of(
                &self.store.sync_time,
                &COMMIT_BOUNDS_S,
                1e-9,
            )),
        )?;
        family(
            &mut e,
            "sluice_store_checkpoint",
            "Time one checkpoint took (the write-ahead log copied into the database file), mostly on a thread beside the writer.",
            Some(&Unit::Seconds),
            one(HistogramValue::of(
                &self.store.checkpoint_time,
                &COMMIT_BOUNDS_S,
                1e-9,
            )),
        )?;
        family(
            &mut e,
            "sluice_store_commit_requests",
            "Requests served by one commit (group commit: more is cheaper per request).",
            None,
            one(HistogramValue::of(
                &self.store.batch_requests,
                &BATCH_BOUNDS,
                1.0,
            )),
        )?;
        Ok(())
    }
}
