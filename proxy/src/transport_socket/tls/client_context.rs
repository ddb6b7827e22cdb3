//! `UpstreamTlsContext` compiled to a rustls client config, and the connections it
//! starts.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use courier_proto::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::pki_types::ServerName;
use rustls::sign::CertifiedKey;
use rustls::ClientConfig;
use rustls::SignatureScheme;

use arc_swap::ArcSwap;

use super::common;
use super::inventory::{self, ContextCerts, HoldsCertificates};
use super::params::Side;
use super::sds::{self, Reload};
use super::validation::{ServerVerifier, Validation};
use crate::config::ConfigError;

/// A compiled upstream TLS context.
pub struct ClientContext {
    /// The current build (rebuilt when its secrets change, [`super::sds`]).
    built: ArcSwap<Built>,
    /// `sni`: the name sent, if any.
    sni: Option<ServerName<'static>>,
    /// `auto_host_sni`: a host's hostname (DNS name, or its endpoint's `hostname`) is
    /// the name sent.
    auto_host_sni: bool,
    /// `auto_sni_san_validation`: the certificate must name what was sent, instead of
    /// the SAN matchers.
    sni_san_validation: bool,
    proto: UpstreamTlsContext,
    path: String,
    check_name: bool,
}

/// One build of a context.
struct Built {
    /// `None` while a secret it names has not arrived.
    config: Option<Arc<ClientConfig>>,
    /// The verifier `config` holds, for the `auto_san_validation` variant.
    verifier: Option<ServerVerifier>,
    /// `config` whose verifier checks the name connected to instead of the SAN
    /// matchers (`auto_san_validation`); made at its first use.
    san_from_name: OnceLock<Arc<ClientConfig>>,
    /// The server secrets it still waits for.
    pending: Vec<String>,
    /// What it holds, for `/certs`.
    held: ContextCerts,
}

impl Built {
    /// The config for a connection to `name` when `auto_san_validation` asks the
    /// certificate to name it.
    fn san_from_name(&self) -> Option<Arc<ClientConfig>> {
        let (config, verifier) = (self.config.as_ref()?, self.verifier.as_ref()?);
        Some(
            self.san_from_name
                .get_or_init(|| {
                    let mut c = (**config).clone();
                    c.dangerous()
                        .set_certificate_verifier(Arc::new(verifier.clone().san_from_name()));
                    Arc::new(c)
                })
                .clone(),
        )
    }
}

impl HoldsCertificates for ClientContext {
    fn certificates(&self) -> ContextCerts {
        self.built.load().held.clone()
    }

    fn expires(&self) -> Option<i64> {
        self.built.load().held.expires()
    }
}

impl Reload for ClientContext {
    fn reload(&self) -> Result<(), ConfigError> {
        let build = build(&self.proto, &self.path, self.check_name)?;
        self.built.store(Arc::new(build.built));
        Ok(())
    }
}

impl ClientContext {
    /// The server secrets it still waits for (its cluster warms on them).
    pub fn pending(&self) -> Vec<String> {
        self.built.load().pending.clone()
    }

    /// The name a connection to a host whose hostname is `hostname` is opened with under
    /// `auto_host_sni` (`None` without it, or without a hostname).
    pub fn host_name(&self, hostname: Option<&str>) -> Option<AutoName> {
        let name = hostname.filter(|_| self.auto_host_sni)?;
        Some(AutoName {
            name: Arc::from(name),
            san_validation: self.sni_san_validation,
        })
    }

    /// The current config, or why there is none.
    fn current(&self) -> Result<Arc<ClientConfig>, rustls::Error> {
        self.built
            .load()
            .config
            .clone()
            .ok_or_else(|| rustls::Error::General("the context's secrets have not arrived".into()))
    }
}

impl std::fmt::Debug for ClientContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientContext")
            .field("sni", &self.sni)
            .finish_non_exhaustive()
    }
}

/// The server name a request chose for its upstream connection (`auto_sni`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AutoName {
    /// The host (no port): the SNI sent.
    pub name: Arc<str>,
    /// `auto_san_validation`: the certificate must name it.
    pub san_validation: bool,
}

/// What the upstream connection will speak, for the ALPN Envoy offers when the context
/// names none.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AlpnFallback {
    /// Offer nothing (tcp_proxy).
    None,
    /// `http/1.1`.
    Http1,
    /// `h2`.
    Http2,
    /// `h2` then `http/1.1` (`auto_config`: the server's choice names the codec).
    Auto,
}

