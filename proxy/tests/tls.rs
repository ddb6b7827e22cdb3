//! TLS end to end, differential with Envoy 1.40 (`envoy` on PATH) on the same bootstrap:
//! SNI routing across chains (exact, wildcard, any TLS, plaintext default on the same
//! port), ALPN, mTLS accept and reject cases, TLS passthrough and termination in
//! `tcp_proxy`, and TLS to upstreams (SNI, SAN and CA checks, client certificates).
//! Outcomes and `ssl.*` / `tls_inspector.*` counters must be Envoy's.

mod http_support;
mod tls_support;

use std::net::SocketAddr;
use std::path::Path;

use http_support::*;
use tls_support::*;

struct Pki {
    _dir: tempfile::TempDir,
    ca: Ca,
    server: Pem,
    backend: Pem,
    client_good: Pem,
    client_evil: Pem,
    client_foreign: Pem,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ca = Ca::new(d, "ca");
    let other = Ca::new(d, "other-ca");
    Pki {
        server: ca.leaf(
            d,
            "server",
            &["api.example.com", "*.example.com", "other.org", "mtls.test"],
            &[],
        ),
        backend: ca.leaf(d, "backend", &["backend.internal"], &[]),
        client_good: ca.leaf(d, "good", &[], &["spiffe://cluster.local/ns/a/sa/good"]),
        client_evil: ca.leaf(d, "evil", &[], &["spiffe://cluster.local/ns/a/sa/evil"]),
        client_foreign: other.leaf(d, "foreign", &[], &["spiffe://cluster.local/ns/a/sa/good"]),
        ca,
        _dir: dir,
    }
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// A `DownstreamTlsContext` transport socket (indented for a filter chain).
fn downstream_tls(pki: &Pki, extra: &str) -> String {
    format!(
        r#"      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
{extra}          common_tls_context:
            alpn_protocols: ["h2", "http/1.1"]
            tls_certificates:
            - certificate_chain: {{ filename: "{}" }}
              private_key: {{ filename: "{}" }}
"#,
        p(&pki.server.cert),
        p(&pki.server.key)
    )
}

fn hcm(prefix: &str, cluster: &str) -> String {
    format!(
        r#"      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {prefix}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
          route_config:
            virtual_hosts:
            - name: v
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: {cluster} }}
"#
    )
}

fn tcp_proxy(cluster: &str) -> String {
    format!(
        r#"      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {cluster}
          cluster: {cluster}
"#
    )
}

/// An `UpstreamTlsContext` for a cluster (`extra` goes into `common_tls_context`).
fn upstream_tls(sni: &str, common: &str) -> String {
    format!(
        r#"    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: "{sni}"
        common_tls_context:
          {common}
"#
    )
}

fn validation(ca: &Path, san: &str) -> String {
    format!(
        r#"validation_context:
            trusted_ca: {{ filename: "{}" }}
            match_typed_subject_alt_names:
            - san_type: DNS
              matcher: {{ exact: "{san}" }}"#,
        p(ca)
    )
}

struct Env {
    upstreams: Vec<Upstream>,
    _backend: TlsUpstream,
    backend_mtls: TlsUpstream,
    boot: String,
}

fn env(pki: &Pki) -> Env {
    let names = ["api", "wild", "anytls", "plain", "mtls", "tcpup"];
    let upstreams: Vec<Upstream> = names.iter().map(|n| Upstream::start(n)).collect();
    let backend = TlsUpstream::start("backend", &pki.backend, None);
    let backend_mtls = TlsUpstream::start("backend-mtls", &pki.backend, Some(&pki.ca.cert));
    let mtls = format!(
        r#"          require_client_certificate: true
          common_tls_context:
            validation_context:
              trusted_ca: {{ filename: "{}" }}
              match_typed_subject_alt_names:
              - san_type: URI
                matcher: {{ exact: "spiffe://cluster.local/ns/a/sa/good" }}
"#,
        p(&pki.ca.cert)
    );
    // The mTLS chain's context: the validation context merged into the common one.
    let mtls_socket = downstream_tls(pki, "").replace("          common_tls_context:\n", &mtls);
    let chains = [
        format!(
            "    - filter_chain_match: {{ server_names: [\"api.example.com\"] }}\n{}{}",
            downstream_tls(pki, ""),
            hcm("api", "api")
        ),
        format!(
            "    - filter_chain_match: {{ server_names: [\"*.example.com\"] }}\n{}{}",
            downstream_tls(pki, ""),
            hcm("wild", "wild")
        ),
        format!(
            "    - filter_chain_match: {{ server_names: [\"mtls.test\"] }}\n{}{}",
            mtls_socket,
            hcm("mtls", "mtls")
        ),
        format!(
            "    - filter_chain_match: {{ server_names: [\"tcp.example.com\"] }}\n{}{}",
            downstream_tls(pki, ""),
            tcp_proxy("tcpup")
        ),
        format!(
            "    - filter_chain_match: {{ server_names: [\"tcptls.example.com\"] }}\n{}{}",
            downstream_tls(pki, ""),
            tcp_proxy("backend_ok")
        ),
        format!(
            "    - filter_chain_match: {{ server_names: [\"backend.internal\"] }}\n{}",
            tcp_proxy("passthrough")
        ),
        format!(
            "    - filter_chain_match: {{ transport_protocol: tls }}\n{}{}",
            downstream_tls(pki, ""),
            hcm("anytls", "anytls")
        ),
    ]
    .concat();
    let default_chain = hcm("plain", "plain");
    let mut clusters: String = names
        .iter()
        .zip(&upstreams)
        .map(|(n, u)| cluster(n, &[u.addr], ""))
        .collect();
    let client_cert = format!(
        "tls_certificates: [{{ certificate_chain: {{ filename: \"{}\" }}, private_key: {{ filename: \"{}\" }} }}]\n          ",
        p(&pki.client_good.cert),
        p(&pki.client_good.key)
    );
    for (name, addr, tls) in [
        (
            "backend_ok",
            backend_mtls.addr,
            upstream_tls(
                "backend.internal",
                &format!(
                    "{client_cert}{}",
                    validation(&pki.ca.cert, "backend.internal")
                ),
            ),
        ),
        (
            "backend_badsan",
            backend.addr,
            upstream_tls(
                "backend.internal",
                &validation(&pki.ca.cert, "nope.internal"),
            ),
        ),
        (
            "backend_wrongca",
            backend.addr,
            upstream_tls(
                "backend.internal",
                &validation(&pki.client_foreign.cert, "backend.internal"),
            ),
        ),
        ("backend_noverify", backend.addr, upstream_tls("", "{}")),
        (
            "backend_nocert",
            backend_mtls.addr,
            upstream_tls("backend.internal", "{}"),
        ),
        ("passthrough", backend.addr, String::new()),
    ] {
        clusters.push_str(&cluster(name, &[addr], &tls));
    }
    let routes = [
        "backend_ok",
        "backend_badsan",
        "backend_wrongca",
        "backend_noverify",
        "backend_nocert",
    ]
    .iter()
    .map(|c| {
        format!(
            "              - match: {{ prefix: \"/{c}\" }}\n                route: {{ cluster: {c} }}\n"
        )
    })
    .collect::<String>();
    let default_chain = default_chain.replace(
        "              - match: { prefix: \"/\" }\n",
        &format!("{routes}              - match: {{ prefix: \"/\" }}\n"),
    );
    let boot = format!(
        r#"admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: 0 }}
static_resources:
  listeners:
  - name: tls
    stat_prefix: tls
    address:
      socket_address: {{ address: 127.0.0.1, port_value: LISTENER_PORT }}
    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector
    filter_chains:
{chains}    default_filter_chain:
{default_chain}  clusters:
{clusters}"#
    );
    Env {
        upstreams,
        _backend: backend,
        backend_mtls,
        boot,
    }
}

