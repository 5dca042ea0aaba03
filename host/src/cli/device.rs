//! `sluice device ...` (the device registry) and `sluice pub` (downlink to one device).

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::client::{segment, Client};
use super::output;

/// `sluice device VERB`
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Register a device; prints its secret, the only time it is shown.
    Create {
        /// Product key (the product is registered with its first device).
        product_key: String,
        /// Device name, unique within the product.
        device_name: String,
        /// A tag KEY=VALUE for `attribute('KEY')` in rules (repeatable).
        #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = crate::devices::parse_tag)]
        tags: Vec<(String, String)>,
    },
    /// List devices (never their secrets).
    List,
    /// Show a device (never its secret).
    Show {
        /// Product key.
        product_key: String,
        /// Device name.
        device_name: String,
    },
    /// Delete a device: it can no longer sign in.
    Delete {
        /// Product key.
        product_key: String,
        /// Device name.
        device_name: String,
    },
    /// Call a device synchronously (RRPC) and print its answer.
    Call {
        /// Product key.
        product_key: String,
        /// Device name.
        device_name: String,
        /// The request (UTF-8 text).
        payload: String,
        /// A custom topic of the device (`user/get`): the call uses `/ext/rrpc/ID/PK/DN/TOPIC`
        /// instead of `/sys/PK/DN/rrpc/request/ID`.
        #[arg(long)]
        topic: Option<String>,
        /// Seconds to wait for the answer, 1-60.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=60))]
        timeout: u64,
    },
}

/// `sluice pub PRODUCT_KEY DEVICE_NAME SUBTOPIC PAYLOAD [--qos 0|1]`
#[derive(Debug, Args)]
pub struct PubArgs {
    /// Product key.
    pub product_key: String,
    /// Device name.
    pub device_name: String,
    /// Sub-topic (`user/get` -> `/PK/DN/user/get`) or a full topic of the device.
    pub subtopic: String,
    /// Payload (UTF-8 text).
    pub payload: String,
    /// MQTT QoS of the downlink publish.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
}

fn device_path(pk: &str, dn: &str) -> String {
    format!("/v1/devices/{}/{}", segment(pk), segment(dn))
}

fn tags_cell(v: &Value) -> String {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// Runs one `device` command.
pub async fn run(cmd: DeviceCommand, client: &Client, as_json: bool) -> anyhow::Result<()> {
    match cmd {
        DeviceCommand::Create {
            product_key,
            device_name,
            tags,
        } => {
            let tags: serde_json::Map<String, Value> = tags
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            let v: Value = client
                .put(
                    &device_path(&product_key, &device_name),
                    &json!({ "tags": tags }),
                )
                .await?;
            if as_json {
                output::json(&v);
            } else {
                println!("device {product_key}/{device_name} registered");
                println!("secret: {}", output::cell(&v["secret"]));
                println!("(the secret is shown only now: store it on the device)");
            }
        }
        DeviceCommand::List => {
            let v: Value = client.get("/v1/devices").await?;
            if as_json {
                output::json(&v);
            } else {
                let rows = v["devices"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .map(|d| {
                        vec![
                            output::cell(&d["product_key"]),
                            output::cell(&d["device_name"]),
                            output::cell(&d["online"]),
                            tags_cell(&d["tags"]),
                        ]
                    })
                    .collect();
                output::table(
                    &["product key", "device name", "online", "tags"],
                    rows,
                    "no devices yet — register one with `sluice device create PRODUCT_KEY DEVICE_NAME`",
                );
            }
        }
        DeviceCommand::Show {
            product_key,
            device_name,
        } => {
            let v: Value = client.get(&device_path(&product_key, &device_name)).await?;
            if as_json {
                output::json(&v);
            } else {
                output::fields(&[
                    ("product_key", output::cell(&v["product_key"])),
                    ("device_name", output::cell(&v["device_name"])),
                    ("online", output::cell(&v["online"])),
                    ("tags", tags_cell(&v["tags"])),
                    (
                        "create_time_ms",
                        super::queue::time_ms(&v["create_time_ms"]),
                    ),
                ]);
            }
        }
        DeviceCommand::Delete {
            product_key,
            device_name,
        } => {
            let v: Value = client
                .delete(&device_path(&product_key, &device_name))
                .await?;
            if as_json {
                output::json(&v);
            } else {
                println!("device {product_key}/{device_name} deleted");
            }
        }
        DeviceCommand::Call {
            product_key,
            device_name,
            payload,
            topic,
            timeout,
        } => {
            let mut body = json!({ "body": payload, "timeout_secs": timeout });
            if let Some(topic) = topic {
                body["topic"] = json!(topic);
            }
            let v: Value = client
                .post(
                    &format!("{}/rrpc", device_path(&product_key, &device_name)),
                    &body,
                )
                .await?;
            if as_json {
                output::json(&v);
            } else if let Some(text) = v["body"].as_str() {
                println!("{text}");
            } else {
                println!("base64:{}", output::cell(&v["body_base64"]));
            }
        }
    }
    Ok(())
}

/// Runs `sluice pub`.
pub async fn run_pub(args: PubArgs, client: &Client, as_json: bool) -> anyhow::Result<()> {
    let v: Value = client
        .post(
            &format!(
                "{}/messages",
                device_path(&args.product_key, &args.device_name)
            ),
            &json!({"topic": args.subtopic, "body": args.payload, "qos": args.qos}),
        )
        .await?;
    if as_json {
        output::json(&v);
    } else if v["queued"].as_u64().is_some_and(|n| n > 0) {
        println!(
            "device is offline: queued for {} ({} persistent session(s)), delivered when it reconnects",
            output::cell(&v["topic"]),
            output::cell(&v["queued"])
        );
    } else if v["delivered"].is_null() {
        println!(
            "published to {} through the external broker",
            output::cell(&v["topic"])
        );
    } else {
        println!(
            "published to {} ({} session(s))",
            output::cell(&v["topic"]),
            output::cell(&v["delivered"])
        );
    }
    Ok(())
}
