//! `/metrics`: a Prometheus scrape after real traffic shows per-rule, per-topic, per-queue and
//! per-subscription figures that match what the test did.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::mqtt::publish_qos1;
use crate::common::Sluice;

/// Parses OpenMetrics text into `name{labels}` -> value, checking every line's shape: a
/// comment (`# TYPE`, `# HELP`, `# UNIT`, `# EOF`) or `series value`.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    assert!(
        text.ends_with("# EOF\n"),
        "an OpenMetrics text ends with # EOF"
    );
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            let kind = comment.split_whitespace().next().unwrap_or("");
            assert!(
                ["TYPE", "HELP", "UNIT", "EOF"].contains(&kind),
                "unexpected comment: {line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("series value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let name = series.split('{').next().unwrap();
        assert!(
            name.starts_with("sluice_")
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "metric names are snake_case with the sluice_ prefix: {name}"
        );
        out.insert(series.to_string(), value);
    }
    out
}

fn get(m: &HashMap<String, f64>, series: &str) -> f64 {
    *m.get(series)
        .unwrap_or_else(|| panic!("{series} missing from the scrape"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_after_traffic_counts_rules_topics_queues_and_subscriptions() {
    // Proves /metrics reports what happened: 40 device messages through the overheat rule,
    // 24 forwarded to `alerts`, fanned out to the queue and an HTTP subscription.
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let api = sluice.api();

    // An HTTP endpoint that accepts everything.
    let pushed = Arc::new(AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    let counter = pushed.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::Relaxed);
                "ok"
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (status, v) = api
        .put(
            "/v1/topics/alerts/subscriptions/alerts-to-hook",
            &json!({"http": hook}),
        )
        .await;
    assert_eq!(status, 201, "{v}");

    // 40 readings, temperatures 30.5 .. 49.5 twice: 24 above the overheat threshold (38).
    let messages: Vec<(u64, Vec<u8>)> = (0..40u64)
        .map(|i| {
            let t = 30.5 + (i % 20) as f64;
            let payload = json!({"temperature": t, "location": format!("m{i}")});
            (i, payload.to_string().into_bytes())
        })
        .collect();
    let report = publish_qos1(
        sluice.mqtt_port,
        "metrics-dev",
        "/a1hRrzD/metrics-dev/user/update",
        messages,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(report.acked.len(), 40, "{:?}", report.error);
    let got = api.drain("alerts-q", 24, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 24);
    let deadline = Instant::now() + Duration::from_secs(10);
    while pushed.load(Ordering::Relaxed) < 24 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pushed.load(Ordering::Relaxed), 24);

    // Push counters are recorded after the answer; give the store a moment to commit them.
    let mut m = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let (status, text) = api.get_text("/metrics").await;
        assert_eq!(status, 200);
        m = parse(&text);
        let sub =
            r#"sluice_subscription_pushed_total{topic="alerts",subscription="alerts-to-hook"}"#;
        if m.get(sub) == Some(&24.0) {
            println!("{text}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let rule = r#"{rule="overheat"}"#;
    assert_eq!(get(&m, &format!("sluice_rule_running{rule}")), 1.0);
    assert_eq!(get(&m, &format!("sluice_rule_messages_total{rule}")), 40.0);
    assert_eq!(get(&m, &format!("sluice_rule_outputs_total{rule}")), 24.0);
    assert_eq!(get(&m, &format!("sluice_rule_dropped_total{rule}")), 16.0);
    assert_eq!(
        get(
            &m,
            r#"sluice_rule_failures_total{rule="overheat",kind="trap"}"#
        ),
        0.0
    );
    assert_eq!(
        get(&m, &format!("sluice_rule_latency_seconds_count{rule}")),
        40.0
    );
    assert_eq!(
        get(
            &m,
            r#"sluice_rule_latency_seconds_bucket{le="+Inf",rule="overheat"}"#
        ),
        40.0
    );
    assert!(get(&m, &format!("sluice_rule_latency_seconds_sum{rule}")) > 0.0);

    assert_eq!(
        get(&m, r#"sluice_topic_published_total{topic="alerts"}"#),
        24.0
    );
    assert_eq!(
        get(&m, r#"sluice_topic_subscriptions{topic="alerts"}"#),
        2.0
    );

    let q = |name: &str| format!(r#"sluice_queue_{name}{{queue="alerts-q"}}"#);
    assert_eq!(get(&m, &q("enqueued_total")), 24.0);
    assert_eq!(get(&m, &q("received_total")), 24.0);
    assert_eq!(get(&m, &q("deleted_total")), 24.0);
    assert_eq!(get(&m, &q("expired_total")), 0.0);
    assert_eq!(
        get(
            &m,
            r#"sluice_queue_messages{queue="alerts-q",state="visible"}"#
        ),
        0.0
    );

    let s = r#"{topic="alerts",subscription="alerts-to-hook"}"#;
    assert_eq!(
        get(&m, &format!("sluice_subscription_pushed_total{s}")),
        24.0
    );
    assert_eq!(get(&m, &format!("sluice_subscription_backlog{s}")), 0.0);
    assert_eq!(get(&m, &format!("sluice_subscription_enabled{s}")), 1.0);

    assert_eq!(get(&m, "sluice_mqtt_publishes_total"), 40.0);
    assert_eq!(get(&m, "sluice_mqtt_acks_total"), 40.0);
    assert_eq!(get(&m, "sluice_pipeline_acked_total"), 40.0);
    assert_eq!(get(&m, "sluice_pipeline_outputs_committed_total"), 24.0);
    assert!(get(&m, "sluice_store_commits_total") >= 1.0);
    assert!(get(&m, "sluice_store_commit_seconds_count") >= 1.0);
    // At synchronous=FULL (the default) every acknowledged commit waited for an fsync.
    assert!(get(&m, "sluice_store_sync_seconds_count") >= 1.0);
    assert!(get(&m, "sluice_store_commit_requests_count") >= 1.0);
    // A few commits do not fill the log far enough for a checkpoint; the series is there.
    assert!(get(&m, "sluice_store_checkpoint_seconds_count") >= 0.0);
    sluice.stop();
}
