//! The RDS route provider: the route tables RDS delivered.
//!
//! On the main thread, the [`RouteProvider`] keeps them (the xDS client feeds it) and
//! publishes every change as one [`RouteSnapshot`] through a slot whose `apply` is
//! [`apply_on_worker`]; on a worker, a request on an RDS listener finds its table with
//! [`table`], from the connection's handler and hyper's tasks alike.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use courier_runtime::thread_local::Slot;

use super::RouteTable;

/// The main thread's RDS route tables, by route configuration name.
pub struct RouteProvider {
    slot: Slot<RouteSnapshot>,
    tables: BTreeMap<String, Arc<RouteTable>>,
}

impl RouteProvider {
    /// A provider publishing through `slot` (an empty snapshot at once).
    pub fn new(slot: Slot<RouteSnapshot>) -> RouteProvider {
        slot.set(Arc::new(RouteSnapshot::default()));
        RouteProvider {
            slot,
            tables: BTreeMap::new(),
        }
    }

    /// Whether a table named `name` is held.
    pub fn contains(&self, name: &str) -> bool {
        self.tables.contains_key(name)
    }

    /// Every table held, by name.
    pub fn tables(&self) -> impl Iterator<Item = &Arc<RouteTable>> {
        self.tables.values()
    }

    /// Whether the held table of `table`'s name has the same configuration.
    pub fn same_proto(&self, table: &RouteTable) -> bool {
        self.tables
            .get(&table.name)
            .is_some_and(|held| held.proto == table.proto)
    }

    /// Takes `table` (a new one, or a new version), to be published.
    pub fn set(&mut self, table: Arc<RouteTable>) {
        self.tables.insert(table.name.clone(), table);
    }

    /// Drops the table `name` (no listener needs it any more), to be published.
    pub fn remove(&mut self, name: &str) {
        self.tables.remove(name);
    }

    /// Keeps only the tables `keep` names; whether any was dropped (to be published).
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) -> bool {
        let before = self.tables.len();
        self.tables.retain(|name, _| keep(name));
        self.tables.len() != before
    }

    /// Publishes the tables held to every worker.
    pub fn publish(&self) {
        self.slot.set(Arc::new(RouteSnapshot {
            tables: self
                .tables
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }));
    }
}

/// Route tables from RDS by route configuration name, published to workers through a slot.
#[derive(Default)]
pub struct RouteSnapshot {
    /// Compiled tables by `RouteConfiguration.name`.
    pub tables: HashMap<String, Arc<RouteTable>>,
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<RouteSnapshot>>> = const { RefCell::new(None) };
}

/// Takes `snapshot` as this worker's RDS tables (a slot's `apply`).
pub fn apply_on_worker(snapshot: &Arc<RouteSnapshot>) {
    let old = CURRENT.with(|c| c.replace(Some(snapshot.clone())));
    // The old tables may be the last reference: freed outside the borrow.
    drop(old);
}

/// This worker's current table named `route_config_name`.
#[inline]
pub fn table(route_config_name: &str) -> Option<Arc<RouteTable>> {
    CURRENT.with(|c| {
        c.borrow()
            .as_ref()
            .and_then(|s| s.tables.get(route_config_name).cloned())
    })
}
