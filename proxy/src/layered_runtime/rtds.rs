//! RTDS layers (`rtds_layer`, Envoy's `RtdsSubscription`): a runtime layer whose values are
//! the `layer` of an `envoy.service.runtime.v3.Runtime` resource a control plane serves.
//!
//! The layer is empty until its first resource arrives. An accepted resource replaces the
//! layer's values (its `layer` Struct flattened as a static layer is) and reloads the
//! runtime; a delta removal (or the resource's TTL expiring) empties the layer. A resource
//! whose values are not valid runtime entries is rejected with Envoy's message and the
//! last accepted values stay. The subscription itself (streams, ACK/NACK, initial fetch)
//! is the xDS client's ([`crate::xds`]); this module holds what it delivers.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use courier_proto::envoy::config::core::v3::ConfigSource;
use courier_proto::envoy::service::runtime::v3::Runtime;

use super::layer;
use super::snapshot::{Entry, Layer};
use crate::config::ConfigError;

/// Why an RTDS resource was rejected; the text is the NACK's detail, worded as Envoy's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtdsError {
    /// The resource delivered under a subscribed name names another runtime.
    #[error("Unexpected RTDS runtime (expecting {expected}): {actual}")]
    UnexpectedName {
        /// The name the layer subscribes to.
        expected: String,
        /// The resource's own `name`.
        actual: String,
    },
    /// A value of `layer` is not a runtime entry (a list, a null, a malformed fraction).
    #[error("{0}")]
    InvalidValue(String),
}

/// One `rtds_layer` of the bootstrap.
pub struct RtdsLayer {
    /// The layer's `name` (what `/runtime` lists).
    pub layer_name: String,
    /// The `Runtime` resource it subscribes to (`rtds_layer.name`).
    pub resource: String,
    /// Where the resource comes from (`rtds_layer.rtds_config`).
    pub config_source: ConfigSource,
    values: RefCell<Arc<Layer>>,
}

impl RtdsLayer {
    /// A layer, empty until its resource arrives.
    pub(super) fn new(
        layer_name: String,
        resource: String,
        config_source: ConfigSource,
    ) -> RtdsLayer {
        let values = RefCell::new(Arc::new(Layer {
            name: layer_name.clone(),
            values: HashMap::new(),
        }));
        RtdsLayer {
            layer_name,
            resource,
            config_source,
            values,
        }
    }

    /// The layer's current values.
    pub(super) fn current(&self) -> Arc<Layer> {
        self.values.borrow().clone()
    }

    /// Replaces the layer's values.
    pub(super) fn set(&self, values: HashMap<String, Arc<Entry>>) {
        *self.values.borrow_mut() = Arc::new(Layer {
            name: self.layer_name.clone(),
            values,
        });
    }
}

/// The runtime entries of `runtime`, delivered for the subscription to `expected`: its
/// `layer` flattened into dotted keys, after checking it is the runtime asked for.
pub fn entries(
    runtime: &Runtime,
    expected: &str,
) -> Result<HashMap<String, Arc<Entry>>, RtdsError> {
    if runtime.name != expected {
        return Err(RtdsError::UnexpectedName {
            expected: expected.to_string(),
            actual: runtime.name.clone(),
        });
    }
    match &runtime.layer {
        None => Ok(HashMap::new()),
        // The path is the resource's, not the bootstrap's: only the message is shown, as
        // Envoy's NACK shows it.
        Some(s) => layer::proto_layer(s, "").map_err(|e| RtdsError::InvalidValue(e.message)),
    }
}

/// Checks an `rtds_layer` of the bootstrap at `path`: a resource name and a config source.
pub(super) fn validate(
    rtds: &courier_proto::envoy::config::bootstrap::v3::runtime_layer::RtdsLayer,
    path: &str,
) -> Result<ConfigSource, ConfigError> {
    let source = rtds.rtds_config.clone().ok_or_else(|| {
        ConfigError::new(
            format!("{path}.rtds_config"),
            "Missing config source specifier in envoy::config::core::v3::ConfigSource",
        )
    })?;
    crate::config::validate_config_source(&source)
        .map_err(|e| e.at(&format!("{path}.rtds_config")))?;
    Ok(source)
}

#[cfg(test)]
mod tests {
    use super::*;
    use courier_proto::google::protobuf::{value::Kind, ListValue, Struct, Value};

    fn runtime(name: &str, fields: &[(&str, Kind)]) -> Runtime {
        Runtime {
            name: name.into(),
            layer: Some(Struct {
                fields: fields
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            Value {
                                kind: Some(v.clone()),
                            },
                        )
                    })
                    .collect(),
            }),
        }
    }

    #[test]
    fn a_layer_becomes_entries() {
        let r = runtime(
            "rt",
            &[
                ("a", Kind::NumberValue(30.0)),
                ("b", Kind::StringValue("x".into())),
            ],
        );
        let values = entries(&r, "rt").expect("valid");
        assert_eq!(values["a"].uint, Some(30));
        assert_eq!(values["b"].raw, "x");
    }

    #[test]
    fn a_list_is_refused_with_envoys_message() {
        let r = runtime("rt", &[("bad", Kind::ListValue(ListValue::default()))]);
        let e = entries(&r, "rt").expect_err("a list is not an entry");
        assert_eq!(e.to_string(), "Invalid runtime entry value for bad");
    }

    #[test]
    fn another_runtime_is_refused() {
        let e = entries(&runtime("other", &[]), "rt").expect_err("wrong name");
        assert_eq!(
            e.to_string(),
            "Unexpected RTDS runtime (expecting rt): other"
        );
    }

    #[test]
    fn no_layer_is_empty() {
        let r = Runtime {
            name: "rt".into(),
            layer: None,
        };
        assert!(entries(&r, "rt").expect("valid").is_empty());
    }
}
