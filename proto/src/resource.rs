//! xDS resources carried in `Any`s: unwrapping `envoy.service.discovery.v3.Resource`
//! wrappers, decoding and naming.

use std::borrow::Cow;

use prost::Message;

use crate::envoy::config::core::v3::TypedExtensionConfig;
use crate::envoy::config::route::v3::{ScopedRouteConfiguration, VirtualHost};
use crate::envoy::service::discovery::v3::Resource;
use crate::envoy::service::runtime::v3::Runtime;
use crate::google::protobuf::Any;
use crate::resource_type::{ResourceMessage, ResourceType};
use crate::type_url;

/// Why [`unwrap_resource`] or [`resource_name`] could not take out or name a resource.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResourceError {
    /// The requested type URL is not an xDS resource type this function knows.
    #[error("unsupported resource type {0:?}")]
    UnsupportedType(String),
    /// The `Any` holds another type than the one requested.
    #[error("expected a resource of type {expected:?}, got {actual:?}")]
    WrongType {
        /// The requested type URL.
        expected: String,
        /// The `Any`'s type URL.
        actual: String,
    },
    /// The bytes do not decode as the resource type.
    #[error("cannot decode {type_url}: {message}")]
    Decode {
        /// The type URL decoded as.
        type_url: String,
        /// Decoder error.
        message: String,
    },
    /// An `envoy.service.discovery.v3.Resource` wrapper with neither a name nor a resource.
    #[error("Resource wrapper has neither a name nor a resource")]
    EmptyWrapper,
    /// An `envoy.service.discovery.v3.Resource` wrapper without a resource, where one is
    /// needed ([`unwrap_resource`]).
    #[error("Resource wrapper without a resource")]
    MissingResource,
}

fn decode<M: Message + Default>(type_url: &str, bytes: &[u8]) -> Result<M, ResourceError> {
    M::decode(bytes).map_err(|e| ResourceError::Decode {
        type_url: type_url.to_string(),
        message: e.to_string(),
    })
}

/// One resource of a discovery response, taken out of its `Resource` wrapper (if it had
/// one) and decoded: what [`unwrap_resource`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct UnwrappedResource<'a> {
    /// The resource's own `Any`: the wrapper's `resource`, or the given `Any` itself.
    pub any: Cow<'a, Any>,
    /// The resource's name, decoded from its message ([`ResourceMessage::name`]).
    pub name: String,
    /// The wrapper's `name`; empty without a wrapper.
    pub wrapper_name: String,
    /// The wrapper's `version`; empty without a wrapper.
    pub version: String,
    /// The wrapper's `ttl`: the resource goes away unless refreshed within it.
    pub ttl: Option<crate::google::protobuf::Duration>,
    /// The decoded message.
    pub message: ResourceMessage,
}

/// A `Resource` wrapper without a resource: a heartbeat refreshing a resource's TTL
/// (xDS TTLs), when the client holds that resource at that version.
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    /// The wrapper's `name`.
    pub name: String,
    /// The wrapper's `version`.
    pub version: String,
    /// The wrapper's `ttl`.
    pub ttl: Option<crate::google::protobuf::Duration>,
}

/// The heartbeat in `any`, if it is a `Resource` wrapper holding no resource.
pub fn heartbeat(any: &Any) -> Option<Heartbeat> {
    if any.type_url != type_url::RESOURCE {
        return None;
    }
    let wrapper: Resource = decode(type_url::RESOURCE, &any.value).ok()?;
    wrapper.resource.is_none().then_some(Heartbeat {
        name: wrapper.name,
        version: wrapper.version,
        ttl: wrapper.ttl,
    })
}

/// An `Any` opened if it is an `envoy.service.discovery.v3.Resource` wrapper (one level).
struct Opened<'a> {
    /// The wrapped `Any` (`None` for a wrapper without one), or the `Any` itself.
    resource: Option<Cow<'a, Any>>,
    /// The wrapper's name, version and TTL; empty without a wrapper.
    name: String,
    version: String,
    ttl: Option<crate::google::protobuf::Duration>,
}

