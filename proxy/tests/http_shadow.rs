//! Request mirroring (`request_mirror_policies` on routes, virtual hosts and route
//! configurations): which requests are mirrored, what the mirror's cluster sees (authority
//! with `-shadow`, the first attempt's headers, the body, past the buffer limit too), and
//! that a mirror never holds the request back (its cluster refusing or never answering).
//! Compared with Envoy on the same bootstrap when `envoy` is on PATH.

mod http_support;

use std::time::{Duration, Instant};

use http_support::*;

const ROUTES: &str = r#"            name: local
            request_mirror_policies: [{ cluster: never }]
            virtual_hosts:
            - name: main
              domains: ["*"]
              request_mirror_policies: [{ cluster: shadow }]
              routes:
              - match: { prefix: "/none" }
                route: { cluster: main, request_mirror_policies: [{ cluster: shadow, runtime_fraction: { default_value: { numerator: 0 } } }] }
              - match: { prefix: "/nosuffix" }
                route: { cluster: main, request_mirror_policies: [{ cluster: shadow, disable_shadow_host_suffix_append: true }] }
              - match: { prefix: "/hdr" }
                route: { cluster: main, request_mirror_policies: [{ cluster_header: x-mirror-to }] }
              - match: { prefix: "/rw" }
                route: { cluster: main, prefix_rewrite: "/rewritten", request_mirror_policies: [{ cluster: shadow }] }
                request_headers_to_add: [{ header: { key: x-added, value: "yes" } }]
              - match: { prefix: "/limit" }
                route: { cluster: main, request_mirror_policies: [{ cluster: shadow }] }
                request_body_buffer_limit: 1000
              - match: { prefix: "/refused" }
                route: { cluster: main, request_mirror_policies: [{ cluster: refused }] }
              - match: { prefix: "/silent" }
                route: { cluster: main, timeout: 10s, request_mirror_policies: [{ cluster: silent }] }
              - match: { prefix: "/" }
                route: { cluster: main }
"#;

/// A request: path, extra fields, body, sent chunked, and whether Envoy mirrors it.
type Case = (
    &'static str,
    &'static [(&'static str, &'static str)],
    usize,
    bool,
    bool,
);

const CASES: [Case; 11] = [
    // The virtual host's policy (the route has none); the host part gets `-shadow`.
    ("/plain", &[], 0, false, true),
    ("/port", &[("host", "example.com:8080")], 0, false, true),
    // Sampled out.
    ("/none", &[], 0, false, false),
    ("/nosuffix", &[], 0, false, true),
    // `cluster_header`: mirrored only when the field names a cluster.
    ("/hdr", &[("x-mirror-to", "shadow")], 0, false, true),
    ("/hdr", &[], 0, false, false),
    // The first attempt's head: rewritten path, added fields, the original path.
    ("/rw/x?q=1", &[], 5, false, true),
    // Bodies past the buffer limit are mirrored too, with a length or chunked.
    ("/limit", &[], 5000, false, true),
    ("/limit", &[], 5000, true, true),
    // A mirror whose cluster refuses, or never answers, does not hold the request.
    ("/refused", &[], 0, false, false),
    ("/silent", &[], 3, false, false),
];

