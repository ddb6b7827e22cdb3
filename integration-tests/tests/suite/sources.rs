//! Config sources other than gRPC streams: files. (Every stream mode, and REST, runs the
//! same scenario in `matrix`.)

use courier_integration_tests::bootstrap::Mode;
use courier_integration_tests::resources::*;
use courier_integration_tests::traffic::tcp_hello;
use courier_integration_tests::upstream::Upstream;
use courier_integration_tests::{eventually, free_port, Bootstrap, Proxy};

use crate::fixture::NODE;

/// `path_config_source` files for CDS and LDS: initial load, reload on replace, an invalid
/// file is rejected (update_rejected) and the last good config keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_config_source_reload() {
    let (a, b) = (Upstream::tcp_echo("a").await, Upstream::tcp_echo("b").await);
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cds, lds) = (dir.path().join("cds.json"), dir.path().join("lds.json"));
    write_discovery_file(
        &cds,
        "1",
        &[
            static_cluster("ca", &[a.port], ""),
            static_cluster("cb", &[b.port], ""),
        ],
    );
    write_discovery_file(&lds, "1", &[tcp_listener("l1", port, "ca")]);
    let boot = Bootstrap::ads(NODE, free_port()).mode(Mode::Files {
        cds: cds.clone(),
        lds: lds.clone(),
    });
    let proxy = Proxy::start(&boot.yaml()).await;
    proxy.wait_live().await;
    eventually("l1 serves a", || async {
        (tcp_hello(port).await.as_deref() == Ok("a")).then_some(())
    })
    .await;
    write_discovery_file(&lds, "2", &[tcp_listener("l1", port, "cb")]);
    eventually("reloaded l1 serves b", || async {
        (tcp_hello(port).await.as_deref() == Ok("b")).then_some(())
    })
    .await;
    assert_eq!(proxy.lds_version().await, "2");
    // An invalid file (a listener without an address) is rejected; b keeps serving.
    let bad = listener_yaml("name: bad\nfilter_chains: []\n");
    write_discovery_file(&lds, "3", &[tcp_listener("l1", port, "cb"), bad]);
    proxy
        .wait_stat("listener_manager.lds.update_rejected", ">= 1", |v| v >= 1)
        .await;
    assert_eq!(tcp_hello(port).await.as_deref(), Ok("b"));
    // A file that does not parse: an update failure (Envoy: parsed-but-invalid is
    // `update_rejected`, unparsable is `update_failure`).
    std::fs::write(dir.path().join("junk"), "{ not json").expect("write");
    std::fs::rename(dir.path().join("junk"), &cds).expect("rename");
    proxy
        .wait_stat("cluster_manager.cds.update_failure", ">= 1", |v| v >= 1)
        .await;
    assert_eq!(tcp_hello(port).await.as_deref(), Ok("b"));
}
