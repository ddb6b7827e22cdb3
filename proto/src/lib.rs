//! Courier's protocol layer: the Envoy v3 protos from `envoy-types`, their type URLs, and
//! loading of any Envoy message from YAML or JSON with the proto3 JSON mapping.
//!
//! Loading goes through a [`prost_reflect::DescriptorPool`] built from the descriptor set
//! envoy-types was generated from: the text is deserialized into a `DynamicMessage` (which
//! knows `@type` for `Any`, durations as `"1.5s"`, wrappers and enums by name), then
//! transcoded into the envoy-types struct. Every error names the path of the offending field.

pub mod descriptors;
pub mod json;
pub mod type_url;

pub use envoy_types::pb::*;
pub use json::{from_json, from_value, from_yaml, pack_any, to_json, unpack_any, AnyError, LoadError};
