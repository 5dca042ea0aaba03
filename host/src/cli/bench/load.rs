//! The load: simulated devices publishing JSON telemetry at QoS 1, and consumers draining the
//! queue over the HTTP API. Every message carries its device, sequence number and send time,
//! so the consumers measure end-to-end latency and the report can prove nothing was lost.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Counters shared by devices, consumers and the progress display.
#[derive(Debug)]
pub struct Stats {
    /// Publishes acknowledged by the server (PUBACK).
    pub acked: AtomicU64,
    /// Messages received and deleted by consumers.
    pub consumed: AtomicU64,
    /// Receive requests that returned at least one message (consumed / this = the consumers'
    /// batch size, which decides how many HTTP requests each message costs).
    pub receives: AtomicU64,
    /// Messages received twice.
    pub duplicates: AtomicU64,
    /// Device connection errors.
    pub device_errors: AtomicU64,
    /// Acknowledged count per device: acks arrive in order, so device `d` had seqs
    /// `0..acked_by_device[d]` acknowledged.
    pub acked_by_device: Vec<AtomicU64>,
    /// End-to-end latency, microseconds.
    pub latency_us: Mutex<Histogram<u64>>,
    seen: Mutex<Vec<Vec<u64>>>,
}

impl Stats {
    /// Stats for `devices` devices.
    pub fn new(devices: usize) -> Arc<Stats> {
        Arc::new(Stats {
            acked: AtomicU64::new(0),
            consumed: AtomicU64::new(0),
            receives: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            device_errors: AtomicU64::new(0),
            acked_by_device: (0..devices).map(|_| AtomicU64::new(0)).collect(),
            latency_us: Mutex::new(
                Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds"),
            ),
            seen: Mutex::new(vec![Vec::new(); devices]),
        })
    }

    fn mark_seen(&self, device: usize, seq: u64) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let Some(bits) = seen.get_mut(device) else {
            return;
        };
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if bits.len() <= word {
            bits.resize(word + 1, 0);
        }
        if bits[word] & (1 << bit) != 0 {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        bits[word] |= 1 << bit;
    }

