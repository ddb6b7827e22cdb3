//! DNS resolution for STRICT_DNS and LOGICAL_DNS clusters, on the main thread.
//!
//! As Envoy: a DNS cluster (a new one, or a new version) warms until its first resolution
//! (a failed one included), so traffic never meets it without hosts while a lookup is
//! under way, and CDS is ACKed once it is warm; then it is resolved again every
//! `dns_refresh_rate` (default 5 s), after a failure every
//! `dns_failure_refresh_rate` (a jittered exponential back-off from `base_interval` up to
//! `max_interval`, as Envoy's; without it, the refresh rate). A failed lookup keeps the
//! previous hosts. Not acted on: `respect_dns_ttl` (the system resolver gives no TTL; see
//! DIFFERENCES.md).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_proto::envoy::config::cluster::v3::cluster::DnsLookupFamily;

use super::cluster::{dns_targets, DiscoveryType, DnsTarget};
use super::host::{Host, HostHealth, HostStats};
use super::host_set::HostSet;
use super::{ClusterManager, UpstreamContext};

/// What DNS resolution needs of the main thread: the cluster manager it gives hosts to, the
/// changes it re-plans on, and whom to tell when clusters warmed.
pub trait DnsContext {
    /// The cluster manager.
    fn cluster_manager(&self) -> &RefCell<ClusterManager>;
    /// Ticks whenever clusters were added, updated or removed.
    fn cluster_changes(&self) -> tokio::sync::watch::Receiver<u64>;
    /// Warming DNS clusters got their first hosts: CDS's ACK and initialisation may go on.
    fn clusters_warmed(self: &Rc<Self>);
}

/// A DNS cluster's lookups.
struct DnsJob {
    cluster: String,
    discovery: DiscoveryType,
    /// Each endpoint to resolve.
    targets: Vec<DnsTarget>,
    /// The assignment's `overprovisioning_factor`.
    overprovisioning: u32,
    panic_threshold: f64,
    family: DnsLookupFamily,
    /// `dns_refresh_rate`.
    refresh: Duration,
    /// `dns_failure_refresh_rate.base_interval`, else the refresh rate.
    failure_refresh: Duration,
    /// The failure back-off's maximum, with a `dns_failure_refresh_rate`.
    failure_max: Option<Duration>,
    /// Waiting for its first resolution.
    warming: bool,
    /// Whether the cluster has active health checking.
    health_checked: bool,
}

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

/// Every DNS cluster, active and warming (a warming version first: it is the one to
/// resolve).
fn dns_jobs(cm: &RefCell<ClusterManager>) -> Vec<DnsJob> {
    let cm = cm.borrow();
    // A warming cluster whose hosts are known waits for its secrets, not for DNS.
    let warming = cm.warming().values().map(|e| (e, !e.hosts_known));
    let active = cm
        .active()
        .values()
        .filter(|e| !cm.warming().contains_key(&e.info.name))
        .map(|e| (e, false));
    warming
        .chain(active)
        .filter(|(e, _)| {
            matches!(
                e.info.discovery,
                DiscoveryType::StrictDns | DiscoveryType::LogicalDns
            )
        })
        .filter_map(|(e, warming)| {
            let proto = e.info.proto.decode();
            let super::cluster::DnsSettings {
                family,
                refresh,
                failure_refresh,
                failure_max,
            } = e.info.dns;
            let cla = proto.load_assignment?;
            Some(DnsJob {
                cluster: e.info.name.clone(),
                discovery: e.info.discovery.clone(),
                targets: dns_targets(&cla, &e.info.socket_matches).ok()?,
                overprovisioning: super::cluster::overprovisioning(&cla),
                panic_threshold: e.info.panic_threshold,
                family,
                refresh,
                failure_refresh,
                failure_max,
                warming,
                health_checked: e.info.health_check.is_some(),
            })
        })
        .collect()
}

/// Looks up a cluster's targets: its hosts, or `None` when a lookup failed.
async fn lookup(cm: &RefCell<ClusterManager>, job: &DnsJob) -> Option<Vec<Arc<Host>>> {
    let (stats, matches) = match cm.borrow().get(&job.cluster) {
        Some(e) => (
            Some(e.info.stats.clone()),
            Some(e.info.socket_matches.clone()),
        ),
        None => (None, None),
    };
    let mut hosts = Vec::new();
    let mut failed = false;
    for DnsTarget {
        name,
        port,
        weight,
        transport_match,
        locality,
        locality_weight,
    } in &job.targets
    {
        if let Some(s) = &stats {
            s.updates.started();
        }
        let hostname: Arc<str> = Arc::from(name.as_str());
        match tokio::net::lookup_host((name.as_str(), *port)).await {
            Ok(addrs) => {
                if let Some(s) = &stats {
                    s.updates.resolved();
                }
                let mut addrs = by_family(addrs.collect(), job.family);
                if job.discovery == DiscoveryType::LogicalDns {
                    addrs.truncate(1);
                }
                for address in addrs {
                    let stats = {
                        let cm = cm.borrow();
                        let previous = cm.get(&job.cluster).and_then(|e| {
                            e.info
                                .hosts
                                .hosts
                                .iter()
                                .find(|h| h.address == address)
                                .map(|h| h.stats.clone())
                        });
                        previous.unwrap_or_else(|| HostStats::new(cm.store()))
                    };
                    if let Some(m) = &matches {
                        m.count(*transport_match);
                    }
                    stats.prepare_for(job.health_checked);
                    hosts.push(Arc::new(
                        Host::new(
                            address,
                            *weight,
                            HostHealth::Healthy,
                            0,
                            stats,
                            Some(hostname.clone()),
                            *transport_match,
                        )
                        .in_locality(*locality, *locality_weight),
                    ));
                }
            }
            Err(e) => {
                tracing::warn!(cluster = %job.cluster, host = %name, error = %e, "DNS resolution failed; keeping previous hosts");
                if let Some(s) = &stats {
                    s.updates.resolution_failed();
                }
                failed = true;
            }
        }
    }
    (!failed).then_some(hosts)
}

