//! Metadata as scripts see it: a route's or virtual host's filter metadata, the filter's
//! `filter_context` (read-only maps, `get` and `pairs`), and the stream's dynamic metadata
//! (`streamInfo():dynamicMetadata()`: `get`, `set`, `pairs`), converted between protobuf
//! `Struct`s and Lua values as Envoy converts them.
//!
//! As Envoy 1.40: a `null` reads as `nil`, a number as a Lua number, a list as a sequence;
//! what a script sets is a `Struct` field under a namespace (merged into what the namespace
//! holds), a table with only positive integer keys being a list (its missing entries
//! `null`), any other table a struct whose keys must be strings. A value of another type
//! is the error `unexpected type '<type>' in dynamicMetadata`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use courier_proto::google::protobuf::{value::Kind, ListValue, Struct, Value};
use mlua::{Lua, Value as LuaValue};

pub use crate::http::route::metadata::FilterMetadata;

/// A stream's dynamic metadata, by namespace (shared by the stream's Lua filters, on the
/// request and on the response).
pub type DynamicMetadata = Rc<RefCell<BTreeMap<String, Struct>>>;

/// `value` as a Lua value (Envoy's `MetadataMapHelper::setValue`).
pub(crate) fn to_lua(lua: &Lua, value: &Value) -> mlua::Result<LuaValue> {
    Ok(match &value.kind {
        None | Some(Kind::NullValue(_)) => LuaValue::Nil,
        Some(Kind::NumberValue(n)) => LuaValue::Number(*n),
        Some(Kind::BoolValue(b)) => LuaValue::Boolean(*b),
        Some(Kind::StringValue(s)) => LuaValue::String(lua.create_string(s)?),
        Some(Kind::StructValue(s)) => LuaValue::Table(struct_table(lua, s)?),
        Some(Kind::ListValue(l)) => {
            let t = lua.create_table_with_capacity(l.values.len(), 0)?;
            for (i, v) in l.values.iter().enumerate() {
                t.raw_set(i + 1, to_lua(lua, v)?)?;
            }
            LuaValue::Table(t)
        }
    })
}

/// A `Struct` as a Lua table.
pub(crate) fn struct_table(lua: &Lua, s: &Struct) -> mlua::Result<mlua::Table> {
    let t = lua.create_table_with_capacity(0, s.fields.len())?;
    for (k, v) in &s.fields {
        t.raw_set(k.as_str(), to_lua(lua, v)?)?;
    }
    Ok(t)
}

/// A Lua type's name, as Lua's argument errors give it.
pub(crate) fn type_name(v: &LuaValue) -> &'static str {
    match v {
        LuaValue::Nil => "nil",
        LuaValue::Boolean(_) => "boolean",
        LuaValue::Integer(_) | LuaValue::Number(_) => "number",
        LuaValue::String(_) => "string",
        LuaValue::Table(_) => "table",
        LuaValue::Function(_) => "function",
        LuaValue::Thread(_) => "thread",
        _ => "userdata",
    }
}

/// A Lua value as a protobuf `Value` (Envoy's `MetadataMapHelper::loadValue`); the error is
/// Envoy's message.
pub(crate) fn from_lua(v: &LuaValue) -> Result<Value, String> {
    let kind = match v {
        LuaValue::Nil => Kind::NullValue(0),
        LuaValue::Integer(i) => Kind::NumberValue(*i as f64),
        LuaValue::Number(n) => Kind::NumberValue(*n),
        LuaValue::Boolean(b) => Kind::BoolValue(*b),
        LuaValue::String(s) => {
            // `lua_tostring` read as a C string: it ends at the first NUL.
            let bytes = s.as_bytes();
            let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
            Kind::StringValue(String::from_utf8_lossy(&bytes[..end]).into_owned())
        }
        LuaValue::Table(t) => match list_length(t) {
            Some(n) if n > 0 => {
                let mut values = Vec::with_capacity(n);
                for i in 1..=n {
                    let item: LuaValue = t.raw_get(i).map_err(|e| e.to_string())?;
                    values.push(from_lua(&item)?);
                }
                Kind::ListValue(ListValue { values })
            }
            _ => {
                let mut fields = BTreeMap::new();
                for pair in t.clone().pairs::<LuaValue, LuaValue>() {
                    let (k, v) = pair.map_err(|e| e.to_string())?;
                    let LuaValue::String(k) = &k else {
                        return Err(format!(
                            "unexpected type {} in table key (only string keys are supported)",
                            type_name(&k)
                        ));
                    };
                    fields.insert(k.to_string_lossy(), from_lua(&v)?);
                }
                Kind::StructValue(Struct {
                    fields: fields.into_iter().collect(),
                })
            }
        },
        other => {
            return Err(format!(
                "unexpected type '{}' in dynamicMetadata",
                type_name(other)
            ))
        }
    };
    Ok(Value { kind: Some(kind) })
}

/// A table's length when it is shaped as a list (its keys all integers from 1): its largest
/// key; `None` otherwise.
fn list_length(t: &mlua::Table) -> Option<usize> {
    let mut max = 0usize;
    for pair in t.clone().pairs::<LuaValue, LuaValue>() {
        let (k, _) = pair.ok()?;
        let n = match k {
            LuaValue::Integer(i) => i as f64,
            LuaValue::Number(n) => n,
            _ => return None,
        };
        if n.floor() != n || n < 1.0 {
            return None;
        }
        max = max.max(n as usize);
    }
    Some(max)
}