    /// Acknowledged publishes that no consumer received.
    pub fn lost(&self) -> u64 {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut lost = 0;
        for (d, acked) in self.acked_by_device.iter().enumerate() {
            let n = acked.load(Ordering::Relaxed);
            for seq in 0..n {
                let (word, bit) = ((seq / 64) as usize, seq % 64);
                let hit = seen[d].get(word).is_some_and(|w| w & (1 << bit) != 0);
                if !hit {
                    lost += 1;
                }
            }
        }
        lost
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Starts `devices` devices against `host:port`. They publish until `stop` is cancelled, then
/// wait (up to 10 s) for their outstanding acks. `rate` is the total messages/s (None = flat out).
pub fn start_devices(
    host: &str,
    port: u16,
    devices: usize,
    rate: Option<u64>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let run_id: u32 = rand::random();
    (0..devices)
        .map(|d| {
            let host = host.to_string();
            let stats = stats.clone();
            let stop = stop.clone();
            let interval = rate.map(|r| Duration::from_secs_f64(devices as f64 / r.max(1) as f64));
            tokio::spawn(async move {
                device(d, run_id, &host, port, interval, stats, stop).await;
            })
        })
        .collect()
}

/// Largest MQTT packet a device accepts from the server (it only expects CONNACK and PUBACK).
const MAX_PACKET: usize = 1024;

/// Publishes a device may have unacknowledged, as the `--inflight` of a real client would.
const INFLIGHT: usize = 64;

/// One simulated device: an MQTT 3.1.1 connection driven by rumqttc's packet codec directly.
/// A full client (its request channel, event loop and retransmit store) cost the load generator
/// more per message than the server spends routing it, and both share the machine's cores.
/// Publishes are QoS 1 with at most [`INFLIGHT`] unacknowledged; when the window has room for
/// several (flat out), they leave in one write, as a client library's batching would send them.
async fn device(
    d: usize,
    run_id: u32,
    host: &str,
    port: u16,
    interval: Option<Duration>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    if let Err(e) = run_device(d, run_id, host, port, interval, &stats, &stop).await {
        stats.device_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("bench device {d}: {e:#}");
    }
}

async fn run_device(
    d: usize,
    run_id: u32,
    host: &str,
    port: u16,
    interval: Option<Duration>,
    stats: &Arc<Stats>,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use rumqttc::mqttbytes::v4::{Connect, Packet, Publish};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .with_context(|| format!("connecting to {host}:{port}"))?;
    // Nagle's algorithm stays on, as in most MQTT client libraries (rumqttc's default among
    // them): paced publishes of one device may share a segment.
    stream.set_nodelay(false)?;
    let (mut rd, mut wr) = stream.into_split();
    let mut out = bytes::BytesMut::with_capacity(16 * 1024);
    let mut connect = Connect::new(format!("bench-{run_id:08x}-{d}"));
    connect.keep_alive = 60;
    connect.clean_session = true;
    connect.write(&mut out)?;
    wr.write_all(&out).await?;
    out.clear();
    let mut input = bytes::BytesMut::with_capacity(4096);
    loop {
        match Packet::read(&mut input, MAX_PACKET) {
            Ok(Packet::ConnAck(ack)) if ack.code == rumqttc::ConnectReturnCode::Success => break,
            Ok(other) => anyhow::bail!("expected CONNACK, got {other:?}"),
            Err(rumqttc::Error::InsufficientBytes(_)) => {
                if rd.read_buf(&mut input).await? == 0 {
                    anyhow::bail!("the server closed the connection before CONNACK");
                }
            }
            Err(e) => anyhow::bail!("bad CONNACK: {e}"),
        }
    }

    // PUBACKs come back in order (the server keeps per-device order), so a count is enough.
    let window = Arc::new(tokio::sync::Semaphore::new(INFLIGHT));
    let sent = Arc::new(AtomicU64::new(0));
    let acks = {
        let (window, sent, stats, stop) =
            (window.clone(), sent.clone(), stats.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut acked, mut reported) = (0u64, 0u64);
            let mut draining_since: Option<tokio::time::Instant> = None;
            loop {
                loop {
                    match Packet::read(&mut input, MAX_PACKET) {
                        Ok(Packet::PubAck(_)) => {
                            acked += 1;
                            window.add_permits(1);
                        }
                        Ok(_) => {}
                        Err(rumqttc::Error::InsufficientBytes(_)) => break,
                        Err(e) => return Err(anyhow::anyhow!("bad packet from the server: {e}")),
                    }
                }
                if acked > reported {
                    stats.acked_by_device[d].store(acked, Ordering::Relaxed);
                    stats.acked.fetch_add(acked - reported, Ordering::Relaxed);
                    reported = acked;
                }
                if stop.is_cancelled() {
                    let since = *draining_since.get_or_insert_with(tokio::time::Instant::now);
                    if acked >= sent.load(Ordering::Acquire) || since.elapsed() > DRAIN_ACKS {
                        return Ok(());
                    }
                }
                match tokio::time::timeout(Duration::from_millis(200), rd.read_buf(&mut input))
                    .await
                {
                    Ok(Ok(0)) => anyhow::bail!("the server closed the connection"),
                    Ok(Ok(_)) | Err(_) => {}
                    Ok(Err(e)) => return Err(e.into()),
                }
            }
        })
    };

