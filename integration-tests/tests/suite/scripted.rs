//! Protocol-level scenarios against a scripted ADS server that sends what courier-cp never
//! would (wrong type URLs, undecodable bytes, duplicate names) and sees every request
//! (Envoy's ads_integration_test: exact request/ACK order, warming, paused CDS ACK).

use courier_integration_tests::bootstrap::{ADS_SOURCE, NOWHERE_SOURCE};
use courier_integration_tests::resources::*;
use courier_integration_tests::scripted::ScriptedAds;
use courier_integration_tests::traffic::tcp_hello;
use courier_integration_tests::upstream::Upstream;
use courier_integration_tests::{eventually, free_port, Bootstrap, Proxy};
use courier_proto::envoy::service::discovery::v3::DiscoveryRequest;
use courier_proto::google::protobuf::Any;
use prost::Message;

use crate::fixture::NODE;

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

fn nack_message(r: &DiscoveryRequest) -> Option<String> {
    r.error_detail.as_ref().map(|e| e.message.clone())
}

fn assert_ack(r: &DiscoveryRequest, version: &str, nonce: &str) {
    assert_eq!(r.response_nonce, nonce, "ACK echoes the nonce: {r:?}");
    assert_eq!(r.version_info, version, "ACK carries the version: {r:?}");
    assert!(r.error_detail.is_none(), "ACK, not NACK: {r:?}");
}

fn assert_nack(r: &DiscoveryRequest, last_good: &str, nonce: &str, reasons: &[&str]) -> String {
    assert_eq!(r.response_nonce, nonce, "NACK echoes the nonce: {r:?}");
    assert_eq!(
        r.version_info, last_good,
        "NACK carries the last good version"
    );
    let msg = nack_message(r).unwrap_or_else(|| panic!("expected a NACK: {r:?}"));
    assert_eq!(r.error_detail.as_ref().map(|e| e.code), Some(13));
    let lower = msg.to_ascii_lowercase();
    assert!(
        reasons.iter().any(|x| lower.contains(x)),
        "NACK reason not one of {reasons:?}: {msg}"
    );
    msg
}

