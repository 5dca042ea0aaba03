//! The durability check at start: sluice acknowledges a message once JetStream has stored it,
//! which means "on disk" only when every server fsyncs each write (`sync_interval: always`)
//! and "survives a node" only with enough servers for the replicas. Each server's monitoring
//! endpoint (`/varz`) says both; sluice refuses to start when a server falls short or cannot be
//! read, unless the operator accepts weaker durability.

use std::time::Duration;

use serde::Deserialize;

/// What one server's `/varz` says about durability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerDurability {
    /// The monitoring URL it was read from.
    pub monitor: String,
    /// `jetstream.config.sync_always`: every write is fsynced before it is acknowledged.
    pub sync_always: bool,
    /// `jetstream.meta.cluster_size` (1 for a server outside a cluster).
    pub cluster_size: usize,
    /// The server's version.
    pub version: String,
}

#[derive(Deserialize)]
struct Varz {
    #[serde(default)]
    version: String,
    jetstream: Option<VarzJetStream>,
}

#[derive(Deserialize)]
struct VarzJetStream {
    config: Option<VarzConfig>,
    meta: Option<VarzMeta>,
}

#[derive(Deserialize)]
struct VarzConfig {
    #[serde(default)]
    sync_always: bool,
}

#[derive(Deserialize)]
struct VarzMeta {
    #[serde(default)]
    cluster_size: usize,
}

/// The default monitoring URL of a server address: the same host, port 8222.
pub fn default_monitor(server: &str) -> String {
    let host_port = server
        .trim()
        .trim_start_matches("nats://")
        .trim_start_matches("tls://");
    let host = match host_port.rsplit_once(':') {
        Some((h, _)) => h,
        None => host_port,
    };
    format!("http://{host}:8222")
}

/// What the monitors said: each server that answered, and every shortfall found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The servers that answered.
    pub servers: Vec<ServerDurability>,
    /// Each shortfall (or unreadable monitor) as a sentence that names the fix; empty when the
    /// cluster keeps sluice's promise.
    pub problems: Vec<String>,
}

impl Report {
    /// The replicas the cluster can hold, at most `wanted`: its smallest reported size, or 1
    /// when no server answered.
    pub fn possible_replicas(&self, wanted: usize) -> usize {
        self.servers
            .iter()
            .map(|s| s.cluster_size)
            .min()
            .unwrap_or(1)
            .clamp(1, wanted)
    }
}

/// Reads every monitor and checks it against `replicas`-way, fsync-per-write durability.
pub async fn check(monitors: &[String], replicas: usize) -> Report {
    let mut report = Report::default();
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            report
                .problems
                .push(format!("cannot build an HTTP client: {e}"));
            return report;
        }
    };
    for monitor in monitors {
        match read(&client, monitor).await {
            Ok(s) => {
                report.problems.extend(shortfalls(&s, replicas));
                report.servers.push(s);
            }
            Err(e) => report.problems.push(format!(
                "{monitor}: cannot read /varz ({e}); name the monitoring endpoints with \
                 --nats-monitor"
            )),
        }
    }
    report
}

async fn read(client: &reqwest::Client, monitor: &str) -> Result<ServerDurability, String> {
    let url = format!("{}/varz", monitor.trim_end_matches('/'));
    let varz: Varz = client
        .get(&url)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .error_for_status()
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| format!("not a NATS /varz answer: {e}"))?;
    let js = varz.jetstream;
    Ok(ServerDurability {
        monitor: monitor.to_owned(),
        sync_always: js
            .as_ref()
            .and_then(|j| j.config.as_ref())
            .is_some_and(|c| c.sync_always),
        cluster_size: js
            .as_ref()
            .and_then(|j| j.meta.as_ref())
            .map_or(1, |m| m.cluster_size.max(1)),
        version: varz.version,
    })
}

/// What one server lacks, each as a sentence that names the fix.
pub fn shortfalls(s: &ServerDurability, replicas: usize) -> Vec<String> {
    let mut out = Vec::new();
    if !s.sync_always {
        out.push(format!(
            "{} (nats-server {}): JetStream does not fsync every write; set `jetstream {{ \
             sync_interval: always }}` in its configuration",
            s.monitor, s.version
        ));
    }
    if s.cluster_size < replicas {
        out.push(format!(
            "{} (nats-server {}): its cluster has {} server(s), fewer than the {replicas} \
             replicas sluice keeps of every queue",
            s.monitor, s.version, s.cluster_size
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitors_default_to_port_8222_of_each_server() {
        // Proves: the default monitor keeps the host and swaps the port.
        assert_eq!(
            default_monitor("nats://10.0.0.5:4222"),
            "http://10.0.0.5:8222"
        );
        assert_eq!(default_monitor("127.0.0.1:14222"), "http://127.0.0.1:8222");
        assert_eq!(default_monitor("nats.local"), "http://nats.local:8222");
    }

    #[test]
    fn a_server_without_sync_always_or_enough_peers_falls_short() {
        // Proves: each shortfall is reported with its fix; a sound server reports none.
        let sound = ServerDurability {
            monitor: "http://a:8222".into(),
            sync_always: true,
            cluster_size: 3,
            version: "2.15.1".into(),
        };
        assert!(shortfalls(&sound, 3).is_empty());
        let lazy = ServerDurability {
            sync_always: false,
            cluster_size: 1,
            ..sound
        };
        let found = shortfalls(&lazy, 3);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].contains("sync_interval: always"), "{found:?}");
        assert!(found[1].contains("fewer than the 3 replicas"), "{found:?}");
    }
}
