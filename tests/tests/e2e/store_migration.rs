//! Schema migrations and backups on the real binary: databases at earlier schemas
//! (`user_version` 0, and 1 with queues, messages and a subscription) are migrated to the
//! current one with their data intact; a database newer
//! than the binary is refused with a clear error naming the file; an offline
//! `sluice backup FILE --data-dir DIR` writes a 0600 copy that opens and holds the messages.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use serde_json::json;

use crate::common::{sluice_bin, Sluice};
use crate::store_util::Http;

fn user_version(db: &std::path::Path) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previous_schema_is_migrated_with_its_data_and_newer_schemas_are_refused() {
    // Proves user_version 0 -> current keeps what the file held, the store then works and
    // survives a restart, and a newer schema is refused before serving.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let db = data.join("sluice.db");
    // The previous state: before v1 the store had no tables of its own; a file at
    // user_version 0 (a first start that died before migrating, or a file an operator
    // prepared) in rollback-journal mode, holding rows that are not sluice's.
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "CREATE TABLE operator_notes (id INTEGER PRIMARY KEY, note TEXT NOT NULL);
             INSERT INTO operator_notes (note) VALUES ('before-v1-a'), ('before-v1-b');",
        )
        .unwrap();
    }
    assert_eq!(user_version(&db), 0);
    let sluice = Sluice::start(&data, &[]);
    let h = Http::new(&sluice.http);
    assert_eq!(
        h.json("PUT", "/v1/queues/mig-q", &json!({"delay_seconds": 0}))
            .await
            .status,
        201
    );
    for b in ["m1", "m2", "m3"] {
        let a = h
            .json("POST", "/v1/queues/mig-q/messages", &json!({"body": b}))
            .await;
        assert_eq!(a.status, 201, "{}", a.json);
    }
    sluice.stop();
    let version = user_version(&db);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let notes: Vec<String> = conn
        .prepare("SELECT note FROM operator_notes ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    drop(conn);
    println!(
        "after migration: user_version {version}, journal_mode {mode}, operator rows {notes:?}"
    );
    assert!(version >= 1, "migrated to the current schema");
    assert_eq!(
        notes,
        ["before-v1-a", "before-v1-b"],
        "rows in the file survive"
    );
    assert_eq!(mode, "wal");

    // A restart on the migrated file keeps the messages (no second migration).
    let sluice = Sluice::start(&data, &[]);
    let h = Http::new(&sluice.http);
    let a = h.get("/v1/queues/mig-q/messages?peek=true&max=16").await;
    let bodies: Vec<&str> = a.json["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    println!("after restart: {bodies:?}");
    assert_eq!(bodies, ["m1", "m2", "m3"]);
    sluice.stop();
    assert_eq!(user_version(&db), version);

    // Offline backup of the stopped data directory.
    let copy = dir.path().join("offline.db");
    let out = Command::new(sluice_bin())
        .args([
            "backup",
            copy.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    println!(
        "$ sluice backup --data-dir: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success());
    assert_eq!(
        std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let conn = rusqlite::Connection::open(&copy).unwrap();
    let qc: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .unwrap();
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name LIKE 'q\\_%' ESCAPE '\\'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    println!("backup: quick_check {qc}, {tables} queue tables");
    assert_eq!(qc, "ok");
    assert!(tables >= 1);
    drop(conn);
    let restored = dir.path().join("restored");
    std::fs::create_dir(&restored).unwrap();
    std::fs::copy(&copy, restored.join("sluice.db")).unwrap();
    let sluice = Sluice::start(&restored, &[]);
    let a = Http::new(&sluice.http)
        .get("/v1/queues/mig-q/messages?peek=true&max=16")
        .await;
    assert_eq!(
        a.json["messages"].as_array().map(Vec::len),
        Some(3),
        "{}",
        a.json
    );
    sluice.stop();

    // A database from a newer sluice is refused, naming the file; nothing is served.
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
    }
    let out = Command::new(sluice_bin())
        .args([
            "serve",
            "--data-dir",
            data.to_str().unwrap(),
            "--http-listen",
            "127.0.0.1:0",
            "--mqtt-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!(
        "newer schema: exit {:?}, stderr tail: {}",
        out.status.code(),
        stderr.lines().last().unwrap_or("")
    );
    assert!(!out.status.success());
    assert!(
        stderr.contains("sluice.db") && stderr.contains("99"),
        "{stderr}"
    );
}

/// Schema v1 as the walking skeleton committed it (`store::schema::migrate_v1` and
/// `queue_table_ddl`), so this test keeps building a v1 file after later migrations change the
/// code.
const V1_SCHEMA: &str = "
    CREATE TABLE topics (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,
        create_time_ms INTEGER NOT NULL);
    CREATE TABLE queues (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,
        create_time_ms INTEGER NOT NULL, attributes TEXT NOT NULL,
        expired_total INTEGER NOT NULL DEFAULT 0, dead_lettered_total INTEGER NOT NULL DEFAULT 0);
    CREATE TABLE subscriptions (id INTEGER PRIMARY KEY AUTOINCREMENT, topic_id INTEGER NOT NULL,
        name TEXT NOT NULL, spec TEXT NOT NULL, create_time_ms INTEGER NOT NULL,
        UNIQUE (topic_id, name));
    CREATE TABLE bodies (id INTEGER PRIMARY KEY, refs INTEGER NOT NULL, body BLOB NOT NULL);
    CREATE TABLE q_1 (seq INTEGER PRIMARY KEY, next_visible_ms INTEGER NOT NULL,
        receipt_gen INTEGER NOT NULL, dequeue_count INTEGER NOT NULL, first_dequeue_ms INTEGER,
        priority INTEGER NOT NULL, enqueue_ms INTEGER NOT NULL, message_id TEXT NOT NULL,
        body_md5 BLOB NOT NULL, tag TEXT, attributes TEXT, origin TEXT, body_ref INTEGER,
        body BLOB);
    PRAGMA user_version = 1;
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_store_with_queues_messages_and_a_subscription_survives_the_migration() {
    // Proves v1 -> current keeps queued messages (order, tag, attributes, priority), queue
    // attributes and counters, and a v1 queue subscription that still fans out.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let db = data.join("sluice.db");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(V1_SCHEMA).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        let attrs = r#"{"delay_seconds":0,"maximum_message_size":65536,"message_retention_period":345600,"visibility_timeout":45,"polling_wait_seconds":0,"dead_letter_queue":null,"max_receive_count":null}"#;
        conn.execute(
            "INSERT INTO queues (name, create_time_ms, attributes, expired_total) VALUES ('old-q', ?1, ?2, 7)",
            rusqlite::params![now - 60_000, attrs],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO topics (name, create_time_ms) VALUES ('old-t', ?1)",
            [now - 60_000],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO subscriptions (topic_id, name, spec, create_time_ms) VALUES (1, 'old-t-to-q', ?1, ?2)",
            rusqlite::params![r#"{"endpoint":{"queue":"old-q"},"filter_tag":null,"base64_body":false}"#, now - 60_000],
        )
        .unwrap();
        for (i, (body, priority, tag)) in [
            ("v1-a", 8, None),
            ("v1-b", 2, Some("hot")),
            ("v1-c", 8, None),
        ]
        .into_iter()
        .enumerate()
        {
            let md5 = md5_of(body.as_bytes());
            conn.execute(
                "INSERT INTO q_1 (next_visible_ms, receipt_gen, dequeue_count, priority, enqueue_ms, \
                 message_id, body_md5, tag, attributes, body) VALUES (?1, 0, 0, ?2, ?1, ?3, ?4, ?5, ?6, ?7)",
                rusqlite::params![
                    now - 50_000 + i as i64,
                    priority,
                    format!("{:032x}", 0xabc0 + i),
                    &md5[..],
                    tag,
                    r#"{"source_topic":"old-t"}"#,
                    body.as_bytes()
                ],
            )
            .unwrap();
        }
    }
    assert_eq!(hex_upper(&md5_of(b"")), "D41D8CD98F00B204E9800998ECF8427E");
    assert_eq!(user_version(&db), 1);
    let sluice = Sluice::start(&data, &[]);
    let h = Http::new(&sluice.http);
    let q = h.queue("old-q").await;
    let a = h.get("/v1/queues/old-q/messages?peek=true&max=16").await;
    println!("v1 queue after migration: {q}\nmessages: {}", a.json);
    let msgs = a.json["messages"].as_array().cloned().unwrap_or_default();
    let bodies: Vec<&str> = msgs
        .iter()
        .map(|m| m["body"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        bodies,
        ["v1-b", "v1-a", "v1-c"],
        "priority then age, as before"
    );
    assert_eq!(msgs[0]["tag"], "hot");
    assert_eq!(msgs[0]["attributes"]["source_topic"], "old-t");
    assert_eq!(msgs[0]["id"], format!("{:032x}", 0xabc1));
    assert_eq!(msgs[0]["body_md5"], hex_upper(&md5_of(b"v1-b")));
    assert_eq!(q["attributes"]["visibility_timeout"], 45);
    assert_eq!(q["expired_total"], 7);
    let a = h
        .json(
            "POST",
            "/v1/topics/old-t/messages",
            &json!({"body": "after"}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.json);
    assert_eq!(a.json["queues"], 1, "the v1 subscription still fans out");
    let a = h.get("/v1/queues/old-q/messages?max=16").await;
    assert_eq!(
        a.json["messages"].as_array().map(Vec::len),
        Some(4),
        "{}",
        a.json
    );
    sluice.stop();
    println!("user_version now {}", user_version(&db));
    assert!(user_version(&db) > 1);
}

/// MD5 (RFC 1321), small and local so the test needs no extra crate.
fn md5_of(input: &[u8]) -> [u8; 16] {
    const S: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5,
        9, 14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10,
        15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
    ];
    let k: Vec<u32> = (0..64)
        .map(|i| ((i as f64 + 1.0).sin().abs() * 4_294_967_296.0) as u32)
        .collect();
    let (mut a0, mut b0, mut c0, mut d0) =
        (0x67452301u32, 0xefcdab89u32, 0x98badcfeu32, 0x10325476u32);
    let mut msg = input.to_vec();
    let bits = (input.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bits.to_le_bytes());
    for chunk in msg.chunks(64) {
        let m: Vec<u32> = chunk
            .chunks(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        let (mut a, mut b, mut c, mut d) = (a0, b0, c0, d0);
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let f = f.wrapping_add(a).wrapping_add(k[i]).wrapping_add(m[g]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(f.rotate_left(S[i]));
        }
        a0 = a0.wrapping_add(a);
        b0 = b0.wrapping_add(b);
        c0 = c0.wrapping_add(c);
        d0 = d0.wrapping_add(d);
    }
    let mut out = [0u8; 16];
    for (i, v) in [a0, b0, c0, d0].iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
    }
    out
}

fn hex_upper(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}
