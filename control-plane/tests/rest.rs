//! REST-JSON xDS (`POST /v3/discovery:<type>`) served by courier-cp, driven by a plain HTTP
//! client: responses from the snapshot, 304 per node/type/names, ACK/NACK from the next
//! poll's `version_info`/`error_detail`, HTTP errors for bad requests, h2c.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use courier_control_plane::{ControlPlane, ResourceType, RestServerHandle, Snapshot};
use courier_proto::envoy::config::core::v3::Node;
use courier_proto::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use courier_proto::google::rpc::Status as RpcStatus;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

const NODE: &str = "node-1";

fn request(kind: ResourceType, names: &[&str], version: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(Node {
            id: NODE.to_string(),
            cluster: "svc".to_string(),
            ..Default::default()
        }),
        version_info: version.to_string(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        type_url: kind.type_url().to_string(),
        ..Default::default()
    }
}

/// One request on a new HTTP/1.1 (or h2c) connection: status and body.
async fn send(
    server: &RestServerHandle,
    method: &str,
    path: &str,
    body: String,
    h2: bool,
) -> (u16, String) {
    let tcp = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .expect("connect");
    let io = TokioIo::new(tcp);
    let uri = if h2 {
        format!("http://xds{path}")
    } else {
        path.to_string()
    };
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "xds")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let resp = if h2 {
        let (mut s, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("h2c handshake");
        tokio::spawn(c);
        s.send_request(req).await.expect("response")
    } else {
        let (mut s, c) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("handshake");
        tokio::spawn(c);
        s.send_request(req).await.expect("response")
    };
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).to_string())
}

