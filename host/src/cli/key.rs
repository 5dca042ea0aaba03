//! `sluice key ...`: access keys for the HTTP API (native and MNS).

use clap::Subcommand;
use serde_json::{json, Value};

use super::client::{segment, Client};
use super::output;

/// `sluice key VERB`
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a key; prints its AccessKeyId and secret (shown this once).
    Create {
        /// A unique name for the key.
        name: String,
        /// What the key may do, repeatable: `*` (admin), or `queues/NAME` / `topics/NAME` (NAME
        /// may end in `*`) with optional actions `:read,send,consume,manage` (default all).
        #[arg(long, value_name = "RESOURCE[:ACTIONS]", required = true)]
        allow: Vec<String>,
    },
    /// List keys (never their secrets).
    List,
    /// Delete a key; it stops working at once.
    Delete {
        /// The AccessKeyId.
        id: String,
    },
}

/// Runs one `key` command.
pub async fn run(cmd: KeyCommand, client: &Client, as_json: bool) -> anyhow::Result<()> {
    match cmd {
        KeyCommand::Create { name, allow } => {
            let v: Value = client
                .post("/v1/keys", &json!({"name": name, "allow": allow}))
                .await?;
            if as_json {
                output::json(&v);
            } else {
                output::fields(&[
                    ("name", output::cell(&v["name"])),
                    ("access_key_id", output::cell(&v["id"])),
                    ("secret", output::cell(&v["secret"])),
                    ("allow", allow.join(" ")),
                ]);
                println!("keep the secret now: it is not shown again");
            }
        }
        KeyCommand::List => {
            let v: Value = client.get("/v1/keys").await?;
            if as_json {
                output::json(&v);
            } else {
                let rows = v["keys"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .map(|k| {
                        vec![
                            output::cell(&k["id"]),
                            output::cell(&k["name"]),
                            output::list(&k["allow"], " "),
                        ]
                    })
                    .collect();
                output::table(&["access_key_id", "name", "allow"], rows, "no keys");
            }
        }
        KeyCommand::Delete { id } => {
            let v: Value = client.delete(&format!("/v1/keys/{}", segment(&id))).await?;
            if as_json {
                output::json(&v);
            } else {
                println!("key {id} deleted");
            }
        }
    }
    Ok(())
}
