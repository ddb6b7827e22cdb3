//! The xDS client: config sources, subscriptions and applying what they deliver.

use courier_proto::envoy::config::bootstrap::v3::Bootstrap;
use courier_proto::envoy::config::core::v3::ConfigSource;

use crate::config::ConfigError;
use crate::http::RouteSnapshot;
use crate::thread_local::Slot;
use crate::server::{Server, ServerState};

/// What the xDS client knows, for admin.
pub struct XdsState {
    cds_version: Option<String>,
    lds_version: Option<String>,
    route_slot: Slot<RouteSnapshot>,
}

impl XdsState {
    /// State publishing RDS tables through `route_slot`.
    pub fn new(route_slot: Slot<RouteSnapshot>) -> XdsState {
        route_slot.set(std::sync::Arc::new(RouteSnapshot::default()));
        XdsState {
            cds_version: None,
            lds_version: None,
            route_slot,
        }
    }

    /// Extra config_dump sections.
    pub fn dumps(&self) -> Vec<serde_json::Value> {
        Vec::new()
    }

    /// Last accepted CDS version.
    pub fn cds_version(&self) -> Option<String> {
        self.cds_version.clone()
    }

    /// Last accepted LDS version.
    pub fn lds_version(&self) -> Option<String> {
        self.lds_version.clone()
    }
}

/// Checks a `ConfigSource` names something Courier can subscribe with.
pub fn validate_config_source(_source: &ConfigSource) -> Result<(), ConfigError> {
    Ok(())
}

/// Checks `dynamic_resources` (validate mode).
pub fn validate_bootstrap(bootstrap: &Bootstrap) -> Result<(), ConfigError> {
    if bootstrap.dynamic_resources.is_some() {
        return Err(ConfigError::unsupported("dynamic_resources"));
    }
    Ok(())
}

/// Starts subscriptions and completes initialisation: the server becomes LIVE and workers
/// start accepting.
pub async fn start(server: &Server) -> anyhow::Result<()> {
    validate_bootstrap(&server.bootstrap).map_err(|e| anyhow::anyhow!("{e}"))?;
    server.listener_manager.borrow_mut().start_workers();
    server.set_state(ServerState::Live);
    Ok(())
}
