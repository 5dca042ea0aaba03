//! `sluice queue ...`: create, set, list, show, remove, send, receive, delete, peek, visibility.

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use super::client::{segment, Client};
use super::output;
use crate::store::QueueAttributesPatch;

/// Most messages in one send, receive, peek or delete request (the batch limit of MNS).
const BATCH: usize = 16;

/// `sluice queue VERB`
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Create a queue (attributes as in docs/message-service.md). Creating it again with the
    /// same attributes succeeds; with different ones it fails (change them with `queue set`).
    Create(AttributeArgs),
    /// Change attributes of an existing queue; the ones not given keep their value.
    Set(SetArgs),
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
    /// Send messages to a queue: several BODY arguments (up to 16) go in one commit.
    Send {
        /// Queue name.
        queue: String,
        /// Message bodies (UTF-8 text), 1 to 16.
        #[arg(required = true, num_args = 1..=16)]
        bodies: Vec<String>,
        /// Seconds before the message becomes visible (0–604800; default: the queue's).
        #[arg(long)]
        delay: Option<u32>,
        /// Priority 1 (highest) to 16 (default 8).
        #[arg(long)]
        priority: Option<u8>,
        /// Message tag (up to 16 characters).
        #[arg(long)]
        tag: Option<String>,
        /// A message attribute KEY=VALUE (repeatable).
        #[arg(long = "attr", value_name = "KEY=VALUE", value_parser = parse_attr)]
        attributes: Vec<(String, String)>,
    },
    /// Receive messages: each stays invisible for the visibility timeout until deleted.
    Receive {
        /// Queue name.
        queue: String,
        /// Long-poll up to this many seconds (0–30) for a message [default: the queue's
        /// polling_wait_seconds].
        #[arg(long)]
        wait: Option<u32>,
        /// Receive up to this many messages (1–16).
        #[arg(long, default_value_t = 1)]
        max: u32,
    },
    /// Delete received messages by receipt handle (one commit per 16 handles).
    Delete {
        /// Queue name.
        queue: String,
        /// Receipt handles from `queue receive`.
        #[arg(required = true)]
        receipts: Vec<String>,
    },
    /// Read messages without receiving them (no handle, nothing changes).
    Peek {
        /// Queue name.
        queue: String,
        /// Up to this many messages (1–16).
        #[arg(long, default_value_t = 1)]
        max: u32,
    },
    /// Change a received message's visibility: visible again SECONDS from now (1–43200).
    /// Prints the new receipt handle; the old one stops working.
    Visibility {
        /// Queue name.
        queue: String,
        /// The message's current receipt handle.
        receipt: String,
        /// Seconds from now until it is visible again.
        seconds: u32,
    },
}

/// A queue and the attributes to give it: `queue create` and `queue set`.
#[derive(Debug, Args)]
pub struct AttributeArgs {
    /// Queue name.
    pub queue: String,
    /// The attributes given (sent as the API's body, spelled the same).
    #[command(flatten)]
    pub attributes: QueueAttributesPatch,
}

/// Arguments of `queue set`.
#[derive(Debug, Args)]
pub struct SetArgs {
    /// The attributes to change.
    #[command(flatten)]
    pub attributes: AttributeArgs,
    /// Turn dead-lettering off.
    #[arg(long, conflicts_with_all = ["dead_letter_queue", "max_receive_count"])]
    pub no_dead_letter_queue: bool,
}

