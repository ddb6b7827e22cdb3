//! A snapshot: one consistent, versioned set of resources of every type for a node.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::resource::{content_hash, Resource, ResourceType};

/// The resources of one type in a snapshot, and that type's version string.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TypeResources {
    version: String,
    items: BTreeMap<String, Arc<Resource>>,
}

impl TypeResources {
    /// The type's version (`version_info` of SotW responses, `system_version_info` of delta).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The resources by name.
    pub fn items(&self) -> &BTreeMap<String, Arc<Resource>> {
        &self.items
    }

    /// Derives a version from the content: unchanged content keeps its version, across
    /// snapshots and across restarts of the server (a reconnecting client that already holds
    /// it then gets no redundant push).
    fn derived_version(items: &BTreeMap<String, Arc<Resource>>) -> String {
        let mut buf = Vec::with_capacity(items.len() * 32);
        for (name, r) in items {
            buf.extend_from_slice(name.as_bytes());
            buf.push(0);
            buf.extend_from_slice(r.version().as_bytes());
            buf.push(0);
        }
        content_hash(&buf)
    }
}

/// One reference from a resource to a resource of another type that the snapshot lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingReference {
    /// Type of the referring resource (cluster or listener).
    pub from_kind: ResourceType,
    /// Name of the referring resource.
    pub from_name: String,
    /// Type of the missing resource (endpoints or routes).
    pub kind: ResourceType,
    /// Name of the missing resource.
    pub name: String,
}

impl fmt::Display for MissingReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            ResourceType::Endpoint => "EDS cluster_load_assignment",
            ResourceType::Route => "RDS route_configuration",
            _ => "resource",
        };
        write!(
            f,
            "{} {:?} references {what} {:?} which is not in the snapshot",
            singular(self.from_kind),
            self.from_name,
            self.name
        )
    }
}

fn singular(kind: ResourceType) -> &'static str {
    match kind {
        ResourceType::Cluster => "cluster",
        ResourceType::Endpoint => "cluster_load_assignment",
        ResourceType::Listener => "listener",
        ResourceType::Route => "route_configuration",
        ResourceType::Secret => "secret",
        ResourceType::Runtime => "runtime",
    }
}

/// Why a snapshot (or a change to one) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// Two resources of one type share a name.
    #[error("duplicate {} name {name:?}", singular(*.kind))]
    Duplicate {
        /// The type.
        kind: ResourceType,
        /// The duplicated name.
        name: String,
    },
    /// A cluster or listener references an EDS/RDS resource that is not in the snapshot
    /// (XDS.md rule 20). Every missing reference is listed.
    #[error("inconsistent snapshot: {}", .0.iter().map(|m| m.to_string()).collect::<Vec<_>>().join("; "))]
    Inconsistent(Vec<MissingReference>),
    /// A removal named a resource the snapshot does not hold.
    #[error("no {} named {name:?} in the snapshot", singular(*.kind))]
    NotFound {
        /// The type.
        kind: ResourceType,
        /// The name.
        name: String,
    },
}

/// An immutable, consistent set of resources of every type with per-type versions.
///
/// Built with [`Snapshot::builder`]; a `Snapshot` value is always consistent (every EDS name
/// referenced by a CDS cluster and every RDS name referenced by a listener is present).
/// Unreferenced EDS/RDS resources are allowed (unlike go-control-plane, which insists on an
/// exact match) so a user can stage endpoints before the cluster that uses them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    types: [TypeResources; ResourceType::ALL.len()],
}

impl Snapshot {
    /// Starts building a snapshot.
    pub fn builder() -> SnapshotBuilder {
        SnapshotBuilder::default()
    }

    /// An empty snapshot (every type present with no resources): a client is told "nothing".
    pub fn empty() -> Snapshot {
        let mut s = Snapshot::default();
        for t in ResourceType::ALL {
            s.types[t.index()].version = TypeResources::derived_version(&BTreeMap::new());
        }
        s
    }

    /// The resources of one type.
    pub fn of(&self, kind: ResourceType) -> &TypeResources {
        &self.types[kind.index()]
    }

    /// The version of one type.
    pub fn version(&self, kind: ResourceType) -> &str {
        &self.types[kind.index()].version
    }

    /// One resource by type and name.
    pub fn get(&self, kind: ResourceType, name: &str) -> Option<&Arc<Resource>> {
        self.types[kind.index()].items.get(name)
    }

