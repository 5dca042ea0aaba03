//! Helpers for end-to-end tests: the real `sluice` binary on free ports with a temporary data
//! directory, a real Mosquitto, real MQTT clients, and the HTTP API.

#![allow(dead_code)]

pub mod mqtt;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `sluice` binary of this workspace, built (once per test run) in the same profile.
pub fn sluice_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test binary path");
        // target/<profile>/deps/e2e-<hash> -> target/<profile>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary lives in target/<profile>/deps")
            .to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        // The whole workspace's tests and binaries, as `cargo test --workspace` builds them:
        // the same feature set, so this is a no-op after it (building `-p sluice` alone
        // resolves other features and would rebuild half the dependency tree, twice).
        cmd.args(["build", "--quiet", "--workspace", "--tests", "--bins"]);
        if profile_dir.file_name().and_then(|n| n.to_str()) == Some("release") {
            cmd.arg("--release");
        }
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
        // `cargo test` gives this process its package's CARGO_MANIFEST_DIR, CARGO_PKG_*, ...;
        // ring's build script watches CARGO_MANIFEST_DIR, so passing them on would rebuild the
        // TLS stack here and again in the next `cargo test`.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("CARGO_") && name != "CARGO_HOME" && name != "CARGO_TARGET_DIR" {
                cmd.env_remove(name.as_ref());
            }
        }
        let status = cmd.status().expect("run cargo build for the sluice binary");
        assert!(status.success(), "building the sluice binary failed");
        let bin = profile_dir.join("sluice");
        assert!(bin.exists(), "{} missing after build", bin.display());
        bin
    })
    .clone()
}

/// The admin key (`ID:SECRET`) of every server started by this test binary, by its URL, so
/// helpers that only know a URL (`store_util::Http::new`) authenticate too.
fn keys() -> &'static Mutex<HashMap<String, String>> {
    static KEYS: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    KEYS.get_or_init(Mutex::default)
}

/// The admin key (`ID:SECRET`) of the server at `base` (`http://127.0.0.1:PORT`).
pub fn key_for(base: &str) -> String {
    keys()
        .lock()
        .unwrap()
        .get(base.trim_end_matches('/'))
        .cloned()
        .unwrap_or_else(|| panic!("no sluice started at {base} by this test binary"))
}

/// `Authorization: Bearer ID:SECRET` for the server at `base`.
pub fn auth_for(base: &str) -> reqwest::header::HeaderMap {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", key_for(base)).parse().expect("header"),
    );
    h
}

/// A self-signed certificate for 127.0.0.1 and localhost, written as `{name}-cert.pem` and
/// `{name}-key.pem` in `dir`; returns the certificate text and the two paths.
pub fn self_signed_cert(dir: &Path, name: &str) -> (String, String, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("generate certificate");
    let cert = dir.join(format!("{name}-cert.pem"));
    let key = dir.join(format!("{name}-key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    (
        ck.cert.pem(),
        cert.display().to_string(),
        key.display().to_string(),
    )
}

/// A running `sluice serve`.
pub struct Sluice {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT` (`https://` when started with `--http-tls-cert`)
    pub http: String,
    /// The `--http-tls-cert` it was started with: the test clients trust it.
    pub ca_cert: Option<PathBuf>,
    /// Its own configuration directory (`SLUICE_CONFIG_DIR`), where it wrote its admin key.
    pub config_dir: PathBuf,
    /// Its admin key, `ID:SECRET` (read from the credentials file after the ready line).
    pub key: String,
    /// The MQTT listener port (0 with an external broker).
    pub mqtt_port: u16,
    /// The data directory.
    pub data_dir: PathBuf,
    stderr_log: PathBuf,
}

impl Sluice {
    /// Starts `sluice serve` on free ports with `data_dir`, plus `extra` flags, and waits for
    /// its ready line.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Sluice {
        let stderr_log = data_dir.with_extension(format!("stderr-{}.log", rand::random::<u32>()));
        let log = std::fs::File::create(&stderr_log).expect("create stderr log");
        let config_dir = data_dir.with_extension(format!("config-{}", rand::random::<u32>()));
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--http-listen".into(),
            "127.0.0.1:0".into(),
        ];
        if !extra.contains(&"--mqtt-url") {
            args.extend(["--mqtt-listen".into(), "127.0.0.1:0".into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut child = Command::new(sluice_bin())
            .args(&args)
            .env("SLUICE_LOG", "info")
            .env("SLUICE_CONFIG_DIR", &config_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn sluice");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("sluice ready") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let log = std::fs::read_to_string(&stderr_log).unwrap_or_default();
                panic!("sluice did not become ready within 60 s; its log:\n{log}");
            }
        };
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{key}=")).map(str::to_string))
        };
        let http = match (field("http"), field("https")) {
            (Some(addr), _) => format!("http://{addr}"),
            (None, Some(addr)) => format!("https://{addr}"),
            (None, None) => panic!("no http= or https= in the ready line: {line}"),
        };
        let ca_cert = extra
            .windows(2)
            .find(|w| w[0] == "--http-tls-cert")
            .map(|w| PathBuf::from(w[1]));
        let mqtt_port = field("mqtt")
            .and_then(|a| a.rsplit(':').next().and_then(|p| p.parse().ok()))
            .unwrap_or(0);
        let key = read_admin_key(&config_dir, &http);
        keys().lock().unwrap().insert(http.clone(), key.clone());
        Sluice {
            child: Some(child),
            http,
            ca_cert,
            config_dir,
            key,
            mqtt_port,
            data_dir: data_dir.to_path_buf(),
            stderr_log,
        }
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(mut self) {
        let mut child = self.child.take().expect("running");
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                assert!(
                    status.success(),
                    "sluice exited with {status} after SIGTERM; log:\n{}",
                    self.log()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sluice did not stop within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL");
        let _ = child.wait();
    }

    /// The process id (for `/proc/<pid>/status` and signals).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// What the process wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// A blocking-free HTTP client for the API, sending the admin key.
    pub fn api(&self) -> Api {
        Api {
            base: self.http.clone(),
            http: self.client(),
        }
    }

    /// A reqwest client sending the admin key on every request (and trusting the server's
    /// certificate when it serves HTTPS).
    pub fn client(&self) -> reqwest::Client {
        let mut builder = reqwest::Client::builder().default_headers(auth_for(&self.http));
        if let Some(ca) = &self.ca_cert {
            let pem = std::fs::read(ca).expect("read the --http-tls-cert file");
            builder = builder
                .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("PEM cert"));
        }
        builder.build().expect("reqwest client")
    }

    /// The `sluice` CLI pointed at this server (`--server`), with its configuration directory,
    /// so it finds the admin key as a CLI on the server's machine does.
    pub fn cli(&self) -> Command {
        let mut cmd = Command::new(sluice_bin());
        cmd.arg("--server")
            .arg(&self.http)
            .env("SLUICE_CONFIG_DIR", &self.config_dir)
            .env_remove("SLUICE_KEY")
            .env_remove("SLUICE_CA_CERT");
        if let Some(ca) = &self.ca_cert {
            cmd.arg("--ca-cert").arg(ca);
        }
        cmd
    }

    /// Runs the CLI with `args` (printing the command and what it said); returns whether it
    /// succeeded, its stdout and its stderr.
    pub fn run_cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.cli().args(args).output().expect("run sluice CLI");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        println!("$ sluice {}\n{stdout}{stderr}", args.join(" "));
        (out.status.success(), stdout, stderr)
    }

    /// Runs the CLI with `args`, expects it to succeed, and returns its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.run_cli(args);
        assert!(ok, "{args:?}: {stdout}{stderr}");
        stdout
    }
}

