//! Captures the git revision for `courier-cp --version`.
//!
//! `COURIER_GIT_REV` overrides (Docker builds have no `.git`); otherwise `git rev-parse`;
//! otherwise "unknown". A failure here must never fail the build.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=COURIER_GIT_REV");
    let rev = std::env::var("COURIER_GIT_REV")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .or_else(git_rev)
        .unwrap_or_else(|| "unknown".to_string());
    // Rebuild when HEAD moves, when the repository has one.
    if let Some(git_dir) = git_output(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={git_dir}/HEAD");
        println!("cargo:rerun-if-changed={git_dir}/refs/heads");
    }
    println!("cargo:rustc-env=COURIER_CP_GIT_REV={}", rev.trim());
}

fn git_rev() -> Option<String> {
    git_output(&["rev-parse", "--short=12", "HEAD"])
}

fn git_output(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}
