//! `TypedStruct`: an extension config given as a `Struct` plus the type URL of the real
//! config message. Envoy accepts it wherever a `typed_config` goes; envoy-types does not
//! generate it, so it is defined here (and added to the descriptor pool).

use crate::google::protobuf::Struct;

/// `xds.type.v3.TypedStruct` (and, with the same layout, the older `udpa.type.v1.TypedStruct`,
/// see [`UDPA_TYPE_URL`]).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TypedStruct {
    /// Type URL of the message `value` stands for.
    #[prost(string, tag = "1")]
    pub type_url: String,
    /// The config, in the proto3 JSON mapping of that message.
    #[prost(message, optional, tag = "2")]
    pub value: Option<Struct>,
}

impl prost::Name for TypedStruct {
    const NAME: &'static str = "TypedStruct";
    const PACKAGE: &'static str = "xds.type.v3";

    fn full_name() -> String {
        "xds.type.v3.TypedStruct".into()
    }

    fn type_url() -> String {
        TYPE_URL.into()
    }
}

/// Type URL of `xds.type.v3.TypedStruct`.
pub const TYPE_URL: &str = "type.googleapis.com/xds.type.v3.TypedStruct";
/// Type URL of `udpa.type.v1.TypedStruct` (same layout as [`TypedStruct`]).
pub const UDPA_TYPE_URL: &str = "type.googleapis.com/udpa.type.v1.TypedStruct";
