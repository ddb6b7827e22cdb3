//! What the network filters share: stat names joined as Envoy joins them, and their
//! `runtime_enabled` flags checked as Envoy's proto validation checks them.

use courier_proto::envoy::config::core::v3::RuntimeFeatureFlag;

use crate::config::ConfigError;
use crate::layered_runtime::RuntimeFlag;

/// Envoy's `statPrefixJoin`: `prefix` and `name` joined by one dot.
pub fn join(prefix: &str, name: &str) -> String {
    match prefix {
        "" => name.to_string(),
        p if p.ends_with('.') => format!("{p}{name}"),
        p => format!("{p}.{name}"),
    }
}

/// A filter's `runtime_enabled` (unset: always on); its `default_value` and
/// `runtime_key` are required, as Envoy validates them.
pub fn runtime_enabled(flag: Option<&RuntimeFeatureFlag>) -> Result<RuntimeFlag, ConfigError> {
    if let Some(f) = flag {
        if f.default_value.is_none() {
            return Err(ConfigError::new(
                "runtime_enabled.default_value",
                "value is required",
            ));
        }
        if f.runtime_key.is_empty() {
            return Err(ConfigError::new(
                "runtime_enabled.runtime_key",
                "value length must be at least 1 characters",
            ));
        }
    }
    Ok(RuntimeFlag::compile(flag))
}
