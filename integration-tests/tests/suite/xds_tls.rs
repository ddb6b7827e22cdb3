//! xDS over TLS: courier-cp serving ADS with mTLS (its `--tls-cert`, `--tls-key` and
//! `--client-ca`), and the proxy (Courier or Envoy: `PROXY_UNDER_TEST`) reaching it
//! through an `envoy_grpc` cluster with an `UpstreamTlsContext` whose certificates come
//! from files, as the Helm chart's `xds.tls` values render it. Certificates are made
//! per run.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use courier_control_plane::ServerTls;
use courier_integration_tests::resources::*;
use courier_integration_tests::traffic::tcp_hello;
use courier_integration_tests::upstream::Upstream;
use courier_integration_tests::{free_port, Bootstrap, Cp, XdsTls};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;

use crate::fixture::{Fx, NODE};

struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "xds-ca");
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
    std::fs::write(d.join("ca.pem"), ca_cert.pem()).expect("write");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |name: &str, dns: &[&str]| -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("params");
        p.distinguished_name.push(DnType::CommonName, name);
        let cert = p.signed_by(&key, &issuer).expect("sign");
        let (c, k) = (d.join(format!("{name}.pem")), d.join(format!("{name}.key")));
        std::fs::write(&c, cert.pem()).expect("write");
        std::fs::write(&k, key.serialize_pem()).expect("write");
        (c, k)
    };
    Pki {
        ca: d.join("ca.pem"),
        server: leaf("xds-server", &["xds.test"]),
        client: leaf("proxy", &[]),
        _dir: dir,
    }
}

fn server_tls(pki: &Pki) -> ServerTls {
    let read = |p: &Path| std::fs::read(p).expect("read");
    ServerTls {
        cert: read(&pki.server.0),
        key: read(&pki.server.1),
        client_ca: Some(read(&pki.ca)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ads_over_mtls_configures_the_proxy() {
    let pki = pki();
    let up = Upstream::tcp_echo("a").await;
    let port = free_port();
    let cp = Cp::start_tls(server_tls(&pki)).await;
    let tls = XdsTls {
        ca: pki.ca.clone(),
        client: Some(pki.client.clone()),
        server_name: "xds.test".into(),
    };
    let fx = Fx::with(
        cp,
        |cp_port| Bootstrap::ads(NODE, cp_port).xds_tls(tls),
        vec![
            eds_cluster("c1"),
            endpoints("c1", &[up.port]),
            tcp_listener("l1", port, "c1"),
        ],
    )
    .await;
    assert_eq!(tcp_hello(port).await.as_deref(), Ok("a"));
    drop(fx);
}

/// The server's side of mTLS: a client without a certificate gets no service (the
/// handshake fails, or the server's alert ends the connection at the first read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mtls_server_refuses_a_client_without_a_certificate() {
    let pki = pki();
    let cp = Cp::start_tls(server_tls(&pki)).await;
    let addr = format!("127.0.0.1:{}", cp.port);
    let ca = std::fs::read(&pki.ca).expect("ca");
    let outcome = tokio::task::spawn_blocking(move || {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
            roots.add(c.expect("pem")).expect("root");
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let name = rustls::pki_types::ServerName::try_from("xds.test").expect("name");
        let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("conn");
        let tcp = std::net::TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("timeout");
        let mut s = rustls::StreamOwned::new(conn, tcp);
        // The HTTP/2 preface; the server's answer, if any, would be its SETTINGS.
        let wrote = s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        let mut buf = [0u8; 64];
        let read = s.read(&mut buf);
        (wrote.is_ok(), read.map_err(|e| e.to_string()))
    })
    .await
    .expect("client");
    assert!(
        matches!(outcome.1, Err(ref e) if e.contains("CertificateRequired") || e.contains("certificate")),
        "{outcome:?}"
    );
}
