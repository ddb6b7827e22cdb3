//! Records the git revision for `--version` and `/server_info`: `COURIER_GIT_REV` if set
//! (e.g. by a Docker build without `.git`), else `git rev-parse`, else "unknown".

fn main() {
    println!("cargo:rerun-if-env-changed=COURIER_GIT_REV");
    let rev = std::env::var("COURIER_GIT_REV")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            let out = std::process::Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        });
    println!(
        "cargo:rustc-env=COURIER_GIT_REV={}",
        rev.unwrap_or_else(|| "unknown".into())
    );
}