    let mut publish = Publish::new(
        format!("/bench/dev{d}/user/update"),
        rumqttc::QoS::AtLeastOnce,
        Vec::new(),
    );
    let mut next = tokio::time::Instant::now();
    let mut seq = 0u64;
    'publishing: while !stop.is_cancelled() {
        if let Some(interval) = interval {
            next += interval;
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = stop.cancelled() => break,
            }
        }
        // One publish paced; flat out, as many as the window has room for, in one write.
        let room = if interval.is_some() {
            1
        } else {
            window.available_permits().max(1)
        };
        let permits = tokio::select! {
            p = window.clone().acquire_many_owned(room as u32) => p?,
            _ = stop.cancelled() => break 'publishing,
        };
        permits.forget();
        for _ in 0..room {
            publish.pkid = (seq % u64::from(u16::MAX)) as u16 + 1;
            publish.payload = bytes::Bytes::from(format!(
                "{{\"temperature\":40.5,\"humidity\":51,\"location\":{{\"d\":{d},\"s\":{seq},\"t\":{}}}}}",
                now_us()
            ));
            publish.write(&mut out)?;
            seq += 1;
        }
        wr.write_all(&out).await?;
        out.clear();
        sent.store(seq, Ordering::Release);
    }
    match acks.await {
        Ok(result) => result,
        Err(e) => Err(anyhow::anyhow!("ack reader: {e}")),
    }
}

/// How long a device waits for its outstanding acks after the run.
const DRAIN_ACKS: Duration = Duration::from_secs(10);

