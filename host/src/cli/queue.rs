//! `sluice queue ...`: create, list, show, remove, send, receive, delete, peek.

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::client::{segment, Client};
use super::output;

/// `sluice queue VERB`
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Create a queue (attributes as in the message-service spec).
    Create(CreateArgs),
    /// List queues with their message counts.
    List,
    /// Show a queue's attributes and counts.
    Show {
        /// Queue name.
        queue: String,
    },
    /// Delete a queue and its messages.
    Remove {
        /// Queue name.
        queue: String,
        /// Confirm: the queue and every message in it are deleted.
        #[arg(long)]
        yes: bool,
    },
    /// Send a message to a queue.
    Send {
        /// Queue name.
        queue: String,
        /// Message body (UTF-8 text).
        body: String,
        /// Seconds before the message becomes visible.
        #[arg(long)]
        delay: Option<u32>,
        /// Priority 1 (highest) to 16.
        #[arg(long)]
        priority: Option<u8>,
    },
    /// Receive messages: each stays invisible for the visibility timeout until deleted.
    Receive {
        /// Queue name.
        queue: String,
        /// Long-poll up to this many seconds (0–30) for a message.
        #[arg(long)]
        wait: Option<u32>,
        /// Receive up to this many messages (1–16).
        #[arg(long, default_value_t = 1)]
        max: u32,
    },
    /// Delete received messages by receipt handle.
    Delete {
        /// Queue name.
        queue: String,
        /// Receipt handles from `queue receive`.
        #[arg(required = true)]
        receipts: Vec<String>,
    },
    /// Read messages without receiving them.
    Peek {
        /// Queue name.
        queue: String,
        /// Up to this many messages (1–16).
        #[arg(long, default_value_t = 1)]
        max: u32,
    },
}

/// Attributes of `queue create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Queue name.
    pub queue: String,
    /// Seconds before a new message becomes visible (0–604800).
    #[arg(long)]
    pub delay_seconds: Option<u32>,
    /// Largest body in bytes (1024–65536).
    #[arg(long)]
    pub maximum_message_size: Option<u32>,
    /// Seconds a message is kept (60–604800).
    #[arg(long)]
    pub message_retention_period: Option<u32>,
    /// Seconds a received message stays invisible (1–43200).
    #[arg(long)]
    pub visibility_timeout: Option<u32>,
    /// Default long-poll wait in seconds (0–30).
    #[arg(long)]
    pub polling_wait_seconds: Option<u32>,
}

