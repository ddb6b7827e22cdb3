//! Load errors, and the translation of serde / prost-reflect error text into stable,
//! readable reasons.
//!
//! The raw errors come from three layers (the YAML or JSON parser, serde's generic
//! `invalid type` errors, and prost-reflect's proto3 JSON mapping). They are normalised here
//! using what we know about the document (the value at the failing path) and the descriptor
//! pool (the field or enum the value was meant for), so that users see, e.g.,
//! `unknown enum value "ROUND" for envoy.config.cluster.v3.Cluster.LbPolicy (expected one
//! of ROUND_ROBIN, ...)` instead of `unrecognized enum value 'ROUND'`.

use std::fmt;
use std::path::PathBuf;

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::Value as Json;

/// A 1-based position in the input text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Location {
    /// Line, starting at 1.
    pub line: usize,
    /// Column, starting at 1.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// Why a document could not be loaded as an Envoy message.
///
/// `Display` is one line: `<path>: <reason> (line N, column M)`, where the path is omitted
/// for errors at the document root and the location where it is unknown (e.g. for
/// [`crate::from_value`]):
///
/// ```text
/// static_resources.clusters[0].load_assignment.endpoints[0]: unknown field "lb_endpoint" (line 29, column 9)
/// static_resources.clusters[0].connect_timeout: invalid duration "abc" (expected a string like "1.5s") (line 24, column 22)
/// expected a single YAML document, found 2 (separated by "---")
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The message type is not in the descriptor pool (a Courier defect or a bad `@type`).
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// The text does not match the message; `path` names the offending field
    /// (`static_resources.clusters[2].load_assignment`), empty for the document root.
    #[error("{}{message}{}", prefix(path), suffix(location))]
    Invalid {
        /// Field path from the document root, as `a.b[2].c`; empty for the root.
        path: String,
        /// What is wrong there (the reason, without path or location).
        message: String,
        /// Where in the text, when known.
        location: Option<Location>,
    },
    /// The text is not well-formed YAML/JSON, or is more than one YAML document.
    #[error("{message}{}", suffix(location))]
    Syntax {
        /// What is wrong (without location).
        message: String,
        /// Where in the text, when known.
        location: Option<Location>,
    },
    /// The dynamic message could not be transcoded to the envoy-types struct.
    #[error("transcoding {type_name}: {message}")]
    Transcode {
        /// Fully-qualified message name.
        type_name: String,
        /// Decoder error.
        message: String,
    },
}

fn prefix(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("{path}: ")
    }
}

fn suffix(location: &Option<Location>) -> String {
    location.map_or_else(String::new, |l| format!(" ({l})"))
}

impl LoadError {
    /// The field path of an [`LoadError::Invalid`] error (`a.b[2].c`), empty for the document
    /// root and for other kinds of error.
    pub fn path(&self) -> &str {
        match self {
            LoadError::Invalid { path, .. } => path,
            _ => "",
        }
    }

    /// The reason alone, without path and location.
    pub fn reason(&self) -> String {
        match self {
            LoadError::Invalid { message, .. } | LoadError::Syntax { message, .. } => {
                message.clone()
            }
            other => other.to_string(),
        }
    }

    /// Where in the input text the error is, when known.
    pub fn location(&self) -> Option<Location> {
        match self {
            LoadError::Invalid { location, .. } | LoadError::Syntax { location, .. } => *location,
            _ => None,
        }
    }
}

/// Why [`crate::load_file`] failed. `Display` is `<file>: <error>`.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read.
    #[error("{}: {error}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The file was read but its content is not a valid message.
    #[error("{}: {error}", file.display())]
    Load {
        /// The file.
        file: PathBuf,
        /// The load error (with field path and location).
        error: LoadError,
    },
}

impl FileError {
    /// The file the error is about.
    pub fn file(&self) -> &std::path::Path {
        match self {
            FileError::Read { file, .. } | FileError::Load { file, .. } => file,
        }
    }

    /// The load error, if the file was readable.
    pub fn load_error(&self) -> Option<&LoadError> {
        match self {
            FileError::Load { error, .. } => Some(error),
            FileError::Read { .. } => None,
        }
    }
}

/// One step of a field path.
#[derive(Debug, Clone)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
    Unknown,
}

