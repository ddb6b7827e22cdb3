//! Load-balancing policies, typed (`load_balancing_policy`) and legacy (`lb_policy`): each
//! spreads requests over three upstreams with unequal weights as Envoy 1.40 does, and
//! LEAST_REQUEST sends fewer requests to a slow upstream. Runs through Courier and, when
//! `envoy` is on PATH, through Envoy on the same bootstrap; each proxy's share per host is
//! checked against the share Envoy's algorithm gives.

mod http_support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use http_support::*;

/// Requests per policy per proxy.
const REQUESTS: usize = 1200;

/// The weights of the three upstreams.
const WEIGHTS: [u32; 3] = [1, 2, 5];

/// A typed `load_balancing_policy` of one policy.
fn typed(kind: &str, message: &str, fields: &str) -> String {
    format!(
        "    load_balancing_policy:\n      policies:\n      - typed_extension_config:\n          name: envoy.load_balancing_policies.{kind}\n          typed_config:\n            \"@type\": type.googleapis.com/envoy.extensions.load_balancing_policies.{kind}.v3.{message}\n{fields}"
    )
}

/// A static cluster over `hosts` with these weights and policy lines.
fn cluster(name: &str, hosts: &[SocketAddr], weights: &[u32], policy: &str) -> String {
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
}

