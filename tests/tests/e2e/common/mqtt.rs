//! A device publishing at QoS 1 with rumqttc, recording exactly which messages got a PUBACK.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

/// What one device saw.
#[derive(Debug, Default)]
pub struct PublishReport {
    /// Sequence numbers whose PUBACK arrived.
    pub acked: Vec<u64>,
    /// Sequence numbers handed to the client.
    pub sent: usize,
    /// Why the connection ended early, if it did.
    pub error: Option<String>,
}

/// Publishes `messages` (seq, payload) to `topic` on 127.0.0.1:`port` at QoS 1 and returns once
/// every one is acknowledged, the connection fails, or `deadline` passes.
pub async fn publish_qos1(
    port: u16,
    client_id: &str,
    topic: &str,
    messages: Vec<(u64, Vec<u8>)>,
    deadline: Duration,
) -> PublishReport {
    let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_clean_session(true);
    opts.set_inflight(100);
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let total = messages.len();
    let order: VecDeque<u64> = messages.iter().map(|(s, _)| *s).collect();
    let topic = topic.to_string();
    let sender = tokio::spawn(async move {
        for (_, payload) in messages {
            if client
                .publish(topic.as_str(), QoS::AtLeastOnce, false, payload)
                .await
                .is_err()
            {
                break;
            }
        }
        client
    });
    let mut report = PublishReport {
        sent: total,
        ..Default::default()
    };
    let mut order = order;
    let mut in_flight: HashMap<u16, u64> = HashMap::new();
    let run = async {
        while report.acked.len() < total {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    if let Some(seq) = order.pop_front() {
                        in_flight.insert(pkid, seq);
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    if let Some(seq) = in_flight.remove(&ack.pkid) {
                        report.acked.push(seq);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    report.error = Some(e.to_string());
                    break;
                }
            }
        }
    };
    if tokio::time::timeout(deadline, run).await.is_err() {
        report.error = Some(format!("deadline of {deadline:?} passed"));
    }
    if report.error.is_some() {
        // The event loop is gone: a sender blocked on a full request channel never returns.
        sender.abort();
        return report;
    }
    if let Ok(client) = sender.await {
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
    }
    report
}
