//! End to end: the admin endpoints' content, as Envoy renders it.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::*;

/// A courier with listener `tcp_in` on a fixed port (stat names carry the configured
/// port; port 0 would be `listener.127.0.0.1_0`). The port is picked free and the start
/// retried if someone takes it in between.
fn courier_on_fixed_port(upstream: SocketAddr) -> (Courier, u16) {
    for _ in 0..5 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let yaml = static_tcp_yaml(port, &[upstream], &[], &["lb_policy: ROUND_ROBIN"]);
        match Courier::try_spawn(&yaml, &["--concurrency", "2"]) {
            Ok(c) => {
                c.wait_ready();
                return (c, port);
            }
            Err(stderr) if stderr.contains("in use") => continue,
            Err(stderr) => panic!("courier failed to start:\n{stderr}"),
        }
    }
    panic!("no free port after 5 attempts");
}

/// Proxies `n` connections so the counters move.
fn traffic(courier: &Courier, n: usize) {
    let addr = courier.listener("tcp_in");
    for _ in 0..n {
        let mut c = connect(addr);
        assert_eq!(echo_roundtrip(&mut c, b"ping"), b"ping");
    }
}

#[test]
fn ready_server_info_listeners_clusters() {
    let echo = Upstream::echo();
    let (courier, port) = courier_on_fixed_port(echo.addr);

    let r = courier.get("/ready");
    assert_eq!((r.status, r.body.as_str()), (200, "LIVE\n"));

    let info = courier.get("/server_info").json();
    assert_eq!(info["state"], "LIVE");
    assert_eq!(info["node"]["id"], "test-node");
    assert_eq!(info["command_line_options"]["concurrency"], 2);

    let r = courier.get("/listeners");
    assert_eq!(r.body, format!("tcp_in::127.0.0.1:{port}\n"));
    let l = courier.get("/listeners?format=json").json();
    let status = &l["listener_statuses"][0];
    assert_eq!(status["name"], "tcp_in");
    assert_eq!(
        status["local_address"]["socket_address"]["port_value"],
        port
    );

    traffic(&courier, 3);
    let clusters = courier.get("/clusters").body;
    let host = format!("backend::{}", echo.addr);
    for line in [
        "backend::added_via_api::false".to_string(),
        format!("{host}::cx_total::3"),
        format!("{host}::cx_connect_fail::0"),
        format!("{host}::health_flags::healthy"),
        format!("{host}::weight::1"),
    ] {
        assert!(
            clusters.lines().any(|l| l == line),
            "/clusters lacks {line:?}:\n{clusters}"
        );
    }
    let c = courier.get("/clusters?format=json").json();
    let status = &c["cluster_statuses"][0];
    assert_eq!(status["name"], "backend");
    assert_eq!(status["added_via_api"], false);
    assert_eq!(
        status["host_statuses"][0]["address"]["socket_address"]["port_value"],
        echo.addr.port()
    );
}

#[test]
fn stats_text_json_and_prometheus() {
    let echo = Upstream::echo();
    let (courier, port) = courier_on_fixed_port(echo.addr);
    traffic(&courier, 3);
    let listener = format!("listener.127.0.0.1_{port}");
    courier.wait_stat(
        &format!("{listener}.downstream_cx_active"),
        "to return to 0",
        |v| v == 0,
    );

    let stats = courier.stats();
    for (name, value) in [
        ("cluster.backend.upstream_cx_total", 3),
        ("cluster.backend.upstream_cx_active", 0),
        (&format!("{listener}.downstream_cx_total"), 3),
        (&format!("{listener}.downstream_cx_destroy"), 3),
        ("tcp.tcp_in.downstream_cx_total", 3),
        ("server.live", 1),
        ("server.concurrency", 2),
        ("server.state", 0),
        ("listener_manager.total_listeners_active", 1),
        ("cluster_manager.active_clusters", 1),
    ] {
        assert_eq!(stats.get(name), Some(&value), "{name}");
    }
    // Envoy's order: text readouts (quoted values), then counters and gauges, then
    // histograms, each part sorted by name.
    let text = courier.get("/stats").body;
    let part = |l: &&str| {
        if l.contains(": \"") {
            0
        } else if l.contains("No recorded values") || l.contains("P0(") {
            2
        } else {
            1
        }
    };
    let lines: Vec<&str> = text.lines().collect();
    let parts: Vec<u8> = lines.iter().map(part).collect();
    let mut in_order = parts.clone();
    in_order.sort();
    assert_eq!(
        parts, in_order,
        "text readouts, then counters and gauges, then histograms"
    );
    for p in 0..3 {
        let names: Vec<&str> = lines
            .iter()
            .filter(|l| part(l) == p)
            .filter_map(|l| l.split(": ").next())
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "/stats part {p} is sorted by name");
    }

    // No dynamic_resources: no CDS, LDS or control-plane stats, as Envoy shows none.
    assert!(
        !text.contains("cluster_manager.cds.")
            && !text.contains("listener_manager.lds.")
            && !text.contains("control_plane."),
        "subscription stats without subscriptions"
    );

    let filtered = courier.get("/stats?filter=cluster.backend.").body;
    assert!(!filtered.is_empty());
    assert!(filtered.lines().all(|l| l.starts_with("cluster.backend.")));

    let json = courier.get("/stats?format=json").json();
    let entry = json["stats"]
        .as_array()
        .expect("stats array")
        .iter()
        .find(|s| s["name"] == "cluster.backend.upstream_cx_total")
        .expect("upstream_cx_total in JSON");
    assert_eq!(entry["value"], 3);

    let r = courier.get("/stats/prometheus");
    assert_eq!(r.status, 200);
    assert!(
        r.headers["content-type"].starts_with("text/plain"),
        "{:?}",
        r.headers
    );
    for line in [
        "# TYPE envoy_cluster_upstream_cx_total counter".to_string(),
        "envoy_cluster_upstream_cx_total{envoy_cluster_name=\"backend\"} 3".to_string(),
        format!(
            "envoy_listener_downstream_cx_total{{envoy_listener_address=\"127.0.0.1_{port}\"}} 3"
        ),
        "# TYPE envoy_server_live gauge".to_string(),
        "envoy_server_live{} 1".to_string(),
        "envoy_server_concurrency{} 2".to_string(),
    ] {
        assert!(
            r.body.lines().any(|l| l == line),
            "/stats/prometheus lacks {line:?}:\n{}",
            r.body
        );
    }
}

