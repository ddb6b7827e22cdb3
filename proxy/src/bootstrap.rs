//! Loading the Envoy v3 Bootstrap and checking what Courier supports of it.

use std::path::Path;

use courier_proto::envoy::config::bootstrap::v3::Bootstrap;
use courier_proto::envoy::config::core::v3::{Locality, Node};

use crate::options::Options;

/// Why the bootstrap cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// Neither --config-path nor --config-yaml was given.
    #[error("no configuration: pass -c/--config-path or --config-yaml")]
    Missing,
    // The causes are part of the message, deliberately not `#[source]`: the error is
    // printed with its chain (`{:#}`), which would repeat them.
    /// The file cannot be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The text does not parse as a Bootstrap.
    #[error("{origin}: {error}")]
    Parse {
        /// Which input (file path or `--config-yaml`).
        origin: String,
        /// The field-path error.
        error: courier_proto::LoadError,
    },
    /// A field Courier does not implement.
    #[error("{0}")]
    Unsupported(#[from] crate::config::ConfigError),
}

/// Loads the bootstrap from `-c` and/or `--config-yaml` (merged over the file, as Envoy
/// does) and applies the `--service-*` overrides.
pub fn load(options: &Options) -> Result<Bootstrap, BootstrapError> {
    let mut bootstrap = match &options.config_path {
        Some(path) => load_file(path)?,
        None if options.config_yaml.is_some() => Bootstrap::default(),
        None => return Err(BootstrapError::Missing),
    };
    if let Some(yaml) = &options.config_yaml {
        let overlay: Bootstrap =
            courier_proto::from_yaml(yaml).map_err(|error| BootstrapError::Parse {
                origin: "--config-yaml".into(),
                error,
            })?;
        merge(&mut bootstrap, overlay);
    }
    let node = bootstrap.node.get_or_insert_with(Node::default);
    if let Some(id) = &options.service_node {
        node.id = id.clone();
    }
    if let Some(cluster) = &options.service_cluster {
        node.cluster = cluster.clone();
    }
    if let Some(zone) = &options.service_zone {
        node.locality.get_or_insert_with(Locality::default).zone = zone.clone();
    }
    crate::server::local_info::set_service_cluster(&node.cluster);
    crate::server::local_info::set_node(crate::server::local_info::NodeInfo {
        id: node.id.clone(),
        cluster: node.cluster.clone(),
        zone: node
            .locality
            .as_ref()
            .map(|l| l.zone.clone())
            .unwrap_or_default(),
    });
    node.user_agent_name = "courier".into();
    node.user_agent_version_type = Some(
        courier_proto::envoy::config::core::v3::node::UserAgentVersionType::UserAgentVersion(
            crate::VERSION.into(),
        ),
    );
    crate::server::local_info::set_node_proto(node.clone());
    // Envoy names a static listener that has none (a random UUID).
    if let Some(sr) = bootstrap.static_resources.as_mut() {
        for l in sr.listeners.iter_mut().filter(|l| l.name.is_empty()) {
            l.name = crate::http::conn_manager::headers::uuid4_value()
                .to_str()
                .unwrap_or_default()
                .to_string();
        }
    }
    check_supported(&bootstrap)?;
    Ok(bootstrap)
}

fn load_file(path: &Path) -> Result<Bootstrap, BootstrapError> {
    let text = std::fs::read_to_string(path).map_err(|error| BootstrapError::Read {
        path: path.display().to_string(),
        error,
    })?;
    let origin = path.display().to_string();
    let parsed = if path.extension().is_some_and(|e| e == "json") {
        courier_proto::from_json(&text)
    } else {
        courier_proto::from_yaml(&text)
    };
    parsed.map_err(|error| BootstrapError::Parse { origin, error })
}

/// Proto merge semantics for the fields `--config-yaml` is used for: repeated fields
/// append, set messages replace.
fn merge(base: &mut Bootstrap, overlay: Bootstrap) {
    use prost::Message;
    // Encoding then merging is exactly protobuf's MergeFrom.
    let bytes = overlay.encode_to_vec();
    if let Err(e) = base.merge(bytes.as_slice()) {
        tracing::warn!(error = %e, "cannot merge --config-yaml");
    }
}

