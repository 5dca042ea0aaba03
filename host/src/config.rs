//! `sluice serve` settings: built-in defaults, then `sluice.toml` (`--config`), then flags.
//! Keys are snake_case with units in their names; unknown keys are errors, so a typo never
//! silently falls back to a default. The `[[topic]]`, `[[queue]]`, `[[subscription]]` and
//! `[[rule]]` tables are created at start when absent, and never overwritten or deleted.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where `serve` keeps its data by default: beside where it is started, easy to find and delete.
pub const DEFAULT_DATA_DIR: &str = "./sluice-data";
/// The HTTP API: loopback only by default, nothing is exposed until the operator says so.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8080";
/// MQTT's registered port, loopback only by default.
pub const DEFAULT_MQTT_LISTEN: &str = "127.0.0.1:1883";

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for sluice.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What and where (line and column, from the TOML parser).
        message: String,
    },
    /// A value is out of range or malformed.
    #[error("config `{key}`: {message}")]
    Invalid {
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Store durability: FULL survives power loss, NORMAL survives a process crash only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncLevel {
    /// `PRAGMA synchronous=FULL` (default: nothing acknowledged is lost on power loss).
    #[default]
    Full,
    /// `PRAGMA synchronous=NORMAL`.
    Normal,
}

/// The file format of `sluice.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// HTTP API address.
    pub http_listen: Option<SocketAddr>,
    /// Embedded MQTT listener address.
    pub mqtt_listen: Option<SocketAddr>,
    /// External broker (`mqtt://host:port`); replaces the embedded listener.
    pub mqtt_url: Option<String>,
    /// Client id toward the external broker.
    pub mqtt_client_id: Option<String>,
    /// Shared-subscription group toward the external broker.
    pub mqtt_share_group: Option<String>,
    /// Store durability.
    pub synchronous: Option<SyncLevel>,
    /// Rule worker threads (default: one per core).
    pub rule_workers: Option<usize>,
    /// CPU budget of one rule call, in milliseconds of CPU work (metered as Wasm fuel, so a
    /// busy machine does not fail honest rules; wall time is bounded at 20x as a backstop).
    pub rule_call_timeout_ms: Option<u64>,
    /// Memory cap of one rule instance (its linear memory and table together).
    pub rule_max_memory_bytes: Option<usize>,
    /// Most lines one message may write to a rule's log; the rest are dropped and counted.
    pub rule_log_lines_per_message: Option<u32>,
    /// Most bytes one message may write to a rule's log, all lines together.
    pub rule_log_bytes_per_message: Option<usize>,
    /// Most bytes one rule may write to its log per second, on all workers together.
    pub rule_log_bytes_per_second: Option<u64>,
    /// Node id stamped into message ids (distinct per process sharing a store).
    pub node_id: Option<u16>,
    /// Refuse pushes to loopback, private, shared (CGNAT), unique-local, documentation and
    /// reserved addresses too (cloud metadata, link-local, unspecified, multicast and broadcast
    /// addresses are always refused, in every IPv4 and IPv6 spelling).
    pub push_deny_private_networks: Option<bool>,
    /// Test knob: multiplies every push retry wait (0 < x <= 1; default 1). E.g. 0.01 runs
    /// BACKOFF_RETRY's 10-20 s waits in 100-200 ms. Never set it in production.
    pub push_retry_scale: Option<f64>,
    /// Topics to create at start.
    #[serde(default)]
    pub topic: Vec<TopicConfig>,
    /// Queues to create at start.
    #[serde(default)]
    pub queue: Vec<QueueConfig>,
    /// Subscriptions to create at start.
    #[serde(default)]
    pub subscription: Vec<SubscriptionConfig>,
    /// Rules to create (running) at start.
    #[serde(default)]
    pub rule: Vec<RuleConfig>,
    /// Accept anonymous MQTT clients from any address, not only loopback.
    pub mqtt_allow_anonymous: Option<bool>,
    /// Give a new data directory the example set-up (default true): topic `alerts`, queue
    /// `alerts-q`, subscription `alerts-to-q` and the running rule `overheat`.
    pub example_setup: Option<bool>,
    /// The MQTT over TLS listener address (devices' SDKs default to port 8883).
    pub mqtt_tls_listen: Option<SocketAddr>,
    /// PEM certificate chain of the TLS listener (relative to the config file).
    pub mqtt_tls_cert: Option<PathBuf>,
    /// PEM private key of the TLS listener (relative to the config file).
    pub mqtt_tls_key: Option<PathBuf>,
    /// PEM certificate chain for HTTPS on the API port (relative to the config file).
    pub http_tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS on the API port (relative to the config file).
    pub http_tls_key: Option<PathBuf>,
    /// Devices to register at start (their secrets are printed to the log once).
    #[serde(default)]
    pub device: Vec<DeviceConfig>,
    /// Where topics and queues live: `sqlite` (default) or `nats://HOST:PORT[,HOST:PORT...]`.
    pub store: Option<String>,
    /// Monitoring endpoints of the NATS servers (default: port 8222 of each store server).
    pub nats_monitor: Option<Vec<String>>,
    /// Start even when the NATS servers do not fsync every write or are fewer than 3.
    pub accept_weaker_durability: Option<bool>,
    /// Prefix of sluice's streams, subjects and buckets on the NATS cluster (default `sluice`).
    pub nats_prefix: Option<String>,
    /// Largest MQTT packet body (remaining length) accepted, in bytes.
    pub mqtt_max_packet_size_bytes: Option<usize>,
    /// Most topic filters in one SUBSCRIBE or UNSUBSCRIBE (more closes the connection).
    pub mqtt_max_filters_per_packet: Option<usize>,
    /// Most subscriptions one MQTT session holds (more get SUBACK failure codes).
    pub mqtt_max_subscriptions_per_session: Option<usize>,
    /// Most saved persistent MQTT sessions (clean session off); the oldest go first.
    pub mqtt_max_saved_sessions: Option<usize>,
    /// How long a saved persistent MQTT session is kept after its connection closed.
    pub mqtt_saved_session_expiry_secs: Option<u64>,
    /// Time a new MQTT connection has for its TLS handshake and CONNECT.
    pub mqtt_connect_timeout_secs: Option<u64>,
    /// Longest silence of an MQTT session without keep-alive (keep-alive 0).
    pub mqtt_max_idle_secs: Option<u64>,
    /// Most MQTT connections open at once (plain and TLS together).
    pub mqtt_max_connections: Option<usize>,
    /// Most MQTT connections open at once from one address.
    pub mqtt_max_connections_per_ip: Option<usize>,
    /// Time an HTTP client has to send a request's headers (also the idle time of a kept-alive
    /// connection between requests).
    pub http_header_read_timeout_secs: Option<u64>,
    /// Most HTTP connections open at once (HTTP or HTTPS).
    pub http_max_connections: Option<usize>,
    /// Most HTTP connections open at once from one address.
    pub http_max_connections_per_ip: Option<usize>,
    /// Console sessions signed in at once with one access key (default 100).
    pub console_max_sessions_per_key: Option<usize>,
    /// Console sessions signed in at once in all (default 10,000).
    pub console_max_sessions: Option<usize>,
    /// Live tails (server-sent event streams) open at once with one access key (default 16).
    pub console_max_tails_per_key: Option<usize>,
    /// Live tails open at once in all (default 256).
    pub console_max_tails: Option<usize>,
}