/// The admin key `serve` wrote for `http` to `config_dir/credentials.toml`, as `ID:SECRET`.
fn read_admin_key(config_dir: &Path, http: &str) -> String {
    let path = config_dir.join("credentials.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (serve writes it before its ready line)",
            path.display()
        )
    });
    let file: toml::Value = toml::from_str(&text).expect("credentials.toml is TOML");
    let entry = &file["servers"][http];
    format!(
        "{}:{}",
        entry["key_id"].as_str().expect("key_id"),
        entry["secret"].as_str().expect("secret")
    )
}

impl Drop for Sluice {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `/v1/` API.
#[derive(Clone)]
pub struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends `request` and reads the answer as JSON (`null` when it is not JSON).
    async fn call(request: reqwest::RequestBuilder, what: &str) -> (u16, Value) {
        let r = request.send().await.expect(what);
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// `GET path` -> (status, JSON).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        Api::call(self.http.get(self.url(path)), "GET").await
    }

    /// `POST path` with JSON -> (status, JSON).
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        Api::call(self.http.post(self.url(path)).json(body), "POST").await
    }

    /// `PUT path` with JSON -> (status, JSON).
    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        Api::call(self.http.put(self.url(path)).json(body), "PUT").await
    }

    /// `GET path` -> (status, body text), for answers that are not JSON (`/metrics`).
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let r = self.http.get(self.url(path)).send().await.expect("GET");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }

    /// `DELETE path` -> (status, JSON).
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        Api::call(self.http.delete(self.url(path)), "DELETE").await
    }

    /// Receives and deletes messages from `queue` until `want` arrived or `timeout` passed
    /// with nothing new. Returns the bodies as JSON.
    pub async fn drain(&self, queue: &str, want: usize, timeout: Duration) -> Vec<Value> {
        let mut out = Vec::new();
        let mut last_progress = Instant::now();
        while out.len() < want && last_progress.elapsed() < timeout {
            let max = (want - out.len()).min(16);
            let (status, v) = self
                .get(&format!(
                    "/v1/queues/{queue}/messages?max={max}&wait_seconds=1"
                ))
                .await;
            assert_eq!(status, 200, "receive failed: {v}");
            let msgs = v["messages"].as_array().cloned().unwrap_or_default();
            if !msgs.is_empty() {
                last_progress = Instant::now();
            }
            for m in msgs {
                let receipt = m["receipt_handle"].as_str().expect("receipt").to_string();
                let (status, v) = self
                    .delete(&format!("/v1/queues/{queue}/messages/{receipt}"))
                    .await;
                assert_eq!(status, 200, "delete failed: {v}");
                let body = m["body"].as_str().expect("text body");
                out.push(serde_json::from_str(body).expect("JSON body"));
            }
        }
        out
    }
}

/// A free TCP port on 127.0.0.1 (for servers that cannot be told to pick one).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A real Mosquitto broker on a free loopback port.
pub struct Mosquitto {
    child: Child,
    /// Its port.
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts `mosquitto` with a queue limit high enough for load tests (its default of 1,000
    /// per client silently drops under load).
    pub fn start() -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\nmax_inflight_messages 0\n"
            ),
        )
        .expect("write mosquitto.conf");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run mosquitto ({e}); install it: apt-get install -y mosquitto")
            });
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Mosquitto {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The body the overheat rule forwards for `temperature` from device `dn`.
pub fn overheat_output(t: f64, dn: &str, seq: u64) -> Value {
    serde_json::json!({"t": t, "device": dn, "location": format!("seq-{seq}")})
}
