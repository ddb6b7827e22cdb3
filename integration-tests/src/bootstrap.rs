//! Bootstraps that a real Envoy and Courier both accept.

use std::path::PathBuf;

/// How the proxy gets CDS and LDS.
#[derive(Debug, Clone)]
pub enum Mode {
    /// One ADS stream (`delta`: DELTA_GRPC).
    Ads {
        /// Incremental xDS.
        delta: bool,
    },
    /// One stream per type (non-ADS `api_config_source`).
    PerType {
        /// Incremental xDS.
        delta: bool,
    },
    /// REST-JSON polls (`api_type: REST`, [`REST_REFRESH_DELAY`]) for CDS and LDS, through
    /// the static cluster `xds_rest` (HTTP/1.1) to `port` (the control plane's REST port);
    /// EDS/RDS sources should be [`REST_SOURCE`].
    Rest {
        /// The REST server's port.
        port: u16,
    },
    /// `path_config_source` files for CDS and LDS.
    Files {
        /// The CDS file.
        cds: PathBuf,
        /// The LDS file.
        lds: PathBuf,
    },
}

/// A bootstrap under construction.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// `node.id`.
    pub node: String,
    /// The control plane's port.
    pub cp_port: u16,
    /// How CDS/LDS are fetched.
    pub mode: Mode,
    /// `initial_fetch_timeout` of cds_config and lds_config (None: default).
    pub initial_fetch_timeout: Option<String>,
    /// `set_node_on_first_message_only`.
    pub node_on_first_message_only: bool,
    /// TLS to the control plane, certificates from files.
    pub xds_tls: Option<XdsTls>,
    /// Whether there is a `cds_config` (without one, clusters come only on demand).
    pub cds: bool,
    /// RTDS layers (layer name, `Runtime` resource name), fetched as CDS/LDS are. With any,
    /// `layered_runtime` is a static layer `base` (`base: static`), these, and an admin
    /// layer `admin`.
    pub rtds_layers: Vec<(String, String)>,
}

/// The xDS cluster's `UpstreamTlsContext`, from PEM files.
#[derive(Debug, Clone)]
pub struct XdsTls {
    /// The CA the server's certificate must chain to.
    pub ca: PathBuf,
    /// The client certificate and key (mTLS), if any.
    pub client: Option<(PathBuf, PathBuf)>,
    /// The SNI sent, and the DNS name the server's certificate must have.
    pub server_name: String,
}

impl XdsTls {
    fn transport_socket(&self) -> String {
        let client = self
            .client
            .as_ref()
            .map(|(cert, key)| {
                format!(
                    "tls_certificates: [{{ certificate_chain: {{ filename: '{}' }}, private_key: {{ filename: '{}' }} }}], ",
                    cert.display(),
                    key.display()
                )
            })
            .unwrap_or_default();
        format!(
            "    transport_socket: {{ name: envoy.transport_sockets.tls, typed_config: {{ '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, sni: {name}, common_tls_context: {{ {client}validation_context: {{ trusted_ca: {{ filename: '{ca}' }}, match_typed_subject_alt_names: [{{ san_type: DNS, matcher: {{ exact: {name} }} }}] }} }} }} }}\n",
            name = self.server_name,
            ca = self.ca.display(),
        )
    }
}

impl Bootstrap {
    /// SotW ADS to `cp_port` for `node`.
    pub fn ads(node: &str, cp_port: u16) -> Bootstrap {
        Bootstrap {
            node: node.to_string(),
            cp_port,
            mode: Mode::Ads { delta: false },
            initial_fetch_timeout: None,
            node_on_first_message_only: true,
            xds_tls: None,
            cds: true,
            rtds_layers: Vec::new(),
        }
    }

    /// Adds an RTDS layer `layer` subscribed to the `Runtime` resource `resource`.
    pub fn rtds_layer(mut self, layer: &str, resource: &str) -> Bootstrap {
        self.rtds_layers
            .push((layer.to_string(), resource.to_string()));
        self
    }

    fn layered_runtime(&self) -> String {
        if self.rtds_layers.is_empty() {
            return String::new();
        }
        let source = self.source(None);
        let rtds: String = self
            .rtds_layers
            .iter()
            .map(|(layer, resource)| {
                format!("  - {{ name: {layer}, rtds_layer: {{ name: {resource}, rtds_config: {source} }} }}\n")
            })
            .collect();
        format!(
            "layered_runtime:\n  layers:\n  - {{ name: base, static_layer: {{ base: static }} }}\n{rtds}  - {{ name: admin, admin_layer: {{}} }}\n"
        )
    }

    /// Without `cds_config`: the proxy holds only the clusters it discovers on demand.
    pub fn without_cds(mut self) -> Bootstrap {
        self.cds = false;
        self
    }

    /// Delta ADS.
    pub fn delta_ads(node: &str, cp_port: u16) -> Bootstrap {
        Bootstrap {
            mode: Mode::Ads { delta: true },
            ..Bootstrap::ads(node, cp_port)
        }
    }

    /// Sets the mode.
    pub fn mode(mut self, mode: Mode) -> Bootstrap {
        self.mode = mode;
        self
    }

    /// Sets `initial_fetch_timeout` (e.g. "1s").
    /// Talks to the control plane over TLS.
    pub fn xds_tls(mut self, tls: XdsTls) -> Bootstrap {
        self.xds_tls = Some(tls);
        self
    }

