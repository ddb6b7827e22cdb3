//! Building a layer's values: a proto layer (`static_layer`) walked into dotted keys, and a
//! disk layer read from a directory tree (Envoy's `ProtoLayer` and `DiskLayer`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use courier_proto::google::protobuf::{value::Kind, Struct, Value};

use super::snapshot::Entry;
use crate::config::{ConfigError, Fraction};

/// Envoy's bound on a disk layer's directory depth.
const MAX_WALK_DEPTH: u32 = 16;

/// A proto layer's values: nested structs become dotted keys, except a struct with a
/// `numerator` or `denominator` field (or none), which is a `FractionalPercent` value.
/// A list or null value is refused, as in Envoy.
pub fn proto_layer(s: &Struct, path: &str) -> Result<HashMap<String, Arc<Entry>>, ConfigError> {
    let mut values = HashMap::new();
    for (key, value) in &s.fields {
        walk(value, key.clone(), &mut values, path)?;
    }
    Ok(values)
}

fn walk(
    value: &Value,
    prefix: String,
    values: &mut HashMap<String, Arc<Entry>>,
    path: &str,
) -> Result<(), ConfigError> {
    let entry = match &value.kind {
        None | Some(Kind::ListValue(_)) | Some(Kind::NullValue(_)) => {
            return Err(ConfigError::new(
                path,
                format!("Invalid runtime entry value for {prefix}"),
            ))
        }
        Some(Kind::StringValue(s)) => Entry::from_text(s.clone()),
        Some(Kind::NumberValue(n)) => Entry::from_number(*n),
        Some(Kind::BoolValue(b)) => Entry::from_bool(*b),
        Some(Kind::StructValue(s)) => {
            let is_fraction = s.fields.is_empty()
                || s.fields.contains_key("numerator")
                || s.fields.contains_key("denominator");
            if !is_fraction {
                for (key, value) in &s.fields {
                    walk(value, format!("{prefix}.{key}"), values, path)?;
                }
                return Ok(());
            }
            let json = courier_proto::to_json(s);
            let fraction = courier_proto::from_value::<
                courier_proto::envoy::r#type::v3::FractionalPercent,
            >(&json)
            .map_err(|e| {
                ConfigError::new(
                    path,
                    format!("runtime entry {prefix} is not a FractionalPercent: {e}"),
                )
            })?;
            Entry::from_fraction(json.to_string(), Some(Fraction::of(&fraction)))
        }
    };
    values.insert(prefix, Arc::new(entry));
    Ok(())
}

/// Why a disk layer could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The tree is deeper than Envoy allows.
    #[error("Walk recursion depth exceeded {MAX_WALK_DEPTH}")]
    TooDeep,
    /// A directory or file cannot be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// What was read.
        path: String,
        /// Why it failed.
        error: std::io::Error,
    },
}

/// A disk layer's values: every regular file under `root` is a key (its path relative to
/// `root`, `/` read as `.`), its value the file's text without `#` comment lines and with
/// the last line's trailing whitespace trimmed.
pub fn disk_layer(root: &Path) -> Result<HashMap<String, Arc<Entry>>, DiskError> {
    let mut values = HashMap::new();
    walk_directory(root, "", 1, &mut values)?;
    Ok(values)
}

fn walk_directory(
    dir: &Path,
    prefix: &str,
    depth: u32,
    values: &mut HashMap<String, Arc<Entry>>,
) -> Result<(), DiskError> {
    if depth > MAX_WALK_DEPTH {
        return Err(DiskError::TooDeep);
    }
    let read_error = |path: &Path, error| DiskError::Read {
        path: path.display().to_string(),
        error,
    };
    for item in std::fs::read_dir(dir).map_err(|e| read_error(dir, e))? {
        let item = item.map_err(|e| read_error(dir, e))?;
        let name = item.file_name().to_string_lossy().into_owned();
        let key = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}.{name}")
        };
        let full = item.path();
        // Symbolic links are followed, as Envoy's `stat` does.
        let Ok(meta) = std::fs::metadata(&full) else {
            continue;
        };
        if meta.is_dir() {
            walk_directory(&full, &key, depth + 1, values)?;
        } else if meta.is_file() {
            let text = std::fs::read_to_string(&full).map_err(|e| read_error(&full, e))?;
            values.insert(key, Arc::new(Entry::from_text(file_value(&text))));
        }
    }
    Ok(())
}

/// A runtime file's value: lines starting with `#` dropped, the others kept with their
/// newlines but for the last, whose trailing whitespace is trimmed.
fn file_value(text: &str) -> String {
    let lines: Vec<&str> = text.split('\n').filter(|l| !l.is_empty()).collect();
    let mut value = String::new();
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with('#') {
            continue;
        }
        if i + 1 == lines.len() {
            value.push_str(line.trim_end());
        } else {
            value.push_str(line);
            value.push('\n');
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(n: f64) -> Value {
        Value {
            kind: Some(Kind::NumberValue(n)),
        }
    }

    fn object(fields: &[(&str, Value)]) -> Value {
        Value {
            kind: Some(Kind::StructValue(Struct {
                fields: fields
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect(),
            })),
        }
    }

    #[test]
    fn nested_structs_become_dotted_keys_and_fractions_stay_whole() {
        let Some(Kind::StructValue(s)) = object(&[
            ("a", object(&[("b", object(&[("c", number(3.0))]))])),
            ("f", object(&[("numerator", number(5.0))])),
        ])
        .kind
        else {
            unreachable!("built as a struct")
        };
        let values = proto_layer(&s, "layers[0].static_layer").expect("valid layer");
        assert_eq!(values["a.b.c"].uint, Some(3));
        assert_eq!(values["f"].fraction, Some(Fraction::percent(5)));
    }

    #[test]
    fn a_list_value_is_refused_by_key() {
        let s = Struct {
            fields: [(
                "k".to_string(),
                Value {
                    kind: Some(Kind::ListValue(Default::default())),
                },
            )]
            .into(),
        };
        let e = proto_layer(&s, "layers[0].static_layer").expect_err("a list is invalid");
        assert!(
            e.to_string().contains("Invalid runtime entry value for k"),
            "{e}"
        );
    }

    #[test]
    fn files_lose_comments_and_the_last_line_trailing_space() {
        assert_eq!(file_value("# note\nhello\n"), "hello");
        assert_eq!(file_value("a\nb  \n"), "a\nb");
        assert_eq!(file_value("7"), "7");
    }

    #[test]
    fn a_directory_tree_becomes_dotted_keys() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("x/y")).expect("mkdir");
        std::fs::write(dir.path().join("x/y/z"), "42\n").expect("write");
        std::fs::write(dir.path().join("top"), "true").expect("write");
        let values = disk_layer(dir.path()).expect("readable");
        assert_eq!(values["x.y.z"].uint, Some(42));
        assert_eq!(values["top"].boolean, Some(true));
    }
}