impl<'a> Opened<'a> {
    fn bare(any: &'a Any) -> Opened<'a> {
        Opened {
            resource: Some(Cow::Borrowed(any)),
            name: String::new(),
            version: String::new(),
            ttl: None,
        }
    }

    fn open(any: &'a Any) -> Result<Opened<'a>, ResourceError> {
        if any.type_url != type_url::RESOURCE {
            return Ok(Opened::bare(any));
        }
        let wrapper: Resource = decode(type_url::RESOURCE, &any.value)?;
        Ok(Opened {
            resource: wrapper.resource.map(Cow::Owned),
            name: wrapper.name,
            version: wrapper.version,
            ttl: wrapper.ttl,
        })
    }
}

/// Takes one resource of `kind` out of an `Any` of a discovery response and names it.
///
/// An `envoy.service.discovery.v3.Resource` wrapper (exactly [`type_url::RESOURCE`]) is
/// unwrapped, one level: its `name` and `version` are returned alongside, and it must hold a
/// resource ([`ResourceError::MissingResource`]). The resource's type URL must then be
/// exactly `kind`'s, as Envoy's mux requires of every resource of a response
/// ([`ResourceError::WrongType`]); its bytes are decoded ([`ResourceError::Decode`]; the
/// wrapper's own bytes are reported with [`type_url::RESOURCE`]) and the name is read from
/// the message.
///
/// ```
/// use courier_proto::envoy::config::endpoint::v3::ClusterLoadAssignment;
/// use courier_proto::envoy::service::discovery::v3::Resource;
/// use courier_proto::{pack_any, unwrap_resource, ResourceType};
///
/// let cla = pack_any(&ClusterLoadAssignment { cluster_name: "backend".into(), ..Default::default() });
/// let wrapped = pack_any(&Resource {
///     name: "alias".into(),
///     version: "v1".into(),
///     resource: Some(cla.clone()),
///     ..Default::default()
/// });
/// let r = unwrap_resource(ResourceType::Endpoint, &wrapped).unwrap();
/// assert_eq!((r.name.as_str(), r.wrapper_name.as_str(), r.version.as_str()), ("backend", "alias", "v1"));
/// assert_eq!(*r.any, cla);
/// ```
pub fn unwrap_resource(
    kind: ResourceType,
    any: &Any,
) -> Result<UnwrappedResource<'_>, ResourceError> {
    let opened = Opened::open(any)?;
    let any = opened.resource.ok_or(ResourceError::MissingResource)?;
    let expected = kind.type_url();
    if any.type_url != expected {
        return Err(ResourceError::WrongType {
            expected: expected.to_string(),
            actual: any.type_url.clone(),
        });
    }
    let message = kind.decode(&any.value).map_err(|e| ResourceError::Decode {
        type_url: expected.to_string(),
        message: e.to_string(),
    })?;
    Ok(UnwrappedResource {
        name: message.name().to_string(),
        any,
        wrapper_name: opened.name,
        version: opened.version,
        ttl: opened.ttl,
        message,
    })
}

/// The name of the xDS resource of type `type_url` held in `any`.
///
/// Understands the [`ResourceType`]s ([`type_url::LISTENER`], [`type_url::CLUSTER`],
/// [`type_url::ROUTE_CONFIGURATION`], [`type_url::CLUSTER_LOAD_ASSIGNMENT`] (whose name is
/// its `cluster_name`), [`type_url::SECRET`]) and [`type_url::SCOPED_ROUTE_CONFIGURATION`],
/// [`type_url::VIRTUAL_HOST`], [`type_url::RUNTIME`] and
/// [`type_url::TYPED_EXTENSION_CONFIG`]. An `envoy.service.discovery.v3.Resource` wrapper is
/// unwrapped (one level, as [`unwrap_resource`] does): its `name` wins when set (as in
/// Envoy), otherwise the wrapped resource is named. An `Any` of another type than
/// `type_url` (compared by message name) is a [`ResourceError::WrongType`].
///
/// ```
/// use courier_proto::envoy::config::cluster::v3::Cluster;
/// use courier_proto::{pack_any, resource_name, type_url};
///
/// let any = pack_any(&Cluster { name: "echo".into(), ..Default::default() });
/// assert_eq!(resource_name(type_url::CLUSTER, &any).unwrap(), "echo");
/// ```
pub fn resource_name(type_url: &str, any: &Any) -> Result<String, ResourceError> {
    let opened = if type_url == type_url::RESOURCE {
        Opened::bare(any)
    } else {
        Opened::open(any)?
    };
    if !opened.name.is_empty() {
        return Ok(opened.name);
    }
    let any = opened.resource.ok_or(ResourceError::EmptyWrapper)?;
    if type_url::message_name(&any.type_url) != type_url::message_name(type_url) {
        return Err(ResourceError::WrongType {
            expected: type_url.to_string(),
            actual: any.type_url.clone(),
        });
    }
    let bytes = any.value.as_slice();
    if let Some(kind) = ResourceType::from_type_url(type_url) {
        return kind
            .decode(bytes)
            .map(|m| m.name().to_string())
            .map_err(|e| ResourceError::Decode {
                type_url: type_url.to_string(),
                message: e.to_string(),
            });
    }
    Ok(match type_url {
        type_url::SCOPED_ROUTE_CONFIGURATION => {
            decode::<ScopedRouteConfiguration>(type_url, bytes)?.name
        }
        type_url::VIRTUAL_HOST => decode::<VirtualHost>(type_url, bytes)?.name,
        type_url::RUNTIME => decode::<Runtime>(type_url, bytes)?.name,
        type_url::TYPED_EXTENSION_CONFIG => decode::<TypedExtensionConfig>(type_url, bytes)?.name,
        other => return Err(ResourceError::UnsupportedType(other.to_string())),
    })
}