/// One case: its name, the ALPN protocol chosen, and the response (status, body).
type Case = (String, Option<Vec<u8>>, Option<(u16, String)>);

/// Everything one proxy did with the cases, to compare.
#[derive(Debug, PartialEq)]
struct Observed {
    cases: Vec<Case>,
    stats: Vec<(String, u64)>,
}

const STATS: &[&str] = &[
    "listener.tls.ssl.handshake",
    "listener.tls.ssl.connection_error",
    "listener.tls.ssl.no_certificate",
    "listener.tls.ssl.fail_verify_no_cert",
    "listener.tls.ssl.fail_verify_error",
    "listener.tls.ssl.fail_verify_san",
    "tls_inspector.tls_found",
    "tls_inspector.tls_not_found",
    "tls_inspector.sni_found",
    "tls_inspector.alpn_found",
    "tls_inspector.alpn_not_found",
    "cluster.backend_ok.ssl.handshake",
    "cluster.backend_badsan.ssl.fail_verify_san",
    "cluster.backend_wrongca.ssl.fail_verify_error",
    "cluster.backend_noverify.ssl.handshake",
    "listener.tls.ssl.versions.TLSv1.3",
    "cluster.backend_ok.ssl.versions.TLSv1.2",
];

fn run(pki: &Pki, env: &Env, proxy: &Courier) -> Observed {
    let addr: SocketAddr = proxy.listener;
    let ca = &pki.ca.cert;
    let mut cases = Vec::new();
    let mut tls = |name: &str, sni: &str, alpn: &[&str], client: Option<&Pem>| {
        let r = tls_get(addr, ca, sni, alpn, client);
        cases.push((name.to_string(), r.alpn, r.response));
    };
    tls("exact name", "api.example.com", &["http/1.1"], None);
    tls("wildcard name", "x.example.com", &[], None);
    tls("other name: any TLS", "other.org", &["http/1.1"], None);
    tls("h2 offered", "api.example.com", &["h2", "http/1.1"], None);
    tls(
        "mTLS with a good certificate",
        "mtls.test",
        &[],
        Some(&pki.client_good),
    );
    tls("mTLS without a certificate", "mtls.test", &[], None);
    tls(
        "mTLS, SAN not allowed",
        "mtls.test",
        &[],
        Some(&pki.client_evil),
    );
    tls(
        "mTLS, unknown CA",
        "mtls.test",
        &[],
        Some(&pki.client_foreign),
    );
    tls("tcp_proxy terminating TLS", "tcp.example.com", &[], None);
    tls(
        "tcp_proxy terminating and originating TLS",
        "tcptls.example.com",
        &[],
        None,
    );
    tls("tcp_proxy passthrough", "backend.internal", &[], None);
    let plain = get(addr, "h", "/", &[]);
    cases.push((
        "plaintext default chain".into(),
        None,
        Some((plain.status, plain.body_str())),
    ));
    for c in [
        "backend_ok",
        "backend_badsan",
        "backend_wrongca",
        "backend_noverify",
        "backend_nocert",
    ] {
        let r = get(addr, "h", &format!("/{c}"), &[]);
        // Envoy's 503 body names its TLS error; only the status is compared for those.
        let body = if r.status == 200 {
            r.body_str()
        } else {
            String::new()
        };
        cases.push((format!("upstream {c}"), None, Some((r.status, body))));
    }
    let _ = env;
    let stats = STATS
        .iter()
        .map(|s| (s.to_string(), proxy.stat(s)))
        .collect();
    Observed { cases, stats }
}

#[test]
fn tls_matches_envoy() {
    let pki = pki();
    let env = env(&pki);
    let Some(envoy) = Courier::start_envoy(&env.boot) else {
        eprintln!("envoy not on PATH: skipped");
        return;
    };
    let from_envoy = run(&pki, &env, &envoy);
    drop(envoy);
    let envoy_offers = std::mem::take(&mut *env.backend_mtls.offered.lock().expect("lock"));
    let courier = Courier::start(&env.boot);
    let from_courier = run(&pki, &env, &courier);
    let courier_offers = std::mem::take(&mut *env.backend_mtls.offered.lock().expect("lock"));
    for (e, c) in from_envoy.cases.iter().zip(&from_courier.cases) {
        eprintln!(
            "{}:\n  envoy   {:?} {:?}\n  courier {:?} {:?}",
            e.0, e.1, e.2, c.1, c.2
        );
    }
    for (e, c) in from_envoy.stats.iter().zip(&from_courier.stats) {
        eprintln!("{}: envoy {} courier {}", e.0, e.1, c.1);
    }
    eprintln!("upstream offers: envoy {envoy_offers:?}\n  courier {courier_offers:?}");
    // The cases' expected outcomes, so that a change on both sides is caught too.
    let ok = |i: usize| from_courier.cases[i].2.as_ref().map(|r| r.0);
    assert_eq!(ok(0), Some(200));
    assert_eq!(ok(5), None, "mTLS without a certificate must fail");
    assert_eq!(from_courier.cases[3].1.as_deref(), Some(&b"h2"[..]));
    assert_eq!(from_envoy.cases, from_courier.cases);
    assert_eq!(from_envoy.stats, from_courier.stats);
    assert_eq!(
        envoy_offers, courier_offers,
        "what the upstream handshakes offered"
    );
    assert!(env
        .upstreams
        .iter()
        .all(|u| u.requests.load(std::sync::atomic::Ordering::SeqCst) > 0));
}