impl ClientContext {
    /// The rustls config and server name for a connection made outside the workers (an
    /// xDS stream to `host`): ALPN `h2` unless the context names protocols.
    pub fn for_grpc(&self, host: &str) -> Option<(Arc<ClientConfig>, ServerName<'static>)> {
        let name = match &self.sni {
            Some(n) => n.clone(),
            None => ServerName::try_from(host.to_string()).ok()?,
        };
        let current = self.current().ok()?;
        let config = if current.alpn_protocols.is_empty() {
            let mut c = (*current).clone();
            c.alpn_protocols = vec![b"h2".to_vec()];
            Arc::new(c)
        } else {
            current
        };
        Some((config, name))
    }

    /// The rustls config and server name for a health check connection to `peer` (whose
    /// hostname is `hostname`), made on the main thread: the name a worker's connection
    /// would send, and ALPN `alpn` unless the context names protocols.
    pub fn for_main_thread(
        &self,
        peer: IpAddr,
        hostname: Option<&str>,
        alpn: &[u8],
    ) -> Option<(Arc<ClientConfig>, ServerName<'static>)> {
        let auto = self
            .host_name(hostname)
            .and_then(|a| ServerName::try_from(a.name.to_string()).ok());
        let name = auto
            .or_else(|| self.sni.clone())
            .unwrap_or(ServerName::IpAddress(peer.into()));
        let current = if self.sni_san_validation {
            self.built.load().san_from_name()?
        } else {
            self.current().ok()?
        };
        let config = if current.alpn_protocols.is_empty() && !alpn.is_empty() {
            let mut c = (*current).clone();
            c.alpn_protocols = vec![alpn.to_vec()];
            Arc::new(c)
        } else {
            current
        };
        Some((config, name))
    }

    /// A new client connection to `peer` (its address names the server when no `sni` is
    /// configured; rustls sends no SNI for an address). `auto` is the request's host
    /// under `auto_sni`: it replaces `sni`, and with `auto_san_validation` the server's
    /// certificate must name it.
    pub fn connect(
        &self,
        peer: IpAddr,
        fallback: AlpnFallback,
        auto: Option<&AutoName>,
    ) -> Result<rustls::ClientConnection, rustls::Error> {
        let auto_name = auto.and_then(|a| {
            ServerName::try_from(a.name.to_string())
                .ok()
                .map(|n| (n, a.san_validation))
        });
        let auto_name = auto_name.map(|(n, check)| (n, check || self.sni_san_validation));
        let (name, config) = match auto_name {
            Some((name, true)) => {
                let built = self.built.load();
                let config = built.san_from_name().ok_or_else(|| {
                    rustls::Error::General("the context's secrets have not arrived".into())
                })?;
                (name, config)
            }
            Some((name, false)) => (name, self.current()?),
            None => {
                let name = self
                    .sni
                    .clone()
                    .unwrap_or(ServerName::IpAddress(peer.into()));
                let config = if self.sni_san_validation {
                    self.built.load().san_from_name().ok_or_else(|| {
                        rustls::Error::General("the context's secrets have not arrived".into())
                    })?
                } else {
                    self.current()?
                };
                (name, config)
            }
        };
        let alpn: &[&[u8]] = match fallback {
            _ if !config.alpn_protocols.is_empty() => &[],
            AlpnFallback::None => &[],
            AlpnFallback::Http1 => &[b"http/1.1"],
            AlpnFallback::Http2 => &[b"h2"],
            AlpnFallback::Auto => &[b"h2", b"http/1.1"],
        };
        if alpn.is_empty() {
            rustls::ClientConnection::new(config, name)
        } else {
            rustls::ClientConnection::new_with_alpn(
                config,
                name,
                alpn.iter().map(|p| p.to_vec()).collect(),
            )
        }
    }
}

/// The one client certificate of a context, sent whenever the server asks.
#[derive(Debug)]
struct ClientCert(Arc<CertifiedKey>);

