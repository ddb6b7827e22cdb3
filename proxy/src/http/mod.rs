//! HTTP on the workers: the connection manager, its codecs, the router and route tables.

pub mod route;

use std::collections::HashMap;
use std::sync::Arc;

/// Route tables from RDS by route configuration name, published to workers through a slot.
#[derive(Default)]
pub struct RouteSnapshot {
    /// Compiled tables by `RouteConfiguration.name`.
    pub tables: HashMap<String, Arc<route::RouteTable>>,
}
