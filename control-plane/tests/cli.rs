//! The `courier-cp` binary: serving a resources file to a real Envoy, reloading it on edit,
//! rejecting invalid files and API bodies while serving the last good snapshot, the
//! management API, `--version`, and graceful shutdown on SIGTERM.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::*;
use courier_control_plane::resources_file;
use serde_json::Value;

/// The courier-cp process, killed when dropped.
struct Cp {
    child: Child,
    admin: u16,
}

impl Drop for Cp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Cp {
    async fn start(resources: &Path, listen: u16, admin: u16) -> Cp {
        let child = Command::new(env!("CARGO_BIN_EXE_courier-cp"))
            .args(["--listen", &format!("127.0.0.1:{listen}")])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .arg("--resources")
            .arg(resources)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn courier-cp");
        let cp = Cp { child, admin };
        eventually("courier-cp admin up", || async {
            get_body(admin, "/status").await.map(|_| ())
        })
        .await;
        cp
    }

    async fn status(&self) -> Value {
        let body = get_body(self.admin, "/status").await.expect("GET /status");
        serde_json::from_str(&body).expect("status JSON")
    }

    async fn request(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let (code, body) = http(method, self.admin, path, body)
            .await
            .expect("admin answers");
        (
            code,
            serde_json::from_str(&body).unwrap_or(Value::String(body)),
        )
    }
}

fn acked(status: &Value, node: &str, kind: &str) -> Option<String> {
    status["nodes"][node]["types"][kind]["acked_version"]
        .as_str()
        .map(str::to_string)
}

#[test]
fn version_flag_prints_version_and_git_rev() {
    let out = Command::new(env!("CARGO_BIN_EXE_courier-cp"))
        .arg("--version")
        .output()
        .expect("run --version");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let re_ok = text.starts_with(&format!("courier-cp {} (", env!("CARGO_PKG_VERSION")))
        && text.trim_end().ends_with(')');
    assert!(re_ok, "unexpected --version output: {text:?}");
}

#[test]
fn resources_file_errors_name_the_field_path() {
    let err = resources_file::parse_document(
        "clusters:\n- name: a\n  connect_timeout: 1s\n- name: b\n  connect_timeout: soon\n",
    )
    .expect_err("invalid duration");
    assert_eq!(err.path, "clusters[1].connect_timeout");
    let err = resources_file::parse_document("clusters:\n- name: a\n  bogus_field: 1\n")
        .expect_err("unknown field");
    assert!(err.path.starts_with("clusters[0]"), "{err}");
    let err = resources_file::parse_document("clustres: []\n").expect_err("unknown section");
    assert_eq!(err.path, "clustres");
    let err =
        resources_file::parse_document("clusters:\n- name: a\n- name: a\n").expect_err("duplicate");
    assert_eq!(err.path, "clusters[1]");
    let err = resources_file::parse_document(
        "clusters:\n- \"@type\": type.googleapis.com/envoy.config.listener.v3.Listener\n  name: a\n",
    )
    .expect_err("wrong @type");
    assert_eq!(err.path, "clusters[0].@type");
    // Inconsistent content parses but does not build.
    let set =
        resources_file::parse_document("clusters:\n- name: a\n  type: EDS\n").expect("parses");
    let err = set.snapshots().expect_err("missing endpoints");
    assert!(
        err.to_string().contains("cluster \"a\" references EDS"),
        "{err}"
    );
}

#[test]
fn resources_directory_merges_files_and_node_overrides() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("a.yaml"),
        "clusters:\n- name: a\n  connect_timeout: 1s\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("b.json"),
        r#"{"clusters": [{"name": "b"}], "nodes": {"edge": {"clusters": [{"name": "a", "connect_timeout": "5s"}]}}}"#,
    )
    .expect("write");
    std::fs::write(dir.path().join("ignored.txt"), "not: [valid").expect("write");
    let set = resources_file::load(dir.path()).expect("loads");
    let snaps = set.snapshots().expect("builds");
    let clusters = snaps
        .default
        .of(courier_control_plane::ResourceType::Cluster);
    assert_eq!(clusters.items().keys().collect::<Vec<_>>(), ["a", "b"]);
    let edge = &snaps.nodes["edge"];
    let a = edge
        .get(courier_control_plane::ResourceType::Cluster, "a")
        .expect("a");
    assert_eq!(a.to_json()["connect_timeout"], "5s");
    // The same name in two files is an error naming the second file.
    std::fs::write(dir.path().join("c.yaml"), "clusters:\n- name: a\n").expect("write");
    let err = resources_file::load(dir.path()).expect_err("duplicate across files");
    assert!(err.to_string().contains("c.yaml"), "{err}");
}