/// Request/ACK order, node on the first message only, and the NACK classes courier-cp cannot
/// produce: a resource of the wrong type, undecodable bytes, duplicate names; recovery after
/// each; resources wrapped in `Resource`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_level_nacks_and_recovery() {
    let a = Upstream::tcp_echo("a").await;
    let port = free_port();
    let ads = ScriptedAds::start().await;
    let proxy = Proxy::start(&Bootstrap::ads(NODE, ads.port).yaml()).await;
    let mut s = ads.next_stream().await;

    let first = s.recv(CDS).await;
    assert_eq!(first.node.as_ref().map(|n| n.id.as_str()), Some(NODE));
    assert!(first.version_info.is_empty() && first.response_nonce.is_empty());
    assert!(first.resource_names.is_empty() || first.resource_names == ["*"]);

    // 1. A Listener inside a CDS response.
    let listener = tcp_listener("l1", port, "c1");
    let n = s.send(CDS, "1", vec![listener.any().clone()]).await;
    let r = s.recv(CDS).await;
    assert!(r.node.is_none(), "node only on the first message");
    assert_nack(&r, "", &n, &["does not match", "type url", "type_url"]);

    // Recovery with a valid cluster.
    let c1 = static_cluster("c1", &[a.port], "");
    let n = s.send(CDS, "2", vec![c1.any().clone()]).await;
    assert_ack(&s.recv(CDS).await, "2", &n);
    let lds_req = s.recv(LDS).await;
    assert!(lds_req.version_info.is_empty());
    let n = s.send(LDS, "1", vec![listener.any().clone()]).await;
    assert_ack(&s.recv(LDS).await, "1", &n);
    proxy.wait_live().await;
    eventually("l1 serves", || async {
        (tcp_hello(port).await.as_deref() == Ok("a")).then_some(())
    })
    .await;

    // 2. Undecodable bytes claiming to be a Cluster.
    let garbage = Any {
        type_url: CDS.into(),
        value: vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f],
    };
    let n = s.send(CDS, "3", vec![c1.any().clone(), garbage]).await;
    assert_nack(
        &s.recv(CDS).await,
        "2",
        &n,
        &[
            "decode",
            "unpack",
            "parse",
            "invalid",
            "malformed",
            "unable",
        ],
    );
    assert_eq!(tcp_hello(port).await.as_deref(), Ok("a"));

    // 3. Duplicate cluster names: rejected, c1 keeps serving.
    let dupe = static_cluster("dupe", &[a.port], "");
    let n = s
        .send(
            CDS,
            "4",
            vec![c1.any().clone(), dupe.any().clone(), dupe.any().clone()],
        )
        .await;
    let msg = assert_nack(&s.recv(CDS).await, "2", &n, &["duplicate"]);
    assert!(msg.contains("dupe"), "names the duplicate: {msg}");
    assert_eq!(tcp_hello(port).await.as_deref(), Ok("a"));

    // 4. Duplicate listener names.
    let n = s
        .send(
            LDS,
            "2",
            vec![listener.any().clone(), listener.any().clone()],
        )
        .await;
    let msg = assert_nack(&s.recv(LDS).await, "1", &n, &["duplicate"]);
    assert!(msg.contains("l1"), "names the duplicate: {msg}");
    assert_eq!(tcp_hello(port).await.as_deref(), Ok("a"));

    // 5. Resources wrapped in envoy.service.discovery.v3.Resource are unwrapped.
    let c2 = static_cluster("c2", &[a.port], "");
    let wrapped = |r: &courier_control_plane::Resource| Any {
        type_url: "type.googleapis.com/envoy.service.discovery.v3.Resource".into(),
        value: courier_proto::envoy::service::discovery::v3::Resource {
            name: r.name().to_string(),
            version: "w1".into(),
            resource: Some(r.any().clone()),
            ..Default::default()
        }
        .encode_to_vec(),
    };
    let n = s.send(CDS, "5", vec![wrapped(&c1), wrapped(&c2)]).await;
    assert_ack(&s.recv(CDS).await, "5", &n);
    eventually("c2 active", || async {
        proxy
            .active_clusters()
            .await
            .contains_key("c2")
            .then_some(())
    })
    .await;
    assert!(proxy.stat("cluster_manager.cds.update_rejected").await >= Some(3));
    assert!(proxy.stat("listener_manager.lds.update_rejected").await >= Some(1));
    assert!(proxy.running());
}

/// Cluster warming on ADS (Envoy's ads_integration_test): the first cluster warms until its
/// EDS arrives (`warming_clusters` 1 → 0, not LIVE meanwhile); updating the warming cluster
/// keeps it warming on the same EDS name; a response naming a resource nobody asked for is
/// ignored; after init, a cluster whose EDS never answers warms, and removing it ends the
/// warming. (Envoy ACKs CDS at once during init and holds the ACK while clusters warm after
/// init; the server here sends regardless of ACKs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_warming_update_and_remove() {
    let a = Upstream::tcp_echo("a").await;
    let ads = ScriptedAds::start().await;
    let proxy = Proxy::start(&Bootstrap::ads(NODE, ads.port).yaml()).await;
    let mut s = ads.next_stream().await;
    s.recv(CDS).await;
    s.send(CDS, "1", vec![eds_cluster("w").any().clone()]).await;
    let eds_req = s.recv(EDS).await;
    assert_eq!(eds_req.resource_names, ["w"]);
    proxy
        .wait_stat("cluster_manager.warming_clusters", "== 1", |v| v == 1)
        .await;
    assert!(
        !proxy.is_live().await,
        "not LIVE while the first cluster warms"
    );
    // Update the warming cluster.
    let w2 = eds_cluster_with(
        "w",
        ADS_SOURCE,
        "per_connection_buffer_limit_bytes: 32768
",
    );
    s.send(CDS, "2", vec![w2.any().clone()]).await;
    // The EDS response also carries an unrequested name: ignored, not NACKed.
    let n_eds = s
        .send(
            EDS,
            "1",
            vec![
                endpoints("w", &[a.port]).any().clone(),
                endpoints("unrequested", &[a.port]).any().clone(),
            ],
        )
        .await;
    let ack = loop {
        let r = s.recv(EDS).await;
        if r.response_nonce == n_eds {
            break r;
        }
    };
    assert_ack(&ack, "1", &n_eds);
    let lds = s.recv(LDS).await;
    assert!(lds.error_detail.is_none());
    s.send(LDS, "1", vec![]).await;
    proxy.wait_live().await;
    proxy
        .wait_stat("cluster_manager.warming_clusters", "== 0", |v| v == 0)
        .await;
    proxy.wait_hosts("w", &[a.port]).await;

    // After init: x's EDS never answers, so x warms; removing it ends the warming.
    let x = eds_cluster_with("x", NOWHERE_SOURCE, "");
    s.send(CDS, "3", vec![w2.any().clone(), x.any().clone()])
        .await;
    proxy
        .wait_stat("cluster_manager.warming_clusters", "== 1", |v| v == 1)
        .await;
    assert_eq!(proxy.warming_clusters().await, vec!["x".to_string()]);
    s.send(CDS, "4", vec![w2.any().clone()]).await;
    proxy
        .wait_stat("cluster_manager.warming_clusters", "== 0", |v| v == 0)
        .await;
    assert!(!proxy.active_clusters().await.contains_key("x"));
    assert!(proxy.active_clusters().await.contains_key("w"));
}