pub(crate) fn segments(path: &serde_path_to_error::Path) -> Vec<Seg> {
    path.iter()
        .map(|s| match s {
            serde_path_to_error::Segment::Seq { index } => Seg::Index(*index),
            serde_path_to_error::Segment::Map { key } => Seg::Key(key.clone()),
            serde_path_to_error::Segment::Enum { variant } => Seg::Key(variant.clone()),
            serde_path_to_error::Segment::Unknown => Seg::Unknown,
        })
        .collect()
}

pub(crate) fn path_string(path: &serde_path_to_error::Path) -> String {
    let s = path.to_string();
    if s == "." {
        String::new()
    } else {
        s
    }
}

/// What the failing path points at, in descriptor terms.
#[derive(Debug, Clone)]
enum Node {
    /// A message (the root, a list element, an Any payload, ...).
    Message(MessageDescriptor),
    /// The value of a (possibly repeated or map) field, before indexing.
    Field(FieldDescriptor),
    /// One element of a repeated field or one value of a map field.
    Element(Kind),
    /// Something we do not model (Struct contents, `@type` itself).
    Opaque,
}

/// The context an error is interpreted in.
pub(crate) struct Context<'a> {
    pub root: &'a MessageDescriptor,
    pub doc: Option<&'a Json>,
    pub segs: &'a [Seg],
}

impl Context<'_> {
    /// The document value at the failing path.
    fn value(&self) -> Option<&Json> {
        let mut v = self.doc?;
        for seg in self.segs {
            v = match seg {
                Seg::Key(k) => v.as_object()?.get(k)?,
                Seg::Index(i) => v.as_array()?.get(*i)?,
                Seg::Unknown => return None,
            };
        }
        Some(v)
    }

    /// The descriptor node at the failing path.
    fn node(&self) -> Option<Node> {
        let mut node = Node::Message(self.root.clone());
        let mut v = self.doc;
        for seg in self.segs {
            let here = v;
            v = match (seg, v) {
                (Seg::Key(k), Some(v)) => v.as_object().and_then(|o| o.get(k)),
                (Seg::Index(i), Some(v)) => v.as_array().and_then(|a| a.get(*i)),
                _ => None,
            };
            node = step(node, seg, here)?;
        }
        Some(node)
    }
}

fn step(node: Node, seg: &Seg, here: Option<&Json>) -> Option<Node> {
    let node = match node {
        Node::Element(Kind::Message(m)) => Node::Message(m),
        other => other,
    };
    match (node, seg) {
        (Node::Message(m), Seg::Key(key)) => match m.full_name() {
            "google.protobuf.Any" => {
                if key == "@type" {
                    return Some(Node::Opaque);
                }
                let url = here?.get("@type")?.as_str()?;
                let payload = m
                    .parent_pool()
                    .get_message_by_name(crate::type_url::message_name(url))?;
                if is_well_known(payload.full_name()) && key == "value" {
                    Some(Node::Element(Kind::Message(payload)))
                } else {
                    step(Node::Message(payload), seg, here)
                }
            }
            "google.protobuf.Struct" | "google.protobuf.Value" | "google.protobuf.ListValue" => {
                Some(Node::Opaque)
            }
            _ => m
                .get_field_by_name(key)
                .or_else(|| m.get_field_by_json_name(key))
                .map(Node::Field),
        },
        (Node::Field(f), Seg::Key(_)) if f.is_map() => Some(Node::Element(
            f.kind().as_message()?.map_entry_value_field().kind(),
        )),
        (Node::Field(f), Seg::Index(_)) if f.is_list() => Some(Node::Element(f.kind())),
        (Node::Field(f), seg) if !f.is_list() && !f.is_map() => {
            step(Node::Element(f.kind()), seg, here)
        }
        _ => Some(Node::Opaque),
    }
}

fn is_well_known(name: &str) -> bool {
    name.starts_with("google.protobuf.")
        && !matches!(
            name,
            "google.protobuf.Any" | "google.protobuf.FileDescriptorSet"
        )
}

/// The kind and cardinality the value at the path should have had.
fn expected(node: &Node) -> Option<String> {
    match node {
        Node::Message(m) => Some(expected_message(m)),
        Node::Field(f) if f.is_map() => Some("a mapping".to_string()),
        Node::Field(f) if f.is_list() => Some("a list".to_string()),
        Node::Field(f) => Some(expected_kind(&f.kind())),
        Node::Element(k) => Some(expected_kind(k)),
        Node::Opaque => None,
    }
}

