//! `sluice serve` settings, each declared once in [`Settings`]: that one struct is both the flags
//! of `sluice serve` (clap) and the keys of `sluice.toml` (serde). [`ServeConfig::load`] lays the
//! flags over the file and fills the rest with defaults (flag > file > default; there are no
//! environment variables for these settings). Keys are snake_case with units in their names;
//! unknown keys are errors, so a typo never silently falls back to a default. The `[[topic]]`,
//! `[[queue]]`, `[[subscription]]`, `[[rule]]` and `[[device]]` tables are file-only; their
//! objects are created at start when absent, and never overwritten or deleted.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::store::{QueueAttributesPatch, Synchronous};

/// Where `serve` keeps its data by default: beside where it is started, easy to find and delete.
pub const DEFAULT_DATA_DIR: &str = "./sluice-data";
/// The HTTP API: loopback only by default, nothing is exposed until the operator says so.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8080";
/// MQTT's registered port, loopback only by default.
pub const DEFAULT_MQTT_LISTEN: &str = "127.0.0.1:1883";
/// Default time an HTTP client has to send a request's headers: generous for slow links, short
/// enough that half-sent requests do not pile up.
pub const DEFAULT_HTTP_HEADER_READ_TIMEOUT_SECS: u64 = 30;
/// Default most HTTP connections open at once.
pub const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 10_000;
/// Default most HTTP connections from one address: `sluice bench` runs 384 consumers from one
/// address, an application server behind a proxy a few hundred.
pub const DEFAULT_HTTP_MAX_CONNECTIONS_PER_IP: usize = 2_000;
/// Default CPU budget of one rule call, ms.
pub const DEFAULT_RULE_CALL_TIMEOUT_MS: u64 = 100;

/// Every setting of `sluice serve`, declared once: each field is the flag `--field-name` and the
/// `sluice.toml` key `field_name` (the doc comment is the flag's help). All are optional here:
/// a flag given overrides the file's key, and a setting given in neither takes its default (see
/// [`ServeConfig::load`]). The tables at the end are the file's only.
///
/// Adding a setting: a field here, its resolution in [`ServeConfig::load`], a line in
/// `sluice.example.toml` and a row in the README's settings table (a unit test checks the last
/// two).
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Where the store lives [default: ./sluice-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// HTTP API address [default: 127.0.0.1:8080].
    #[arg(long)]
    pub http_listen: Option<SocketAddr>,
    /// sluice's own MQTT listener address [default: 127.0.0.1:1883].
    #[arg(long)]
    pub mqtt_listen: Option<SocketAddr>,
    /// Use an existing broker instead of the own listener: mqtt://HOST:PORT.
    #[arg(long)]
    pub mqtt_url: Option<String>,
    /// Client id toward the external broker: stable across restarts, distinct per process
    /// [default: derived from the data directory].
    #[arg(long)]
    pub mqtt_client_id: Option<String>,
    /// With --mqtt-url: subscribe as the MQTT 5 shared subscription $share/GROUP/..., so the
    /// sluice processes of one group split the broker's traffic (each message handled once).
    #[arg(long, value_name = "GROUP")]
    pub mqtt_share_group: Option<String>,
    /// MQTT over TLS listener address, beside the plain one (device SDKs use 8883); needs
    /// --mqtt-tls-cert and --mqtt-tls-key too.
    #[arg(long)]
    pub mqtt_tls_listen: Option<SocketAddr>,
    /// PEM certificate chain of the TLS listener (in the file: relative to the file).
    #[arg(long)]
    pub mqtt_tls_cert: Option<PathBuf>,
    /// PEM private key of the TLS listener (in the file: relative to the file).
    #[arg(long)]
    pub mqtt_tls_key: Option<PathBuf>,
    /// Serve the HTTP API over HTTPS with this PEM certificate chain (MNS signatures over plain
    /// HTTP can be replayed by anyone on the path); needs --http-tls-key too.
    #[arg(long)]
    pub http_tls_cert: Option<PathBuf>,
    /// PEM private key for --http-tls-cert (in the file: relative to the file).
    #[arg(long)]
    pub http_tls_key: Option<PathBuf>,
    /// Accept anonymous MQTT clients from any address (default: loopback only). Anyone who can
    /// reach the port may then publish to unregistered products' topics.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub mqtt_allow_anonymous: Option<bool>,
    /// Start a new data directory empty, without the example set-up (topic alerts, queue
    /// alerts-q, subscription alerts-to-q and the running rule overheat). In the file:
    /// `example_setup = false`.
    #[arg(
        long = "no-example-setup",
        num_args = 0,
        default_missing_value = "false"
    )]
    pub example_setup: Option<bool>,
    /// Refuse HTTP pushes to loopback, private, CGNAT, unique-local, documentation and reserved
    /// addresses too (metadata, link-local, multicast addresses are always refused).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub push_deny_private_networks: Option<bool>,
    /// Test knob: multiplies every push retry wait (0 < x <= 1) [default: 1]. Never set it in
    /// production.
    #[arg(long, hide = true)]
    pub push_retry_scale: Option<f64>,
    /// The HTTP API's base URL as push endpoints reach it (http(s)://HOST[:PORT][/PATH]); the
    /// MNS signing certificate URL in MNS-signed pushes is built on it [default: the API's
    /// listen address, with 127.0.0.1 for an unspecified one].
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,

    /// Store durability: full (survives power loss) or normal (survives a process crash)
    /// [default: full].
    #[arg(long, help_heading = "Store")]
    pub synchronous: Option<Synchronous>,
    /// Node id stamped into message ids; distinct per process sharing a store [default: derived
    /// from the data directory].
    #[arg(long, help_heading = "Store")]
    pub node_id: Option<u16>,
    /// Where topics and queues live: sqlite (default, in the data directory) or a NATS
    /// JetStream cluster shared with other sluice processes: nats://HOST:PORT[,HOST:PORT...].
    #[arg(
        long,
        value_name = "sqlite|nats://HOST:PORT,...",
        help_heading = "Store"
    )]
    pub store: Option<String>,
    /// Monitoring endpoints of the NATS servers, checked at start for `sync_interval: always`
    /// and enough servers for 3 replicas [default: http://HOST:8222 of each --store server].
    #[arg(long, value_name = "URL[,URL...]", value_delimiter = ',', value_parser = trimmed, help_heading = "Store")]
    pub nats_monitor: Option<Vec<String>>,
    /// Start even when the NATS servers do not fsync every write, are fewer than 3, or their
    /// monitoring endpoints cannot be read (sluice warns; acknowledged messages may then be lost
    /// with a server).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", help_heading = "Store")]
    pub accept_weaker_durability: Option<bool>,
    /// Prefix of sluice's streams, subjects and key-value buckets on the NATS cluster, so
    /// several deployments can share one [default: sluice].
    #[arg(long, help_heading = "Store")]
    pub nats_prefix: Option<String>,

    /// Rule worker threads, 1-256 [default: one per core].
    #[arg(long, help_heading = "Rules")]
    pub rule_workers: Option<usize>,
    /// CPU budget of one rule call in milliseconds of CPU work, metered as Wasm fuel so a busy
    /// machine does not fail honest rules; wall time is bounded at 20x [default: 100].
    #[arg(long, help_heading = "Rules")]
    pub rule_call_timeout_ms: Option<u64>,
    /// Memory cap of one rule instance, its linear memory and table together [default:
    /// 16777216].
    #[arg(long, help_heading = "Rules")]
    pub rule_max_memory_bytes: Option<usize>,
    /// Most lines one message may write to a rule's log; the rest are dropped and counted
    /// [default: 32].
    #[arg(long, help_heading = "Rules")]
    pub rule_log_lines_per_message: Option<u32>,
    /// Most bytes one message may write to a rule's log, all lines together [default: 8192].
    #[arg(long, help_heading = "Rules")]
    pub rule_log_bytes_per_message: Option<usize>,
    /// Most bytes one rule may write to its log per second, on all workers together [default:
    /// 65536].
    #[arg(long, help_heading = "Rules")]
    pub rule_log_bytes_per_second: Option<u64>,

    /// Largest MQTT packet body (remaining length) accepted, bytes, 1024-268435456 [default:
    /// 1114112].
    #[arg(long, help_heading = "Limits")]
    pub mqtt_max_packet_size_bytes: Option<usize>,
    /// Most topic filters in one SUBSCRIBE or UNSUBSCRIBE, 1-65535; more closes the connection
    /// [default: 128].
    #[arg(long, help_heading = "Limits")]
    pub mqtt_max_filters_per_packet: Option<usize>,
    /// Most subscriptions one MQTT session holds; more get SUBACK failure codes [default: 256].
    #[arg(long, help_heading = "Limits")]
    pub mqtt_max_subscriptions_per_session: Option<usize>,
    /// Most saved persistent MQTT sessions (clean session off); the oldest go first [default:
    /// 100000].
    #[arg(long, help_heading = "Limits")]
    pub mqtt_max_saved_sessions: Option<usize>,
    /// How long a saved persistent MQTT session is kept after its connection closed, seconds
    /// [default: 604800].
    #[arg(long, help_heading = "Limits")]
    pub mqtt_saved_session_expiry_secs: Option<u64>,
    /// How long a QoS 1 downlink message kept for an offline persistent session waits to be
    /// delivered, seconds [default: 604800].
    #[arg(long, help_heading = "Limits")]
    pub mqtt_offline_retention_secs: Option<u64>,
    /// Most undelivered downlink messages kept for one offline persistent session; more are
    /// refused [default: 1000].
    #[arg(long, help_heading = "Limits")]
    pub mqtt_max_kept_per_session: Option<usize>,
    /// Most synchronous calls (RRPC) waiting for devices' answers at once [default: 1024].
    #[arg(long, help_heading = "Limits")]
    pub mqtt_max_waiting_calls: Option<usize>,
    /// Time a new MQTT connection has for its TLS handshake and CONNECT, seconds [default: 10].
    #[arg(long, help_heading = "Limits")]
    pub mqtt_connect_timeout_secs: Option<u64>,
    /// Longest silence of an MQTT session without keep-alive (keep-alive 0), seconds [default:
    /// 3600].
    #[arg(long, help_heading = "Limits")]
    pub mqtt_max_idle_secs: Option<u64>,
    /// Most MQTT connections open at once, plain and TLS together [default: 50000].
    #[arg(long, help_heading = "Limits")]
    pub mqtt_max_connections: Option<usize>,
    /// Most MQTT connections open at once from one address [default: 5000].
    #[arg(long, help_heading = "Limits")]
    pub mqtt_max_connections_per_ip: Option<usize>,
    /// Time an HTTP client has to send a request's headers, also the idle time of a kept-alive
    /// connection between requests, seconds [default: 30].
    #[arg(long, help_heading = "Limits")]
    pub http_header_read_timeout_secs: Option<u64>,
    /// Most HTTP connections open at once, HTTP or HTTPS [default: 10000].
    #[arg(long, help_heading = "Limits")]
    pub http_max_connections: Option<usize>,
    /// Most HTTP connections open at once from one address [default: 2000].
    #[arg(long, help_heading = "Limits")]
    pub http_max_connections_per_ip: Option<usize>,
    /// Console sessions signed in at once with one access key [default: 100].
    #[arg(long, help_heading = "Limits")]
    pub console_max_sessions_per_key: Option<usize>,
    /// Console sessions signed in at once in all [default: 10000].
    #[arg(long, help_heading = "Limits")]
    pub console_max_sessions: Option<usize>,
    /// Live tails (server-sent event streams) open at once with one access key [default: 16].
    #[arg(long, help_heading = "Limits")]
    pub console_max_tails_per_key: Option<usize>,
    /// Live tails open at once in all [default: 256].
    #[arg(long, help_heading = "Limits")]
    pub console_max_tails: Option<usize>,

    /// `[[topic]]`: topics to create at start (file only).
    #[arg(skip)]
    #[serde(default)]
    pub topic: Vec<TopicConfig>,
    /// `[[queue]]`: queues to create at start (file only).
    #[arg(skip)]
    #[serde(default)]
    pub queue: Vec<QueueConfig>,
    /// `[[subscription]]`: subscriptions to create at start (file only).
    #[arg(skip)]
    #[serde(default)]
    pub subscription: Vec<SubscriptionConfig>,
    /// `[[rule]]`: rules to create (running) at start (file only).
    #[arg(skip)]
    #[serde(default)]
    pub rule: Vec<RuleConfig>,
    /// `[[device]]`: devices to register at start; their secrets are printed to the log once
    /// (file only).
    #[arg(skip)]
    #[serde(default)]
    pub device: Vec<DeviceConfig>,
}

