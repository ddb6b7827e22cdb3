//! A route's or virtual host's `metadata.filter_metadata`, kept for the filters that read
//! it (Lua's `metadata()`, `route():metadata()`).

use std::collections::HashMap;
use std::sync::Arc;

use courier_proto::google::protobuf::Struct;

/// `metadata.filter_metadata`, each namespace shared, so that a filter's run takes one
/// without copying it.
pub type FilterMetadata = HashMap<String, Arc<Struct>>;

/// Compiles a `Metadata`'s `filter_metadata`; `None` when it has none (routes without
/// metadata cost nothing).
pub fn filter_metadata(
    m: Option<&courier_proto::envoy::config::core::v3::Metadata>,
) -> Option<Arc<FilterMetadata>> {
    let m = m.filter(|m| !m.filter_metadata.is_empty())?;
    Some(Arc::new(
        m.filter_metadata
            .iter()
            .map(|(k, v)| (k.clone(), Arc::new(v.clone())))
            .collect(),
    ))
}
