//! `ORIGINAL_DST` clusters (Envoy's `OriginalDstCluster`): each request or connection
//! goes to the address it was originally sent to — the downstream connection's local
//! address as the listener restored it (`use_original_dst`, the original destination
//! listener filter), or an HTTP header (`original_dst_lb_config.use_http_header`).
//!
//! As in Envoy, a worker creates the host for a new destination and uses it at once, and
//! posts it to the main thread, which adds it to the cluster's host set (so it shows in
//! `/clusters` and every worker finds it); every `cleanup_interval` the main thread
//! drops the hosts that carried no traffic since the previous sweep and hold no
//! connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use courier_proto::envoy::config::cluster::v3::{self as pb, cluster};
use tokio::sync::mpsc;

use super::host::{Host, HostHealth, HostStats};
use super::per_cluster_tasks::PerClusterTasks;
use super::UpstreamContext;
use crate::config::ConfigError;
use crate::stats::{Counter, Store};

/// A host a worker created, on its way to the main thread.
pub struct NewHost {
    cluster: String,
    host: Arc<Host>,
}

/// An `ORIGINAL_DST` cluster's settings and what its workers need to add hosts.
pub struct OriginalDst {
    /// `use_http_header`: the header naming the destination (`x-envoy-original-dst-host`
    /// unless `http_header_name` says otherwise).
    pub header: Option<http::HeaderName>,
    /// `upstream_port_override`.
    pub port_override: Option<u16>,
    /// `cleanup_interval` (default 5 s).
    pub cleanup_interval: Duration,
    /// `original_dst_host_invalid`.
    pub host_invalid: Arc<Counter>,
    cluster: String,
    store: Store,
    new_hosts: mpsc::UnboundedSender<NewHost>,
}

impl std::fmt::Debug for OriginalDst {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginalDst")
            .field("header", &self.header)
            .field("port_override", &self.port_override)
            .finish()
    }
}

impl OriginalDst {
    /// Compiles an `ORIGINAL_DST` cluster's settings, checked as Envoy checks them.
    pub fn compile(
        proto: &pb::Cluster,
        store: &Store,
        new_hosts: &mpsc::UnboundedSender<NewHost>,
    ) -> Result<OriginalDst, ConfigError> {
        if proto.lb_policy != cluster::LbPolicy::ClusterProvided as i32 {
            let name = cluster::LbPolicy::try_from(proto.lb_policy)
                .map(|p| p.as_str_name())
                .unwrap_or("UNKNOWN");
            return Err(ConfigError::new(
                "lb_policy",
                format!("cluster: LB policy {name} is not valid for Cluster type ORIGINAL_DST. Only 'CLUSTER_PROVIDED' is allowed with cluster type 'ORIGINAL_DST'"),
            ));
        }
        if proto.load_assignment.is_some() {
            return Err(ConfigError::new(
                "load_assignment",
                "ORIGINAL_DST clusters must have no load assignment configured",
            ));
        }
        let config = match &proto.lb_config {
            Some(cluster::LbConfig::OriginalDstLbConfig(c)) => Some(c),
            _ => None,
        };
        if let Some(c) = config {
            if c.metadata_key.is_some() {
                return Err(ConfigError::unsupported(
                    "original_dst_lb_config.metadata_key",
                ));
            }
            if !c.use_http_header && !c.http_header_name.is_empty() {
                return Err(ConfigError::new(
                    "original_dst_lb_config.http_header_name",
                    format!("ORIGINAL_DST cluster: invalid config http_header_name={} and use_http_header is false. Set use_http_header to true if http_header_name is desired.", c.http_header_name),
                ));
            }
        }
        let header = match config.filter(|c| c.use_http_header) {
            None => None,
            Some(c) if c.http_header_name.is_empty() => {
                Some(http::HeaderName::from_static("x-envoy-original-dst-host"))
            }
            Some(c) => Some(
                http::HeaderName::from_bytes(c.http_header_name.to_ascii_lowercase().as_bytes())
                    .map_err(|_| {
                        ConfigError::new(
                            "original_dst_lb_config.http_header_name",
                            format!("'{}' is not a valid header name", c.http_header_name),
                        )
                    })?,
            ),
        };
        let port_override = match config.and_then(|c| c.upstream_port_override.as_ref()) {
            None => None,
            Some(p) => Some(u16::try_from(p.value).map_err(|_| {
                ConfigError::new(
                    "original_dst_lb_config.upstream_port_override",
                    "value must be less than or equal to 65535",
                )
            })?),
        };
        let cleanup_interval = crate::config::duration_or(
            proto.cleanup_interval.as_ref(),
            Duration::from_secs(5),
            "cleanup_interval",
        )?;
        if cleanup_interval.is_zero() {
            return Err(ConfigError::new(
                "cleanup_interval",
                "value must be greater than 0s",
            ));
        }
        Ok(OriginalDst {
            header,
            port_override,
            cleanup_interval,
            host_invalid: store
                .counter(&format!("cluster.{}.original_dst_host_invalid", proto.name)),
            cluster: proto.name.clone(),
            store: store.clone(),
            new_hosts: new_hosts.clone(),
        })
    }

