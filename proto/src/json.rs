//! YAML/JSON ⇄ Envoy protos with the proto3 JSON mapping.

use prost::{Message, Name};
use prost_reflect::{DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions};

use crate::descriptors::pool;
use crate::google::protobuf::Any;

use crate::yaml_scalars::{self, strings::Strict};

use crate::error::{locate_yaml_key, path_string, reason, segments, Context};
pub use crate::error::{FileError, LoadError, Location};

/// prost-reflect's complaint about an `Any` without a type, as [`LoadError::reason`]
/// words it.
const MISSING_TYPE: &str = "missing \"@type\" in Any";

fn descriptor(name: &str) -> Result<MessageDescriptor, LoadError> {
    pool()
        .get_message_by_name(name)
        .ok_or_else(|| LoadError::UnknownType(name.to_string()))
}

fn options() -> DeserializeOptions {
    // Envoy rejects unknown fields in static config; so do we.
    DeserializeOptions::new().deny_unknown_fields(true)
}

/// A failed deserialization: the format's own error and the path where it happened.
struct Failure<E> {
    error: E,
    path: serde_path_to_error::Path,
}

fn deserialize<'de, D>(desc: &MessageDescriptor, de: D) -> Result<DynamicMessage, Failure<D::Error>>
where
    D: serde::Deserializer<'de>,
{
    let mut track = serde_path_to_error::Track::new();
    let tracked = serde_path_to_error::Deserializer::new(de, &mut track);
    DynamicMessage::deserialize_with_options(desc.clone(), tracked, &options()).map_err(|error| {
        Failure {
            error,
            path: track.path(),
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

/// Removes `" at line L column C"` (serde_yaml_ng / serde_json / libyaml wording) for the
/// given location, wherever it occurs.
fn strip_location(message: &str, location: Option<Location>) -> String {
    match location {
        Some(l) => message.replace(&format!(" at line {} column {}", l.line, l.column), ""),
        None => message.to_string(),
    }
}

/// The data error at `path`, as a [`LoadError::Invalid`].
fn invalid(
    desc: &MessageDescriptor,
    doc: Option<&serde_json::Value>,
    path: &serde_path_to_error::Path,
    raw: &str,
    location: Option<Location>,
) -> LoadError {
    let segs = segments(path);
    let ctx = Context {
        root: desc,
        doc,
        segs: &segs,
    };
    LoadError::Invalid {
        path: path_string(path),
        message: reason(raw, &ctx),
        location,
    }
}

fn yaml_is_null(text: &str) -> bool {
    matches!(
        serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text),
        Ok(serde_yaml_ng::Value::Null)
    )
}

/// The error for `failure`, met reading `resolved` (`text` as [`yaml_scalars::rewrite`]
/// respelled it, if it did): located in `text`.
fn yaml_error(
    desc: &MessageDescriptor,
    text: &str,
    resolved: &str,
    rewrite: Option<&yaml_scalars::Rewrite>,
    failure: Failure<serde_yaml_ng::Error>,
) -> LoadError {
    let at = failure.error.location().map(|l| Location {
        line: l.line(),
        column: l.column(),
    });
    // The error's own wording names the location in the text read.
    let location = match (at, rewrite) {
        (Some(at), Some(r)) => Some(r.original(at)),
        _ => at,
    };
    // Is the text well-formed YAML at all? Parsing it without a schema tells syntax errors
    // (and multi-document input) apart from errors about the content.
    if let Err(e) = serde_yaml_ng::from_str::<serde::de::IgnoredAny>(text) {
        if e.to_string().contains("more than one document") {
            // The document iterator keeps yielding after a syntax error: bound it.
            let documents = serde_yaml_ng::Deserializer::from_str(text)
                .take(1000)
                .count();
            return LoadError::Syntax {
                message: format!(
                    "expected a single YAML document, found {documents} (separated by \"---\")"
                ),
                location: None,
            };
        }
        let location = e.location().map(|l| Location {
            line: l.line(),
            column: l.column(),
        });
        let message = strip_location(&e.to_string(), location)
            .replace(", while", " while")
            .replace(" at line ", " started at line ")
            .replace(" column ", ", column ");
        return LoadError::Syntax {
            message: format!("invalid YAML: {message}"),
            location,
        };
    }
    let path = path_string(&failure.path);
    let mut raw = strip_location(&failure.error.to_string(), at);
    if !path.is_empty() {
        if let Some(rest) = raw.strip_prefix(&format!("{path}: ")) {
            raw = rest.to_string();
        }
    }
    let doc = serde_yaml_ng::from_str::<serde_json::Value>(resolved).ok();
    let mut err = invalid(desc, doc.as_ref(), &failure.path, &raw, location);
    if let LoadError::Invalid { message, .. } = &mut err {
        // Envoy reads a plain `yes`, `off` or `010` as a boolean or a number too; say how to
        // write the string.
        let not_a_string = ["got boolean ", "got number "]
            .iter()
            .any(|got| message.starts_with(&format!("wrong type: expected a string, {got}")));
        if not_a_string {
            message.push_str(" (quote it to make it a string)");
        }
    }
    // serde_yaml_ng reports errors about a mapping's keys at the start of the mapping; point
    // at the key itself.
    if let LoadError::Invalid {
        message,
        location: Some(at),
        ..
    } = &mut err
    {
        let key = if let Some(k) = message.strip_prefix("unknown field ") {
            serde_json::from_str::<String>(k).ok()
        } else if message.starts_with("fields ") {
            last_set_key(message)
        } else {
            None
        };
        if let Some(found) = key.and_then(|k| locate_yaml_key(text, *at, &k)) {
            *at = found;
        }
    }
    err
}

/// For a oneof conflict (`fields "a" and "b" are mutually exclusive`), the key of the mapping
/// that appears last in the message (the one that made the conflict).
fn last_set_key(message: &str) -> Option<String> {
    let list = message.strip_prefix("fields ")?.split(" are ").next()?;
    let last = list.rsplit(" and ").next()?;
    serde_json::from_str::<String>(last).ok()
}

/// Loads `M` from a YAML document.
///
/// The input is one YAML document in the proto3 JSON mapping (proto or JSON field names,
/// `"@type"` in `Any`, durations as `"1.5s"`, enums by name or number, 64-bit integers as
/// numbers or strings). An empty document (only whitespace or comments, `---`, or `null`)
/// is the default message. Unknown fields are errors, as in Envoy; every error names the
/// path of the offending field and its line and column (see [`LoadError`]). Plain scalars
/// are read as Envoy's yaml-cpp reads them, not by YAML 1.2: `off` is `false` (which a string
/// field refuses), `010` is 8, `1.5` is the string `"1.5"` (which a number field parses).
pub fn from_yaml<M: Message + Name + Default>(text: &str) -> Result<M, LoadError> {
    let desc = descriptor(&M::full_name())?;
    if text.trim().is_empty() {
        return Ok(M::default());
    }
    // Plain scalars resolved as Envoy resolves them (see [`yaml_scalars`]).
    let rewrite = yaml_scalars::rewrite(text);
    let resolved = rewrite.as_ref().map_or(text, |r| r.text.as_str());
    let de = serde_yaml_ng::Deserializer::from_str(resolved);
    match deserialize(&desc, Strict(de)) {
        Ok(dynamic) => transcode(dynamic),
        Err(_) if yaml_is_null(text) => Ok(M::default()),
        Err(failure) => {
            let err = yaml_error(&desc, text, resolved, rewrite.as_ref(), failure);
            if err.reason() == "unknown field \"<<\"" {
                // Merge keys: the streaming deserializer does not expand them, the YAML
                // value model does (errors then have a path but no location).
                return from_merged_yaml(&desc, resolved).unwrap_or(Err(err));
            }
            if err.reason() == MISSING_TYPE {
                // Perhaps an empty `Any` ([`crate::empty_any`]), read through the value
                // model; a real error keeps its location.
                if let Some(Ok(m)) = from_merged_yaml(&desc, resolved) {
                    return Ok(m);
                }
            }
            Err(err)
        }
    }
}

/// Loads a YAML document (its scalars already respelled by [`yaml_scalars::rewrite`]) with
/// merge keys (`<<: *anchor`) expanded; `None` if that fails before reaching the message.
/// String fields take only strings here too: the JSON value deserializer refuses the rest.
fn from_merged_yaml<M: Message + Name + Default>(
    desc: &MessageDescriptor,
    text: &str,
) -> Option<Result<M, LoadError>> {
    let mut value = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text).ok()?;
    value.apply_merge().ok()?;
    let mut doc = serde_json::to_value(&value).ok()?;
    crate::empty_any::strip(desc, &mut doc);
    let shown = doc.clone();
    Some(match deserialize(desc, &doc) {
        Ok(dynamic) => transcode(dynamic),
        Err(failure) => {
            let raw = failure.error.to_string();
            Err(invalid(desc, Some(&shown), &failure.path, &raw, None))
        }
    })
}

fn json_location(e: &serde_json::Error) -> Option<Location> {
    // serde_json counts columns from 0 before the first character of a line.
    (e.line() != 0).then(|| Location {
        line: e.line(),
        column: e.column().max(1),
    })
}

fn json_syntax(e: &serde_json::Error) -> LoadError {
    let location = json_location(e);
    LoadError::Syntax {
        message: format!("invalid JSON: {}", strip_location(&e.to_string(), location)),
        location,
    }
}

/// Loads `M` from a JSON document, with the same mapping and errors as [`from_yaml`]. An
/// empty text or `null` is the default message.
pub fn from_json<M: Message + Name + Default>(text: &str) -> Result<M, LoadError> {
    let desc = descriptor(&M::full_name())?;
    if text.trim().is_empty() || text.trim() == "null" {
        return Ok(M::default());
    }
    let mut de = serde_json::Deserializer::from_str(text);
    match deserialize(&desc, &mut de) {
        Ok(dynamic) => {
            de.end().map_err(|e| json_syntax(&e))?;
            transcode(dynamic)
        }
        Err(failure) => {
            if !matches!(failure.error.classify(), serde_json::error::Category::Data) {
                return Err(json_syntax(&failure.error));
            }
            let location = json_location(&failure.error);
            let raw = strip_location(&failure.error.to_string(), location);
            let doc = serde_json::from_str::<serde_json::Value>(text).ok();
            let err = invalid(&desc, doc.as_ref(), &failure.path, &raw, location);
            match doc {
                // Perhaps an empty `Any` ([`crate::empty_any`]), read through the value
                // model; a real error keeps its location.
                Some(doc) if err.reason() == MISSING_TYPE => from_value(&doc).map_err(|_| err),
                _ => Err(err),
            }
        }
    }
}

/// Loads `M` from an already-parsed JSON value (e.g. one entry of a resources file). Errors
/// carry the path but no location.
pub fn from_value<M: Message + Name + Default>(value: &serde_json::Value) -> Result<M, LoadError> {
    let desc = descriptor(&M::full_name())?;
    if value.is_null() {
        return Ok(M::default());
    }
    let mut stripped = None;
    if value.to_string().contains("{}") {
        let mut v = value.clone();
        if crate::empty_any::strip(&desc, &mut v) {
            stripped = Some(v);
        }
    }
    let value = stripped.as_ref().unwrap_or(value);
    match deserialize(&desc, value) {
        Ok(dynamic) => transcode(dynamic),
        Err(failure) => {
            let raw = strip_location(&failure.error.to_string(), json_location(&failure.error));
            Err(invalid(&desc, Some(value), &failure.path, &raw, None))
        }
    }
}

/// Loads `M` from a file: JSON if its name ends in `.json`, YAML otherwise (as Envoy decides
/// for `-c`). Errors name the file, then the field path and location:
/// `bootstrap.yaml: static_resources.clusters[0]: unknown field "foo" (line 4, column 5)`.
pub fn load_file<M: Message + Name + Default>(
    path: impl AsRef<std::path::Path>,
) -> Result<M, FileError> {
    let file = path.as_ref();
    let text = std::fs::read_to_string(file).map_err(|error| FileError::Read {
        file: file.to_path_buf(),
        error,
    })?;
    let is_json = file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let loaded = if is_json {
        from_json(&text)
    } else {
        from_yaml(&text)
    };
    loaded.map_err(|error| FileError::Load {
        file: file.to_path_buf(),
        error,
    })
}

/// Renders `msg` in the proto3 JSON mapping with proto field names (as Envoy's admin does).
pub fn to_json<M: Message + Name>(msg: &M) -> serde_json::Value {
    render(msg, true)
}

/// [`to_json`] with fields at their defaults written out too (Envoy's admin prints
/// `/certs` so).
pub fn to_json_with_defaults<M: Message + Name>(msg: &M) -> serde_json::Value {
    render(msg, false)
}

fn render<M: Message + Name>(msg: &M, skip_defaults: bool) -> serde_json::Value {
    let Ok(desc) = descriptor(&M::full_name()) else {
        return serde_json::Value::Null;
    };
    let bytes = msg.encode_to_vec();
    let Ok(dynamic) = DynamicMessage::decode(desc, bytes.as_slice()) else {
        return serde_json::Value::Null;
    };
    let opts = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(skip_defaults);
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

/// An extension config given as a `TypedStruct` (`xds.type.v3` or `udpa.type.v1`), as the
/// `Any` of the message it stands for, as Envoy reads it wherever a `typed_config` goes;
/// `None` when `any` is no `TypedStruct`.
pub fn unwrap_typed_struct(any: &Any) -> Option<Result<Any, AnyError>> {
    let wrapper = crate::type_url::message_name(&any.type_url);
    if wrapper != "xds.type.v3.TypedStruct" && wrapper != "udpa.type.v1.TypedStruct" {
        return None;
    }
    Some(typed_struct_inner(any, wrapper))
}

fn typed_struct_inner(any: &Any, wrapper: &str) -> Result<Any, AnyError> {
    let decode_error = |type_name: &str, message: String| AnyError::Decode {
        type_name: type_name.to_string(),
        message,
    };
    let typed = crate::typed_struct::TypedStruct::decode(any.value.as_slice())
        .map_err(|e| decode_error(wrapper, e.to_string()))?;
    let inner = crate::type_url::message_name(&typed.type_url).to_string();
    let desc = descriptor(&inner).map_err(|e| decode_error(&inner, e.to_string()))?;
    // The `Struct` is the message in the proto3 JSON mapping.
    let value = match &typed.value {
        Some(v) => {
            let dynamic = DynamicMessage::decode(
                descriptor("google.protobuf.Struct")
                    .map_err(|e| decode_error(&inner, e.to_string()))?,
                v.encode_to_vec().as_slice(),
            )
            .map_err(|e| decode_error(&inner, e.to_string()))?;
            serde_json::to_value(&dynamic).map_err(|e| decode_error(&inner, e.to_string()))?
        }
        None => serde_json::Value::Object(Default::default()),
    };
    let message = deserialize(&desc, value)
        .map_err(|f| decode_error(&inner, format!("{} (at {})", f.error, f.path)))?;
    Ok(Any {
        type_url: typed.type_url,
        value: message.encode_to_vec(),
    })
}

/// Wraps `msg` in an `Any` with its canonical type URL.
pub fn pack_any<M: Message + Name>(msg: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: msg.encode_to_vec(),
    }
}