/// Bounds of the MQTT listener that a stranger can reach, resolved from the file (see
/// `docs/security.md`).
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
    /// `mqtt_connect_timeout_secs`
    pub connect_timeout_secs: u64,
    /// `mqtt_max_idle_secs`
    pub max_idle_secs: u64,
    /// `mqtt_max_connections`
    pub max_connections: usize,
    /// `mqtt_max_connections_per_ip`
    pub max_connections_per_ip: usize,
}

/// Bounds of the HTTP API's listener, resolved from the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// `http_header_read_timeout_secs`
    pub header_read_timeout_secs: u64,
    /// `http_max_connections`
    pub max_connections: usize,
    /// `http_max_connections_per_ip`
    pub max_connections_per_ip: usize,
}

/// Default time an HTTP client has to send a request's headers: generous for slow links, short
/// enough that half-sent requests do not pile up.
pub const DEFAULT_HTTP_HEADER_READ_TIMEOUT_SECS: u64 = 30;
/// Default most HTTP connections open at once.
pub const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 10_000;
/// Default most HTTP connections from one address: `sluice bench` runs 384 consumers from one
/// address, an application server behind a proxy a few hundred.
pub const DEFAULT_HTTP_MAX_CONNECTIONS_PER_IP: usize = 2_000;

/// A limit from the file or its default, refused below `min` (and above `max`).
fn limit<T>(key: &str, value: Option<T>, default: T, min: T, max: T) -> Result<T, ConfigError>
where
    T: PartialOrd + Copy + std::fmt::Display,
{
    let v = value.unwrap_or(default);
    if v < min || v > max {
        return Err(ConfigError::Invalid {
            key: key.into(),
            message: format!("{v} is out of range {min}..={max}"),
        });
    }
    Ok(v)
}