/// A list element of `--nats-monitor a, b`, without the spaces around it.
fn trimmed(s: &str) -> Result<String, std::convert::Infallible> {
    Ok(s.trim().to_owned())
}

impl Settings {
    /// The settings' keys (the file's keys and the flags' ids), in declaration order; the
    /// file-only tables are not among them.
    pub fn keys() -> Vec<&'static str> {
        Self::flags().map(|(key, _)| key).collect()
    }

    /// Each setting's key and its flag (without the leading `--`).
    fn flags() -> impl Iterator<Item = (&'static str, &'static str)> {
        use clap::Args;
        static COMMAND: std::sync::OnceLock<clap::Command> = std::sync::OnceLock::new();
        COMMAND
            .get_or_init(|| Settings::augment_args(clap::Command::new("serve")))
            .get_arguments()
            .filter_map(|a| Some((a.get_id().as_str(), a.get_long()?)))
    }

    /// The flag of setting `key`, with its `--`.
    pub fn flag(key: &str) -> String {
        let long = Self::flags()
            .find(|(k, _)| *k == key)
            .map(|(_, long)| long.to_owned());
        format!("--{}", long.unwrap_or_else(|| key.replace('_', "-")))
    }
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Its flag on the command line.
    Flag,
    /// Its key in this config file.
    File(PathBuf),
    /// Neither: its default.
    Default,
}

/// A setting as an error names it: its key and where its value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingAt {
    /// The `sluice.toml` key (the flag is derived from it).
    pub key: &'static str,
    /// Where its value came from.
    pub origin: Origin,
}

impl fmt::Display for SettingAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::Flag => write!(f, "`{}` (flag {})", self.key, Settings::flag(self.key)),
            Origin::File(path) => write!(f, "`{}` in {}", self.key, path.display()),
            Origin::Default => write!(f, "`{}` (default)", self.key),
        }
    }
}

/// A syntax or type error in `sluice.toml`, on one line with the TOML parser's line and column
/// (its own rendering quotes the source over several lines, which does not fit a log line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", match .location { Some((l, c)) => format!("line {l}, column {c}: "), None => String::new() })]
pub struct SyntaxError {
    /// Line and column (from 1) where the parser stopped, when it knows.
    pub location: Option<(usize, usize)>,
    /// What is wrong (names the key for unknown keys).
    pub message: String,
}