/// POSTs `req` to the type's path; the status, and the response when 200.
async fn poll(
    server: &RestServerHandle,
    req: &DiscoveryRequest,
) -> (u16, Option<DiscoveryResponse>) {
    let kind = ResourceType::from_type_url(&req.type_url).expect("type");
    let path = format!("/v3/discovery:{}", kind.plural());
    let (status, body) = send(
        server,
        "POST",
        &path,
        courier_proto::to_json(req).to_string(),
        false,
    )
    .await;
    let resp = (status == 200).then(|| {
        courier_proto::from_json::<DiscoveryResponse>(&body).expect("a DiscoveryResponse")
    });
    (status, resp)
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

fn snapshot(ports: &[u16]) -> Snapshot {
    Snapshot::builder()
        .resource(eds_cluster("c1"))
        .resource(endpoints("c1", ports))
        .resource(eds_cluster("c2"))
        .resource(endpoints("c2", &[1002]))
        .build()
        .expect("consistent")
}

async fn start() -> (ControlPlane, RestServerHandle) {
    let cp = ControlPlane::new();
    let server = cp
        .start_rest("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("start REST");
    (cp, server)
}

#[tokio::test]
async fn rest_serves_the_snapshot_and_answers_304_once_the_client_holds_it() {
    let (cp, server) = start().await;
    let s = cp.cache().set_snapshot(NODE, snapshot(&[1001]));
    let v = s.version(ResourceType::Cluster).to_string();

    let (status, resp) = poll(&server, &request(ResourceType::Cluster, &[], "")).await;
    let resp = resp.expect("200");
    assert_eq!(status, 200);
    assert_eq!(resp.version_info, v);
    assert_eq!(resp.type_url, ResourceType::Cluster.type_url());
    assert_eq!(names(&resp), ["c1", "c2"]);

    // The next poll reports the version: an ACK, and nothing new to send.
    let (status, _) = poll(&server, &request(ResourceType::Cluster, &[], &v)).await;
    assert_eq!(status, 304);
    cp.status()
        .wait_for_ack(NODE, ResourceType::Cluster, &v, Duration::from_secs(5))
        .await
        .expect("ACK recorded");
    assert_eq!(
        cp.status()
            .node(NODE)
            .expect("node")
            .of(ResourceType::Cluster)
            .acks,
        1
    );
    let (status, _) = poll(&server, &request(ResourceType::Cluster, &[], &v)).await;
    assert_eq!(status, 304);
    assert_eq!(
        cp.status()
            .node(NODE)
            .expect("node")
            .of(ResourceType::Cluster)
            .acks,
        1,
        "an ACK is recorded once"
    );
}

#[tokio::test]
async fn rest_named_requests_get_exactly_their_names_and_a_new_name_is_served_at_the_same_version()
{
    let (cp, server) = start().await;
    let s = cp.cache().set_snapshot(NODE, snapshot(&[1001]));
    let v = s.version(ResourceType::Endpoint).to_string();
    let (_, resp) = poll(&server, &request(ResourceType::Endpoint, &["c1"], "")).await;
    assert_eq!(names(&resp.expect("200")), ["c1"]);
    let (status, _) = poll(&server, &request(ResourceType::Endpoint, &["c1"], &v)).await;
    assert_eq!(status, 304);
    // Same version, one more name: go-control-plane would answer 304; courier-cp serves it.
    let (status, resp) = poll(&server, &request(ResourceType::Endpoint, &["c1", "c2"], &v)).await;
    assert_eq!(status, 200);
    assert_eq!(names(&resp.expect("200")), ["c1", "c2"]);
    // A name the snapshot lacks is left out.
    let (_, resp) = poll(&server, &request(ResourceType::Endpoint, &["c9", "c2"], "")).await;
    assert_eq!(names(&resp.expect("200")), ["c2"]);
}

#[tokio::test]
async fn rest_nack_is_recorded_once_and_the_rejected_version_not_served_again() {
    let (cp, server) = start().await;
    let v1 = cp
        .cache()
        .set_snapshot(NODE, snapshot(&[1001]))
        .version(ResourceType::Endpoint)
        .to_string();
    poll(&server, &request(ResourceType::Endpoint, &["c1"], "")).await;
    poll(&server, &request(ResourceType::Endpoint, &["c1"], &v1)).await;
    let v2 = cp
        .cache()
        .set_snapshot(NODE, snapshot(&[1003]))
        .version(ResourceType::Endpoint)
        .to_string();
    let (status, resp) = poll(&server, &request(ResourceType::Endpoint, &["c1"], &v1)).await;
    assert_eq!(
        (status, resp.map(|r| r.version_info)),
        (200, Some(v2.clone()))
    );
    let nack = DiscoveryRequest {
        error_detail: Some(RpcStatus {
            code: 13,
            message: "c1: bad endpoints".into(),
            details: vec![],
        }),
        ..request(ResourceType::Endpoint, &["c1"], &v1)
    };
    for _ in 0..3 {
        let (status, _) = poll(&server, &nack).await;
        assert_eq!(status, 304, "the NACKed version is not served again");
    }
    let st = cp
        .status()
        .node(NODE)
        .expect("node")
        .of(ResourceType::Endpoint);
    assert_eq!(st.nacks, 1, "{st:?}");
    let rec = st.last_nack.expect("NACK recorded");
    assert_eq!(rec.rejected_version, v2);
    assert_eq!(rec.current_version, v1);
    assert_eq!(rec.message, "c1: bad endpoints");
    // A new snapshot is served even to a client still reporting its rejection.
    let v3 = cp
        .cache()
        .set_snapshot(NODE, snapshot(&[1004]))
        .version(ResourceType::Endpoint)
        .to_string();
    let (status, resp) = poll(&server, &nack).await;
    assert_eq!((status, resp.map(|r| r.version_info)), (200, Some(v3)));
}

#[tokio::test]
async fn rest_bad_requests_get_http_errors() {
    let (cp, server) = start().await;
    // No snapshot for the node: go-control-plane's 500.
    let (status, _) = poll(&server, &request(ResourceType::Cluster, &[], "")).await;
    assert_eq!(status, 500);
    cp.cache().set_snapshot(NODE, snapshot(&[1001]));
    let ok = courier_proto::to_json(&request(ResourceType::Cluster, &[], "")).to_string();
    assert_eq!(
        send(&server, "POST", "/v3/discovery:nope", ok.clone(), false)
            .await
            .0,
        404
    );
    assert_eq!(
        send(
            &server,
            "GET",
            "/v3/discovery:clusters",
            String::new(),
            false
        )
        .await
        .0,
        405
    );
    assert_eq!(
        send(
            &server,
            "POST",
            "/v3/discovery:clusters",
            "{ nope".into(),
            false
        )
        .await
        .0,
        400
    );
    assert_eq!(
        send(
            &server,
            "POST",
            "/v3/discovery:clusters",
            "{\"node\": 3}".into(),
            false
        )
        .await
        .0,
        400
    );
    // h2c (prior knowledge) works too.
    let (status, body) = send(&server, "POST", "/v3/discovery:clusters", ok, true).await;
    assert_eq!(status, 200, "{body}");
}
