//! xDS protocol semantics of the server, driven by a scripted gRPC client so every request
//! and response is observed exactly (XDS.md rules 2–7, 11–14, 20–23).
//!
//! "No response" is never asserted with a sleep: the test causes a later, different
//! response and checks that it is the next message on the stream.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use courier_control_plane::{
    ControlPlane, ResourceType, ServerConfig, Snapshot, SnapshotCache, XdsServerHandle,
};
use courier_proto::envoy::config::core::v3::Node;
use courier_proto::envoy::service::cluster::v3::cluster_discovery_service_client::ClusterDiscoveryServiceClient;
use courier_proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use courier_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use courier_proto::google::rpc::Status as RpcStatus;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

const NODE: &str = "node-1";
const RECV_TIMEOUT: Duration = Duration::from_secs(10);

fn node() -> Option<Node> {
    Some(Node {
        id: NODE.to_string(),
        cluster: "svc".to_string(),
        ..Default::default()
    })
}

struct Sotw {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

impl Sotw {
    async fn ads(server: &XdsServerHandle) -> Sotw {
        let mut client = AggregatedDiscoveryServiceClient::connect(url(server.local_addr()))
            .await
            .expect("connect");
        let (tx, rx) = mpsc::channel(16);
        let rx = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .expect("open ADS")
            .into_inner();
        Sotw { tx, rx }
    }