#[test]
fn bad_tls_config_is_refused_by_path_as_envoy_refuses_it() {
    let pki = pki();
    let base = bootstrap(&all_to("up"), "", &cluster("up", &[refusing_addr()], ""));
    let chain = "    filter_chains:\n    - filters:\n";
    let with_socket = |extra: &str, common: &str| {
        let socket = downstream_tls(&pki, extra).replace(
            "          common_tls_context:\n",
            &format!("          common_tls_context:\n{common}"),
        );
        base.replacen(
            chain,
            &format!("    filter_chains:\n    -{}      filters:\n", &socket[5..]),
            1,
        )
    };
    let wrong_key = with_socket("", "").replace(&p(&pki.server.key), &p(&pki.backend.key));
    let missing = with_socket("", "").replace(&p(&pki.server.cert), "/nonexistent/cert.pem");
    let cipher = with_socket(
        "",
        "            tls_params: { cipher_suites: [NOT-A-CIPHER] }\n",
    );
    let pin = with_socket(
        "",
        &format!(
            "            validation_context: {{ trusted_ca: {{ filename: \"{}\" }}, verify_certificate_spki: [\"xyz\"] }}\n",
            p(&pki.ca.cert)
        ),
    );
    let wildcard = base.replacen(
        chain,
        "    filter_chains:\n    - filter_chain_match: { server_names: [\"a*.example.com\"] }\n      filters:\n",
        1,
    );
    let unknown_secret = with_socket(
        "",
        "            tls_certificate_sds_secret_configs: [{ name: nope }]\n",
    );
    let missing_secret_file = format!(
        "node: {{ id: node1, cluster: c }}\n{}",
        with_socket(
            "",
            "            tls_certificate_sds_secret_configs: [{ name: s, sds_config: { path_config_source: { path: /nonexistent/s.yaml } } }]\n",
        )
    );
    let auto_plain = base.replacen(
        "    connect_timeout: 1s\n",
        "    connect_timeout: 1s\n    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        auto_config: {}\n",
        1,
    );
    let cases = [
        (
            "auto_config without TLS (no ALPN)",
            auto_plain,
            "ALPN configured for cluster up which has a non-ALPN transport socket",
        ),
        (
            "a static secret that is not there",
            unknown_secret,
            "tls_certificate_sds_secret_configs[0].name",
        ),
        (
            "a secret file that is not there",
            missing_secret_file,
            "path_config_source.path",
        ),
        (
            "a key that is not the certificate's",
            wrong_key,
            "tls_certificates[0].private_key",
        ),
        (
            "an unreadable certificate file",
            missing,
            "certificate_chain.filename",
        ),
        ("an unknown cipher", cipher, "cipher_suites[0]"),
        ("a malformed SPKI pin", pin, "verify_certificate_spki[0]"),
        (
            "a partial wildcard server name",
            wildcard,
            "server_names[0]",
        ),
    ];
    // The well-formed base must pass, or the cases prove nothing.
    let good = with_socket("", "");
    assert_eq!(validate(&good).0, Some(0), "{}", validate(&good).1);
    for (name, boot, path) in cases {
        let (code, stderr) = validate(&boot);
        eprintln!("{name}: {}", stderr.lines().last().unwrap_or_default());
        assert_ne!(code, Some(0), "{name}: accepted");
        assert!(
            stderr.contains(path),
            "{name}: the error must name {path}: {stderr}"
        );
        if let Some(ok) = envoy_validate(&boot).map(|(code, _)| code == Some(0)) {
            assert!(!ok, "{name}: Envoy accepts it");
        }
    }
}

/// What the upstream saw of one request: its status at the client, and the
/// `x-forwarded-client-cert` and `x-forwarded-proto` it got.
type Seen = (String, Option<u16>, Option<String>, Option<String>);

#[test]
fn client_certificates_reach_rbac_and_xfcc_as_in_envoy() {
    let pki = pki();
    let d = pki._dir.path();
    let server = pki.ca.leaf(
        d,
        "server-spiffe",
        &["sni.test", "other.test"],
        &["spiffe://cluster.local/ns/edge/sa/proxy"],
    );
    let up = Upstream::start("up");
    let route = all_to("up");
    let log_path = d.join("access.log");
    let hcm_extra = format!(
        r#"          forward_client_cert_details: SANITIZE_SET
          set_current_client_cert_details: {{ subject: true, cert: true, chain: true, uri: true, dns: true }}
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: "{}"
              log_format:
                text_format_source:
                  inline_string: "%RESPONSE_CODE% %REQUESTED_SERVER_NAME% %DOWNSTREAM_TLS_VERSION% %DOWNSTREAM_TLS_CIPHER% %DOWNSTREAM_PEER_SUBJECT% %DOWNSTREAM_PEER_URI_SAN% %DOWNSTREAM_PEER_DNS_SAN% %DOWNSTREAM_LOCAL_URI_SAN% %DOWNSTREAM_PEER_FINGERPRINT_256%\n"
"#,
        p(&log_path)
    );
    let boot = bootstrap(&route, &hcm_extra, &cluster("up", &[up.addr], ""));
    let rbac = r#"          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  good:
                    permissions: [{ any: true }]
                    principals: [{ authenticated: { principal_name: { exact: "spiffe://cluster.local/ns/a/sa/good" } } }]
                  open:
                    permissions: [{ url_path: { path: { prefix: /open } } }]
                    principals: [{ any: true }]
                  sni:
                    permissions: [{ and_rules: { rules: [{ url_path: { path: { prefix: /sni } } }, { requested_server_name: { exact: sni.test } }] } }]
                    principals: [{ any: true }]
"#;
    let boot = with_filters(&boot, rbac);
    let socket = format!(
        r#"    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates:
            - certificate_chain: {{ filename: "{}" }}
              private_key: {{ filename: "{}" }}
            validation_context: {{ trusted_ca: {{ filename: "{}" }} }}
      filters:
"#,
        p(&server.cert),
        p(&server.key),
        p(&pki.ca.cert)
    );
    // The inspector gives the connection its requested server name (RBAC's
    // `requested_server_name`); TLS termination alone does not, in Envoy.
    let inspector = "    listener_filters:\n    - name: envoy.filters.listener.tls_inspector\n      typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector }\n";
    let boot = boot.replacen(
        "    filter_chains:\n    - filters:\n",
        &format!("{inspector}    filter_chains:\n{socket}"),
        1,
    );
    let run = |proxy: &Courier| -> Vec<Seen> {
        let cases: [(&str, &str, &str, Option<&Pem>); 6] = [
            (
                "good certificate",
                "other.test",
                "/",
                Some(&pki.client_good),
            ),
            (
                "certificate not allowed",
                "other.test",
                "/",
                Some(&pki.client_evil),
            ),
            ("no certificate", "other.test", "/", None),
            ("no certificate, open path", "other.test", "/open", None),
            ("SNI allowed", "sni.test", "/sni", None),
            ("SNI not allowed", "other.test", "/sni", None),
        ];
        cases
            .iter()
            .map(|(name, sni, path, cert)| {
                let before = up.requests.load(std::sync::atomic::Ordering::SeqCst);
                let status = tls_connect(proxy.listener, &pki.ca.cert, sni, &["http/1.1"], *cert)
                    .ok()
                    .and_then(|mut s| get_over(&mut s, sni, path).ok())
                    .map(|r| r.0);
                let reached = up.requests.load(std::sync::atomic::Ordering::SeqCst) > before;
                let seen = if reached { up.last() } else { None };
                (
                    name.to_string(),
                    status,
                    seen.as_ref()
                        .and_then(|s| s.header("x-forwarded-client-cert").map(String::from)),
                    seen.as_ref()
                        .and_then(|s| s.header("x-forwarded-proto").map(String::from)),
                )
            })
            .collect()
    };
    let Some(envoy) = Courier::start_envoy(&boot) else {
        eprintln!("envoy not on PATH: skipped");
        return;
    };
    let from_envoy = run(&envoy);
    let envoy_log = log_lines(&log_path, 6);
    drop(envoy);
    std::fs::remove_file(&log_path).expect("remove the log");
    let courier = Courier::start(&boot);
    let from_courier = run(&courier);
    let courier_log = log_lines(&log_path, 6);
    eprintln!("access log: envoy {envoy_log:#?}\n  courier {courier_log:#?}");
    assert_eq!(envoy_log, courier_log, "the access log's TLS fields");
    for (e, c) in from_envoy.iter().zip(&from_courier) {
        eprintln!(
            "{}:\n  envoy   {:?} {:?} {:?}\n  courier {:?} {:?} {:?}",
            e.0, e.1, e.2, e.3, c.1, c.2, c.3
        );
    }
    assert_eq!(from_courier[0].1, Some(200));
    assert_eq!(from_courier[1].1, Some(403));
    assert!(
        from_courier[0]
            .2
            .as_deref()
            .is_some_and(|x| x.starts_with("By=spiffe://cluster.local/ns/edge/sa/proxy;Hash=")),
        "{:?}",
        from_courier[0].2
    );
    assert_eq!(from_envoy, from_courier);
}

