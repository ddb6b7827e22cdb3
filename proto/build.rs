//! Locates the FileDescriptorSet that envoy-types ships (`src/generated/types.bin`, built
//! from the very protos its structs were generated from) and copies it into OUT_DIR, so the
//! descriptor pool always matches the envoy-types structs we transcode into.
//!
//! envoy-types does not export the bytes, so we find the crate's sources: first in cargo's
//! registry (the version pinned in Cargo.lock), else by asking `cargo metadata` (vendored or
//! git sources). `COURIER_ENVOY_DESCRIPTORS` overrides both.
//!
//! The registry comes first because on a fresh machine `cargo build` downloads only what it
//! compiles: `cargo metadata --offline` would then fail on the dev-dependencies it has not
//! fetched yet.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=COURIER_ENVOY_DESCRIPTORS");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let src = match std::env::var_os("COURIER_ENVOY_DESCRIPTORS") {
        Some(p) => PathBuf::from(p),
        None => locate_in_registry()
            .unwrap_or_else(locate_envoy_types)
            .join("src/generated/types.bin"),
    };
    println!("cargo:rerun-if-changed={}", src.display());
    std::fs::copy(&src, out.join("envoy_descriptors.bin"))
        .unwrap_or_else(|e| panic!("cannot copy {}: {e}", src.display()));
}

/// The envoy-types version the workspace's Cargo.lock pins.
fn locked_version(manifest_dir: &str) -> Option<String> {
    let lock = std::fs::read_to_string(PathBuf::from(manifest_dir).join("../Cargo.lock")).ok()?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "name = \"envoy-types\"" {
            let version = lines.next()?.trim().strip_prefix("version = \"")?;
            return Some(version.trim_end_matches('"').to_string());
        }
    }
    None
}

/// `$CARGO_HOME/registry/src/*/envoy-types-<locked version>`, if cargo downloaded it there.
fn locate_in_registry() -> Option<PathBuf> {
    println!("cargo:rerun-if-env-changed=CARGO_HOME");
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").ok()?;
    let version = locked_version(&manifest_dir)?;
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    std::fs::read_dir(home.join("registry/src"))
        .ok()?
        .flatten()
        .map(|index| index.path().join(format!("envoy-types-{version}")))
        .find(|dir| dir.join("src/generated/types.bin").is_file())
}

fn locate_envoy_types() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let target = std::env::var("TARGET").expect("cargo sets TARGET");
    // Only this target's dependencies: the others may not be downloaded.
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--filter-platform",
            &target,
        ])
        .current_dir(&manifest_dir)
        .output()
        .expect("running `cargo metadata` to locate envoy-types");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let packages = meta["packages"].as_array().expect("metadata has packages");
    let pkg = packages
        .iter()
        .find(|p| p["name"] == "envoy-types")
        .expect("envoy-types is a dependency of courier-proto");
    let manifest = PathBuf::from(pkg["manifest_path"].as_str().expect("manifest_path"));
    manifest
        .parent()
        .expect("manifest has a parent")
        .to_path_buf()
}
