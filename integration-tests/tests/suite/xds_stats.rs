//! Envoy's xDS stats, value for value: the same steps run through Courier and Envoy 1.40
//! side by side (one control plane, one node each, identical resources), in each of the
//! four gRPC modes; afterwards every `control_plane.*`, `cluster_manager.cds.*`,
//! `listener_manager.lds.*`, `cluster.<name>.*` subscription stat and
//! `http.<prefix>.rds.<name>.*` must be equal. Times (`update_time`,
//! `config_reload_time_ms`) are compared by presence; histograms by name (Envoy shows
//! their values only after a stats flush).
//!
//! Runs once, in the Courier pass of the suite, and only where `envoy` is installed.

use std::sync::Arc;

use courier_control_plane::{Resource, ResourceType};
use courier_integration_tests::bootstrap::Mode;
use courier_integration_tests::proxy::ProxyOptions;
use courier_integration_tests::resources::*;
use courier_integration_tests::{Bootstrap, Cp, Proxy, ProxyKind};

use crate::fixture::snapshot;

/// The xDS stats of a `/stats` text, normalised for comparison.
fn xds_stats(text: &str) -> Vec<String> {
    let mut out: Vec<String> = text
        .lines()
        .filter(|l| {
            l.starts_with("control_plane.")
                || l.starts_with("cluster_manager.cds.")
                || l.starts_with("listener_manager.lds.")
                || l.starts_with("cluster.c")
                || l.starts_with("http.l1.rds.")
        })
        .filter(|l| {
            // Subscription stats of clusters (not their traffic stats).
            !l.starts_with("cluster.c")
                || l.contains(".update_")
                || l.contains(".version")
                || l.contains(".init_fetch_timeout")
                || l.contains(".control_plane.")
        })
        .map(|l| {
            let (name, value) = l.split_once(": ").unwrap_or((l, ""));
            if name.ends_with("update_time")
                || name.ends_with("config_reload_time_ms")
                || name.ends_with("update_duration")
            {
                format!("{name}: <set: {}>", value != "0")
            } else {
                l.to_string()
            }
        })
        .collect();
    out.sort();
    out
}

/// The resources of the scenario; `source` is the EDS/RDS config source of the mode.
fn resources(source: &str, route_to: &str, c1_ports: &[u16]) -> Vec<Arc<Resource>> {
    vec![
        eds_cluster_with("c1", source, ""),
        eds_cluster_with("c2", source, ""),
        endpoints("c1", c1_ports),
        endpoints("c2", &[2]),
        // Not bound: both proxies take the same listener.
        listener_yaml(&format!(
            r#"name: l1
address: {{ socket_address: {{ address: 127.0.0.1, port_value: 1 }} }}
bind_to_port: false
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: l1
      rds: {{ route_config_name: r1, config_source: {source} }}
      http_filters:
      - name: envoy.filters.http.router
        typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"#
        )),
        route("r1", route_to),
    ]
}

/// A change to the snapshot: upserts, removals, and the type whose ACK ends it.
type Step = (
    Vec<Arc<Resource>>,
    Vec<(ResourceType, String)>,
    ResourceType,
);

async fn same_stats_as_envoy(mode: Mode) {
    if ProxyKind::from_env() != ProxyKind::Courier {
        return;
    }
    if which_envoy().is_none() {
        eprintln!("skipped: no envoy on PATH to compare with");
        return;
    }
    let cp = Cp::start().await;
    let nodes = ["stats-courier", "stats-envoy"];
    let boot = |node: &str| Bootstrap::ads(node, cp.port).mode(mode.clone());
    let source = boot(nodes[0]).dependent_source();
    let first = snapshot(resources(source, "c1", &[1]));
    for node in nodes {
        cp.set(node, first.clone());
    }
    let courier = Proxy::start_with(
        ProxyKind::Courier,
        &boot(nodes[0]).yaml(),
        ProxyOptions::default(),
    )
    .await;
    let envoy = Proxy::start_with(
        ProxyKind::Envoy,
        &boot(nodes[1]).yaml(),
        ProxyOptions::default(),
    )
    .await;
    for node in nodes {
        cp.ack_all(node, &first).await;
    }
    courier.wait_live().await;
    envoy.wait_live().await;
    // Steps: new endpoints; the route moves to c2; c1 goes away.
    let steps: [Step; 3] = [
        (
            vec![endpoints("c1", &[1, 3])],
            vec![],
            ResourceType::Endpoint,
        ),
        (vec![route("r1", "c2")], vec![], ResourceType::Route),
        (
            vec![],
            vec![
                (ResourceType::Cluster, "c1".into()),
                (ResourceType::Endpoint, "c1".into()),
            ],
            ResourceType::Cluster,
        ),
    ];
    for (up, rm, kind) in steps {
        for node in nodes {
            let s = cp
                .cp
                .cache()
                .update_resources(node, up.clone(), rm.clone())
                .expect("consistent change");
            cp.ack(node, kind, s.version(kind)).await;
        }
    }
    // Both proxies have ACKed every step; a subscription whose stream answered after the
    // ACK that was waited for (per-type streams ACK on their own) settles shortly after.
    let mut last = (Vec::new(), Vec::new());
    let settled = tokio::time::timeout(courier_integration_tests::FACT_TIMEOUT, async {
        loop {
            let (c, e) = (
                xds_stats(&courier.stats_text().await),
                xds_stats(&envoy.stats_text().await),
            );
            if c == e {
                return;
            }
            last = (c, e);
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    if settled.is_err() {
        let (c, e) = last;
        let missing: Vec<&String> = e.iter().filter(|l| !c.contains(l)).collect();
        let extra: Vec<&String> = c.iter().filter(|l| !e.contains(l)).collect();
        panic!(
            "{mode:?}: xDS stats differ from Envoy's\n  Envoy only:   {missing:#?}\n  Courier only: {extra:#?}"
        );
    }
}

fn which_envoy() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("envoy"))
            .find(|p| p.is_file())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ads_sotw_stats_equal_envoys() {
    same_stats_as_envoy(Mode::Ads { delta: false }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ads_delta_stats_equal_envoys() {
    same_stats_as_envoy(Mode::Ads { delta: true }).await;
}

/// Per-type streams: each subscription has a stream of its own, so each has its own
/// `control_plane.*` under its scope (`cluster.c1.control_plane.connected_state`…).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_type_sotw_stats_equal_envoys() {
    same_stats_as_envoy(Mode::PerType { delta: false }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_type_delta_stats_equal_envoys() {
    same_stats_as_envoy(Mode::PerType { delta: true }).await;
}