/// Starts `n` consumers that receive from `queue` and delete what they received, until `stop`.
/// Each keeps one HTTP/1.1 connection and drives it in its own task (hyper's connection API):
/// the load generator shares the two cores with the server, and a pooled client with a task per
/// connection cost it ~4 µs per message, more than the server's rule thread spends.
pub fn start_consumers(
    http: &str,
    auth: reqwest::header::HeaderMap,
    extra_roots: &[rustls::pki_types::CertificateDer<'static>],
    queue: &str,
    n: usize,
    stats: Arc<Stats>,
    stop: CancellationToken,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let base = reqwest::Url::parse(http)?;
    let host = base.host_str().unwrap_or("127.0.0.1");
    // A server behind a proxy may live under a path: the API's paths go after it.
    let prefix = base.path().trim_end_matches('/');
    let target = Arc::new(ConsumerTarget {
        addr: format!("{host}:{}", base.port_or_known_default().unwrap_or(80)),
        tls: match base.scheme() {
            "http" => None,
            "https" => Some(tls_connector(extra_roots)?),
            other => anyhow::bail!("the server URL's scheme is {other}; give http:// or https://"),
        },
        // An IPv6 address is bracketed in a URL, not in a TLS server name.
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        authority: http::HeaderValue::from_str(base.authority())?,
        auth: auth.get(http::header::AUTHORIZATION).cloned(),
        receive: format!("{prefix}/v1/queues/{queue}/messages?max=16&wait_seconds=1"),
        delete: format!("{prefix}/v1/queues/{queue}/messages/delete"),
    });
    Ok((0..n)
        .map(|_| {
            let target = target.clone();
            let stats = stats.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    if let Err(e) = target.consume(&stats, &stop).await {
                        tracing::warn!("bench consumer: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            })
        })
        .collect())
}

/// Where the consumers connect and what they ask.
struct ConsumerTarget {
    /// `host:port` to connect to.
    addr: String,
    /// For an `https://` server.
    tls: Option<tokio_rustls::TlsConnector>,
    /// The server's name (TLS).
    host: String,
    /// The `Host` header.
    authority: http::HeaderValue,
    /// The `Authorization` header, if a key was given.
    auth: Option<http::HeaderValue>,
    /// Path and query of a receive (up to 16, long polling 1 s).
    receive: String,
    /// Path of a batch delete.
    delete: String,
}

impl ConsumerTarget {
    /// One connection: receives and deletes on it until `stop` or an error.
    async fn consume(&self, stats: &Stats, stop: &CancellationToken) -> anyhow::Result<()> {
        let tcp = tokio::net::TcpStream::connect(&self.addr).await?;
        tcp.set_nodelay(true)?;
        match &self.tls {
            None => self.run(tcp, stats, stop).await,
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from(self.host.clone())?;
                let stream = tls.connect(name, tcp).await?;
                self.run(stream, stats, stop).await
            }
        }
    }

    async fn run<IO>(&self, io: IO, stats: &Stats, stop: &CancellationToken) -> anyhow::Result<()>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await?;
        // The connection is polled in this task, beside the requests on it.
        let requests = async {
            while !stop.is_cancelled() {
                self.consume_once(&mut sender, stats).await?;
            }
            anyhow::Ok(())
        };
        tokio::select! {
            done = requests => done,
            closed = conn => {
                closed?;
                anyhow::bail!("the server closed the connection")
            }
        }
    }

    /// Sends one request and returns the answer's body; anything but 2xx is an error.
    async fn call(
        &self,
        sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        method: http::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Bytes> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, self.authority.clone());
        if let Some(auth) = &self.auth {
            req = req.header(http::header::AUTHORIZATION, auth.clone());
        }
        let body = match body {
            Some(b) => {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(b))
            }
            None => Full::new(Bytes::new()),
        };
        sender.ready().await?;
        let response = sender.send_request(req.body(body)?).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            anyhow::bail!("{status}: {}", String::from_utf8_lossy(&bytes));
        }
        Ok(bytes)
    }

    /// One receive and one batch delete of what came.
    async fn consume_once(
        &self,
        sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        stats: &Stats,
    ) -> anyhow::Result<()> {
        let raw = self
            .call(sender, http::Method::GET, &self.receive, None)
            .await?;
        let received: Received<'_> = serde_json::from_slice(&raw)?;
        let now = now_us();
        let mut receipts = Vec::with_capacity(received.messages.len());
        {
            let mut hist = stats.latency_us.lock().unwrap_or_else(|e| e.into_inner());
            for m in &received.messages {
                if let Some(r) = &m.receipt_handle {
                    receipts.push(r.as_ref());
                }
                if let Ok(Reading {
                    location: Location { d, s, t },
                }) = serde_json::from_str(&m.body)
                {
                    let _ = hist.record(now.saturating_sub(t).max(1));
                    stats.mark_seen(d, s);
                }
            }
        }
        if !receipts.is_empty() {
            // One batch delete per receive, as a real consumer does.
            let body = serde_json::to_vec(&DeleteRequest {
                receipt_handles: receipts,
            })?;
            let answer = self
                .call(sender, http::Method::POST, &self.delete, Some(body))
                .await?;
            let results: DeleteAnswer = serde_json::from_slice(&answer)?;
            let failed = results.results.iter().filter(|r| !r.deleted).count();
            if failed > 0 {
                tracing::warn!(
                    "bench consumer: {failed} deletes refused: {}",
                    String::from_utf8_lossy(&answer)
                );
            }
        }
        if !received.messages.is_empty() {
            stats.receives.fetch_add(1, Ordering::Relaxed);
        }
        stats
            .consumed
            .fetch_add(received.messages.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// TLS for an `https://` server: the web's root certificates and `extra_roots` (`--ca-cert`),
/// as the bench's other requests (reqwest with rustls) trust.
fn tls_connector(
    extra_roots: &[rustls::pki_types::CertificateDer<'static>],
) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let mut roots =
        rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in extra_roots {
        roots
            .add(cert.clone())
            .map_err(|e| anyhow::anyhow!("--ca-cert: a certificate TLS cannot use: {e}"))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// What a consumer reads of a receive's answer (typed and borrowed: the load generator shares
/// the two cores with the server, so every microsecond it spends per message is taken from the
/// figures it reports).
#[derive(Deserialize)]
struct Received<'a> {
    #[serde(borrow)]
    messages: Vec<ReceivedMessage<'a>>,
}

#[derive(Deserialize)]
struct ReceivedMessage<'a> {
    #[serde(borrow)]
    receipt_handle: Option<Cow<'a, str>>,
    #[serde(borrow)]
    body: Cow<'a, str>,
}

/// The part of a device reading the consumers check: device, sequence number, send time.
#[derive(Deserialize)]
struct Reading {
    location: Location,
}

#[derive(Deserialize)]
struct Location {
    d: usize,
    s: u64,
    t: u64,
}

#[derive(Deserialize)]
struct DeleteAnswer {
    results: Vec<DeleteResult>,
}

#[derive(Deserialize)]
struct DeleteResult {
    deleted: bool,
}

/// A batch delete's request.
#[derive(Serialize)]
struct DeleteRequest<'a> {
    receipt_handles: Vec<&'a str>,
}