/// Runs one `queue` command.
pub async fn run(cmd: QueueCommand, client: &Client, as_json: bool) -> anyhow::Result<()> {
    match cmd {
        QueueCommand::Create(a) => {
            let body = json!({
                "delay_seconds": a.delay_seconds,
                "maximum_message_size": a.maximum_message_size,
                "message_retention_period": a.message_retention_period,
                "visibility_timeout": a.visibility_timeout,
                "polling_wait_seconds": a.polling_wait_seconds,
            });
            let v: Value = client
                .put(&format!("/v1/queues/{}", segment(&a.queue)), &body)
                .await?;
            print_or(as_json, &v, || println!("queue {} ready", a.queue));
        }
        QueueCommand::List => {
            let v: Value = client.get("/v1/queues").await?;
            if as_json {
                output::json(&v);
            } else {
                let rows = items(&v, "queues")
                    .iter()
                    .map(|q| {
                        vec![
                            output::cell(&q["name"]),
                            output::cell(&q["active_messages"]),
                            output::cell(&q["inactive_messages"]),
                            output::cell(&q["delay_messages"]),
                            output::cell(&q["visibility_timeout"]),
                        ]
                    })
                    .collect();
                output::table(
                    &["queue", "visible", "in flight", "delayed", "visibility (s)"],
                    rows,
                    "no queues yet — create one with `sluice queue create NAME`",
                );
            }
        }
        QueueCommand::Show { queue } => {
            let v: Value = client
                .get(&format!("/v1/queues/{}", segment(&queue)))
                .await?;
            if as_json {
                output::json(&v);
            } else if let Some(map) = v.as_object() {
                let pairs: Vec<(&str, String)> = map
                    .iter()
                    .map(|(k, v)| (k.as_str(), output::cell(v)))
                    .collect();
                output::fields(&pairs);
            }
        }
        QueueCommand::Remove { queue, yes } => {
            if !yes {
                anyhow::bail!(
                    "`queue remove {queue}` deletes the queue and every message in it; add --yes to confirm"
                );
            }
            let v: Value = client
                .delete(&format!("/v1/queues/{}", segment(&queue)))
                .await?;
            print_or(as_json, &v, || println!("queue {queue} removed"));
        }
        QueueCommand::Send {
            queue,
            body,
            delay,
            priority,
        } => {
            let req = json!({"body": body, "delay_seconds": delay, "priority": priority});
            let v: Value = client
                .post(&format!("/v1/queues/{}/messages", segment(&queue)), &req)
                .await?;
            print_or(as_json, &v, || {
                println!(
                    "sent {} (md5 {})",
                    output::cell(&v["id"]),
                    output::cell(&v["body_md5"])
                )
            });
        }
        QueueCommand::Receive { queue, wait, max } => {
            let mut path = format!("/v1/queues/{}/messages?max={max}", segment(&queue));
            if let Some(wait) = wait {
                path.push_str(&format!("&wait_seconds={wait}"));
            }
            let v: Value = client.get(&path).await?;
            print_messages(&v, as_json, true, &queue);
        }
        QueueCommand::Peek { queue, max } => {
            let v: Value = client
                .get(&format!(
                    "/v1/queues/{}/messages?peek=true&max={max}",
                    segment(&queue)
                ))
                .await?;
            print_messages(&v, as_json, false, &queue);
        }
        QueueCommand::Delete { queue, receipts } => {
            let mut results = Vec::new();
            let mut failed = 0;
            for receipt in &receipts {
                let path = format!(
                    "/v1/queues/{}/messages/{}",
                    segment(&queue),
                    segment(receipt)
                );
                match client.delete::<Value>(&path).await {
                    Ok(_) => results.push(json!({"receipt_handle": receipt, "deleted": true})),
                    Err(e) => {
                        failed += 1;
                        results.push(json!({"receipt_handle": receipt, "deleted": false, "error": e.to_string()}));
                    }
                }
            }
            if as_json {
                output::json(&json!({ "results": results }));
            } else {
                for r in &results {
                    match r["error"].as_str() {
                        None => println!("deleted {}", output::cell(&r["receipt_handle"])),
                        Some(e) => {
                            eprintln!("not deleted {}: {e}", output::cell(&r["receipt_handle"]))
                        }
                    }
                }
            }
            if failed > 0 {
                anyhow::bail!("{failed} of {} receipt(s) not deleted", receipts.len());
            }
        }
    }
    Ok(())
}

fn items<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v[key].as_array().map(Vec::as_slice).unwrap_or_default()
}

fn print_or(as_json: bool, v: &Value, human: impl FnOnce()) {
    if as_json {
        output::json(v);
    } else {
        human();
    }
}

fn print_messages(v: &Value, as_json: bool, with_receipts: bool, queue: &str) {
    if as_json {
        output::json(v);
        return;
    }
    let msgs = items(v, "messages");
    let rows = msgs
        .iter()
        .map(|m| {
            let body = m
                .get("body")
                .filter(|b| !b.is_null())
                .map(output::cell)
                .unwrap_or_else(|| format!("base64:{}", output::cell(&m["body_base64"])));
            let mut row = vec![];
            if with_receipts {
                row.push(output::cell(&m["receipt_handle"]));
            }
            row.push(output::cell(&m["id"]));
            row.push(output::cell(&m["dequeue_count"]));
            row.push(output::clip(&body, 80));
            row
        })
        .collect();
    let headers: &[&str] = if with_receipts {
        &["receipt_handle", "id", "dequeues", "body"]
    } else {
        &["id", "dequeues", "body"]
    };
    output::table(headers, rows, &format!("no messages in {queue} right now"));
}