fn expected_kind(kind: &Kind) -> String {
    match kind {
        Kind::Double | Kind::Float => "a number".to_string(),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => "an integer (int32)".to_string(),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => "an integer (int64)".to_string(),
        Kind::Uint32 | Kind::Fixed32 => "an integer (uint32)".to_string(),
        Kind::Uint64 | Kind::Fixed64 => "an integer (uint64)".to_string(),
        Kind::Bool => "a boolean".to_string(),
        Kind::String => "a string".to_string(),
        Kind::Bytes => "a base64 string".to_string(),
        Kind::Message(m) => expected_message(m),
        Kind::Enum(e) => format!("an enum value name or number ({})", e.full_name()),
    }
}

fn expected_message(m: &MessageDescriptor) -> String {
    match m.full_name() {
        "google.protobuf.Duration" => "a duration string like \"1.5s\"".to_string(),
        "google.protobuf.Timestamp" => "an RFC 3339 timestamp string".to_string(),
        "google.protobuf.FieldMask" => "a field mask string".to_string(),
        "google.protobuf.Struct" => "a mapping".to_string(),
        "google.protobuf.ListValue" => "a list".to_string(),
        "google.protobuf.Value" => "a value".to_string(),
        "google.protobuf.Empty" => "an empty mapping".to_string(),
        "google.protobuf.Any" => "a mapping with \"@type\"".to_string(),
        name => match wrapper_kind(name) {
            Some(k) => expected_kind(&k),
            None => format!("a mapping ({name})"),
        },
    }
}

/// The scalar kind of a `google.protobuf.*Value` wrapper.
fn wrapper_kind(name: &str) -> Option<Kind> {
    Some(match name {
        "google.protobuf.DoubleValue" => Kind::Double,
        "google.protobuf.FloatValue" => Kind::Float,
        "google.protobuf.Int64Value" => Kind::Int64,
        "google.protobuf.UInt64Value" => Kind::Uint64,
        "google.protobuf.Int32Value" => Kind::Int32,
        "google.protobuf.UInt32Value" => Kind::Uint32,
        "google.protobuf.BoolValue" => Kind::Bool,
        "google.protobuf.StringValue" => Kind::String,
        "google.protobuf.BytesValue" => Kind::Bytes,
        _ => return None,
    })
}

/// The scalar kind at a node (looking through wrappers), for integer errors.
fn scalar_kind(node: &Node) -> Option<Kind> {
    let kind = match node {
        Node::Field(f) if !f.is_list() && !f.is_map() => f.kind(),
        Node::Element(k) => k.clone(),
        Node::Message(m) => Kind::Message(m.clone()),
        _ => return None,
    };
    match kind {
        Kind::Message(m) => wrapper_kind(m.full_name()),
        k => Some(k),
    }
}

fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Double => "double",
        Kind::Float => "float",
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => "int32",
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => "int64",
        Kind::Uint32 | Kind::Fixed32 => "uint32",
        Kind::Uint64 | Kind::Fixed64 => "uint64",
        Kind::Bool => "bool",
        Kind::String => "string",
        Kind::Bytes => "bytes",
        Kind::Message(_) => "message",
        Kind::Enum(_) => "enum",
    }
}

/// A document value as a user would recognise it.
fn describe(v: &Json) -> String {
    match v {
        Json::Null => "null".to_string(),
        Json::Bool(b) => format!("boolean {b}"),
        Json::Number(n) => format!("number {n}"),
        Json::String(s) => format!("string {}", quote(s)),
        Json::Array(_) => "a list".to_string(),
        Json::Object(_) => "a mapping".to_string(),
    }
}

/// A scalar document value, quoted if it is a string.
fn scalar(v: &Json) -> String {
    match v {
        Json::String(s) => quote(s),
        Json::Array(_) => "(a list)".to_string(),
        Json::Object(_) => "(a mapping)".to_string(),
        other => other.to_string(),
    }
}

fn quote(s: &str) -> String {
    Json::String(s.to_string()).to_string()
}

/// serde's `Unexpected` text, reworded like [`describe`].
fn describe_unexpected(u: &str) -> String {
    match u {
        "map" => "a mapping".to_string(),
        "sequence" => "a list".to_string(),
        "unit value" => "null".to_string(),
        _ => u
            .replace("floating point", "number")
            .replace("integer", "number")
            .replace('`', ""),
    }
}