    pub fn initial_fetch_timeout(mut self, t: &str) -> Bootstrap {
        self.initial_fetch_timeout = Some(t.to_string());
        self
    }

    fn api_source(&self, delta: bool) -> String {
        let api = if delta { "DELTA_GRPC" } else { "GRPC" };
        format!(
            "{{ api_type: {api}, transport_api_version: V3, set_node_on_first_message_only: {}, grpc_services: [{{ envoy_grpc: {{ cluster_name: xds }} }}] }}",
            self.node_on_first_message_only
        )
    }

    fn source(&self, file: Option<&PathBuf>) -> String {
        let ift = self
            .initial_fetch_timeout
            .as_ref()
            .map(|t| format!(", initial_fetch_timeout: {t}"))
            .unwrap_or_default();
        match (&self.mode, file) {
            (Mode::Ads { .. }, _) => format!("{{ ads: {{}}, resource_api_version: V3{ift} }}"),
            (Mode::PerType { delta }, _) => format!(
                "{{ api_config_source: {}, resource_api_version: V3{ift} }}",
                self.api_source(*delta)
            ),
            (Mode::Rest { .. }, _) => {
                format!("{{ api_config_source: {REST_API_SOURCE}, resource_api_version: V3{ift} }}")
            }
            (Mode::Files { .. }, Some(f)) => format!(
                "{{ path_config_source: {{ path: '{}' }}, resource_api_version: V3{ift} }}",
                f.display()
            ),
            (Mode::Files { .. }, None) => unreachable!(),
        }
    }

    /// The bootstrap YAML (admin on 127.0.0.1:0; the harness reads the bound address).
    pub fn yaml(&self) -> String {
        let (cds, lds, ads) = match &self.mode {
            Mode::Ads { delta } => (
                self.source(None),
                self.source(None),
                format!("  ads_config: {}\n", self.api_source(*delta)),
            ),
            Mode::PerType { .. } | Mode::Rest { .. } => {
                (self.source(None), self.source(None), String::new())
            }
            Mode::Files { cds, lds } => (
                self.source(Some(cds)),
                self.source(Some(lds)),
                String::new(),
            ),
        };
        let cds = if self.cds {
            format!("  cds_config: {cds}\n")
        } else {
            String::new()
        };
        let runtime = self.layered_runtime();
        format!(
            r#"{runtime}node: {{ id: {node}, cluster: it-cluster }}
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
dynamic_resources:
{ads}{cds}  lds_config: {lds}
static_resources:
  clusters:
{rest_cluster}  - name: xds
    type: STATIC
    connect_timeout: 1s
{xds_tls}    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: xds
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}
  - name: nowhere
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: nowhere
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 1 }} }} }}
"#,
            node = self.node,
            port = self.cp_port,
            rest_cluster = match self.mode {
                Mode::Rest { port } => format!(
                    "  - name: xds_rest\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: xds_rest\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}\n"
                ),
                _ => String::new(),
            },
            xds_tls = self
                .xds_tls
                .as_ref()
                .map(XdsTls::transport_socket)
                .unwrap_or_default(),
        )
    }

    /// The config source YAML resources of this bootstrap should use for EDS/RDS.
    pub fn dependent_source(&self) -> &'static str {
        match self.mode {
            Mode::PerType { delta: false } => GRPC_SOURCE,
            Mode::PerType { delta: true } => DELTA_GRPC_SOURCE,
            Mode::Rest { .. } => REST_SOURCE,
            _ => ADS_SOURCE,
        }
    }
}

/// An EDS config source that never answers: a gRPC service on the bootstrap's static
/// `nowhere` cluster (127.0.0.1:1 refuses), without an initial fetch timeout. A cluster using
/// it stays warming.
pub const NOWHERE_SOURCE: &str = "{ api_config_source: { api_type: GRPC, transport_api_version: V3, grpc_services: [{ envoy_grpc: { cluster_name: nowhere } }] }, resource_api_version: V3, initial_fetch_timeout: 0s }";

/// EDS/RDS over ADS.
pub const ADS_SOURCE: &str = "{ ads: {}, resource_api_version: V3 }";
/// EDS/RDS over their own SotW stream.
pub const GRPC_SOURCE: &str = "{ api_config_source: { api_type: GRPC, transport_api_version: V3, grpc_services: [{ envoy_grpc: { cluster_name: xds } }] }, resource_api_version: V3 }";
/// EDS/RDS over their own delta stream.
pub const DELTA_GRPC_SOURCE: &str = "{ api_config_source: { api_type: DELTA_GRPC, transport_api_version: V3, grpc_services: [{ envoy_grpc: { cluster_name: xds } }] }, resource_api_version: V3 }";

/// `refresh_delay` of the REST sources: short, so tests converge fast (Envoy polls every
/// `refresh_delay` plus up to as much jitter).
pub const REST_REFRESH_DELAY: &str = "0.2s";
/// The `api_config_source` of REST-JSON polls to the static cluster `xds_rest`.
pub const REST_API_SOURCE: &str = "{ api_type: REST, transport_api_version: V3, cluster_names: [xds_rest], refresh_delay: 0.2s, request_timeout: 1s }";
/// EDS/RDS over REST-JSON polls ([`Mode::Rest`] bootstraps only: they define `xds_rest`).
pub const REST_SOURCE: &str = "{ api_config_source: { api_type: REST, transport_api_version: V3, cluster_names: [xds_rest], refresh_delay: 0.2s, request_timeout: 1s }, resource_api_version: V3 }";