/// One case: cluster name (also its route's path prefix), policy lines, weights, the
/// share Envoy's algorithm gives each host, and the largest deviation allowed from it.
type Case = (&'static str, String, [u32; 3], [f64; 3], f64);

fn cases() -> Vec<Case> {
    let weighted = WEIGHTS.map(|w| f64::from(w) / 8.0);
    let uniform = [1.0 / 3.0; 3];
    vec![
        // Deterministic schedules: the shares are the weights, to a request or two.
        (
            "rr",
            "    lb_policy: ROUND_ROBIN\n".into(),
            WEIGHTS,
            weighted,
            0.02,
        ),
        (
            "rr_typed",
            typed("round_robin", "RoundRobin", ""),
            WEIGHTS,
            weighted,
            0.02,
        ),
        // Both fields: the typed policy decides, `lb_policy` is ignored.
        (
            "both",
            format!(
                "    lb_policy: MAGLEV\n{}",
                typed("round_robin", "RoundRobin", "")
            ),
            WEIGHTS,
            weighted,
            0.02,
        ),
        // Unequal weights: Envoy's weighted least request (idle hosts: the weights).
        (
            "lr_typed",
            typed(
                "least_request",
                "LeastRequest",
                "            choice_count: 3\n",
            ),
            WEIGHTS,
            weighted,
            0.02,
        ),
        // Equal weights: the fewest active of `choice_count` random hosts; idle hosts tie
        // and the first sampled wins, so uniform. Sampling: 4 standard deviations is 0.055.
        (
            "lr_equal",
            typed(
                "least_request",
                "LeastRequest",
                "            choice_count: 3\n",
            ),
            [1, 1, 1],
            uniform,
            0.06,
        ),
        // Envoy's RANDOM ignores weights.
        (
            "random",
            typed("random", "Random", ""),
            WEIGHTS,
            uniform,
            0.06,
        ),
        // Hashing policies with a fresh key per request: each host's share of the ring
        // (or table) follows its weight, plus sampling.
        (
            "ring",
            typed(
                "ring_hash",
                "RingHash",
                "            minimum_ring_size: 1024\n",
            ),
            WEIGHTS,
            weighted,
            0.07,
        ),
        (
            "maglev",
            typed("maglev", "Maglev", "            table_size: 1021\n"),
            WEIGHTS,
            weighted,
            0.06,
        ),
    ]
}

/// Routes `/<name>/…` to cluster `<name>`, hashing on `x-key` (for the hashing policies).
fn routes(names: &[&str]) -> String {
    let mut r = String::from(
        "            name: local\n            virtual_hosts:\n            - name: main\n              domains: [\"*\"]\n              routes:\n",
    );
    for name in names {
        r.push_str(&format!(
            "              - match: {{ prefix: \"/{name}/\" }}\n                route: {{ cluster: {name}, hash_policy: [ {{ header: {{ header_name: x-key }} }} ] }}\n"
        ));
    }
    r
}

/// How many of [`REQUESTS`] requests to `/<name>/` each upstream served, by name.
fn counts(p: &Courier, name: &str) -> HashMap<String, usize> {
    let mut c = Client::connect(p.listener);
    let mut out = HashMap::new();
    for i in 0..REQUESTS {
        let r = c.get("h", &format!("/{name}/"), &[("x-key", &format!("key-{i}"))]);
        assert_eq!(r.status, 200, "{name}");
        *out.entry(r.header("x-upstream").unwrap_or("?").to_string())
            .or_insert(0) += 1;
    }
    out
}

/// Checks one proxy's shares against the expected ones; returns the counts per host.
fn check(p: &Courier, who: &str) -> Vec<(String, Vec<usize>)> {
    let mut all = Vec::new();
    for (name, _, _, expected, bound) in cases() {
        let got = counts(p, name);
        let per_host: Vec<usize> = ["a", "b", "c"]
            .iter()
            .map(|h| got.get(*h).copied().unwrap_or(0))
            .collect();
        assert_eq!(
            per_host.iter().sum::<usize>(),
            REQUESTS,
            "{who} {name}: {got:?}"
        );
        for (count, share) in per_host.iter().zip(expected) {
            let deviation = (*count as f64 / REQUESTS as f64 - share).abs();
            assert!(
                deviation <= bound,
                "{who} {name}: {per_host:?} of {REQUESTS}, expected shares {expected:?}"
            );
        }
        all.push((name.to_string(), per_host));
    }
    all
}

#[test]
fn each_policy_spreads_requests_as_envoy() {
    let ups: Vec<Upstream> = ["a", "b", "c"].iter().map(|n| Upstream::start(n)).collect();
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let cases = cases();
    let names: Vec<&str> = cases.iter().map(|c| c.0).collect();
    let clusters: String = cases
        .iter()
        .map(|(name, policy, weights, _, _)| cluster(name, &addrs, weights, policy))
        .collect();
    let boot = bootstrap(&routes(&names), "", &clusters);
    let courier = check(&Courier::start(&boot), "courier");
    eprintln!("courier: {courier:?}");
    let Some(envoy) = Courier::start_envoy(&boot) else {
        eprintln!("envoy not on PATH: skipping the load-balancing differential");
        return;
    };
    let envoy = check(&envoy, "envoy");
    eprintln!("envoy: {envoy:?}");
    // The same key hashes to the same host on both: ring and table are built alike.
    for name in ["ring", "maglev"] {
        let of = |all: &[(String, Vec<usize>)]| {
            all.iter().find(|(n, _)| n == name).map(|(_, c)| c.clone())
        };
        assert_eq!(of(&courier), of(&envoy), "{name}: courier vs envoy");
    }
}

/// An upstream that answers every request after `delay`, naming itself `name`.
fn slow_upstream(name: &'static str, delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            std::thread::spawn(move || {
                let Ok(mut w) = stream.try_clone() else {
                    return;
                };
                let mut r = BufReader::new(stream);
                loop {
                    // A GET's head, up to its blank line.
                    let mut line = String::new();
                    loop {
                        line.clear();
                        match r.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    std::thread::sleep(delay);
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nx-upstream: {name}\r\ncontent-length: 0\r\n\r\n"
                    );
                    if w.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// The share of requests the slow host served, with `clients` concurrent clients each
/// sending `each` requests.
fn slow_share(p: &Courier, clients: usize, each: usize) -> f64 {
    let listener = p.listener;
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Client::connect(listener);
                (0..each)
                    .filter(|_| c.get("h", "/", &[]).header("x-upstream") == Some("slow"))
                    .count()
            })
        })
        .collect();
    let slow: usize = threads
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .sum();
    slow as f64 / (clients * each) as f64
}

