//! Shared helpers for the TLS end-to-end tests: certificates generated per run (rcgen,
//! never committed keys), a TLS client on rustls, and a TLS upstream that reports what
//! each handshake offered.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A certificate and its key, as PEM files.
#[derive(Clone)]
pub struct Pem {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate authority of this run.
pub struct Ca {
    pub cert: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// A new self-signed CA named `name`, written to `dir`.
    pub fn new(dir: &Path, name: &str) -> Ca {
        let key = KeyPair::generate().expect("ca key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("ca cert");
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, cert.pem()).expect("write ca");
        Ca {
            cert: path,
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf signed by this CA with DNS names `dns` and URI names `uris`, written to
    /// `dir` as `<name>.pem` and `<name>.key`.
    pub fn leaf(&self, dir: &Path, name: &str, dns: &[&str], uris: &[&str]) -> Pem {
        self.leaf_with(dir, name, dns, uris, KeyPair::generate().expect("key"))
    }

    /// [`Ca::leaf`] with an RSA-2048 key.
    pub fn leaf_rsa(&self, dir: &Path, name: &str, dns: &[&str]) -> Pem {
        let key = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("rsa key");
        self.leaf_with(dir, name, dns, &[], key)
    }

    fn leaf_with(&self, dir: &Path, name: &str, dns: &[&str], uris: &[&str], key: KeyPair) -> Pem {
        let mut params =
            CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        for u in uris {
            params
                .subject_alt_names
                .push(SanType::URI((*u).try_into().expect("uri")));
        }
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let pem = Pem {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&pem.cert, cert.pem()).expect("write cert");
        std::fs::write(&pem.key, key.serialize_pem()).expect("write key");
        pem
    }
}

/// The certificates of a PEM file.
pub fn certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .expect("open")
        .collect::<Result<_, _>>()
        .expect("pem")
}

fn key(path: &Path) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_file(path).expect("key")
}

/// What a TLS client connection did.
pub struct TlsReply {
    /// The ALPN protocol the server chose.
    pub alpn: Option<Vec<u8>>,
    /// The response's status and body (`None` when the connection failed).
    pub response: Option<(u16, String)>,
}

/// A TLS client: trusts `ca`, sends `sni` and `alpn`, presents `client` if given.
pub fn tls_connect(
    addr: SocketAddr,
    ca: &Path,
    sni: &str,
    alpn: &[&str],
    client: Option<&Pem>,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca) {
        roots.add(c).expect("root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots);
    let mut config = match client {
        Some(p) => builder
            .with_client_auth_cert(certs(&p.cert), key(&p.key))
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let name = ServerName::try_from(sni.to_string()).expect("sni");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client conn");
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .map_err(|e| e.to_string())?;
    }
    Ok(stream)
}

/// `GET path` over `stream`; the status and body (read by its `content-length`, or to
/// the end).
pub fn get_over<S: Read + Write>(
    stream: &mut S,
    host: &str,
    path: &str,
) -> Result<(u16, String), String> {
    request_over(stream, host, path, "connection: close\r\n")
}

/// `GET path` over `stream`, keeping the connection open for the next request.
pub fn get_kept<S: Read + Write>(
    stream: &mut S,
    host: &str,
    path: &str,
) -> Result<(u16, String), String> {
    request_over(stream, host, path, "")
}

fn request_over<S: Read + Write>(
    stream: &mut S,
    host: &str,
    path: &str,
    extra: &str,
) -> Result<(u16, String), String> {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n{extra}\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(done) = complete(&raw) {
            return done;
        }
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            // A peer closing without close_notify still delivered what it sent.
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.to_string()),
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no response: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

/// A whole response with a `content-length`, once all of it is in `raw`.
fn complete(raw: &[u8]) -> Option<Result<(u16, String), String>> {
    let text = std::str::from_utf8(raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let len: usize = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    })?;
    if body.len() < len {
        return None;
    }
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some(Ok((status, body[..len].to_string())))
}

/// One TLS request: the ALPN chosen and the response, or the connection's failure.
pub fn tls_get(
    addr: SocketAddr,
    ca: &Path,
    sni: &str,
    alpn: &[&str],
    client: Option<&Pem>,
) -> TlsReply {
    match tls_connect(addr, ca, sni, alpn, client) {
        Err(_) => TlsReply {
            alpn: None,
            response: None,
        },
        Ok(mut s) => {
            let alpn = s.conn.alpn_protocol().map(<[u8]>::to_vec);
            TlsReply {
                alpn,
                response: get_over(&mut s, sni, "/").ok(),
            }
        }
    }
}

/// What one handshake with [`TlsUpstream`] offered.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Offered {
    pub sni: Option<String>,
    pub alpn: Vec<String>,
    pub client_cert: bool,
}

/// A TLS HTTP/1.1 upstream: answers every request `200` with body
/// `<name> sni=<sni>` and records what each handshake offered. When `client_ca` is
/// given, a client certificate from it is required.
pub struct TlsUpstream {
    pub addr: SocketAddr,
    pub offered: Arc<Mutex<Vec<Offered>>>,
}

impl TlsUpstream {
    pub fn start(name: &str, pem: &Pem, client_ca: Option<&Path>) -> TlsUpstream {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions");
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in certs(ca) {
                    roots.add(c).expect("root");
                }
                builder.with_client_cert_verifier(
                    rustls::server::WebPkiClientVerifier::builder_with_provider(
                        Arc::new(roots),
                        provider,
                    )
                    .build()
                    .expect("verifier"),
                )
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs(&pem.cert), key(&pem.key))
            .expect("server config");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let offered = Arc::new(Mutex::new(Vec::new()));
        let (rec, name) = (offered.clone(), name.to_string());
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { continue };
                let (config, rec, name) = (config.clone(), rec.clone(), name.clone());
                std::thread::spawn(move || serve_tls(tcp, config, &rec, &name));
            }
        });
        TlsUpstream { addr, offered }
    }
}

fn serve_tls(
    mut tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    rec: &Mutex<Vec<Offered>>,
    name: &str,
) {
    let mut acceptor = rustls::server::Acceptor::default();
    let accepted = loop {
        if acceptor.read_tls(&mut tcp).unwrap_or(0) == 0 {
            return;
        }
        match acceptor.accept() {
            Ok(Some(a)) => break a,
            Ok(None) => {}
            Err(_) => return,
        }
    };
    let hello = accepted.client_hello();
    let mut offered = Offered {
        sni: hello.server_name().map(String::from),
        alpn: hello
            .alpn()
            .map(|it| {
                it.map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect()
            })
            .unwrap_or_default(),
        client_cert: false,
    };
    let Ok(conn) = accepted.into_connection(config) else {
        return;
    };
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        if s.conn.complete_io(&mut s.sock).is_err() {
            return;
        }
    }
    offered.client_cert = s.conn.peer_certificates().is_some();
    let sni = offered.sni.clone().unwrap_or_else(|| "-".into());
    if let Ok(mut r) = rec.lock() {
        r.push(offered);
    }
    let mut reader = BufReader::new(s);
    loop {
        let mut line = String::new();
        let mut end = false;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    end = true;
                    break;
                }
                Ok(_) if line == "\r\n" => break,
                Ok(_) => {}
            }
        }
        if end {
            return;
        }
        let body = format!("{name} sni={sni}");
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let s = reader.get_mut();
        if s.write_all(resp.as_bytes())
            .and_then(|_| s.flush())
            .is_err()
        {
            return;
        }
    }
}