/// The first `n` lines of an access log, once they are written (Envoy flushes its file
/// logs every second).
fn log_lines(path: &Path, n: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(String::from).collect();
        if lines.len() >= n || std::time::Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Reads until the peer closes; `true` when it did within 10 s.
fn closed_by_peer(s: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn stalled_and_garbage_handshakes_are_closed_and_counted_as_in_envoy() {
    use std::io::Write;
    let pki = pki();
    let up = Upstream::start("up");
    let boot = bootstrap(&all_to("up"), "", &cluster("up", &[up.addr], ""));
    let socket = downstream_tls(&pki, "");
    let boot = boot
        .replacen(
            "    filter_chains:\n    - filters:\n",
            &format!(
                "    filter_chains:\n    - transport_socket_connect_timeout: 0.3s\n{}      filters:\n",
                &socket
            ),
            1,
        )
        .replacen("  - name: http\n", "  - name: http\n    stat_prefix: edge\n", 1);
    let run = |proxy: &Courier| -> (bool, bool, bool, Vec<u64>) {
        // A client that connects and sends nothing.
        let mut stalled = std::net::TcpStream::connect(proxy.listener).expect("connect");
        let stall_closed = closed_by_peer(&mut stalled);
        // A client that sends bytes that are no TLS record.
        let mut garbage = std::net::TcpStream::connect(proxy.listener).expect("connect");
        garbage
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .expect("write");
        let garbage_closed = closed_by_peer(&mut garbage);
        // A good client is still served.
        let ok = tls_get(proxy.listener, &pki.ca.cert, "api.example.com", &[], None)
            .response
            .is_some_and(|r| r.0 == 200);
        let stats = [
            "listener.edge.downstream_cx_transport_socket_connect_timeout",
            "listener.edge.ssl.connection_error",
            "listener.edge.ssl.handshake",
        ]
        .iter()
        .map(|s| proxy.wait_stat(s, 1))
        .collect();
        (stall_closed, garbage_closed, ok, stats)
    };
    let Some(envoy) = Courier::start_envoy(&boot) else {
        eprintln!("envoy not on PATH: skipped");
        return;
    };
    let from_envoy = run(&envoy);
    drop(envoy);
    let from_courier = run(&Courier::start(&boot));
    eprintln!("envoy {from_envoy:?}\ncourier {from_courier:?}");
    assert_eq!(from_courier, (true, true, true, vec![1, 1, 1]));
    assert_eq!(from_envoy, from_courier);
}

/// Writes `pem` as the secret `name` in an SDS file (a `DiscoveryResponse`), by rename so
/// that a reader sees the old file or the new one, never half of one (Envoy watches for
/// the rename).
fn write_secret_file(file: &Path, name: &str, chain: &str, key: &str) {
    let text = format!(
        r#"version_info: "{}"
resources:
- "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
  name: {name}
  tls_certificate:
    certificate_chain: {{ inline_string: {chain:?} }}
    private_key: {{ inline_string: {key:?} }}
"#,
        chain.len()
    );
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write secret");
    std::fs::rename(&tmp, file).expect("rename secret");
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).expect("read pem")
}

/// What a proxy did while its certificate was rotated through an SDS file.
#[derive(Debug, PartialEq)]
struct Rotation {
    first_is_one: bool,
    rotated_to_two: bool,
    old_connection_still_served: bool,
    bad_update_kept_two: bool,
    failed_new_connections: usize,
    foreign_client_refused: bool,
    sds_stats: Vec<u64>,
}

#[test]
fn sds_file_rotation_drops_nothing_and_static_secrets_validate_as_in_envoy() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let pki = pki();
    let d = pki._dir.path();
    let one = pki.ca.leaf(d, "one", &["api.example.com"], &[]);
    let two = pki.ca.leaf(d, "two", &["api.example.com"], &[]);
    let secret_file = d.join("server-secret.yaml");
    let up = Upstream::start("up");
    let socket = format!(
        r#"      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificate_sds_secret_configs:
            - name: server
              sds_config: {{ path_config_source: {{ path: "{}" }} }}
            validation_context_sds_secret_config: {{ name: clients }}
"#,
        p(&secret_file)
    );
    let secrets = format!(
        "  secrets:\n  - name: clients\n    validation_context:\n      trusted_ca: {{ filename: \"{}\" }}\n  clusters:\n",
        p(&pki.ca.cert)
    );
    let boot = bootstrap(&all_to("up"), "", &cluster("up", &[up.addr], ""))
        .replacen(
            "    filter_chains:\n    - filters:\n",
            &format!("    filter_chains:\n    - {}      filters:\n", &socket[6..]),
            1,
        )
        .replacen("  clusters:\n", &secrets, 1);
    // A secret subscription needs a named node, in Envoy and in Courier.
    let unnamed = boot.clone();
    let boot = format!("node: {{ id: edge-1, cluster: edge }}\n{boot}");
    let served = |addr: SocketAddr| -> Option<Vec<u8>> {
        let mut s = tls_connect(
            addr,
            &pki.ca.cert,
            "api.example.com",
            &[],
            Some(&pki.client_good),
        )
        .ok()?;
        let leaf = s.conn.peer_certificates()?.first()?.to_vec();
        (get_over(&mut s, "api.example.com", "/").ok()?.0 == 200).then_some(leaf)
    };
    let one_der = certs(&one.cert)[0].to_vec();
    let two_der = certs(&two.cert)[0].to_vec();
    let run = |proxy: &Courier| -> Rotation {
        let addr = proxy.listener;
        let mut kept = tls_connect(
            addr,
            &pki.ca.cert,
            "api.example.com",
            &[],
            Some(&pki.client_good),
        )
        .expect("first connection");
        let first_is_one = kept
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .is_some_and(|c| c.as_ref() == one_der.as_slice())
            && get_kept(&mut kept, "api.example.com", "/").is_ok_and(|r| r.0 == 200);
        // New connections, one after another, for the whole rotation.
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicUsize::new(0));
        let load = std::thread::scope(|scope| {
            let (stop2, failed2) = (stop.clone(), failed.clone());
            let served = &served;
            let handle = scope.spawn(move || {
                let mut n = 0;
                while !stop2.load(Ordering::Relaxed) {
                    if served(addr).is_none() {
                        failed2.fetch_add(1, Ordering::Relaxed);
                    }
                    n += 1;
                }
                n
            });
            write_secret_file(&secret_file, "server", &read(&two.cert), &read(&two.key));
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
            let mut rotated_to_two = false;
            while std::time::Instant::now() < deadline {
                if served(addr).as_deref() == Some(two_der.as_slice()) {
                    rotated_to_two = true;
                    break;
                }
            }
            let old_connection_still_served =
                get_kept(&mut kept, "api.example.com", "/").is_ok_and(|r| r.0 == 200);
            // A secret that does not build (no key in it) is refused; two stays.
            write_secret_file(&secret_file, "server", &read(&two.cert), "not a key");
            proxy.wait_stat("sds.server.update_rejected", 1);
            let bad_update_kept_two = served(addr).as_deref() == Some(two_der.as_slice());
            stop.store(true, Ordering::Relaxed);
            let n = handle.join().expect("load thread");
            (
                rotated_to_two,
                old_connection_still_served,
                bad_update_kept_two,
                n,
            )
        });
        eprintln!("{} new connections during the rotation", load.3);
        let foreign_client_refused = tls_get(
            addr,
            &pki.ca.cert,
            "api.example.com",
            &[],
            Some(&pki.client_foreign),
        )
        .response
        .is_none();
        let sds_stats = ["update_attempt", "update_success", "update_rejected"]
            .iter()
            .map(|s| proxy.stat(&format!("sds.server.{s}")))
            .collect();
        Rotation {
            first_is_one,
            rotated_to_two: load.0,
            old_connection_still_served: load.1,
            bad_update_kept_two: load.2,
            failed_new_connections: failed.load(Ordering::Relaxed),
            foreign_client_refused,
            sds_stats,
        }
    };
    write_secret_file(&secret_file, "server", &read(&one.cert), &read(&one.key));
    let (code, refused) = validate(&unnamed);
    assert_eq!(code, Some(1), "{refused}");
    assert!(
        refused.contains("node 'id' and 'cluster' are required"),
        "{refused}"
    );
    if let Some(valid) = envoy_validate(&unnamed).map(|(code, _)| code == Some(0)) {
        assert!(!valid, "envoy accepts an SDS file without a named node");
    }
    let from_envoy = Courier::start_envoy(&boot).map(|envoy| run(&envoy));
    write_secret_file(&secret_file, "server", &read(&one.cert), &read(&one.key));
    let from_courier = run(&Courier::start(&boot));
    eprintln!("envoy {from_envoy:?}\ncourier {from_courier:?}");
    assert_eq!(
        from_courier,
        Rotation {
            first_is_one: true,
            rotated_to_two: true,
            old_connection_still_served: true,
            bad_update_kept_two: true,
            failed_new_connections: 0,
            foreign_client_refused: true,
            sds_stats: vec![3, 2, 1],
        }
    );
    match from_envoy {
        Some(envoy) => assert_eq!(envoy, from_courier),
        None => eprintln!("envoy not on PATH: compared with the expected outcome only"),
    }
}

