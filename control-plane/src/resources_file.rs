//! The resources file: Envoy v3 resources in the proto3 JSON mapping, as YAML or JSON, so a
//! user can paste Envoy config.
//!
//! ```yaml
//! clusters:  [ <envoy.config.cluster.v3.Cluster>, ... ]
//! endpoints: [ <envoy.config.endpoint.v3.ClusterLoadAssignment>, ... ]
//! listeners: [ <envoy.config.listener.v3.Listener>, ... ]
//! routes:    [ <envoy.config.route.v3.RouteConfiguration>, ... ]
//! secrets:   [ <envoy.extensions.transport_sockets.tls.v3.Secret>, ... ]
//! runtimes:  [ <envoy.service.runtime.v3.Runtime>, ... ]
//! nodes:                 # optional per-node overrides, by cache key (node id by default)
//!   edge-1:
//!     clusters: [ ... ]  # added to, or replacing by name, the resources above
//! ```
//!
//! An entry may carry an `"@type"` naming its message (as inside an `Any`); it must match the
//! section. A path may also be a directory: every `*.yaml`, `*.yml` and `*.json` file in it
//! (not recursive, in name order) is merged; a name defined twice is an error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use courier_proto::envoy::config::cluster::v3::Cluster;
use courier_proto::envoy::config::endpoint::v3::ClusterLoadAssignment;
use courier_proto::envoy::config::listener::v3::Listener;
use courier_proto::envoy::config::route::v3::RouteConfiguration;
use courier_proto::envoy::extensions::transport_sockets::tls::v3::Secret;
use courier_proto::envoy::service::runtime::v3::Runtime;
use serde_json::Value;

use crate::cache::{Snapshot, SnapshotError};
use crate::resource::{Resource, ResourceError, ResourceType};

/// An error in a resources document or an API body, with the path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}{message}", file.as_ref().map(|f| format!("{}: ", f.display())).unwrap_or_default(), if path.is_empty() { String::new() } else { format!("{path}: ") })]
pub struct FieldError {
    /// The file, when the document came from one.
    pub file: Option<PathBuf>,
    /// Path of the offending field from the document root (`clusters[2].connect_timeout`),
    /// empty for the document itself.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl FieldError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            file: None,
            path: path.into(),
            message: message.into(),
        }
    }

    fn in_file(mut self, file: &Path) -> FieldError {
        self.file = Some(file.to_path_buf());
        self
    }
}

/// Resources by type and name.
pub type ResourceMap = BTreeMap<(ResourceType, String), Arc<Resource>>;

/// The parsed content of a resources file or directory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResourceSet {
    /// Resources served to every node.
    pub base: ResourceMap,
    /// Per cache key: resources added to or replacing (by name) the base ones.
    pub nodes: BTreeMap<String, ResourceMap>,
}

/// The snapshots a [`ResourceSet`] yields.
#[derive(Debug, Clone)]
pub struct Snapshots {
    /// Served to every node without an override.
    pub default: Snapshot,
    /// Per cache key with overrides.
    pub nodes: BTreeMap<String, Snapshot>,
}

/// A snapshot built from a [`ResourceSet`] was inconsistent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{source}", node.as_ref().map(|n| format!("nodes.{n}: ")).unwrap_or_default())]
pub struct BuildError {
    /// The node override whose snapshot failed, `None` for the default one.
    pub node: Option<String>,
    /// Why.
    pub source: SnapshotError,
}

impl ResourceSet {
    /// Builds the default snapshot and one per node override; every one must be consistent.
    pub fn snapshots(&self) -> Result<Snapshots, BuildError> {
        let default = Snapshot::builder()
            .resources(self.base.values().cloned())
            .build()
            .map_err(|source| BuildError { node: None, source })?;
        let mut nodes = BTreeMap::new();
        for (key, overrides) in &self.nodes {
            let mut merged = self.base.clone();
            merged.extend(overrides.iter().map(|(k, v)| (k.clone(), v.clone())));
            let s = Snapshot::builder()
                .resources(merged.into_values())
                .build()
                .map_err(|source| BuildError {
                    node: Some(key.clone()),
                    source,
                })?;
            nodes.insert(key.clone(), s);
        }
        Ok(Snapshots { default, nodes })
    }
}

/// Parses one resource of `kind` from a JSON value (proto3 JSON mapping). `path` prefixes
/// error paths.
pub fn parse_resource(
    kind: ResourceType,
    value: &Value,
    path: &str,
) -> Result<Arc<Resource>, FieldError> {
    let mut value = value.clone();
    if let Value::Object(map) = &mut value {
        if let Some(t) = map.remove("@type") {
            let expected = kind.type_url();
            let ok = t.as_str().is_some_and(|t| {
                courier_proto::type_url::message_name(t)
                    == courier_proto::type_url::message_name(expected)
            });
            if !ok {
                return Err(FieldError::new(
                    join(path, "@type"),
                    format!("expected {expected:?} in this section, got {t}"),
                ));
            }
        }
    }
    let err = |e: courier_proto::LoadError| FieldError::new(join(path, e.path()), strip_path(&e));
    let built: Result<Arc<Resource>, ResourceError> = match kind {
        ResourceType::Cluster => {
            Resource::cluster(&courier_proto::from_value::<Cluster>(&value).map_err(err)?)
        }
        ResourceType::Endpoint => Resource::endpoint(
            &courier_proto::from_value::<ClusterLoadAssignment>(&value).map_err(err)?,
        ),
        ResourceType::Listener => {
            Resource::listener(&courier_proto::from_value::<Listener>(&value).map_err(err)?)
        }
        ResourceType::Route => {
            Resource::route(&courier_proto::from_value::<RouteConfiguration>(&value).map_err(err)?)
        }
        ResourceType::Secret => {
            Resource::secret(&courier_proto::from_value::<Secret>(&value).map_err(err)?)
        }
        ResourceType::Runtime => {
            Resource::runtime(&courier_proto::from_value::<Runtime>(&value).map_err(err)?)
        }
    };
    built.map_err(|e| {
        let field = if kind == ResourceType::Endpoint {
            "cluster_name"
        } else {
            "name"
        };
        FieldError::new(join(path, field), e.to_string())
    })
}

