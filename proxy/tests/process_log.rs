//! The process log: no colour escape codes unless stderr is a terminal, `--log-path`
//! (appending to a file instead of stderr), `--log-format` (Envoy's pattern flags) and the
//! refusal of a flag Courier does not render.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::*;

/// A courier on an admin-only bootstrap at `-l info` with `args`, stderr to `stderr`;
/// returns it once `log` (stderr or the `--log-path` file) says the admin listens.
fn start(dir: &Path, args: &[&str], log: &Path) -> Child {
    let config = write_config(
        dir,
        "bootstrap.yaml",
        "admin: { address: { socket_address: { address: 127.0.0.1, port_value: 0 } } }\n",
    );
    let child = Command::new(COURIER)
        .arg("-c")
        .arg(&config)
        .args(["-l", "info"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr")).expect("stderr file"))
        .spawn()
        .expect("spawn courier");
    wait_for("the admin listening line in the log", DEADLINE, || {
        let text = std::fs::read_to_string(log).ok()?;
        text.contains("admin listening").then_some(())
    });
    child
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_log_that_is_not_a_terminal_has_no_escape_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stderr = dir.path().join("stderr");
    let child = start(dir.path(), &[], &stderr);
    let bytes = std::fs::read(&stderr).expect("stderr");
    stop(child);
    assert!(
        !bytes.contains(&0x1b),
        "ESC in a log file:\n{}",
        String::from_utf8_lossy(&bytes)
    );
}

#[test]
fn log_path_appends_to_the_file_and_leaves_stderr_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("courier.log");
    std::fs::write(&log, "an earlier line\n").expect("seed the log");
    let log_arg = log.to_str().expect("utf-8 path");
    let child = start(dir.path(), &["--log-path", log_arg], &log);
    let text = std::fs::read_to_string(&log).expect("log");
    let stderr = std::fs::read_to_string(dir.path().join("stderr")).expect("stderr");
    stop(child);
    assert!(
        text.starts_with("an earlier line\n"),
        "not appended:\n{text}"
    );
    assert!(!text.as_bytes().contains(&0x1b), "ESC in the log:\n{text}");
    assert!(
        !stderr.contains("admin listening"),
        "the log also went to stderr:\n{stderr}"
    );
}

#[test]
fn log_format_shapes_the_line_as_envoy_s_flags_say() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stderr = dir.path().join("stderr");
    let child = start(
        dir.path(),
        &[
            "--log-format",
            "[%Y-%m-%d %T.%e][%t][%l][%n] %v (%L|%-6l|%P)",
        ],
        &stderr,
    );
    let text = std::fs::read_to_string(&stderr).expect("stderr");
    let pid = child.id();
    stop(child);
    let line = text
        .lines()
        .find(|l| l.contains("admin listening"))
        .expect("the admin line");
    let shape = regex::Regex::new(&format!(
        r"^\[\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{{3}}\]\[\d+\]\[info\]\[main\] admin listening address=127\.0\.0\.1:\d+ \(I\|info  \|{pid}\)$"
    ))
    .expect("regex");
    assert!(shape.is_match(line), "line shape: {line:?}");
}

#[test]
fn an_unsupported_log_format_flag_is_refused_by_name() {
    let f = run_to_exit(&[
        "--config-yaml",
        "admin: { address: { socket_address: { address: 127.0.0.1, port_value: 0 } } }",
        "--log-format",
        "%Y %k %v",
    ]);
    assert_eq!(f.code(), 1, "{f:?}");
    assert!(
        f.stderr.contains("--log-format: unsupported flag '%k'"),
        "{f:?}"
    );
    let f = run_to_exit(&[
        "--config-yaml",
        "admin: { address: { socket_address: { address: 127.0.0.1, port_value: 0 } } }",
        "--log-path",
        "/nonexistent-dir/courier.log",
    ]);
    assert_eq!(f.code(), 1, "{f:?}");
    assert!(f.stderr.contains("--log-path: cannot open"), "{f:?}");
}
