//! The xDS resource types Courier serves (courier-cp) and subscribes to (the proxy): one
//! kind per type URL, and the decoded message of each kind.

use std::fmt;

use prost::Message;

use crate::envoy::config::cluster::v3::Cluster;
use crate::envoy::config::endpoint::v3::ClusterLoadAssignment;
use crate::envoy::config::listener::v3::Listener;
use crate::envoy::config::route::v3::RouteConfiguration;
use crate::envoy::extensions::transport_sockets::tls::v3::Secret;
use crate::envoy::service::runtime::v3::Runtime;
use crate::type_url;

/// An xDS resource type, in the order a server pushes them on ADS so a client can make
/// before break: clusters, their endpoints, listeners, their routes, secrets, runtime layers.
///
/// ```
/// use courier_proto::{type_url, ResourceType};
///
/// let kind = ResourceType::from_type_url(type_url::CLUSTER_LOAD_ASSIGNMENT).unwrap();
/// assert_eq!(kind, ResourceType::Endpoint);
/// assert_eq!(kind.type_url(), type_url::CLUSTER_LOAD_ASSIGNMENT);
/// assert_eq!(kind.to_string(), "endpoints");
/// assert_eq!(ResourceType::from_type_url("type.googleapis.com/foo.Bar"), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    /// CDS: `envoy.config.cluster.v3.Cluster`.
    Cluster,
    /// EDS: `envoy.config.endpoint.v3.ClusterLoadAssignment`.
    Endpoint,
    /// LDS: `envoy.config.listener.v3.Listener`.
    Listener,
    /// RDS: `envoy.config.route.v3.RouteConfiguration`.
    Route,
    /// SDS: `envoy.extensions.transport_sockets.tls.v3.Secret`.
    Secret,
    /// RTDS: `envoy.service.runtime.v3.Runtime` (a runtime layer's values).
    Runtime,
}

impl ResourceType {
    /// Every type, in ADS push order.
    pub const ALL: [ResourceType; 6] = [
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::Listener,
        ResourceType::Route,
        ResourceType::Secret,
        ResourceType::Runtime,
    ];

    /// Index into per-type arrays (equals the ADS push order).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The v3 type URL.
    pub fn type_url(self) -> &'static str {
        match self {
            ResourceType::Cluster => type_url::CLUSTER,
            ResourceType::Endpoint => type_url::CLUSTER_LOAD_ASSIGNMENT,
            ResourceType::Listener => type_url::LISTENER,
            ResourceType::Route => type_url::ROUTE_CONFIGURATION,
            ResourceType::Secret => type_url::SECRET,
            ResourceType::Runtime => type_url::RUNTIME,
        }
    }

    /// The type of a v3 type URL (compared exactly), or `None` for any other type.
    pub fn from_type_url(url: &str) -> Option<ResourceType> {
        ResourceType::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// The short name, used in logs ([`Display`](fmt::Display)), courier-cp's admin API
    /// paths, its resources file and metrics labels (`clusters`, `endpoints`, `listeners`,
    /// `routes`, `secrets`, `runtimes`).
    pub fn plural(self) -> &'static str {
        match self {
            ResourceType::Cluster => "clusters",
            ResourceType::Endpoint => "endpoints",
            ResourceType::Listener => "listeners",
            ResourceType::Route => "routes",
            ResourceType::Secret => "secrets",
            ResourceType::Runtime => "runtimes",
        }
    }

    /// The name of the type in Envoy's REST-JSON path (`POST /v3/discovery:<name>`, from
    /// the services' `google.api.http` options): the [`plural`](Self::plural) name, but
    /// `runtime` for RTDS.
    pub fn rest_name(self) -> &'static str {
        match self {
            ResourceType::Runtime => "runtime",
            other => other.plural(),
        }
    }

    /// The type for its [`rest_name`](Self::rest_name).
    pub fn from_rest_name(name: &str) -> Option<ResourceType> {
        ResourceType::ALL
            .into_iter()
            .find(|t| t.rest_name() == name)
    }

    /// The type for its [`plural`](Self::plural) name.
    pub fn from_plural(name: &str) -> Option<ResourceType> {
        ResourceType::ALL.into_iter().find(|t| t.plural() == name)
    }

    /// True for the types a client subscribes to by wildcard by default (CDS, LDS): SotW
    /// responses carry the full set and absence means removal.
    pub fn is_wildcard_type(self) -> bool {
        matches!(self, ResourceType::Cluster | ResourceType::Listener)
    }

    /// Decodes `bytes` (an `Any`'s value) as this type's message.
    pub fn decode(self, bytes: &[u8]) -> Result<ResourceMessage, prost::DecodeError> {
        Ok(match self {
            ResourceType::Cluster => ResourceMessage::Cluster(Box::new(Cluster::decode(bytes)?)),
            ResourceType::Endpoint => {
                ResourceMessage::Endpoint(Box::new(ClusterLoadAssignment::decode(bytes)?))
            }
            ResourceType::Listener => ResourceMessage::Listener(Box::new(Listener::decode(bytes)?)),
            ResourceType::Route => {
                ResourceMessage::Route(Box::new(RouteConfiguration::decode(bytes)?))
            }
            ResourceType::Secret => ResourceMessage::Secret(Box::new(Secret::decode(bytes)?)),
            ResourceType::Runtime => ResourceMessage::Runtime(Box::new(Runtime::decode(bytes)?)),
        })
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.plural())
    }
}

/// The decoded message of one xDS resource, by [`ResourceType`] (see
/// [`ResourceType::decode`]).
#[derive(Debug, Clone, PartialEq)]
pub enum ResourceMessage {
    /// CDS.
    Cluster(Box<Cluster>),
    /// EDS.
    Endpoint(Box<ClusterLoadAssignment>),
    /// LDS.
    Listener(Box<Listener>),
    /// RDS.
    Route(Box<RouteConfiguration>),
    /// SDS.
    Secret(Box<Secret>),
    /// RTDS.
    Runtime(Box<Runtime>),
}

impl ResourceMessage {
    /// The message's type.
    pub fn resource_type(&self) -> ResourceType {
        match self {
            ResourceMessage::Cluster(_) => ResourceType::Cluster,
            ResourceMessage::Endpoint(_) => ResourceType::Endpoint,
            ResourceMessage::Listener(_) => ResourceType::Listener,
            ResourceMessage::Route(_) => ResourceType::Route,
            ResourceMessage::Secret(_) => ResourceType::Secret,
            ResourceMessage::Runtime(_) => ResourceType::Runtime,
        }
    }

    /// The resource's name: its `name` field, or a ClusterLoadAssignment's `cluster_name`.
    pub fn name(&self) -> &str {
        match self {
            ResourceMessage::Cluster(c) => &c.name,
            ResourceMessage::Endpoint(cla) => &cla.cluster_name,
            ResourceMessage::Listener(l) => &l.name,
            ResourceMessage::Route(r) => &r.name,
            ResourceMessage::Secret(s) => &s.name,
            ResourceMessage::Runtime(r) => &r.name,
        }
    }
}
