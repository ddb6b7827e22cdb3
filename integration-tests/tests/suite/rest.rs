//! REST-JSON xDS (`api_type: REST`) against servers courier-cp is not: a scripted one that
//! answers every poll as the test says (wrong types, bad JSON, errors, redirects, endless
//! bodies, hangs), and sovereign, a REST control plane from PyPI.

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
        Reply::response(ResourceType::Cluster, "1", &[ca.clone()]),
    );
    server.set(
        ResourceType::Listener,
        Reply::response(ResourceType::Listener, "1", &[l1.clone()]),
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
