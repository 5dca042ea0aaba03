//! Unit tests of ingest; the listener against real MQTT clients in `listener`.

mod listener;

use super::*;

#[tokio::test]
async fn ack_resolves_and_dropping_counts_as_rejection() {
    let (ack, rx) = Ack::channel();
    assert!(ack.is_awaited());
    ack.commit();
    assert_eq!(rx.await.ok(), Some(AckOutcome::Committed));

    let (ack, rx) = Ack::channel();
    ack.reject("disk full");
    assert_eq!(
        rx.await.ok(),
        Some(AckOutcome::Rejected("disk full".into()))
    );

    let (ack, rx) = Ack::channel();
    drop(ack);
    assert!(
        rx.await.is_err(),
        "a dropped ack must not read as committed"
    );

    let ack = Ack::detached();
    assert!(!ack.is_awaited());
    ack.commit();
}
