//! xDS resource types and the encoded resources the cache holds.

use std::sync::Arc;

use courier_proto::envoy::config::cluster::v3::{cluster, Cluster};
use courier_proto::envoy::config::endpoint::v3::ClusterLoadAssignment;
use courier_proto::envoy::config::listener::v3::{filter, FilterChain, Listener};
use courier_proto::envoy::config::route::v3::RouteConfiguration;
use courier_proto::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager,
};
use courier_proto::envoy::extensions::transport_sockets::tls::v3::Secret;
use courier_proto::envoy::service::runtime::v3::Runtime;
use courier_proto::google::protobuf::Any;
use courier_proto::ResourceMessage;
use prost::Message;
use sha2::{Digest, Sha256};

/// The xDS resource types courier-cp serves, defined in `courier-proto` (one definition for
/// the control plane and the proxy).
pub use courier_proto::ResourceType;

/// Why a resource could not be built from a message or an `Any`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    /// The `Any` carries a type courier-cp does not serve.
    #[error("unsupported resource type URL {0:?}")]
    UnsupportedType(String),
    /// The bytes do not decode as the type they claim.
    #[error("cannot decode {type_url}: {message}")]
    Decode {
        /// The type URL of the `Any`.
        type_url: String,
        /// The decoder's message.
        message: String,
    },
    /// Every xDS resource needs a name (a ClusterLoadAssignment's is `cluster_name`).
    #[error("{0} resource has an empty name")]
    EmptyName(ResourceType),
}

/// One encoded xDS resource: its type, name, content version and the `Any` sent on the wire.
///
/// Built once and shared (`Arc`) by every snapshot and every stream that sends it, so pushing
/// to many clients never re-encodes.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    kind: ResourceType,
    name: String,
    version: String,
    any: Any,
    references: Vec<String>,
}

impl Resource {
    /// A CDS resource.
    pub fn cluster(c: &Cluster) -> Result<Arc<Resource>, ResourceError> {
        Resource::build(ResourceType::Cluster, &c.name, c, cluster_references(c))
    }

    /// An EDS resource (named by `cluster_name`).
    pub fn endpoint(cla: &ClusterLoadAssignment) -> Result<Arc<Resource>, ResourceError> {
        Resource::build(ResourceType::Endpoint, &cla.cluster_name, cla, Vec::new())
    }

    /// An LDS resource.
    pub fn listener(l: &Listener) -> Result<Arc<Resource>, ResourceError> {
        Resource::build(ResourceType::Listener, &l.name, l, listener_references(l))
    }

    /// An RDS resource.
    pub fn route(r: &RouteConfiguration) -> Result<Arc<Resource>, ResourceError> {
        Resource::build(ResourceType::Route, &r.name, r, Vec::new())
    }

    /// An SDS resource.
    pub fn secret(s: &Secret) -> Result<Arc<Resource>, ResourceError> {
        Resource::build(ResourceType::Secret, &s.name, s, Vec::new())
    }

    /// An RTDS resource (a runtime layer's values, named as the proxy's `rtds_layer` names
    /// it).
    pub fn runtime(r: &Runtime) -> Result<Arc<Resource>, ResourceError> {
        Resource::build(ResourceType::Runtime, &r.name, r, Vec::new())
    }

    /// A resource from an `Any` of one of the served types.
    pub fn from_any(any: &Any) -> Result<Arc<Resource>, ResourceError> {
        let kind = ResourceType::from_type_url(&any.type_url)
            .ok_or_else(|| ResourceError::UnsupportedType(any.type_url.clone()))?;
        let message = kind.decode(&any.value).map_err(|e| ResourceError::Decode {
            type_url: any.type_url.clone(),
            message: e.to_string(),
        })?;
        match message {
            ResourceMessage::Cluster(c) => Resource::cluster(&c),
            ResourceMessage::Endpoint(cla) => Resource::endpoint(&cla),
            ResourceMessage::Listener(l) => Resource::listener(&l),
            ResourceMessage::Route(r) => Resource::route(&r),
            ResourceMessage::Secret(s) => Resource::secret(&s),
            ResourceMessage::Runtime(r) => Resource::runtime(&r),
        }
    }

    fn build<M: Message + prost::Name>(
        kind: ResourceType,
        name: &str,
        msg: &M,
        references: Vec<String>,
    ) -> Result<Arc<Resource>, ResourceError> {
        if name.is_empty() {
            return Err(ResourceError::EmptyName(kind));
        }
        let any = courier_proto::pack_any(msg);
        let version = content_hash(&any.value);
        Ok(Arc::new(Resource {
            kind,
            name: name.to_string(),
            version,
            any,
            references,
        }))
    }

    /// The resource type.
    pub fn kind(&self) -> ResourceType {
        self.kind
    }

    /// The resource name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The content version: a hash of the encoded bytes, so an unchanged resource keeps its
    /// version across snapshots and restarts (delta clients compare it; see
    /// `initial_resource_versions`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The resource as sent on the wire.
    pub fn any(&self) -> &Any {
        &self.any
    }

    /// The names this resource needs of its dependent type: the EDS service name of an EDS
    /// cluster, the RDS route names of a listener's HTTP connection managers.
    pub fn references(&self) -> &[String] {
        &self.references
    }

    /// The resource rendered in the proto3 JSON mapping (for the admin API).
    pub fn to_json(&self) -> serde_json::Value {
        fn render<M: Message + prost::Name + Default>(any: &Any) -> serde_json::Value {
            match courier_proto::unpack_any::<M>(any) {
                Ok(m) => courier_proto::to_json(&m),
                Err(e) => serde_json::Value::String(format!("<{e}>")),
            }
        }
        match self.kind {
            ResourceType::Cluster => render::<Cluster>(&self.any),
            ResourceType::Endpoint => render::<ClusterLoadAssignment>(&self.any),
            ResourceType::Listener => render::<Listener>(&self.any),
            ResourceType::Route => render::<RouteConfiguration>(&self.any),
            ResourceType::Secret => render::<Secret>(&self.any),
            ResourceType::Runtime => render::<Runtime>(&self.any),
        }
    }
}

/// A short, stable hash of bytes, used for resource versions and derived type versions.
pub(crate) fn content_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The EDS name an EDS cluster subscribes to: `eds_cluster_config.service_name`, or the
/// cluster name when that is empty (as Envoy does).
fn cluster_references(c: &Cluster) -> Vec<String> {
    let is_eds = matches!(
        c.cluster_discovery_type,
        Some(cluster::ClusterDiscoveryType::Type(t)) if t == cluster::DiscoveryType::Eds as i32
    );
    if !is_eds {
        return Vec::new();
    }
    let service = c
        .eds_cluster_config
        .as_ref()
        .map(|e| e.service_name.as_str())
        .filter(|s| !s.is_empty())
        .unwrap_or(&c.name);
    vec![service.to_string()]
}

/// The RDS route configuration names of every HTTP connection manager of the listener.
/// A filter whose config does not decode is skipped: the client will reject it, and the
/// consistency check is about references, not validation.
fn listener_references(l: &Listener) -> Vec<String> {
    let chains: Vec<&FilterChain> = l
        .filter_chains
        .iter()
        .chain(l.default_filter_chain.as_ref())
        .collect();
    let mut names: Vec<String> = Vec::new();
    for chain in chains {
        for f in &chain.filters {
            let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                continue;
            };
            let Ok(hcm) = courier_proto::unpack_any::<HttpConnectionManager>(any) else {
                continue;
            };
            if let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier {
                if !names.contains(&rds.route_config_name) {
                    names.push(rds.route_config_name.clone());
                }
            }
        }
    }
    names
}
