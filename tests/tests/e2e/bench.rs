//! `sluice bench`: the real command against the server it starts itself, briefly and slowly
//! (the figures are the benchmark's business; here: it runs the whole pipeline, reports every
//! figure, drains the queue and loses nothing).

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::common::sluice_bin;

/// A short, slow bench: 5 devices at 300 messages/s for 3 s, 2 consumers, the report as JSON.
const SHORT_BENCH: &[&str] = &[
    "--duration",
    "3",
    "--rate",
    "300",
    "--devices",
    "5",
    "--consumers",
    "2",
    "--json",
];

/// The report of a bench that must have succeeded (its `--json` line), checked to have lost and
/// duplicated nothing.
fn lossless_report(out: &std::process::Output, label: &str) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}\n{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    println!("{label}: {last}");
    let r: Value = serde_json::from_str(last).expect("--json: one object on the last line");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["duplicates"], 0, "{r}");
    r
}

#[test]
fn a_short_paced_bench_reports_every_figure_and_loses_nothing() {
    let config = tempfile::tempdir().unwrap();
    let out = Command::new(sluice_bin())
        .arg("bench")
        .args(SHORT_BENCH)
        .env("SLUICE_CONFIG_DIR", config.path())
        .output()
        .unwrap();
    let r = lossless_report(&out, "report");
    let num = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} missing: {r}"));
    assert_eq!(r["devices"], 5);
    assert_eq!(r["offered_rate"], 300);
    // Paced at 300/s for 3 s: generous bounds, the machine may be busy.
    assert!((100.0..=400.0).contains(&num("ingested_per_sec")), "{r}");
    // Every reading passes the bench's filter and is consumed (lost is 0 above).
    assert!(num("consumed_per_sec") > 50.0, "{r}");
    assert!(num("outputs_per_sec") > 50.0, "{r}");
    let lat = &r["latency_ms"];
    for q in ["p50", "p90", "p99", "max"] {
        assert!(lat[q].as_f64().is_some_and(|v| v > 0.0), "latency {q}: {r}");
    }
    // A receive returns 1 to 16 messages (the consumers ask for 16).
    assert!((1.0..=16.0).contains(&num("messages_per_receive")), "{r}");
    assert!(num("server_cpu_percent") > 0.0, "{r}");
    assert!(num("server_peak_rss_bytes") > 1e6, "{r}");
}

#[test]
fn a_bench_against_an_https_server_trusts_its_ca_cert_and_loses_nothing() {
    // Proves: `sluice bench --server https://... --ca-cert FILE` drives a running server whose
    // API speaks TLS with a self-signed certificate (its consumers connect over TLS, trusting
    // the file) and loses nothing; without --ca-cert it fails at once, says it cannot reach the
    // server and how to trust the certificate, and publishes nothing.
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, key) = crate::common::self_signed_cert(dir.path(), "http");
    let sluice = crate::common::Sluice::start(
        &dir.path().join("data"),
        &["--http-tls-cert", &cert, "--http-tls-key", &key],
    );
    assert!(sluice.http.starts_with("https://"), "{}", sluice.http);
    let mqtt = format!("127.0.0.1:{}", sluice.mqtt_port);
    let bench = |trust: &[&str]| {
        let started = std::time::Instant::now();
        let out = Command::new(sluice_bin())
            .args(["--server", &sluice.http, "--key", &sluice.key])
            .args(trust)
            .args(["bench", "--mqtt", &mqtt])
            .args(SHORT_BENCH)
            .env("SLUICE_CONFIG_DIR", &sluice.config_dir)
            .env_remove("SLUICE_CA_CERT")
            .output()
            .unwrap();
        (out, started.elapsed())
    };

    let (out, took) = bench(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("without --ca-cert ({took:?}): {stderr}");
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("cannot reach sluice"), "{stderr}");
    assert!(
        stderr.contains("--ca-cert"),
        "the hint names the option: {stderr}"
    );
    assert!(
        took < Duration::from_secs(3),
        "fails before the load: {took:?}"
    );

    let (out, _) = bench(&["--ca-cert", &cert]);
    let r = lossless_report(&out, "with --ca-cert");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let consumed = r["consumed_per_sec"].as_f64().unwrap_or_default();
    assert!(consumed > 50.0, "the consumers drained over TLS: {r}");
    assert!(
        !stderr.contains("bench consumer:"),
        "no consumer error: {stderr}"
    );
    sluice.stop();
}
