//! What a newcomer meets first: the example set-up and the ready line that names it, a way to
//! start empty, plain-text logs when stderr is not a terminal, and `rule eval` refusing to show
//! decisions for a topic the rule would never see.

use std::path::Path;
use std::process::Command;

use serde_json::json;

use crate::common::{sluice_bin, Sluice};

/// The workspace root, where `rules-examples/` lives.
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_data_directory_gets_the_example_and_the_ready_line_says_the_rule_runs() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let log = sluice.log();
    let ready = log
        .lines()
        .find(|l| l.contains("sluice ready:"))
        .unwrap_or_else(|| panic!("no ready line in the log:\n{log}"));
    assert!(
        ready.contains("rules running: overheat on /+/+/user/update")
            && ready.contains("--no-example-setup"),
        "the ready line names the running example rule and how to start without it: {ready}"
    );
    // The harness sends stderr to a file: no colour codes there.
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escape codes in a log written to a file:\n{log}"
    );
    let (status, _) = sluice.api().get("/v1/queues/alerts-q").await;
    assert_eq!(status, 200);
    sluice.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_example_setup_starts_a_new_data_directory_empty() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &["--no-example-setup"]);
    let api = sluice.api();
    for path in ["/v1/rules", "/v1/topics", "/v1/queues"] {
        let (status, list) = api.get(path).await;
        assert_eq!(status, 200, "{path}: {list}");
        let items = list
            .as_array()
            .or_else(|| {
                list.as_object()
                    .and_then(|o| o.values().find_map(|v| v.as_array()))
            })
            .unwrap_or_else(|| panic!("{path}: no list in {list}"));
        assert!(items.is_empty(), "{path} is not empty: {list}");
    }
    let log = sluice.log();
    assert!(
        log.lines()
            .any(|l| l.contains("sluice ready:") && l.contains("no rule running")),
        "{log}"
    );
    sluice.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sample_whose_topic_the_filter_does_not_match_is_reported_not_run() {
    let sql = root().join("rules-examples/sql/overheat.sql");
    let payload = r#"{"temperature": 40, "location": "lab"}"#;
    let eval = |topic: &str| {
        Command::new(sluice_bin())
            .args(["rule", "eval", "--sql"])
            .arg(&sql)
            .args(["--topic", topic, "--payload", payload])
            .output()
            .expect("run sluice rule eval")
    };
    let matched = eval("/pk/dev1/user/update");
    assert!(matched.status.success());
    assert!(String::from_utf8_lossy(&matched.stdout).contains("\"kind\":\"forward\""));

    let elsewhere = eval("/pk/dev1/user/other");
    let stderr = String::from_utf8_lossy(&elsewhere.stderr);
    assert_eq!(elsewhere.status.code(), Some(3), "{stderr}");
    assert!(
        elsewhere.stdout.is_empty(),
        "no decisions are printed: {}",
        String::from_utf8_lossy(&elsewhere.stdout)
    );
    assert!(
        stderr.contains("does not match the rule's filter /+/+/user/update"),
        "{stderr}"
    );

    // The console's live test answers the same.
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &["--no-example-setup"]);
    let (status, answer) = sluice
        .api()
        .post(
            "/v1/rules/t/test",
            &json!({
                "rule": {"sql": std::fs::read_to_string(&sql).unwrap()},
                "topic": "/pk/dev1/user/other",
                "payload": payload,
            }),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["outcome"], "topic_not_matched", "{answer}");
    assert_eq!(answer["filter"], "/+/+/user/update");
    assert_eq!(answer["decisions"], json!([]));
    sluice.stop();
}
