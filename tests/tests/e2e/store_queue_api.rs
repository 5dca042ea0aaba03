//! Every queue operation of docs/message-service.md over `/v1/` on the real binary: batch
//! send with per-message delay and priority, batch receive, peek, batch delete with one result
//! per handle, change visibility, set attributes, delete twice, stale handles, dead letters at
//! `max_receive_count` = 3, topic batch publish with tags — and the CLI verbs on top.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::Sluice;
use crate::store_util::Http;

fn bodies(v: &Value) -> Vec<String> {
    v["messages"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| m["body"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_send_receive_delete_visibility_priority_delay_and_peek_follow_the_spec() {
    // Proves the queue operations answer as docs/message-service.md says, over HTTP on the real
    // binary.
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let h = Http::new(&sluice.http);

    let a = h
        .json(
            "PUT",
            "/v1/queues/work-q",
            &json!({"visibility_timeout": 30}),
        )
        .await;
    assert_eq!(a.status, 201, "create: {}", a.json);
    let a = h
        .json(
            "PUT",
            "/v1/queues/work-q",
            &json!({"visibility_timeout": 30}),
        )
        .await;
    assert_eq!(a.status, 200, "create again, same attributes: {}", a.json);
    let a = h
        .json(
            "PUT",
            "/v1/queues/work-q",
            &json!({"visibility_timeout": 31}),
        )
        .await;
    a.assert_error(
        "create again, other attributes",
        409,
        "QueueAlreadyExist",
        None,
    );

    // Batch send: priority orders delivery (1 first), equal priority oldest first; a delayed
    // message is not visible yet.
    let msgs = json!({"messages": [
        {"body": "low-1", "priority": 12},
        {"body": "high-1", "priority": 1, "tag": "urgent", "attributes": {"k": "v"}},
        {"body": "mid-1"},
        {"body": "delayed", "delay_seconds": 600, "priority": 1},
        {"body_base64": "AP8A", "priority": 12},
        {"body": "mid-2"},
    ]});
    let a = h.json("POST", "/v1/queues/work-q/messages", &msgs).await;
    assert_eq!(a.status, 201, "batch send: {}", a.json);
    let sent = a.json["messages"].as_array().cloned().unwrap_or_default();
    println!("batch send answered {} receipts", sent.len());
    assert_eq!(sent.len(), 6);
    assert!(sent
        .iter()
        .all(|s| s["id"].as_str().is_some_and(|i| i.len() == 32)));
    assert!(
        sent[3]["next_visible_time_ms"].as_u64().unwrap()
            >= sent[3]["enqueue_time_ms"].as_u64().unwrap() + 600_000
    );
    let q = h.queue("work-q").await;
    println!(
        "after send: active {} delayed {}",
        q["active_messages"], q["delayed_messages"]
    );
    assert_eq!(
        (
            q["active_messages"].as_u64(),
            q["delayed_messages"].as_u64()
        ),
        (Some(5), Some(1))
    );

    // Peek changes nothing and has no handle.
    let a = h.get("/v1/queues/work-q/messages?peek=true&max=16").await;
    assert_eq!(a.status, 200, "{}", a.json);
    let peeked = bodies(&a.json);
    println!("peek order: {peeked:?}");
    assert_eq!(peeked[..4], ["high-1", "mid-1", "mid-2", "low-1"]);
    assert!(a.json["messages"][0]["receipt_handle"].is_null());
    assert_eq!(a.json["messages"][0]["dequeue_count"], 0);
    assert_eq!(a.json["messages"][0]["tag"], "urgent");
    assert_eq!(a.json["messages"][0]["attributes"]["k"], "v");
    assert_eq!(a.json["messages"][4]["body_base64"], "AP8A");

    // Batch receive in delivery order.
    let a = h.get("/v1/queues/work-q/messages?max=3").await;
    assert_eq!(a.status, 200);
    assert_eq!(bodies(&a.json), ["high-1", "mid-1", "mid-2"]);
    let received = a.json["messages"].as_array().cloned().unwrap();
    assert!(received.iter().all(|m| m["dequeue_count"] == 1));
    let handles: Vec<String> = received
        .iter()
        .map(|m| m["receipt_handle"].as_str().unwrap().to_string())
        .collect();
    assert!(handles.iter().all(|r| r
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')));

    // Change visibility: a new handle; the old one is stale; the new one deletes.
    let a = h
        .json(
            "PUT",
            &format!("/v1/queues/work-q/messages/{}", handles[2]),
            &json!({"visibility_timeout": 1}),
        )
        .await;
    assert_eq!(a.status, 200, "change visibility: {}", a.json);
    let new_handle = a.json["receipt_handle"].as_str().unwrap().to_string();
    assert_ne!(new_handle, handles[2]);
    let a = h
        .raw(
            "DELETE",
            &format!("/v1/queues/work-q/messages/{}", handles[2]),
            None,
        )
        .await;
    a.assert_error(
        "delete with the replaced handle",
        409,
        "ReceiptHandleStale",
        Some("receipt_handle"),
    );

    // Batch delete: one result per handle, a bad one fails alone.
    let a = h
        .json(
            "POST",
            "/v1/queues/work-q/messages/delete",
            &json!({"receipt_handles": [handles[0], "not-a-handle", handles[1]]}),
        )
        .await;
    assert_eq!(a.status, 200, "batch delete: {}", a.json);
    let results = a.json["results"].as_array().cloned().unwrap();
    println!("batch delete results: {results:?}");
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["deleted"], true);
    assert_eq!(results[1]["deleted"], false);
    assert_eq!(results[1]["error"]["code"], "ReceiptHandleError");
    assert_eq!(results[2]["deleted"], true);

    // Delete twice with the current handle succeeds both times.
    for round in 1..=2 {
        let a = h
            .raw(
                "DELETE",
                &format!("/v1/queues/work-q/messages/{}", handles[0]),
                None,
            )
            .await;
        assert_eq!(
            a.status, 200,
            "delete #{round} with the current handle: {}",
            a.json
        );
    }

    // The message whose visibility was set to 1 s comes back with dequeue count 2 (behind
    // low-1 and the binary one, which were never received).
    let a = h.get("/v1/queues/work-q/messages?max=16").await;
    assert_eq!(
        a.json["messages"].as_array().map(Vec::len),
        Some(2),
        "{}",
        a.json
    );
    let a = h
        .get("/v1/queues/work-q/messages?max=16&wait_seconds=5")
        .await;
    assert_eq!(bodies(&a.json), ["mid-2"], "{}", a.json);
    assert_eq!(a.json["messages"][0]["dequeue_count"], 2);
    assert!(a.json["messages"][0]["first_dequeue_time_ms"].is_u64());

    // Set attributes with PATCH: only the given ones change.
    let a = h
        .json(
            "PATCH",
            "/v1/queues/work-q",
            &json!({"polling_wait_seconds": 3, "delay_seconds": 2}),
        )
        .await;
    assert_eq!(a.status, 200, "patch: {}", a.json);
    assert_eq!(a.json["attributes"]["polling_wait_seconds"], 3);
    assert_eq!(a.json["attributes"]["delay_seconds"], 2);
    assert_eq!(a.json["attributes"]["visibility_timeout"], 30);

    // Queue delay applies to later sends; a per-message 0 overrides it.
    let a = h
        .json("POST", "/v1/queues/work-q/messages", &json!({"body": "d"}))
        .await;
    let s = &a.json;
    assert!(s["next_visible_time_ms"].as_u64() >= s["enqueue_time_ms"].as_u64().map(|t| t + 2000));

    // Long poll woken by a send: the receive returns well before its wait ends.
    let h2 = h.clone();
    let poll = tokio::spawn(async move {
        let t = Instant::now();
        let a = h2.json("PUT", "/v1/queues/poll-q", &json!({})).await;
        assert!(a.status == 201 || a.status == 200);
        let a = h2.get("/v1/queues/poll-q/messages?wait_seconds=20").await;
        (a, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.json(
        "POST",
        "/v1/queues/poll-q/messages",
        &json!({"body": "wake"}),
    )
    .await;
    let (a, took) = poll.await.unwrap();
    println!("long poll returned after {took:?}");
    assert_eq!(bodies(&a.json), ["wake"]);
    assert!(
        took < Duration::from_secs(15),
        "woken by the send, not by the wait end"
    );

    // Topic batch publish fans out by filter tag in one commit.
    h.json("PUT", "/v1/queues/tagged-q", &json!({})).await;
    h.json("PUT", "/v1/queues/all-q", &json!({})).await;
    h.json("PUT", "/v1/topics/events", &json!({})).await;
    let a = h
        .json(
            "PUT",
            "/v1/topics/events/subscriptions/events-tagged",
            &json!({"queue": "tagged-q", "filter_tag": "red"}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.json);
    h.json(
        "PUT",
        "/v1/topics/events/subscriptions/events-all",
        &json!({"queue": "all-q"}),
    )
    .await;
    let a = h
        .json(
            "POST",
            "/v1/topics/events/messages",
            &json!({"messages": [{"body": "r", "tag": "red"}, {"body": "b", "tag": "blue"}]}),
        )
        .await;
    assert_eq!(a.status, 201, "batch publish: {}", a.json);
    assert_eq!(a.json["messages"][0]["queues"], 2);
    assert_eq!(a.json["messages"][1]["queues"], 1);
    let a = h.get("/v1/queues/tagged-q/messages?peek=true&max=16").await;
    assert_eq!(bodies(&a.json), ["r"]);
    let a = h.get("/v1/queues/all-q/messages?peek=true&max=16").await;
    assert_eq!(bodies(&a.json), ["r", "b"]);

    sluice.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_at_max_receive_count_3_moves_on_the_fourth_receive() {
    // Proves dead letters at max_receive_count = 3 over the API: delivered exactly 3 times, moved
    // on the 4th receive, never in both queues, carrying its origin.
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let h = Http::new(&sluice.http);
    assert_eq!(
        h.json("PUT", "/v1/queues/dlq", &json!({})).await.status,
        201
    );
    let a = h
        .json(
            "PUT",
            "/v1/queues/src-q",
            &json!({"visibility_timeout": 1, "dead_letter_queue": "dlq", "max_receive_count": 3}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.json);
    let sent = h
        .json(
            "POST",
            "/v1/queues/src-q/messages",
            &json!({"body": "poison"}),
        )
        .await
        .json;
    let mut deliveries = 0;
    for attempt in 1..=4 {
        let a = h.get("/v1/queues/src-q/messages?wait_seconds=5").await;
        assert_eq!(a.status, 200, "{}", a.json);
        let got = bodies(&a.json);
        println!(
            "receive #{attempt}: {got:?} dequeue_count {}",
            a.json["messages"][0]["dequeue_count"]
        );
        if attempt <= 3 {
            assert_eq!(got, ["poison"]);
            assert_eq!(a.json["messages"][0]["dequeue_count"], attempt);
            deliveries += 1;
            // Let the visibility timeout (1 s) pass: the message comes back.
        } else {
            assert!(
                got.is_empty(),
                "the 4th receive must not deliver it: {}",
                a.json
            );
        }
    }
    assert_eq!(deliveries, 3);
    let src = h.queue("src-q").await;
    let dlq = h.queue("dlq").await;
    println!("src-q: {src}\ndlq: {dlq}");
    assert_eq!(src["dead_lettered_total"], 1);
    assert_eq!(
        src["active_messages"].as_u64().unwrap() + src["inactive_messages"].as_u64().unwrap(),
        0,
        "not in both queues"
    );
    let a = h.get("/v1/queues/dlq/messages?max=16").await;
    assert_eq!(bodies(&a.json), ["poison"], "in the dead-letter queue");
    let m = &a.json["messages"][0];
    assert_eq!(m["id"], sent["id"], "the id is kept");
    assert_eq!(m["dead_letter"]["source_queue"], "src-q");
    assert_eq!(m["dead_letter"]["dequeue_count"], 3);
    sluice.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_queue_topic_and_backup_verbs_work_against_the_server() {
    // Proves the `sluice NOUN VERB` CLI verbs end to end, tables and --json, and that
    // `sluice backup FILE` writes a 0600 copy that a server can open and that holds the messages
    // and the rules.
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let cli = |args: &[&str]| sluice.run_cli(args);
    let json_of = |s: &str| -> Value { serde_json::from_str(s).expect("--json output is JSON") };

    assert!(cli(&["queue", "create", "dead-q"]).0);
    let (ok, out, _) = cli(&[
        "queue",
        "create",
        "cli-q",
        "--visibility-timeout",
        "60",
        "--dead-letter-queue",
        "dead-q",
        "--max-receive-count",
        "5",
    ]);
    assert!(ok && out.contains("visibility_timeout"), "{out}");
    let (ok, out, _) = cli(&["queue", "set", "cli-q", "--polling-wait-seconds", "1"]);
    assert!(ok && out.contains("polling_wait_seconds"), "{out}");
    let (ok, _, err) = cli(&["queue", "set", "cli-q", "--visibility-timeout", "0"]);
    assert!(!ok && err.contains("visibility_timeout"), "{err}");

    let (ok, out, _) = cli(&[
        "--json",
        "queue",
        "send",
        "cli-q",
        "one",
        "two",
        "--priority",
        "3",
        "--tag",
        "t1",
        "--attr",
        "k=v",
    ]);
    assert!(ok);
    assert_eq!(json_of(&out)["messages"].as_array().map(Vec::len), Some(2));
    assert!(cli(&["topic", "create", "cli-t"]).0);
    assert!(cli(&["sub", "create", "cli-t", "cli-t-to-q", "--queue", "cli-q"]).0);
    let (ok, out, _) = cli(&[
        "topic", "publish", "cli-t", "three", "--tag", "t2", "--attr", "a=b",
    ]);
    assert!(ok && out.contains("1 queue(s)"), "{out}");
    let (ok, out, _) = cli(&["queue", "peek", "cli-q", "--max", "16"]);
    assert!(ok && out.contains("one") && out.contains("three"), "{out}");
    let (ok, out, _) = cli(&["queue", "list"]);
    assert!(
        ok && out.contains("cli-q") && out.contains("dead-q"),
        "{out}"
    );

    // Backup while the server runs, before anything is received.
    let backup = dir.path().join("copy.db");
    let (ok, out, err) = cli(&["backup", backup.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777;
    println!("backup file mode {mode:o}");
    assert_eq!(mode, 0o600);

    let (ok, out, _) = cli(&["--json", "queue", "receive", "cli-q", "--max", "16"]);
    assert!(ok);
    let got = json_of(&out);
    let handles: Vec<String> = got["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["receipt_handle"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(handles.len(), 3, "{got}");
    let (ok, out, _) = cli(&["--json", "queue", "visibility", "cli-q", &handles[0], "120"]);
    assert!(ok);
    let new_handle = json_of(&out)["receipt_handle"]
        .as_str()
        .unwrap()
        .to_string();
    let mut args = vec![
        "queue",
        "delete",
        "cli-q",
        &new_handle,
        &handles[1],
        &handles[2],
    ];
    let (ok, out, _) = cli(&args);
    assert!(ok && out.matches("deleted").count() >= 3, "{out}");
    args[3] = &handles[0];
    let (ok, _, err) = cli(&args[..4]);
    assert!(
        !ok && err.contains("not deleted"),
        "the replaced handle is refused: {err}"
    );
    let (ok, _, err) = cli(&["queue", "remove", "cli-q"]);
    assert!(!ok && err.contains("--yes"), "{err}");
    sluice.stop();

    // The backup opens as a store and holds the three messages.
    let restored = dir.path().join("restored");
    std::fs::create_dir(&restored).unwrap();
    std::fs::copy(&backup, restored.join("sluice.db")).unwrap();
    let sluice = Sluice::start(&restored, &[]);
    let h = Http::new(&sluice.http);
    let a = h.get("/v1/queues/cli-q/messages?peek=true&max=16").await;
    let mut got = bodies(&a.json);
    got.sort();
    println!("restored backup holds {got:?}");
    assert_eq!(got, ["one", "three", "two"]);
    // The rules are in the snapshot too: the example rule comes back running, not recreated
    // (the restored store is not a fresh one).
    let rules = h.get("/v1/rules").await;
    let names: Vec<(&str, &str)> = rules.json["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| (r["name"].as_str().unwrap(), r["state"].as_str().unwrap()))
        .collect();
    println!("restored backup holds rules {names:?}");
    assert_eq!(names, [("overheat", "running")]);
    sluice.stop();
}
