//! REST-JSON xDS (`api_type: REST`) against servers courier-cp is not: a scripted one that
//! answers every poll as the test says (wrong types, bad JSON, errors, redirects, endless
//! bodies, hangs), and sovereign, a REST control plane from PyPI.

use std::os::unix::process::CommandExt as _;
use std::sync::Arc;

use courier_control_plane::{Resource, ResourceType};
use courier_integration_tests::bootstrap::Mode;
use courier_integration_tests::resources::*;
use courier_integration_tests::scripted_rest::{Reply, ScriptedRest};
use courier_integration_tests::traffic::tcp_hello;
use courier_integration_tests::upstream::Upstream;
use courier_integration_tests::{eventually, free_port, Bootstrap, Proxy, ProxyKind};

use crate::fixture::NODE;

const CDS: &str = "cluster_manager.cds";

/// Waits until `stat` grew past `before`; returns its value.
async fn grew(proxy: &Proxy, stat: &str, before: i64) -> i64 {
    proxy
        .wait_stat(stat, &format!("> {before}"), |v| v > before)
        .await
}

/// Every class of bad answer to a CDS poll is counted as Envoy counts it (`update_rejected`
/// for a body that is not a valid update, `update_failure` for an HTTP error, a redirect
/// (not followed), a body over the limit, no answer within `request_timeout`); the last good
/// clusters keep serving, the next polls still report the last good version, and a good
/// answer afterwards applies. The same assertions hold for Envoy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_bad_answers_are_counted_and_the_last_good_config_serves() {
    let (a, b) = (Upstream::tcp_echo("a").await, Upstream::tcp_echo("b").await);
    let port = free_port();
    let server = ScriptedRest::start().await;
    let ca = static_cluster("ca", &[a.port], "");
    let cb = static_cluster("cb", &[b.port], "");
    let l1 = tcp_listener("l1", port, "ca");
    server.set(
        ResourceType::Cluster,
        Reply::response(ResourceType::Cluster, "1", std::slice::from_ref(&ca)),
    );
    server.set(
        ResourceType::Listener,
        Reply::response(ResourceType::Listener, "1", std::slice::from_ref(&l1)),
    );
    let boot = Bootstrap::ads(NODE, free_port()).mode(Mode::Rest { port: server.port });
    let proxy = Proxy::start(&boot.yaml()).await;
    proxy.wait_live().await;
    eventually("l1 serves a", || async {
        (tcp_hello(port).await.as_deref() == Ok("a")).then_some(())
    })
    .await;
    let first = server.last(ResourceType::Cluster).expect("a CDS poll");
    assert_eq!(first.node.as_ref().map(|n| n.id.as_str()), Some(NODE));
    assert_eq!(
        first.type_url,
        "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    );

    let listener_any: Arc<Resource> = l1.clone();
    let cases: Vec<(&str, Reply, &str)> = vec![
        (
            "a response of the wrong type",
            Reply::typed(
                ResourceType::Listener.type_url(),
                "bad-type",
                &[listener_any],
            ),
            "update_rejected",
        ),
        (
            "undecodable JSON",
            Reply::Body("{ not json".into()),
            "update_rejected",
        ),
        ("an HTTP 500", Reply::Status(500, vec![]), "update_failure"),
        (
            "a redirect",
            Reply::Status(302, vec![("location".into(), "http://127.0.0.1:1/".into())]),
            "update_failure",
        ),
        ("an endless body", Reply::Endless, "update_failure"),
        ("no answer (request_timeout)", Reply::Hang, "update_failure"),
    ];
    for (what, reply, stat) in cases {
        let stat = format!("{CDS}.{stat}");
        let before = proxy.stat(&stat).await.unwrap_or(0);
        let polls = server.polls(ResourceType::Cluster);
        server.set(ResourceType::Cluster, reply);
        grew(&proxy, &stat, before).await;
        // A later poll still reports the last good version.
        eventually(&format!("a poll after {what}"), || async {
            (server.polls(ResourceType::Cluster) > polls + 1).then_some(())
        })
        .await;
        let last = server.last(ResourceType::Cluster).expect("a CDS poll");
        assert_eq!(last.version_info, "1", "after {what}: {last:?}");
        if stat.ends_with("update_rejected") && proxy.kind == ProxyKind::Courier {
            // Courier tells the server why (Envoy sends no error_detail over REST).
            let err = last
                .error_detail
                .as_ref()
                .expect("error_detail after a rejection");
            assert_eq!(err.code, 13, "{what}: {err:?}");
        }
        assert_eq!(
            tcp_hello(port).await.as_deref(),
            Ok("a"),
            "the last good config serves after {what}"
        );
        assert!(proxy.active_clusters().await.contains_key("ca"), "{what}");
    }
    // 304: nothing changes, nothing is counted as a failure.
    server.set(ResourceType::Cluster, Reply::NotModified);
    let failures = proxy
        .stat(&format!("{CDS}.update_failure"))
        .await
        .unwrap_or(0);
    let polls = server.polls(ResourceType::Cluster);
    eventually("two polls answered 304", || async {
        (server.polls(ResourceType::Cluster) > polls + 2).then_some(())
    })
    .await;
    // The poll in flight when 304 was scripted may still have hung until its timeout.
    assert!(
        proxy
            .stat(&format!("{CDS}.update_failure"))
            .await
            .unwrap_or(0)
            <= failures + 1
    );

    // Recovery: a good answer applies, and the next poll reports it.
    server.set(
        ResourceType::Cluster,
        Reply::response(ResourceType::Cluster, "2", &[ca, cb]),
    );
    server.set(
        ResourceType::Listener,
        Reply::response(
            ResourceType::Listener,
            "2",
            &[tcp_listener("l1", port, "cb")],
        ),
    );
    eventually("l1 moved to cb (b)", || async {
        (tcp_hello(port).await.as_deref() == Ok("b")).then_some(())
    })
    .await;
    eventually("the next CDS poll reports version 2", || async {
        let last = server.last(ResourceType::Cluster)?;
        (last.version_info == "2" && last.error_detail.is_none()).then_some(())
    })
    .await;
    assert!(proxy.running(), "the proxy survived every bad answer");
}