/// Why the configuration was refused. Every variant about a value names the setting and where
/// the value came from (the flag, or the file's path).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for sluice.
    #[error("config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What and where.
        #[source]
        source: SyntaxError,
    },
    /// A number outside its range.
    #[error("{setting}: {value} is out of range {range}")]
    OutOfRange {
        /// The setting.
        setting: SettingAt,
        /// The value given.
        value: String,
        /// The range allowed.
        range: String,
    },
    /// A cap of 0, which would refuse everything.
    #[error("{setting}: 0 would refuse every one; give at least 1")]
    Zero {
        /// The setting.
        setting: SettingAt,
    },
    /// A value the component that uses it refused.
    #[error("{setting}: {source}")]
    Refused {
        /// The setting.
        setting: SettingAt,
        /// The component's reason.
        #[source]
        source: crate::ingest::IngestError,
    },
    /// A value of the wrong form.
    #[error("{setting}: `{value}`: {expected}")]
    Malformed {
        /// The setting.
        setting: SettingAt,
        /// The value (or the part of a list) at fault.
        value: String,
        /// What is expected instead.
        expected: &'static str,
    },
    /// One of settings that go together is missing.
    #[error("{given} is set but `{missing}` is not: {what} needs all of {all}")]
    Incomplete {
        /// A setting of the group that is given.
        given: SettingAt,
        /// The first one missing.
        missing: &'static str,
        /// What the group sets up.
        what: &'static str,
        /// The group's keys.
        all: &'static str,
    },
    /// A setting that has no effect with the others given.
    #[error("{setting}: {why}")]
    NotApplicable {
        /// The setting.
        setting: SettingAt,
        /// Why, and what to give instead.
        why: &'static str,
    },
    /// A `[[device]]` entry whose product key the store would refuse.
    #[error("`device.product_key` in {path}: [[device]] `{device}`: {source}")]
    Device {
        /// The config file.
        path: PathBuf,
        /// `PRODUCT_KEY/DEVICE_NAME`.
        device: String,
        /// The store's reason.
        #[source]
        source: crate::store::StoreError,
    },
}

/// One setting after layering: the flag's value, else the file's, else none (its default then
/// applies), with where it came from.
struct Layered<T> {
    key: &'static str,
    value: Option<T>,
    origin: Origin,
}

impl<T> Layered<T> {
    fn at(&self) -> SettingAt {
        SettingAt {
            key: self.key,
            origin: self.origin.clone(),
        }
    }

    fn is_set(&self) -> bool {
        self.value.is_some()
    }

    fn or(self, default: T) -> T {
        self.value.unwrap_or(default)
    }

    /// The value or `default`, refused outside `min..=max`.
    fn in_range(self, default: T, min: T, max: T) -> Result<T, ConfigError>
    where
        T: PartialOrd + fmt::Display,
    {
        let at = self.at();
        let v = self.or(default);
        if v < min || v > max {
            return Err(ConfigError::OutOfRange {
                setting: at,
                value: v.to_string(),
                range: format!("{min}..={max}"),
            });
        }
        Ok(v)
    }
}

impl Layered<usize> {
    /// A cap on how many of something are open at once: the value or `default`, at least 1.
    fn cap(self, default: usize) -> Result<usize, ConfigError> {
        match self.value {
            Some(0) => Err(ConfigError::Zero { setting: self.at() }),
            v => Ok(v.unwrap_or(default)),
        }
    }
}

/// The command line's settings over the file's.
struct Layers<'a> {
    flags: &'a Settings,
    file: &'a Settings,
    path: Option<&'a Path>,
}

impl Layers<'_> {
    fn pick<T: Clone>(
        &self,
        key: &'static str,
        get: impl Fn(&Settings) -> &Option<T>,
    ) -> Layered<T> {
        let (value, origin) = match (get(self.flags), get(self.file)) {
            (Some(v), _) => (Some(v.clone()), Origin::Flag),
            (None, Some(v)) => (
                Some(v.clone()),
                Origin::File(self.path.map(Path::to_path_buf).unwrap_or_default()),
            ),
            (None, None) => (None, Origin::Default),
        };
        Layered { key, value, origin }
    }
}

/// `pick!(layers, field)`: the setting `field`, layered, named by its key.
macro_rules! pick {
    ($layers:expr, $field:ident) => {
        $layers.pick(stringify!($field), |s| &s.$field)
    };
}

/// Bounds of the MQTT listener that a stranger can reach (see `docs/security.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MqttLimits {
    /// `mqtt_max_packet_size_bytes`
    pub max_packet_size_bytes: usize,
    /// `mqtt_max_filters_per_packet`
    pub max_filters_per_packet: usize,
    /// `mqtt_max_subscriptions_per_session`
    pub max_subscriptions_per_session: usize,
    /// `mqtt_max_saved_sessions`
    pub max_saved_sessions: usize,
    /// `mqtt_saved_session_expiry_secs`
    pub saved_session_expiry_secs: u64,
    /// `mqtt_offline_retention_secs`
    pub offline_retention_secs: u64,
    /// `mqtt_max_kept_per_session`
    pub max_kept_per_session: usize,
    /// `mqtt_max_waiting_calls`
    pub max_waiting_calls: usize,
    /// `mqtt_connect_timeout_secs`
    pub connect_timeout_secs: u64,
    /// `mqtt_max_idle_secs`
    pub max_idle_secs: u64,
    /// `mqtt_max_connections`
    pub max_connections: usize,
    /// `mqtt_max_connections_per_ip`
    pub max_connections_per_ip: usize,
}

/// Bounds of the HTTP API's listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// `http_header_read_timeout_secs`
    pub header_read_timeout_secs: u64,
    /// `http_max_connections`
    pub max_connections: usize,
    /// `http_max_connections_per_ip`
    pub max_connections_per_ip: usize,
}

impl MqttLimits {
    fn resolve(s: &Layers) -> Result<MqttLimits, ConfigError> {
        use crate::ingest::listener as l;
        use crate::ingest::router as r;
        const DAY_SECS: u64 = 24 * 3600;
        Ok(MqttLimits {
            max_packet_size_bytes: pick!(s, mqtt_max_packet_size_bytes).in_range(
                l::DEFAULT_MAX_PACKET_SIZE_BYTES,
                1024,
                256 * 1024 * 1024,
            )?,
            max_filters_per_packet: pick!(s, mqtt_max_filters_per_packet).in_range(
                l::DEFAULT_MAX_FILTERS_PER_PACKET,
                1,
                65_535,
            )?,
            max_subscriptions_per_session: pick!(s, mqtt_max_subscriptions_per_session).in_range(
                r::DEFAULT_MAX_SUBSCRIPTIONS_PER_SESSION,
                1,
                1_000_000,
            )?,
            max_saved_sessions: pick!(s, mqtt_max_saved_sessions).in_range(
                r::DEFAULT_MAX_SAVED_SESSIONS,
                0,
                100_000_000,
            )?,
            saved_session_expiry_secs: pick!(s, mqtt_saved_session_expiry_secs).in_range(
                r::DEFAULT_SAVED_SESSION_EXPIRY.as_secs(),
                1,
                365 * DAY_SECS,
            )?,
            offline_retention_secs: pick!(s, mqtt_offline_retention_secs).in_range(
                r::DEFAULT_OFFLINE_RETENTION.as_secs(),
                1,
                365 * DAY_SECS,
            )?,
            max_kept_per_session: pick!(s, mqtt_max_kept_per_session).in_range(
                crate::session_store::DEFAULT_MAX_KEPT_PER_SESSION,
                0,
                1_000_000,
            )?,
            max_waiting_calls: pick!(s, mqtt_max_waiting_calls).in_range(
                crate::ingest::rrpc::DEFAULT_MAX_WAITING_CALLS,
                0,
                1_000_000,
            )?,
            connect_timeout_secs: pick!(s, mqtt_connect_timeout_secs).in_range(
                l::DEFAULT_CONNECT_TIMEOUT.as_secs(),
                1,
                3600,
            )?,
            max_idle_secs: pick!(s, mqtt_max_idle_secs).in_range(
                l::DEFAULT_MAX_IDLE.as_secs(),
                1,
                7 * DAY_SECS,
            )?,
            max_connections: pick!(s, mqtt_max_connections).in_range(
                l::DEFAULT_MAX_CONNECTIONS,
                1,
                10_000_000,
            )?,
            max_connections_per_ip: pick!(s, mqtt_max_connections_per_ip).in_range(
                l::DEFAULT_MAX_CONNECTIONS_PER_IP,
                1,
                10_000_000,
            )?,
        })
    }
}

