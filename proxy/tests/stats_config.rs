//! `/stats/prometheus` labels from Envoy's default tag extractors and from
//! `stats_config.stats_tags`, and `stats_matcher` deciding which stats the admin shows.
//! The same bootstrap and requests go through Courier and, when `envoy` is on PATH,
//! through Envoy 1.40; the Prometheus samples below must be the same in both.

mod http_support;

use std::collections::BTreeMap;

use http_support::*;

/// An HTTP listener routing to cluster `backend.svc` (a dotted name, as Kubernetes ones
/// are), a virtual cluster, and a `tcp_proxy` listener; `extra` goes at the top level.
fn stats_bootstrap(upstream: std::net::SocketAddr, tcp_port: u16, extra: &str) -> String {
    let boot = bootstrap(
        "            name: rc1
            virtual_hosts:
            - name: main
              domains: [\"*\"]
              virtual_clusters: [{ name: vc1, headers: [{ name: \":path\", string_match: { prefix: \"/\" } }] }]
              routes:
              - match: { prefix: \"/\" }
                route: { cluster: backend.svc }
",
        "",
        &cluster("backend.svc", &[upstream], ""),
    );
    let tcp = format!(
        "  - name: tcp
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {tcp_port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcpin
          cluster: backend.svc
  clusters:"
    );
    format!("{}{extra}", boot.replacen("  clusters:", &tcp, 1))
}

/// Prometheus samples by `name{labels}`, with the listener ports made stable.
fn prometheus(proxy: &Courier, tcp_port: u16) -> BTreeMap<String, String> {
    let text = admin_get(proxy.admin, "/stats/prometheus").unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(k, v)| {
            (
                k.replace(&proxy.listener.port().to_string(), "HTTP")
                    .replace(&tcp_port.to_string(), "TCP"),
                v.to_string(),
            )
        })
        .collect()
}

fn traffic(proxy: &Courier, tcp_port: u16) {
    assert_eq!(get(proxy.listener, "h", "/", &[]).status, 200);
    assert_eq!(get(proxy.listener, "h", "/status/404", &[]).status, 404);
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", tcp_port)).expect("tcp listener");
    use std::io::{Read, Write};
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: h\r\n\r\n")
        .expect("send");
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("timeout");
    // The response's first bytes: the connection was proxied.
    let mut first = [0u8; 8];
    tcp.read_exact(&mut first)
        .expect("a response through tcp_proxy");
}

/// The samples both proxies must print alike. (Histograms are left out: Envoy shows their
/// values only after a stats flush.)
const SAMPLES: &[&str] = &[
    r#"envoy_cluster_svc_upstream_rq{envoy_response_code="200",envoy_cluster_name="backend"}"#,
    r#"envoy_cluster_svc_upstream_rq{envoy_response_code="404",envoy_cluster_name="backend"}"#,
    r#"envoy_cluster_svc_upstream_rq_xx{envoy_response_code_class="2",envoy_cluster_name="backend"}"#,
    r#"envoy_cluster_svc_upstream_cx_total{envoy_cluster_name="backend"}"#,
    r#"envoy_http_downstream_rq_xx{envoy_response_code_class="4",envoy_http_conn_manager_prefix="ingress"}"#,
    r#"envoy_listener_downstream_cx_total{envoy_listener_address="127.0.0.1_HTTP"}"#,
    r#"envoy_listener_downstream_cx_total{envoy_listener_address="127.0.0.1_TCP"}"#,
    r#"envoy_tcp_downstream_cx_total{envoy_tcp_prefix="tcpin"}"#,
    r#"envoy_vhost_vcluster_upstream_rq{envoy_response_code="200",envoy_virtual_cluster="vc1",envoy_virtual_host="main"}"#,
    r#"envoy_listener_manager_listener_added{}"#,
    r#"envoy_server_live{}"#,
];

fn samples(got: &BTreeMap<String, String>, keys: &[&str]) -> Vec<String> {
    keys.iter()
        .map(|k| format!("{k} {}", got.get(*k).map_or("MISSING", String::as_str)))
        .collect()
}

#[test]
fn prometheus_labels_come_from_envoys_default_tags() {
    let upstream = Upstream::start("u");
    let run = |start: &dyn Fn(&str) -> Option<Courier>| {
        let tcp_port = free_port();
        let proxy = start(&stats_bootstrap(upstream.addr, tcp_port, ""))?;
        traffic(&proxy, tcp_port);
        proxy.wait_stat("tcp.tcpin.downstream_cx_total", 1);
        Some(samples(&prometheus(&proxy, tcp_port), SAMPLES))
    };
    let got = run(&|b| Some(Courier::start(b))).expect("courier starts");
    if let Some(envoy) = run(&|b| Courier::start_envoy(b)) {
        assert_eq!(envoy, got, "envoy vs courier");
    }
    assert!(got.iter().all(|l| !l.ends_with("MISSING")), "{got:#?}");
}

/// Istio-style tags: the defaults off, a cluster name keeping its namespace and domain
/// (a regex with a lookahead), a fixed tag; and an inclusion list.
const CUSTOM: &str = r#"stats_config:
  use_all_default_tags: false
  stats_tags:
  - tag_name: cluster_name
    regex: "^cluster\\.((.+?(\\..+?\\.svc\\.cluster\\.local)?)\\.)"
  - tag_name: http_conn_manager_prefix
    regex: "^http(?=\\.)\\.((.*?)\\.)"
  - tag_name: response_code
    regex: "_rq(_(\\d{3}))$"
  - tag_name: mesh
    fixed_value: east
  stats_matcher:
    inclusion_list:
      patterns:
      - prefix: "cluster.backend.svc.upstream_rq"
      - exact: "http.ingress.downstream_rq_2xx"
      - safe_regex: { regex: "^listener_manager\\.listener_(added|removed)$" }
"#;

#[test]
fn custom_tags_and_the_stats_matcher_apply_as_in_envoy() {
    let upstream = Upstream::start("u");
    let run = |start: &dyn Fn(&str) -> Option<Courier>| {
        let tcp_port = free_port();
        let proxy = start(&stats_bootstrap(upstream.addr, tcp_port, CUSTOM))?;
        traffic(&proxy, tcp_port);
        proxy.wait_stat("cluster.backend.svc.upstream_rq_200", 1);
        let prom = prometheus(&proxy, tcp_port);
        let shown: Vec<String> = admin_get(proxy.admin, "/stats")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(": ").map(|(k, _)| k.to_string()))
            .filter(|k| !k.starts_with("cluster.backend.svc.upstream_rq"))
            .collect();
        Some((
            samples(
                &prom,
                &[
                    r#"envoy_cluster_svc_upstream_rq{response_code="200",mesh="east",cluster_name="backend"}"#,
                    r#"envoy_cluster_svc_upstream_rq_2xx{mesh="east",cluster_name="backend"}"#,
                    r#"envoy_http_downstream_rq_2xx{mesh="east",http_conn_manager_prefix="ingress"}"#,
                    r#"envoy_listener_manager_listener_added{mesh="east"}"#,
                ],
            ),
            shown,
            prom.keys()
                .any(|k| k.starts_with("envoy_tcp") || k.starts_with("envoy_server")),
        ))
    };
    let got = run(&|b| Some(Courier::start(b))).expect("courier starts");
    if let Some(envoy) = run(&|b| Courier::start_envoy(b)) {
        assert_eq!(envoy, got, "envoy vs courier");
    }
    assert!(got.0.iter().all(|l| !l.ends_with("MISSING")), "{got:#?}");
    assert_eq!(
        got.1,
        [
            "http.ingress.downstream_rq_2xx",
            "listener_manager.listener_added",
            "listener_manager.listener_removed"
        ]
    );
    assert!(!got.2, "stats outside the inclusion list are not shown");
}

#[test]
fn stats_config_errors_are_refused_by_path() {
    let base = bootstrap(&all_to("a"), "", "    []\n");
    for (extra, want) in [
        (
            "stats_config:\n  stats_tags: [{ tag_name: envoy.cluster_name, regex: \"x(\" }]\n  use_all_default_tags: false\n",
            "stats_config.stats_tags[0].regex: invalid regex",
        ),
        (
            "stats_config:\n  stats_tags: [{ tag_name: envoy.cluster_name }]\n",
            "Tag name 'envoy.cluster_name' specified twice.",
        ),
        (
            "stats_config:\n  stats_tags: [{ tag_name: mine }]\n",
            "no default regex for name: 'mine'",
        ),
        // Envoy's checks of `histogram_bucket_settings`.
        (
            "stats_config:\n  histogram_bucket_settings: [{ match: { prefix: a }, buckets: [1, 0] }]\n",
            "stats_config.histogram_bucket_settings[0].buckets[1]: value must be greater than 0",
        ),
        (
            "stats_config:\n  histogram_bucket_settings: [{ match: { prefix: a }, buckets: [2, 1, 2] }]\n",
            "stats_config.histogram_bucket_settings[0].buckets[2]: repeated value must contain unique items",
        ),
        (
            "stats_config:\n  histogram_bucket_settings: [{ buckets: [1] }]\n",
            "stats_config.histogram_bucket_settings[0].match: value is required",
        ),
        (
            "stats_config:\n  histogram_bucket_settings: [{ match: { prefix: a }, buckets: [1], bins: 0 }]\n",
            "stats_config.histogram_bucket_settings[0].bins: value must be inside range (0, 46082]",
        ),
    ] {
        let (code, stderr) = validate(&format!("{base}{extra}"));
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains(want), "want {want:?} in {stderr}");
    }
}
