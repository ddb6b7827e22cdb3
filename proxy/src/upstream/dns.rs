//! DNS resolution for STRICT_DNS and LOGICAL_DNS clusters, on the main thread.
//!
//! One task re-resolves every DNS cluster each refresh period (Envoy's default 5 s,
//! `dns_refresh_rate`); a failed lookup keeps the previous hosts, as Envoy does.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use super::cluster::{dns_targets, DiscoveryType};
use super::host::{Host, HostHealth, HostSet, HostStats};
use crate::server::Server;

/// A DNS cluster's lookups: name, discovery type, (host, port, weight) targets, panic
/// threshold.
type DnsJob = (String, DiscoveryType, Vec<(String, u16, u32)>, f64);

/// Resolves every DNS cluster once.
pub async fn resolve_all(server: &Server) {
    let targets: Vec<DnsJob> = {
        let cm = server.cluster_manager.borrow();
        cm.active()
            .values()
            .filter(|e| {
                matches!(
                    e.info.discovery,
                    DiscoveryType::StrictDns | DiscoveryType::LogicalDns
                )
            })
            .filter_map(|e| {
                let cla = e.info.proto.decode().load_assignment?;
                Some((
                    e.info.name.clone(),
                    e.info.discovery.clone(),
                    dns_targets(&cla).ok()?,
                    e.info.panic_threshold,
                ))
            })
            .collect()
    };
    for (cluster, discovery, targets, panic_threshold) in targets {
        let mut hosts = Vec::new();
        let mut failed = false;
        for (name, port, weight) in targets {
            match tokio::net::lookup_host((name.as_str(), port)).await {
                Ok(addrs) => {
                    let mut addrs: Vec<_> = addrs.collect();
                    if discovery == DiscoveryType::LogicalDns {
                        addrs.truncate(1);
                    }
                    for address in addrs {
                        let stats = {
                            let cm = server.cluster_manager.borrow();
                            let previous = cm.get(&cluster).and_then(|e| {
                                e.info
                                    .hosts
                                    .hosts
                                    .iter()
                                    .find(|h| h.address == address)
                                    .map(|h| h.stats.clone())
                            });
                            previous.unwrap_or_else(|| HostStats::new(cm.store()))
                        };
                        hosts.push(Arc::new(Host {
                            address,
                            weight,
                            health: HostHealth::Healthy,
                            priority: 0,
                            stats,
                        }));
                    }
                }
                Err(e) => {
                    tracing::warn!(cluster = %cluster, host = %name, error = %e, "DNS resolution failed; keeping previous hosts");
                    failed = true;
                }
            }
        }
        if failed {
            continue;
        }
        let mut cm = server.cluster_manager.borrow_mut();
        let unchanged = cm.get(&cluster).is_some_and(|e| {
            e.info.hosts.hosts.len() == hosts.len()
                && e.info
                    .hosts
                    .hosts
                    .iter()
                    .zip(&hosts)
                    .all(|(a, b)| a.address == b.address && a.weight == b.weight)
        });
        if !unchanged {
            cm.set_resolved_hosts(&cluster, Arc::new(HostSet::new(hosts, panic_threshold)));
            cm.publish();
        }
    }
}

/// Re-resolves DNS clusters forever.
pub async fn refresh_loop(server: Rc<Server>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    loop {
        tick.tick().await;
        resolve_all(&server).await;
    }
}