/// Between single quotes in prost-reflect messages (`unrecognized field name 'x'`).
fn quoted_in(raw: &str) -> Option<&str> {
    let start = raw.find('\'')? + 1;
    let end = raw[start..].find('\'')? + start;
    Some(&raw[start..end])
}

/// The readable reason for a data error reported as `raw` at the context's path.
pub(crate) fn reason(raw: &str, ctx: &Context<'_>) -> String {
    let node = ctx.node();
    let value = ctx.value();
    if let Some(rest) = raw.strip_prefix("unrecognized field name ") {
        let name = quoted_in(rest).unwrap_or(rest);
        return format!("unknown field {}", quote(name));
    }
    if raw.starts_with("unrecognized enum value ") {
        let name = quoted_in(raw).unwrap_or_default();
        let Some(e) = node
            .as_ref()
            .and_then(scalar_kind)
            .and_then(|k| k.as_enum().cloned())
        else {
            return format!("unknown enum value {}", quote(name));
        };
        let names: Vec<_> = e.values().map(|v| v.name().to_string()).collect();
        let shown = if names.len() > 12 {
            format!("{}, ...", names[..12].join(", "))
        } else {
            names.join(", ")
        };
        return format!(
            "unknown enum value {} for {} (expected one of {shown})",
            quote(name),
            e.full_name()
        );
    }
    if raw == "expected '@type' field" {
        return "missing \"@type\" in Any".to_string();
    }
    if raw.starts_with("message '") && raw.ends_with("' not found") {
        let url = value
            .and_then(|v| v.get("@type"))
            .and_then(Json::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| quoted_in(raw).unwrap_or_default().to_string());
        return format!(
            "unknown \"@type\" {} in Any (no such message type in Envoy's v3 API)",
            quote(&url)
        );
    }
    if let Some(rest) = raw.strip_prefix("unsupported type url ") {
        let url = quoted_in(rest).unwrap_or(rest);
        return format!(
            "invalid \"@type\" {} in Any (expected \"type.googleapis.com/<message name>\")",
            quote(url)
        );
    }
    if let Some(rest) = raw.strip_prefix("multiple fields provided for oneof ") {
        let oneof = quoted_in(rest).unwrap_or(rest);
        let set = oneof_fields_set(node.as_ref(), value, oneof);
        return if set.len() >= 2 {
            format!(
                "fields {} are mutually exclusive (oneof {}); set only one",
                set.iter()
                    .map(|s| quote(s))
                    .collect::<Vec<_>>()
                    .join(" and "),
                quote(oneof)
            )
        } else {
            format!(
                "more than one field of oneof {} is set; set only one",
                quote(oneof)
            )
        };
    }
    let is_duration =
        matches!(&node, Some(n) if expected(n).is_some_and(|e| e.starts_with("a duration")));
    if raw.starts_with("failed to parse duration")
        || raw.starts_with("failed to convert duration")
        || (is_duration && raw.contains("duration"))
    {
        let what = value.map(|v| format!(" {}", scalar(v))).unwrap_or_default();
        let why = if raw.contains("out of range") {
            ": out of range"
        } else {
            ""
        };
        return format!("invalid duration{what}{why} (expected a string like \"1.5s\")");
    }
    if let Some(rest) = raw.strip_prefix("invalid type: ") {
        let (got, exp) = rest.split_once(", expected ").unwrap_or((rest, ""));
        let got = value
            .map(describe)
            .unwrap_or_else(|| describe_unexpected(got));
        let exp = node
            .as_ref()
            .and_then(expected)
            .unwrap_or_else(|| exp.replace("a map", "a mapping"));
        let mut msg = format!("wrong type: expected {exp}, got {got}");
        if exp == "a boolean"
            && matches!(value, Some(Json::String(s)) if matches!(s.to_ascii_lowercase().as_str(), "yes" | "no" | "on" | "off" | "y" | "n"))
        {
            msg.push_str(" (use true or false)");
        }
        return msg;
    }
    let integer_error = [
        "invalid digit found in string",
        "out of range integral type conversion attempted",
        "number too large to fit in target type",
        "number too small to fit in target type",
        "cannot parse integer from empty string",
        "expected integer value",
        "float value out of range",
        "invalid float literal",
    ];
    if integer_error.iter().any(|e| raw.starts_with(e)) {
        let kind = node
            .as_ref()
            .and_then(scalar_kind)
            .map(|k| kind_name(&k))
            .unwrap_or("numeric");
        // A number given as a string (as Envoy reads a plain `1.5` or `99999999999` in YAML)
        // is shown as the number it spells.
        let what = value
            .map(|v| match v {
                Json::String(s) if s.parse::<f64>().is_ok_and(f64::is_finite) => format!(" {s}"),
                v => format!(" {}", scalar(v)),
            })
            .unwrap_or_default();
        let why = if raw.contains("range") || raw.contains("too large") || raw.contains("too small")
        {
            ": out of range"
        } else if raw == "expected integer value" {
            ": not an integer"
        } else {
            ""
        };
        return format!("invalid {kind} value{what}{why}");
    }
    if let Some(rest) = raw.strip_prefix("invalid base64: ") {
        return format!("invalid base64 in bytes value: {rest}");
    }
    raw.to_string()
}