/// What `auto_config` clusters did: the statuses and bodies of two requests through
/// each, the ALPN the HTTP/1.1-only upstream was offered, and the protocol counters.
type AutoSeen = (Vec<(u16, String)>, Vec<String>, Vec<u64>);

#[test]
fn auto_config_lets_alpn_pick_http2_or_http1_per_upstream_as_in_envoy() {
    let pki = pki();
    let up = Upstream::start("up");
    // h1: an HTTP/1.1-only TLS upstream; h2: a TLS listener of the proxy itself, which
    // offers h2 (its HTTP connection manager takes both).
    let backend = TlsUpstream::start("backend", &pki.backend, None);
    let edge_port = free_port();
    let edge = format!(
        r#"  - name: edge
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {edge_port} }}
    filter_chains:
    - {}{}"#,
        &downstream_tls(&pki, "")[6..],
        hcm("edge", "up")
    );
    let auto = |sni: &str, san: &str| {
        format!(
            r#"    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        auto_config: {{}}
{}"#,
            upstream_tls(sni, &validation(&pki.ca.cert, san))
        )
    };
    let routes = "            name: local\n            virtual_hosts:\n            - name: main\n              domains: [\"*\"]\n              routes:\n              - match: { prefix: \"/h2\" }\n                route: { cluster: auto_h2 }\n              - match: { prefix: \"/h1\" }\n                route: { cluster: auto_h1 }\n";
    let clusters = [
        cluster("up", &[up.addr], ""),
        cluster(
            "auto_h2",
            &[SocketAddr::from(([127, 0, 0, 1], edge_port))],
            &auto("api.example.com", "api.example.com"),
        ),
        cluster(
            "auto_h1",
            &[backend.addr],
            &auto("backend.internal", "backend.internal"),
        ),
    ]
    .concat();
    let boot = bootstrap(routes, "", &clusters).replacen(
        "  clusters:\n",
        &format!("{edge}  clusters:\n"),
        1,
    );
    let run = |proxy: &Courier| -> AutoSeen {
        let responses = ["/h2/a", "/h2/b", "/h1/a", "/h1/b"]
            .iter()
            .map(|path| {
                let r = get(proxy.listener, "example.com", path, &[]);
                (r.status, r.body_str())
            })
            .collect();
        let offered = backend
            .offered
            .lock()
            .map(|o| o.first().map(|f| f.alpn.clone()).unwrap_or_default())
            .unwrap_or_default();
        backend.offered.lock().map(|mut o| o.clear()).ok();
        let stats = stats_of(
            proxy,
            &[
                "cluster.auto_h2.upstream_cx_http2_total",
                "cluster.auto_h2.upstream_cx_total",
                "http.edge.downstream_cx_total",
                "cluster.auto_h1.upstream_cx_http1_total",
            ],
        );
        (responses, offered, stats)
    };
    let (from_envoy, from_courier) = on_both(&boot, run);
    let backend_body = "backend sni=backend.internal".to_string();
    assert_eq!(from_courier.0[2], (200, backend_body.clone()));
    assert_eq!(from_courier.0[3], (200, backend_body));
    assert_eq!(from_courier.0[0].0, 200);
    assert_eq!(from_courier.0[1].0, 200);
    assert_eq!(
        from_courier.1,
        vec!["h2".to_string(), "http/1.1".to_string()]
    );
    // Both HTTP/2 requests on one connection (the edge saw one); HTTP/1.1 for the other
    // upstream.
    assert_eq!(from_courier.2, vec![1, 1, 1, 1]);
    if let Some(mut envoy) = from_envoy {
        assert_eq!(envoy.1, from_courier.1);
        // Envoy's mixed pool counts its one connection twice in `upstream_cx_total`
        // (once as undecided, once as HTTP/2); Courier counts connections
        // (integration-tests/DIFFERENCES.md).
        assert_eq!(envoy.2[1], 2);
        envoy.2[1] = 1;
        assert_eq!(envoy.2, from_courier.2);
        let statuses = |s: &AutoSeen| s.0.iter().map(|r| r.0).collect::<Vec<_>>();
        assert_eq!(statuses(&envoy), statuses(&from_courier));
    }
}

#[test]
fn transport_socket_matches_pick_tls_per_endpoint_metadata_as_in_envoy() {
    let pki = pki();
    let plain = Upstream::start("plain");
    let backend = TlsUpstream::start("backend", &pki.backend, None);
    let tls = upstream_tls(
        "backend.internal",
        &validation(&pki.ca.cert, "backend.internal"),
    )
    .replace("\n    ", "\n      ")
    .replacen(
        "    transport_socket:",
        "    - name: mtls\n      match: { tlsMode: istio }\n      transport_socket:",
        1,
    );
    let mixed = format!(
        r#"  - name: mixed
    type: STATIC
    connect_timeout: 1s
    transport_socket_matches:
{tls}    load_assignment:
      cluster_name: mixed
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }}
          metadata: {{ filter_metadata: {{ envoy.transport_socket_match: {{ tlsMode: istio }} }} }}
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }}
"#,
        backend.addr.port(),
        plain.addr.port()
    );
    let boot = bootstrap(&all_to("mixed"), "", &mixed);
    let run = |proxy: &Courier| -> (Vec<String>, Vec<u64>) {
        let mut bodies: Vec<String> = (0..4)
            .map(|i| {
                let r = get(proxy.listener, "example.com", &format!("/{i}"), &[]);
                format!(
                    "{} {}",
                    r.status,
                    r.body_str().split(' ').next().unwrap_or("")
                )
            })
            .collect();
        bodies.sort();
        let stats = stats_of(
            proxy,
            &[
                "cluster.mixed.mtls.total_match_count",
                "cluster.mixed.ssl.handshake",
                "cluster.mixed.default.total_match_count",
            ],
        );
        (bodies, stats)
    };
    let (from_envoy, from_courier) = on_both(&boot, run);
    let expected = ["200 backend", "200 backend", "200 plain", "200 plain"];
    assert_eq!(from_courier.0, expected);
    // One host took each socket; the marked one was reached over TLS (one handshake:
    // the connection is kept alive).
    assert_eq!(from_courier.1, vec![1, 1, 1]);
    if let Some(envoy) = from_envoy {
        assert_eq!(envoy, from_courier);
    }
}

