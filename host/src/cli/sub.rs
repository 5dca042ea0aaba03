//! `sluice sub ...`: subscriptions of topics — queue ones and HTTP push ones (with delivery
//! counters, signing mode, enable/disable, secret rotation and dead letters).

use clap::Subcommand;
use serde_json::{json, Value};

use super::client::{segment, Client};
use super::output;

/// `sluice sub VERB`
#[derive(Debug, Subcommand)]
pub enum SubCommand {
    /// Subscribe a queue (--queue) or an HTTP endpoint (--http) to a topic. For HTTP, the
    /// signing secret is printed once.
    Create {
        /// Topic name.
        topic: String,
        /// Subscription name.
        name: String,
        /// The queue that receives the topic's messages.
        #[arg(long, conflicts_with = "http", required_unless_present = "http")]
        queue: Option<String>,
        /// The URL the topic's messages are POSTed to.
        #[arg(long)]
        http: Option<String>,
        /// Retry schedule of an HTTP subscription: backoff (3 retries, 10-20 s) or exponential
        /// (176 retries, 1 s .. 512 s, about a day) [default: backoff].
        #[arg(long, requires = "http")]
        strategy: Option<String>,
        /// Body of an HTTP push: simplified, json or xml [default: xml].
        #[arg(long, requires = "http")]
        format: Option<String>,
        /// Seconds an HTTP push may take (1-60) [default: 5].
        #[arg(long, requires = "http")]
        push_timeout_seconds: Option<u32>,
        /// Queue that receives messages whose pushes all failed (else they are dropped and
        /// counted).
        #[arg(long, requires = "http")]
        dead_letter_queue: Option<String>,
        /// Most pushes in flight to the endpoint (1-256) [default: 32].
        #[arg(long, requires = "http")]
        max_concurrency: Option<u32>,
        /// How pushes are signed: standard-webhooks (HMAC with the subscription's secret), mns
        /// (the MNS Authorization signature with sluice's RSA key) or both
        /// [default: standard-webhooks].
        #[arg(long, requires = "http", value_name = "MODE")]
        signing: Option<String>,
        /// Only messages with this tag.
        #[arg(long)]
        filter_tag: Option<String>,
    },
    /// List a topic's subscriptions.
    List {
        /// Topic name.
        topic: String,
    },
    /// Show one subscription (HTTP: with delivery counters and the last error).
    Show {
        /// Topic name.
        topic: String,
        /// Subscription name.
        name: String,
    },
    /// Delete a subscription (an HTTP one's pending pushes go with it).
    Delete {
        /// Topic name.
        topic: String,
        /// Subscription name.
        name: String,
    },
    /// Resume pushing to an HTTP subscription.
    Enable {
        /// Topic name.
        topic: String,
        /// Subscription name.
        name: String,
    },
    /// Stop pushing to an HTTP subscription (messages stay pending).
    Disable {
        /// Topic name.
        topic: String,
        /// Subscription name.
        name: String,
    },
    /// Replace an HTTP subscription's signing secret (printed once); the old one keeps
    /// signing beside it for the grace period.
    RotateSecret {
        /// Topic name.
        topic: String,
        /// Subscription name.
        name: String,
        /// Seconds the old secret keeps signing (0-604800) [default: 86400].
        #[arg(long)]
        grace_seconds: Option<u32>,
    },
    /// List an HTTP subscription's messages in its dead-letter queue.
    DeadLetters {
        /// Topic name.
        topic: String,
        /// Subscription name.
        name: String,
        /// At most this many (1-1000).
        #[arg(long, default_value_t = 100)]
        max: usize,
    },
    /// Move an HTTP subscription's dead letters back to pending pushes (fresh schedule).
    Redrive {
        /// Topic name.
        topic: String,
        /// Subscription name.
        name: String,
        /// At most this many (1-1000).
        #[arg(long, default_value_t = 100)]
        max: usize,
    },
}

fn path(topic: &str, name: &str) -> String {
    format!(
        "/v1/topics/{}/subscriptions/{}",
        segment(topic),
        segment(name)
    )
}

fn endpoint(s: &Value) -> String {
    let e = &s["endpoint"];
    if let Some(q) = e["queue"].as_str() {
        format!("queue {q}")
    } else if let Some(url) = e["http"]["url"].as_str() {
        format!(
            "{url} ({}, {}, {} signing)",
            output::cell(&e["http"]["format"]),
            output::cell(&e["http"]["strategy"]),
            signing(s)
        )
    } else {
        output::cell(e)
    }
}

/// An HTTP subscription's signing mode (`standard-webhooks` when the spec has none).
fn signing(s: &Value) -> String {
    s["endpoint"]["http"]["signing"]
        .as_str()
        .unwrap_or("standard-webhooks")
        .to_string()
}

fn push_state(s: &Value) -> String {
    let p = &s["push"];
    if p.is_null() {
        return "-".into();
    }
    if p["enabled"].as_bool() == Some(true) {
        "enabled".into()
    } else {
        "disabled".into()
    }
}

fn print_sub(v: &Value) {
    let mut pairs = vec![
        ("topic", output::cell(&v["topic"])),
        ("name", output::cell(&v["name"])),
        ("endpoint", endpoint(v)),
        ("filter_tag", output::cell(&v["filter_tag"])),
    ];
    let h = &v["endpoint"]["http"];
    if !h.is_null() {
        pairs.push((
            "push_timeout_seconds",
            output::cell(&h["push_timeout_seconds"]),
        ));
        pairs.push(("max_concurrency", output::cell(&h["max_concurrency"])));
        pairs.push(("dead_letter_queue", output::cell(&h["dead_letter_queue"])));
        pairs.push(("signing", signing(v)));
    }
    let p = &v["push"];
    if !p.is_null() {
        pairs.push(("state", push_state(v)));
        for key in [
            "disabled_reason",
            "delivered_total",
            "failed_attempts_total",
            "dropped_total",
            "dead_lettered_total",
            "backlog",
            "in_flight",
        ] {
            pairs.push((key, output::cell(&p[key])));
        }
        pairs.push((
            "next_attempt_time",
            super::queue::time_ms(&p["next_attempt_time_ms"]),
        ));
        pairs.push(("last_error", output::cell(&p["last_error"])));
        pairs.push((
            "last_error_time",
            super::queue::time_ms(&p["last_error_time_ms"]),
        ));
    }
    output::fields(&pairs);
}