/// After the first CDS request: CDS `cds_version` with the static cluster `c1`, then LDS
/// `lds_version` with no listeners, each ACKed.
async fn serve_c1_and_no_listeners(
    s: &mut courier_integration_tests::scripted::ScriptedStream,
    cds_version: &str,
    lds_version: &str,
) {
    let n = s
        .send(
            CDS,
            cds_version,
            vec![static_cluster("c1", &[1], "").any().clone()],
        )
        .await;
    assert_ack(&s.recv(CDS).await, cds_version, &n);
    s.recv(LDS).await;
    let n = s.send(LDS, lds_version, vec![]).await;
    assert_ack(&s.recv(LDS).await, lds_version, &n);
}

/// Stream reset: the proxy reconnects and re-sends its subscriptions with the last accepted
/// version, a node, and no nonce.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_resends_last_version_and_node() {
    let ads = ScriptedAds::start().await;
    let proxy = Proxy::start(&Bootstrap::ads(NODE, ads.port).yaml()).await;
    let mut s = ads.next_stream().await;
    s.recv(CDS).await;
    serve_c1_and_no_listeners(&mut s, "7", "3").await;
    proxy.wait_live().await;
    drop(s); // ends the stream
    let mut s2 = ads.next_stream().await;
    let first = s2.recv_any().await;
    assert_eq!(first.node.as_ref().map(|n| n.id.as_str()), Some(NODE));
    let (mut cds, mut lds) = (None, None);
    let mut r = first;
    loop {
        match r.type_url.as_str() {
            CDS => cds = Some(r),
            LDS => lds = Some(r),
            _ => {}
        }
        if cds.is_some() && lds.is_some() {
            break;
        }
        r = s2.recv_any().await;
    }
    let (cds, lds) = (cds.expect("cds"), lds.expect("lds"));
    assert_eq!(cds.version_info, "7");
    assert!(cds.response_nonce.is_empty());
    assert_eq!(lds.version_info, "3");
    assert!(lds.response_nonce.is_empty());
    assert!(proxy.active_clusters().await.contains_key("c1"));
}

/// Delta's first CDS and LDS requests subscribe with an empty list (the legacy wildcard,
/// XDS.md rule 11), as Envoy 1.40 does: a server that predates the explicit `"*"` reads
/// that as a resource name and would send nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_subscribes_to_the_wildcard_with_an_empty_first_request() {
    let ads = ScriptedAds::start().await;
    let _proxy = Proxy::start(&Bootstrap::delta_ads(NODE, ads.port).yaml()).await;
    let mut s = ads.next_delta_stream().await;
    let cds = s.recv(CDS).await;
    assert!(
        cds.resource_names_subscribe.is_empty(),
        "first CDS request: {:?}",
        cds.resource_names_subscribe
    );
    // No clusters: initialisation goes on to LDS.
    s.send_empty(CDS, "1").await;
    let lds = s.recv(LDS).await;
    assert!(
        lds.resource_names_subscribe.is_empty(),
        "first LDS request: {:?}",
        lds.resource_names_subscribe
    );
}

