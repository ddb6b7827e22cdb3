//! Resource monitors: how short a resource is, as a pressure in `[0, 1]`, read by the
//! overload manager on every refresh (Envoy's reactive `ResourceMonitor`s) — and the
//! proactive downstream-connections limit, which workers check themselves.

use std::path::PathBuf;

use courier_proto::envoy::extensions::resource_monitors::cgroup_memory::v3::CgroupMemoryConfig;
use courier_proto::envoy::extensions::resource_monitors::downstream_connections::v3::DownstreamConnectionsConfig;
use courier_proto::envoy::extensions::resource_monitors::fixed_heap::v3::FixedHeapConfig;
use courier_proto::envoy::extensions::resource_monitors::injected_resource::v3::InjectedResourceConfig;
use courier_proto::google::protobuf::Any;

use crate::config::ConfigError;
use crate::extensions::{Factory, Registry};

/// A configured resource monitor.
#[derive(Debug, Clone, PartialEq)]
pub enum Monitor {
    /// `downstream_connections`: a proactive limit on downstream connections.
    DownstreamConnections(u64),
    /// `injected_resource`: the pressure written in a file (Envoy's test monitor, handy
    /// to drive overload from outside).
    Injected(PathBuf),
    /// `fixed_heap`: heap in use over `max_heap_size_bytes`.
    FixedHeap(u64),
    /// `cgroup_memory`: the cgroup's memory use over its limit (or `max_memory_bytes`,
    /// whichever is lower).
    CgroupMemory(Option<u64>),
}

type BuildMonitor = fn(&Any) -> Result<Monitor, ConfigError>;

/// The resource monitors an `overload_manager` may name.
pub static RESOURCE_MONITORS: Registry<BuildMonitor> = Registry {
    point: "resource monitor",
    factories: &[
        Factory {
            type_name: "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
            name: super::GLOBAL_DOWNSTREAM_MAX_CONNECTIONS,
            build: downstream_connections,
        },
        Factory {
            type_name: "envoy.extensions.resource_monitors.injected_resource.v3.InjectedResourceConfig",
            name: "envoy.resource_monitors.injected_resource",
            build: injected_resource,
        },
        Factory {
            type_name: "envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
            name: "envoy.resource_monitors.fixed_heap",
            build: fixed_heap,
        },
        Factory {
            type_name: "envoy.extensions.resource_monitors.cgroup_memory.v3.CgroupMemoryConfig",
            name: "envoy.resource_monitors.cgroup_memory",
            build: cgroup_memory,
        },
    ],
};

fn unpack<M: prost::Message + prost::Name + Default>(any: &Any) -> Result<M, ConfigError> {
    courier_proto::unpack_any(any).map_err(|e| ConfigError::new("typed_config", e.to_string()))
}

fn downstream_connections(any: &Any) -> Result<Monitor, ConfigError> {
    let c: DownstreamConnectionsConfig = unpack(any)?;
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

fn injected_resource(any: &Any) -> Result<Monitor, ConfigError> {
    let c: InjectedResourceConfig = unpack(any)?;
    if c.filename.is_empty() {
        return Err(ConfigError::new(
            "typed_config.filename",
            "value length must be at least 1 characters",
        ));
    }
    Ok(Monitor::Injected(PathBuf::from(c.filename)))
}

fn fixed_heap(any: &Any) -> Result<Monitor, ConfigError> {
    let c: FixedHeapConfig = unpack(any)?;
    if c.max_heap_size_bytes == 0 {
        return Err(ConfigError::new(
            "typed_config.max_heap_size_bytes",
            "value must be greater than 0",
        ));
    }
    Ok(Monitor::FixedHeap(c.max_heap_size_bytes))
}

fn cgroup_memory(any: &Any) -> Result<Monitor, ConfigError> {
    let c: CgroupMemoryConfig = unpack(any)?;
    Ok(Monitor::CgroupMemory(
        (c.max_memory_bytes > 0).then_some(c.max_memory_bytes),
    ))
}

impl Monitor {
    /// Whether workers check this resource themselves (it has no pressure to read).
    pub fn is_proactive(&self) -> bool {
        matches!(self, Monitor::DownstreamConnections(_))
    }

    /// The resource's pressure now, in `[0, 1]` (more is saturated).
    pub fn pressure(&self) -> Result<f64, String> {
        match self {
            Monitor::DownstreamConnections(max) => {
                Ok(super::connection_limit::active() as f64 / *max as f64)
            }
            Monitor::Injected(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let p: f64 = text
                    .trim()
                    .parse()
                    .map_err(|e| format!("{}: not a pressure: {e}", path.display()))?;
                if !(0.0..=1.0).contains(&p) {
                    return Err(format!(
                        "{}: pressure {p} is outside [0, 1]",
                        path.display()
                    ));
                }
                Ok(p)
            }
            // Envoy reads tcmalloc's bytes in use; here glibc's.
            Monitor::FixedHeap(max) => Ok(crate::memory::heap_stats().in_use as f64 / *max as f64),
            Monitor::CgroupMemory(max) => {
                let (usage, limit) = cgroup_memory_use()?;
                let limit = match (limit, max) {
                    (Some(l), Some(m)) => l.min(*m),
                    (Some(l), None) => l,
                    (None, Some(m)) => *m,
                    (None, None) => return Ok(0.0),
                };
                Ok(usage as f64 / limit.max(1) as f64)
            }
        }
    }
}

/// The process's cgroup memory use and limit (`None`: unlimited), v2 then v1.
fn cgroup_memory_use() -> Result<(u64, Option<u64>), String> {
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_string());
    let number = |p: &str, s: &str| {
        s.parse::<u64>()
            .map_err(|e| format!("{p}: not a number ({s:?}): {e}"))
    };
    if let Ok(current) = read("/sys/fs/cgroup/memory.current") {
        let usage = number("memory.current", &current)?;
        let limit = match read("/sys/fs/cgroup/memory.max").as_deref() {
            Ok("max") | Err(_) => None,
            Ok(v) => Some(number("memory.max", v)?),
        };
        return Ok((usage, limit));
    }
    let usage = read("/sys/fs/cgroup/memory/memory.usage_in_bytes")
        .map_err(|e| format!("no cgroup memory accounting: {e}"))?;
    let usage = number("memory.usage_in_bytes", &usage)?;
    // v1 reports an unlimited cgroup as a huge number.
    let limit = read("/sys/fs/cgroup/memory/memory.limit_in_bytes")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|l| *l < (1 << 62));
    Ok((usage, limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_injected_pressure_is_read_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p");
        let m = Monitor::Injected(path.clone());
        assert!(m.pressure().is_err(), "a missing file is a failed update");
        std::fs::write(&path, "0.25\n").expect("write");
        assert_eq!(m.pressure(), Ok(0.25));
        std::fs::write(&path, "1.5").expect("write");
        assert!(m.pressure().is_err());
    }

    #[test]
    fn the_heap_in_use_is_seen() {
        let held = vec![7u8; 8 << 20];
        assert!(Monitor::FixedHeap(1 << 40).pressure().expect("reads") > 0.0);
        drop(held);
    }
}
