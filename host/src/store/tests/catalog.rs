//! Catalog (topics, queues, subscriptions), attribute validation, opening, migrations, backup.

use std::sync::Arc;

use super::{open_with, Env};
use crate::store::sqlite::schema::{migrate_to, SCHEMA_VERSION};
use crate::store::{
    ManualClock, QueueAttributes, Store, StoreError, StoreOptions, SubscriptionSpec,
};

#[tokio::test]
async fn topics_are_created_listed_and_deleted() {
    // Proves: topic catalog round trip, idempotent create, name validation.
    let env = Env::new();
    assert!(env.store.create_topic("alerts").await.unwrap());
    assert!(!env.store.create_topic("alerts").await.unwrap());
    assert!(env.store.create_topic("b-2").await.unwrap());
    let names: Vec<_> = env
        .store
        .list_topics()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["alerts", "b-2"]);
    let t = env.store.get_topic("alerts").await.unwrap();
    assert_eq!((t.create_time_ms, t.subscriptions), (super::T0, 0));
    assert!(env.store.delete_topic("alerts").await.unwrap());
    assert!(!env.store.delete_topic("alerts").await.unwrap());
    let e = env.store.get_topic("alerts").await.unwrap_err();
    assert_eq!((e.code(), e.status()), ("TopicNotExist", 404));
    let long = "a".repeat(121);
    for bad in ["", "-lead", "under_score", "sp ace", "é", long.as_str()] {
        let e = env.store.create_topic(bad).await.unwrap_err();
        assert_eq!(e.field(), Some("topic_name"), "{bad:?}");
    }
    assert!(env.store.create_topic(&"a".repeat(120)).await.unwrap());
}

#[tokio::test]
async fn queue_create_is_idempotent_and_conflicts_on_other_attributes() {
    // Proves: same attributes -> Ok(false); different -> QueueAlreadyExist (409).
    let env = Env::new();
    let a = QueueAttributes::default();
    assert!(env.store.create_queue("q", a.clone()).await.unwrap());
    assert!(!env.store.create_queue("q", a.clone()).await.unwrap());
    let b = QueueAttributes {
        visibility_timeout: 60,
        ..a
    };
    let e = env.store.create_queue("q", b.clone()).await.unwrap_err();
    assert_eq!((e.code(), e.status()), ("QueueAlreadyExist", 409));
    env.store
        .set_queue_attributes("q", b.clone())
        .await
        .unwrap();
    let info = env.store.get_queue("q").await.unwrap();
    assert_eq!(info.attributes, b);
    let list = env.store.list_queues().await.unwrap();
    assert_eq!(list.len(), 1);
    let json = serde_json::to_value(&info).unwrap();
    assert_eq!(json["attributes"]["visibility_timeout"], 60);
    assert_eq!(json["attributes"]["polling_wait_seconds"], 0);
}

