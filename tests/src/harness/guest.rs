//! The guest plugins of `plugin-wasi/guest` (SDK examples and test fixtures), built for
//! `wasm32-wasip2` once per process, the way wasmtime builds its own test programs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The component bytes of the guest crate `name` (dashes or underscores). The guest workspace
/// is built on first use into `target_tmpdir/plugin-guests`; pass the calling test's
/// `env!("CARGO_TARGET_TMPDIR")`. Panics with cargo's output when the build fails (a missing
/// `wasm32-wasip2` target is named).
pub fn guest_plugin(target_tmpdir: &Path, name: &str) -> Vec<u8> {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| build_guests(&target_tmpdir.join("plugin-guests")));
    let path = dir.join(format!("{}.wasm", name.replace('-', "_")));
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn build_guests(target_dir: &Path) -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-wasi/guest/Cargo.toml");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args(["build", "--release", "--locked", "--target", "wasm32-wasip2", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir)
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

/// The component bytes of the guest crate `name`, built into the calling test crate's
/// temporary directory: `dbguard_tests::guest!("table-freshness")`. The one way tests get a
/// guest, so no suite wraps [`guest_plugin`] again.
#[macro_export]
macro_rules! guest {
    ($name:expr) => {
        $crate::guest_plugin(::std::path::Path::new(env!("CARGO_TARGET_TMPDIR")), $name)
    };
}
