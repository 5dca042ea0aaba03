//! sluice: a self-hostable IoT rules engine and message service.
//!
//! Layout, in the order a message flows:
//! - [`ingest`]: sluice's own MQTT listener and the external-broker client; hands each message
//!   over and waits for its ack.
//! - [`rules`]: the Wasm sandbox, the rule set and the thing-model view.
//! - [`store`]: durable topics, subscriptions, queues and records, on one of two backends:
//!   `store/sqlite/` (one process, group commit) or `store/jetstream/` (a NATS cluster).
//! - [`deliver`]: HTTP push to the HTTP subscriptions of topics (retries, signing, isolation).
//! - [`mns_xml`]: the MNS XML documents, shared by the MNS API and XML pushes.
//! - [`devices`]: the device registry (products, devices, secrets, tags), device sign-in,
//!   per-device topic access and downlink to a device.
//! - [`pipeline`]: joins ingest -> rules -> store and sends acks back after the commit;
//!   [`rule_catalog`] keeps the rules as store records.
//! - [`api`]: the HTTP API under `/v1/`, the MNS-compatible API, access-key checks, `/healthz`,
//!   and the web console under `/console/`.
//! - [`credentials`]: the per-user credentials file (a key per server URL).
//! - [`cli`]: the `sluice` command line (talks to the API, plus offline commands).
//! - [`serve`]: wires everything for `sluice serve`; [`config`]: `sluice.toml` and flags.
//! - [`ids`], [`names`], [`topic`]: message ids, object names and MQTT topic rules.

#[cfg(test)]
mod alloc_meter;
pub mod api;
pub mod cli;
pub mod config;
pub mod conn_limit;
pub mod credentials;
pub mod deliver;
pub mod devices;
pub mod histogram;
pub mod ids;
pub mod ingest;
pub mod mns_xml;
pub mod names;
pub mod pipeline;
pub mod rule_catalog;
pub mod rules;
pub mod serve;
pub mod session_store;
pub mod store;
pub mod tls;
pub mod topic;
