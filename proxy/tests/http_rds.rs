//! RDS: the connection manager reads its route table from the worker's RDS slot per
//! request, so a new RouteConfiguration takes effect without touching connections.

mod http_support;

use std::time::{Duration, Instant};

use http_support::*;

fn rds_file(cluster: &str, version: &str) -> String {
    format!(
        r#"version_info: "{version}"
resources:
- "@type": type.googleapis.com/envoy.config.route.v3.RouteConfiguration
  name: rds_routes
  virtual_hosts:
  - name: main
    domains: ["*"]
    routes:
    - match: {{ prefix: "/" }}
      route: {{ cluster: {cluster} }}
"#
    )
}

#[test]
fn http_rds_routes_follow_updates() {
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    let dir = tempfile::tempdir().expect("tempdir");
    let rds_path = dir.path().join("rds.yaml");
    std::fs::write(&rds_path, rds_file("a", "1")).expect("write rds");
    let clusters = format!(
        "{}{}",
        cluster("a", &[a.addr], ""),
        cluster("b", &[b.addr], "")
    );
    let boot = bootstrap("", "", &clusters).replace(
        "          route_config:\n",
        &format!(
            "          rds:\n            route_config_name: rds_routes\n            config_source:\n              resource_api_version: V3\n              path_config_source: {{ path: {} }}\n",
            rds_path.display()
        ),
    );
    let c = Courier::start(&boot);
    let mut client = Client::connect(c.listener);
    // Until the table arrives the connection manager answers 404, as Envoy does.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = client.get("h", "/", &[]);
        if r.status == 200 {
            assert_eq!(r.header("x-upstream"), Some("a"));
            break;
        }
        assert_eq!(r.status, 404);
        assert!(Instant::now() < deadline, "RDS table never arrived");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Update the route: the same keep-alive connection follows the new table.
    std::fs::write(&rds_path, rds_file("b", "2")).expect("write rds");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = client.get("h", "/", &[]);
        if r.header("x-upstream") == Some("b") {
            break;
        }
        assert!(Instant::now() < deadline, "route update not applied");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn http_rds_invalid_regex_is_rejected_with_path() {
    use courier::http::route::{RouteConfiguration, RouteTable};
    let rc: RouteConfiguration = courier_proto::from_value(&serde_json::json!({
        "name": "r",
        "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
            {"match": {"safe_regex": {"regex": "[unclosed"}}, "route": {"cluster": "c"}}
        ]}]
    }))
    .expect("proto");
    let err = RouteTable::compile(
        &rc,
        &courier::stats::Store::new(1),
        &courier::filters::http::HTTP_FILTERS,
    )
    .err()
    .expect("invalid regex must be rejected");
    assert_eq!(
        err.path,
        "virtual_hosts[0].routes[0].match.safe_regex.regex"
    );
}