/// sovereign (`pip install sovereign`, a REST-only xDS control plane in Python) as a child
/// process in its own process group, stopped (the group: gunicorn and its worker) on drop.
struct Sovereign {
    child: std::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Sovereign {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = std::process::Command::new("kill")
            .args(["-TERM", "--", &group])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// sovereign's templates: clusters and tcp_proxy listeners rendered from the instances of a
/// JSON file source (`kind`, `name`, `port`, `cluster`).
const SOVEREIGN_CLUSTERS: &str = r#"resources:
{% for i in instances if i.kind == 'cluster' %}
  - "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
    name: {{ i.name }}
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: {{ i.name }}
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {{ i.port }} } } }
{% endfor %}
"#;
const SOVEREIGN_LISTENERS: &str = r#"resources:
{% for i in instances if i.kind == 'listener' %}
  - "@type": type.googleapis.com/envoy.config.listener.v3.Listener
    name: {{ i.name }}
    address: { socket_address: { address: 127.0.0.1, port_value: {{ i.port }} } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {{ i.name }}
          cluster: {{ i.cluster }}
{% endfor %}
"#;

impl Sovereign {
    /// The `sovereign` executable: `SOVEREIGN_BIN`, else on PATH.
    fn binary() -> Option<std::path::PathBuf> {
        if let Ok(p) = std::env::var("SOVEREIGN_BIN") {
            return Some(p.into());
        }
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("sovereign"))
                .find(|p| p.is_file())
        })
    }

    /// Starts sovereign serving `instances`; `None` (the test then skips) when it is not
    /// installed.
    async fn start(instances: &serde_json::Value) -> Option<Sovereign> {
        let bin = Sovereign::binary()?;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = |f: &str| dir.path().join(f).display().to_string();
        std::fs::write(path("clusters.yaml"), SOVEREIGN_CLUSTERS).expect("write");
        std::fs::write(path("listeners.yaml"), SOVEREIGN_LISTENERS).expect("write");
        let config = format!(
            "templates:\n  default:\n    - type: clusters\n      spec: {{ protocol: file, serialization: jinja2, path: '{}' }}\n    - type: listeners\n      spec: {{ protocol: file, serialization: jinja2, path: '{}' }}\nsources:\n  - type: file\n    config:\n      spec: {{ protocol: file, serialization: json, path: '{}' }}\nsource_config: {{ refresh_rate: 1 }}\nmatching: {{ enabled: false }}\n",
            path("clusters.yaml"),
            path("listeners.yaml"),
            path("instances.json"),
        );
        std::fs::write(path("config.yaml"), config).expect("write");
        let port = free_port();
        let sov = Sovereign {
            child: std::process::Command::new(bin)
                .env(
                    "SOVEREIGN_CONFIG",
                    format!("file://{}", path("config.yaml")),
                )
                .env("SOVEREIGN_HOST", "127.0.0.1")
                .env("SOVEREIGN_PORT", port.to_string())
                .env("SOVEREIGN_WORKERS", "1")
                .stdout(std::fs::File::create(path("sovereign.log")).expect("log"))
                .stderr(std::fs::File::create(path("sovereign.err")).expect("log"))
                .process_group(0)
                .spawn()
                .expect("start sovereign"),
            port,
            dir,
        };
        sov.serve(instances);
        eventually("sovereign listens", || async {
            courier_integration_tests::proxy::port_open(port)
                .await
                .then_some(())
        })
        .await;
        Some(sov)
    }

    /// Replaces the instances (sovereign re-reads its source every second).
    fn serve(&self, instances: &serde_json::Value) {
        let tmp = self.dir.path().join("instances.json.tmp");
        std::fs::write(&tmp, instances.to_string()).expect("write");
        std::fs::rename(&tmp, self.dir.path().join("instances.json")).expect("rename");
    }
}

