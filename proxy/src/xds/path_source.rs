//! `path_config_source`: a file holding a `DiscoveryResponse` (YAML or JSON), re-read when
//! its contents change. Envoy watches with inotify and expects atomic moves; polling the
//! contents every 500 ms sees the same updates without a file-system watcher dependency
//! and also works when the file is edited in place.

use std::rc::Rc;
use std::time::Duration;

use courier_proto::envoy::service::discovery::v3::DiscoveryResponse;
use courier_proto::ResourceType;

use super::apply::{self, Update};
use crate::server::Server;

const POLL: Duration = Duration::from_millis(500);

/// Watches `path` for resources of `kind` (once per path and type).
pub fn watch(server: &Rc<Server>, path: String, kind: ResourceType) {
    if !server
        .xds
        .borrow_mut()
        .watched_paths
        .insert((kind, path.clone()))
    {
        return;
    }
    let weak = Rc::downgrade(server);
    tokio::task::spawn_local(async move {
        let mut last: Option<String> = None;
        loop {
            let Some(server) = weak.upgrade() else { return };
            match tokio::fs::read_to_string(&path).await {
                Ok(text) if last.as_deref() != Some(text.as_str()) => {
                    load(&server, &path, kind, &text);
                    last = Some(text);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(path = %path, error = %e, "cannot read config source file")
                }
            }
            drop(server);
            tokio::time::sleep(POLL).await;
        }
    });
}

fn load(server: &Rc<Server>, path: &str, kind: ResourceType, text: &str) {
    let parsed: Result<DiscoveryResponse, _> = if path.ends_with(".json") {
        courier_proto::from_json(text)
    } else {
        courier_proto::from_yaml(text)
    };
    let response = match parsed {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(path, error = %e, "rejecting config source file");
            server.xds.borrow().stats.file_failed(kind);
            return;
        }
    };
    let decoded = apply::decode(kind, &response.resources)
        .and_then(|resources| apply::check_rtds_singleton(kind, resources));
    if decoded.is_err() {
        server.xds.borrow().stats.file_rejected(kind);
        if kind == ResourceType::Runtime {
            super::rtds_file_rejected(server, path);
        }
    }
    let result = decoded.and_then(|resources| {
        apply::apply_unmuxed(
            server,
            kind,
            Update::Sotw {
                version: &response.version_info,
                resources,
            },
        )
    });
    match result {
        Ok(()) => {
            tracing::info!(path, version = %response.version_info, "applied config source file")
        }
        Err(e) => tracing::warn!(path, error = %e, "rejecting config source file"),
    }
}
