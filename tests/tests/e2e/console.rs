//! The web console in a real browser: Debian's `chromium` driven by npm
//! `playwright-core` (`tests/console/workflow.mjs`) against the real binary, with device
//! messages published over MQTT from here while the browser watches.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::common::mqtt::publish_qos1;
use crate::common::Sluice;

/// The browser workflow and its npm packages.
const CONSOLE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/console");

/// Where screenshots go: `target/console-screenshots/` beside the test binary's profile dir.
fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .map(|target| target.join("console-screenshots"))
        .expect("test binary lives in target/<profile>/deps")
}

/// Fails (never skips) with how to install what is missing.
fn require_browser_tools() -> PathBuf {
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        chromium.exists(),
        "{} is missing: the console test needs Debian's chromium (`apt-get install -y chromium`, \
         done by .ci/run)",
        chromium.display()
    );
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node is missing: the console test needs Node.js (`apt-get install -y nodejs npm`)"
    );
    assert!(
        Path::new(CONSOLE_DIR)
            .join("node_modules/playwright-core")
            .exists(),
        "playwright-core is not installed: run `npm ci --prefix tests/console` (done by .ci/run)"
    );
    chromium
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_runs_the_whole_forwarding_workflow_in_a_browser() {
    // Proves the console end to end: sign-in (cookie flags, CSRF refusal), create topic, queue,
    // queue subscription and a SQL rule typed into the editor, its live test (a compile error at
    // line and column, then the decision), start it; device messages published over MQTT then
    // show up in the live tail and on the queue page; every page renders (screenshots saved).
    let chromium = require_browser_tools();
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let (id, secret) = sluice.key.split_once(':').expect("ID:SECRET");
    let shots = screenshot_dir();
    let mut child = Command::new("node")
        .arg("workflow.mjs")
        .args([&sluice.http, id, secret])
        .arg(&shots)
        .current_dir(CONSOLE_DIR)
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let stderr = child.stderr.take().unwrap();
    let stderr_log = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let fail = |what: &str, child: &mut std::process::Child| -> ! {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{what}\nsluice log:\n{}", sluice.log());
    };

    // The browser has set everything up and follows the rule's output.
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(line) if line == "READY" => {}
        Ok(line) => fail(
            &format!("unexpected line from the browser: {line}"),
            &mut child,
        ),
        Err(_) => {
            let _ = child.kill();
            let log = stderr_log.join().unwrap_or_default();
            panic!(
                "the browser workflow did not reach READY:\n{log}\nsluice log:\n{}",
                sluice.log()
            );
        }
    }
    // Three device messages: two hot (forwarded), one cold (dropped by WHERE).
    for (dn, t) in [("dev1", 45), ("dev2", 12), ("dev2", 50)] {
        let report = publish_qos1(
            sluice.mqtt_port,
            &format!("console-{dn}-{t}"),
            &format!("/pk/{dn}/user/temp"),
            vec![(0, json!({"temperature": t}).to_string().into_bytes())],
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(report.acked, vec![0], "{dn} publish acked: {report:?}");
    }
    writeln!(stdin, "PUBLISHED").unwrap();
    let status = child.wait().expect("wait for node");
    let log = stderr_log.join().unwrap_or_default();
    let out: Vec<String> = rx.try_iter().collect();
    assert!(
        status.success() && out.iter().any(|l| l == "ALL OK"),
        "browser workflow failed ({status}):\n{log}\nstdout: {out:?}\nsluice log:\n{}",
        sluice.log()
    );
    // What the browser did is real: the API sees the same objects.
    let api = sluice.api();
    let (code, rule) = api.get("/v1/rules/hot-rule").await;
    assert_eq!(code, 200);
    assert_eq!(rule["state"], "running");
    assert_eq!(rule["counters"]["outputs"], 2);
    let (_, q) = api.get("/v1/queues/hot-q").await;
    assert_eq!(q["active_messages"], 2, "{q}");
    sluice.stop();
}
