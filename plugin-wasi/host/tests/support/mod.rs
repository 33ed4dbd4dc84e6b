//! Shared harness: builds the guest workspace (SDK, examples, fixtures) for `wasm32-wasip2`
//! once per test binary, the way wasmtime builds its own test programs, and hands out the
//! component bytes.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use dbguard_core::ErrorClass;
use dbguard_core::retry::AttemptInfo;

/// Where the guest components are built (under cargo's per-package temporary directory).
fn guest_target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugin-guests")
}

fn build_guests() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest/Cargo.toml");
    let target_dir = guest_target_dir();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args(["build", "--release", "--locked", "--target", "wasm32-wasip2", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir)
        // The outer build's flags are for the host target, not for the guests.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .expect("could not run cargo to build the guest plugins");
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let hint = if stderr.contains("wasm32-wasip2") && stderr.contains("target may not be installed") {
            "\nThe wasm32-wasip2 target is missing: run `rustup target add wasm32-wasip2` \
             (rust-toolchain.toml lists it, so a rustup-managed toolchain installs it itself)."
        } else {
            ""
        };
        panic!("building the guest plugins ({}) failed:{hint}\n{stderr}", manifest.display());
    }
    target_dir.join("wasm32-wasip2").join("release")
}

/// The bytes of the guest component built from the crate `name` (dashes or underscores).
pub fn guest(name: &str) -> Vec<u8> {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(build_guests);
    let path = dir.join(format!("{}.wasm", name.replace('-', "_")));
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Attempt info for a failure of `class` at `attempt`, idempotent, with an optional code.
pub fn info(class: ErrorClass, attempt: u32, code: Option<&str>) -> AttemptInfo {
    AttemptInfo {
        class,
        code: code.map(str::to_owned),
        attempt,
        elapsed: Duration::ZERO,
        previous_delay: Duration::ZERO,
        idempotent: true,
    }
}
