//! The runtime half of every compiled sluice SQL rule.
//!
//! Built for `wasm32-unknown-unknown` by the host's build script and embedded in the host; the
//! SQL compiler (`sluice::rules::sql`) re-encodes this module and appends the rule's own
//! functions (the WHERE predicate and the SELECT items as Wasm instructions) plus the
//! `sluice_on_message` export. Generated code calls the `rt_*` exports below for value work
//! that is not a handful of instructions: the lazy JSON path extractor, string functions,
//! digests, the output writer. The `rt_*` exports are removed from the final module.
//!
//! Layout:
//! - `shared.rs`: tags and codes shared with the compiler (it `include!`s the file).
//! - [`json`]: validator and lazy scanner over the payload bytes.
//! - [`text`]: number formatting, escaping, base64, hex, `LIKE`.
//! - `ffi`: the memory, the arena, the `sluice_v1` imports and the `rt_*` exports.
//!
//! Natively the crate is an ordinary library (so `json` and `text` are unit-tested with
//! `cargo test`); only the wasm32 build has the exports. The native test build compiles `ffi`
//! too, over a simulated memory and host, so the exports and their `unsafe` (all of the crate's)
//! run under `cargo test`, and under Miri:
//! `cargo +nightly miri test -p sluice-sql-runtime --lib ffi::` (about a minute; needs
//! `rustup toolchain install nightly --profile minimal -c miri -c rust-src`).

#![cfg_attr(target_arch = "wasm32", no_std)]

/// Tags and codes shared with the compiler.
pub mod shared {
    include!("shared.rs");
}

pub mod json;
pub mod text;

#[cfg(any(target_arch = "wasm32", test))]
mod ffi;
