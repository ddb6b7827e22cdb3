//! The main thread's runtime (Envoy's `Runtime::LoaderImpl`): the bootstrap's layers
//! compiled, a new [`Snapshot`] built whenever a layer changes (start-up, a disk layer's
//! symlink swapped, `/runtime_modify`, an RTDS resource accepted or removed), published to
//! the workers through a slot.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use courier_proto::envoy::config::bootstrap::v3::runtime_layer::LayerSpecifier;
use courier_proto::envoy::config::bootstrap::v3::LayeredRuntime;
use courier_runtime::thread_local::Slot;

use super::layer;
use super::rtds::{self, RtdsError, RtdsLayer};
use super::snapshot::{Entry, Layer, Snapshot};
use crate::config::ConfigError;
use crate::stats::{Counter, Gauge, Store, MAIN_THREAD};

/// How often a disk layer's `symlink_root` is looked at. Envoy reacts to the root being
/// moved over (inotify); comparing the root's identity sees the same swaps without a
/// file-system watcher.
const DISK_POLL: Duration = Duration::from_millis(500);

/// A layer as the bootstrap configures it.
enum LayerSource {
    /// `static_layer`: its values never change.
    Static(Arc<Layer>),
    /// `disk_layer`: read from `dir` on every load (skipped while `dir` does not exist).
    Disk { name: String, dir: PathBuf },
    /// `admin_layer`: what `/runtime_modify` set.
    Admin,
    /// `rtds_layer`: the values of the last accepted RTDS resource (index into the
    /// loader's RTDS layers).
    Rtds(usize),
}

/// `runtime.*`.
struct RuntimeStats {
    load_error: Arc<Counter>,
    load_success: Arc<Counter>,
    num_keys: Arc<Gauge>,
    num_layers: Arc<Gauge>,
    override_dir_exists: Arc<Counter>,
    override_dir_not_exists: Arc<Counter>,
    admin_overrides_active: Arc<Gauge>,
}

impl RuntimeStats {
    fn new(store: &Store) -> RuntimeStats {
        // Envoy's deprecated-feature stats exist though Courier reads no deprecated
        // feature: they stay 0, as in an Envoy whose config uses none.
        let _ = store.counter("runtime.deprecated_feature_use");
        let _ = store.gauge("runtime.deprecated_feature_seen_since_process_start");
        RuntimeStats {
            load_error: store.counter("runtime.load_error"),
            load_success: store.counter("runtime.load_success"),
            num_keys: store.gauge("runtime.num_keys"),
            num_layers: store.gauge("runtime.num_layers"),
            override_dir_exists: store.counter("runtime.override_dir_exists"),
            override_dir_not_exists: store.counter("runtime.override_dir_not_exists"),
            admin_overrides_active: store.gauge("runtime.admin_overrides_active"),
        }
    }
}

/// `/runtime_modify` without an admin layer.
#[derive(Debug, thiserror::Error)]
#[error("No admin layer specified")]
pub struct NoAdminLayer;

/// The runtime: layers, the admin layer's overrides, the current snapshot.
pub struct Loader {
    layers: Vec<LayerSource>,
    admin_name: Option<String>,
    admin_values: RefCell<Arc<Layer>>,
    /// Disk layers' roots, watched for swaps.
    symlink_roots: Vec<PathBuf>,
    /// The RTDS layers, in bootstrap order.
    rtds: Vec<RtdsLayer>,
    slot: Slot<Snapshot>,
    stats: RuntimeStats,
    warned_flags: RefCell<HashSet<String>>,
}

impl Loader {
    /// Compiles `config` (the bootstrap's `layered_runtime`) and loads the first
    /// snapshot. `service_cluster` is what `append_service_cluster` adds.
    pub fn new(
        config: Option<&LayeredRuntime>,
        service_cluster: &str,
        store: &Store,
        slot: Slot<Snapshot>,
    ) -> Result<Loader, ConfigError> {
        let Compiled {
            layers,
            admin_name,
            symlink_roots,
            rtds,
        } = compile(config, service_cluster)?;
        let loader = Loader {
            admin_values: RefCell::new(Arc::new(Layer {
                name: admin_name.clone().unwrap_or_default(),
                values: HashMap::new(),
            })),
            layers,
            admin_name,
            symlink_roots,
            rtds,
            slot,
            stats: RuntimeStats::new(store),
            warned_flags: RefCell::new(HashSet::new()),
        };
        super::install(loader.slot.id());
        loader.load();
        Ok(loader)
    }

