//! `RING_HASH` and `MAGLEV` clusters and routes' `hash_policy`: the same request hash picks the same
//! host from Courier as from Envoy 1.40 (the same ring, the same xxHash64 of the same
//! request parts), for header, cookie, query parameter and source address policies, several
//! policies combined, `terminal`, and weighted hosts; a cookie policy with a `ttl` makes the
//! cookie Envoy makes. Runs through Courier and, when `envoy` is on PATH, through Envoy; the
//! two must agree host for host.

mod http_support;

use std::net::SocketAddr;

use http_support::*;

const ROUTES: &str = r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              routes:
              - match: { prefix: "/h" }
                route: { cluster: ring, hash_policy: [ { header: { header_name: x-user } } ] }
              - match: { prefix: "/rewrite" }
                route:
                  cluster: ring
                  hash_policy:
                  - header:
                      header_name: x-user
                      regex_rewrite: { pattern: { regex: "-.*" }, substitution: "" }
              - match: { prefix: "/c" }
                route: { cluster: ring, hash_policy: [ { cookie: { name: sess } } ] }
              - match: { prefix: "/made" }
                route: { cluster: ring, hash_policy: [ { cookie: { name: made, ttl: 3600s, path: /made } } ] }
              - match: { prefix: "/q" }
                route: { cluster: ring, hash_policy: [ { query_parameter: { name: u } } ] }
              - match: { prefix: "/ip" }
                route: { cluster: ring, hash_policy: [ { connection_properties: { source_ip: true } } ] }
              - match: { prefix: "/multi" }
                route:
                  cluster: ring
                  hash_policy:
                  - { header: { header_name: x-a } }
                  - { header: { header_name: x-b }, terminal: true }
                  - { header: { header_name: x-c } }
              - match: { prefix: "/w" }
                route: { cluster: weighted, hash_policy: [ { header: { header_name: x-user } } ] }
              - match: { prefix: "/retry-plain" }
                route:
                  cluster: ring
                  hash_policy: [ { header: { header_name: x-user } } ]
                  retry_policy: { retry_on: 5xx, num_retries: 1, retry_back_off: { base_interval: 0.001s } }
              - match: { prefix: "/retry" }
                route:
                  cluster: ring
                  hash_policy: [ { header: { header_name: x-user } } ]
                  retry_policy:
                    retry_on: 5xx
                    num_retries: 1
                    retry_back_off: { base_interval: 0.001s }
                    host_selection_retry_max_attempts: 20
                    retry_host_predicate:
                    - name: envoy.retry_host_predicates.previous_hosts
                      typed_config: { "@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate }
              - match: { prefix: "/maglev-retry" }
                route:
                  cluster: maglev
                  hash_policy: [ { header: { header_name: x-user } } ]
                  retry_policy:
                    retry_on: 5xx
                    num_retries: 1
                    retry_back_off: { base_interval: 0.001s }
                    host_selection_retry_max_attempts: 20
                    retry_host_predicate:
                    - name: envoy.retry_host_predicates.previous_hosts
                      typed_config: { "@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate }
              - match: { prefix: "/maglev-weighted" }
                route: { cluster: maglev_weighted, hash_policy: [ { header: { header_name: x-user } } ] }
              - match: { prefix: "/maglev" }
                route: { cluster: maglev, hash_policy: [ { header: { header_name: x-user } } ] }
"#;

/// The clusters: `ring` over four hosts, `weighted` over three with weights 1, 2 and 5 and
/// a small ring (its scaling and carried fractions); `maglev` and `maglev_weighted` the
/// same with Maglev tables (the default size, and a small one).
fn clusters(hosts: &[SocketAddr]) -> String {
    let cluster = |name: &str, policy: &str, weights: &[u32]| {
        let endpoints: String = hosts
            .iter()
            .zip(weights)
            .map(|(a, w)| {
                format!(
                    "        - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}\n          load_balancing_weight: {w}\n",
                    a.ip(),
                    a.port()
                )
            })
            .collect();
        format!(
            "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n{policy}    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n{endpoints}"
        )
    };
    [
        cluster("ring", "    lb_policy: RING_HASH\n", &[1, 1, 1, 1]),
        cluster(
            "weighted",
            "    lb_policy: RING_HASH\n    ring_hash_lb_config: { minimum_ring_size: 13 }\n",
            &[1, 2, 5],
        ),
        cluster("maglev", "    lb_policy: MAGLEV\n", &[1, 1, 1, 1]),
        cluster(
            "maglev_weighted",
            "    lb_policy: MAGLEV\n    maglev_lb_config: { table_size: 101 }\n",
            &[1, 2, 5],
        ),
    ]
    .concat()
}

/// Which upstream served each request, and a made cookie (its value checked and masked).
fn run(p: &Courier) -> Vec<String> {
    let mut out = Vec::new();
    let mut served = |label: String, path: &str, headers: &[(&str, &str)]| {
        let r = get(p.listener, "h", path, headers);
        out.push(format!(
            "{label}: {} {:?}",
            r.status,
            r.header("x-upstream")
        ));
    };
    for user in [
        "alice", "bob", "carol", "dave", "eve", "frank", "grace", "heidi",
    ] {
        served(format!("header {user}"), "/h", &[("x-user", user)]);
        served(
            format!("rewrite {user}"),
            "/rewrite",
            &[("x-user", &format!("{user}-suffix"))],
        );
        served(
            format!("cookie {user}"),
            "/c",
            &[("cookie", &format!("a=b; sess={user}"))],
        );
        served(format!("query {user}"), &format!("/q?x=1&u={user}"), &[]);
        served(format!("weighted {user}"), "/w", &[("x-user", user)]);
        served(format!("maglev {user}"), "/maglev", &[("x-user", user)]);
        // Every host answers 503: the retry's host is the one the response names.
        served(
            format!("retry avoiding {user}"),
            "/retry/status/503",
            &[("x-user", user)],
        );
        served(
            format!("retry same {user}"),
            "/retry-plain/status/503",
            &[("x-user", user)],
        );
        served(
            format!("maglev retry avoiding {user}"),
            "/maglev-retry/status/503",
            &[("x-user", user)],
        );
        served(
            format!("maglev weighted {user}"),
            "/maglev-weighted",
            &[("x-user", user)],
        );
        served(
            format!("multi {user}"),
            "/multi",
            &[("x-a", user), ("x-b", "b"), ("x-c", user)],
        );
        served(
            format!("multi without b {user}"),
            "/multi",
            &[("x-a", user), ("x-c", "c")],
        );
    }
    served(
        "two values".into(),
        "/h",
        &[("x-user", "x"), ("x-user", "y")],
    );
    served(
        "two values swapped".into(),
        "/h",
        &[("x-user", "y"), ("x-user", "x")],
    );
    served("source ip".into(), "/ip", &[]);
    // A made cookie: its value is the hash of the connection's two addresses.
    let mut c = Client::connect(p.listener);
    let client = c.stream.local_addr().expect("client address");
    let r = c.get("h", "/made", &[]);
    let cookie = r.header("set-cookie").unwrap_or("").to_string();
    let value = format!(
        "{:016x}",
        xxhash_rust::xxh64::xxh64(format!("{client}{}", p.listener).as_bytes(), 0)
    );
    out.push(format!(
        "made: {} cookie={:?}",
        r.status,
        cookie.replace(&value, "<hash of the addresses>")
    ));
    let again = c.get("h", "/made", &[("cookie", &format!("made={value}"))]);
    out.push(format!(
        "made cookie sent back: same host {}, cookie {:?}",
        again.header("x-upstream") == r.header("x-upstream"),
        again.header("set-cookie")
    ));
    out
}

#[test]
fn ring_hash_picks_the_hosts_envoy_picks() {
    let names = ["a", "b", "c", "d"];
    // Both proxies go to the same upstreams: the ring hashes the hosts' addresses.
    let ups: Vec<Upstream> = names.iter().map(|n| Upstream::start(n)).collect();
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let boot = bootstrap(ROUTES, "", &clusters(&addrs));
    let got = run(&Courier::start(&boot));
    match Courier::start_envoy(&boot) {
        Some(envoy) => assert_eq!(run(&envoy), got, "envoy vs courier"),
        None => eprintln!("envoy not on PATH: skipping the ring hash differential"),
    }
    // The hashes spread over the ring's hosts (64 hashed requests: missing a host by chance
    // is below one in 10^5), the order of a field's values does not matter, and the made
    // cookie has Envoy's form.
    for name in names {
        assert!(
            got.iter().any(|l| l.ends_with(&format!("Some({name:?})"))),
            "{got:#?}"
        );
    }
    // A retry with `previous_hosts` goes to another host (20 more picks: all landing on the
    // same host is below one in 10^11); without it, to the same one.
    let host_of = |label: String| {
        got.iter()
            .find(|l| l.starts_with(&format!("{label}:")))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or_default()
            .to_string()
    };
    for user in ["alice", "bob", "carol", "dave"] {
        assert_ne!(
            host_of(format!("retry avoiding {user}")),
            host_of(format!("header {user}")),
            "{got:#?}"
        );
        assert_eq!(
            host_of(format!("retry same {user}")),
            host_of(format!("header {user}")),
            "{got:#?}"
        );
        assert_ne!(
            host_of(format!("maglev retry avoiding {user}")),
            host_of(format!("maglev {user}")),
            "{got:#?}"
        );
    }
    let line = |label: &str| {
        got.iter()
            .find(|l| l.starts_with(&format!("{label}:")))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(
        line("two values").split_once(": ").map(|x| x.1.to_string()),
        line("two values swapped")
            .split_once(": ")
            .map(|x| x.1.to_string())
    );
    assert_eq!(
        line("made"),
        "made: 200 cookie=\"made=\\\"<hash of the addresses>\\\"; Max-Age=3600; Path=/made; HttpOnly\""
    );
    assert_eq!(
        line("made cookie sent back"),
        "made cookie sent back: same host true, cookie None"
    );
}
