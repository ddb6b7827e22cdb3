//! Upstream request stats as Envoy keeps them: a cluster's (`cluster.<name>.`, its codes
//! also under `external.`/`internal.`), a route's with a `stat_prefix`
//! (`vhost.<virtual host>.route.<prefix>.`) and a virtual cluster's
//! (`vhost.<virtual host>.vcluster.<name>.`, `other` for the rest). The same requests go
//! through Courier and, when `envoy` is on PATH, through Envoy 1.40 on the same bootstrap,
//! and every non-zero request counter of both is compared, then checked against what
//! Envoy was measured to count.

mod http_support;

use http_support::*;

const ROUTES: &str = r#"            name: local
            virtual_hosts:
            - name: vh1
              domains: ["*"]
              virtual_clusters:
              - name: statuses
                headers: [ { name: ":path", string_match: { prefix: "/status" } } ]
              - name: posts
                headers: [ { name: ":method", string_match: { exact: "POST" } } ]
              routes:
              - match: { prefix: "/status" }
                stat_prefix: status_route
                route: { cluster: a, retry_policy: { retry_on: 5xx, num_retries: 1, retry_back_off: { base_interval: 0.005s } } }
              - match: { prefix: "/flaky" }
                stat_prefix: flaky
                route: { cluster: a, retry_policy: { retry_on: 5xx, num_retries: 2, retry_back_off: { base_interval: 0.005s } } }
              - match: { prefix: "/delay/300/route" }
                stat_prefix: sleepy
                route: { cluster: a, timeout: 0.1s }
              - match: { prefix: "/delay/300/per-try" }
                stat_prefix: per_try
                route:
                  cluster: a
                  timeout: 2s
                  retry_policy: { retry_on: 5xx, num_retries: 1, per_try_timeout: 0.05s, retry_back_off: { base_interval: 0.005s } }
              - match: { prefix: "/direct" }
                stat_prefix: direct
                direct_response: { status: 201, body: { inline_string: "d" } }
              - match: { prefix: "/dead" }
                stat_prefix: dead
                route: { cluster: dead }
              - match: { prefix: "/close" }
                stat_prefix: reset
                route: { cluster: a }
              - match: { prefix: "/" }
                route: { cluster: a }
            - name: vh2
              domains: ["other"]
              routes:
              - match: { prefix: "/" }
                stat_prefix: plain
                route: { cluster: a }
"#;

/// `(method, host, path)` of each request.
const REQUESTS: &[(&str, &str, &str)] = &[
    ("GET", "h", "/status/200"),
    ("GET", "h", "/status/503"),
    ("GET", "h", "/status/404"),
    ("GET", "h", "/flaky/1/x"),
    ("GET", "h", "/delay/300/route"),
    ("GET", "h", "/delay/300/per-try"),
    ("GET", "h", "/direct"),
    ("POST", "h", "/x"),
    ("GET", "other", "/status/200"),
    ("GET", "h", "/dead"),
    ("GET", "h", "/close"),
];

/// Whether a stat is one of the request counters compared.
fn compared(name: &str) -> bool {
    let scoped = name.starts_with("vhost.")
        || name.starts_with("cluster.a.")
        || name.starts_with("cluster.dead.");
    let Some(stat) = name.rsplit('.').next() else {
        return false;
    };
    let counter = matches!(
        stat,
        "upstream_rq_total"
            | "upstream_rq_completed"
            | "upstream_rq_retry"
            | "upstream_rq_retry_success"
            | "upstream_rq_retry_limit_exceeded"
            | "upstream_rq_retry_overflow"
            | "upstream_rq_timeout"
            | "upstream_rq_per_try_timeout"
    ) || stat
        .strip_prefix("upstream_rq_")
        .is_some_and(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_digit() || b == b'x'));
    scoped && counter
}

/// The statuses the client got, then every non-zero compared counter, sorted.
fn run(p: &Courier) -> (Vec<u16>, Vec<String>) {
    let statuses = REQUESTS
        .iter()
        .map(|(method, host, path)| {
            Client::connect(p.listener)
                .request(
                    method,
                    host,
                    path,
                    &[],
                    if *method == "POST" { b"x" } else { b"" },
                )
                .status
        })
        .collect();
    let stats = admin_get(p.admin, "/stats").unwrap_or_default();
    let mut counters: Vec<String> = stats
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(k, v)| compared(k) && *v != "0")
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    counters.sort();
    (statuses, counters)
}

