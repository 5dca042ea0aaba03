//! Builds the Wasm modules the host embeds (the example overheat rule) from this repository's
//! sources, so no `.wasm` file is ever committed. A nested `cargo build` for
//! `wasm32-unknown-unknown` runs with its own target directory (the outer build holds the lock on
//! the main one), and the resulting paths are passed to the crate as `SLUICE_*_WASM` variables.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The crates to build, with the env variable that carries each module's path.
const MODULES: &[(&str, &str, &str)] = &[
    (
        "sluice-rule-overheat",
        "sluice_rule_overheat",
        "SLUICE_OVERHEAT_WASM",
    ),
    (
        "sluice-rule-unit-convert",
        "sluice_rule_unit_convert",
        "SLUICE_UNIT_CONVERT_WASM",
    ),
    (
        "sluice-rule-device-router",
        "sluice_rule_device_router",
        "SLUICE_DEVICE_ROUTER_WASM",
    ),
    (
        "sluice-rule-frame-decoder",
        "sluice_rule_frame_decoder",
        "SLUICE_FRAME_DECODER_WASM",
    ),
    (
        "sluice-rule-stamp",
        "sluice_rule_stamp",
        "SLUICE_STAMP_WASM",
    ),
    (
        "sluice-rule-stamp-v2",
        "sluice_rule_stamp_v2",
        "SLUICE_STAMP_V2_WASM",
    ),
    // The SQL compiler's runtime: re-encoded into every compiled SQL rule.
    (
        "sluice-sql-runtime",
        "sluice_sql_runtime",
        "SLUICE_SQL_RUNTIME_WASM",
    ),
];

fn main() {
    require_wasm_target();
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = manifest_dir
        .parent()
        .expect("host/ sits in the workspace root");
    for dir in ["guest-sdk", "rules-examples", "host/sql-runtime"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    // The lock file (dependency versions) and the workspace manifest (the wasm-rules profile).
    for file in ["Cargo.lock", "Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }

    let target_dir = wasm_target_dir(root);
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args([
            "build",
            "--target",
            "wasm32-unknown-unknown",
            "--profile",
            "wasm-rules",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    for (package, _, _) in MODULES {
        cmd.args(["-p", package]);
    }
    // The outer build's flags and wrappers (clippy, coverage) are for the host, not the guest.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .expect("cannot run cargo to build the example rules");
    assert!(
        status.success(),
        "building the example rules for wasm32-unknown-unknown failed; \
         is the target installed? (rustup target add wasm32-unknown-unknown)"
    );
    for (_, file, var) in MODULES {
        let path = target_dir
            .join("wasm32-unknown-unknown")
            .join("wasm-rules")
            .join(format!("{file}.wasm"));
        assert!(path.exists(), "expected {} after the build", path.display());
        println!("cargo:rustc-env={var}={}", path.display());
    }
}

/// Stops the build at once, in one line that says what to run, when the toolchain has no standard
/// library for `wasm32-unknown-unknown`. Without this the nested build fails only after the host's
/// dependencies compiled, minutes in, with an error about crate `core`. rustup installs the
/// target listed in `rust-toolchain.toml` only when it installs the toolchain itself, so a
/// toolchain that was already there (or `RUSTUP_AUTO_INSTALL=0`) lacks it.
fn require_wasm_target() {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let libdir = Command::new(&rustc)
        .args([
            "--print",
            "target-libdir",
            "--target",
            "wasm32-unknown-unknown",
        ])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    let has_core = libdir
        .and_then(|dir| std::fs::read_dir(dir).ok())
        .is_some_and(|mut entries| {
            entries.any(|e| {
                e.ok()
                    .is_some_and(|e| e.file_name().to_string_lossy().starts_with("libcore-"))
            })
        });
    if !has_core {
        eprintln!(
            "error: the Rust target wasm32-unknown-unknown is not installed (the example rules and \
             the SQL runtime are built for it); run: rustup target add wasm32-unknown-unknown"
        );
        std::process::exit(1);
    }
}

/// `target/wasm-rules` beside the outer target directory, shared by every host build profile.
fn wasm_target_dir(root: &Path) -> PathBuf {
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets it"));
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out; walk up to <target>.
    out_dir
        .ancestors()
        .nth(4)
        .map(|t| t.join("wasm-rules"))
        .unwrap_or_else(|| root.join("target").join("wasm-rules"))
}
