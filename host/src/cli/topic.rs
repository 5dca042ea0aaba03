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
    },
}

/// `sluice sub VERB`
#[derive(Debug, Subcommand)]
pub enum SubCommand {
    /// Subscribe a queue to a topic.
    Create {
        /// Topic name.
        topic: String,
        /// Subscription name.
        name: String,
        /// The queue that receives the topic's messages.
        #[arg(long)]
        queue: String,
        /// Only messages with this tag.
        #[arg(long)]
        filter_tag: Option<String>,
    },
    /// List a topic's subscriptions.
    List {
        /// Topic name.
        topic: String,
    },
    /// Show one subscription.
    Show {
        /// Topic name.
        topic: String,
        /// Subscription name.
        name: String,
    },
    /// Delete a subscription.
    Delete {
        /// Topic name.
        topic: String,
        /// Subscription name.
        name: String,
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
            output::json(&v);
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
        TopicCommand::Publish { topic, body, tag } => {
            let v: Value = client
                .post(
                    &format!("/v1/topics/{}/messages", segment(&topic)),
                    &json!({"body": body, "tag": tag}),
                )
                .await?;
            show(as_json, &v, || {
                println!(
                    "published {} (md5 {})",
                    output::cell(&v["id"]),
                    output::cell(&v["body_md5"])
                )
            });
        }
    }
    Ok(())
}

/// Runs one `sub` command.
pub async fn run_sub(cmd: SubCommand, client: &Client, as_json: bool) -> anyhow::Result<()> {
    match cmd {
        SubCommand::Create {
            topic,
            name,
            queue,
            filter_tag,
        } => {
            let v: Value = client
                .put(
                    &format!(
                        "/v1/topics/{}/subscriptions/{}",
                        segment(&topic),
                        segment(&name)
                    ),
                    &json!({"queue": queue, "filter_tag": filter_tag}),
                )
                .await?;
            show(as_json, &v, || {
                println!("subscription {name}: {topic} -> queue {queue}")
            });
        }
        SubCommand::List { topic } => {
            let v: Value = client
                .get(&format!("/v1/topics/{}/subscriptions", segment(&topic)))
                .await?;
            if as_json {
                output::json(&v);
            } else {
                let rows = v["subscriptions"]
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
                output::table(
                    &["subscription", "endpoint", "filter tag"],
                    rows,
                    &format!("no subscriptions on {topic} yet — add one with `sluice sub create {topic} NAME --queue QUEUE`"),
                );
            }
        }
        SubCommand::Show { topic, name } => {
            let v: Value = client
                .get(&format!(
                    "/v1/topics/{}/subscriptions/{}",
                    segment(&topic),
                    segment(&name)
                ))
                .await?;
            output::json(&v);
        }
        SubCommand::Delete { topic, name } => {
            let v: Value = client
                .delete(&format!(
                    "/v1/topics/{}/subscriptions/{}",
                    segment(&topic),
                    segment(&name)
                ))
                .await?;
            show(as_json, &v, || println!("subscription {name} deleted"));
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
