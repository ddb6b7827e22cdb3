//! Config sources other than ADS: per-type gRPC streams (SotW and delta), files.

use courier_control_plane::ResourceType;
use courier_integration_tests::bootstrap::{Mode, REST_SOURCE};
use courier_integration_tests::resources::*;
use courier_integration_tests::traffic::{http_get, tcp_hello};
use courier_integration_tests::upstream::Upstream;
use courier_integration_tests::{eventually, free_port, Bootstrap, Cp, Proxy};

use crate::fixture::{Fx, NODE};

async fn per_type_streams(delta: bool) {
    let (a, b) = (Upstream::tcp_echo("a").await, Upstream::tcp_echo("b").await);
    let port = free_port();
    let cp = Cp::start().await;
    let boot = |p| Bootstrap::ads(NODE, p).mode(Mode::PerType { delta });
    let source = boot(0).dependent_source();
    let fx = Fx::with(
        cp,
        boot,
        vec![
            eds_cluster_with("c1", source, ""),
            endpoints("c1", &[a.port]),
            tcp_listener("l1", port, "c1"),
        ],
    )
    .await;
    assert_eq!(tcp_hello(port).await.as_deref(), Ok("a"));
    fx.update(vec![endpoints("c1", &[b.port])]).await;
    eventually("EDS stream moved traffic to b", || async {
        (tcp_hello(port).await.as_deref() == Ok("b")).then_some(())
    })
    .await;
    fx.remove(&[(ResourceType::Listener, "l1")]).await;
    eventually("LDS stream removed l1", || async {
        tcp_hello(port).await.is_err().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_ads_per_type_sotw_streams() {
    per_type_streams(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_ads_per_type_delta_streams() {
    per_type_streams(true).await;
}

async fn http_upstream_of(port: u16) -> Option<String> {
    match http_get(port).await {
        Ok(r) if r.status == 200 => r.upstream().map(str::to_string),
        _ => None,
    }
}

/// REST-JSON xDS (`api_type: REST`) for every type: CDS and LDS polled from the control
/// plane's REST port, EDS and RDS too; clusters, endpoints, listeners and routes are added,
/// updated and removed, each change ACKed through the next poll's `version_info`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_json_sources_add_update_remove() {
    let (a, b) = (Upstream::tcp_echo("a").await, Upstream::tcp_echo("b").await);
    let (ha, hb) = (Upstream::http("ha").await, Upstream::http("hb").await);
    let (port, http_port) = (free_port(), free_port());
    let cp = Cp::start().await;
    let rest_port = cp.rest_port;
    let boot = move |p| Bootstrap::ads(NODE, p).mode(Mode::Rest { port: rest_port });
    assert_eq!(boot(0).dependent_source(), REST_SOURCE);
    let fx = Fx::with(
        cp,
        boot,
        vec![
            eds_cluster_with("c1", REST_SOURCE, ""),
            endpoints("c1", &[a.port]),
            tcp_listener("l1", port, "c1"),
        ],
    )
    .await;
    assert_eq!(tcp_hello(port).await.as_deref(), Ok("a"));

    // EDS update.
    fx.update(vec![endpoints("c1", &[b.port])]).await;
    eventually("EDS over REST moved traffic to b", || async {
        (tcp_hello(port).await.as_deref() == Ok("b")).then_some(())
    })
    .await;

    // CDS add (a new EDS subscription name), LDS update onto it.
    fx.update(vec![
        eds_cluster_with("c2", REST_SOURCE, ""),
        endpoints("c2", &[a.port]),
        tcp_listener("l1", port, "c2"),
    ])
    .await;
    eventually("l1 moved to the new cluster c2 (a)", || async {
        (tcp_hello(port).await.as_deref() == Ok("a")).then_some(())
    })
    .await;

    // LDS add with RDS over REST, then an RDS update.
    fx.update(vec![
        static_cluster("hca", &[ha.port], ""),
        static_cluster("hcb", &[hb.port], ""),
        http_listener_with("hl", http_port, "r1", REST_SOURCE),
        route("r1", "hca"),
    ])
    .await;
    eventually("hl routes to ha", || async {
        (http_upstream_of(http_port).await.as_deref() == Some("ha")).then_some(())
    })
    .await;
    fx.update(vec![route("r1", "hcb")]).await;
    eventually("RDS over REST moved hl to hb", || async {
        (http_upstream_of(http_port).await.as_deref() == Some("hb")).then_some(())
    })
    .await;

    // CDS and LDS removals.
    fx.remove(&[
        (ResourceType::Cluster, "c1"),
        (ResourceType::Listener, "hl"),
    ])
    .await;
    eventually("CDS over REST removed c1", || async {
        (!fx.proxy.active_clusters().await.contains_key("c1")).then_some(())
    })
    .await;
    eventually("LDS over REST removed hl", || async {
        http_get(http_port).await.is_err().then_some(())
    })
    .await;
    assert_eq!(tcp_hello(port).await.as_deref(), Ok("a"));
    fx.remove(&[(ResourceType::Listener, "l1")]).await;
    eventually("LDS over REST removed l1", || async {
        tcp_hello(port).await.is_err().then_some(())
    })
    .await;
    assert!(fx.proxy.stat("cluster_manager.cds.update_success").await >= Some(3));
    assert!(fx.proxy.stat("listener_manager.lds.update_success").await >= Some(3));
}

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