/// What each case got and what its mirror saw, and the mirror cluster's 2xx count.
fn run(p: &Courier, main: &Upstream, shadow: &Upstream) -> Vec<String> {
    let mirror_of = |id: &str| {
        shadow
            .seen
            .lock()
            .expect("seen")
            .iter()
            .find(|s| s.header("x-request-id") == Some(id))
            .cloned()
    };
    let mut out = Vec::new();
    let mut unmirrored = Vec::new();
    for (i, (path, fields, body_len, chunked, mirrored)) in CASES.iter().enumerate() {
        let id = format!("case-{i}");
        let mut head = vec![("x-request-id", id.as_str())];
        head.extend_from_slice(fields);
        let host = fields
            .iter()
            .find(|(k, _)| *k == "host")
            .map_or("h", |(_, v)| *v);
        head.retain(|(k, _)| *k != "host");
        let body = vec![b'b'; *body_len];
        let mut client = Client::connect(p.listener);
        let started = Instant::now();
        let resp = if *chunked {
            let mut raw = format!("POST {path} HTTP/1.1\r\nhost: {host}\r\n");
            for (k, v) in &head {
                raw.push_str(&format!("{k}: {v}\r\n"));
            }
            raw.push_str("transfer-encoding: chunked\r\n\r\n");
            let mut raw = raw.into_bytes();
            for chunk in body.chunks(1000) {
                raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                raw.extend_from_slice(chunk);
                raw.extend_from_slice(b"\r\n");
            }
            raw.extend_from_slice(b"0\r\n\r\n");
            client.send_raw(&raw);
            client.read().expect("a response")
        } else if body.is_empty() {
            client.get(host, path, &head)
        } else {
            client.request("POST", host, path, &head, &body)
        };
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{path}: the mirror held the request for {:?}",
            started.elapsed()
        );
        let seen_main = main.last().map(|s| {
            format!(
                "{} {} host={:?} body={}",
                s.method,
                s.path,
                s.header("host"),
                s.body.len()
            )
        });
        out.push(format!(
            "{path} {fields:?}: {} {:?}, main saw {seen_main:?}",
            resp.status,
            resp.body_str()
        ));
        if !*mirrored {
            unmirrored.push((out.len() - 1, id));
            continue;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let mirror = loop {
            if let Some(m) = mirror_of(&id) {
                break m;
            }
            assert!(Instant::now() < deadline, "{path}: no mirror arrived");
            std::thread::sleep(Duration::from_millis(5));
        };
        let line = out.last_mut().expect("a line");
        line.push_str(&format!(
            "; mirror saw {} {} host={:?} x-added={:?} x-envoy-original-path={:?} x-request-id={:?} body={} all-bytes-b={}",
            mirror.method,
            mirror.path,
            mirror.header("host"),
            mirror.header("x-added"),
            mirror.header("x-envoy-original-path"),
            mirror.header("x-request-id"),
            mirror.body.len(),
            mirror.body.iter().all(|&b| b == b'b'),
        ));
    }
    // A last mirrored request: once its mirror is in, the earlier ones would be too.
    let mut client = Client::connect(p.listener);
    assert_eq!(
        client
            .get("h", "/plain", &[("x-request-id", "last")])
            .status,
        200
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while mirror_of("last").is_none() {
        assert!(Instant::now() < deadline, "the last mirror did not arrive");
        std::thread::sleep(Duration::from_millis(5));
    }
    for (line, id) in unmirrored {
        out[line].push_str(&format!("; mirrored: {}", mirror_of(&id).is_some()));
    }
    out.push(format!(
        "cluster.shadow.upstream_rq_2xx={}",
        p.wait_stat("cluster.shadow.upstream_rq_2xx", 8)
    ));
    out
}

#[test]
fn request_mirroring_matches_envoy() {
    let start = |envoy: bool| {
        let main = Upstream::start("main");
        let shadow = Upstream::start("shadow");
        let clusters = [
            cluster("main", &[main.addr], ""),
            cluster("shadow", &[shadow.addr], ""),
            cluster("never", &[refusing_addr()], ""),
            cluster("refused", &[refusing_addr()], ""),
            cluster("silent", &[silent_upstream()], ""),
        ]
        .concat();
        let boot = bootstrap(ROUTES, "", &clusters);
        let proxy = if envoy {
            Courier::start_envoy(&boot)?
        } else {
            Courier::start(&boot)
        };
        Some((proxy, main, shadow))
    };
    let (courier, main, shadow) = start(false).expect("courier");
    let got = run(&courier, &main, &shadow);
    assert!(
        got[0].contains("mirror saw GET /plain host=Some(\"h-shadow\")"),
        "{got:?}"
    );
    assert!(got[8].contains("body=5000 all-bytes-b=true"), "{got:?}");
    let Some((envoy, main, shadow)) = start(true) else {
        eprintln!("envoy not on PATH: skipping the mirroring differential");
        return;
    };
    assert_eq!(run(&envoy, &main, &shadow), got, "envoy vs courier");
}