impl MqttLimits {
    fn from_file(f: &FileConfig) -> Result<MqttLimits, ConfigError> {
        use crate::ingest::listener as l;
        use crate::ingest::router as r;
        const DAY_SECS: u64 = 24 * 3600;
        Ok(MqttLimits {
            max_packet_size_bytes: limit(
                "mqtt_max_packet_size_bytes",
                f.mqtt_max_packet_size_bytes,
                l::DEFAULT_MAX_PACKET_SIZE_BYTES,
                1024,
                256 * 1024 * 1024,
            )?,
            max_filters_per_packet: limit(
                "mqtt_max_filters_per_packet",
                f.mqtt_max_filters_per_packet,
                l::DEFAULT_MAX_FILTERS_PER_PACKET,
                1,
                65_535,
            )?,
            max_subscriptions_per_session: limit(
                "mqtt_max_subscriptions_per_session",
                f.mqtt_max_subscriptions_per_session,
                r::DEFAULT_MAX_SUBSCRIPTIONS_PER_SESSION,
                1,
                1_000_000,
            )?,
            max_saved_sessions: limit(
                "mqtt_max_saved_sessions",
                f.mqtt_max_saved_sessions,
                r::DEFAULT_MAX_SAVED_SESSIONS,
                0,
                100_000_000,
            )?,
            saved_session_expiry_secs: limit(
                "mqtt_saved_session_expiry_secs",
                f.mqtt_saved_session_expiry_secs,
                r::DEFAULT_SAVED_SESSION_EXPIRY.as_secs(),
                1,
                365 * DAY_SECS,
            )?,
            connect_timeout_secs: limit(
                "mqtt_connect_timeout_secs",
                f.mqtt_connect_timeout_secs,
                l::DEFAULT_CONNECT_TIMEOUT.as_secs(),
                1,
                3600,
            )?,
            max_idle_secs: limit(
                "mqtt_max_idle_secs",
                f.mqtt_max_idle_secs,
                l::DEFAULT_MAX_IDLE.as_secs(),
                1,
                7 * DAY_SECS,
            )?,
            max_connections: limit(
                "mqtt_max_connections",
                f.mqtt_max_connections,
                l::DEFAULT_MAX_CONNECTIONS,
                1,
                10_000_000,
            )?,
            max_connections_per_ip: limit(
                "mqtt_max_connections_per_ip",
                f.mqtt_max_connections_per_ip,
                l::DEFAULT_MAX_CONNECTIONS_PER_IP,
                1,
                10_000_000,
            )?,
        })
    }
}

