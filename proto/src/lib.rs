//! Courier's protocol layer: the Envoy v3 protos from `envoy-types`, their type URLs, and
//! loading of any Envoy message from YAML or JSON with the proto3 JSON mapping.
//!
//! Loading goes through a [`prost_reflect::DescriptorPool`] built from the descriptor set
//! envoy-types was generated from: the text is deserialized into a `DynamicMessage` (which
//! knows `@type` for `Any`, durations as `"1.5s"`, wrappers and enums by name), then
//! transcoded into the envoy-types struct. Every error names the path of the offending field
//! and, for text input, its line and column:
//!
//! ```
//! use courier_proto::envoy::config::cluster::v3::Cluster;
//!
//! let c: Cluster = courier_proto::from_yaml("name: echo\nconnect_timeout: 0.25s\n").unwrap();
//! assert_eq!(c.name, "echo");
//!
//! let err = courier_proto::from_yaml::<Cluster>("name: echo\nlb_policy: ROUND\n").unwrap_err();
//! assert_eq!(err.path(), "lb_policy");
//! assert!(err.to_string().starts_with(
//!     "lb_policy: unknown enum value \"ROUND\" for envoy.config.cluster.v3.Cluster.LbPolicy"
//! ));
//! ```
//!
//! The main entry points: [`from_yaml`], [`from_json`], [`from_value`], [`load_file`] to load;
//! [`to_json`] to render; [`pack_any`] / [`unpack_any`] for `Any`; [`ResourceType`] for the
//! xDS resource types and their type URLs ([`type_url`] has the constants);
//! [`unwrap_resource`] to take a resource of a discovery response out of its `Resource`
//! wrapper, decode and name it; [`resource_name`] to name one.

mod error;

pub mod descriptors;
mod empty_any;
pub mod ip_matcher;
pub mod json;
pub mod resource;
pub mod resource_type;
pub mod type_url;
pub mod typed_struct;
mod yaml_scalars;

pub use envoy_types::pb::*;
pub use json::{
    from_json, from_value, from_yaml, load_file, pack_any, to_json, to_json_with_defaults,
    unpack_any, unwrap_typed_struct, AnyError, FileError, LoadError, Location,
};
pub use resource::{
    heartbeat, resource_name, unwrap_resource, Heartbeat, ResourceError, UnwrappedResource,
};
pub use resource_type::{ResourceMessage, ResourceType};