impl ResolvesClientCert for ClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Compiles an `UpstreamTlsContext` at `path` (Envoy's semantics: the server's name is
/// checked only by the context's own SAN matchers).
pub fn compile(ctx: &UpstreamTlsContext, path: &str) -> Result<Arc<ClientContext>, ConfigError> {
    compile_with(ctx, path, false)
}

/// Compiles a context whose peer's certificate must also be valid for the name it is
/// reached by (`sni`): gRPC's SSL credentials (`google_grpc`).
pub fn compile_verifying_name(
    ctx: &UpstreamTlsContext,
    path: &str,
) -> Result<Arc<ClientContext>, ConfigError> {
    compile_with(ctx, path, true)
}

fn compile_with(
    ctx: &UpstreamTlsContext,
    path: &str,
    check_name: bool,
) -> Result<Arc<ClientContext>, ConfigError> {
    let build = build(ctx, path, check_name)?;
    let context = Arc::new(ClientContext {
        built: ArcSwap::from_pointee(build.built),
        sni: build.sni,
        auto_host_sni: ctx.auto_host_sni,
        sni_san_validation: ctx.auto_sni_san_validation,
        proto: ctx.clone(),
        path: path.to_string(),
        check_name,
    });
    if !build.secrets.is_empty() {
        let weak: std::sync::Weak<dyn Reload + Send + Sync> = Arc::downgrade(&context) as _;
        sds::watch(build.secrets, weak);
    }
    let held: std::sync::Weak<dyn HoldsCertificates + Send + Sync> = Arc::downgrade(&context) as _;
    inventory::register(held);
    Ok(context)
}

/// A build, the SNI, and the changeable secrets it was built from.
struct Build {
    built: Built,
    sni: Option<ServerName<'static>>,
    secrets: Vec<sds::SecretRef>,
}

fn build(ctx: &UpstreamTlsContext, path: &str, check_name: bool) -> Result<Build, ConfigError> {
    #[allow(deprecated)]
    let unsupported = [
        // rustls never renegotiates; a server asking to would fail the connection.
        ("allow_renegotiation", ctx.allow_renegotiation),
        (
            "enforce_rsa_key_usage",
            ctx.enforce_rsa_key_usage.is_some_and(|b| !b.value),
        ),
    ];
    if let Some((field, _)) = unsupported.iter().find(|(_, set)| *set) {
        return Err(ConfigError::unsupported(format!("{path}.{field}")));
    }
    let sni = if ctx.sni.is_empty() {
        None
    } else {
        Some(ServerName::try_from(ctx.sni.clone()).map_err(|e| {
            ConfigError::new(
                format!("{path}.sni"),
                format!("invalid SNI '{}': {e}", ctx.sni),
            )
        })?)
    };
    let common_path = format!("{path}.common_tls_context");
    let default = Default::default();
    let common = common::compile(
        ctx.common_tls_context.as_ref().unwrap_or(&default),
        Side::Client,
        &common_path,
    )?;
    if !common.ready() {
        return Ok(Build {
            built: Built {
                config: None,
                verifier: None,
                san_from_name: OnceLock::new(),
                pending: common.pending,
                held: common.held,
            },
            sni,
            secrets: common.secrets,
        });
    }
    if common.certificates.len() > 1 {
        return Err(ConfigError::new(
            format!("{common_path}.tls_certificates"),
            "Multiple TLS certificates are not supported for client contexts",
        ));
    }
    let held = common.held;
    let validation = common
        .validation
        .unwrap_or_else(|| Arc::new(Validation::default()));
    let verifier = ServerVerifier::new(
        validation,
        common.params.provider.clone(),
        check_name,
        &format!("{common_path}.validation_context"),
    )?;
    let builder = ClientConfig::builder_with_provider(common.params.provider.clone())
        .with_protocol_versions(&common.params.versions)
        .map_err(|e| ConfigError::new(&common_path, format!("invalid tls_params: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier.clone()));
    let mut config = match common.certificates.into_iter().next() {
        Some(key) => builder.with_client_cert_resolver(Arc::new(ClientCert(key))),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = common.alpn;
    // Envoy keeps one session per upstream by default (`max_session_keys`: 1; 0 turns
    // resumption off).
    let keys = ctx
        .max_session_keys
        .as_ref()
        .map_or(1, |v| v.value as usize);
    config.resumption = if keys == 0 {
        Resumption::disabled()
    } else {
        Resumption::in_memory_sessions(keys.max(1) * 4)
    };
    Ok(Build {
        built: Built {
            config: Some(Arc::new(config)),
            verifier: Some(verifier),
            san_from_name: OnceLock::new(),
            pending: Vec::new(),
            held,
        },
        sni,
        secrets: common.secrets,
    })
}