/// The example file, with its ports replaced by free ones.
fn example_resources(http_port: u16, tcp_port: u16, upstream: u16) -> String {
    std::fs::read_to_string(examples_dir().join("resources.yaml"))
        .expect("examples/cp/resources.yaml")
        .replace("port_value: 10000", &format!("port_value: {http_port}"))
        .replace("port_value: 10001", &format!("port_value: {tcp_port}"))
        .replace("port_value: 8080", &format!("port_value: {upstream}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_a_file_to_envoy_reloads_on_edit_and_keeps_the_last_good_snapshot() {
    let a = Upstream::start("upstream-a").await;
    let b = Upstream::start("upstream-b").await;
    let (xds, admin, envoy_admin, http_port, tcp_port) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("resources.yaml");
    let good = example_resources(http_port, tcp_port, a.port);
    std::fs::write(&file, &good).expect("write resources");
    let cp = Cp::start(&file, xds, admin).await;
    let envoy = Envoy::start(
        &ads_bootstrap("demo-node", xds, envoy_admin, false),
        envoy_admin,
    )
    .await;

    // The example is accepted by Envoy as is: traffic on both listeners, no NACK.
    eventually("HTTP listener serves A", || async {
        get_body(http_port, "/").await.filter(|b| b == "upstream-a")
    })
    .await;
    assert_eq!(tcp_get_body(tcp_port).await.as_deref(), Some("upstream-a"));
    let status = cp.status().await;
    for kind in ["clusters", "endpoints", "listeners", "routes"] {
        assert!(
            acked(&status, "demo-node", kind).is_some(),
            "{kind} ACKed: {status}"
        );
        assert!(status["nodes"]["demo-node"]["types"][kind]["last_nack"].is_null());
    }
    let eds_v1 = acked(&status, "demo-node", "endpoints").expect("eds version");

    // Editing the file pushes a new version; traffic moves to B.
    std::fs::write(
        &file,
        good.replace(
            &format!("port_value: {}", a.port),
            &format!("port_value: {}", b.port),
        ),
    )
    .expect("edit");
    let edited = std::time::Instant::now();
    let eds_v2 = eventually("new EDS version ACKed", || async {
        acked(&cp.status().await, "demo-node", "endpoints").filter(|v| *v != eds_v1)
    })
    .await;
    eprintln!("file edit → Envoy ACK in {:?}", edited.elapsed());
    eventually("HTTP listener serves B", || async {
        get_body(http_port, "/").await.filter(|b| b == "upstream-b")
    })
    .await;

    // An invalid file: reported with its field path, nothing pushed, B keeps serving.
    let pushes_before =
        cp.status().await["nodes"]["demo-node"]["types"]["endpoints"]["pushes"].clone();
    std::fs::write(
        &file,
        good.replace("connect_timeout: 1s", "connect_timeout: soon"),
    )
    .expect("break");
    let err = eventually("last_error reported", || async {
        let s = cp.status().await;
        (!s["last_error"].is_null()).then(|| s["last_error"].clone())
    })
    .await;
    assert_eq!(err["path"], "clusters[0].connect_timeout", "{err}");
    assert_eq!(err["source"], "file");
    let status = cp.status().await;
    assert_eq!(
        status["nodes"]["demo-node"]["types"]["endpoints"]["pushes"],
        pushes_before
    );
    assert_eq!(
        acked(&status, "demo-node", "endpoints"),
        Some(eds_v2.clone())
    );
    assert_eq!(
        get_body(http_port, "/").await.as_deref(),
        Some("upstream-b")
    );
    let (code, snapshot) = cp.request("GET", "/snapshot", None).await;
    assert_eq!(code, 200);
    assert!(
        snapshot
            .to_string()
            .contains(&format!("\"port_value\":{}", b.port)),
        "last good snapshot still served"
    );
    assert!(get_body(admin, "/metrics")
        .await
        .expect("metrics")
        .contains("courier_cp_last_load_failed 1"));

    // Fixing the file clears the error.
    std::fs::write(&file, &good).expect("fix");
    eventually("last_error cleared", || async {
        cp.status().await["last_error"].is_null().then_some(())
    })
    .await;
    eventually("HTTP listener serves A again", || async {
        get_body(http_port, "/").await.filter(|b| b == "upstream-a")
    })
    .await;

    // Management API: PUT one resource → pushed and ACKed, traffic follows.
    let body = format!(
        r#"{{"cluster_name": "demo", "endpoints": [{{"lb_endpoints": [{{"endpoint": {{"address": {{"socket_address": {{"address": "127.0.0.1", "port_value": {}}}}}}}}}]}}]}}"#,
        b.port
    );
    let (code, resp) = cp
        .request("PUT", "/resources/endpoints/demo", Some(&body))
        .await;
    assert_eq!(code, 200, "{resp}");
    let v = resp["versions"]["endpoints"]
        .as_str()
        .expect("version")
        .to_string();
    eventually("PUT version ACKed", || async {
        acked(&cp.status().await, "demo-node", "endpoints").filter(|a| *a == v)
    })
    .await;
    eventually("HTTP listener serves B via PUT", || async {
        get_body(http_port, "/").await.filter(|b| b == "upstream-b")
    })
    .await;
    let (code, one) = cp.request("GET", "/resources/endpoints/demo", None).await;
    assert_eq!((code, one["cluster_name"].as_str()), (200, Some("demo")));

    // Invalid API bodies: 400 with the field path; inconsistent changes: 409; unknown: 404.
    let (code, resp) = cp
        .request(
            "PUT",
            "/resources/clusters/demo",
            Some(r#"{"name": "demo", "connect_timeout": "x"}"#),
        )
        .await;
    assert_eq!(
        (code, resp["path"].as_str()),
        (400, Some("connect_timeout")),
        "{resp}"
    );
    let (code, resp) = cp
        .request(
            "PUT",
            "/resources/clusters/other",
            Some(r#"{"name": "demo"}"#),
        )
        .await;
    assert_eq!((code, resp["path"].as_str()), (400, Some("name")), "{resp}");
    let (code, resp) = cp
        .request("DELETE", "/resources/endpoints/demo", None)
        .await;
    assert_eq!(code, 409, "{resp}");
    assert!(
        resp["error"]
            .as_str()
            .unwrap_or("")
            .contains("cluster \"demo\" references EDS"),
        "{resp}"
    );
    let (code, _) = cp
        .request("DELETE", "/resources/listeners/nope", None)
        .await;
    assert_eq!(code, 404);
    assert_eq!(cp.status().await["last_error"]["source"], "api");

    // DELETE the TCP listener → its port closes.
    let (code, resp) = cp.request("DELETE", "/resources/listeners/tcp", None).await;
    assert_eq!(code, 200, "{resp}");
    eventually("TCP listener closed", || async {
        (!port_open(tcp_port).await).then_some(())
    })
    .await;
    assert!(envoy.config_dump().await.contains("\"name\": \"http\""));

    let metrics = get_body(admin, "/metrics").await.expect("metrics");
    assert!(
        metrics.contains("courier_cp_connected_streams{node=\"demo-node\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("courier_cp_acks_total{node=\"demo-node\",type=\"listeners\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_gracefully_and_an_invalid_startup_file_fails_fast() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("resources.yaml");
    std::fs::write(
        &file,
        example_resources(free_port(), free_port(), free_port()),
    )
    .expect("write");
    let mut cp = Cp::start(&file, free_port(), free_port()).await;
    let pid = cp.child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = eventually("courier-cp exits after SIGTERM", || {
        let exited = cp.child.try_wait().ok().flatten();
        async move { exited }
    })
    .await;
    assert!(status.success(), "clean exit: {status:?}");

    std::fs::write(&file, "clusters:\n- name: a\n  connect_timeout: soon\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_courier-cp"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--resources")
        .arg(&file)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("clusters[0].connect_timeout"), "{stderr}");
}
