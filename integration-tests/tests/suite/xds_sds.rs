//! SDS over ADS: `Secret` resources from courier-cp feeding a listener's
//! `DownstreamTlsContext` (`tls_certificate_sds_secret_configs` with `ads`), on Courier
//! and on Envoy (`PROXY_UNDER_TEST`): the listener warms until its secret arrives, a
//! rotated certificate serves new handshakes while an established connection goes on,
//! and a secret that does not build is NACKed with the last good one still serving.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use courier_control_plane::{Resource, ResourceType};
use courier_integration_tests::resources::*;
use courier_integration_tests::upstream::Upstream;
use courier_integration_tests::{free_port, Bootstrap, Cp};
use courier_proto::envoy::extensions::transport_sockets::tls::v3::Secret;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::fixture::{Fx, NODE};

/// A CA of this run and two leaves for `edge.test` signed by it, as PEM text.
struct Pki {
    ca: String,
    one: (String, String),
    two: (String, String),
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "sds-ca");
    let ca = ca_params.self_signed(&ca_key).expect("ca").pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |cn: &str| {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(vec!["edge.test".to_string()]).expect("params");
        p.distinguished_name.push(DnType::CommonName, cn);
        let cert = p.signed_by(&key, &issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca,
        one: leaf("one"),
        two: leaf("two"),
    }
}

fn secret(name: &str, (cert, key): &(String, String)) -> Arc<Resource> {
    let s: Secret = courier_proto::from_yaml(&format!(
        "name: {name}\ntls_certificate:\n  certificate_chain: {{ inline_string: {cert:?} }}\n  private_key: {{ inline_string: {key:?} }}\n"
    ))
    .expect("secret yaml");
    Resource::secret(&s).expect("secret resource")
}

/// A tcp_proxy listener to `cluster` terminating TLS with the certificate of secret
/// `secret_name`, served over ADS.
fn tls_listener(name: &str, port: u16, cluster: &str, secret_name: &str) -> Arc<Resource> {
    listener_yaml(&format!(
        r#"name: {name}
address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
filter_chains:
- transport_socket:
    name: envoy.transport_sockets.tls
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
      common_tls_context:
        tls_certificate_sds_secret_configs:
        - name: {secret_name}
          sds_config: {{ ads: {{}}, resource_api_version: V3 }}
  filters:
  - name: envoy.filters.network.tcp_proxy
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
      stat_prefix: {name}
      cluster: {cluster}
"#
    ))
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection through the proxy: the leaf certificate it served, the upstream's
/// greeting, and the stream (still open).
fn tls_hello(port: u16, ca: &str) -> Result<(Vec<u8>, String, TlsStream), String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("edge.test").map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .map_err(|e| e.to_string())?;
    }
    let leaf = stream
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .ok_or("no certificate")?;
    let mut greeting = String::new();
    BufReader::new(&mut stream)
        .read_line(&mut greeting)
        .map_err(|e| e.to_string())?;
    Ok((leaf, greeting.trim().to_string(), stream))
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("pem")
        .to_vec()
}

