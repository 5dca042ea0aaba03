//! The server a bench runs against: its own `sluice serve` on free ports with a temporary data
//! directory (the default), or one the user names. Also reads the server's CPU time and peak
//! memory from /proc, so the report can say what the throughput cost.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rustls::pki_types::CertificateDer;

/// Where the bench sends load.
#[derive(Debug)]
pub struct Target {
    /// The HTTP API, `http://host:port`.
    pub http: String,
    /// The MQTT broker devices connect to.
    pub mqtt_host: String,
    /// Its port.
    pub mqtt_port: u16,
    /// The access key (`ID:SECRET`) for the API: the bench server's admin key, or the one
    /// given for an existing server.
    pub key: Option<String>,
    /// `--ca-cert`: a PEM file of extra certificates to trust for an `https://` server, and
    /// what it holds.
    pub ca_cert: Option<(PathBuf, Vec<CertificateDer<'static>>)>,
    /// The process, when the bench started it.
    owned: Option<Owned>,
}

#[derive(Debug)]
struct Owned {
    child: Child,
    data_dir: PathBuf,
    config_dir: PathBuf,
}

impl Target {
    /// An existing server and broker.
    pub fn existing(
        http: String,
        mqtt_host: String,
        mqtt_port: u16,
        key: Option<String>,
        ca_cert: Option<(PathBuf, Vec<CertificateDer<'static>>)>,
    ) -> Target {
        Target {
            http,
            mqtt_host,
            mqtt_port,
            key,
            ca_cert,
            owned: None,
        }
    }

    /// An HTTP client for the bench's API requests: its key, and its `--ca-cert`.
    pub fn http_client(&self) -> anyhow::Result<reqwest::Client> {
        let builder = reqwest::Client::builder().default_headers(self.auth_headers());
        let builder = match &self.ca_cert {
            Some((path, certs)) => super::super::client::trusting(builder, path, certs)?,
            None => builder,
        };
        Ok(builder.build()?)
    }

    /// The extra roots the consumers trust (`--ca-cert`).
    pub fn extra_roots(&self) -> &[CertificateDer<'static>] {
        self.ca_cert.as_ref().map_or(&[], |(_, certs)| certs)
    }

    /// `Authorization` for the API requests of the bench.
    pub fn auth_headers(&self) -> reqwest::header::HeaderMap {
        super::super::client::auth_headers(self.key.as_deref())
    }

    /// Starts `sluice serve` (this executable) on free loopback ports with a fresh data
    /// directory and `extra` flags, and waits for its ready line.
    pub fn spawn(label: &str, extra: &[&str]) -> anyhow::Result<Target> {
        let data_dir = std::env::temp_dir().join(format!(
            "sluice-bench-{label}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        // Its own configuration directory: the server writes its admin key there, and the
        // user's credentials file is left alone.
        let config_dir = data_dir.with_extension("config");
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg("serve")
            .arg("--data-dir")
            .arg(&data_dir)
            .args([
                "--http-listen",
                "127.0.0.1:0",
                "--mqtt-listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .env("SLUICE_LOG", "warn")
            .env(crate::credentials::CONFIG_DIR_ENV, &config_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("sluice ready") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                anyhow::bail!("the bench server did not start within 120 s");
            }
        };
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{key}=")).map(str::to_string))
        };
        let http = format!("http://{}", field("http").unwrap_or_default());
        let mqtt = field("mqtt").unwrap_or_default();
        let (host, port) = mqtt
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_string(), p.parse().ok()?)))
            .ok_or_else(|| anyhow::anyhow!("unexpected ready line: {line}"))?;
        let key = crate::credentials::lookup(&config_dir, &http)?
            .map(|e| format!("{}:{}", e.key_id, e.secret));
        Ok(Target {
            http,
            mqtt_host: host,
            mqtt_port: port,
            key,
            ca_cert: None,
            owned: Some(Owned {
                child,
                data_dir,
                config_dir,
            }),
        })
    }

    /// CPU seconds (user + system) the server has used, when the bench owns it.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let pid = self.owned.as_ref()?.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name, which is in parentheses and may contain spaces.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        Some((utime + stime) / ticks)
    }

    /// Peak resident memory of the server in bytes, when the bench owns it.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        let pid = self.owned.as_ref()?.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(mut owned) = self.owned.take() {
            unsafe {
                libc::kill(owned.child.id() as i32, libc::SIGTERM);
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = owned.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = owned.child.kill();
            let _ = owned.child.wait();
            let _ = std::fs::remove_dir_all(&owned.data_dir);
            let _ = std::fs::remove_dir_all(&owned.config_dir);
        }
    }
}
