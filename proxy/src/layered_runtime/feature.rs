//! Runtime-overridable values as compiled configs hold them: a default from the config,
//! and the key whose runtime value (if any) wins.

use std::sync::Arc;

use courier_proto::envoy::config::core::v3 as core;

use crate::config::{ConfigError, Fraction};

/// A `RuntimeFractionalPercent`: `default_value`, overridden by `runtime_key`.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeFraction {
    key: Option<Arc<str>>,
    default: Fraction,
}

impl RuntimeFraction {
    /// A share no runtime key overrides.
    pub const fn fixed(default: Fraction) -> RuntimeFraction {
        RuntimeFraction { key: None, default }
    }

    /// A default share that `key` (if not empty) overrides.
    pub fn keyed(key: &str, default: Fraction) -> RuntimeFraction {
        RuntimeFraction {
            key: (!key.is_empty()).then(|| Arc::from(key)),
            default,
        }
    }

    /// The `RuntimeFractionalPercent` at `path` (its `default_value` is required).
    pub fn compile(
        p: &core::RuntimeFractionalPercent,
        path: &str,
    ) -> Result<RuntimeFraction, ConfigError> {
        let default = p.default_value.as_ref().map(Fraction::of).ok_or_else(|| {
            ConfigError::new(format!("{path}.default_value"), "value is required")
        })?;
        Ok(RuntimeFraction::keyed(&p.runtime_key, default))
    }

    /// The share now in effect.
    pub fn current(&self) -> Fraction {
        match &self.key {
            None => self.default,
            Some(key) => super::snapshot().fraction(key, self.default),
        }
    }

    /// Whether this request falls in the share (a fresh draw).
    pub fn sample(&self) -> bool {
        self.current().sample()
    }

    /// Whether the request with this random value falls in the share.
    pub fn contains(&self, random: u64) -> bool {
        self.current().contains(random)
    }
}

/// A `RuntimeFeatureFlag`: `default_value` (true when unset), overridden by `runtime_key`.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeFlag {
    key: Option<Arc<str>>,
    default: bool,
}

impl RuntimeFlag {
    /// A flag that is always `value`.
    pub const fn fixed(value: bool) -> RuntimeFlag {
        RuntimeFlag {
            key: None,
            default: value,
        }
    }

    /// A `RuntimeFeatureFlag` (absent: always on).
    pub fn compile(flag: Option<&core::RuntimeFeatureFlag>) -> RuntimeFlag {
        match flag {
            None => RuntimeFlag::fixed(true),
            Some(f) => RuntimeFlag {
                key: (!f.runtime_key.is_empty()).then(|| Arc::from(f.runtime_key.as_str())),
                default: f.default_value.as_ref().is_none_or(|v| v.value),
            },
        }
    }

    /// Whether the flag is on now.
    pub fn enabled(&self) -> bool {
        match &self.key {
            None => self.default,
            Some(key) => super::snapshot().get_boolean(key, self.default),
        }
    }
}