impl HttpLimits {
    fn resolve(s: &Layers) -> Result<HttpLimits, ConfigError> {
        Ok(HttpLimits {
            header_read_timeout_secs: pick!(s, http_header_read_timeout_secs).in_range(
                DEFAULT_HTTP_HEADER_READ_TIMEOUT_SECS,
                1,
                3600,
            )?,
            max_connections: pick!(s, http_max_connections).in_range(
                DEFAULT_HTTP_MAX_CONNECTIONS,
                1,
                10_000_000,
            )?,
            max_connections_per_ip: pick!(s, http_max_connections_per_ip).in_range(
                DEFAULT_HTTP_MAX_CONNECTIONS_PER_IP,
                1,
                10_000_000,
            )?,
        })
    }
}

/// `[[device]]`: a device registered at start when absent. Without `secret` one is generated and
/// logged once; with it, the device keeps the given secret (for fleets provisioned elsewhere).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Product key.
    pub product_key: String,
    /// Device name.
    pub device_name: String,
    /// The device secret; generated when absent.
    pub secret: Option<String>,
    /// Tags for `attribute()`.
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
}

/// The MQTT over TLS listener: address, certificate chain and key files (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttTls {
    /// Listen address.
    pub listen: SocketAddr,
    /// Certificate chain file.
    pub cert: PathBuf,
    /// Private key file.
    pub key: PathBuf,
}

/// `[[topic]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// Topic name.
    pub name: String,
}

/// `[[queue]]`: a name and the attributes given, spelled as in docs/message-service.md (the
/// same [`QueueAttributesPatch`] as the API's body and `sluice queue create`'s flags); the
/// attributes not given take their defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// Queue name.
    pub name: String,
    /// The attributes given.
    pub attributes: QueueAttributesPatch,
}

/// `name` beside the patch's keys in one table. Written out instead of `#[serde(flatten)]`,
/// which buffers the table and so loses the line and column of a bad value.
impl<'de> Deserialize<'de> for QueueConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Table;
        impl<'de> serde::de::Visitor<'de> for Table {
            type Value = QueueConfig;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a [[queue]] table with a name and queue attributes")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<QueueConfig, A::Error> {
                let mut name = None;
                let attributes = QueueAttributesPatch::deserialize(
                    serde::de::value::MapAccessDeserializer::new(TakeName {
                        inner: map,
                        name: &mut name,
                    }),
                )?;
                let name = name.ok_or_else(|| serde::de::Error::missing_field("name"))?;
                Ok(QueueConfig { name, attributes })
            }
        }
        d.deserialize_map(Table)
    }
}

/// The entries of a table less `name`, whose value it keeps aside.
struct TakeName<'a, A> {
    inner: A,
    name: &'a mut Option<String>,
}

impl<'de, A: serde::de::MapAccess<'de>> serde::de::MapAccess<'de> for TakeName<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        use serde::de::IntoDeserializer;
        loop {
            let Some(key) = self.inner.next_key::<String>()? else {
                return Ok(None);
            };
            if key != "name" {
                return seed.deserialize(key.into_deserializer()).map(Some);
            }
            if self.name.is_some() {
                return Err(serde::de::Error::duplicate_field("name"));
            }
            *self.name = Some(self.inner.next_value()?);
        }
    }

    fn next_value_seed<V: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, A::Error> {
        self.inner.next_value_seed(seed)
    }
}

/// `[[subscription]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionConfig {
    /// The topic subscribed to.
    pub topic: String,
    /// Subscription name.
    pub name: String,
    /// The queue endpoint.
    pub queue: String,
    /// Only messages with this tag.
    pub filter_tag: Option<String>,
}

/// `[[rule]]`: exactly one of `sql`, `sql_file`, `wasm_file`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Rule name.
    pub name: String,
    /// Inline SQL.
    pub sql: Option<String>,
    /// SQL file (relative to the config file).
    pub sql_file: Option<PathBuf>,
    /// Wasm module file (relative to the config file).
    pub wasm_file: Option<PathBuf>,
    /// The topic filter of a Wasm rule (SQL rules take it from FROM).
    pub from: Option<String>,
    /// `json` (default) or `binary`.
    pub data_type: Option<String>,
    /// Actions: `forward:TOPIC`, `republish:MQTT_TOPIC`.
    #[serde(default)]
    pub actions: Vec<String>,
    /// The error action.
    pub error_action: Option<String>,
    /// Grants; omitted = the actions.
    pub grant: Option<Vec<String>>,
    /// Rule timezone: `UTC` or `+08:00`.
    pub timezone: Option<String>,
}

/// Where topics, subscriptions and queues live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreBackend {
    /// The SQLite file in the data directory.
    Sqlite,
    /// A NATS JetStream cluster shared by several sluice processes.
    JetStream {
        /// `nats://HOST:PORT` of the servers to connect to.
        servers: Vec<String>,
        /// Monitoring URLs whose `/varz` is checked at start.
        monitors: Vec<String>,
        /// Start (with a warning) when the servers fall short of sluice's durability.
        accept_weaker_durability: bool,
        /// Name prefix of streams, subjects and buckets.
        prefix: String,
    },
}

/// Where devices' messages come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MqttMode {
    /// sluice's own listener.
    Listen(SocketAddr),
    /// A client of an external broker.
    External {
        /// `mqtt://host:port`.
        url: String,
        /// Stable client id.
        client_id: String,
        /// Subscribe as `$share/{group}/...`, splitting the traffic with the group's other
        /// processes.
        share_group: Option<String>,
    },
}