/// Rejects bootstrap features Courier does not implement and that would change behaviour.
/// Accepted without effect, as they change nothing visible here: `deferred_stat_options`,
/// `inline_headers` and `grpc_async_client_manager_config` (Envoy-internal tuning).
#[allow(deprecated)] // `tracing` is deprecated in the proto, still honoured by Envoy
fn check_supported(b: &Bootstrap) -> Result<(), crate::config::ConfigError> {
    use crate::config::ConfigError;
    let unsupported = [
        (
            "cluster_manager.load_stats_config",
            b.cluster_manager
                .as_ref()
                .is_some_and(|c| c.load_stats_config.is_some()),
        ),
        (
            "cluster_manager.outlier_detection.event_service",
            b.cluster_manager
                .as_ref()
                .and_then(|c| c.outlier_detection.as_ref())
                .is_some_and(|o| o.event_service.is_some()),
        ),
        // Envoy routes zone-aware against the local cluster once it is named.
        (
            "cluster_manager.local_cluster_name",
            b.cluster_manager
                .as_ref()
                .is_some_and(|c| !c.local_cluster_name.is_empty()),
        ),
        // Not built; each changes behaviour, so each is refused rather than ignored.
        ("node_context_params", !b.node_context_params.is_empty()),
        ("hds_config", b.hds_config.is_some()),
        ("flags_path", !b.flags_path.is_empty()),
        ("watchdog", b.watchdog.is_some()),
        ("watchdogs", b.watchdogs.is_some()),
        ("enable_dispatcher_stats", b.enable_dispatcher_stats),
        ("header_prefix", !b.header_prefix.is_empty()),
        (
            "stats_server_version_override",
            b.stats_server_version_override.is_some(),
        ),
        ("bootstrap_extensions", !b.bootstrap_extensions.is_empty()),
        ("fatal_actions", !b.fatal_actions.is_empty()),
        ("config_sources", !b.config_sources.is_empty()),
        ("default_config_source", b.default_config_source.is_some()),
        (
            "default_socket_interface",
            !b.default_socket_interface.is_empty(),
        ),
        (
            "certificate_provider_instances",
            !b.certificate_provider_instances.is_empty(),
        ),
        (
            "perf_tracing_file_path",
            !b.perf_tracing_file_path.is_empty(),
        ),
        ("default_regex_engine", b.default_regex_engine.is_some()),
        ("xds_delegate_extension", b.xds_delegate_extension.is_some()),
        (
            "xds_config_tracker_extension",
            b.xds_config_tracker_extension.is_some(),
        ),
        ("application_log_config", b.application_log_config.is_some()),
        (
            "memory_allocator_manager",
            b.memory_allocator_manager.is_some(),
        ),
        ("enable_worker_cpu_affinity", b.enable_worker_cpu_affinity),
        ("stats_eviction", b.stats_eviction.is_some()),
    ];
    if let Some((field, _)) = unsupported.iter().find(|(_, set)| *set) {
        return Err(ConfigError::unsupported(*field));
    }
    upstream_bind_config(b)?;
    crate::layered_runtime::validate(b.layered_runtime.as_ref())?;
    crate::overload::compile(b.overload_manager.as_ref(), 0)?;
    crate::server::stats_config::compile(b)?;
    crate::stats::sinks::compile(b)?;
    crate::tracers::set_bootstrap_provider(b)?;
    Ok(())
}

/// The bootstrap's `cluster_manager.upstream_bind_config`, compiled.
pub fn upstream_bind_config(
    b: &Bootstrap,
) -> Result<Option<crate::upstream::bind_config::BindConfig>, crate::config::ConfigError> {
    b.cluster_manager
        .as_ref()
        .and_then(|c| c.upstream_bind_config.as_ref())
        .map(|bind| {
            crate::upstream::bind_config::BindConfig::compile(
                bind,
                "cluster_manager.upstream_bind_config",
            )
        })
        .transpose()
}
