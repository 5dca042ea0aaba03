//! `sluice bench`: a built-in load generator and report. Devices publish JSON telemetry over
//! MQTT at QoS 1, a rule forwards it to a topic, consumers drain the queue over HTTP; the report
//! gives ingest, output and consume rates, end-to-end latency percentiles, the server's CPU and
//! peak memory, and how many acknowledged messages were lost (must be 0). `--baseline` measures
//! sluice's own MQTT ingest with rules and storage switched off, in the same run, for a ratio.

mod load;
mod server;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::output;
use load::Stats;
use server::Target;

/// Flags of `sluice bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// How long devices publish, in seconds.
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
    /// Total publishes per second across all devices [default: flat out].
    #[arg(long)]
    pub rate: Option<u64>,
    /// Simulated devices (one MQTT connection each).
    #[arg(long, default_value_t = 100)]
    pub devices: usize,
    /// Also measure ingest alone (rules and storage off) and report the ratio.
    #[arg(long)]
    pub baseline: bool,
    /// Publish to this MQTT broker (an external-broker sluice, or a running sluice's listener)
    /// instead of starting a server: host:port.
    #[arg(long)]
    pub mqtt: Option<String>,
    /// The queue the consumers drain.
    #[arg(long, default_value = "alerts-q")]
    pub queue: String,
    /// Concurrent HTTP consumers (each receives up to 16, then deletes them in one batch).
    /// Flat out, each consumer's round trip waits for two commits full of publishes (~30 ms),
    /// so one consumer drains ~500 messages/s (measured: 128 fell behind at ~83,000/s
    /// ingested; 256 at 93,000–107,000/s now and then, the queue growing to ~80,000 messages;
    /// 384 kept up, at the same rates, with p99 still under 25 ms paced at 50,000/s).
    #[arg(long, default_value_t = 384)]
    pub consumers: usize,
    /// Run the default overheat rule as the Rust Wasm module instead of compiled SQL (only
    /// when the bench starts its own server).
    #[arg(long)]
    pub wasm_rule: bool,
}

/// The rule the bench's own server runs: the overheat filter in SQL (rules-examples/sql/
/// overheat.sql), forwarding every reading above 38 °C (all of the bench's) to `alerts`.
const BENCH_SQL: &str = "SELECT temperature AS t, deviceName() AS device, location \
                         FROM \"/+/+/user/update\" WHERE temperature > 38";
/// Its name.
const BENCH_SQL_RULE: &str = "overheat-sql";

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Worst.
    pub max: f64,
}

/// The report; its field names are stable (scripts and BENCHMARKS.md read them).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// QoS 1 publishes acknowledged per second.
    pub ingested_per_sec: f64,
    /// Rule outputs committed per second.
    pub outputs_per_sec: f64,
    /// Messages received and deleted per second.
    pub consumed_per_sec: f64,
    /// End-to-end latency, publish -> consumer.
    pub latency_ms: Latency,
    /// Messages per non-empty receive (at most 16): each receive and its batch delete are two
    /// HTTP requests, so small batches make every message dearer.
    pub messages_per_receive: f64,
    /// Ingest alone (with `--baseline`).
    pub baseline_per_sec: Option<f64>,
    /// `ingested_per_sec / baseline_per_sec`.
    pub ratio_to_baseline: Option<f64>,
    /// Acknowledged publishes never received.
    pub lost: u64,
    /// Messages received more than once.
    pub duplicates: u64,
    /// Server CPU use while loaded, in percent of one core.
    pub server_cpu_percent: Option<f64>,
    /// Server peak resident memory.
    pub server_peak_rss_bytes: Option<u64>,
    /// Publishing time, seconds.
    pub duration_seconds: f64,
    /// Devices.
    pub devices: usize,
    /// Offered rate, if paced.
    pub offered_rate: Option<u64>,
}

struct Measured {
    acked: u64,
    consumed: u64,
    outputs: u64,
    elapsed: f64,
    stats: Arc<Stats>,
    cpu_percent: Option<f64>,
    peak_rss: Option<u64>,
}

