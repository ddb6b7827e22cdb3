//! DNS resolution for STRICT_DNS and LOGICAL_DNS clusters, on the main thread.
//!
//! One task re-resolves every DNS cluster each refresh period (Envoy's default 5 s,
//! `dns_refresh_rate`); a failed lookup keeps the previous hosts, as Envoy does.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use courier_proto::envoy::config::cluster::v3::cluster::DnsLookupFamily;

use super::cluster::{dns_targets, DiscoveryType};
use super::host::{Host, HostHealth, HostSet, HostStats};
use crate::server::Server;

/// A DNS cluster's lookups: name, discovery type, (host, port, weight) targets, panic
/// threshold, `dns_lookup_family`.
type DnsJob = (
    String,
    DiscoveryType,
    Vec<(String, u16, u32)>,
    f64,
    DnsLookupFamily,
);

/// Keeps the addresses `dns_lookup_family` allows, as Envoy: `AUTO` takes the IPv6 ones
/// when there are any, `V4_PREFERRED` the IPv4 ones, `ALL` both.
fn by_family(mut addrs: Vec<SocketAddr>, family: DnsLookupFamily) -> Vec<SocketAddr> {
    let has_v4 = addrs.iter().any(SocketAddr::is_ipv4);
    let has_v6 = addrs.iter().any(SocketAddr::is_ipv6);
    let keep_v4 = match family {
        DnsLookupFamily::V4Only => true,
        DnsLookupFamily::V6Only => false,
        DnsLookupFamily::Auto => !has_v6,
        DnsLookupFamily::V4Preferred => has_v4,
        DnsLookupFamily::All => {
            return addrs;
        }
    };
    addrs.retain(|a| a.is_ipv4() == keep_v4);
    addrs
}

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
                let proto = e.info.proto.decode();
                let family = DnsLookupFamily::try_from(proto.dns_lookup_family)
                    .unwrap_or(DnsLookupFamily::Auto);
                let cla = proto.load_assignment?;
                Some((
                    e.info.name.clone(),
                    e.info.discovery.clone(),
                    dns_targets(&cla).ok()?,
                    e.info.panic_threshold,
                    family,
                ))
            })
            .collect()
    };
    for (cluster, discovery, targets, panic_threshold, family) in targets {
        let mut hosts = Vec::new();
        let mut failed = false;
        for (name, port, weight) in targets {
            let hostname: Arc<str> = Arc::from(name.as_str());
            match tokio::net::lookup_host((name.as_str(), port)).await {
                Ok(addrs) => {
                    let mut addrs = by_family(addrs.collect(), family);
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
                            hostname: Some(hostname.clone()),
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
                && e.info.hosts.hosts.iter().zip(&hosts).all(|(a, b)| {
                    a.address == b.address && a.weight == b.weight && a.hostname == b.hostname
                })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_family_picks_as_envoy() {
        let v4: SocketAddr = "127.0.0.1:80".parse().unwrap_or_else(|_| unreachable!());
        let v6: SocketAddr = "[::1]:80".parse().unwrap_or_else(|_| unreachable!());
        let both = vec![v4, v6];
        assert_eq!(by_family(both.clone(), DnsLookupFamily::V4Only), [v4]);
        assert_eq!(by_family(both.clone(), DnsLookupFamily::V6Only), [v6]);
        assert_eq!(by_family(both.clone(), DnsLookupFamily::Auto), [v6]);
        assert_eq!(by_family(vec![v4], DnsLookupFamily::Auto), [v4]);
        assert_eq!(by_family(both.clone(), DnsLookupFamily::V4Preferred), [v4]);
        assert_eq!(by_family(vec![v6], DnsLookupFamily::V4Preferred), [v6]);
        assert_eq!(by_family(both.clone(), DnsLookupFamily::All), both);
    }
}