    async fn send(&self, kind: ResourceType, names: &[&str], version: &str, nonce: &str) {
        self.send_req(DiscoveryRequest {
            node: node(),
            type_url: kind.type_url().to_string(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            version_info: version.to_string(),
            response_nonce: nonce.to_string(),
            ..Default::default()
        })
        .await;
    }

    async fn send_req(&self, req: DiscoveryRequest) {
        self.tx.send(req).await.expect("request stream open");
    }

    async fn ack(&self, resp: &DiscoveryResponse, names: &[&str]) {
        let kind = ResourceType::from_type_url(&resp.type_url).expect("known type");
        self.send(kind, names, &resp.version_info, &resp.nonce)
            .await;
    }

    async fn recv(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(RECV_TIMEOUT, self.rx.message())
            .await
            .expect("a response in time")
            .expect("stream ok")
            .expect("stream open")
    }
}

fn names(resp: &DiscoveryResponse) -> Vec<String> {
    resp.resources
        .iter()
        .map(|any| {
            courier_control_plane::Resource::from_any(any)
                .expect("decodes")
                .name()
                .to_string()
        })
        .collect()
}

fn base_snapshot() -> Snapshot {
    Snapshot::builder()
        .resource(eds_cluster("c1"))
        .resource(endpoints("c1", &[1001]))
        .resource(eds_cluster("c2"))
        .resource(endpoints("c2", &[1002]))
        .resource(http_listener("l1", 2001, "r1"))
        .resource(route("r1", "c1"))
        .build()
        .expect("consistent")
}

async fn start(cp: &ControlPlane) -> XdsServerHandle {
    cp.start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("start")
}

#[test]
fn inconsistent_snapshots_are_refused_with_a_clear_error() {
    let err = Snapshot::builder()
        .resource(eds_cluster("c1"))
        .resource(http_listener("l1", 2001, "r1"))
        .build()
        .expect_err("missing EDS and RDS");
    let msg = err.to_string();
    assert!(
        msg.contains("cluster \"c1\" references EDS cluster_load_assignment \"c1\""),
        "{msg}"
    );
    assert!(
        msg.contains("listener \"l1\" references RDS route_configuration \"r1\""),
        "{msg}"
    );

    let dup = Snapshot::builder()
        .resource(endpoints("c1", &[1]))
        .resource(endpoints("c1", &[2]))
        .build()
        .expect_err("duplicate");
    assert_eq!(
        dup.to_string(),
        "duplicate cluster_load_assignment name \"c1\""
    );

    // Updates keep the snapshot consistent too, and fail atomically.
    let cache = SnapshotCache::new();
    cache.set_snapshot(NODE, base_snapshot());
    let before = cache.snapshot(NODE).expect("snapshot");
    let err = cache
        .remove_resource(NODE, ResourceType::Endpoint, "c1")
        .expect_err("c1 still needs its endpoints");
    assert!(err.to_string().contains("cluster \"c1\""), "{err}");
    assert_eq!(cache.snapshot(NODE).expect("snapshot"), before);
    let err = cache
        .remove_resource(NODE, ResourceType::Cluster, "nope")
        .expect_err("unknown");
    assert_eq!(err.to_string(), "no cluster named \"nope\" in the snapshot");
}

#[test]
fn versions_are_content_derived_and_per_type() {
    let a = base_snapshot();
    let b = base_snapshot();
    for t in ResourceType::ALL {
        assert_eq!(a.version(t), b.version(t), "same content, same version");
    }
    let c = a
        .with_changes([endpoints("c1", &[9999])], [])
        .expect("update");
    assert_ne!(
        c.version(ResourceType::Endpoint),
        a.version(ResourceType::Endpoint)
    );
    assert_eq!(
        c.version(ResourceType::Cluster),
        a.version(ResourceType::Cluster)
    );
    let explicit = Snapshot::builder().version("v7").build().expect("empty");
    assert_eq!(explicit.version(ResourceType::Listener), "v7");
}

#[tokio::test]
async fn sotw_ack_does_not_cause_a_push_and_updates_status() {
    let cp = ControlPlane::new();
    let s = cp.cache().set_snapshot(NODE, base_snapshot());
    let server = start(&cp).await;
    let mut c = Sotw::ads(&server).await;

    c.send(ResourceType::Cluster, &[], "", "").await;
    let cds = c.recv().await;
    assert_eq!(cds.version_info, s.version(ResourceType::Cluster));
    assert_eq!(names(&cds), ["c1", "c2"]);
    c.ack(&cds, &[]).await;
    cp.status()
        .wait_for_ack(NODE, ResourceType::Cluster, &cds.version_info, RECV_TIMEOUT)
        .await
        .expect("ack recorded");

    // The next message after the ACK is the EDS answer, not a CDS repeat.
    c.send(ResourceType::Endpoint, &["c1"], "", "").await;
    let eds = c.recv().await;
    assert_eq!(eds.type_url, ResourceType::Endpoint.type_url());
    assert_eq!(names(&eds), ["c1"]);

    let st = cp.status().node(NODE).expect("status");
    assert_eq!(st.connected_streams, 1);
    assert_eq!(st.of(ResourceType::Cluster).pushes, 1);
    assert_eq!(st.of(ResourceType::Cluster).acks, 1);
    assert!(cp
        .status()
        .render_prometheus()
        .contains("courier_cp_acks_total{node=\"node-1\",type=\"clusters\"} 1"));
}

#[tokio::test]
async fn sotw_nack_is_recorded_and_not_resent_until_the_snapshot_changes() {
    let cp = ControlPlane::new();
    cp.cache().set_snapshot(NODE, base_snapshot());
    let server = start(&cp).await;
    let mut c = Sotw::ads(&server).await;

    c.send(ResourceType::Listener, &[], "", "").await;
    let lds = c.recv().await;
    c.ack(&lds, &[]).await;
    let v2 = cp
        .cache()
        .update_resource(NODE, tcp_listener("l2", 2002, "c1"))
        .expect("update");
    let lds2 = c.recv().await;
    assert_eq!(lds2.version_info, v2);
    // NACK: version_info stays the last accepted one, error_detail says why.
    c.send_req(DiscoveryRequest {
        type_url: ResourceType::Listener.type_url().to_string(),
        version_info: lds.version_info.clone(),
        response_nonce: lds2.nonce.clone(),
        error_detail: Some(RpcStatus {
            code: 13,
            message: "l2: bad listener".to_string(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    let nack = cp
        .status()
        .wait_for_nack(NODE, ResourceType::Listener, &v2, RECV_TIMEOUT)
        .await
        .expect("nack recorded");
    assert_eq!(nack.message, "l2: bad listener");
    assert_eq!(nack.current_version, lds.version_info);
    assert_eq!(
        cp.status().acked_version(NODE, ResourceType::Listener),
        Some(lds.version_info.clone())
    );

    // Not re-sent: the next LDS response is the one for the next snapshot change.
    let v3 = cp
        .cache()
        .remove_resource(NODE, ResourceType::Listener, "l2")
        .expect("remove");
    let lds3 = c.recv().await;
    assert_eq!(lds3.version_info, v3);
    assert_eq!(
        names(&lds3),
        ["l1"],
        "SotW LDS carries the full set; l2 is gone by absence"
    );
}

#[tokio::test]
async fn sotw_stale_nonce_is_ignored_and_one_response_per_type_is_in_flight() {
    let cp = ControlPlane::new();
    cp.cache().set_snapshot(NODE, base_snapshot());
    let server = start(&cp).await;
    let mut c = Sotw::ads(&server).await;

    c.send(ResourceType::Endpoint, &["c1"], "", "").await;
    let first = c.recv().await;
    // Two updates while the first response is un-ACKed: nothing is sent until the ACK, and
    // then only the latest state (batched).
    cp.cache()
        .update_resource(NODE, endpoints("c1", &[3001]))
        .expect("u1");
    let v = cp
        .cache()
        .update_resource(NODE, endpoints("c1", &[3002]))
        .expect("u2");
    // A request with an unknown nonce is stale: ignored (also its names).
    c.send(ResourceType::Endpoint, &["c1", "c2"], "", "999")
        .await;
    c.ack(&first, &["c1"]).await;
    let next = c.recv().await;
    assert_eq!(next.version_info, v, "the latest version, once");
    assert_eq!(
        names(&next),
        ["c1"],
        "the stale request's names were ignored"
    );
    // A subscription change that adds a name is answered at the same version.
    c.send(
        ResourceType::Endpoint,
        &["c1", "c2"],
        &next.version_info,
        &next.nonce,
    )
    .await;
    let more = c.recv().await;
    assert_eq!(more.version_info, v);
    assert_eq!(names(&more), ["c1", "c2"]);
}

#[tokio::test]
async fn sotw_named_resources_that_do_not_exist_yet_are_sent_when_they_appear() {
    let cp = ControlPlane::new();
    cp.cache().set_snapshot(NODE, base_snapshot());
    let server = start(&cp).await;
    let mut c = Sotw::ads(&server).await;

    c.send(ResourceType::Endpoint, &["c1", "later"], "", "")
        .await;
    let eds = c.recv().await;
    assert_eq!(names(&eds), ["c1"], "non-strict: what exists is sent");
    c.ack(&eds, &["c1", "later"]).await;
    let v = cp
        .cache()
        .update_resource(NODE, endpoints("later", &[4000]))
        .expect("add");
    let eds2 = c.recv().await;
    assert_eq!(eds2.version_info, v);
    assert_eq!(names(&eds2), ["c1", "later"]);
}

#[tokio::test]
async fn sotw_strict_ads_waits_for_every_requested_name() {
    let cp = ControlPlane::with_cache(
        SnapshotCache::new(),
        ServerConfig {
            ads_strict: true,
            tls: None,
        },
    );
    cp.cache().set_snapshot(NODE, base_snapshot());
    let server = start(&cp).await;
    let mut c = Sotw::ads(&server).await;

    c.send(ResourceType::Endpoint, &["c1", "later"], "", "")
        .await;
    c.send(ResourceType::Cluster, &[], "", "").await;
    // EDS is held back: the first response is CDS.
    assert_eq!(c.recv().await.type_url, ResourceType::Cluster.type_url());
    cp.cache()
        .update_resource(NODE, endpoints("later", &[4000]))
        .expect("add");
    let eds = c.recv().await;
    assert_eq!(eds.type_url, ResourceType::Endpoint.type_url());
    assert_eq!(names(&eds), ["c1", "later"]);
}

#[tokio::test]
async fn ads_pushes_in_make_before_break_order() {
    let cp = ControlPlane::new();
    let s = cp.cache().set_snapshot(NODE, base_snapshot());
    let server = start(&cp).await;
    let mut c = Sotw::ads(&server).await;
    // Subscribe to everything (in reverse order) and ACK the first round.
    c.send(ResourceType::Route, &["r1"], "", "").await;
    c.send(ResourceType::Listener, &[], "", "").await;
    c.send(ResourceType::Endpoint, &["c1", "c2"], "", "").await;
    c.send(ResourceType::Cluster, &[], "", "").await;
    for _ in 0..4 {
        let r = c.recv().await;
        let names: Vec<String> = match ResourceType::from_type_url(&r.type_url) {
            Some(ResourceType::Route) => vec!["r1".into()],
            Some(ResourceType::Endpoint) => vec!["c1".into(), "c2".into()],
            _ => vec![],
        };
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        c.ack(&r, &names).await;
    }
    for kind in [
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::Listener,
        ResourceType::Route,
    ] {
        cp.status()
            .wait_for_ack(NODE, kind, s.version(kind), RECV_TIMEOUT)
            .await
            .expect("first round ACKed");
    }
    // One snapshot change touching all four types: pushed CDS, EDS, LDS, RDS.
    cp.cache()
        .update_resources(
            NODE,
            [
                eds_cluster("c3"),
                endpoints("c3", &[3]),
                endpoints("c1", &[7]),
                tcp_listener("l2", 2002, "c1"),
                route("r1", "c2"),
            ],
            [],
        )
        .expect("update");
    let mut order = Vec::new();
    for _ in 0..4 {
        order.push(c.recv().await.type_url);
    }
    let expected: Vec<String> = [
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::Listener,
        ResourceType::Route,
    ]
    .iter()
    .map(|t| t.type_url().to_string())
    .collect();
    assert_eq!(order, expected);
}

#[tokio::test]
async fn sotw_reconnect_with_the_current_version_gets_no_push() {
    let cp = ControlPlane::new();
    let s = cp.cache().set_snapshot(NODE, base_snapshot());
    let server = start(&cp).await;
    let mut c = Sotw::ads(&server).await;
    // The client already holds the current CDS version (as after a reconnect).
    c.send(
        ResourceType::Cluster,
        &[],
        s.version(ResourceType::Cluster),
        "",
    )
    .await;
    c.send(ResourceType::Listener, &[], "", "").await;
    let first = c.recv().await;
    assert_eq!(
        first.type_url,
        ResourceType::Listener.type_url(),
        "CDS was not re-sent"
    );
    assert_eq!(
        cp.status()
            .acked_version(NODE, ResourceType::Cluster)
            .as_deref(),
        Some(s.version(ResourceType::Cluster))
    );
    // A later change is pushed normally.
    let v = cp
        .cache()
        .remove_resource(NODE, ResourceType::Cluster, "c2")
        .expect("remove");
    let cds = c.recv().await;
    assert_eq!(
        (cds.version_info.as_str(), names(&cds)),
        (v.as_str(), vec!["c1".to_string()])
    );
}

#[tokio::test]
async fn sotw_empty_names_mean_wildcard_only_until_a_name_was_given() {
    let cp = ControlPlane::new();
    cp.cache().set_snapshot(NODE, base_snapshot());
    let server = start(&cp).await;
    let mut c = Sotw::ads(&server).await;
    c.send(ResourceType::Endpoint, &[], "", "").await;
    let all = c.recv().await;
    assert_eq!(names(&all), ["c1", "c2"], "legacy wildcard");
    c.send(
        ResourceType::Endpoint,
        &["c1"],
        &all.version_info,
        &all.nonce,
    )
    .await;
    c.send(ResourceType::Endpoint, &[], &all.version_info, &all.nonce)
        .await;
    // Requests are handled in order: the CDS answer proves the EDS ones were processed, and
    // none of them was answered.
    c.send(ResourceType::Cluster, &[], "", "").await;
    let cds = c.recv().await;
    assert_eq!(cds.type_url, ResourceType::Cluster.type_url());
    c.ack(&cds, &[]).await;
    // Now "nothing": changes to endpoints are not sent; the next response is a CDS one.
    cp.cache()
        .update_resource(NODE, endpoints("c1", &[5000]))
        .expect("update");
    cp.cache()
        .update_resources(NODE, [endpoints("c9", &[9]), eds_cluster("c9")], [])
        .expect("add c9");
    let next = c.recv().await;
    assert_eq!(next.type_url, ResourceType::Cluster.type_url());
    // "*" subscribes to everything again (the version changed, so it is pushed).
    c.send(
        ResourceType::Endpoint,
        &["*"],
        &all.version_info,
        &all.nonce,
    )
    .await;
    let star = c.recv().await;
    assert_eq!(star.type_url, ResourceType::Endpoint.type_url());
    assert_eq!(names(&star), ["c1", "c2", "c9"]);
}

struct Delta {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
}

impl Delta {
    async fn ads(server: &XdsServerHandle) -> Delta {
        let mut client = AggregatedDiscoveryServiceClient::connect(url(server.local_addr()))
            .await
            .expect("connect");
        let (tx, rx) = mpsc::channel(16);
        let rx = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .expect("open delta ADS")
            .into_inner();
        Delta { tx, rx }
    }

    async fn send(&self, req: DeltaDiscoveryRequest) {
        self.tx.send(req).await.expect("request stream open");
    }

    async fn ack(&self, resp: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            ..Default::default()
        })
        .await;
    }

    async fn recv(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(RECV_TIMEOUT, self.rx.message())
            .await
            .expect("a response in time")
            .expect("stream ok")
            .expect("stream open")
    }
}

fn delta_req(kind: ResourceType, subscribe: &[&str]) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: node(),
        type_url: kind.type_url().to_string(),
        resource_names_subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn delta_names(resp: &DeltaDiscoveryResponse) -> Vec<String> {
    resp.resources.iter().map(|r| r.name.clone()).collect()
}

#[tokio::test]
async fn delta_sends_only_differences_and_removals() {
    let cp = ControlPlane::new();
    let s = cp.cache().set_snapshot(NODE, base_snapshot());
    let server = start(&cp).await;
    let mut c = Delta::ads(&server).await;

    c.send(delta_req(ResourceType::Cluster, &[])).await; // wildcard
    let first = c.recv().await;
    assert_eq!(delta_names(&first), ["c1", "c2"]);
    assert_eq!(first.system_version_info, s.version(ResourceType::Cluster));
    let c1 = s.get(ResourceType::Cluster, "c1").expect("c1");
    assert_eq!(first.resources[0].version, c1.version());
    c.ack(&first).await;
    cp.status()
        .wait_for_ack(
            NODE,
            ResourceType::Cluster,
            &first.system_version_info,
            RECV_TIMEOUT,
        )
        .await
        .expect("delta ack");

    // Add c3, remove c2: one response with exactly that.
    let s2 = cp
        .cache()
        .update_resources(
            NODE,
            [endpoints("c3", &[1]), eds_cluster("c3")],
            [(ResourceType::Cluster, "c2".to_string())],
        )
        .expect("change");
    let second = c.recv().await;
    assert_eq!(delta_names(&second), ["c3"]);
    assert_eq!(second.removed_resources, ["c2"]);
    assert_eq!(
        second.system_version_info,
        s2.version(ResourceType::Cluster)
    );

    // A NACK is recorded and nothing is re-sent; an unchanged snapshot sends nothing.
    c.send(DeltaDiscoveryRequest {
        type_url: second.type_url.clone(),
        response_nonce: second.nonce.clone(),
        error_detail: Some(RpcStatus {
            code: 13,
            message: "c3: nope".into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    let nack = cp
        .status()
        .wait_for_nack(
            NODE,
            ResourceType::Cluster,
            &second.system_version_info,
            RECV_TIMEOUT,
        )
        .await
        .expect("nack");
    assert_eq!(nack.message, "c3: nope");
    cp.cache().set_snapshot(NODE, (*s2).clone());
    // Named EDS subscription: the next message is its answer.
    c.send(delta_req(ResourceType::Endpoint, &["c1"])).await;
    let eds = c.recv().await;
    assert_eq!(eds.type_url, ResourceType::Endpoint.type_url());
    assert_eq!(delta_names(&eds), ["c1"]);
    // Unsubscribe then re-subscribe: sent again (the client dropped it).
    c.send(DeltaDiscoveryRequest {
        type_url: ResourceType::Endpoint.type_url().into(),
        resource_names_unsubscribe: vec!["c1".into()],
        response_nonce: eds.nonce.clone(),
        ..Default::default()
    })
    .await;
    c.send(delta_req(ResourceType::Endpoint, &["c1"])).await;
    let again = c.recv().await;
    assert_eq!(delta_names(&again), ["c1"]);
}

#[tokio::test]
async fn delta_honours_initial_resource_versions() {
    let cp = ControlPlane::new();
    let s = cp.cache().set_snapshot(NODE, base_snapshot());
    let server = start(&cp).await;
    let mut c = Delta::ads(&server).await;
    let c1 = s.get(ResourceType::Cluster, "c1").expect("c1");
    let mut held = HashMap::new();
    held.insert("c1".to_string(), c1.version().to_string()); // current
    held.insert("c2".to_string(), "stale".to_string()); // outdated
    held.insert("gone".to_string(), "x".to_string()); // no longer exists
    let mut req = delta_req(ResourceType::Cluster, &["*"]);
    req.initial_resource_versions = held;
    c.send(req).await;
    let resp = c.recv().await;
    assert_eq!(delta_names(&resp), ["c2"], "only what differs");
    assert_eq!(resp.removed_resources, ["gone"]);
}

#[tokio::test]
async fn per_type_cds_service_streams_and_fetches() {
    let cp = ControlPlane::new();
    let s = cp.cache().set_snapshot(NODE, base_snapshot());
    let server = start(&cp).await;
    let mut client = ClusterDiscoveryServiceClient::connect(url(server.local_addr()))
        .await
        .expect("connect");
    let (tx, rx) = mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: node(),
        ..Default::default()
    })
    .await
    .expect("send");
    let mut stream = client
        .stream_clusters(ReceiverStream::new(rx))
        .await
        .expect("open CDS")
        .into_inner();
    let resp = tokio::time::timeout(RECV_TIMEOUT, stream.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("open");
    assert_eq!(
        resp.type_url,
        ResourceType::Cluster.type_url(),
        "empty type_url means the service's type"
    );
    assert_eq!(names(&resp), ["c1", "c2"]);

    let fetched = client
        .fetch_clusters(DiscoveryRequest {
            node: node(),
            resource_names: vec!["c2".into()],
            ..Default::default()
        })
        .await
        .expect("fetch")
        .into_inner();
    assert_eq!(names(&fetched), ["c2"]);
    assert_eq!(fetched.version_info, s.version(ResourceType::Cluster));
}

#[tokio::test]
async fn nodes_are_keyed_by_a_pluggable_hash_and_fall_back_to_the_default_snapshot() {
    let cache = SnapshotCache::with_hash(courier_control_plane::NodeClusterHash);
    let cp = ControlPlane::with_cache(cache, ServerConfig::default());
    // node-1 has cluster "svc": served the snapshot stored under "svc".
    cp.cache().set_default_snapshot(Some(Snapshot::empty()));
    cp.cache().set_snapshot("svc", base_snapshot());
    let server = start(&cp).await;
    let mut c = Sotw::ads(&server).await;
    c.send(ResourceType::Cluster, &[], "", "").await;
    let first = c.recv().await;
    assert_eq!(names(&first), ["c1", "c2"]);
    c.ack(&first, &[]).await;
    let st = cp.status().node(NODE).expect("status by node id");
    assert_eq!(st.key, "svc");
    // Dropping the key's own snapshot falls back to the (empty) default: CDS now empty.
    cp.cache().clear_snapshot("svc");
    let cds = c.recv().await;
    assert!(cds.resources.is_empty());
    server.shutdown().await;
    cp.status()
        .wait_for_streams(NODE, 0, RECV_TIMEOUT)
        .await
        .expect("stream closed on shutdown");
}