/// Runs the bench against `server` (a URL) or a server of its own.
pub async fn run(
    args: BenchArgs,
    server: Option<String>,
    key: Option<String>,
    ca_cert: Option<std::path::PathBuf>,
    as_json: bool,
) -> anyhow::Result<()> {
    let baseline = if args.baseline {
        eprintln!(
            "baseline: MQTT ingest alone (rules and storage off) for {} s",
            args.duration
        );
        let target = Target::spawn("baseline", &["--ingest-only"])?;
        let m = measure(&target, &args, false, "baseline").await?;
        Some(m.acked as f64 / m.elapsed)
    } else {
        None
    };
    let target = match (server, &args.mqtt) {
        (None, None) => {
            let target = Target::spawn("pipeline", &[])?;
            if !args.wasm_rule {
                use_sql_rule(&target.http, target.auth_headers()).await?;
            }
            target
        }
        (server, mqtt) => {
            let http = server.unwrap_or_else(|| super::client::DEFAULT_SERVER.to_string());
            let mqtt = mqtt.clone().unwrap_or_else(|| "127.0.0.1:1883".into());
            let (host, port) = mqtt
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
                .ok_or_else(|| anyhow::anyhow!("--mqtt {mqtt}: write HOST:PORT"))?;
            let key = super::client::resolve_key(key, &http);
            let ca_cert = match ca_cert {
                Some(path) => {
                    let certs = super::client::read_ca_cert(&path)?;
                    Some((path, certs))
                }
                None => None,
            };
            Target::existing(http, host, port, key, ca_cert)
        }
    };
    check_queue(&target, &args.queue).await?;
    let rule = if args.wasm_rule {
        "Wasm rule"
    } else {
        "SQL rule"
    };
    eprintln!(
        "pipeline: {} devices, QoS 1 -> {rule} -> queue {} -> {} consumers, for {} s",
        args.devices, args.queue, args.consumers, args.duration
    );
    let m = measure(&target, &args, true, "pipeline").await?;
    let hist = m
        .stats
        .latency_us
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let ingested = m.acked as f64 / m.elapsed;
    let report = Report {
        ingested_per_sec: ingested,
        outputs_per_sec: m.outputs as f64 / m.elapsed,
        consumed_per_sec: m.consumed as f64 / m.elapsed,
        latency_ms: Latency {
            p50: ms(0.50),
            p90: ms(0.90),
            p99: ms(0.99),
            max: hist.max() as f64 / 1000.0,
        },
        messages_per_receive: {
            let receives = m.stats.receives.load(Ordering::Relaxed);
            m.stats.consumed.load(Ordering::Relaxed) as f64 / receives.max(1) as f64
        },
        baseline_per_sec: baseline,
        ratio_to_baseline: baseline.map(|b| ingested / b),
        lost: m.stats.lost(),
        duplicates: m.stats.duplicates.load(Ordering::Relaxed),
        server_cpu_percent: m.cpu_percent,
        server_peak_rss_bytes: m.peak_rss,
        duration_seconds: m.elapsed,
        devices: args.devices,
        offered_rate: args.rate,
    };
    print_report(&report, as_json);
    if !as_json && report.consumed_per_sec < 0.95 * report.ingested_per_sec {
        // The latency figures then measure the backlog, not the pipeline.
        eprintln!(
            "note: the {} consumers fell behind ({:.0}/s consumed of {:.0}/s ingested), so the latency is the backlog's; try more consumers (--consumers {}) or a lower --rate",
            args.consumers,
            report.consumed_per_sec,
            report.ingested_per_sec,
            args.consumers * 2
        );
    }
    if report.lost > 0 {
        anyhow::bail!("{} acknowledged messages were lost", report.lost);
    }
    Ok(())
}

async fn measure(
    target: &Target,
    args: &BenchArgs,
    with_consumers: bool,
    label: &str,
) -> anyhow::Result<Measured> {
    let http = target.http_client()?;
    let outputs_before = rule_outputs(&http, &target.http).await;
    let stats = Stats::new(args.devices);
    let stop_devices = CancellationToken::new();
    let stop_consumers = CancellationToken::new();
    let consumers = if with_consumers {
        load::start_consumers(
            &target.http,
            target.auth_headers(),
            target.extra_roots(),
            &args.queue,
            args.consumers,
            stats.clone(),
            stop_consumers.clone(),
        )?
    } else {
        Vec::new()
    };
    let cpu_before = target.cpu_seconds();
    let started = Instant::now();
    let devices = load::start_devices(
        &target.mqtt_host,
        target.mqtt_port,
        args.devices,
        args.rate,
        stats.clone(),
        stop_devices.clone(),
    );
    let progress = indicatif::ProgressBar::new(args.duration);
    progress.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len}s {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    progress.set_prefix(label.to_string());
    let (mut last_acked, mut last_consumed) = (0, 0);
    for _ in 0..args.duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let acked = stats.acked.load(Ordering::Relaxed);
        let consumed = stats.consumed.load(Ordering::Relaxed);
        progress.inc(1);
        progress.set_message(format!(
            "in {:>7}/s  consumed {:>7}/s",
            acked - last_acked,
            consumed - last_consumed
        ));
        (last_acked, last_consumed) = (acked, consumed);
    }
    stop_devices.cancel();
    let elapsed = started.elapsed().as_secs_f64();
    let acked_at_stop = stats.acked.load(Ordering::Relaxed);
    let consumed_at_stop = stats.consumed.load(Ordering::Relaxed);
    let cpu_after = target.cpu_seconds();
    for d in devices {
        let _ = d.await;
    }
    progress.finish_and_clear();
    let outputs = rule_outputs(&http, &target.http)
        .await
        .saturating_sub(outputs_before);
    if with_consumers {
        // Drain what was acknowledged, so the loss check sees everything.
        let mut last = stats.consumed.load(Ordering::Relaxed);
        let mut quiet_since = Instant::now();
        while stats.consumed.load(Ordering::Relaxed) < stats.acked.load(Ordering::Relaxed)
            && quiet_since.elapsed() < Duration::from_secs(15)
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = stats.consumed.load(Ordering::Relaxed);
            if now != last {
                last = now;
                quiet_since = Instant::now();
            }
        }
        stop_consumers.cancel();
        for c in consumers {
            let _ = c.await;
        }
    }
    let cpu_percent = match (cpu_before, cpu_after) {
        (Some(a), Some(b)) => Some((b - a) / elapsed * 100.0),
        _ => None,
    };
    Ok(Measured {
        acked: acked_at_stop,
        consumed: consumed_at_stop,
        outputs,
        elapsed,
        stats,
        cpu_percent,
        peak_rss: target.peak_rss_bytes(),
    })
}

