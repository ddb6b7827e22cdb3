//! On-demand CDS, the main thread's side: a worker's request for a cluster
//! ([`crate::upstream::on_demand`]) becomes a named subscription to that cluster on the
//! delta stream of its `odcds.source` (ADS, or a stream of its own for an
//! `api_config_source`), next to whatever else the stream subscribes to. The cluster
//! then arrives as any delta CDS resource does; once published, the waiting requests go
//! on. As in Envoy, a cluster discovered on demand stays subscribed.

use std::rc::{Rc, Weak};

use courier_proto::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use courier_proto::ResourceType;
use prost::Message;
use tokio::sync::mpsc;

use super::mux::Protocol;
use crate::server::Server;
use crate::upstream::on_demand::ClusterRequest;

/// The name under which an `api_config_source`'s on-demand CDS stream is kept (a CDS
/// stream of the same source, `""`, is another subscription, as in Envoy).
pub(super) const ON_DEMAND_STREAM: &str = "<on-demand>";

/// Serves the workers' requests until the server goes.
pub fn spawn(server: Weak<Server>, mut requests: mpsc::UnboundedReceiver<ClusterRequest>) {
    tokio::task::spawn_local(async move {
        while let Some(request) = requests.recv().await {
            let Some(server) = server.upgrade() else {
                return;
            };
            discover(&server, &request);
        }
    });
}

fn discover(server: &Rc<Server>, request: &ClusterRequest) {
    if server.cluster_manager.borrow().contains(&request.name) {
        // Held or warming already: the waiting requests go on when it is published.
        return;
    }
    let mux = match &request.source.config_source_specifier {
        Some(ConfigSourceSpecifier::Ads(_)) => server.xds.borrow().ads.clone(),
        Some(ConfigSourceSpecifier::ApiConfigSource(api)) => {
            match super::api_mux(
                server,
                api,
                &api.encode_to_vec(),
                ResourceType::Cluster,
                ON_DEMAND_STREAM,
            ) {
                Ok(mux) => Some(mux),
                Err(e) => {
                    tracing::warn!(cluster = %request.name, error = %e, "cannot discover a cluster on demand");
                    return;
                }
            }
        }
        _ => None,
    };
    match mux {
        Some(mux) if mux.protocol() == Protocol::Delta => {
            tracing::debug!(cluster = %request.name, "discovering a cluster on demand");
            mux.subscribe_on_demand(ResourceType::Cluster, &request.name);
        }
        Some(_) => tracing::warn!(
            cluster = %request.name,
            "on-demand CDS needs delta xDS, but dynamic_resources.ads_config is state of the world"
        ),
        None => tracing::warn!(
            cluster = %request.name,
            "on-demand CDS over ADS without dynamic_resources.ads_config"
        ),
    }
}
