//! The RDS route provider's worker side: the route tables RDS delivered, as this worker
//! sees them.
//!
//! The main thread publishes every new [`RouteSnapshot`] through a slot whose `apply` is
//! [`apply_on_worker`]; a request on an RDS listener then finds its table with [`table`],
//! from the connection's handler and hyper's tasks alike.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use crate::http::route::RouteTable;

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
