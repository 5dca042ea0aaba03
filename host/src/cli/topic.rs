//! `sluice topic ...` and `sluice sub ...`: topics and their subscriptions.

use clap::Subcommand;
use serde_json::{json, Value};

use super::client::{segment, Client};
use super::output;

/// `sluice topic VERB`
#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        /// Topic name.
        topic: String,
    },
    /// List topics.
    List,
    /// Show a topic and its subscriptions.
    Show {
        /// Topic name.
        topic: String,
    },
    /// Delete a topic and its subscriptions.
    Remove {
        /// Topic name.
        topic: String,
        /// Confirm the deletion.
        #[arg(long)]
        yes: bool,
    },
    /// Publish a message to a topic (fanned out to its subscriptions in the same commit).
    Publish {
        /// Topic name.
        topic: String,
        /// Message body (UTF-8 text).
        body: String,
        /// Message tag (subscriptions with a filter tag get only matching messages).
        #[arg(long)]
        tag: Option<String>,
        /// A message attribute KEY=VALUE (repeatable).
        #[arg(long = "attr", value_name = "KEY=VALUE", value_parser = super::queue::parse_attr)]
        attributes: Vec<(String, String)>,
    },
}

/// Runs one `topic` command.
pub async fn run_topic(cmd: TopicCommand, client: &Client, as_json: bool) -> anyhow::Result<()> {
    match cmd {
        TopicCommand::Create { topic } => {
            let v: Value = client
                .put(&format!("/v1/topics/{}", segment(&topic)), &json!({}))
                .await?;
            show(as_json, &v, || println!("topic {topic} ready"));
        }
        TopicCommand::List => {
            let v: Value = client.get("/v1/topics").await?;
            if as_json {
                output::json(&v);
            } else {
                let rows = v["topics"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .map(|t| vec![output::cell(&t["name"]), output::cell(&t["subscriptions"])])
                    .collect();
                output::table(
                    &["topic", "subscriptions"],
                    rows,
                    "no topics yet — create one with `sluice topic create NAME`",
                );
            }
        }
        TopicCommand::Show { topic } => {
            let v: Value = client
                .get(&format!("/v1/topics/{}", segment(&topic)))
                .await?;
            show(as_json, &v, || {
                output::fields(&[
                    ("name", output::cell(&v["topic"]["name"])),
                    (
                        "create_time_ms",
                        super::queue::time_ms(&v["topic"]["create_time_ms"]),
                    ),
                    ("subscriptions", output::cell(&v["topic"]["subscriptions"])),
                ]);
                let rows: Vec<Vec<String>> = v["subscriptions"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .map(|s| {
                        vec![
                            output::cell(&s["name"]),
                            output::cell(&s["endpoint"]),
                            output::cell(&s["filter_tag"]),
                        ]
                    })
                    .collect();
                if !rows.is_empty() {
                    output::table(&["subscription", "endpoint", "filter tag"], rows, "");
                }
            });
        }
        TopicCommand::Remove { topic, yes } => {
            if !yes {
                anyhow::bail!("`topic remove {topic}` deletes the topic and its subscriptions; add --yes to confirm");
            }
            let v: Value = client
                .delete(&format!("/v1/topics/{}", segment(&topic)))
                .await?;
            show(as_json, &v, || println!("topic {topic} removed"));
        }
        TopicCommand::Publish {
            topic,
            body,
            tag,
            attributes,
        } => {
            let attributes: serde_json::Map<String, Value> = attributes
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            let v: Value = client
                .post(
                    &format!("/v1/topics/{}/messages", segment(&topic)),
                    &json!({"body": body, "tag": tag, "attributes": attributes}),
                )
                .await?;
            show(as_json, &v, || {
                println!(
                    "published {} (md5 {}) to {} queue(s)",
                    output::cell(&v["id"]),
                    output::cell(&v["body_md5"]),
                    output::cell(&v["queues"])
                )
            });
        }
    }
    Ok(())
}

fn show(as_json: bool, v: &Value, human: impl FnOnce()) {
    if as_json {
        output::json(v);
    } else {
        human();
    }
}