/// ADS through a local agent on a Unix-domain socket, as Istio's and Kuma's bootstraps
/// reach their control plane: an `envoy_grpc` cluster whose endpoint is a `pipe`, and a
/// `google_grpc` `unix:` target. The stream opens with the `initial_metadata`, the node is
/// sent, a response is ACKed. (`grpc.default_authority`: Envoy's gRPC client would
/// otherwise send the socket path as `:authority`, which the test's server refuses.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ads_over_a_unix_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (i, how) in ["envoy_grpc", "google_grpc"].into_iter().enumerate() {
        let socket = dir.path().join(format!("xds-{i}.sock"));
        let ads = ScriptedAds::start_unix(&socket).await;
        let service = match how {
            "envoy_grpc" => "envoy_grpc: { cluster_name: agent }".to_string(),
            _ => format!(
                "google_grpc: {{ target_uri: 'unix:{}', stat_prefix: agent, channel_args: {{ args: {{ grpc.default_authority: {{ string_value: localhost }} }} }} }}",
                socket.display()
            ),
        };
        let service =
            format!("{service}, initial_metadata: [{{ key: x-agent-token, value: t{i} }}]");
        let yaml = format!(
            r#"node: {{ id: {NODE}, cluster: it-cluster }}
admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }} }}
dynamic_resources:
  ads_config: {{ api_type: GRPC, transport_api_version: V3, grpc_services: [{{ {service} }}] }}
  cds_config: {{ ads: {{}}, resource_api_version: V3 }}
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
static_resources:
  clusters:
  - name: agent
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: agent
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ pipe: {{ path: '{}' }} }} }} }}] }}]
"#,
            socket.display()
        );
        let proxy = Proxy::start(&yaml).await;
        let mut s = ads.next_stream().await;
        assert_eq!(
            s.metadata
                .get("x-agent-token")
                .and_then(|v| v.to_str().ok()),
            Some(format!("t{i}").as_str()),
            "{how}: initial_metadata sent"
        );
        let first = s.recv(CDS).await;
        assert_eq!(
            first.node.as_ref().map(|n| n.id.as_str()),
            Some(NODE),
            "{how}: the first request carries the node"
        );
        serve_c1_and_no_listeners(&mut s, "1", "1").await;
        proxy.wait_live().await;
        assert!(
            proxy.active_clusters().await.contains_key("c1"),
            "{how}: CDS over the Unix socket applied"
        );
    }
}

/// A wildcard mixed with a name: delta CDS starts as the legacy wildcard (an empty first
/// request); when on-demand CDS then asks for one cluster, the request subscribes to that
/// name alone — what Envoy 1.40 sends (measured with this test; XDS.md rule 11 reads as if
/// an explicit `"*"` came with it) — and the cluster serves the waiting request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_cds_next_to_the_legacy_wildcard_subscribes_by_name() {
    const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    let up = Upstream::http("od").await;
    let port = free_port();
    let ads = ScriptedAds::start().await;
    let _proxy = Proxy::start(&Bootstrap::delta_ads(NODE, ads.port).yaml()).await;
    let mut s = ads.next_delta_stream().await;
    let cds = s.recv(CDS).await;
    assert!(
        cds.resource_names_subscribe.is_empty(),
        "legacy wildcard first"
    );
    s.send_empty(CDS, "1").await;
    s.recv(LDS).await;
    let listener = on_demand_http_listener(
        "l1",
        port,
        "r1",
        "{ ads: {}, resource_api_version: V3 }",
        "5s",
    );
    s.send(LDS, "1", vec![("l1".into(), listener.any().clone())])
        .await;
    s.recv(RDS).await;
    let route = route_yaml(
        "name: r1\nvirtual_hosts: [{ name: all, domains: ['*'], routes: [{ match: { prefix: / }, route: { cluster: od } }] }]\n",
    );
    s.send(RDS, "1", vec![("r1".into(), route.any().clone())])
        .await;
    eventually("l1 listens", || async {
        courier_integration_tests::proxy::port_open(port)
            .await
            .then_some(())
    })
    .await;
    let request =
        tokio::spawn(async move { courier_integration_tests::traffic::http_get(port).await });
    // The on-demand request: the cluster's name, alone.
    let odcds = loop {
        let r = s.recv(CDS).await;
        if !r.resource_names_subscribe.is_empty() {
            break r;
        }
    };
    assert_eq!(odcds.resource_names_subscribe, ["od"], "{odcds:?}");
    s.send(
        CDS,
        "2",
        vec![(
            "od".into(),
            static_cluster("od", &[up.port], "").any().clone(),
        )],
    )
    .await;
    let r = request.await.expect("request task").expect("response");
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream(), Some("od"));
}