/// Resolves one cluster and applies the result; whether the lookups succeeded and whether
/// a warming cluster became active.
async fn resolve(cm: &RefCell<ClusterManager>, job: &DnsJob) -> (bool, bool) {
    let hosts = lookup(cm, job).await;
    let ok = hosts.is_some();
    let mut cm = cm.borrow_mut();
    let hosts = hosts.filter(|hosts| {
        // An active cluster whose hosts did not change is left as it is.
        job.warming
            || !cm.get(&job.cluster).is_some_and(|e| {
                e.info.hosts.hosts.len() == hosts.len()
                    && e.info.hosts.hosts.iter().zip(hosts).all(|(a, b)| {
                        a.address == b.address && a.weight == b.weight && a.hostname == b.hostname
                    })
            })
    });
    if job.warming || hosts.is_some() {
        let set = hosts.map(|h| {
            let set = HostSet::with_overprovisioning(h, job.panic_threshold, job.overprovisioning);
            Arc::new(set)
        });
        cm.set_resolved_hosts(&job.cluster, set);
        cm.publish();
    }
    (ok, job.warming)
}

/// Resolves every DNS cluster once (at start-up, before the workers start).
pub async fn resolve_all(cm: &RefCell<ClusterManager>) {
    for job in dns_jobs(cm) {
        resolve(cm, &job).await;
    }
}

/// `d` after `now`, or a year on when the configured rate is past what an `Instant` holds.
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

/// Re-resolves DNS clusters each at its own rate, and resolves a warming one (added or
/// updated) as soon as it appears.
pub async fn refresh_loop(ctx: Rc<impl UpstreamContext>) {
    let mut changes = ctx.cluster_changes();
    let cm = ctx.cluster_manager();
    let mut due: HashMap<String, Instant> = HashMap::new();
    // Each failing cluster's next back-off bound (reset by a success).
    let mut backoff: HashMap<String, Duration> = HashMap::new();
    loop {
        let jobs = dns_jobs(cm);
        let now = Instant::now();
        due.retain(|name, _| jobs.iter().any(|j| &j.cluster == name));
        for job in &jobs {
            let at = due
                .entry(job.cluster.clone())
                .or_insert(later(now, job.refresh));
            if job.warming {
                *at = now;
            }
        }
        let ready: Vec<&DnsJob> = jobs.iter().filter(|j| due[&j.cluster] <= now).collect();
        if ready.is_empty() {
            let next = due.values().min().copied();
            tokio::select! {
                _ = async {
                    match next {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                } => {}
                // A cluster was added, updated or removed.
                r = changes.changed() => if r.is_err() { return },
            }
            continue;
        }
        // Lookups run side by side: one slow name does not hold the others back.
        let results = futures::future::join_all(ready.iter().map(|job| resolve(cm, job))).await;
        let mut warmed = false;
        backoff.retain(|name, _| jobs.iter().any(|j| &j.cluster == name));
        for (job, (ok, was_warming)) in ready.iter().zip(results) {
            let next = match (ok, job.failure_max) {
                (true, _) => {
                    backoff.remove(&job.cluster);
                    job.refresh
                }
                (false, None) => job.failure_refresh,
                (false, Some(max)) => {
                    // Envoy's jittered exponential back-off: a random wait below the
                    // bound, which doubles after each failure up to the maximum.
                    let bound = backoff
                        .get(&job.cluster)
                        .copied()
                        .unwrap_or(job.failure_refresh);
                    let doubled = if bound < max / 2 { bound * 2 } else { max };
                    backoff.insert(job.cluster.clone(), doubled);
                    let ms = bound.as_millis().max(1) as u64;
                    Duration::from_millis(fastrand::u64(..ms)).min(max)
                }
            };
            due.insert(job.cluster.clone(), later(Instant::now(), next));
            warmed |= was_warming;
        }
        if warmed {
            // CDS's ACK and initialisation were waiting for these clusters.
            ctx.clusters_warmed();
        }
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