/// Runs one `sub` command.
pub async fn run(cmd: SubCommand, client: &Client, as_json: bool) -> anyhow::Result<()> {
    match cmd {
        SubCommand::Create {
            topic,
            name,
            queue,
            http,
            strategy,
            format,
            push_timeout_seconds,
            dead_letter_queue,
            max_concurrency,
            signing,
            filter_tag,
        } => {
            let mut body = json!({"filter_tag": filter_tag});
            if let Some(q) = &queue {
                body["queue"] = json!(q);
            }
            if let Some(url) = &http {
                body["http"] = json!(url);
                for (k, v) in [
                    ("strategy", strategy.map(Value::from)),
                    ("format", format.map(Value::from)),
                    (
                        "push_timeout_seconds",
                        push_timeout_seconds.map(Value::from),
                    ),
                    ("dead_letter_queue", dead_letter_queue.map(Value::from)),
                    ("max_concurrency", max_concurrency.map(Value::from)),
                    ("signing", signing.map(Value::from)),
                ] {
                    if let Some(v) = v {
                        body[k] = v;
                    }
                }
            }
            let v: Value = client.put(&path(&topic, &name), &body).await?;
            if as_json {
                output::json(&v);
            } else {
                println!("subscription {name}: {topic} -> {}", endpoint(&v));
                if let Some(secret) = v["secret"].as_str() {
                    println!("signing secret (shown once, keep it): {secret}");
                }
            }
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
                        let http = !s["endpoint"]["http"].is_null();
                        vec![
                            output::cell(&s["name"]),
                            output::clip(&endpoint(s), 60),
                            output::cell(&s["filter_tag"]),
                            if http { signing(s) } else { "-".into() },
                            push_state(s),
                            output::cell(&s["push"]["backlog"]),
                            output::cell(&s["push"]["delivered_total"]),
                        ]
                    })
                    .collect();
                output::table(
                    &[
                        "subscription",
                        "endpoint",
                        "filter tag",
                        "signing",
                        "push",
                        "backlog",
                        "delivered",
                    ],
                    rows,
                    &format!("no subscriptions on {topic} yet — add one with `sluice sub create {topic} NAME --queue QUEUE` or `--http URL`"),
                );
            }
        }
        SubCommand::Show { topic, name } => {
            let v: Value = client.get(&path(&topic, &name)).await?;
            if as_json {
                output::json(&v);
            } else {
                print_sub(&v);
            }
        }
        SubCommand::Delete { topic, name } => {
            let v: Value = client.delete(&path(&topic, &name)).await?;
            if as_json {
                output::json(&v);
            } else {
                println!("subscription {name} deleted");
            }
        }
        SubCommand::Enable { topic, name } => {
            toggle(client, as_json, &topic, &name, "enable").await?
        }
        SubCommand::Disable { topic, name } => {
            toggle(client, as_json, &topic, &name, "disable").await?
        }
        SubCommand::RotateSecret {
            topic,
            name,
            grace_seconds,
        } => {
            let v: Value = client
                .post(
                    &format!("{}/rotate-secret", path(&topic, &name)),
                    &json!({"grace_seconds": grace_seconds}),
                )
                .await?;
            if as_json {
                output::json(&v);
            } else {
                println!(
                    "new signing secret (shown once, keep it): {}",
                    output::cell(&v["secret"])
                );
                println!(
                    "the previous secret also signs until {}",
                    super::queue::time_ms(&v["previous_secret_valid_until_ms"])
                );
            }
        }
        SubCommand::DeadLetters { topic, name, max } => {
            let v: Value = client
                .get(&format!("{}/dead-letters?max={max}", path(&topic, &name)))
                .await?;
            if as_json {
                output::json(&v);
            } else {
                let rows = v["messages"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .map(|m| {
                        vec![
                            output::cell(&m["id"]),
                            output::cell(&m["dead_letter"]["dequeue_count"]),
                            output::clip(&output::cell(&m["dead_letter"]["last_error"]), 50),
                            output::clip(&output::cell(&m["body"]), 40),
                        ]
                    })
                    .collect();
                output::table(
                    &["message id", "attempts", "last error", "body"],
                    rows,
                    "no dead letters",
                );
            }
        }
        SubCommand::Redrive { topic, name, max } => {
            let v: Value = client
                .post(
                    &format!("{}/dead-letters/redrive", path(&topic, &name)),
                    &json!({"max": max}),
                )
                .await?;
            if as_json {
                output::json(&v);
            } else {
                println!(
                    "{} dead letter(s) moved back to pending pushes",
                    output::cell(&v["redriven"])
                );
            }
        }
    }
    Ok(())
}

async fn toggle(
    client: &Client,
    as_json: bool,
    topic: &str,
    name: &str,
    verb: &str,
) -> anyhow::Result<()> {
    let v: Value = client
        .post(&format!("{}/{verb}", path(topic, name)), &json!({}))
        .await?;
    if as_json {
        output::json(&v);
    } else {
        println!("subscription {name} {verb}d");
    }
    Ok(())
}