/// sovereign, a REST control plane from PyPI, drives the proxy through adding, updating and
/// removing clusters and listeners over REST-JSON (CDS and LDS polled with `api_type:
/// REST`). sovereign answers a type with no resources `404`, so a removal keeps one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_sovereign_drives_add_update_remove() {
    let (a, b) = (Upstream::tcp_echo("a").await, Upstream::tcp_echo("b").await);
    let (p1, p2) = (free_port(), free_port());
    let cluster = |name: &str, port: u16| serde_json::json!({ "kind": "cluster", "name": name, "port": port });
    let listener = |name: &str, port: u16, c: &str| serde_json::json!({ "kind": "listener", "name": name, "port": port, "cluster": c });
    let Some(sov) = Sovereign::start(&serde_json::json!([
        cluster("ca", a.port),
        listener("l1", p1, "ca")
    ]))
    .await
    else {
        eprintln!("SKIPPED: sovereign is not installed (pip install -r scripts/requirements-test.txt, or set SOVEREIGN_BIN)");
        return;
    };
    let boot = Bootstrap::ads(NODE, free_port()).mode(Mode::Rest { port: sov.port });
    let proxy = Proxy::start(&boot.yaml()).await;
    proxy.wait_live().await;
    eventually("l1 serves a (from sovereign)", || async {
        (tcp_hello(p1).await.as_deref() == Ok("a")).then_some(())
    })
    .await;

    // Add a cluster and a listener; update l1 onto the new cluster.
    sov.serve(&serde_json::json!([
        cluster("ca", a.port),
        cluster("cb", b.port),
        listener("l1", p1, "cb"),
        listener("l2", p2, "ca"),
    ]));
    eventually("l1 moved to cb (b)", || async {
        (tcp_hello(p1).await.as_deref() == Ok("b")).then_some(())
    })
    .await;
    eventually("l2 added, serving a", || async {
        (tcp_hello(p2).await.as_deref() == Ok("a")).then_some(())
    })
    .await;

    // Remove l2 and ca.
    sov.serve(&serde_json::json!([
        cluster("cb", b.port),
        listener("l1", p1, "cb")
    ]));
    // The third LDS update is applied (a refused connection alone could be load).
    proxy
        .wait_stat("listener_manager.lds.update_success", ">= 3", |v| v >= 3)
        .await;
    eventually("l2 removed", || async {
        tcp_hello(p2).await.is_err().then_some(())
    })
    .await;
    eventually("ca removed", || async {
        (!proxy.active_clusters().await.contains_key("ca")).then_some(())
    })
    .await;
    assert_eq!(tcp_hello(p1).await.as_deref(), Ok("b"));
    assert!(proxy.stat("cluster_manager.cds.update_success").await >= Some(3));
    assert_eq!(
        proxy.stat("cluster_manager.cds.update_rejected").await,
        Some(0)
    );
}
