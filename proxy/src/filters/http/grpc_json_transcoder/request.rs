//! A transcoded request's gRPC message: the JSON body (all of it, or one field's), then
//! the path variables and query parameters bound to fields (grpc-httpjson-transcoding's
//! `JsonRequestTranslator` and `RequestWeaver`).

use prost::Message as _;
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage as _, Value,
};

/// Why a request could not be transcoded (Envoy's local reply: its status, the text).
#[derive(Debug, thiserror::Error)]
pub(super) enum RequestError {
    /// A bound field the request type does not have (gRPC `INVALID_ARGUMENT`).
    #[error("Could not find field \"{field}\" in the type \"{message}\".")]
    UnknownField { field: String, message: String },
    /// A value or body that does not fit its field.
    #[error("{0}")]
    Invalid(String),
}

/// Where the request's JSON body goes.
#[derive(Debug, Clone)]
pub(super) enum BodyRule {
    /// No body (`body` unset): the request's body is not read.
    None,
    /// `body: "*"`: the whole request message.
    All,
    /// `body: "field.path"`: that field.
    Field(Vec<FieldDescriptor>),
}

/// The fields of `desc` a dotted path names (by proto name, else JSON name).
pub(super) fn resolve(
    desc: &MessageDescriptor,
    path: &[String],
) -> Result<Vec<FieldDescriptor>, RequestError> {
    let mut out = Vec::with_capacity(path.len());
    let mut msg = desc.clone();
    for (i, name) in path.iter().enumerate() {
        let field = msg
            .get_field_by_name(name)
            .or_else(|| msg.get_field_by_json_name(name))
            .ok_or_else(|| RequestError::UnknownField {
                field: name.clone(),
                message: msg.full_name().to_string(),
            })?;
        if i + 1 < path.len() {
            match field.kind() {
                Kind::Message(m) if !field.is_list() => msg = m,
                _ => {
                    return Err(RequestError::UnknownField {
                        field: path[i + 1].clone(),
                        message: field.full_name().to_string(),
                    })
                }
            }
        }
        out.push(field);
    }
    Ok(out)
}

/// Builds the request message from its body and bindings; its wire bytes.
pub(super) fn build(
    desc: &MessageDescriptor,
    body_rule: &BodyRule,
    body: &[u8],
    bindings: &[(Vec<FieldDescriptor>, String)],
) -> Result<Vec<u8>, RequestError> {
    let mut msg = match body_rule {
        BodyRule::All if !is_blank(body) => parse_message(desc, body)?,
        _ => DynamicMessage::new(desc.clone()),
    };
    if let BodyRule::Field(path) = body_rule {
        if !is_blank(body) {
            let (last, parents) = path
                .split_last()
                .ok_or_else(|| RequestError::Invalid("empty body field".into()))?;
            let json: serde_json::Value = serde_json::from_slice(body)
                .map_err(|e| RequestError::Invalid(format!("Unexpected token. {e}")))?;
            let value = json_value(last, json)?;
            set(&mut msg, parents, last, value);
        }
    }
    for (path, text) in bindings {
        let Some((last, parents)) = path.split_last() else {
            continue;
        };
        let value = scalar(last, text)?;
        set(&mut msg, parents, last, value);
    }
    Ok(in_field_order(&msg).encode_to_vec())
}

/// `msg` with its fields set in field-number order, which its encoding follows (as the
/// protobuf serializer Envoy's transcoder writes with).
fn in_field_order(msg: &DynamicMessage) -> DynamicMessage {
    let desc = msg.descriptor();
    let mut fields: Vec<FieldDescriptor> = desc.fields().collect();
    fields.sort_by_key(FieldDescriptor::number);
    let mut out = DynamicMessage::new(desc);
    for f in fields {
        if !msg.has_field(&f) {
            continue;
        }
        let v = match msg.get_field(&f).into_owned() {
            Value::Message(m) => Value::Message(in_field_order(&m)),
            Value::List(items) => Value::List(
                items
                    .into_iter()
                    .map(|v| match v {
                        Value::Message(m) => Value::Message(in_field_order(&m)),
                        v => v,
                    })
                    .collect(),
            ),
            v => v,
        };
        out.set_field(&f, v);
    }
    out
}

fn is_blank(body: &[u8]) -> bool {
    body.iter().all(u8::is_ascii_whitespace)
}

fn parse_message(desc: &MessageDescriptor, body: &[u8]) -> Result<DynamicMessage, RequestError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    // Envoy's translator skips fields the type does not have (measured).
    let options = prost_reflect::DeserializeOptions::new().deny_unknown_fields(false);
    let msg = DynamicMessage::deserialize_with_options(desc.clone(), &mut de, &options)
        .map_err(|e| RequestError::Invalid(e.to_string()))?;
    de.end().map_err(|e| RequestError::Invalid(e.to_string()))?;
    Ok(msg)
}

/// A JSON value as `field`'s value (a body bound to one field).
fn json_value(field: &FieldDescriptor, json: serde_json::Value) -> Result<Value, RequestError> {
    // Wrapped in an object so the field's own JSON mapping parses it.
    let parent = field.parent_message().clone();
    let mut wrapper = serde_json::Map::new();
    wrapper.insert(field.json_name().to_string(), json);
    let text = serde_json::to_vec(&serde_json::Value::Object(wrapper))
        .map_err(|e| RequestError::Invalid(e.to_string()))?;
    let msg = parse_message(&parent, &text)?;
    Ok(msg.get_field(field).into_owned())
}

/// `text` (a path segment, a query value) as `field`'s value.
fn scalar(field: &FieldDescriptor, text: &str) -> Result<Value, RequestError> {
    let bad = || RequestError::Invalid(format!("Invalid value for {}: {text}", field.name()));
    let v = match field.kind() {
        Kind::String => Value::String(text.to_string()),
        Kind::Bytes => {
            use base64::Engine as _;
            let b = base64::engine::general_purpose::STANDARD
                .decode(text)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(text))
                .map_err(|_| bad())?;
            Value::Bytes(b.into())
        }
        Kind::Bool => match text {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(bad()),
        },
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(text.parse().map_err(|_| bad())?),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(text.parse().map_err(|_| bad())?),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(text.parse().map_err(|_| bad())?),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(text.parse().map_err(|_| bad())?),
        Kind::Float => Value::F32(text.parse().map_err(|_| bad())?),
        Kind::Double => Value::F64(text.parse().map_err(|_| bad())?),
        Kind::Enum(e) => match e.get_value_by_name(text) {
            Some(v) => Value::EnumNumber(v.number()),
            None => Value::EnumNumber(text.parse().map_err(|_| bad())?),
        },
        Kind::Message(_) => return Err(bad()),
    };
    Ok(v)
}

/// Sets (or, for a repeated field, appends) `value` at `parents` then `last`.
fn set(
    msg: &mut DynamicMessage,
    parents: &[FieldDescriptor],
    last: &FieldDescriptor,
    value: Value,
) {
    let mut cur = msg;
    for p in parents {
        let slot = cur.get_field_mut(p);
        cur = match slot {
            Value::Message(m) => m,
            // Resolution only walks through singular message fields.
            _ => return,
        };
    }
    if last.is_list() {
        if let Value::List(items) = cur.get_field_mut(last) {
            match value {
                Value::List(more) => items.extend(more),
                v => items.push(v),
            }
        }
    } else {
        cur.set_field(last, value);
    }
}
