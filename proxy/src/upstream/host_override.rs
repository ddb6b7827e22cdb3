//! The upstream host a filter asks the router for (Envoy's `setUpstreamOverrideHost`, the
//! load balancer context's `overrideHostToSelect`): a stateful session's host, carried in
//! the request's extensions, looked up in the cluster's hosts.

use std::net::SocketAddr;
use std::sync::Arc;

use http::StatusCode;

use crate::upstream::{ClusterInfo, Host, HostHealth};

/// The host a request should go to, if its cluster has it.
#[derive(Clone, Debug)]
pub struct UpstreamOverride {
    /// The host's address; `None`: the session named something that is no address (which
    /// no cluster has).
    pub address: Option<SocketAddr>,
    /// Whether the request fails when the cluster has no such (usable) host, rather than
    /// going to the host the load balancer picks.
    pub strict: bool,
    /// The status of that failure.
    pub status: StatusCode,
}

impl UpstreamOverride {
    /// The cluster's host at the address, when its health lets it take requests (Envoy's
    /// default `override_host_status`: unknown, healthy, degraded).
    pub fn host(&self, cluster: &ClusterInfo) -> Option<Arc<Host>> {
        let host = cluster.hosts.find(self.address?)?;
        (host.health != HostHealth::Unhealthy).then(|| host.clone())
    }
}