/// The message of a load error without its path (the path is reported separately).
fn strip_path(e: &courier_proto::LoadError) -> String {
    match e {
        courier_proto::LoadError::Invalid { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

fn join(prefix: &str, rest: &str) -> String {
    match (prefix.is_empty(), rest.is_empty()) {
        (true, _) => rest.to_string(),
        (_, true) => prefix.to_string(),
        _ if rest.starts_with('[') => format!("{prefix}{rest}"),
        _ => format!("{prefix}.{rest}"),
    }
}

/// Parses a YAML (or JSON) text into a value; syntax errors carry no field path.
pub fn parse_text(text: &str) -> Result<Value, FieldError> {
    if text.trim().is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    serde_yaml_ng::from_str::<Value>(text).map_err(|e| FieldError::new("", e.to_string()))
}

/// Parses the sections of one document into `set`.
fn parse_sections(
    doc: &Value,
    prefix: &str,
    allow_nodes: bool,
    into: &mut ResourceMap,
    nodes: &mut BTreeMap<String, ResourceMap>,
) -> Result<(), FieldError> {
    let Value::Object(map) = doc else {
        return Err(FieldError::new(
            prefix,
            "expected a mapping of resource sections",
        ));
    };
    for (section, value) in map {
        let path = join(prefix, section);
        if section == "nodes" && allow_nodes {
            let Value::Object(per_node) = value else {
                return Err(FieldError::new(
                    path,
                    "expected a mapping of node key to resources",
                ));
            };
            for (key, doc) in per_node {
                let node_path = format!("{path}.{key}");
                let entry = nodes.entry(key.clone()).or_default();
                parse_sections(doc, &node_path, false, entry, &mut BTreeMap::new())?;
            }
            continue;
        }
        let Some(kind) = ResourceType::from_plural(section) else {
            let allowed = if allow_nodes {
                "clusters, endpoints, listeners, routes, secrets, runtimes, nodes"
            } else {
                "clusters, endpoints, listeners, routes, secrets, runtimes"
            };
            return Err(FieldError::new(
                path,
                format!("unknown section (expected one of {allowed})"),
            ));
        };
        let items: &[Value] = match value {
            Value::Array(items) => items,
            Value::Null => &[],
            _ => return Err(FieldError::new(path, "expected a list of resources")),
        };
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            let r = parse_resource(kind, item, &item_path)?;
            let k = (kind, r.name().to_string());
            if into.contains_key(&k) {
                return Err(FieldError::new(
                    item_path,
                    format!("duplicate {} name {:?}", kind, r.name()),
                ));
            }
            into.insert(k, r);
        }
    }
    Ok(())
}

/// Parses one resources document (YAML or JSON text).
pub fn parse_document(text: &str) -> Result<ResourceSet, FieldError> {
    let doc = parse_text(text)?;
    let mut set = ResourceSet::default();
    parse_sections(&doc, "", true, &mut set.base, &mut set.nodes)?;
    Ok(set)
}

/// The files a resources path stands for: the file itself, or the resource files of a
/// directory in name order.
pub fn files_of(path: &Path) -> Result<Vec<PathBuf>, FieldError> {
    let io_err = |e: std::io::Error| FieldError::new("", e.to_string()).in_file(path);
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io_err)? {
        let p = entry.map_err(io_err)?.path();
        let is_resource = p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
        if is_resource && p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// Loads a resources file, or a directory of them (merged; duplicate names are errors).
pub fn load(path: &Path) -> Result<ResourceSet, FieldError> {
    let mut merged = ResourceSet::default();
    for file in files_of(path)? {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| FieldError::new("", e.to_string()).in_file(&file))?;
        let set = parse_document(&text).map_err(|e| e.in_file(&file))?;
        merge(&mut merged.base, set.base).map_err(|e| e.in_file(&file))?;
        for (key, map) in set.nodes {
            let into = merged.nodes.entry(key.clone()).or_default();
            merge(into, map).map_err(|e| e.in_file(&file))?;
        }
    }
    Ok(merged)
}

fn merge(into: &mut ResourceMap, from: ResourceMap) -> Result<(), FieldError> {
    for (k, v) in from {
        if into.contains_key(&k) {
            return Err(FieldError::new(
                k.0.plural(),
                format!(
                    "duplicate {} name {:?} (already defined in an earlier file)",
                    k.0, k.1
                ),
            ));
        }
        into.insert(k, v);
    }
    Ok(())
}