/// Parses `KEY=VALUE`.
pub fn parse_attr(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{s}`: write an attribute as KEY=VALUE")),
    }
}

/// Runs one `queue` command.
pub async fn run(cmd: QueueCommand, client: &Client, as_json: bool) -> anyhow::Result<()> {
    match cmd {
        QueueCommand::Create(a) => {
            let v: Value = client
                .put(&format!("/v1/queues/{}", segment(&a.queue)), &a.attributes)
                .await?;
            print_or(as_json, &v, || print_queue(&v));
        }
        QueueCommand::Set(s) => {
            let AttributeArgs {
                queue,
                attributes: mut body,
            } = s.attributes;
            if s.no_dead_letter_queue {
                body.dead_letter_queue = Some(None);
            }
            if body.is_empty() {
                anyhow::bail!("`queue set` needs at least one attribute to change (see --help)");
            }
            let v: Value = client
                .patch(&format!("/v1/queues/{}", segment(&queue)), &body)
                .await?;
            print_or(as_json, &v, || print_queue(&v));
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
                            output::cell(&q["delayed_messages"]),
                            output::cell(&q["attributes"]["visibility_timeout"]),
                            output::cell(&q["attributes"]["dead_letter_queue"]),
                        ]
                    })
                    .collect();
                output::table(
                    &[
                        "queue",
                        "visible",
                        "in flight",
                        "delayed",
                        "visibility (s)",
                        "dead letters to",
                    ],
                    rows,
                    "no queues yet — create one with `sluice queue create NAME`",
                );
            }
        }
        QueueCommand::Show { queue } => {
            let v: Value = client
                .get(&format!("/v1/queues/{}", segment(&queue)))
                .await?;
            print_or(as_json, &v, || print_queue(&v));
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
            bodies,
            delay,
            priority,
            tag,
            attributes,
        } => {
            let attributes: Map<String, Value> = attributes
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            let mut messages: Vec<Value> = bodies
                .iter()
                .map(|body| {
                    let mut m = json!({"body": body, "attributes": attributes});
                    if let Some(d) = delay {
                        m["delay_seconds"] = d.into();
                    }
                    if let Some(p) = priority {
                        m["priority"] = p.into();
                    }
                    if let Some(t) = &tag {
                        m["tag"] = t.clone().into();
                    }
                    m
                })
                .collect();
            let path = format!("/v1/queues/{}/messages", segment(&queue));
            let sent: Vec<Value> = if messages.len() == 1 {
                let one = messages.pop().unwrap_or_default();
                vec![client.post(&path, &one).await?]
            } else {
                let v: Value = client.post(&path, &json!({ "messages": messages })).await?;
                items(&v, "messages").to_vec()
            };
            if as_json {
                output::json(&json!({ "messages": sent }));
            } else {
                let rows = sent
                    .iter()
                    .map(|s| {
                        vec![
                            output::cell(&s["id"]),
                            output::cell(&s["body_md5"]),
                            time_ms(&s["next_visible_time_ms"]),
                        ]
                    })
                    .collect();
                output::table(&["sent id", "body md5", "visible at"], rows, "nothing sent");
            }
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
            let path = format!("/v1/queues/{}/messages/delete", segment(&queue));
            let mut results = Vec::new();
            for chunk in receipts.chunks(BATCH) {
                let v: Value = client
                    .post(&path, &json!({ "receipt_handles": chunk }))
                    .await?;
                results.extend(items(&v, "results").iter().cloned());
            }
            let failed = results
                .iter()
                .filter(|r| r["deleted"] != Value::Bool(true))
                .count();
            if as_json {
                output::json(&json!({ "results": results }));
            } else {
                let rows = results
                    .iter()
                    .map(|r| {
                        let outcome = if r["deleted"] == Value::Bool(true) {
                            "deleted".to_string()
                        } else {
                            format!(
                                "{}: {}",
                                output::cell(&r["error"]["code"]),
                                output::cell(&r["error"]["message"])
                            )
                        };
                        vec![output::cell(&r["receipt_handle"]), outcome]
                    })
                    .collect();
                output::table(&["receipt_handle", "result"], rows, "nothing to delete");
            }
            if failed > 0 {
                anyhow::bail!("{failed} of {} receipt(s) not deleted", receipts.len());
            }
        }
        QueueCommand::Visibility {
            queue,
            receipt,
            seconds,
        } => {
            let v: Value = client
                .put(
                    &format!(
                        "/v1/queues/{}/messages/{}",
                        segment(&queue),
                        segment(&receipt)
                    ),
                    &json!({ "visibility_timeout": seconds }),
                )
                .await?;
            print_or(as_json, &v, || {
                output::fields(&[
                    ("receipt_handle", output::cell(&v["receipt_handle"])),
                    ("visible at", time_ms(&v["next_visible_time_ms"])),
                ])
            });
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

/// A queue as aligned `key  value` lines: counts first, then the attributes.
fn print_queue(v: &Value) {
    let mut pairs: Vec<(&str, String)> = Vec::new();
    if let Some(map) = v.as_object() {
        for (k, val) in map {
            if k == "attributes" {
                continue;
            }
            let shown = if k.ends_with("time_ms") {
                time_ms(val)
            } else {
                output::cell(val)
            };
            pairs.push((k.as_str(), shown));
        }
    }
    if let Some(attrs) = v["attributes"].as_object() {
        for (k, val) in attrs {
            pairs.push((k.as_str(), output::cell(val)));
        }
    }
    output::fields(&pairs);
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
            row.push(output::cell(&m["priority"]));
            row.push(output::cell(&m["tag"]));
            row.push(output::cell(&m["dequeue_count"]));
            row.push(output::clip(&body, 80));
            row
        })
        .collect();
    let headers: &[&str] = if with_receipts {
        &[
            "receipt_handle",
            "id",
            "priority",
            "tag",
            "dequeues",
            "body",
        ]
    } else {
        &["id", "priority", "tag", "dequeues", "body"]
    };
    output::table(headers, rows, &format!("no messages in {queue} right now"));
}

/// A `..._ms` timestamp as UTC date and time for people (`-` when absent).
pub fn time_ms(v: &Value) -> String {
    v.as_i64()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string())
        .unwrap_or_else(|| output::cell(v))
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use serde_json::json;

    use super::QueueCommand;
    use crate::store::{QueueAttributes, QueueAttributesPatch};

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: QueueCommand,
    }

    fn parse(args: &[&str]) -> QueueCommand {
        Cli::try_parse_from(std::iter::once("queue").chain(args.iter().copied()))
            .unwrap()
            .cmd
    }

    #[test]
    fn the_flags_are_the_apis_patch_and_serialise_to_its_body() {
        // Proves: `queue create` and `queue set` send the same JSON body as before the one
        // patch type (given attributes only; `--no-dead-letter-queue` as null), and the API
        // reads it back as the same patch.
        let QueueCommand::Create(a) = parse(&[
            "create",
            "jobs",
            "--visibility-timeout",
            "60",
            "--dead-letter-queue",
            "dlq",
            "--max-receive-count",
            "3",
        ]) else {
            panic!("create")
        };
        let body = serde_json::to_value(&a.attributes).unwrap();
        assert_eq!(
            body,
            json!({"visibility_timeout": 60, "dead_letter_queue": "dlq", "max_receive_count": 3})
        );
        let back: QueueAttributesPatch = serde_json::from_value(body).unwrap();
        assert_eq!(back, a.attributes);
        let QueueCommand::Set(s) = parse(&["set", "jobs", "--no-dead-letter-queue"]) else {
            panic!("set")
        };
        assert!(s.no_dead_letter_queue && s.attributes.attributes.is_empty());
        let mut patch = s.attributes.attributes;
        patch.dead_letter_queue = Some(None);
        assert_eq!(
            serde_json::to_value(&patch).unwrap(),
            json!({"dead_letter_queue": null})
        );
        let current = QueueAttributes {
            dead_letter_queue: Some("dlq".into()),
            max_receive_count: Some(3),
            ..QueueAttributes::default()
        };
        let cleared = patch.apply(current);
        assert_eq!(cleared, QueueAttributes::default());
        assert!(Cli::try_parse_from(["queue", "create", "q", "--dead-letter-queue", "d"]).is_err());
        let unknown = serde_json::from_value::<QueueAttributesPatch>(json!({"delay": 1}))
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("unknown field `delay`"), "{unknown}");
    }
}