#[test]
fn config_dump_shape() {
    let echo = Upstream::echo();
    let (courier, port) = courier_on_fixed_port(echo.addr);
    let dump = courier.get("/config_dump").json();
    let configs = dump["configs"].as_array().expect("configs array");
    let of_type = |t: &str| {
        configs
            .iter()
            .find(|c| c["@type"] == format!("type.googleapis.com/envoy.admin.v3.{t}"))
            .unwrap_or_else(|| panic!("no {t} in {dump:#}"))
    };
    let bootstrap = of_type("BootstrapConfigDump");
    assert_eq!(bootstrap["bootstrap"]["node"]["id"], "test-node");

    let clusters = of_type("ClustersConfigDump");
    let cluster = &clusters["static_clusters"][0]["cluster"];
    assert_eq!(
        cluster["@type"],
        "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    );
    assert_eq!(cluster["name"], "backend");
    assert_eq!(cluster["type"], "STATIC");
    assert_eq!(cluster["connect_timeout"], "1s");
    assert!(clusters["static_clusters"][0]["last_updated"].is_string());

    let listeners = of_type("ListenersConfigDump");
    let listener = &listeners["static_listeners"][0]["listener"];
    assert_eq!(
        listener["@type"],
        "type.googleapis.com/envoy.config.listener.v3.Listener"
    );
    assert_eq!(listener["name"], "tcp_in");
    assert_eq!(listener["address"]["socket_address"]["port_value"], port);
    assert_eq!(
        listener["filter_chains"][0]["filters"][0]["typed_config"]["@type"],
        "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
    );
    assert!(listeners["static_listeners"][0]["last_updated"].is_string());

    // ?resource= selects one section's items.
    let only = courier.get("/config_dump?resource=static_clusters").json();
    assert_eq!(only["configs"].as_array().map(Vec::len), Some(1));
    assert_eq!(only["configs"][0]["cluster"]["name"], "backend");
}

#[test]
fn healthcheck_fail_and_ok_flip_ready() {
    let echo = Upstream::echo();
    let (courier, _) = courier_on_fixed_port(echo.addr);
    // Mutating endpoints need POST.
    assert_eq!(courier.get("/healthcheck/fail").status, 405);
    assert_eq!(courier.get("/ready").status, 200);

    assert_eq!(courier.post("/healthcheck/fail").status, 200);
    let r = courier.get("/ready");
    assert_eq!((r.status, r.body.as_str()), (503, "DRAINING\n"));
    assert_eq!(courier.stat("server.live"), 0);
    // Failing health checks does not stop proxying.
    traffic(&courier, 1);

    assert_eq!(courier.post("/healthcheck/ok").status, 200);
    let r = courier.get("/ready");
    assert_eq!((r.status, r.body.as_str()), (200, "LIVE\n"));
    assert_eq!(courier.stat("server.live"), 1);
}

#[test]
fn drain_listeners_stops_accepting_but_keeps_connections() {
    let echo = Upstream::echo();
    let (courier, _) = courier_on_fixed_port(echo.addr);
    let addr = courier.listener("tcp_in");
    let mut open = connect(addr);
    assert_eq!(echo_roundtrip(&mut open, b"before"), b"before");
    assert_eq!(courier.get("/drain_listeners").status, 405);
    assert_eq!(courier.post("/drain_listeners").status, 200);
    wait_for("the listener to stop accepting", DEADLINE, || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .is_err()
            .then_some(())
    });
    assert_eq!(echo_roundtrip(&mut open, b"after"), b"after");
}

#[test]
fn unknown_path_is_404() {
    let echo = Upstream::echo();
    let (courier, _) = courier_on_fixed_port(echo.addr);
    assert_eq!(courier.get("/no/such/endpoint").status, 404);
}

#[test]
fn quitquitquit_exits_0() {
    let echo = Upstream::echo();
    let (mut courier, _) = courier_on_fixed_port(echo.addr);
    assert_eq!(courier.get("/quitquitquit").status, 405);
    assert!(!courier.has_exited());
    // The process may exit before the response is fully read; either is fine.
    let _ = courier.try_admin("POST", "/quitquitquit");
    let status = courier.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "stderr:\n{}", courier.stderr());
}
