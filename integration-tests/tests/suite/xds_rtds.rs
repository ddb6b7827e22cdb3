//! RTDS: an `rtds_layer` of the layered runtime fed by courier-cp's `Runtime` resources,
//! over ADS and per-type streams (state of the world and delta) and REST-JSON polls, on
//! Courier and on Envoy (`PROXY_UNDER_TEST`). Over gRPC the proxy does not initialise
//! (CDS, LDS, LIVE) before its RTDS layer has a resource; over REST a poll answered
//! without it is rejected ("Unexpected RTDS resource length"), which lets initialisation
//! go on, as in Envoy. `/runtime` shows the layer's values between
//! the static and admin layers; a route's `runtime_fraction` follows an update; a layer
//! with an invalid value is NACKed with Envoy's message and the last values stay; a delta
//! removal empties the layer, while a state-of-the-world response without it changes
//! nothing. The `runtime.*` stats agree with Envoy's.

use std::sync::Arc;
use std::time::Duration;

use courier_control_plane::{Resource, ResourceType};
use courier_integration_tests::bootstrap::Mode;
use courier_integration_tests::proxy::ProxyOptions;
use courier_integration_tests::resources::listener_yaml;
use courier_integration_tests::traffic::http_get;
use courier_integration_tests::{eventually, free_port, Bootstrap, Cp, Proxy, ProxyKind};
use courier_proto::envoy::service::runtime::v3::Runtime;
use serde_json::Value;

use crate::fixture::{snapshot, Fx, NODE};

/// The `Runtime` resource `name` with the layer `layer` (YAML flow mapping).
fn runtime(name: &str, layer: &str) -> Arc<Resource> {
    let r: Runtime =
        courier_proto::from_yaml(&format!("name: {name}\nlayer: {layer}\n")).expect("runtime yaml");
    Resource::runtime(&r).expect("runtime resource")
}

/// An HTTP listener answering `canary` for the share of requests the runtime key
/// `routing.canary` sets (none by default), `stable` otherwise.
fn canary_listener(port: u16) -> Arc<Resource> {
    listener_yaml(&format!(
        r#"name: rtds-http
address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: rtds
      route_config:
        name: local
        virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
          - match: {{ prefix: /, runtime_fraction: {{ default_value: {{ numerator: 0 }}, runtime_key: routing.canary }} }}
            direct_response: {{ status: 200, body: {{ inline_string: canary }} }}
          - match: {{ prefix: / }}
            direct_response: {{ status: 200, body: {{ inline_string: stable }} }}
      http_filters:
      - name: envoy.filters.http.router
        typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"#
    ))
}

/// The proxy's `/runtime`.
async fn runtime_dump(proxy: &Proxy) -> Value {
    let (status, body) = proxy.get("/runtime").await;
    assert_eq!(status, 200, "/runtime: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/runtime is not JSON ({e}): {body}"))
}

/// A key's `final_value` and `layer_values` in `/runtime`, if the key is there.
fn entry(dump: &Value, key: &str) -> Option<(String, Vec<String>)> {
    let e = dump["entries"].get(key)?;
    let layers = e["layer_values"]
        .as_array()?
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect();
    Some((e["final_value"].as_str()?.to_string(), layers))
}

async fn body(port: u16) -> Option<String> {
    match http_get(port).await {
        Ok(r) if r.status == 200 => Some(r.body),
        _ => None,
    }
}

async fn wait_body(port: u16, want: &str) {
    eventually(&format!("GET / answers {want}"), || async {
        (body(port).await.as_deref() == Some(want)).then_some(())
    })
    .await;
}

/// Every `runtime.*` stat of Envoy 1.40 with an RTDS layer (measured).
const RUNTIME_STATS: [&str; 18] = [
    "admin_overrides_active",
    "deprecated_feature_seen_since_process_start",
    "deprecated_feature_use",
    "init_fetch_timeout",
    "load_error",
    "load_success",
    "num_keys",
    "num_layers",
    "override_dir_exists",
    "override_dir_not_exists",
    "update_attempt",
    "update_duration",
    "update_failure",
    "update_rejected",
    "update_success",
    "update_time",
    "version",
    "version_text",
];

/// A stream's `control_plane.*` stats.
const CONTROL_PLANE_STATS: [&str; 4] = [
    "connected_state",
    "identifier",
    "pending_requests",
    "rate_limit_enforced",
];