/// A request: its host, path and extra headers.
type Probe<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

#[test]
fn auto_sni_names_each_request_s_server_and_checks_its_certificate_as_in_envoy() {
    let pki = pki();
    // Its certificate names api.example.com, *.example.com, other.org and mtls.test.
    let multi = TlsUpstream::start("multi", &pki.server, None);
    let auto = |name: &str, extra: &str| {
        let mut c = cluster(
            name,
            &[multi.addr],
            &format!(
                r#"    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        upstream_http_protocol_options: {{ auto_sni: true, auto_san_validation: true{extra} }}
        explicit_http_config: {{ http_protocol_options: {{}} }}
{}"#,
                upstream_tls(
                    "",
                    &format!(
                        "validation_context: {{ trusted_ca: {{ filename: \"{}\" }} }}",
                        p(&pki.ca.cert)
                    )
                )
            ),
        );
        c = c.replace("        sni: \"\"\n", "");
        c
    };
    let clusters = [
        auto("auto", ""),
        auto("auto_hdr", ", override_auto_sni_header: x-sni"),
    ]
    .concat();
    let routes = "            name: local\n            virtual_hosts:\n            - name: main\n              domains: [\"*\"]\n              routes:\n              - match: { prefix: \"/hdr\" }\n                route: { cluster: auto_hdr }\n              - match: { prefix: \"/\" }\n                route: { cluster: auto }\n";
    let boot = bootstrap(routes, "", &clusters);
    let run = |proxy: &Courier| -> (Vec<(u16, String)>, Vec<String>, Vec<u64>) {
        let requests: [Probe; 5] = [
            ("a.example.com", "/", &[]),
            ("other.org:8080", "/", &[]),
            ("evil.test", "/", &[]),
            ("a.example.com", "/again", &[]),
            ("ignored.test", "/hdr", &[("x-sni", "api.example.com")]),
        ];
        let responses = requests
            .iter()
            .map(|(host, path, headers)| {
                let r = get(proxy.listener, host, path, headers);
                let body = if r.status == 200 {
                    r.body_str()
                } else {
                    String::new()
                };
                (r.status, body)
            })
            .collect();
        let mut offered: Vec<String> = multi
            .offered
            .lock()
            .map(|o| {
                o.iter()
                    .map(|f| f.sni.clone().unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default();
        offered.sort();
        multi.offered.lock().map(|mut o| o.clear()).ok();
        let stats = stats_of(
            proxy,
            &[
                "cluster.auto.ssl.fail_verify_san",
                "cluster.auto.ssl.handshake",
            ],
        );
        (responses, offered, stats)
    };
    let (from_envoy, from_courier) = on_both(&boot, run);
    let ok = |sni: &str| (200, format!("multi sni={sni}"));
    assert_eq!(
        from_courier.0,
        vec![
            ok("a.example.com"),
            ok("other.org"),
            (503, String::new()),
            ok("a.example.com"),
            ok("api.example.com"),
        ]
    );
    // One connection per name (the second a.example.com request reuses the first's; the
    // refused handshake is not recorded by the upstream).
    assert_eq!(
        from_courier.1,
        ["a.example.com", "api.example.com", "other.org"]
    );
    assert_eq!(from_courier.2, vec![1, 2]);
    if let Some(envoy) = from_envoy {
        assert_eq!(envoy, from_courier);
    }
}

/// `/certs` with its certificate entries in a stable order (contexts are listed in an
/// order of each proxy's own).
fn certs_of(proxy: &Courier) -> serde_json::Value {
    let body = admin_get(proxy.admin, "/certs").unwrap_or_default();
    let mut v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    if let Some(list) = v.get_mut("certificates").and_then(|c| c.as_array_mut()) {
        list.sort_by_key(|c| c.to_string());
    }
    v
}

#[test]
fn certs_and_the_expiry_gauge_report_as_in_envoy() {
    let pki = pki();
    let up = Upstream::start("up");
    let backend = TlsUpstream::start("backend", &pki.backend, None);
    let mtls = format!(
        "          require_client_certificate: true\n          common_tls_context:\n            validation_context: {{ trusted_ca: {{ filename: \"{}\" }} }}\n",
        p(&pki.ca.cert)
    );
    let socket = downstream_tls(&pki, "").replacen("          common_tls_context:\n", &mtls, 1);
    let tls_cluster = cluster(
        "backend",
        &[backend.addr],
        &upstream_tls(
            "backend.internal",
            &format!(
                "tls_certificates: [{{ certificate_chain: {{ filename: \"{}\" }}, private_key: {{ filename: \"{}\" }} }}]\n          {}",
                p(&pki.client_good.cert),
                p(&pki.client_good.key),
                validation(&pki.ca.cert, "backend.internal")
            ),
        ),
    );
    let boot = bootstrap(
        &all_to("up"),
        "",
        &[cluster("up", &[up.addr], ""), tls_cluster].concat(),
    )
    .replacen(
        "    filter_chains:\n    - filters:\n",
        &format!("    filter_chains:\n    -{}      filters:\n", &socket[5..]),
        1,
    );
    let run = |proxy: &Courier| {
        (
            certs_of(proxy),
            proxy.stat("server.days_until_first_cert_expiring"),
        )
    };
    let from_courier = run(&Courier::start(&boot));
    eprintln!("courier {from_courier:#?}");
    let certs = from_courier.0["certificates"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(certs.len(), 2, "the listener's context and the cluster's");
    let leaf = |c: &serde_json::Value| c["cert_chain"][0]["path"].as_str().map(String::from);
    let mut leaves: Vec<_> = certs.iter().filter_map(leaf).collect();
    leaves.sort();
    let mut expected = vec![p(&pki.server.cert), p(&pki.client_good.cert)];
    expected.sort();
    assert_eq!(leaves, expected);
    assert!(from_courier.1 > 0 && from_courier.1 < u64::from(u32::MAX));
    if let Some(envoy) = Courier::start_envoy(&boot) {
        let from_envoy = run(&envoy);
        eprintln!("envoy {from_envoy:#?}");
        assert_eq!(from_envoy, from_courier);
    }
}

/// One request over TLS with `config` (its session store shared between calls): whether
/// the handshake resumed a session, and the status.
fn resumed_get(addr: SocketAddr, config: &std::sync::Arc<rustls::ClientConfig>) -> (bool, u16) {
    let name = rustls::pki_types::ServerName::try_from("api.example.com").expect("name");
    let conn = rustls::ClientConnection::new(config.clone(), name).expect("client");
    let tcp = std::net::TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let mut s = rustls::StreamOwned::new(conn, tcp);
    let status = get_over(&mut s, "api.example.com", "/").map_or(0, |r| r.0);
    let resumed = s.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    (resumed, status)
}

#[test]
fn session_ticket_keys_let_proxies_resume_each_other_s_sessions_as_in_envoy() {
    let pki = pki();
    let d = pki._dir.path();
    let up = Upstream::start("up");
    let key_a = d.join("ticket-a.key");
    let key_b = d.join("ticket-b.key");
    std::fs::write(&key_a, (0..80u8).collect::<Vec<_>>()).expect("key");
    std::fs::write(&key_b, (100..180u8).collect::<Vec<_>>()).expect("key");
    let boot_with = |key: &Path| {
        let extra = format!(
            "          session_ticket_keys: {{ keys: [{{ filename: \"{}\" }}] }}\n",
            p(key)
        );
        let socket = downstream_tls(&pki, &extra);
        bootstrap(&all_to("up"), "", &cluster("up", &[up.addr], "")).replacen(
            "    filter_chains:\n    - filters:\n",
            &format!("    filter_chains:\n    -{}      filters:\n", &socket[5..]),
            1,
        )
    };
    let (same, other) = (boot_with(&key_a), boot_with(&key_b));
    let client = || {
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(&pki.ca.cert) {
            roots.add(c).expect("root");
        }
        std::sync::Arc::new(
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
        )
    };
    // A session from one proxy, offered to a second with the same key and to a third
    // with another key.
    let run = |start: &dyn Fn(&str) -> Option<Courier>| -> Option<Vec<(bool, u16)>> {
        let (a, b, c) = (start(&same)?, start(&same)?, start(&other)?);
        let config = client();
        let first = resumed_get(a.listener, &config);
        let on_same_key = resumed_get(b.listener, &config);
        let on_other_key = resumed_get(c.listener, &config);
        Some(vec![first, on_same_key, on_other_key])
    };
    let from_courier = run(&|b| Some(Courier::start(b))).expect("courier runs");
    let from_envoy = run(&|b| Courier::start_envoy(b));
    eprintln!("envoy {from_envoy:?}\ncourier {from_courier:?}");
    assert_eq!(from_courier, vec![(false, 200), (true, 200), (false, 200)]);
    if let Some(envoy) = from_envoy {
        assert_eq!(envoy, from_courier);
    }
    // A key of another length is refused, by both.
    std::fs::write(&key_b, [7u8; 48]).expect("key");
    let (code, stderr) = validate(&boot_with(&key_b));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("session_ticket_keys.keys[0]") && stderr.contains("Length 48"),
        "{stderr}"
    );
    if let Some(ok) = envoy_validate(&boot_with(&key_b)).map(|(code, _)| code == Some(0)) {
        assert!(!ok, "Envoy accepts a 48-byte ticket key");
    }
}

/// Runs `cmd` with `args`; its stdout and whether it succeeded (`None` when the tool is
/// not installed).
fn tool(cmd: &str, args: &[&str], stdin: &str) -> Option<(bool, String)> {
    use std::io::Write;
    let mut child = std::process::Command::new(cmd)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin.as_bytes());
    }
    let out = child.wait_with_output().ok()?;
    Some((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

/// Clients other than rustls against the same TLS listener: curl (OpenSSL, HTTP/2 over
/// ALPN), `openssl s_client` (mTLS, TLS 1.2 and 1.3) and Python's `ssl`.
#[test]
fn openssl_curl_and_python_clients_interoperate() {
    let pki = pki();
    let up = Upstream::start("up");
    let mtls = format!(
        "          require_client_certificate: true\n          common_tls_context:\n            validation_context: {{ trusted_ca: {{ filename: \"{}\" }} }}\n",
        p(&pki.ca.cert)
    );
    let socket = downstream_tls(&pki, "").replacen("          common_tls_context:\n", &mtls, 1);
    let boot = bootstrap(&all_to("up"), "", &cluster("up", &[up.addr], "")).replacen(
        "    filter_chains:\n    - filters:\n",
        &format!("    filter_chains:\n    -{}      filters:\n", &socket[5..]),
        1,
    );
    let proxy = Courier::start(&boot);
    let port = proxy.listener.port().to_string();
    // The paths that must reach the upstream, for each client that ran.
    let mut expected: Vec<&str> = Vec::new();
    let (ca, cert, key) = (
        p(&pki.ca.cert),
        p(&pki.client_good.cert),
        p(&pki.client_good.key),
    );
    let resolve = format!("api.example.com:{port}:127.0.0.1");
    let url = format!("https://api.example.com:{port}/curl");
    let curl = tool(
        "curl",
        &[
            "-sS",
            "--http2",
            "--cacert",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
            "--resolve",
            &resolve,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
            &url,
        ],
        "",
    );
    if let Some((ok, out)) = curl {
        assert!(ok, "curl failed: {out}");
        assert_eq!(out, "200 2", "HTTP/2 over ALPN with a client certificate");
        expected.push("/curl");
    }
    let connect = format!("127.0.0.1:{port}");
    // `openssl s_client` with `extra` arguments, sending `request`.
    let s_client = |extra: &[&str], request: &str| {
        let mut args = vec![
            "s_client",
            "-connect",
            &connect,
            "-servername",
            "api.example.com",
            "-CAfile",
            &ca,
            "-quiet",
        ];
        args.extend_from_slice(extra);
        tool("openssl", &args, request)
    };
    for version in ["-tls1_2", "-tls1_3"] {
        let with_cert = s_client(
            &["-cert", &cert, "-key", &key, "-alpn", "http/1.1", version],
            "GET /openssl HTTP/1.1\r\nhost: api.example.com\r\nconnection: close\r\n\r\n",
        );
        if let Some((_, out)) = with_cert {
            assert!(out.starts_with("HTTP/1.1 200"), "{version}: {out}");
            expected.push("/openssl");
        }
        // Without a client certificate the handshake is refused.
        let refused = s_client(
            &[version],
            "GET / HTTP/1.1\r\nhost: api.example.com\r\n\r\n",
        );
        if let Some((_, out)) = refused {
            assert!(
                !out.contains("HTTP/1.1"),
                "{version} without a certificate: {out}"
            );
        }
    }
    let script = format!(
        "import socket, ssl\nctx = ssl.create_default_context(cafile='{ca}')\nctx.load_cert_chain('{cert}', '{key}')\ns = ctx.wrap_socket(socket.create_connection(('127.0.0.1', {port})), server_hostname='api.example.com')\ns.sendall(b'GET /python HTTP/1.1\\r\\nhost: api.example.com\\r\\nconnection: close\\r\\n\\r\\n')\nprint(s.recv(12).decode(), s.version())\n"
    );
    if let Some((ok, out)) = tool("python3", &["-c", &script], "") {
        assert!(ok, "python failed: {out}");
        assert_eq!(out.trim(), "HTTP/1.1 200 TLSv1.3");
        expected.push("/python");
    }
    let seen: Vec<String> = up
        .seen
        .lock()
        .map(|s| s.iter().map(|r| r.path.clone()).collect())
        .unwrap_or_default();
    assert_eq!(
        seen, expected,
        "every client's request, and only those, went through"
    );
}

/// The values of `names` on `proxy`.
fn stats_of(proxy: &Courier, names: &[&str]) -> Vec<u64> {
    names.iter().map(|s| proxy.stat(s)).collect()
}

#[test]
fn auto_host_sni_and_sni_san_validation_follow_the_host_as_in_envoy() {
    let pki = pki();
    // Its certificate names api.example.com, *.example.com, other.org and mtls.test.
    let multi = TlsUpstream::start("multi", &pki.server, None);
    let ca = p(&pki.ca.cert);
    let tls_cluster = |name: &str, hostname: &str, context: &str| {
        format!(
            r#"  - name: {name}
    type: STATIC
    connect_timeout: 1s
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
{context}        common_tls_context: {{ validation_context: {{ trusted_ca: {{ filename: "{ca}" }} }} }}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }}, hostname: "{hostname}" }}
"#,
            multi.addr.port()
        )
    };
    let by_host = "        auto_host_sni: true\n        auto_sni_san_validation: true\n";
    let clusters = [
        tls_cluster("good", "svc.example.com", by_host),
        tls_cluster("bad", "evil.test", by_host),
        tls_cluster(
            "fixed",
            "ignored.test",
            "        sni: nothere.test\n        auto_sni_san_validation: true\n",
        ),
    ]
    .concat();
    let routes = "            name: local\n            virtual_hosts:\n            - name: main\n              domains: [\"*\"]\n              routes:\n              - match: { prefix: \"/good\" }\n                route: { cluster: good }\n              - match: { prefix: \"/bad\" }\n                route: { cluster: bad }\n              - match: { prefix: \"/fixed\" }\n                route: { cluster: fixed }\n";
    let boot = bootstrap(routes, "", &clusters);
    let run = |proxy: &Courier| -> (Vec<(u16, String)>, Vec<u64>) {
        let responses = ["/good", "/bad", "/fixed"]
            .iter()
            .map(|path| {
                let r = get(proxy.listener, "example.com", path, &[]);
                let body = if r.status == 200 {
                    r.body_str()
                } else {
                    String::new()
                };
                (r.status, body)
            })
            .collect();
        let stats = stats_of(
            proxy,
            &[
                "cluster.good.ssl.handshake",
                "cluster.bad.ssl.fail_verify_san",
                "cluster.fixed.ssl.fail_verify_san",
            ],
        );
        (responses, stats)
    };
    let (from_envoy, from_courier) = on_both(&boot, run);
    assert_eq!(
        from_courier.0,
        vec![
            (200, "multi sni=svc.example.com".to_string()),
            (503, String::new()),
            (503, String::new()),
        ]
    );
    assert_eq!(from_courier.1, vec![1, 1, 1]);
    if let Some(envoy) = from_envoy {
        assert_eq!(envoy, from_courier);
    }
}