    /// The destination of a request or connection: the header's (when configured and
    /// valid), else the restored local address; with the port override applied.
    pub fn destination(
        &self,
        headers: Option<&http::HeaderMap>,
        restored_local: Option<SocketAddr>,
        worker: usize,
    ) -> Option<SocketAddr> {
        let from_header = match (&self.header, headers) {
            (Some(name), Some(h)) => match h.get(name) {
                Some(v) => {
                    let parsed = v.to_str().ok().and_then(|s| s.parse::<SocketAddr>().ok());
                    if parsed.is_none() {
                        self.host_invalid.inc(worker);
                    }
                    parsed
                }
                None => None,
            },
            _ => None,
        };
        let mut dst = from_header.or(restored_local)?;
        if let Some(port) = self.port_override {
            dst.set_port(port);
        }
        Some(dst)
    }

    /// A new host for `address`, made on a worker and posted to the main thread.
    pub fn new_host(&self, address: SocketAddr) -> Arc<Host> {
        let host = Arc::new(Host::new(
            address,
            1,
            HostHealth::Healthy,
            0,
            HostStats::new(&self.store),
            None,
            None,
        ));
        let _ = self.new_hosts.send(NewHost {
            cluster: self.cluster.clone(),
            host: host.clone(),
        });
        host
    }
}

/// The main thread's end: hosts workers made, and each cluster's cleanup.
pub struct HostAdder {
    rx: mpsc::UnboundedReceiver<NewHost>,
}

impl HostAdder {
    /// The channel workers post new hosts to, and the main thread's end of it.
    pub fn channel() -> (mpsc::UnboundedSender<NewHost>, HostAdder) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, HostAdder { rx })
    }
}

/// Adds the hosts workers made and sweeps unused ones, until the server ends.
pub async fn run(ctx: Rc<impl UpstreamContext + 'static>, mut adder: HostAdder) {
    let mut changes = ctx.cluster_manager().borrow().subscribe();
    let mut sweeps = PerClusterTasks::default();
    loop {
        reconcile(&ctx, &mut sweeps);
        tokio::select! {
            new = adder.rx.recv() => {
                let Some(new) = new else { return };
                let mut cm = ctx.cluster_manager().borrow_mut();
                cm.add_host(&new.cluster, new.host);
                cm.publish();
            }
            changed = changes.changed() => if changed.is_err() { return },
        }
    }
}

/// Keeps one sweep per `ORIGINAL_DST` cluster.
fn reconcile<C: UpstreamContext + 'static>(ctx: &Rc<C>, sweeps: &mut PerClusterTasks<OriginalDst>) {
    let clusters: Vec<(String, Arc<OriginalDst>)> = ctx
        .cluster_manager()
        .borrow()
        .active()
        .values()
        .filter_map(|e| Some((e.info.name.clone(), e.info.original_dst.clone()?)))
        .collect();
    sweeps.reconcile(clusters, |name, od| {
        tokio::task::spawn_local(sweep(ctx.clone(), name.to_string(), od.cleanup_interval))
    });
}

/// Every `interval`, drops the hosts of cluster `name` that carried no traffic since the
/// previous sweep and hold no connection.
async fn sweep<C: UpstreamContext + 'static>(ctx: Rc<C>, name: String, interval: Duration) {
    // Traffic counts at the previous sweep, by host.
    let mut seen: HashMap<SocketAddr, u64> = HashMap::new();
    loop {
        tokio::time::sleep(interval).await;
        let mut cm = ctx.cluster_manager().borrow_mut();
        let Some(entry) = cm.get(&name) else { return };
        let mut keep = std::collections::HashSet::new();
        let mut next = HashMap::new();
        for h in &entry.info.hosts.hosts {
            let traffic = h.stats.rq_total.value() + h.stats.cx_total.value();
            let busy = h.stats.cx_active.value() > 0 || h.stats.rq_active.value() > 0;
            if busy || seen.get(&h.address) != Some(&traffic) {
                keep.insert(h.address);
                next.insert(h.address, traffic);
            }
        }
        seen = next;
        if keep.len() != entry.info.hosts.hosts.len() {
            cm.retain_hosts(&name, &keep);
            cm.publish();
        }
    }
}