/// The echo of `ping` over an established connection.
fn ping(stream: &mut TlsStream) -> Result<String, String> {
    stream.write_all(b"ping\n").map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    Ok(line.trim().to_string())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// courier-cp serving, and the proxy up with, an echo upstream `a` behind the TLS listener
/// `l1` on `port` whose certificate is the secret `edge-cert` (`pki.one`).
async fn edge(pki: &Pki, port: u16) -> (Fx, Upstream) {
    let up = Upstream::tcp_echo("a").await;
    let cp = Cp::start().await;
    let fx = Fx::with(
        cp,
        |cp_port| Bootstrap::ads(NODE, cp_port),
        vec![
            static_cluster("c1", &[up.port], ""),
            tls_listener("l1", port, "c1", "edge-cert"),
            secret("edge-cert", &pki.one),
        ],
    )
    .await;
    (fx, up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sds_over_ads_warms_rotates_and_rejects_like_envoy() {
    let pki = Arc::new(pki());
    let port = free_port();
    let (fx, _up) = edge(&pki, port).await;
    // The listener came up with the secret's certificate.
    let p = pki.clone();
    let (leaf, greeting, mut kept) = blocking(move || tls_hello(port, &p.ca))
        .await
        .expect("TLS through the listener");
    assert_eq!(leaf, der(&pki.one.0));
    assert_eq!(greeting, "upstream a");

    // Rotation: new handshakes get the new certificate, the open connection goes on.
    fx.update(vec![secret("edge-cert", &pki.two)]).await;
    let p = pki.clone();
    let (leaf, _, _) = blocking(move || tls_hello(port, &p.ca))
        .await
        .expect("TLS after rotation");
    assert_eq!(leaf, der(&pki.two.0), "a new handshake after the rotation");
    let (echo, kept) = blocking(move || (ping(&mut kept), kept)).await;
    assert_eq!(echo.as_deref(), Ok("ping"), "the connection opened before");
    drop(kept);

    // A secret that does not build is NACKed; the last good certificate keeps serving.
    let bad = secret("edge-cert", &(pki.two.0.clone(), "not a key".to_string()));
    let version = fx.push(bad);
    let nack = fx.cp.nack(fx.node(), ResourceType::Secret, &version).await;
    assert!(
        nack.contains("private key") || nack.contains("private_key"),
        "the NACK says what is wrong: {nack}"
    );
    let p = pki.clone();
    let (leaf, _, _) = blocking(move || tls_hello(port, &p.ca))
        .await
        .expect("TLS after the NACK");
    assert_eq!(leaf, der(&pki.two.0));
    // The good secret back (Envoy stops at the first bad secret of a response, so the
    // next step must not share a response with it).
    fx.update(vec![secret("edge-cert", &pki.two)]).await;

    // A listener whose secret does not exist yet warms until it comes.
    let port2 = free_port();
    fx.update_wait(
        vec![tls_listener("l2", port2, "c1", "late-cert")],
        &[ResourceType::Listener],
    )
    .await;
    assert_eq!(fx.proxy.warming_listeners().await, vec!["l2".to_string()]);
    fx.update(vec![secret("late-cert", &pki.one)]).await;
    fx.proxy
        .wait_stat(
            "listener_manager.total_listeners_warming",
            "no listener warming",
            |v| v == 0,
        )
        .await;
    let p = pki.clone();
    let (leaf, greeting, _) = blocking(move || tls_hello(port2, &p.ca))
        .await
        .expect("TLS through the warmed listener");
    assert_eq!(leaf, der(&pki.one.0));
    assert_eq!(greeting, "upstream a");
}

fn validation_secret(name: &str, ca: &str) -> Arc<Resource> {
    let s: Secret = courier_proto::from_yaml(&format!(
        "name: {name}\nvalidation_context:\n  trusted_ca: {{ inline_string: {ca:?} }}\n"
    ))
    .expect("secret yaml");
    Resource::secret(&s).expect("secret resource")
}

/// Upstream TLS whose trusted CA comes over SDS: the cluster warms until the secret
/// arrives, then a plaintext listener reaches the TLS listener through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_warms_on_its_sds_validation_context_like_envoy() {
    let pki = Arc::new(pki());
    let (tls_port, plain_port) = (free_port(), free_port());
    let (fx, _up) = edge(&pki, tls_port).await;
    let tls_cluster = static_cluster(
        "c2",
        &[tls_port],
        r#"transport_socket:
  name: envoy.transport_sockets.tls
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
    sni: edge.test
    common_tls_context:
      validation_context_sds_secret_config:
        name: edge-ca
        sds_config: { ads: {}, resource_api_version: V3 }"#,
    );
    fx.push(tls_cluster);
    fx.proxy
        .wait_stat("cluster_manager.warming_clusters", "c2 warming", |v| v == 1)
        .await;
    assert_eq!(fx.proxy.warming_clusters().await, vec!["c2".to_string()]);
    fx.update(vec![validation_secret("edge-ca", &pki.ca)]).await;
    fx.proxy
        .wait_stat("cluster_manager.warming_clusters", "c2 warm", |v| v == 0)
        .await;
    fx.update(vec![tcp_listener("l3", plain_port, "c2")]).await;
    let hello = courier_integration_tests::traffic::tcp_hello(plain_port).await;
    assert_eq!(
        hello.as_deref(),
        Ok("a"),
        "plaintext → c2 (TLS, CA from SDS) → l1 → a"
    );
}

fn generic_secret(name: &str, value: &str) -> Arc<Resource> {
    let s: Secret = courier_proto::from_yaml(&format!(
        "name: {name}\ngeneric_secret: {{ secret: {{ inline_string: {value:?} }} }}\n"
    ))
    .expect("secret yaml");
    Resource::secret(&s).expect("secret resource")
}

/// An HTTP listener to `cluster` whose credential injector injects the generic secret
/// `secret_name`, served over ADS.
fn injecting_listener(name: &str, port: u16, cluster: &str, secret_name: &str) -> Arc<Resource> {
    listener_yaml(&format!(
        r#"name: {name}
address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: {name}
      route_config:
        virtual_hosts: [{{ name: all, domains: ['*'], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: {cluster} }} }}] }}]
      http_filters:
      - name: envoy.filters.http.credential_injector
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.credential_injector.v3.CredentialInjector
          credential:
            name: envoy.http.injected_credentials.generic
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.http.injected_credentials.generic.v3.Generic
              credential:
                name: {secret_name}
                sds_config: {{ ads: {{}}, resource_api_version: V3 }}
      - name: envoy.filters.http.router
        typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"#
    ))
}

/// The credential injector's generic secret over ADS: its listener warms until the
/// secret arrives, then requests go upstream with it (counted `injected`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_injector_warms_on_its_sds_secret_like_envoy() {
    let up = Upstream::http("a").await;
    let port = free_port();
    let fx = Fx::ads(vec![static_cluster("c1", &[up.port], "")]).await;
    fx.update_wait(
        vec![injecting_listener("ci", port, "c1", "api-token")],
        &[ResourceType::Listener],
    )
    .await;
    assert_eq!(fx.proxy.warming_listeners().await, vec!["ci".to_string()]);
    fx.update(vec![generic_secret("api-token", "Bearer t0k\n")])
        .await;
    fx.proxy
        .wait_stat(
            "listener_manager.total_listeners_warming",
            "no listener warming",
            |v| v == 0,
        )
        .await;
    let r = courier_integration_tests::traffic::http_get(port)
        .await
        .expect("a request through the warmed listener");
    assert_eq!((r.status, r.upstream()), (200, Some("a")));
    assert_eq!(
        fx.proxy.stat("http.ci.credential_injector.injected").await,
        Some(1)
    );
    assert_eq!(
        fx.proxy.stat("http.ci.credential_injector.failed").await,
        Some(0)
    );
}
