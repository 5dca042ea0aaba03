//! End-to-end tests: each runs the real `sluice` binary (and real MQTT clients, Mosquitto and
//! HTTP) on free loopback ports with a temporary data directory.

mod bench;
mod common;
mod console;
mod device_loop;
mod devices;
mod first_run;
mod ingest_external;
mod jetstream;
mod metrics;
mod mns;
mod push;
mod push_signing;
mod rules_wasm;
mod security_api;
mod security_mqtt;
mod skeleton;
mod store_backpressure;
mod store_bad_input;
mod store_conformance;
mod store_crash;
mod store_migration;
mod store_queue_api;
mod store_util;