impl HttpLimits {
    fn from_file(f: &FileConfig) -> Result<HttpLimits, ConfigError> {
        Ok(HttpLimits {
            header_read_timeout_secs: limit(
                "http_header_read_timeout_secs",
                f.http_header_read_timeout_secs,
                DEFAULT_HTTP_HEADER_READ_TIMEOUT_SECS,
                1,
                3600,
            )?,
            max_connections: limit(
                "http_max_connections",
                f.http_max_connections,
                DEFAULT_HTTP_MAX_CONNECTIONS,
                1,
                10_000_000,
            )?,
            max_connections_per_ip: limit(
                "http_max_connections_per_ip",
                f.http_max_connections_per_ip,
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

/// `[[queue]]`: attributes spelled as in docs/message-service.md.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Queue name.
    pub name: String,
    /// Seconds before a new message becomes visible.
    pub delay_seconds: Option<u32>,
    /// Largest body, in bytes.
    pub maximum_message_size: Option<u32>,
    /// Seconds a message is kept.
    pub message_retention_period: Option<u32>,
    /// Seconds a received message stays invisible.
    pub visibility_timeout: Option<u32>,
    /// Default long-poll wait, in seconds.
    pub polling_wait_seconds: Option<u32>,
    /// Dead-letter queue name.
    pub dead_letter_queue: Option<String>,
    /// Receives before a message moves to the dead-letter queue.
    pub max_receive_count: Option<u32>,
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

/// Settings given on the command line; each one overrides the file.
#[derive(Debug, Clone, Default)]
pub struct FlagOverrides {
    /// `--data-dir`
    pub data_dir: Option<PathBuf>,
    /// `--http-listen`
    pub http_listen: Option<SocketAddr>,
    /// `--mqtt-listen`
    pub mqtt_listen: Option<SocketAddr>,
    /// `--mqtt-url`
    pub mqtt_url: Option<String>,
    /// `--mqtt-client-id`
    pub mqtt_client_id: Option<String>,
    /// `--mqtt-share-group`
    pub mqtt_share_group: Option<String>,
    /// `--synchronous`
    pub synchronous: Option<SyncLevel>,
    /// `--node-id`
    pub node_id: Option<u16>,
    /// `--push-deny-private-networks`
    pub push_deny_private_networks: Option<bool>,
    /// `--ingest-only` (the bench baseline).
    pub ingest_only: bool,
    /// `--mqtt-allow-anonymous`
    pub mqtt_allow_anonymous: bool,
    /// `--no-example-setup`
    pub no_example_setup: bool,
    /// `--mqtt-tls-listen`
    pub mqtt_tls_listen: Option<SocketAddr>,
    /// `--mqtt-tls-cert`
    pub mqtt_tls_cert: Option<PathBuf>,
    /// `--mqtt-tls-key`
    pub mqtt_tls_key: Option<PathBuf>,
    /// `--http-tls-cert`
    pub http_tls_cert: Option<PathBuf>,
    /// `--http-tls-key`
    pub http_tls_key: Option<PathBuf>,
    /// `--store`
    pub store: Option<String>,
    /// `--nats-monitor` (comma-separated URLs)
    pub nats_monitor: Option<String>,
    /// `--accept-weaker-durability`
    pub accept_weaker_durability: bool,
    /// `--nats-prefix`
    pub nats_prefix: Option<String>,
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
    pub synchronous: SyncLevel,
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
    /// The file's tables, with relative paths resolved.
    pub objects: FileConfig,
    /// Directory of the config file (for relative paths).
    pub config_dir: PathBuf,
    /// Refuse pushes to loopback and private addresses.
    pub push_deny_private_networks: bool,
    /// Multiplies push retry waits (test knob, 1.0 in production).
    pub push_retry_scale: f64,
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
    /// Reads `path` (if any), applies `flags`, fills defaults and checks values.
    pub fn load(path: Option<&Path>, flags: FlagOverrides) -> Result<ServeConfig, ConfigError> {
        let (file, config_dir) = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                let file = parse(&text).map_err(|message| ConfigError::Parse {
                    path: path.to_path_buf(),
                    message,
                })?;
                let dir = path
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| PathBuf::from("."));
                (file, dir)
            }
            None => (FileConfig::default(), PathBuf::from(".")),
        };
        for d in &file.device {
            // Checked here too (the store checks every create) so a reserved or malformed key
            // fails the start even when that device is stored already.
            crate::devices::record::validate_product_key(&d.product_key).map_err(|e| {
                ConfigError::Invalid {
                    key: "device.product_key".into(),
                    message: format!("[[device]] `{}`: {e}", d.device_name),
                }
            })?;
        }
        let mqtt_limits = MqttLimits::from_file(&file)?;
        let http_limits = HttpLimits::from_file(&file)?;
        let mqtt_tls = mqtt_tls(&flags, &file, &config_dir)?;
        let store = store_backend(&flags, &file)?;
        let http_tls = http_tls(&flags, &file, &config_dir)?;
        let data_dir = flags
            .data_dir
            .or(file.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let http_listen = flags
            .http_listen
            .or(file.http_listen)
            .unwrap_or_else(|| DEFAULT_HTTP_LISTEN.parse().expect("valid default"));
        let mqtt_url = flags.mqtt_url.or(file.mqtt_url.clone());
        let mqtt = match mqtt_url {
            Some(url) => {
                crate::ingest::external::parse_mqtt_url(&url).map_err(|e| {
                    ConfigError::Invalid {
                        key: "mqtt_url".into(),
                        message: e.to_string(),
                    }
                })?;
                let client_id = flags
                    .mqtt_client_id
                    .or(file.mqtt_client_id.clone())
                    .unwrap_or_else(|| default_client_id(&data_dir));
                let share_group = flags.mqtt_share_group.or(file.mqtt_share_group.clone());
                if let Some(group) = &share_group {
                    crate::ingest::external::validate_share_group(group).map_err(|e| {
                        ConfigError::Invalid {
                            key: "mqtt_share_group".into(),
                            message: e.to_string(),
                        }
                    })?;
                }
                MqttMode::External {
                    url,
                    client_id,
                    share_group,
                }
            }
            None if flags.mqtt_share_group.is_some() || file.mqtt_share_group.is_some() => {
                return Err(ConfigError::Invalid {
                    key: "mqtt_share_group".into(),
                    message: "a share group splits an external broker's traffic; \
                              give --mqtt-url (or mqtt_url) too"
                        .into(),
                });
            }
            None => MqttMode::Listen(
                flags
                    .mqtt_listen
                    .or(file.mqtt_listen)
                    .unwrap_or_else(|| DEFAULT_MQTT_LISTEN.parse().expect("valid default")),
            ),
        };
        let rule_workers = file.rule_workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        });
        if rule_workers == 0 || rule_workers > 256 {
            return Err(ConfigError::Invalid {
                key: "rule_workers".into(),
                message: format!("{rule_workers} is out of range 1..=256"),
            });
        }
        let push_retry_scale = file.push_retry_scale.unwrap_or(1.0);
        if !(push_retry_scale > 0.0 && push_retry_scale <= 1.0) {
            return Err(ConfigError::Invalid {
                key: "push_retry_scale".into(),
                message: format!("{push_retry_scale} is out of range: 0 < push_retry_scale <= 1"),
            });
        }
        let cap = |key: &str, v: Option<usize>, default: usize| match v {
            Some(0) => Err(ConfigError::Invalid {
                key: key.into(),
                message: "0 would refuse every one; give at least 1".into(),
            }),
            v => Ok(v.unwrap_or(default)),
        };
        let console_sessions = crate::api::console::session::SessionLimits {
            per_key: cap(
                "console_max_sessions_per_key",
                file.console_max_sessions_per_key,
                crate::api::console::session::DEFAULT_MAX_SESSIONS_PER_KEY,
            )?,
            total: cap(
                "console_max_sessions",
                file.console_max_sessions,
                crate::api::console::session::DEFAULT_MAX_SESSIONS,
            )?,
        };
        let console_tails = crate::api::console::tail::TailLimits {
            per_key: cap(
                "console_max_tails_per_key",
                file.console_max_tails_per_key,
                crate::api::console::tail::DEFAULT_MAX_TAILS_PER_KEY,
            )?,
            total: cap(
                "console_max_tails",
                file.console_max_tails,
                crate::api::console::tail::DEFAULT_MAX_TAILS,
            )?,
        };
        Ok(ServeConfig {
            console_sessions,
            console_tails,
            mqtt_allow_anonymous: flags.mqtt_allow_anonymous
                || file.mqtt_allow_anonymous.unwrap_or(false),
            example_setup: !flags.no_example_setup && file.example_setup.unwrap_or(true),
            mqtt_tls,
            http_tls,
            push_deny_private_networks: flags
                .push_deny_private_networks
                .or(file.push_deny_private_networks)
                .unwrap_or(false),
            push_retry_scale,
            http_listen,
            mqtt,
            synchronous: flags.synchronous.or(file.synchronous).unwrap_or_default(),
            rule_workers,
            rule_call_timeout_ms: file.rule_call_timeout_ms.unwrap_or(100).max(1),
            rule_max_memory_bytes: file
                .rule_max_memory_bytes
                .unwrap_or(crate::rules::runtime::DEFAULT_MAX_MEMORY_BYTES),
            rule_log: {
                use crate::rules::rule_log::*;
                LogLimits {
                    lines_per_message: file
                        .rule_log_lines_per_message
                        .unwrap_or(DEFAULT_LOG_LINES_PER_MESSAGE),
                    bytes_per_message: file
                        .rule_log_bytes_per_message
                        .unwrap_or(DEFAULT_LOG_BYTES_PER_MESSAGE),
                    bytes_per_second: file
                        .rule_log_bytes_per_second
                        .unwrap_or(DEFAULT_LOG_BYTES_PER_SECOND),
                }
            },
            node_id: flags
                .node_id
                .or(file.node_id)
                .unwrap_or_else(|| default_node_id(&data_dir)),
            data_dir,
            objects: file,
            config_dir,
            ingest_only: flags.ingest_only,
            store,
            mqtt_limits,
            http_limits,
        })
    }
}

/// The TLS listener from flags and file: all three of address, certificate and key, or none.
/// Paths from the file are relative to it; paths from flags to the working directory.
fn mqtt_tls(
    flags: &FlagOverrides,
    file: &FileConfig,
    config_dir: &Path,
) -> Result<Option<MqttTls>, ConfigError> {
    let listen = flags.mqtt_tls_listen.or(file.mqtt_tls_listen);
    let cert = path_setting(&flags.mqtt_tls_cert, &file.mqtt_tls_cert, config_dir);
    let key = path_setting(&flags.mqtt_tls_key, &file.mqtt_tls_key, config_dir);
    match (listen, cert, key) {
        (None, None, None) => Ok(None),
        (Some(listen), Some(cert), Some(key)) => Ok(Some(MqttTls { listen, cert, key })),
        (listen, cert, _) => {
            let missing = if listen.is_none() {
                "mqtt_tls_listen"
            } else if cert.is_none() {
                "mqtt_tls_cert"
            } else {
                "mqtt_tls_key"
            };
            Err(ConfigError::Invalid {
                key: missing.into(),
                message: "the MQTT TLS listener needs all of --mqtt-tls-listen, --mqtt-tls-cert \
                          and --mqtt-tls-key"
                    .into(),
            })
        }
    }
}

/// A file path setting: the flag as given (relative to the working directory), else the file's
/// (relative to the config file).
fn path_setting(
    flag: &Option<PathBuf>,
    file: &Option<PathBuf>,
    config_dir: &Path,
) -> Option<PathBuf> {
    flag.clone()
        .or_else(|| file.as_ref().map(|p| config_dir.join(p)))
}

/// HTTPS for the API from flags and file: certificate and key, or neither.
fn http_tls(
    flags: &FlagOverrides,
    file: &FileConfig,
    config_dir: &Path,
) -> Result<Option<(PathBuf, PathBuf)>, ConfigError> {
    let cert = path_setting(&flags.http_tls_cert, &file.http_tls_cert, config_dir);
    let key = path_setting(&flags.http_tls_key, &file.http_tls_key, config_dir);
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => Ok(Some((cert, key))),
        (cert, _) => Err(ConfigError::Invalid {
            key: if cert.is_none() {
                "http_tls_cert"
            } else {
                "http_tls_key"
            }
            .into(),
            message: "HTTPS needs both --http-tls-cert and --http-tls-key".into(),
        }),
    }
}