    /// Builds and publishes a new snapshot from every layer's current values. A disk
    /// layer that cannot be read is left out (`runtime.load_error`), as in Envoy.
    pub fn load(&self) {
        let mut layers = Vec::with_capacity(self.layers.len());
        let mut disk_layers = 0;
        let mut errors = 0;
        for source in &self.layers {
            match source {
                LayerSource::Static(l) => layers.push(l.clone()),
                LayerSource::Admin => layers.push(self.admin_values.borrow().clone()),
                LayerSource::Rtds(i) => {
                    if let Some(l) = self.rtds.get(*i) {
                        layers.push(l.current());
                    }
                }
                LayerSource::Disk { name, dir } => {
                    if !dir.is_dir() {
                        continue;
                    }
                    match layer::disk_layer(dir) {
                        Ok(values) => {
                            disk_layers += 1;
                            layers.push(Arc::new(Layer {
                                name: name.clone(),
                                values,
                            }));
                        }
                        Err(e) => {
                            errors += 1;
                            tracing::warn!(layer = %name, dir = %dir.display(), error = %e, "cannot load a runtime disk layer");
                        }
                    }
                }
            }
        }
        self.stats.num_layers.set(layers.len() as i64);
        if errors == 0 {
            self.stats.load_success.inc(MAIN_THREAD);
        } else {
            self.stats.load_error.inc(MAIN_THREAD);
        }
        // Envoy's legacy count: more than one disk layer stands for an override directory.
        if disk_layers > 1 {
            self.stats.override_dir_exists.inc(MAIN_THREAD);
        } else {
            self.stats.override_dir_not_exists.inc(MAIN_THREAD);
        }
        let snapshot = Arc::new(Snapshot::new(layers));
        self.stats.num_keys.set(snapshot.values().len() as i64);
        self.warn_unread_flags(&snapshot);
        super::publish(&self.slot, snapshot);
    }

    /// Envoy's feature flags switch between Envoy code paths; Courier has one, Envoy
    /// 1.40's default, so a flag set in a layer is said once not to be read.
    fn warn_unread_flags(&self, snapshot: &Snapshot) {
        let mut warned = self.warned_flags.borrow_mut();
        for key in snapshot.values().keys() {
            let flag = key.starts_with("envoy.reloadable_features.")
                || key.starts_with("envoy.restart_features.");
            if flag && warned.insert(key.clone()) {
                tracing::warn!(key = %key, "Courier does not read Envoy feature flags: it behaves as Envoy 1.40 by default");
            }
        }
    }

    /// The second load Envoy's stats show at start-up (`runtime.load_success` is 2 before
    /// any RTDS resource arrives, measured), made when the xDS client starts.
    pub fn rtds_initialized(&self) {
        self.load();
    }

    /// The RTDS layers (their subscriptions are the xDS client's).
    pub fn rtds_layers(&self) -> &[RtdsLayer] {
        &self.rtds
    }

    /// How many RTDS layers subscribe to the resource `name`.
    pub fn rtds_watchers(&self, name: &str) -> usize {
        self.rtds.iter().filter(|l| l.resource == name).count()
    }