/// The names of the proxy's `runtime.*` stats, sorted.
async fn runtime_stat_names(proxy: &Proxy) -> Vec<String> {
    let mut names: Vec<String> = proxy
        .stats_text()
        .await
        .lines()
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.to_string()))
        .filter(|n| n.starts_with("runtime."))
        .collect();
    names.sort();
    names
}

/// The proxy's `runtime.<name>` stats of `names`.
async fn runtime_stats(proxy: &Proxy, names: &[&str]) -> Vec<(String, Option<i64>)> {
    let stats = proxy.stats().await;
    names
        .iter()
        .map(|n| {
            let full = format!("runtime.{n}");
            let v = stats.get(&full).copied();
            (full, v)
        })
        .collect()
}

fn expected(pairs: &[(&str, i64)]) -> Vec<(String, Option<i64>)> {
    pairs
        .iter()
        .map(|(n, v)| (format!("runtime.{n}"), Some(*v)))
        .collect()
}

/// Waits until the runtime stats of `pairs` have those values (an ACK may reach the
/// control plane just before the proxy counts it); fails showing the last values.
async fn wait_runtime_stats(proxy: &Proxy, pairs: &[(&str, i64)]) {
    let names: Vec<&str> = pairs.iter().map(|(n, _)| *n).collect();
    let want = expected(pairs);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = runtime_stats(proxy, &names).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "runtime stats: got {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn scenario(mode: Mode) {
    let delta = matches!(
        mode,
        Mode::Ads { delta: true } | Mode::PerType { delta: true }
    );
    let rest = matches!(mode, Mode::Rest { .. });
    let port = free_port();
    let cp = Cp::start().await;
    let boot = Bootstrap::ads(NODE, cp.port)
        .mode(match mode {
            Mode::Rest { .. } => Mode::Rest { port: cp.rest_port },
            m => m,
        })
        .rtds_layer("rtds", "rt0");
    // No runtime yet: the proxy waits for its RTDS layer before CDS, LDS and LIVE.
    cp.set(NODE, snapshot(vec![canary_listener(port)]));
    let proxy =
        Proxy::start_with(ProxyKind::from_env(), &boot.yaml(), ProxyOptions::default()).await;
    if rest {
        proxy.wait_live().await;
        proxy
            .wait_stat("runtime.update_rejected", "an empty poll rejected", |v| {
                v > 0
            })
            .await;
    } else {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!proxy.is_live().await, "LIVE before the RTDS layer arrived");
        assert!(
            body(port).await.is_none(),
            "the listener came before the runtime"
        );
    }
    assert_eq!(
        runtime_dump(&proxy).await["layers"],
        serde_json::json!(["base", "rtds", "admin"]),
        "the RTDS layer is listed, empty, before its resource arrives"
    );

    // The runtime arrives: initialisation goes on, the layer holds its values.
    let s = cp
        .cp
        .cache()
        .update_resource(NODE, runtime("rt0", "{ routing.canary: 100, color: blue }"));
    let v1 = s.expect("consistent");
    cp.ack(NODE, ResourceType::Runtime, &v1).await;
    proxy.wait_live().await;
    let fx = Fx {
        cp,
        proxy,
        boot: boot.clone(),
    };
    let dump = runtime_dump(&fx.proxy).await;
    assert_eq!(
        entry(&dump, "color"),
        Some(("blue".into(), vec!["".into(), "blue".into(), "".into()])),
        "{dump}"
    );
    assert_eq!(
        entry(&dump, "routing.canary").map(|e| e.0),
        Some("100".into())
    );
    assert_eq!(
        entry(&dump, "base"),
        Some(("static".into(), vec!["static".into(), "".into(), "".into()]))
    );
    wait_body(port, "canary").await;
    // Envoy's `runtime.*` stats: the loader's, the subscriptions' (one scope for every RTDS
    // layer), and a stream of its own's `control_plane.*` (REST too in Courier: see
    // DIFFERENCES.md).
    let mut want: Vec<String> = RUNTIME_STATS
        .iter()
        .map(|n| format!("runtime.{n}"))
        .collect();
    let own_stream = match (&fx.boot.mode, fx.proxy.kind) {
        (Mode::PerType { .. }, _) => true,
        (Mode::Rest { .. }, kind) => kind == ProxyKind::Courier,
        _ => false,
    };
    if own_stream {
        want.extend(
            CONTROL_PLANE_STATS
                .iter()
                .map(|n| format!("runtime.control_plane.{n}")),
        );
    }
    want.sort();
    assert_eq!(runtime_stat_names(&fx.proxy).await, want);
    // Over REST every poll answered before the runtime existed was a rejection.
    let rejected_before = match rest {
        true => fx.proxy.stat("runtime.update_rejected").await.unwrap_or(0),
        false => 0,
    };
    wait_runtime_stats(
        &fx.proxy,
        &[
            ("update_success", 1),
            ("update_rejected", rejected_before),
            ("load_success", 3),
            ("load_error", 0),
            ("num_layers", 3),
            ("num_keys", 3),
            ("init_fetch_timeout", 0),
        ],
    )
    .await;

    // An update: the route follows the new share.
    fx.update(vec![runtime("rt0", "{ routing.canary: 0, color: green }")])
        .await;
    wait_body(port, "stable").await;
    let dump = runtime_dump(&fx.proxy).await;
    assert_eq!(entry(&dump, "color").map(|e| e.0), Some("green".into()));
    wait_runtime_stats(
        &fx.proxy,
        &[
            ("update_success", 2),
            ("update_rejected", rejected_before),
            ("load_success", 4),
        ],
    )
    .await;

    // An invalid layer is rejected; the last values stay.
    let bad = fx.push(runtime("rt0", "{ routing.canary: 100, bad: [1, 2] }"));
    if rest {
        // Envoy sends no error_detail over REST (and polls the rejected version again):
        // the stats tell the rejection.
        fx.proxy
            .wait_stat("runtime.update_rejected", "the bad layer rejected", |v| {
                v > rejected_before
            })
            .await;
    } else {
        let nack = fx.cp.nack(fx.node(), ResourceType::Runtime, &bad).await;
        assert_eq!(nack, "Invalid runtime entry value for bad");
        wait_runtime_stats(&fx.proxy, &[("update_rejected", 1)]).await;
    }
    wait_runtime_stats(
        &fx.proxy,
        &[("update_success", 2), ("load_success", 4), ("num_keys", 3)],
    )
    .await;
    let dump = runtime_dump(&fx.proxy).await;
    assert_eq!(entry(&dump, "color").map(|e| e.0), Some("green".into()));
    assert!(entry(&dump, "bad").is_none(), "{dump}");
    assert_eq!(body(port).await.as_deref(), Some("stable"));

    // A good layer again, then the resource removed from the snapshot.
    fx.update(vec![runtime("rt0", "{ routing.canary: 100, color: red }")])
        .await;
    wait_body(port, "canary").await;
    let s = fx
        .cp
        .cp
        .cache()
        .update_resources(
            fx.node(),
            vec![],
            vec![(ResourceType::Runtime, "rt0".to_string())],
        )
        .expect("consistent change");
    if delta {
        // Delta names the removal: the layer empties (Envoy's `onConfigRemoved`).
        fx.cp
            .ack(
                fx.node(),
                ResourceType::Runtime,
                s.version(ResourceType::Runtime),
            )
            .await;
        eventually("the removed layer is empty", || async {
            entry(&runtime_dump(&fx.proxy).await, "color")
                .is_none()
                .then_some(())
        })
        .await;
        wait_body(port, "stable").await;
        wait_runtime_stats(&fx.proxy, &[("num_keys", 1), ("num_layers", 3)]).await;
    } else {
        // State of the world names nothing: a response without the layer's resource
        // changes nothing (RTDS is not a wildcard type).
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let dump = runtime_dump(&fx.proxy).await;
        assert_eq!(entry(&dump, "color").map(|e| e.0), Some("red".into()));
        assert_eq!(body(port).await.as_deref(), Some("canary"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtds_over_ads_sotw_like_envoy() {
    scenario(Mode::Ads { delta: false }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtds_over_ads_delta_like_envoy() {
    scenario(Mode::Ads { delta: true }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtds_over_its_own_sotw_stream_like_envoy() {
    scenario(Mode::PerType { delta: false }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtds_over_its_own_delta_stream_like_envoy() {
    scenario(Mode::PerType { delta: true }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtds_over_rest_like_envoy() {
    scenario(Mode::Rest { port: 0 }).await;
}
