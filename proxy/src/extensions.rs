//! The extension registry: where a config's `typed_config` (or, without one, its
//! well-known name) is resolved to the factory of the extension that implements it.
//!
//! Each extension point (HTTP filters, per-route filter configs, network filters, …) is a
//! [`Registry`]: a static table of [`Factory`] entries, one line per extension, kept next
//! to the extensions themselves (e.g. `filters::http`). [`Registry::resolve`] applies
//! Envoy's rules for every point alike:
//! - a `TypedStruct` (`xds.type.v3` or `udpa.type.v1`) is unwrapped to the config it
//!   stands for;
//! - an extension is found by its config's type, else (no `typed_config`) by its name;
//! - an unknown extension marked `is_optional` is skipped with a warning; any other is
//!   refused, naming its path, name and type as Envoy's message does.

use courier_proto::google::protobuf::Any;

use crate::config::ConfigError;

/// One extension: the config message it takes and the factory that builds it.
pub struct Factory<F: 'static> {
    /// The config message's full name (`envoy.extensions.filters.http.cors.v3.Cors`).
    pub type_name: &'static str,
    /// The extension's well-known name, for configs without a `typed_config`.
    pub name: &'static str,
    /// Builds the extension from its config.
    pub build: F,
}

/// The extensions of one extension point.
pub struct Registry<F: 'static> {
    /// What the point is, in messages (`HTTP filter`).
    pub point: &'static str,
    /// Its extensions.
    pub factories: &'static [Factory<F>],
}

/// An extension found for a config: its factory and its config (a `TypedStruct`
/// unwrapped).
pub struct Resolved<F: 'static> {
    /// The factory.
    pub factory: &'static Factory<F>,
    /// The config, when one was given.
    pub config: Option<Any>,
}

impl<F> Registry<F> {
    /// The extension for `typed_config` (or `name`) at `path`; `None` when it is unknown
    /// and `is_optional`.
    pub fn resolve(
        &self,
        typed_config: Option<&Any>,
        name: &str,
        is_optional: bool,
        path: &str,
    ) -> Result<Option<Resolved<F>>, ConfigError> {
        let config = match typed_config {
            Some(any) => Some(match courier_proto::unwrap_typed_struct(any) {
                Some(inner) => inner
                    .map_err(|e| ConfigError::new(format!("{path}.typed_config"), e.to_string()))?,
                None => any.clone(),
            }),
            None => None,
        };
        let type_name = config
            .as_ref()
            .map(|c| courier_proto::type_url::message_name(&c.type_url).to_string())
            .unwrap_or_default();
        let found = self.factories.iter().find(|f| match &config {
            Some(_) => f.type_name == type_name,
            None => f.name == name,
        });
        match found {
            Some(factory) => Ok(Some(Resolved { factory, config })),
            None if is_optional => {
                tracing::warn!(
                    path,
                    name,
                    type_name,
                    point = self.point,
                    "optional extension not supported: skipped"
                );
                Ok(None)
            }
            None => Err(ConfigError::new(
                path,
                format!(
                    "Didn't find a registered implementation for '{name}' with type URL: '{type_name}'"
                ),
            )),
        }
    }

    /// Whether `type_name` is one of this point's config types.
    pub fn knows(&self, type_name: &str) -> bool {
        self.factories.iter().any(|f| f.type_name == type_name)
    }
}

#[cfg(test)]
mod tests {
    use courier_proto::google::protobuf::{value::Kind, Any, Struct, Value};
    use prost::Message;

    use crate::filters::http::CHAIN;

    fn typed_struct(wrapper: &str, inner: &str, fields: &[(&str, f64)]) -> Any {
        let value = Struct {
            fields: fields
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        Value {
                            kind: Some(Kind::NumberValue(*v)),
                        },
                    )
                })
                .collect(),
        };
        let ts = courier_proto::typed_struct::TypedStruct {
            type_url: format!("type.googleapis.com/{inner}"),
            value: Some(value),
        };
        Any {
            type_url: format!("type.googleapis.com/{wrapper}"),
            value: ts.encode_to_vec(),
        }
    }

    #[test]
    fn a_typed_struct_is_unwrapped_to_the_config_it_stands_for() {
        for wrapper in ["xds.type.v3.TypedStruct", "udpa.type.v1.TypedStruct"] {
            let any = typed_struct(
                wrapper,
                "envoy.extensions.filters.http.fault.v3.HTTPFault",
                &[("max_active_faults", 7.0)],
            );
            let found = CHAIN
                .resolve(Some(&any), "f", false, "http_filters[0]")
                .expect("resolves")
                .expect("a known filter");
            assert_eq!(found.factory.name, "envoy.filters.http.fault");
            let fault: courier_proto::envoy::extensions::filters::http::fault::v3::HttpFault =
                courier_proto::unpack_any(found.config.as_ref().expect("config")).expect("fault");
            assert_eq!(fault.max_active_faults.map(|v| v.value), Some(7));
        }
    }

    #[test]
    fn unknown_extensions_are_skipped_when_optional_and_refused_otherwise() {
        let any = Any {
            type_url: "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm".into(),
            value: Vec::new(),
        };
        assert!(CHAIN
            .resolve(Some(&any), "wasm", true, "http_filters[1]")
            .expect("optional")
            .is_none());
        let err = CHAIN
            .resolve(Some(&any), "wasm", false, "http_filters[1]")
            .err()
            .expect("refused");
        assert_eq!(err.path, "http_filters[1]");
        assert!(err.message.contains("'wasm'"), "{}", err.message);
        assert!(
            err.message
                .contains("envoy.extensions.filters.http.wasm.v3.Wasm"),
            "{}",
            err.message
        );
        // Without a typed_config, the well-known name finds the filter.
        assert!(CHAIN
            .resolve(None, "envoy.filters.http.cors", false, "x")
            .expect("by name")
            .is_some());
    }

    #[test]
    fn a_typed_struct_with_a_bad_field_is_refused_at_its_path() {
        let any = typed_struct(
            "xds.type.v3.TypedStruct",
            "envoy.extensions.filters.http.fault.v3.HTTPFault",
            &[("no_such_field", 1.0)],
        );
        let err = CHAIN
            .resolve(Some(&any), "f", false, "http_filters[0]")
            .err()
            .expect("refused");
        assert_eq!(err.path, "http_filters[0].typed_config");
        assert!(err.message.contains("no_such_field"), "{}", err.message);
    }
}