/// The store backend from `--store` / `store` and the NATS settings that go with it.
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

fn store_backend(flags: &FlagOverrides, file: &FileConfig) -> Result<StoreBackend, ConfigError> {
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        key: key.into(),
        message,
    };
    let spec = flags.store.clone().or(file.store.clone());
    let servers = match spec.as_deref().map(str::trim) {
        None | Some("sqlite") => {
            let nats_only = flags.nats_monitor.is_some()
                || file.nats_monitor.is_some()
                || flags.nats_prefix.is_some()
                || file.nats_prefix.is_some();
            if nats_only {
                return Err(invalid(
                    "store",
                    "NATS settings are given but the store is SQLite; add --store \
                     nats://HOST:PORT"
                        .into(),
                ));
            }
            return Ok(StoreBackend::Sqlite);
        }
        Some(list) => nats_server_list(list).map_err(|bad| {
            invalid(
                "store",
                format!("`{bad}`: use sqlite or nats://HOST:PORT[,HOST:PORT...]"),
            )
        })?,
    };
    for server in &servers {
        let host_port = server.strip_prefix("nats://").unwrap_or(server);
        let port_ok = host_port
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !port_ok {
            return Err(invalid(
                "store",
                format!("`{server}`: expected nats://HOST:PORT"),
            ));
        }
    }
    let monitors = match (&flags.nats_monitor, &file.nats_monitor) {
        (Some(list), _) => list.split(',').map(|s| s.trim().to_owned()).collect(),
        (None, Some(list)) => list.clone(),
        (None, None) => servers
            .iter()
            .map(|s| crate::store::jetstream::durability::default_monitor(s))
            .collect(),
    };
    if let Some(bad) = monitors
        .iter()
        .find(|m| !(m.starts_with("http://") || m.starts_with("https://")))
    {
        return Err(invalid(
            "nats_monitor",
            format!("`{bad}`: a monitoring endpoint is an http:// or https:// URL"),
        ));
    }
    let prefix = flags
        .nats_prefix
        .clone()
        .or(file.nats_prefix.clone())
        .unwrap_or_else(|| "sluice".into());
    Ok(StoreBackend::JetStream {
        servers,
        monitors,
        accept_weaker_durability: flags.accept_weaker_durability
            || file.accept_weaker_durability.unwrap_or(false),
        prefix,
    })
}

