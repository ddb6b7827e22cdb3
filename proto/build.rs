//! Locates the FileDescriptorSet that envoy-types ships (`src/generated/types.bin`, built
//! from the very protos its structs were generated from) and copies it into OUT_DIR, so the
//! descriptor pool always matches the envoy-types structs we transcode into.
//!
//! envoy-types does not export the bytes, so we ask cargo where the crate's sources live.
//! `COURIER_ENVOY_DESCRIPTORS` overrides the lookup (e.g. for vendored builds).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=COURIER_ENVOY_DESCRIPTORS");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let src = match std::env::var_os("COURIER_ENVOY_DESCRIPTORS") {
        Some(p) => PathBuf::from(p),
        None => locate_envoy_types().join("src/generated/types.bin"),
    };
    println!("cargo:rerun-if-changed={}", src.display());
    std::fs::copy(&src, out.join("envoy_descriptors.bin"))
        .unwrap_or_else(|e| panic!("cannot copy {}: {e}", src.display()));
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