/// xDS TTLs on delta: a cluster sent in a `Resource` wrapper with a `ttl` stays while
/// heartbeats (the wrapper without the resource) refresh it, and goes away once they stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_with_a_ttl_expires_unless_heartbeats_refresh_it() {
    use courier_integration_tests::scripted::DeltaResource;
    use std::time::{Duration, Instant};
    let ttl = || {
        Some(courier_proto::google::protobuf::Duration {
            seconds: 1,
            nanos: 0,
        })
    };
    let ads = ScriptedAds::start().await;
    let proxy = Proxy::start(&Bootstrap::delta_ads(NODE, ads.port).yaml()).await;
    let mut s = ads.next_delta_stream().await;
    s.recv(CDS).await;
    let cluster = DeltaResource {
        name: "t".into(),
        version: "1".into(),
        resource: Some(static_cluster("t", &[1], "").any().clone()),
        ttl: ttl(),
        ..Default::default()
    };
    s.send_resources(CDS, "1", vec![cluster]).await;
    s.recv(LDS).await;
    s.send_empty(LDS, "1").await;
    proxy.wait_live().await;
    assert!(proxy.active_clusters().await.contains_key("t"));
    // Heartbeats every 400 ms for 2 s: the cluster outlives its 1 s TTL.
    let heartbeat = || DeltaResource {
        name: "t".into(),
        version: "1".into(),
        ttl: ttl(),
        ..Default::default()
    };
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        s.send_resources(CDS, "1", vec![heartbeat()]).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            proxy.active_clusters().await.contains_key("t"),
            "refreshed by heartbeats"
        );
    }
    // No more heartbeats: it expires.
    eventually("t expired", || async {
        (!proxy.active_clusters().await.contains_key("t")).then_some(())
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(2300),
        "not before its TTL: {:?}",
        started.elapsed()
    );
}

/// A response far above gRPC's default 4 MiB message limit (100,000 clusters in one
/// response are tens of MiB) is taken, as Envoy takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_above_four_mebibytes_is_accepted() {
    let ads = ScriptedAds::start().await;
    let proxy = Proxy::start(&Bootstrap::ads(NODE, ads.port).yaml()).await;
    let mut s = ads.next_stream().await;
    s.recv(CDS).await;
    let blob = "x".repeat(700 * 1024);
    let clusters: Vec<Any> = (0..8)
        .map(|i| {
            static_cluster(
                &format!("big{i}"),
                &[1],
                &format!("metadata: {{ filter_metadata: {{ bench: {{ blob: {blob} }} }} }}"),
            )
            .any()
            .clone()
        })
        .collect();
    assert!(clusters.iter().map(|a| a.value.len()).sum::<usize>() > 5 << 20);
    let n = s.send(CDS, "1", clusters).await;
    assert_ack(&s.recv(CDS).await, "1", &n);
    s.recv(LDS).await;
    s.send(LDS, "1", vec![]).await;
    proxy.wait_live().await;
    assert!(proxy.active_clusters().await.contains_key("big7"));
}