#[tokio::test]
async fn every_attribute_one_past_its_range_is_refused_naming_it() {
    // Proves for queue attributes: the error names the attribute and its range,
    // and nothing changes (neither on create nor on set).
    let env = Env::new();
    env.queue("q", |_| {}).await;
    type Setter = fn(&mut QueueAttributes);
    let cases: [(&str, Setter, &str); 10] = [
        ("delay_seconds", |a| a.delay_seconds = 604_801, "604800"),
        (
            "maximum_message_size",
            |a| a.maximum_message_size = 1023,
            "1024",
        ),
        (
            "maximum_message_size",
            |a| a.maximum_message_size = 65_537,
            "65536",
        ),
        (
            "message_retention_period",
            |a| a.message_retention_period = 59,
            "60",
        ),
        (
            "message_retention_period",
            |a| a.message_retention_period = 604_801,
            "604800",
        ),
        ("visibility_timeout", |a| a.visibility_timeout = 0, "43200"),
        (
            "visibility_timeout",
            |a| a.visibility_timeout = 43_201,
            "43200",
        ),
        (
            "polling_wait_seconds",
            |a| a.polling_wait_seconds = 31,
            "30",
        ),
        (
            "max_receive_count",
            |a| {
                a.dead_letter_queue = Some("q".into());
                a.max_receive_count = Some(0)
            },
            "1000",
        ),
        (
            "max_receive_count",
            |a| {
                a.dead_letter_queue = Some("q".into());
                a.max_receive_count = Some(1001)
            },
            "1000",
        ),
    ];
    for (field, set, range_hint) in cases {
        let mut a = QueueAttributes::default();
        set(&mut a);
        let e = env
            .store
            .create_queue("other", a.clone())
            .await
            .unwrap_err();
        assert_eq!((e.code(), e.field()), ("InvalidArgument", Some(field)));
        assert!(e.to_string().contains(range_hint), "{e}");
        let e = env.store.set_queue_attributes("q", a).await.unwrap_err();
        assert_eq!(e.field(), Some(field));
    }
    assert_eq!(
        env.store.get_queue("q").await.unwrap().attributes,
        QueueAttributes::default()
    );
    assert_eq!(env.store.list_queues().await.unwrap().len(), 1);
    // The edges themselves are accepted.
    let edges = QueueAttributes {
        delay_seconds: 604_800,
        maximum_message_size: 1024,
        message_retention_period: 60,
        visibility_timeout: 43_200,
        polling_wait_seconds: 30,
        dead_letter_queue: Some("q".into()),
        max_receive_count: Some(1000),
    };
    assert!(env.store.create_queue("edges", edges).await.unwrap());
    // Attributes parse from partial JSON with defaults, and unknown keys are refused.
    let a: QueueAttributes = serde_json::from_str(r#"{"visibility_timeout": 5}"#).unwrap();
    assert_eq!(a.visibility_timeout, 5);
    assert_eq!(a.maximum_message_size, 65_536);
    assert!(serde_json::from_str::<QueueAttributes>(r#"{"visibility": 5}"#).is_err());
}

#[tokio::test]
async fn subscriptions_need_their_topic_and_queue() {
    // Proves: subscription catalog round trip and its errors.
    let env = Env::new();
    let spec = SubscriptionSpec::queue("alerts-q");
    let e = env
        .store
        .create_subscription("alerts", "alerts-to-q", spec.clone())
        .await
        .unwrap_err();
    assert_eq!(e.code(), "TopicNotExist");
    env.store.create_topic("alerts").await.unwrap();
    let e = env
        .store
        .create_subscription("alerts", "alerts-to-q", spec.clone())
        .await
        .unwrap_err();
    assert_eq!(e.code(), "QueueNotExist");
    env.queue("alerts-q", |_| {}).await;
    assert!(env
        .store
        .create_subscription("alerts", "alerts-to-q", spec.clone())
        .await
        .unwrap());
    assert!(!env
        .store
        .create_subscription("alerts", "alerts-to-q", spec.clone())
        .await
        .unwrap());
    let mut other = spec.clone();
    other.filter_tag = Some("x".into());
    let e = env
        .store
        .create_subscription("alerts", "alerts-to-q", other)
        .await
        .unwrap_err();
    assert_eq!((e.code(), e.status()), ("SubscriptionAlreadyExist", 409));
    let s = env
        .store
        .get_subscription("alerts", "alerts-to-q")
        .await
        .unwrap();
    assert_eq!(s.spec, spec);
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["endpoint"]["queue"], "alerts-q");
    assert_eq!(
        env.store.get_topic("alerts").await.unwrap().subscriptions,
        1
    );
    assert_eq!(
        env.store.list_subscriptions("alerts").await.unwrap().len(),
        1
    );
    let e = env
        .store
        .get_subscription("alerts", "nope")
        .await
        .unwrap_err();
    assert_eq!(e.code(), "SubscriptionNotExist");
    assert!(env
        .store
        .delete_subscription("alerts", "alerts-to-q")
        .await
        .unwrap());
    assert!(!env
        .store
        .delete_subscription("alerts", "alerts-to-q")
        .await
        .unwrap());
    assert!(env
        .store
        .list_subscriptions("alerts")
        .await
        .unwrap()
        .is_empty());
    let e = env.store.list_subscriptions("nope").await.unwrap_err();
    assert_eq!(e.code(), "TopicNotExist");
}

#[tokio::test]
async fn fresh_database_gets_current_schema_and_private_permissions() {
    // Proves: open creates dir 0700, db 0600, WAL, user_version = current schema.
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("data");
    let store = open_with(&dir, Arc::new(ManualClock::new(super::T0)));
    store.create_topic("t").await.unwrap();
    store.close().await.unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("sluice.db")), 0o600);
    }
    let conn = rusqlite::Connection::open(dir.join("sluice.db")).unwrap();
    let v: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION);
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn migrations_run_from_the_previous_schema() {
    // Proves the migration pattern: build the database at version N-1, open it, data survives
    // and the version is N. (With v1 current, N-1 is the empty database; a v2 adds its own
    // fixture at version 1 here.)
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sluice.db");
    {
        let mut conn = rusqlite::Connection::open(&db).unwrap();
        migrate_to(&mut conn, SCHEMA_VERSION - 1).unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION - 1);
    }
    let store = open_with(dir.path(), Arc::new(ManualClock::new(super::T0)));
    assert!(store
        .create_queue("q", QueueAttributes::default())
        .await
        .unwrap());
    store.close().await.unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    let v: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION);
}

