//! `sluice signing-cert ...`: the certificates of the key that signs MNS-signed pushes (admin
//! keys only).

use clap::Subcommand;
use serde_json::{json, Value};

use super::client::Client;
use super::output;

/// `sluice signing-cert VERB`
#[derive(Debug, Subcommand)]
pub enum SigningCertCommand {
    /// List the served certificates and their URLs, the current one first (the first key is
    /// generated if there is none yet).
    List,
    /// Make a new key sign MNS-signed pushes; the previous certificates stay served for the
    /// grace period.
    Rotate {
        /// Seconds the previous certificates stay served (0-604800) [default: 86400].
        #[arg(long)]
        grace_seconds: Option<u32>,
    },
}

fn print(v: &Value) {
    let rows = v["certificates"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|c| {
            vec![
                output::cell(&c["id"]),
                if c["current"].as_bool() == Some(true) {
                    "current".into()
                } else {
                    format!(
                        "served until {}",
                        super::queue::time_ms(&c["valid_until_ms"])
                    )
                },
                output::cell(&c["url"]),
            ]
        })
        .collect();
    output::table(&["id", "state", "url"], rows, "no signing certificates");
}

/// Runs one `signing-cert` command.
pub async fn run(cmd: SigningCertCommand, client: &Client, as_json: bool) -> anyhow::Result<()> {
    let v: Value = match cmd {
        SigningCertCommand::List => client.get("/v1/signing-certificates").await?,
        SigningCertCommand::Rotate { grace_seconds } => {
            client
                .post(
                    "/v1/signing-certificates/rotate",
                    &json!({"grace_seconds": grace_seconds}),
                )
                .await?
        }
    };
    if as_json {
        output::json(&v);
    } else {
        print(&v);
    }
    Ok(())
}
