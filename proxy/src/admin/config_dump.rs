//! `/config_dump` in Envoy's JSON shape: a `configs` list of typed dumps (bootstrap,
//! clusters, listeners), each resource embedded as an `Any` with its `@type`.

use std::time::SystemTime;

use prost::Name;
use serde_json::{json, Map, Value};

use crate::server::Server;

/// Envoy's timestamp format (RFC 3339, UTC, milliseconds).
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// `msg` as JSON with a leading `@type`, as Envoy renders an `Any`.
fn typed<M: prost::Message + Name>(msg: &M) -> Value {
    let mut map = Map::new();
    map.insert("@type".into(), Value::String(M::type_url()));
    if let Value::Object(fields) = courier_proto::to_json(msg) {
        map.extend(fields);
    }
    Value::Object(map)
}

/// The whole dump; `resource` selects one section's resources as Envoy's
/// `?resource=dynamic_active_clusters` does.
pub fn config_dump(server: &Server, resource: Option<&str>) -> Value {
    let mut bootstrap = Map::new();
    bootstrap.insert(
        "@type".into(),
        "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump".into(),
    );
    bootstrap.insert(
        "bootstrap".into(),
        courier_proto::to_json(&server.bootstrap),
    );
    bootstrap.insert("last_updated".into(), timestamp(server.started_at).into());

    let clusters = clusters_dump(server);
    let listeners = listeners_dump(server);
    let mut configs = vec![Value::Object(bootstrap), clusters, listeners];
    configs.extend(server.xds_dumps());
    if let Some(section) = resource {
        let items: Vec<Value> = configs
            .iter()
            .filter_map(|c| c.get(section))
            .filter_map(Value::as_array)
            .flatten()
            .cloned()
            .collect();
        return json!({ "configs": items });
    }
    json!({ "configs": configs })
}

fn clusters_dump(server: &Server) -> Value {
    let cm = server.cluster_manager.borrow();
    let mut static_clusters = Vec::new();
    let mut dynamic_active = Vec::new();
    let mut version = String::new();
    let xds = server.xds.borrow();
    for e in cm.active().values() {
        let mut entry = json!({
            "version_info": e.version_info,
            "cluster": typed(&e.info.proto.decode()),
            "last_updated": timestamp(e.last_updated),
        });
        if let Some(err) = xds.error_state(courier_proto::ResourceType::Cluster, &e.info.name) {
            entry["error_state"] = err.clone();
        }
        if e.added_via_api {
            version.clone_from(&e.version_info);
            dynamic_active.push(entry);
        } else {
            static_clusters.push(json!({
                "cluster": typed(&e.info.proto.decode()),
                "last_updated": timestamp(e.last_updated),
            }));
        }
    }
    // Rejected clusters that never became active still show their error, as in Envoy.
    for name in xds.error_names(courier_proto::ResourceType::Cluster) {
        if cm.get(&name).is_none() {
            if let Some(err) = xds.error_state(courier_proto::ResourceType::Cluster, &name) {
                dynamic_active.push(json!({ "error_state": err }));
            }
        }
    }
    let dynamic_warming: Vec<Value> = cm
        .warming()
        .values()
        .map(|e| {
            json!({
                "version_info": e.version_info,
                "cluster": typed(&e.info.proto.decode()),
                "last_updated": timestamp(e.last_updated),
            })
        })
        .collect();
    let mut dump = json!({
        "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
        "static_clusters": static_clusters,
        "dynamic_active_clusters": dynamic_active,
        "dynamic_warming_clusters": dynamic_warming,
    });
    let cds_version = server.cds_version().unwrap_or(version);
    if !cds_version.is_empty() {
        dump["version_info"] = cds_version.into();
    }
    dump
}

fn listeners_dump(server: &Server) -> Value {
    let lm = server.listener_manager.borrow();
    let xds = server.xds.borrow();
    let listener_type = courier_proto::ResourceType::Listener;
    let mut static_listeners = Vec::new();
    let mut dynamic = Vec::new();
    for (name, e) in lm.listeners() {
        if e.added_via_api {
            let mut entry = json!({
                "name": name,
                "active_state": {
                    "version_info": e.version_info,
                    "listener": typed(&*e.config.proto),
                    "last_updated": timestamp(e.last_updated),
                },
            });
            if let Some(w) = lm.warming().get(name) {
                entry["warming_state"] = json!({
                    "version_info": w.version_info,
                    "listener": typed(&*w.config.proto),
                    "last_updated": timestamp(w.last_updated),
                });
            }
            if let Some(err) = xds.error_state(listener_type, name) {
                entry["error_state"] = err.clone();
            }
            dynamic.push(entry);
        } else {
            static_listeners.push(json!({
                "listener": typed(&*e.config.proto),
                "last_updated": timestamp(e.last_updated),
            }));
        }
    }
    for (name, w) in lm.warming() {
        if lm.listeners().contains_key(name) {
            continue;
        }
        let mut entry = json!({
            "name": name,
            "warming_state": {
                "version_info": w.version_info,
                "listener": typed(&*w.config.proto),
                "last_updated": timestamp(w.last_updated),
            },
        });
        if let Some(err) = xds.error_state(listener_type, name) {
            entry["error_state"] = err.clone();
        }
        dynamic.push(entry);
    }
    for name in xds.error_names(listener_type) {
        if !lm.listeners().contains_key(&name) && !lm.warming().contains_key(&name) {
            if let Some(err) = xds.error_state(listener_type, &name) {
                dynamic.push(json!({ "name": name, "error_state": err }));
            }
        }
    }
    let mut dump = json!({
        "@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
        "static_listeners": static_listeners,
        "dynamic_listeners": dynamic,
    });
    if let Some(v) = server.lds_version() {
        dump["version_info"] = v.into();
    }
    dump
}