#[test]
fn least_request_sends_less_to_a_slow_host_as_envoy() {
    let fast: Vec<Upstream> = ["a", "b"].iter().map(|n| Upstream::start(n)).collect();
    let slow = slow_upstream("slow", Duration::from_millis(100));
    let hosts = [fast[0].addr, fast[1].addr, slow];
    let clusters = cluster(
        "lr",
        &hosts,
        &[1, 1, 1],
        &typed("least_request", "LeastRequest", ""),
    );
    let boot = bootstrap(&all_to("lr"), "", &clusters);
    // Round robin would give the slow host a third. With 12 clients in flight it nearly
    // always holds some of them, so two choices pick it about when both land on it (1/9).
    let courier = slow_share(&Courier::start(&boot), 12, 40);
    assert!(courier < 0.2, "courier: slow host served {courier:.3}");
    let Some(envoy) = Courier::start_envoy(&boot) else {
        eprintln!("envoy not on PATH: skipping the least-request differential");
        return;
    };
    let envoy = slow_share(&envoy, 12, 40);
    assert!(envoy < 0.2, "envoy: slow host served {envoy:.3}");
    eprintln!("slow host share: courier {courier:.3}, envoy {envoy:.3}");
}

/// A static cluster with one locality per host, weighted `locality_weights` (Envoy
/// Gateway's shape: a backend per locality, its weight the locality's).
fn locality_cluster(
    name: &str,
    hosts: &[SocketAddr],
    locality_weights: &[u32],
    policy: &str,
) -> String {
    let endpoints: String = hosts
        .iter()
        .zip(locality_weights)
        .enumerate()
        .map(|(i, (a, w))| {
            format!(
                "      - locality: {{ region: {name}/backend/{i} }}\n        load_balancing_weight: {w}\n        lb_endpoints:\n        - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}\n          load_balancing_weight: 1\n",
                a.ip(),
                a.port()
            )
        })
        .collect();
    format!(
        "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n{policy}    load_assignment:\n      cluster_name: {name}\n      endpoints:\n{endpoints}"
    )
}

#[test]
fn locality_weighted_balancing_as_envoy_gateway_sends_it() {
    let ups: Vec<Upstream> = ["a", "b", "c"].iter().map(|n| Upstream::start(n)).collect();
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let locality_weighted = "            locality_lb_config: { locality_weighted_lb_config: {} }\n";
    let clusters = [
        locality_cluster(
            "eg",
            &addrs,
            &WEIGHTS,
            &typed("least_request", "LeastRequest", locality_weighted),
        ),
        locality_cluster(
            "eg_rr",
            &addrs,
            &WEIGHTS,
            &typed("round_robin", "RoundRobin", locality_weighted),
        ),
        locality_cluster(
            "legacy",
            &addrs,
            &WEIGHTS,
            "    common_lb_config: { locality_weighted_lb_config: {} }\n",
        ),
        // Without locality weighting the localities' weights play no part.
        locality_cluster("plain", &addrs, &WEIGHTS, ""),
    ]
    .concat();
    let boot = bootstrap(&routes(&["eg", "eg_rr", "legacy", "plain"]), "", &clusters);
    let check = |p: &Courier, who: &str| {
        let weighted = WEIGHTS.map(|w| f64::from(w) / 8.0);
        for (name, expected) in [
            ("eg", weighted),
            ("eg_rr", weighted),
            ("legacy", weighted),
            ("plain", [1.0 / 3.0; 3]),
        ] {
            let got = counts(p, name);
            let per_host: Vec<usize> = ["a", "b", "c"]
                .iter()
                .map(|h| got.get(*h).copied().unwrap_or(0))
                .collect();
            for (count, share) in per_host.iter().zip(expected) {
                let deviation = (*count as f64 / REQUESTS as f64 - share).abs();
                assert!(
                    deviation <= 0.02,
                    "{who} {name}: {per_host:?} of {REQUESTS}, expected shares {expected:?}"
                );
            }
        }
    };
    check(&Courier::start(&boot), "courier");
    let Some(envoy) = Courier::start_envoy(&boot) else {
        eprintln!("envoy not on PATH: skipping the locality-weighted differential");
        return;
    };
    check(&envoy, "envoy");
}