/// Replaces the default Wasm overheat rule of a fresh server with the same filter in SQL.
async fn use_sql_rule(base: &str, auth: reqwest::header::HeaderMap) -> anyhow::Result<()> {
    let http = reqwest::Client::builder().default_headers(auth).build()?;
    let call = |req: reqwest::RequestBuilder, what: &'static str| async move {
        let r = req.send().await?;
        if !r.status().is_success() {
            anyhow::bail!(
                "{what}: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
        anyhow::Ok(())
    };
    call(
        http.post(format!("{base}/v1/rules/overheat/stop")),
        "stopping the Wasm overheat rule",
    )
    .await?;
    call(
        http.post(format!("{base}/v1/rules/{BENCH_SQL_RULE}"))
            .json(&serde_json::json!({"sql": BENCH_SQL, "actions": ["forward:alerts"]})),
        "creating the SQL rule",
    )
    .await?;
    call(
        http.post(format!("{base}/v1/rules/{BENCH_SQL_RULE}/start")),
        "starting the SQL rule",
    )
    .await
}

/// Fails at once, naming the problem, when the API cannot be reached (an untrusted certificate
/// among the causes) or the queue does not exist: otherwise the consumers would only log their
/// errors while the devices publish, and the run would end with every message lost.
async fn check_queue(target: &Target, queue: &str) -> anyhow::Result<()> {
    let base = &target.http;
    let answer = target
        .http_client()?
        .get(format!("{base}/v1/queues/{queue}"))
        .send()
        .await
        .map_err(|e| {
            let hint = if base.starts_with("https://") && target.ca_cert.is_none() {
                "\nhint: a self-signed --http-tls-cert (or a private CA) is trusted with --ca-cert FILE"
            } else {
                ""
            };
            anyhow::anyhow!("cannot reach sluice at {base}: {:#}{hint}", anyhow::Error::from(e))
        })?;
    if !answer.status().is_success() {
        let status = answer.status();
        let body = answer.text().await.unwrap_or_default();
        anyhow::bail!("the bench drains queue `{queue}` (--queue): {status} {body}");
    }
    Ok(())
}

/// Sum of the running rules' committed outputs, from the API.
async fn rule_outputs(http: &reqwest::Client, base: &str) -> u64 {
    let Ok(r) = http.get(format!("{base}/v1/rules")).send().await else {
        return 0;
    };
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    v["rules"]
        .as_array()
        .map(|rules| {
            rules
                .iter()
                .filter_map(|r| r["counters"]["outputs"].as_u64())
                .sum()
        })
        .unwrap_or(0)
}

fn print_report(r: &Report, as_json: bool) {
    if as_json {
        println!("{}", serde_json::to_string(r).unwrap_or_default());
        return;
    }
    let rate = |v: f64| format!("{v:.0} /s");
    let mut rows = vec![
        vec!["ingested (QoS 1, acked)".into(), rate(r.ingested_per_sec)],
        vec!["rule outputs committed".into(), rate(r.outputs_per_sec)],
        vec![
            "consumed (received + deleted)".into(),
            rate(r.consumed_per_sec),
        ],
        vec![
            "latency p50 / p90 / p99 / max".into(),
            format!(
                "{:.1} / {:.1} / {:.1} / {:.1} ms",
                r.latency_ms.p50, r.latency_ms.p90, r.latency_ms.p99, r.latency_ms.max
            ),
        ],
    ];
    rows.push(vec![
        "messages per receive (of 16)".into(),
        format!("{:.1}", r.messages_per_receive),
    ]);
    if let (Some(b), Some(ratio)) = (r.baseline_per_sec, r.ratio_to_baseline) {
        rows.push(vec!["baseline: ingest alone".into(), rate(b)]);
        rows.push(vec!["pipeline / baseline".into(), format!("{ratio:.2}x")]);
    }
    if let Some(cpu) = r.server_cpu_percent {
        rows.push(vec!["server CPU".into(), format!("{cpu:.0} % of a core")]);
    }
    if let Some(rss) = r.server_peak_rss_bytes {
        rows.push(vec![
            "server peak RSS".into(),
            format!("{:.1} MiB", rss as f64 / 1048576.0),
        ]);
    }
    rows.push(vec!["lost (must be 0)".into(), r.lost.to_string()]);
    rows.push(vec!["duplicates".into(), r.duplicates.to_string()]);
    output::table(&["measure", "value"], rows, "");
}