/// The fields of oneof `oneof` that are set in the mapping at the path, in declaration order.
fn oneof_fields_set(node: Option<&Node>, value: Option<&Json>, oneof: &str) -> Vec<String> {
    let (Some(node), Some(Json::Object(obj))) = (node, value) else {
        return Vec::new();
    };
    let m = match node {
        Node::Message(m) | Node::Element(Kind::Message(m)) => m.clone(),
        Node::Field(f) => match f.kind() {
            Kind::Message(m) => m,
            _ => return Vec::new(),
        },
        _ => return Vec::new(),
    };
    let m = if m.full_name() == "google.protobuf.Any" {
        match obj.get("@type").and_then(Json::as_str).and_then(|u| {
            m.parent_pool()
                .get_message_by_name(crate::type_url::message_name(u))
        }) {
            Some(p) => p,
            None => return Vec::new(),
        }
    } else {
        m
    };
    let Some(o) = m.oneofs().find(|o| o.name() == oneof) else {
        return Vec::new();
    };
    o.fields()
        .filter_map(|f| {
            [f.name(), f.json_name()]
                .into_iter()
                .find(|k| obj.get(*k).is_some_and(|v| !v.is_null()))
                .map(str::to_string)
        })
        .collect()
}

/// For errors that serde_yaml_ng places at the start of a mapping (unknown field, oneof
/// conflict), the position of key `key` inside the mapping that starts at `map`.
pub(crate) fn locate_yaml_key(text: &str, map: Location, key: &str) -> Option<Location> {
    let lines: Vec<&str> = text.lines().collect();
    let first = lines.get(map.line.checked_sub(1)?)?;
    let col0 = map.column.checked_sub(1)?;
    let spellings = [key.to_string(), format!("\"{key}\""), format!("'{key}'")];
    let starts_key = |s: &str| {
        spellings.iter().any(|k| {
            s.strip_prefix(k.as_str())
                .is_some_and(|r| r.trim_start().starts_with(':'))
        })
    };
    if first.get(col0..)?.starts_with('{') {
        // Flow mapping: search forward for the key after `{`, `,` or whitespace.
        let start = lines[..map.line - 1]
            .iter()
            .map(|l| l.len() + 1)
            .sum::<usize>()
            + col0;
        let rest = text.get(start..)?;
        let mut offset = 1;
        while offset < rest.len() {
            let tail = rest.get(offset..)?;
            let prev = rest.as_bytes()[offset - 1];
            if matches!(prev, b'{' | b',' | b' ' | b'\t' | b'\n') && starts_key(tail) {
                return Some(offset_location(text, start + offset));
            }
            offset += tail.chars().next().map_or(1, char::len_utf8);
        }
        return None;
    }
    // Block mapping: every key starts in the column of the first one.
    for (i, line) in lines.iter().enumerate().skip(map.line - 1) {
        let indent = line.len() - line.trim_start().len();
        let content = line.trim_start();
        if i + 1 > map.line && !content.is_empty() && !content.starts_with('#') && indent < col0 {
            break;
        }
        if line.get(col0..).is_some_and(starts_key) && (i + 1 == map.line || indent == col0) {
            return Some(Location {
                line: i + 1,
                column: col0 + 1,
            });
        }
    }
    None
}

fn offset_location(text: &str, offset: usize) -> Location {
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Location { line, column }
}