/// The resolved settings of one `serve` process.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Data directory.
    pub data_dir: PathBuf,
    /// HTTP API address.
    pub http_listen: SocketAddr,
    /// MQTT ingest.
    pub mqtt: MqttMode,
    /// Store durability.
    pub synchronous: Synchronous,
    /// Rule worker threads.
    pub rule_workers: usize,
    /// CPU bound of one rule call.
    pub rule_call_timeout_ms: u64,
    /// Memory cap of one rule instance.
    pub rule_max_memory_bytes: usize,
    /// Caps on what a rule writes with the `log` import.
    pub rule_log: crate::rules::rule_log::LogLimits,
    /// Node id for message ids.
    pub node_id: u16,
    /// The config file's settings, for its tables (`[[topic]]`, `[[queue]]`, ...), whose
    /// relative paths are relative to `config_dir`.
    pub objects: Settings,
    /// The config file, when one was given (named in errors about its tables).
    pub config_file: Option<PathBuf>,
    /// Directory of the config file (for relative paths).
    pub config_dir: PathBuf,
    /// Refuse pushes to loopback and private addresses.
    pub push_deny_private_networks: bool,
    /// Multiplies push retry waits (test knob, 1.0 in production).
    pub push_retry_scale: f64,
    /// The API's base URL as push endpoints reach it, without a trailing `/`; `None`: derived
    /// from the listen address at start.
    pub public_url: Option<String>,
    /// Acknowledge publishes at once with rules and storage off (`sluice bench --baseline`).
    pub ingest_only: bool,
    /// Accept anonymous MQTT clients from any address (default: loopback only).
    pub mqtt_allow_anonymous: bool,
    /// Create the example set-up in a new data directory.
    pub example_setup: bool,
    /// The MQTT over TLS listener, when configured (own listener mode only).
    pub mqtt_tls: Option<MqttTls>,
    /// HTTPS for the API: certificate chain and key files (PEM); plain HTTP when `None`.
    pub http_tls: Option<(PathBuf, PathBuf)>,
    /// Where topics, subscriptions and queues live.
    pub store: StoreBackend,
    /// Bounds of the MQTT listener.
    pub mqtt_limits: MqttLimits,
    /// Bounds of the HTTP API's listener.
    pub http_limits: HttpLimits,
    /// Caps on console sign-ins.
    pub console_sessions: crate::api::console::session::SessionLimits,
    /// Caps on live tails.
    pub console_tails: crate::api::console::tail::TailLimits,
}

impl ServeConfig {
    /// Reads `path` (if any), lays `flags` over it, fills defaults and checks values.
    pub fn load(path: Option<&Path>, flags: Settings) -> Result<ServeConfig, ConfigError> {
        let (file, config_dir) = match path {
            Some(path) => (read_file(path)?, file_dir(path)),
            None => (Settings::default(), PathBuf::from(".")),
        };
        let layers = Layers {
            flags: &flags,
            file: &file,
            path,
        };
        let s = &layers;
        for d in &file.device {
            // Checked here too (the store checks every create) so a reserved or malformed key
            // fails the start even when that device is stored already.
            crate::devices::record::validate_product_key(&d.product_key).map_err(|source| {
                ConfigError::Device {
                    path: path.map(Path::to_path_buf).unwrap_or_default(),
                    device: format!("{}/{}", d.product_key, d.device_name),
                    source,
                }
            })?;
        }
        let mqtt_limits = MqttLimits::resolve(s)?;
        let http_limits = HttpLimits::resolve(s)?;
        let data_dir = pick!(s, data_dir).or(PathBuf::from(DEFAULT_DATA_DIR));
        let mqtt = mqtt_mode(s, &data_dir)?;
        let mqtt_tls = mqtt_tls(s, &config_dir, &mqtt)?;
        let store = store_backend(s)?;
        let http_tls = http_tls(s, &config_dir)?;
        let http_listen = pick!(s, http_listen)
            .value
            .unwrap_or_else(|| DEFAULT_HTTP_LISTEN.parse().expect("valid default"));
        let rule_workers = pick!(s, rule_workers).in_range(
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            1,
            256,
        )?;
        let push_retry_scale = pick!(s, push_retry_scale);
        let scale_at = push_retry_scale.at();
        let push_retry_scale = push_retry_scale.or(1.0);
        if !(push_retry_scale > 0.0 && push_retry_scale <= 1.0) {
            return Err(ConfigError::OutOfRange {
                setting: scale_at,
                value: push_retry_scale.to_string(),
                range: "0 < push_retry_scale <= 1".into(),
            });
        }
        let public_url = public_url(s)?;
        use crate::api::console::{session, tail};
        let console_sessions = session::SessionLimits {
            per_key: pick!(s, console_max_sessions_per_key)
                .cap(session::DEFAULT_MAX_SESSIONS_PER_KEY)?,
            total: pick!(s, console_max_sessions).cap(session::DEFAULT_MAX_SESSIONS)?,
        };
        let console_tails = tail::TailLimits {
            per_key: pick!(s, console_max_tails_per_key).cap(tail::DEFAULT_MAX_TAILS_PER_KEY)?,
            total: pick!(s, console_max_tails).cap(tail::DEFAULT_MAX_TAILS)?,
        };
        let rule_log = {
            use crate::rules::rule_log::*;
            LogLimits {
                lines_per_message: pick!(s, rule_log_lines_per_message)
                    .or(DEFAULT_LOG_LINES_PER_MESSAGE),
                bytes_per_message: pick!(s, rule_log_bytes_per_message)
                    .or(DEFAULT_LOG_BYTES_PER_MESSAGE),
                bytes_per_second: pick!(s, rule_log_bytes_per_second)
                    .or(DEFAULT_LOG_BYTES_PER_SECOND),
            }
        };
        Ok(ServeConfig {
            console_sessions,
            console_tails,
            mqtt_allow_anonymous: pick!(s, mqtt_allow_anonymous).or(false),
            example_setup: pick!(s, example_setup).or(true),
            mqtt_tls,
            http_tls,
            push_deny_private_networks: pick!(s, push_deny_private_networks).or(false),
            push_retry_scale,
            public_url,
            http_listen,
            mqtt,
            synchronous: pick!(s, synchronous).or(Synchronous::default()),
            rule_workers,
            rule_call_timeout_ms: pick!(s, rule_call_timeout_ms)
                .or(DEFAULT_RULE_CALL_TIMEOUT_MS)
                .max(1),
            rule_max_memory_bytes: pick!(s, rule_max_memory_bytes)
                .or(crate::rules::runtime::DEFAULT_MAX_MEMORY_BYTES),
            rule_log,
            node_id: pick!(s, node_id)
                .value
                .unwrap_or_else(|| default_node_id(&data_dir)),
            data_dir,
            config_file: path.map(Path::to_path_buf),
            config_dir,
            ingest_only: false,
            store,
            mqtt_limits,
            http_limits,
            objects: file,
        })
    }
}

/// `public_url`, checked: an http(s) URL with a host and no query, user or fragment; the
/// trailing `/` dropped.
fn public_url(s: &Layers) -> Result<Option<String>, ConfigError> {
    let picked = pick!(s, public_url);
    let Some(text) = picked.value.clone() else {
        return Ok(None);
    };
    let ok = reqwest::Url::parse(&text).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https")
            && u.host().is_some()
            && u.query().is_none()
            && u.fragment().is_none()
            && u.username().is_empty()
            && u.password().is_none()
    });
    if !ok {
        return Err(ConfigError::Malformed {
            setting: picked.at(),
            value: text,
            expected: "an http:// or https:// URL with a host (and an optional path), no query",
        });
    }
    Ok(Some(text.trim_end_matches('/').to_string()))
}