    /// Applies accepted RTDS resources: each `(name, Some(runtime))` replaces the values
    /// of every layer subscribed to `name`, each `(name, None)` (a removal) empties them.
    /// Every resource is checked first: one that is invalid rejects them all and no layer
    /// changes. Names no layer subscribes to are ignored. The runtime reloads once per
    /// layer changed, as Envoy's subscriptions each reload it. Returns the number of
    /// layers changed.
    pub fn apply_rtds(
        &self,
        updates: &[(
            String,
            Option<&courier_proto::envoy::service::runtime::v3::Runtime>,
        )],
    ) -> Result<usize, RtdsError> {
        let mut checked = Vec::new();
        for (name, runtime) in updates {
            if self.rtds_watchers(name) == 0 {
                continue;
            }
            let values = match runtime {
                Some(r) => rtds::entries(r, name)?,
                None => HashMap::new(),
            };
            checked.push((name, values));
        }
        let mut changed = 0;
        for (name, values) in checked {
            for l in self.rtds.iter().filter(|l| &l.resource == name) {
                l.set(values.clone());
                self.load();
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// `/runtime_modify`: sets (or, with an empty value, removes) admin-layer keys and
    /// publishes a new snapshot.
    pub fn modify(&self, pairs: &[(String, String)]) -> Result<(), NoAdminLayer> {
        let Some(name) = &self.admin_name else {
            return Err(NoAdminLayer);
        };
        let mut values = self.admin_values.borrow().values.clone();
        for (key, value) in pairs {
            if value.is_empty() {
                values.remove(key);
            } else {
                values.insert(key.clone(), Arc::new(Entry::from_text(value.clone())));
            }
        }
        self.stats
            .admin_overrides_active
            .set(i64::from(!values.is_empty()));
        *self.admin_values.borrow_mut() = Arc::new(Layer {
            name: name.clone(),
            values,
        });
        self.load();
        Ok(())
    }

    /// `/runtime`: every key with its value in each layer, and the layers' names.
    pub fn dump(&self) -> serde_json::Value {
        let snapshot = super::snapshot();
        let layers = snapshot.layers();
        let entries: serde_json::Map<String, serde_json::Value> = snapshot
            .values()
            .iter()
            .map(|(key, entry)| {
                let layer_values: Vec<&str> = layers
                    .iter()
                    .map(|l| l.values.get(key).map_or("", |e| e.raw.as_str()))
                    .collect();
                (
                    key.clone(),
                    serde_json::json!({ "final_value": entry.raw, "layer_values": layer_values }),
                )
            })
            .collect();
        serde_json::json!({
            "entries": entries,
            "layers": layers.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
        })
    }

    /// Reloads whenever a disk layer's `symlink_root` is replaced (the directory swap
    /// Envoy's runtime expects: a new symlink moved over the old one).
    pub fn watch_disk_layers(loader: Rc<Loader>) {
        if loader.symlink_roots.is_empty() {
            return;
        }
        let weak = Rc::downgrade(&loader);
        drop(loader);
        tokio::task::spawn_local(async move {
            let identity = |roots: &[PathBuf]| -> Vec<Option<(u64, u64, i64, i64)>> {
                use std::os::unix::fs::MetadataExt;
                roots
                    .iter()
                    .map(|r| {
                        std::fs::symlink_metadata(r)
                            .ok()
                            .map(|m| (m.dev(), m.ino(), m.mtime(), m.mtime_nsec()))
                    })
                    .collect()
            };
            let mut last = match weak.upgrade() {
                Some(l) => identity(&l.symlink_roots),
                None => return,
            };
            loop {
                tokio::time::sleep(DISK_POLL).await;
                let Some(loader) = weak.upgrade() else { return };
                let now = identity(&loader.symlink_roots);
                if now != last {
                    tracing::info!("runtime disk layer swapped: reloading");
                    loader.load();
                    last = now;
                }
            }
        });
    }
}

/// The bootstrap's layers, checked.
struct Compiled {
    layers: Vec<LayerSource>,
    admin_name: Option<String>,
    symlink_roots: Vec<PathBuf>,
    rtds: Vec<RtdsLayer>,
}

/// Checks `layered_runtime` as Envoy does (unique names, at most one admin layer, proto
/// values that are not lists or nulls, RTDS layers with a config source).
pub fn validate(config: Option<&LayeredRuntime>) -> Result<(), ConfigError> {
    compile(config, "").map(|_| ())
}

fn compile(
    config: Option<&LayeredRuntime>,
    service_cluster: &str,
) -> Result<Compiled, ConfigError> {
    let mut layers = Vec::new();
    let mut names = HashSet::new();
    let mut admin_name = None;
    let mut symlink_roots = Vec::new();
    let mut rtds = Vec::new();
    let configured = config.map(|c| c.layers.as_slice()).unwrap_or_default();
    for (i, l) in configured.iter().enumerate() {
        let path = format!("layered_runtime.layers[{i}]");
        if !names.insert(l.name.as_str()) {
            return Err(ConfigError::new(
                format!("{path}.name"),
                format!("Duplicate layer name: {}", l.name),
            ));
        }
        layers.push(match &l.layer_specifier {
            Some(LayerSpecifier::StaticLayer(s)) => LayerSource::Static(Arc::new(Layer {
                name: l.name.clone(),
                values: layer::proto_layer(s, &format!("{path}.static_layer"))?,
            })),
            Some(LayerSpecifier::DiskLayer(d)) => {
                let mut dir = PathBuf::from(format!("{}/{}", d.symlink_root, d.subdirectory));
                if d.append_service_cluster {
                    dir.push(service_cluster);
                }
                symlink_roots.push(PathBuf::from(&d.symlink_root));
                LayerSource::Disk {
                    name: l.name.clone(),
                    dir,
                }
            }
            Some(LayerSpecifier::AdminLayer(_)) => {
                if admin_name.is_some() {
                    return Err(ConfigError::new(
                        path,
                        "Too many admin layers specified in LayeredRuntime, at most one may be specified",
                    ));
                }
                admin_name = Some(l.name.clone());
                LayerSource::Admin
            }
            Some(LayerSpecifier::RtdsLayer(r)) => {
                let source = rtds::validate(r, &format!("{path}.rtds_layer"))?;
                rtds.push(RtdsLayer::new(l.name.clone(), r.name.clone(), source));
                LayerSource::Rtds(rtds.len() - 1)
            }
            None => {
                return Err(ConfigError::new(
                    path,
                    "layer_specifier is required (static_layer, disk_layer, admin_layer or rtds_layer)",
                ))
            }
        });
    }
    Ok(Compiled {
        layers,
        admin_name,
        symlink_roots,
        rtds,
    })
}