/// `run` against Envoy (when it is installed) and against Courier on the same bootstrap;
/// both outcomes, printed.
fn on_both<T: std::fmt::Debug>(boot: &str, run: impl Fn(&Courier) -> T) -> (Option<T>, T) {
    let from_envoy = Courier::start_envoy(boot).map(|envoy| run(&envoy));
    let from_courier = run(&Courier::start(boot));
    eprintln!("envoy {from_envoy:?}\ncourier {from_courier:?}");
    (from_envoy, from_courier)
}

/// Active health checks run over the cluster's TLS: a check through a context that
/// validates the backend's certificate passes; one whose SAN matcher the certificate
/// fails never gets a handshake, and the host stays failing. As Envoy.
#[test]
fn health_checks_run_over_the_cluster_tls_as_in_envoy() {
    let pki = pki();
    let backend = TlsUpstream::start("backend", &pki.backend, None);
    let hc = "    health_checks:\n    - { timeout: 1s, interval: 0.1s, no_traffic_interval: 0.1s, unhealthy_threshold: 1, healthy_threshold: 1, http_health_check: { path: /healthz } }\n";
    let clusters = [("good", "backend.internal"), ("badsan", "nope.internal")]
        .iter()
        .map(|(name, san)| {
            cluster(
                name,
                &[backend.addr],
                &format!(
                    "{}{hc}",
                    upstream_tls("backend.internal", &validation(&pki.ca.cert, san))
                ),
            )
        })
        .collect::<String>();
    let boot = bootstrap(&all_to("good"), "", &clusters);
    let flags = |proxy: &Courier| -> Vec<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let text = admin_get(proxy.admin, "/clusters").unwrap_or_default();
            let of = |c: &str| {
                text.lines()
                    .find_map(|l| {
                        l.strip_prefix(&format!("{c}::"))
                            .and_then(|r| r.split_once("::health_flags::"))
                            .map(|(_, f)| f.to_string())
                    })
                    .unwrap_or_default()
            };
            let (good, bad) = (of("good"), of("badsan"));
            if (good == "healthy" && proxy.stat("cluster.badsan.health_check.failure") >= 2)
                || std::time::Instant::now() > deadline
            {
                return vec![good, bad];
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    let (envoy, courier) = on_both(&boot, flags);
    assert_eq!(courier, ["healthy", "/failed_active_hc"]);
    if let Some(envoy) = envoy {
        assert_eq!(envoy, courier);
    }
}

#[test]
fn a_stalled_handshake_times_out_sooner_under_pressure_like_envoy() {
    // A 60 s handshake timeout scaled to its 0.5 s minimum by `reduce_timeouts`, the
    // injected pressure saturated from the start.
    let pki = pki();
    let up = Upstream::start("up");
    let dir = tempfile::tempdir().expect("tempdir");
    let pressure = dir.path().join("pressure");
    std::fs::write(&pressure, "1").expect("write pressure");
    let boot = bootstrap(&all_to("up"), "", &cluster("up", &[up.addr], ""))
        .replacen(
            "    filter_chains:\n    - filters:\n",
            &format!(
                "    filter_chains:\n    - transport_socket_connect_timeout: 60s\n{}      filters:\n",
                downstream_tls(&pki, "")
            ),
            1,
        )
        .replacen("  - name: http\n", "  - name: http\n    stat_prefix: edge\n", 1)
        + &format!(
            "overload_manager:
  refresh_interval: 0.05s
  resource_monitors:
  - name: envoy.resource_monitors.injected_resource
    typed_config:
      \"@type\": type.googleapis.com/envoy.extensions.resource_monitors.injected_resource.v3.InjectedResourceConfig
      filename: {}
  actions:
  - name: envoy.overload_actions.reduce_timeouts
    triggers: [{{ name: envoy.resource_monitors.injected_resource, threshold: {{ value: 0.9 }} }}]
    typed_config:
      \"@type\": type.googleapis.com/envoy.config.overload.v3.ScaleTimersOverloadActionConfig
      timer_scale_factors: [{{ timer: TRANSPORT_SOCKET_CONNECT, min_timeout: 0.5s }}]
",
            pressure.display()
        );
    let run = |proxy: &Courier| -> (bool, u64) {
        proxy.wait_stat(
            "overload.envoy.overload_actions.reduce_timeouts.scale_percent",
            100,
        );
        // Connects and sends nothing: closed within closed_by_peer's 10 s, not 60 s.
        let mut stalled = std::net::TcpStream::connect(proxy.listener).expect("connect");
        let closed = closed_by_peer(&mut stalled);
        (
            closed,
            proxy.wait_stat(
                "listener.edge.downstream_cx_transport_socket_connect_timeout",
                1,
            ),
        )
    };
    let got = run(&Courier::start(&boot));
    if let Some(envoy) = Courier::start_envoy(&boot) {
        assert_eq!(run(&envoy), got, "envoy vs courier");
    }
    assert_eq!(got, (true, 1));
}
