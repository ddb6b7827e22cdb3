//! YAML/JSON ⇄ Envoy protos with the proto3 JSON mapping.

use prost::{Message, Name};
use prost_reflect::{DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions};

use crate::descriptors::pool;
use crate::google::protobuf::Any;

/// Why a document could not be loaded as an Envoy message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// The message type is not in the descriptor pool (a Courier defect or a bad `@type`).
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// The text does not match the message; `path` names the offending field
    /// (`static_resources.clusters[2].load_assignment`), empty for the document root.
    #[error("{}{message}", if path.is_empty() { String::new() } else { format!("{path}: ") })]
    Invalid {
        /// Field path from the document root, as `a.b[2].c`.
        path: String,
        /// What is wrong there.
        message: String,
    },
    /// The text is not YAML/JSON at all.
    #[error("{0}")]
    Syntax(String),
    /// The dynamic message could not be transcoded to the envoy-types struct.
    #[error("transcoding {type_name}: {message}")]
    Transcode {
        /// Fully-qualified message name.
        type_name: String,
        /// Decoder error.
        message: String,
    },
}

impl LoadError {
    /// The field path of an [`LoadError::Invalid`] error, empty otherwise.
    pub fn path(&self) -> &str {
        match self {
            LoadError::Invalid { path, .. } => path,
            _ => "",
        }
    }
}

fn descriptor(name: &str) -> Result<MessageDescriptor, LoadError> {
    pool()
        .get_message_by_name(name)
        .ok_or_else(|| LoadError::UnknownType(name.to_string()))
}

fn options() -> DeserializeOptions {
    // Envoy rejects unknown fields in static config; so do we.
    DeserializeOptions::new().deny_unknown_fields(true)
}

fn deserialize<'de, D>(desc: MessageDescriptor, de: D) -> Result<DynamicMessage, LoadError>
where
    D: serde::Deserializer<'de>,
    D::Error: std::fmt::Display,
{
    let mut track = serde_path_to_error::Track::new();
    let tracked = serde_path_to_error::Deserializer::new(de, &mut track);
    DynamicMessage::deserialize_with_options(desc, tracked, &options()).map_err(|e| {
        let path = track.path().to_string();
        LoadError::Invalid {
            path: if path == "." { String::new() } else { path },
            message: e.to_string(),
        }
    })
}

fn transcode<M: Message + Name + Default>(dynamic: DynamicMessage) -> Result<M, LoadError> {
    dynamic
        .transcode_to::<M>()
        .map_err(|e| LoadError::Transcode {
            type_name: M::full_name(),
            message: e.to_string(),
        })
}

/// Loads `M` from a YAML document.
pub fn from_yaml<M: Message + Name + Default>(text: &str) -> Result<M, LoadError> {
    let desc = descriptor(&M::full_name())?;
    // An empty document is an empty message, as Envoy treats an empty config file.
    if text.trim().is_empty() {
        return Ok(M::default());
    }
    let de = serde_yaml_ng::Deserializer::from_str(text);
    transcode(deserialize(desc, de)?)
}

/// Loads `M` from a JSON document.
pub fn from_json<M: Message + Name + Default>(text: &str) -> Result<M, LoadError> {
    let desc = descriptor(&M::full_name())?;
    let mut de = serde_json::Deserializer::from_str(text);
    let msg = deserialize(desc, &mut de)?;
    de.end().map_err(|e| LoadError::Syntax(e.to_string()))?;
    transcode(msg)
}

/// Loads `M` from an already-parsed JSON value (e.g. one entry of a resources file).
pub fn from_value<M: Message + Name + Default>(value: &serde_json::Value) -> Result<M, LoadError> {
    let desc = descriptor(&M::full_name())?;
    transcode(deserialize(desc, value)?)
}

/// Renders `msg` in the proto3 JSON mapping with proto field names (as Envoy's admin does).
pub fn to_json<M: Message + Name>(msg: &M) -> serde_json::Value {
    let Ok(desc) = descriptor(&M::full_name()) else {
        return serde_json::Value::Null;
    };
    let bytes = msg.encode_to_vec();
    let Ok(dynamic) = DynamicMessage::decode(desc, bytes.as_slice()) else {
        return serde_json::Value::Null;
    };
    let opts = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(true);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &opts)
        .unwrap_or(serde_json::Value::Null)
}

/// Why an `Any` could not be unpacked as the expected message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnyError {
    /// The `@type` is not the expected one.
    #[error("expected {expected}, got type URL {actual:?}")]
    WrongType {
        /// The message name the caller expected.
        expected: String,
        /// The type URL found.
        actual: String,
    },
    /// The bytes do not decode as that message.
    #[error("cannot decode {type_name}: {message}")]
    Decode {
        /// Fully-qualified message name.
        type_name: String,
        /// Decoder error.
        message: String,
    },
}

/// Decodes an `Any` whose type must be `M`.
pub fn unpack_any<M: Message + Name + Default>(any: &Any) -> Result<M, AnyError> {
    let expected = M::full_name();
    if crate::type_url::message_name(&any.type_url) != expected {
        return Err(AnyError::WrongType {
            expected,
            actual: any.type_url.clone(),
        });
    }
    M::decode(any.value.as_slice()).map_err(|e| AnyError::Decode {
        type_name: expected,
        message: e.to_string(),
    })
}

/// Wraps `msg` in an `Any` with its canonical type URL.
pub fn pack_any<M: Message + Name>(msg: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: msg.encode_to_vec(),
    }
}