/// Writes the assignment of each of clusters `names` (over `hosts`, weight 1) as an EDS
/// file of its own in `dir` (a `DiscoveryResponse`: Envoy takes one assignment a file), by
/// rename so that a reader sees the old file or the new one, never half of one (Envoy
/// watches for the rename).
fn write_eds(dir: &std::path::Path, names: &[&str], hosts: &[SocketAddr], version: u32) {
    for name in names {
        let mut text = format!("version_info: \"{version}\"\nresources:\n");
        text.push_str(&format!(
            "- \"@type\": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment\n  cluster_name: {name}\n  endpoints:\n  - lb_endpoints:\n"
        ));
        for a in hosts {
            text.push_str(&format!(
                "    - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}\n",
                a.ip(),
                a.port()
            ));
        }
        let file = dir.join(format!("{name}.yaml"));
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, text).expect("write eds");
        std::fs::rename(&tmp, file).expect("rename eds");
    }
}

/// How many of `n` requests to `/<name>/` went to upstream `c`.
fn share_of_c(p: &Courier, name: &str, n: usize) -> f64 {
    let mut client = Client::connect(p.listener);
    let c = (0..n)
        .filter(|_| {
            client
                .get("h", &format!("/{name}/"), &[])
                .header("x-upstream")
                == Some("c")
        })
        .count();
    c as f64 / n as f64
}

#[test]
fn slow_start_ramps_a_new_host_up_as_envoy() {
    // The window is what is tested: the test waits it out (the hosts' age is the fact).
    const WINDOW: Duration = Duration::from_secs(4);
    let ups: Vec<Upstream> = ["a", "b", "c"].iter().map(|n| Upstream::start(n)).collect();
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let names = ["ss_rr", "ss_lr"];
    write_eds(dir.path(), &names, &addrs[..2], 1);
    let slow = format!(
        "            slow_start_config: {{ slow_start_window: {}s, min_weight_percent: {{ value: 10 }} }}\n",
        WINDOW.as_secs()
    );
    let clusters: String = [
        ("ss_rr", typed("round_robin", "RoundRobin", &slow)),
        ("ss_lr", typed("least_request", "LeastRequest", &slow)),
    ]
    .iter()
    .map(|(name, policy)| {
        format!(
            "  - name: {name}\n    type: EDS\n    connect_timeout: 1s\n{policy}    eds_cluster_config:\n      eds_config:\n        resource_api_version: V3\n        path_config_source: {{ path: {} }}\n",
            dir.path().join(format!("{name}.yaml")).display()
        )
    })
    .collect();
    let boot = format!(
        "node: {{ id: n1, cluster: c1 }}\n{}",
        bootstrap(&routes(&names), "", &clusters)
    );
    let mut proxies = vec![("courier", Courier::start(&boot))];
    if let Some(envoy) = Courier::start_envoy(&boot) {
        proxies.push(("envoy", envoy));
    } else {
        eprintln!("envoy not on PATH: skipping the slow start differential");
    }
    let membership = |n: u64| {
        for (who, p) in &proxies {
            for name in names {
                let stat = format!("cluster.{name}.membership_total");
                assert_eq!(p.wait_stat(&stat, n), n, "{who} {stat}");
            }
        }
    };
    membership(2);
    // Hosts a and b leave their window; then c arrives.
    std::thread::sleep(WINDOW + Duration::from_millis(500));
    write_eds(dir.path(), &names, &addrs, 2);
    membership(3);
    let added = std::time::Instant::now();
    for (who, p) in &proxies {
        for name in names {
            let share = share_of_c(p, name, 300);
            let age = added.elapsed();
            eprintln!("{who} {name}: the new host served {share:.3}, {age:?} after it came");
            // c's weight is at most max(10%, age / window) of a's or b's: a fifth of the
            // traffic at most while it is younger than half the window.
            if age < WINDOW / 2 {
                assert!(share < 0.2, "{who} {name}: new host served {share:.3}");
            } else {
                eprintln!("{who} {name}: burst ended {age:?} after the update: not checked");
            }
            assert!(share > 0.0, "{who} {name}: the new host served nothing");
        }
    }
    // Out of the window: a third each.
    std::thread::sleep(WINDOW.saturating_sub(added.elapsed()) + Duration::from_millis(500));
    for (who, p) in &proxies {
        for name in names {
            let share = share_of_c(p, name, 300);
            assert!(
                (share - 1.0 / 3.0).abs() < 0.07,
                "{who} {name}: after the window the new host served {share:.3}"
            );
        }
    }
}