    /// A new snapshot with `upserts` added or replaced and `removals` removed. Each type whose
    /// content changed gets a new content-derived version; other types keep theirs. Refused if
    /// a removal names a missing resource or the result is inconsistent.
    pub fn with_changes(
        &self,
        upserts: impl IntoIterator<Item = Arc<Resource>>,
        removals: impl IntoIterator<Item = (ResourceType, String)>,
    ) -> Result<Snapshot, SnapshotError> {
        let mut next = self.clone();
        let mut changed = [false; ResourceType::ALL.len()];
        for (kind, name) in removals {
            if next.types[kind.index()].items.remove(&name).is_none() {
                return Err(SnapshotError::NotFound { kind, name });
            }
            changed[kind.index()] = true;
        }
        for r in upserts {
            let items = &mut next.types[r.kind().index()].items;
            if items
                .get(r.name())
                .is_some_and(|old| old.version() == r.version())
            {
                continue;
            }
            changed[r.kind().index()] = true;
            items.insert(r.name().to_string(), r);
        }
        for t in ResourceType::ALL {
            if changed[t.index()] {
                let tr = &mut next.types[t.index()];
                tr.version = TypeResources::derived_version(&tr.items);
            }
        }
        next.check_consistency()?;
        Ok(next)
    }

    /// Checks XDS.md rule 20: every EDS name referenced by a cluster and every RDS name
    /// referenced by a listener is present.
    pub fn check_consistency(&self) -> Result<(), SnapshotError> {
        let mut missing = Vec::new();
        for (from_kind, dep) in [
            (ResourceType::Cluster, ResourceType::Endpoint),
            (ResourceType::Listener, ResourceType::Route),
        ] {
            for r in self.of(from_kind).items.values() {
                for name in r.references() {
                    if !self.of(dep).items.contains_key(name) {
                        missing.push(MissingReference {
                            from_kind,
                            from_name: r.name().to_string(),
                            kind: dep,
                            name: name.clone(),
                        });
                    }
                }
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(SnapshotError::Inconsistent(missing))
        }
    }

    /// Total number of resources of every type.
    pub fn len(&self) -> usize {
        self.types.iter().map(|t| t.items.len()).sum()
    }

    /// True when the snapshot holds no resource at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The snapshot in JSON for the admin API: per type its version and resources.
    pub fn to_json(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for t in ResourceType::ALL {
            let tr = self.of(t);
            let items: Vec<serde_json::Value> = tr.items.values().map(|r| r.to_json()).collect();
            out.insert(
                t.plural().to_string(),
                serde_json::json!({ "version": tr.version, "resources": items }),
            );
        }
        serde_json::Value::Object(out)
    }
}

/// Builds a [`Snapshot`]; see [`Snapshot::builder`].
#[derive(Debug, Default)]
pub struct SnapshotBuilder {
    version: Option<String>,
    type_versions: [Option<String>; ResourceType::ALL.len()],
    resources: Vec<Arc<Resource>>,
}

impl SnapshotBuilder {
    /// Sets the version of every type that has no explicit [`type_version`](Self::type_version).
    /// Without it, each type's version is derived from its content.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// Sets the version of one type.
    pub fn type_version(mut self, kind: ResourceType, version: impl Into<String>) -> Self {
        self.type_versions[kind.index()] = Some(version.into());
        self
    }

    /// Adds a resource.
    pub fn resource(mut self, r: Arc<Resource>) -> Self {
        self.resources.push(r);
        self
    }

    /// Adds resources.
    pub fn resources(mut self, rs: impl IntoIterator<Item = Arc<Resource>>) -> Self {
        self.resources.extend(rs);
        self
    }

    /// Checks names and consistency and builds the snapshot.
    pub fn build(self) -> Result<Snapshot, SnapshotError> {
        let mut s = Snapshot::default();
        for r in self.resources {
            let items = &mut s.types[r.kind().index()].items;
            if items.contains_key(r.name()) {
                return Err(SnapshotError::Duplicate {
                    kind: r.kind(),
                    name: r.name().to_string(),
                });
            }
            items.insert(r.name().to_string(), r);
        }
        for t in ResourceType::ALL {
            let tr = &mut s.types[t.index()];
            tr.version = match (&self.type_versions[t.index()], &self.version) {
                (Some(v), _) | (None, Some(v)) => v.clone(),
                (None, None) => TypeResources::derived_version(&tr.items),
            };
        }
        s.check_consistency()?;
        Ok(s)
    }
}
