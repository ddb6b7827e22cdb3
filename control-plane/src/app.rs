//! The `courier-cp` server state: the resources loaded from the file (plus changes made
//! through the management API), turned into snapshots atomically.
//!
//! Every change (file reload, PUT, DELETE) builds *all* snapshots first and applies them in
//! one [`SnapshotCache::replace_all`]; if anything fails, nothing is applied, the last good
//! snapshots keep being served and the error is logged and kept as `last_error`.
//! A file reload replaces the whole state, including earlier API changes: the file is the
//! source of truth, the API a way to change the running state until the next edit.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{json, Value};

use crate::cache::SnapshotCache;
use crate::resource::ResourceType;
use crate::resources_file::{self, FieldError, ResourceSet};
use crate::status::StatusRegistry;

/// The last error of a reload or an API change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastError {
    /// `"file"` or `"api"`.
    pub source: String,
    /// The file, if the error is in one.
    pub file: Option<String>,
    /// Path of the offending field, empty if none.
    pub path: String,
    /// The message (with file and path).
    pub message: String,
    /// When, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
}

/// A management API request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// The HTTP status to answer with.
    pub status: u16,
    /// Path of the offending field in the body, empty if none.
    pub path: String,
    /// What went wrong.
    pub message: String,
}

impl ApiError {
    fn new(status: u16, path: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            path: path.into(),
            message: message.into(),
        }
    }

    /// The JSON body of the error response.
    pub fn to_json(&self) -> Value {
        json!({ "error": self.message, "path": self.path })
    }
}

#[derive(Default)]
struct State {
    set: ResourceSet,
    last_error: Option<LastError>,
    loads: u64,
}

