//! The overload manager (bootstrap `overload_manager`): resource monitors and what the
//! proxy does when a resource runs short.
//!
//! Built: the `envoy.resource_monitors.global_downstream_max_connections` monitor
//! (`DownstreamConnectionsConfig`), a proactive resource checked by every worker as it
//! accepts ([`connection_limit`]); without it, the runtime key
//! `overload.global_downstream_max_connections`, as in Envoy, and else — where Envoy has
//! no limit — a default derived from the file-descriptor limit, so that a connection
//! flood is refused cleanly (`downstream_global_cx_overflow`) before descriptors run out
//! for upstreams and the admin. A listener with `ignore_global_conn_limit` is exempt.
//!
//! Not built yet, refused by path: reactive monitors (`fixed_heap`, `cgroup_memory`, …),
//! `actions`, `loadshed_points`, `buffer_factory_config`.

pub mod connection_limit;

use courier_proto::envoy::config::overload::v3::resource_monitor::ConfigType;
use courier_proto::envoy::config::overload::v3::OverloadManager;
use courier_proto::envoy::extensions::resource_monitors::downstream_connections::v3::DownstreamConnectionsConfig;
use courier_proto::google::protobuf::Any;

use crate::config::ConfigError;
use crate::extensions::{Factory, Registry};
use connection_limit::LimitSource;

/// The name the downstream-connections monitor must have (Envoy's proactive resource).
pub const GLOBAL_DOWNSTREAM_MAX_CONNECTIONS: &str =
    "envoy.resource_monitors.global_downstream_max_connections";

/// What a resource monitor compiles to.
enum Monitor {
    /// A proactive limit on downstream connections.
    DownstreamConnections(u64),
}

type BuildMonitor = fn(&Any) -> Result<Monitor, ConfigError>;

/// The resource monitors an `overload_manager` may name.
static RESOURCE_MONITORS: Registry<BuildMonitor> = Registry {
    point: "resource monitor",
    factories: &[Factory {
        type_name: "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
        name: GLOBAL_DOWNSTREAM_MAX_CONNECTIONS,
        build: downstream_connections,
    }],
};

fn downstream_connections(any: &Any) -> Result<Monitor, ConfigError> {
    let c: DownstreamConnectionsConfig = courier_proto::unpack_any(any)
        .map_err(|e| ConfigError::new("typed_config", e.to_string()))?;
    let max = u64::try_from(c.max_active_downstream_connections)
        .ok()
        .filter(|m| *m > 0)
        .ok_or_else(|| {
            ConfigError::new(
                "typed_config.max_active_downstream_connections",
                "value must be greater than 0",
            )
        })?;
    Ok(Monitor::DownstreamConnections(max))
}

/// Where the global connection limit comes from, per the bootstrap's `overload_manager`
/// (checked as Envoy checks it; what is not built is refused by path).
pub fn compile(om: Option<&OverloadManager>, nofile: u64) -> Result<LimitSource, ConfigError> {
    let default = LimitSource::RuntimeOrDefault(connection_limit::default_from_fd_limit(nofile));
    let Some(om) = om else {
        return Ok(default);
    };
    for (field, set) in [
        ("overload_manager.actions", !om.actions.is_empty()),
        (
            "overload_manager.loadshed_points",
            !om.loadshed_points.is_empty(),
        ),
        (
            "overload_manager.buffer_factory_config",
            om.buffer_factory_config.is_some(),
        ),
    ] {
        if set {
            return Err(ConfigError::unsupported(field));
        }
    }
    let mut source = default;
    let mut names = std::collections::HashSet::new();
    for (i, m) in om.resource_monitors.iter().enumerate() {
        let path = format!("overload_manager.resource_monitors[{i}]");
        if !names.insert(m.name.as_str()) {
            return Err(ConfigError::new(
                format!("{path}.name"),
                format!("Duplicate resource monitor {}", m.name),
            ));
        }
        let typed = m
            .config_type
            .as_ref()
            .map(|ConfigType::TypedConfig(any)| any);
        let Some(found) = RESOURCE_MONITORS.resolve(typed, &m.name, false, &path)? else {
            continue;
        };
        let config = found.config.unwrap_or_default();
        match (found.factory.build)(&config).map_err(|e| e.at(&path))? {
            Monitor::DownstreamConnections(max) => {
                if m.name != GLOBAL_DOWNSTREAM_MAX_CONNECTIONS {
                    return Err(ConfigError::new(
                        format!("{path}.name"),
                        format!(
                            "the downstream connections monitor must be named {GLOBAL_DOWNSTREAM_MAX_CONNECTIONS}, not {}",
                            m.name
                        ),
                    ));
                }
                source = LimitSource::Monitor(max);
            }
        }
    }
    Ok(source)
}
