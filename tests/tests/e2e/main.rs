//! End-to-end tests: each runs the real `sluice` binary (and real MQTT clients, Mosquitto and
//! HTTP) on free loopback ports with a temporary data directory.

mod common;
mod skeleton;
