//! Names of xDS resources carried in `Any`s.

use prost::Message;

use crate::envoy::config::cluster::v3::Cluster;
use crate::envoy::config::core::v3::TypedExtensionConfig;
use crate::envoy::config::endpoint::v3::ClusterLoadAssignment;
use crate::envoy::config::listener::v3::Listener;
use crate::envoy::config::route::v3::{RouteConfiguration, ScopedRouteConfiguration, VirtualHost};
use crate::envoy::extensions::transport_sockets::tls::v3::Secret;
use crate::envoy::service::discovery::v3::Resource;
use crate::envoy::service::runtime::v3::Runtime;
use crate::google::protobuf::Any;
use crate::type_url;

/// Why [`resource_name`] could not name a resource.
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
}

fn decode<M: Message + Default>(type_url: &str, bytes: &[u8]) -> Result<M, ResourceError> {
    M::decode(bytes).map_err(|e| ResourceError::Decode {
        type_url: type_url.to_string(),
        message: e.to_string(),
    })
}

/// The name of the xDS resource of type `type_url` held in `any`.
///
/// Understands [`type_url::LISTENER`], [`type_url::CLUSTER`],
/// [`type_url::ROUTE_CONFIGURATION`], [`type_url::SCOPED_ROUTE_CONFIGURATION`],
/// [`type_url::VIRTUAL_HOST`], [`type_url::CLUSTER_LOAD_ASSIGNMENT`] (whose name is its
/// `cluster_name`), [`type_url::SECRET`], [`type_url::RUNTIME`] and
/// [`type_url::TYPED_EXTENSION_CONFIG`]. An `envoy.service.discovery.v3.Resource` wrapper is
/// unwrapped: its `name` wins when set (as in Envoy), otherwise the wrapped resource is named.
/// An `Any` of another type than `type_url` is a [`ResourceError::WrongType`].
///
/// ```
/// use courier_proto::envoy::config::cluster::v3::Cluster;
/// use courier_proto::{pack_any, resource_name, type_url};
///
/// let any = pack_any(&Cluster { name: "echo".into(), ..Default::default() });
/// assert_eq!(resource_name(type_url::CLUSTER, &any).unwrap(), "echo");
/// ```
pub fn resource_name(type_url: &str, any: &Any) -> Result<String, ResourceError> {
    if any.type_url == type_url::RESOURCE && type_url != type_url::RESOURCE {
        let wrapper: Resource = decode(type_url::RESOURCE, &any.value)?;
        if !wrapper.name.is_empty() {
            return Ok(wrapper.name);
        }
        let inner = wrapper.resource.ok_or(ResourceError::EmptyWrapper)?;
        return resource_name(type_url, &inner);
    }
    if type_url::message_name(&any.type_url) != type_url::message_name(type_url) {
        return Err(ResourceError::WrongType {
            expected: type_url.to_string(),
            actual: any.type_url.clone(),
        });
    }
    let bytes = any.value.as_slice();
    Ok(match type_url {
        type_url::LISTENER => decode::<Listener>(type_url, bytes)?.name,
        type_url::CLUSTER => decode::<Cluster>(type_url, bytes)?.name,
        type_url::ROUTE_CONFIGURATION => decode::<RouteConfiguration>(type_url, bytes)?.name,
        type_url::SCOPED_ROUTE_CONFIGURATION => {
            decode::<ScopedRouteConfiguration>(type_url, bytes)?.name
        }
        type_url::VIRTUAL_HOST => decode::<VirtualHost>(type_url, bytes)?.name,
        type_url::CLUSTER_LOAD_ASSIGNMENT => {
            decode::<ClusterLoadAssignment>(type_url, bytes)?.cluster_name
        }
        type_url::SECRET => decode::<Secret>(type_url, bytes)?.name,
        type_url::RUNTIME => decode::<Runtime>(type_url, bytes)?.name,
        type_url::TYPED_EXTENSION_CONFIG => decode::<TypedExtensionConfig>(type_url, bytes)?.name,
        other => return Err(ResourceError::UnsupportedType(other.to_string())),
    })
}