/// Reads and parses the config file.
fn read_file(path: &Path) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text).map_err(|source| ConfigError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// The directory that the file's relative paths start from.
fn file_dir(path: &Path) -> PathBuf {
    path.parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// sluice's own listener, or a client of the broker at `mqtt_url` (with its client id and share
/// group, which only apply there).
fn mqtt_mode(s: &Layers, data_dir: &Path) -> Result<MqttMode, ConfigError> {
    let url = pick!(s, mqtt_url);
    let share_group = pick!(s, mqtt_share_group);
    let Some(url_value) = url.value.clone() else {
        if share_group.is_set() {
            return Err(ConfigError::NotApplicable {
                setting: share_group.at(),
                why: "a share group splits an external broker's traffic; give --mqtt-url (or \
                      mqtt_url) too",
            });
        }
        return Ok(MqttMode::Listen(
            pick!(s, mqtt_listen)
                .value
                .unwrap_or_else(|| DEFAULT_MQTT_LISTEN.parse().expect("valid default")),
        ));
    };
    crate::ingest::external::parse_mqtt_url(&url_value).map_err(|source| ConfigError::Refused {
        setting: url.at(),
        source,
    })?;
    if let Some(group) = &share_group.value {
        crate::ingest::external::validate_share_group(group).map_err(|source| {
            ConfigError::Refused {
                setting: share_group.at(),
                source,
            }
        })?;
    }
    Ok(MqttMode::External {
        url: url_value,
        client_id: pick!(s, mqtt_client_id)
            .value
            .unwrap_or_else(|| default_client_id(data_dir)),
        share_group: share_group.value,
    })
}

/// A file path setting: the flag's as given (relative to the working directory), else the
/// file's (relative to the config file).
fn path_setting(p: &Layered<PathBuf>, config_dir: &Path) -> Option<PathBuf> {
    let path = p.value.as_ref()?;
    Some(match p.origin {
        Origin::File(_) => config_dir.join(path),
        Origin::Flag | Origin::Default => path.clone(),
    })
}

/// The first missing one of a group of settings that go together, and one that is given; `None`
/// when all or none are given.
fn incomplete(group: &[(&'static str, bool, SettingAt)]) -> Option<(SettingAt, &'static str)> {
    let given = group.iter().find(|(_, set, _)| *set)?;
    let missing = group.iter().find(|(_, set, _)| !*set)?;
    Some((given.2.clone(), missing.0))
}

/// The TLS listener from flags and file: all three of address, certificate and key, or none; a
/// part of sluice's own listener, so not with an external broker.
fn mqtt_tls(
    s: &Layers,
    config_dir: &Path,
    mqtt: &MqttMode,
) -> Result<Option<MqttTls>, ConfigError> {
    let listen = pick!(s, mqtt_tls_listen);
    let cert = pick!(s, mqtt_tls_cert);
    let key = pick!(s, mqtt_tls_key);
    let group = [
        ("mqtt_tls_listen", listen.is_set(), listen.at()),
        ("mqtt_tls_cert", cert.is_set(), cert.at()),
        ("mqtt_tls_key", key.is_set(), key.at()),
    ];
    if let Some((given, missing)) = incomplete(&group) {
        return Err(ConfigError::Incomplete {
            given,
            missing,
            what: "the MQTT TLS listener",
            all: "mqtt_tls_listen, mqtt_tls_cert and mqtt_tls_key",
        });
    }
    if listen.is_set() && matches!(mqtt, MqttMode::External { .. }) {
        return Err(ConfigError::NotApplicable {
            setting: listen.at(),
            why: "the TLS listener is part of sluice's own listener; with --mqtt-url (an \
                  external broker) configure TLS at the broker",
        });
    }
    let (cert, key) = (
        path_setting(&cert, config_dir),
        path_setting(&key, config_dir),
    );
    Ok(match (listen.value, cert, key) {
        (Some(listen), Some(cert), Some(key)) => Some(MqttTls { listen, cert, key }),
        _ => None,
    })
}

/// HTTPS for the API from flags and file: certificate and key, or neither.
fn http_tls(s: &Layers, config_dir: &Path) -> Result<Option<(PathBuf, PathBuf)>, ConfigError> {
    let cert = pick!(s, http_tls_cert);
    let key = pick!(s, http_tls_key);
    let group = [
        ("http_tls_cert", cert.is_set(), cert.at()),
        ("http_tls_key", key.is_set(), key.at()),
    ];
    if let Some((given, missing)) = incomplete(&group) {
        return Err(ConfigError::Incomplete {
            given,
            missing,
            what: "HTTPS",
            all: "http_tls_cert and http_tls_key",
        });
    }
    Ok(path_setting(&cert, config_dir).zip(path_setting(&key, config_dir)))
}

/// The store backend from `store` and the NATS settings that go with it.
fn store_backend(s: &Layers) -> Result<StoreBackend, ConfigError> {
    let store = pick!(s, store);
    let monitor = pick!(s, nats_monitor);
    let prefix = pick!(s, nats_prefix);
    let spec = store.value.as_deref().map(str::trim);
    let servers = match spec {
        None | Some("sqlite") => {
            if let Some(nats_only) = [monitor.at(), prefix.at()]
                .into_iter()
                .find(|at| at.origin != Origin::Default)
            {
                return Err(ConfigError::NotApplicable {
                    setting: nats_only,
                    why: "a NATS setting, but `store` is sqlite; add --store nats://HOST:PORT",
                });
            }
            return Ok(StoreBackend::Sqlite);
        }
        Some(list) => nats_server_list(list).map_err(|bad| ConfigError::Malformed {
            setting: store.at(),
            value: bad,
            expected: "use sqlite or nats://HOST:PORT[,HOST:PORT...]",
        })?,
    };
    for server in &servers {
        let host_port = server.strip_prefix("nats://").unwrap_or(server);
        let port_ok = host_port
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !port_ok {
            return Err(ConfigError::Malformed {
                setting: store.at(),
                value: server.clone(),
                expected: "expected nats://HOST:PORT",
            });
        }
    }
    let monitor_at = monitor.at();
    let monitors = monitor.value.unwrap_or_else(|| {
        servers
            .iter()
            .map(|s| crate::store::jetstream::durability::default_monitor(s))
            .collect()
    });
    if let Some(bad) = monitors
        .iter()
        .find(|m| !(m.starts_with("http://") || m.starts_with("https://")))
    {
        return Err(ConfigError::Malformed {
            setting: monitor_at,
            value: bad.clone(),
            expected: "a monitoring endpoint is an http:// or https:// URL",
        });
    }
    Ok(StoreBackend::JetStream {
        servers,
        monitors,
        accept_weaker_durability: pick!(s, accept_weaker_durability).or(false),
        prefix: prefix.or("sluice".into()),
    })
}

/// Parses `sluice.toml` text; the error is one line with the TOML parser's line and column.
pub fn parse(text: &str) -> Result<Settings, SyntaxError> {
    toml::from_str(text).map_err(|e| SyntaxError {
        location: e.span().map(|span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            (line, column)
        }),
        message: e.message().trim_end().replace('\n', " "),
    })
}

/// Splits `nats://HOST:PORT[,HOST:PORT...]` into one `nats://HOST:PORT` per server. The list
/// starts with `nats://` (that is what names the backend); the servers after the first may repeat
/// the scheme or leave it out. Answers the entry at fault when one names another scheme.
fn nats_server_list(list: &str) -> Result<Vec<String>, String> {
    if !list.starts_with("nats://") {
        return Err(list.to_owned());
    }
    list.split(',')
        .map(str::trim)
        .map(|server| match server.split_once("://") {
            Some(("nats", _)) => Ok(server.to_owned()),
            Some(_) => Err(server.to_owned()),
            None => Ok(format!("nats://{server}")),
        })
        .collect()
}

/// A client id stable across restarts of the same data directory, distinct between directories.
pub fn default_client_id(data_dir: &Path) -> String {
    format!("sluice-{:08x}", path_hash(data_dir) as u32)
}

fn default_node_id(data_dir: &Path) -> u16 {
    (path_hash(data_dir) >> 32) as u16
}

fn path_hash(data_dir: &Path) -> u64 {
    let abs = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    // FNV-1a: stable across Rust versions, unlike DefaultHasher.
    abs.to_string_lossy()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let text = include_str!("../../sluice.example.toml");
        let file = parse(text).unwrap();
        assert!(!file.queue.is_empty() && !file.rule.is_empty());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors_with_a_location() {
        let err = parse("http_listen = \"127.0.0.1:0\"\n  data_dri = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("line 2, column 3: unknown field `data_dri`"),
            "{err}"
        );
        assert!(!err.contains('\n'), "one line: {err}");
        let err = parse("http_listen = \"nope\"").unwrap_err().to_string();
        assert!(
            err.contains("http_listen") || err.contains("invalid"),
            "{err}"
        );
    }

    #[test]
    fn flags_override_the_file_and_urls_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(
            &path,
            "data_dir = \"/from/file\"\nhttp_listen = \"127.0.0.1:9000\"\n",
        )
        .unwrap();
        let cfg = ServeConfig::load(
            Some(&path),
            Settings {
                data_dir: Some("/from/flag".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(cfg.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(cfg.http_listen.port(), 9000);
        let bad = Settings {
            mqtt_url: Some("http://x".into()),
            ..Default::default()
        };
        let err = ServeConfig::load(None, bad).unwrap_err().to_string();
        assert!(err.contains("mqtt_url"), "{err}");
        assert_eq!(
            default_client_id(Path::new("/a")),
            default_client_id(Path::new("/a"))
        );
        assert_ne!(
            default_client_id(Path::new("/a")),
            default_client_id(Path::new("/b"))
        );
    }

    #[test]
    fn a_share_group_needs_an_external_broker_and_a_valid_name() {
        let load = |url: Option<&str>, group: &str| {
            ServeConfig::load(
                None,
                Settings {
                    mqtt_url: url.map(str::to_owned),
                    mqtt_share_group: Some(group.to_owned()),
                    ..Default::default()
                },
            )
        };
        let cfg = load(Some("mqtt://127.0.0.1:1883"), "fleet").unwrap();
        assert!(matches!(
            cfg.mqtt,
            MqttMode::External { share_group: Some(ref g), .. } if g == "fleet"
        ));
        let err = load(None, "fleet").unwrap_err().to_string();
        assert!(err.contains("--mqtt-url"), "{err}");
        let err = load(Some("mqtt://127.0.0.1:1883"), "a/b")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mqtt_share_group") && err.contains("'/'"),
            "{err}"
        );
    }

    #[test]
    fn the_store_is_sqlite_or_a_list_of_nats_servers_with_their_monitors() {
        // Proves: --store parses into servers with default monitors (port 8222), the file's
        // settings apply, and bad values name their key.
        let load = |flags: Settings| ServeConfig::load(None, flags);
        assert_eq!(
            load(Settings::default()).unwrap().store,
            StoreBackend::Sqlite
        );
        let cfg = load(Settings {
            store: Some("nats://10.0.0.1:4222,nats://10.0.0.2:4222".into()),
            ..Default::default()
        })
        .unwrap();
        // The scheme may be given once, before the first server, as the help text shows.
        let short = load(Settings {
            store: Some("nats://10.0.0.1:4222, 10.0.0.2:4222".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(short.store, cfg.store);
        assert_eq!(
            cfg.store,
            StoreBackend::JetStream {
                servers: vec!["nats://10.0.0.1:4222".into(), "nats://10.0.0.2:4222".into()],
                monitors: vec!["http://10.0.0.1:8222".into(), "http://10.0.0.2:8222".into()],
                accept_weaker_durability: false,
                prefix: "sluice".into(),
            }
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(
            &path,
            "store = \"nats://n1:4222\"\nnats_monitor = [\"http://n1:8222\"]\n\
             accept_weaker_durability = true\nnats_prefix = \"fleet\"\n",
        )
        .unwrap();
        let cfg = ServeConfig::load(Some(&path), Settings::default()).unwrap();
        assert!(matches!(
            cfg.store,
            StoreBackend::JetStream { accept_weaker_durability: true, ref prefix, .. }
                if prefix == "fleet"
        ));
        for (flags, key) in [
            (
                Settings {
                    store: Some("redis://x:1".into()),
                    ..Default::default()
                },
                "store",
            ),
            (
                Settings {
                    store: Some("nats://a:4222,tls://b:4222".into()),
                    ..Default::default()
                },
                "store",
            ),
            (
                Settings {
                    store: Some("nats://a:4222,b".into()),
                    ..Default::default()
                },
                "store",
            ),
            (
                Settings {
                    store: Some("nats://nohost".into()),
                    ..Default::default()
                },
                "store",
            ),
            (
                Settings {
                    nats_monitor: Some(vec!["http://x:8222".into()]),
                    ..Default::default()
                },
                "store",
            ),
            (
                Settings {
                    store: Some("nats://x:4222".into()),
                    nats_monitor: Some(vec!["x:8222".into()]),
                    ..Default::default()
                },
                "nats_monitor",
            ),
        ] {
            let err = load(flags).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{err}");
        }
    }

    /// The settings as the command line parses them.
    #[derive(Debug, clap::Parser)]
    struct Flags {
        #[command(flatten)]
        settings: Settings,
    }

    fn flags(args: &[&str]) -> Result<Settings, clap::Error> {
        use clap::Parser;
        Flags::try_parse_from(std::iter::once("serve").chain(args.iter().copied()))
            .map(|f| f.settings)
    }

    #[test]
    fn every_setting_is_in_the_example_file_and_the_readme_table_and_nothing_else_is() {
        // Proves: the one definition, sluice.example.toml and the README's settings table name
        // the same settings, so none of them drifts from the others.
        let example = include_str!("../../sluice.example.toml");
        let readme = include_str!("../../README.md");
        let table: Vec<&str> = readme
            .lines()
            .skip_while(|l| !l.starts_with("| flag (and `sluice.toml` key)"))
            .take_while(|l| l.starts_with('|'))
            .skip(2)
            .collect();
        assert!(table.len() > 10, "the README's settings table is missing");
        let settings_part: Vec<&str> = example
            .lines()
            .take_while(|l| !l.starts_with("[["))
            .collect();
        let keys = Settings::keys();
        assert!(keys.len() > 40 && keys.contains(&"data_dir") && !keys.contains(&"queue"));
        for key in &keys {
            let flag = Settings::flag(key);
            assert!(
                settings_part
                    .iter()
                    .any(|l| l.trim_start_matches("# ").starts_with(&format!("{key} = "))),
                "sluice.example.toml does not show `{key}`"
            );
            assert!(
                table.iter().any(|row| row.contains(&format!("`{flag}`"))
                    && (row.contains(&format!("`{key}`")) || row.contains(&format!("`{key} =")))),
                "the README's settings table has no row with `{flag}` and `{key}`"
            );
        }
        let flags: Vec<String> = keys.iter().map(|k| Settings::flag(k)).collect();
        for row in &table {
            for quoted in row.split('`').skip(1).step_by(2) {
                if let Some(flag) = quoted
                    .strip_prefix("--")
                    .map(|f| f.split(' ').next().unwrap_or(f))
                {
                    let flag = format!("--{flag}");
                    assert!(
                        flag == "--config" || flags.contains(&flag),
                        "the README's settings table names {flag}, which is no setting"
                    );
                }
            }
        }
        for line in &settings_part {
            let line = line.trim_start_matches("# ");
            if let Some((key, _)) = line.split_once(" = ") {
                if key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                    assert!(
                        keys.contains(&key),
                        "sluice.example.toml shows `{key}`, which is no setting"
                    );
                }
            }
        }
    }

    #[test]
    fn flags_are_the_files_keys_with_switches_lists_and_the_stores_sync_levels() {
        // Proves: absent flags leave every setting unset (so the file shows through), switches
        // take an optional `=false`, lists split on commas, `--synchronous` parses the store's
        // own enum, and a bad value names the flag.
        let none = flags(&[]).unwrap();
        assert!(none.mqtt_allow_anonymous.is_none() && none.example_setup.is_none());
        assert!(none.synchronous.is_none() && none.nats_monitor.is_none());
        let s = flags(&[
            "--mqtt-allow-anonymous",
            "--push-deny-private-networks=false",
            "--no-example-setup",
            "--synchronous",
            "normal",
            "--nats-monitor",
            "http://a:8222, http://b:8222",
            "--rule-workers",
            "3",
            "--console-max-tails",
            "9",
        ])
        .unwrap();
        assert_eq!(s.mqtt_allow_anonymous, Some(true));
        assert_eq!(s.push_deny_private_networks, Some(false));
        assert_eq!(s.example_setup, Some(false));
        assert_eq!(s.synchronous, Some(Synchronous::Normal));
        assert_eq!(
            s.nats_monitor,
            Some(vec!["http://a:8222".to_owned(), "http://b:8222".to_owned()])
        );
        assert_eq!((s.rule_workers, s.console_max_tails), (Some(3), Some(9)));
        let err = flags(&["--synchronous", "fast"]).unwrap_err().to_string();
        assert!(
            err.contains("--synchronous") && err.contains("full"),
            "{err}"
        );
        let err = flags(&["--rule-workers", "many"]).unwrap_err().to_string();
        assert!(err.contains("--rule-workers"), "{err}");
        assert_eq!(Settings::flag("example_setup"), "--no-example-setup");
    }

    #[test]
    fn public_url_is_an_http_url_without_query_and_loses_its_trailing_slash() {
        let load = |url: &str| {
            ServeConfig::load(
                None,
                Settings {
                    public_url: Some(url.into()),
                    ..Default::default()
                },
            )
        };
        assert_eq!(
            load("https://sluice.example.com/api/").unwrap().public_url,
            Some("https://sluice.example.com/api".into())
        );
        assert_eq!(
            ServeConfig::load(None, Settings::default())
                .unwrap()
                .public_url,
            None
        );
        for bad in [
            "ftp://h/",
            "https://h/?a=1",
            "https://u:p@h/",
            "not a url",
            "https://h/#f",
        ] {
            let err = load(bad).unwrap_err().to_string();
            assert!(
                err.contains("--public-url") && err.contains(bad),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn a_flag_beats_the_file_which_beats_the_default_and_errors_name_where_a_value_came_from() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(
            &path,
            "rule_workers = 4\nmqtt_allow_anonymous = true\nexample_setup = false\n\
             mqtt_max_connections = 0\nsynchronous = \"normal\"\n",
        )
        .unwrap();
        let err = ServeConfig::load(Some(&path), Settings::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("`mqtt_max_connections` in {}", path.display()))
                && err.contains("0 is out of range 1..="),
            "{err}"
        );
        let cfg = ServeConfig::load(
            Some(&path),
            Settings {
                mqtt_max_connections: Some(10),
                mqtt_allow_anonymous: Some(false),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(cfg.mqtt_limits.max_connections, 10, "the flag");
        assert!(
            !cfg.mqtt_allow_anonymous,
            "the flag's false over the file's true"
        );
        assert_eq!(cfg.rule_workers, 4, "the file");
        assert!(!cfg.example_setup, "the file");
        assert_eq!(cfg.synchronous, Synchronous::Normal, "the file");
        assert_eq!(
            cfg.http_limits.max_connections, DEFAULT_HTTP_MAX_CONNECTIONS,
            "the default"
        );
        let err = ServeConfig::load(
            Some(&path),
            Settings {
                mqtt_max_connections: Some(10),
                rule_workers: Some(0),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`rule_workers` (flag --rule-workers): 0 is out of range 1..=256"),
            "{err}"
        );
        let err = ServeConfig::load(
            None,
            Settings {
                console_max_sessions: Some(0),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`console_max_sessions` (flag --console-max-sessions)"),
            "{err}"
        );
        // A bad value in the file is refused with the file, line and column.
        std::fs::write(&path, "rule_workers = 4\nhttp_listen = \"nope\"\n").unwrap();
        let err = ServeConfig::load(Some(&path), Settings::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&path.display().to_string()) && err.contains("line 2, column 15"),
            "{err}"
        );
    }

    #[test]
    fn settings_that_go_together_name_the_one_missing_and_tls_needs_the_own_listener() {
        let err = ServeConfig::load(
            None,
            Settings {
                mqtt_tls_listen: Some("127.0.0.1:8883".parse().unwrap()),
                mqtt_tls_cert: Some("c.pem".into()),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(
                "`mqtt_tls_listen` (flag --mqtt-tls-listen) is set but `mqtt_tls_key` is not"
            ),
            "{err}"
        );
        let err = ServeConfig::load(
            None,
            Settings {
                http_tls_key: Some("k.pem".into()),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`http_tls_cert` is not"), "{err}");
        let err = ServeConfig::load(
            None,
            Settings {
                mqtt_url: Some("mqtt://127.0.0.1:1883".into()),
                mqtt_tls_listen: Some("127.0.0.1:8883".parse().unwrap()),
                mqtt_tls_cert: Some("c.pem".into()),
                mqtt_tls_key: Some("k.pem".into()),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`mqtt_tls_listen`") && err.contains("--mqtt-url"),
            "{err}"
        );
        // Paths from the file are relative to it; from flags, to the working directory.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, "http_tls_cert = \"c.pem\"\n").unwrap();
        let cfg = ServeConfig::load(
            Some(&path),
            Settings {
                http_tls_key: Some("k.pem".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            cfg.http_tls,
            Some((dir.path().join("c.pem"), PathBuf::from("k.pem")))
        );
    }

    #[test]
    fn a_queue_table_is_a_name_and_the_apis_attribute_patch() {
        let s = parse(
            "[[queue]]\nname = \"q\"\nvisibility_timeout = 60\ndead_letter_queue = \"dlq\"\n\
             max_receive_count = 3\n",
        )
        .unwrap();
        assert_eq!(s.queue[0].name, "q");
        assert_eq!(
            s.queue[0].attributes,
            QueueAttributesPatch {
                visibility_timeout: Some(60),
                dead_letter_queue: Some(Some("dlq".into())),
                max_receive_count: Some(Some(3)),
                ..Default::default()
            }
        );
        let err = parse("[[queue]]\nname = \"q\"\nvisibility_timeout = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("line 3, column 22: invalid type"), "{err}");
        let err = parse("[[queue]]\nname = \"q\"\nvisiblity_timeout = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `visiblity_timeout`"), "{err}");
        let err = parse("[[queue]]\nvisibility_timeout = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `name`"), "{err}");
    }
}