/// The server state of `courier-cp`.
pub struct App {
    cache: SnapshotCache,
    status: StatusRegistry,
    path: Option<PathBuf>,
    state: Mutex<State>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl App {
    /// State serving `path` (None: start empty, API only) into `cache`.
    pub fn new(cache: SnapshotCache, status: StatusRegistry, path: Option<PathBuf>) -> App {
        App {
            cache,
            status,
            path,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // State is replaced wholesale under the lock; a poisoned lock still holds a good one.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cache the snapshots are applied to.
    pub fn cache(&self) -> &SnapshotCache {
        &self.cache
    }

    /// The resources path being served.
    pub fn path(&self) -> Option<&PathBuf> {
        self.path.as_ref()
    }

    /// Builds every snapshot of `set` and applies them all at once.
    fn apply(&self, set: &ResourceSet) -> Result<(), FieldError> {
        let snaps = set.snapshots().map_err(|e| FieldError {
            file: None,
            path: e
                .node
                .as_ref()
                .map(|n| format!("nodes.{n}"))
                .unwrap_or_default(),
            message: e.source.to_string(),
        })?;
        let versions: Vec<String> = ResourceType::ALL
            .iter()
            .map(|t| format!("{}={}", t, snaps.default.version(*t)))
            .collect();
        self.cache.replace_all(Some(snaps.default), snaps.nodes);
        tracing::info!(versions = %versions.join(" "), "snapshot applied");
        Ok(())
    }

    fn record_error(&self, st: &mut State, source: &str, e: &FieldError) {
        tracing::warn!(source, error = %e, "rejected; still serving the last good snapshot");
        st.last_error = Some(LastError {
            source: source.to_string(),
            file: e.file.as_ref().map(|f| f.display().to_string()),
            path: e.path.clone(),
            message: e.to_string(),
            at_unix_ms: now_ms(),
        });
    }

    /// (Re)loads the resources path. On error the previous snapshots stay.
    pub fn reload(&self) -> Result<(), FieldError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let mut st = self.lock();
        let result = resources_file::load(path).and_then(|set| {
            self.apply(&set)?;
            Ok(set)
        });
        match result {
            Ok(set) => {
                st.set = set;
                st.loads += 1;
                st.last_error = None;
                Ok(())
            }
            Err(e) => {
                self.record_error(&mut st, "file", &e);
                Err(e)
            }
        }
    }

    /// Applies an edit to a copy of the state; commits only if every snapshot builds.
    fn edit(
        &self,
        node: Option<&str>,
        change: impl FnOnce(&mut resources_file::ResourceMap) -> Result<(), ApiError>,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let mut next = st.set.clone();
        let target = match node {
            Some(n) => next.nodes.entry(n.to_string()).or_default(),
            None => &mut next.base,
        };
        let outcome = change(target).and_then(|()| {
            self.apply(&next)
                .map_err(|e| ApiError::new(409, e.path.clone(), e.to_string()))
        });
        match outcome {
            Ok(()) => {
                st.set = next;
                Ok(self.versions_json(node))
            }
            Err(e) => {
                let fe = FieldError {
                    file: None,
                    path: e.path.clone(),
                    message: e.message.clone(),
                };
                self.record_error(&mut st, "api", &fe);
                Err(e)
            }
        }
    }

    fn versions_json(&self, node: Option<&str>) -> Value {
        let snap = match node {
            Some(n) => self.cache.snapshot(n),
            None => self.cache.default_snapshot(),
        };
        let mut versions = serde_json::Map::new();
        if let Some(s) = snap {
            for t in ResourceType::ALL {
                versions.insert(t.plural().to_string(), json!(s.version(t)));
            }
        }
        json!({ "versions": versions })
    }

    /// PUT: adds or replaces one resource (body in YAML or JSON, proto3 JSON mapping) for
    /// every node, or for one node key's override.
    pub fn put_resource(
        &self,
        kind: ResourceType,
        name: &str,
        body: &str,
        node: Option<&str>,
    ) -> Result<Value, ApiError> {
        let parsed = resources_file::parse_text(body)
            .and_then(|v| resources_file::parse_resource(kind, &v, ""))
            .map_err(|e| ApiError::new(400, e.path.clone(), e.to_string()));
        let resource = match parsed {
            Ok(r) if r.name() == name => r,
            Ok(r) => {
                let field = if kind == ResourceType::Endpoint {
                    "cluster_name"
                } else {
                    "name"
                };
                let e = ApiError::new(
                    400,
                    field,
                    format!(
                        "{field}: {:?} does not match the name in the URL {name:?}",
                        r.name()
                    ),
                );
                let mut st = self.lock();
                let fe = FieldError {
                    file: None,
                    path: e.path.clone(),
                    message: e.message.clone(),
                };
                self.record_error(&mut st, "api", &fe);
                return Err(e);
            }
            Err(e) => {
                let mut st = self.lock();
                let fe = FieldError {
                    file: None,
                    path: e.path.clone(),
                    message: e.message.clone(),
                };
                self.record_error(&mut st, "api", &fe);
                return Err(e);
            }
        };
        self.edit(node, |map| {
            map.insert((kind, name.to_string()), resource);
            Ok(())
        })
    }

    /// DELETE: removes one resource (from the base set, or from one node key's override).
    pub fn delete_resource(
        &self,
        kind: ResourceType,
        name: &str,
        node: Option<&str>,
    ) -> Result<Value, ApiError> {
        self.edit(node, |map| {
            map.remove(&(kind, name.to_string()))
                .map(|_| ())
                .ok_or_else(|| ApiError::new(404, "", format!("no {kind} named {name:?}")))
        })
    }

    /// GET /snapshot: the default snapshot and the per-node ones, rendered as JSON.
    pub fn snapshot_json(&self) -> Value {
        let default = self
            .cache
            .default_snapshot()
            .map(|s| s.to_json())
            .unwrap_or(Value::Null);
        let nodes: BTreeMap<String, Value> = self
            .cache
            .node_snapshots()
            .into_iter()
            .map(|(k, s)| (k, s.to_json()))
            .collect();
        json!({ "default": default, "nodes": nodes })
    }

    /// GET /status: per node status, the last error, the number of good loads.
    pub fn status_json(&self) -> Value {
        let st = self.lock();
        json!({
            "resources_path": self.path.as_ref().map(|p| p.display().to_string()),
            "loads": st.loads,
            "last_error": st.last_error,
            "nodes": self.status.nodes(),
        })
    }

    /// The last error, if the last reload or API change failed.
    pub fn last_error(&self) -> Option<LastError> {
        self.lock().last_error.clone()
    }
}