#[tokio::test]
async fn newer_schema_damaged_file_locked_and_unwritable_dirs_are_refused_by_path() {
    // Proves: open fails with a clear error naming the path in each case.
    let dir = tempfile::tempdir().unwrap();
    let opts = || StoreOptions {
        clock: Arc::new(ManualClock::new(super::T0)),
        ..StoreOptions::default()
    };
    // Locked: a second open of the same directory while the first is alive.
    let first = Store::open(dir.path(), opts()).unwrap();
    let e = Store::open(dir.path(), opts()).unwrap_err();
    assert!(matches!(e, StoreError::Locked { .. }), "{e}");
    assert!(e.to_string().contains("sluice.lock"), "{e}");
    first.close().await.unwrap();
    drop(first);
    // Newer schema.
    {
        let conn = rusqlite::Connection::open(dir.path().join("sluice.db")).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
    }
    let e = Store::open(dir.path(), opts()).unwrap_err();
    assert!(
        matches!(e, StoreError::SchemaTooNew { found: 99, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("sluice.db"), "{e}");

    // Damaged: not a database.
    let bad = tempfile::tempdir().unwrap();
    std::fs::write(bad.path().join("sluice.db"), vec![0x5a; 8192]).unwrap();
    let e = Store::open(bad.path(), opts()).unwrap_err();
    assert!(matches!(e, StoreError::Damaged { .. }), "{e}");
    assert!(e.to_string().contains("sluice.db"), "{e}");

    // Damaged: a real database with a page overwritten.
    let torn = tempfile::tempdir().unwrap();
    {
        let s = Store::open(torn.path(), opts()).unwrap();
        s.create_queue("q", QueueAttributes::default())
            .await
            .unwrap();
        for i in 0..200 {
            s.send("q", super::text(&"x".repeat(i * 10))).await.unwrap();
        }
        s.close().await.unwrap();
        // Move everything into the main file, then damage a b-tree page.
        let c = rusqlite::Connection::open(torn.path().join("sluice.db")).unwrap();
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        c.pragma_update(None, "journal_mode", "DELETE").unwrap();
    }
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(torn.path().join("sluice.db"))
            .unwrap();
        f.seek(SeekFrom::Start(4096 * 3)).unwrap();
        f.write_all(&[0xff; 4096]).unwrap();
    }
    let e = Store::open(torn.path(), opts()).unwrap_err();
    assert!(matches!(e, StoreError::Damaged { .. }), "{e}");

    // Unwritable: the data directory would be inside a regular file.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let e = Store::open(&file.join("data"), opts()).unwrap_err();
    assert!(matches!(e, StoreError::Io { .. }), "{e}");
    assert!(e.to_string().contains("a-file"), "{e}");
}

#[tokio::test]
async fn backup_copies_a_live_store_0600() {
    // Proves: the online backup is a complete, openable copy written 0600.
    let env = Env::new();
    env.queue("q", |_| {}).await;
    for i in 0..100 {
        env.store
            .send("q", super::text(&i.to_string()))
            .await
            .unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("backup.db");
    env.store.backup(&dest).await.unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    // The copy opens as a store with everything in it.
    std::fs::rename(&dest, out.path().join("sluice.db")).unwrap();
    let copy = open_with(out.path(), env.clock.clone());
    assert_eq!(copy.get_queue("q").await.unwrap().active_messages, 100);
    copy.close().await.unwrap();
}