#[test]
fn request_stats_match_envoy() {
    let dead = refusing_addr();
    let boot = |a: &Upstream| {
        let clusters = format!(
            "{}{}",
            cluster("a", &[a.addr], ""),
            cluster("dead", &[dead], "")
        );
        bootstrap(ROUTES, "", &clusters)
    };
    let a = Upstream::start("a");
    let got = run(&Courier::start(&boot(&a)));
    let a = Upstream::start("a");
    match Courier::start_envoy(&boot(&a)) {
        Some(envoy) => assert_eq!(run(&envoy), got, "envoy vs courier"),
        None => eprintln!("envoy not on PATH: skipping the request stats differential"),
    }
    assert_eq!(
        got.0,
        [200, 503, 404, 200, 504, 504, 201, 200, 200, 503, 503]
    );
    let expected = [
        // Attempts that had a connection: 2 for each retried request, 1 for the rest
        // (none to the cluster that refuses them).
        "cluster.a.upstream_rq_total: 12",
        "vhost.vh1.vcluster.other.upstream_rq_total: 6",
        // A retried answer is charged apart; timeouts and failures are, as their reply.
        "cluster.a.retry.upstream_rq_503: 2",
        "cluster.a.upstream_rq_200: 4",
        "cluster.a.upstream_rq_2xx: 4",
        "cluster.a.upstream_rq_404: 1",
        "cluster.a.upstream_rq_4xx: 1",
        "cluster.a.upstream_rq_503: 2",
        "cluster.a.upstream_rq_504: 2",
        "cluster.a.upstream_rq_5xx: 4",
        "cluster.a.upstream_rq_completed: 9",
        "cluster.a.upstream_rq_retry: 3",
        "cluster.a.upstream_rq_retry_limit_exceeded: 2",
        "cluster.a.upstream_rq_retry_success: 1",
        "cluster.a.upstream_rq_timeout: 1",
        "cluster.a.upstream_rq_per_try_timeout: 2",
        "cluster.dead.upstream_rq_503: 1",
        "cluster.dead.upstream_rq_5xx: 1",
        "cluster.dead.upstream_rq_completed: 1",
        "vhost.vh1.route.status_route.upstream_rq_total: 4",
        "vhost.vh1.route.status_route.upstream_rq_200: 1",
        "vhost.vh1.route.status_route.upstream_rq_503: 1",
        "vhost.vh1.route.status_route.upstream_rq_404: 1",
        "vhost.vh1.route.status_route.upstream_rq_retry: 1",
        "vhost.vh1.route.status_route.upstream_rq_retry_limit_exceeded: 1",
        "vhost.vh1.route.flaky.upstream_rq_retry_success: 1",
        "vhost.vh1.route.sleepy.upstream_rq_timeout: 1",
        "vhost.vh1.route.sleepy.upstream_rq_504: 1",
        "vhost.vh1.route.per_try.upstream_rq_504: 1",
        "vhost.vh1.route.dead.upstream_rq_503: 1",
        "vhost.vh1.route.reset.upstream_rq_503: 1",
        "vhost.vh2.route.plain.upstream_rq_200: 1",
        "vhost.vh1.vcluster.statuses.upstream_rq_total: 4",
        "vhost.vh1.vcluster.posts.upstream_rq_200: 1",
        "vhost.vh1.vcluster.other.upstream_rq_retry_success: 1",
    ];
    for line in expected {
        assert!(
            got.1.iter().any(|l| l == line),
            "missing {line:?} in {:#?}",
            got.1
        );
    }
    // Direct responses and the virtual host without virtual clusters have none.
    assert!(
        !got.1
            .iter()
            .any(|l| l.contains(".route.direct.") || l.contains("vh2.vcluster")),
        "{:#?}",
        got.1
    );
    assert!(
        got.1
            .iter()
            .any(|l| l.starts_with("cluster.a.external.upstream_rq_200: 4")),
        "{:#?}",
        got.1
    );
}