/// Parses `sluice.toml` text; the error is one line with the TOML parser's line and column
/// (its own rendering quotes the source over several lines, which does not fit a log line).
pub fn parse(text: &str) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|e| {
        let message = e.message().trim_end().replace('\n', " ");
        match e.span() {
            Some(span) => {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!("line {line}, column {column}: {message}")
            }
            None => message,
        }
    })
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
        let err = parse("http_listen = \"127.0.0.1:0\"\n  data_dri = \"x\"\n").unwrap_err();
        assert!(
            err.starts_with("line 2, column 3: unknown field `data_dri`"),
            "{err}"
        );
        assert!(!err.contains('\n'), "one line: {err}");
        let err = parse("http_listen = \"nope\"").unwrap_err();
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
            FlagOverrides {
                data_dir: Some("/from/flag".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(cfg.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(cfg.http_listen.port(), 9000);
        let bad = FlagOverrides {
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
                FlagOverrides {
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
        let load = |flags: FlagOverrides| ServeConfig::load(None, flags);
        assert_eq!(
            load(FlagOverrides::default()).unwrap().store,
            StoreBackend::Sqlite
        );
        let cfg = load(FlagOverrides {
            store: Some("nats://10.0.0.1:4222,nats://10.0.0.2:4222".into()),
            ..Default::default()
        })
        .unwrap();
        // The scheme may be given once, before the first server, as the help text shows.
        let short = load(FlagOverrides {
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
        let cfg = ServeConfig::load(Some(&path), FlagOverrides::default()).unwrap();
        assert!(matches!(
            cfg.store,
            StoreBackend::JetStream { accept_weaker_durability: true, ref prefix, .. }
                if prefix == "fleet"
        ));
        for (flags, key) in [
            (
                FlagOverrides {
                    store: Some("redis://x:1".into()),
                    ..Default::default()
                },
                "store",
            ),
            (
                FlagOverrides {
                    store: Some("nats://a:4222,tls://b:4222".into()),
                    ..Default::default()
                },
                "store",
            ),
            (
                FlagOverrides {
                    store: Some("nats://a:4222,b".into()),
                    ..Default::default()
                },
                "store",
            ),
            (
                FlagOverrides {
                    store: Some("nats://nohost".into()),
                    ..Default::default()
                },
                "store",
            ),
            (
                FlagOverrides {
                    nats_monitor: Some("http://x:8222".into()),
                    ..Default::default()
                },
                "store",
            ),
            (
                FlagOverrides {
                    store: Some("nats://x:4222".into()),
                    nats_monitor: Some("x:8222".into()),
                    ..Default::default()
                },
                "nats_monitor",
            ),
        ] {
            let err = load(flags).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{err}");
        }
    }
}
