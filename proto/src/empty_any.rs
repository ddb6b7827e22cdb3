//! Empty `Any`s: the proto3 JSON mapping reads `{}` as an `Any` with no type (a valid,
//! empty message), and Envoy accepts one where an `Any` field may be left unset (Envoy
//! Gateway writes `FilterConfig { config: {} }` to turn a filter on for a route).
//! prost-reflect wants an `"@type"` in every `Any`; this pass removes the `{}` of singular
//! `Any` fields before the document is read (an empty `Any` and an unset one mean the same
//! to the code that reads them). A `{}` in a map or a list is left for the reader to
//! refuse, as Envoy refuses it.

use prost_reflect::{Kind, MessageDescriptor};
use serde_json::Value;

/// Removes the `{}` values of singular `Any` fields in `value`, a document of `desc`;
/// whether it removed any.
pub fn strip(desc: &MessageDescriptor, value: &mut Value) -> bool {
    let Value::Object(fields) = value else {
        return false;
    };
    let mut removed = false;
    let mut empty = Vec::new();
    for (key, v) in fields.iter_mut() {
        let Some(field) = desc
            .get_field_by_json_name(key)
            .or_else(|| desc.get_field_by_name(key))
        else {
            continue;
        };
        let Kind::Message(inner) = field.kind() else {
            continue;
        };
        if field.is_map() {
            let value_kind = inner.map_entry_value_field().kind();
            if let (Kind::Message(m), Value::Object(entries)) = (value_kind, v) {
                for e in entries.values_mut() {
                    removed |= strip_nested(&m, e);
                }
            }
        } else if field.is_list() {
            if let Value::Array(items) = v {
                for item in items {
                    removed |= strip_nested(&inner, item);
                }
            }
        } else if is_any(&inner) && v.as_object().is_some_and(|o| o.is_empty()) {
            empty.push(key.clone());
        } else {
            removed |= strip_nested(&inner, v);
        }
    }
    for key in empty {
        fields.remove(&key);
        removed = true;
    }
    removed
}

fn is_any(desc: &MessageDescriptor) -> bool {
    desc.full_name() == "google.protobuf.Any"
}

/// Recurses into a message value; into an `Any`, by its `"@type"`.
fn strip_nested(desc: &MessageDescriptor, value: &mut Value) -> bool {
    if !is_any(desc) {
        return strip(desc, value);
    }
    let Some(type_url) = value.get("@type").and_then(Value::as_str) else {
        return false;
    };
    let name = crate::type_url::message_name(type_url).to_string();
    match crate::descriptors::pool().get_message_by_name(&name) {
        // A well-known type's JSON is in `"value"`; nothing of ours is inside.
        Some(inner) if !name.starts_with("google.protobuf.") => strip(&inner, value),
        _ => false,
    }
}
