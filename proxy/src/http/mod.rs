//! HTTP on the workers: the connection manager, its codecs, the router and route tables.
//!
//! - [`hcm`]: the compiled `http_connection_manager` config ([`HcmConfig`]).
//! - [`conn`]: a downstream connection (hyper's server connection driven by the worker's
//!   runtime, see [`crate::event::rt`]).
//! - [`router`]: one request: sanitising, route selection, local replies, forwarding with
//!   retries and timeouts.
//! - [`pool`]: per-worker upstream connection pools and circuit breakers.
//! - [`route`]: route tables compiled from `RouteConfiguration`s (inline or RDS).

pub mod access_log;
pub mod body;
pub mod conn;
pub mod hcm;
pub mod headers;
pub mod pool;
pub mod route;
pub mod router;

use std::collections::HashMap;
use std::sync::Arc;

pub use hcm::{rds_route_config_names, HcmConfig, HTTP_CONNECTION_MANAGER};

/// Route tables from RDS by route configuration name, published to workers through a slot.
#[derive(Default)]
pub struct RouteSnapshot {
    /// Compiled tables by `RouteConfiguration.name`.
    pub tables: HashMap<String, Arc<route::RouteTable>>,
}
