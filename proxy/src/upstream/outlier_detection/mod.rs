//! Outlier detection (Envoy's `Outlier::DetectorImpl`): passive health from real traffic.
//!
//! Envoy's split between threads: workers count each host's results in its
//! [`HostMonitor`] (atomics, no lock) and, when a consecutive-failure count reaches its
//! threshold, post an [`OutlierEvent`] to the main thread. The main thread's [`run`]
//! decides: it ejects the host (within `max_ejection_percent`, with the `enforcing_*`
//! chances), every `interval` computes success rates and failure percentages over the
//! interval's counts, and brings hosts back once their ejection time has passed. An
//! ejection sets the host's `FAILED_OUTLIER_CHECK` flag and the cluster manager
//! publishes a new host set.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use courier_proto::envoy::data::cluster::v3::{
    outlier_detection_event, OutlierDetectionEvent, OutlierEjectConsecutive,
    OutlierEjectFailurePercentage, OutlierEjectSuccessRate,
};
use tokio::sync::mpsc;

pub mod config;
pub mod host_monitor;

pub use config::{EjectionType, OutlierConfig, Report};
pub use host_monitor::HostMonitor;

use super::health_flags::HealthFlags;
use super::host::Host;
use super::per_cluster_tasks::PerClusterTasks;
use super::{ClusterInfo, UpstreamContext};
use crate::stats::{Counter, Gauge, Store, MAIN_THREAD};

/// `cluster.<name>.outlier_detection.*`.
pub struct OutlierStats {
    counters: HashMap<&'static str, Arc<Counter>>,
    /// `ejections_active`.
    pub ejections_active: Arc<Gauge>,
}

const COUNTERS: [&str; 20] = [
    "ejections_consecutive_5xx",
    // Envoy's, for `detect_degraded_hosts` (refused): always 0.
    "ejections_detected_degradation",
    "ejections_detected_consecutive_5xx",
    "ejections_detected_consecutive_gateway_failure",
    "ejections_detected_consecutive_local_origin_failure",
    "ejections_detected_failure_percentage",
    "ejections_detected_local_origin_failure_percentage",
    "ejections_detected_local_origin_success_rate",
    "ejections_detected_success_rate",
    "ejections_enforced_consecutive_5xx",
    "ejections_enforced_consecutive_gateway_failure",
    "ejections_enforced_consecutive_local_origin_failure",
    "ejections_enforced_failure_percentage",
    "ejections_enforced_local_origin_failure_percentage",
    "ejections_enforced_local_origin_success_rate",
    "ejections_enforced_success_rate",
    "ejections_enforced_total",
    "ejections_overflow",
    "ejections_success_rate",
    "ejections_total",
];

impl OutlierStats {
    fn new(store: &Store, cluster: &str) -> OutlierStats {
        OutlierStats {
            counters: COUNTERS
                .iter()
                .map(|&n| {
                    (
                        n,
                        store.counter(&format!("cluster.{cluster}.outlier_detection.{n}")),
                    )
                })
                .collect(),
            ejections_active: store.gauge(&format!(
                "cluster.{cluster}.outlier_detection.ejections_active"
            )),
        }
    }

    fn inc(&self, name: &str) {
        if let Some(c) = self.counters.get(name) {
            c.inc(MAIN_THREAD);
        }
    }

    fn detected(&self, t: EjectionType) {
        self.inc(match t {
            EjectionType::Consecutive5xx => "ejections_detected_consecutive_5xx",
            EjectionType::ConsecutiveGatewayFailure => {
                "ejections_detected_consecutive_gateway_failure"
            }
            EjectionType::ConsecutiveLocalOriginFailure => {
                "ejections_detected_consecutive_local_origin_failure"
            }
            EjectionType::SuccessRate => "ejections_detected_success_rate",
            EjectionType::SuccessRateLocalOrigin => "ejections_detected_local_origin_success_rate",
            EjectionType::FailurePercentage => "ejections_detected_failure_percentage",
            EjectionType::FailurePercentageLocalOrigin => {
                "ejections_detected_local_origin_failure_percentage"
            }
        });
    }

    fn enforced(&self, t: EjectionType) {
        self.inc("ejections_enforced_total");
        self.inc(match t {
            EjectionType::Consecutive5xx => "ejections_enforced_consecutive_5xx",
            EjectionType::ConsecutiveGatewayFailure => {
                "ejections_enforced_consecutive_gateway_failure"
            }
            EjectionType::ConsecutiveLocalOriginFailure => {
                "ejections_enforced_consecutive_local_origin_failure"
            }
            EjectionType::SuccessRate => "ejections_enforced_success_rate",
            EjectionType::SuccessRateLocalOrigin => "ejections_enforced_local_origin_success_rate",
            EjectionType::FailurePercentage => "ejections_enforced_failure_percentage",
            EjectionType::FailurePercentageLocalOrigin => {
                "ejections_enforced_local_origin_failure_percentage"
            }
        });
    }
}

/// A consecutive-failure threshold a worker saw a host reach.
#[derive(Debug)]
pub struct OutlierEvent {
    cluster: String,
    host: std::net::SocketAddr,
    kind: EjectionType,
}

/// A cluster's outlier detector as the workers see it: its settings, stats, and the way
/// to the main thread.
pub struct Detector {
    /// The settings.
    pub config: OutlierConfig,
    /// `outlier_detection.*`.
    pub stats: OutlierStats,
    cluster: String,
    events: mpsc::UnboundedSender<OutlierEvent>,
    /// `cluster_manager.outlier_detection.event_log_path`.
    log: Option<Arc<EventLog>>,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector")
            .field("config", &self.config)
            .finish()
    }
}

impl Detector {
    /// A detector for cluster `cluster` posting to `events`, logging to `log`.
    pub fn new(
        config: OutlierConfig,
        store: &Store,
        cluster: &str,
        events: mpsc::UnboundedSender<OutlierEvent>,
        log: Option<Arc<EventLog>>,
    ) -> Detector {
        Detector {
            config,
            stats: OutlierStats::new(store, cluster),
            cluster: cluster.to_string(),
            events,
            log,
        }
    }

    /// Records what a request to `host` saw (on a worker).
    #[inline]
    pub fn report(&self, host: &Host, report: Report) {
        let m = &host.stats.outlier;
        let reached = if self.config.split_external_local_origin_errors {
            match report {
                Report::ConnectSuccess | Report::ConnectSuccessFinal => {
                    m.local_origin_success();
                    None
                }
                Report::ConnectFailed | Report::Timeout(_) => m.local_origin_failure(&self.config),
                Report::Status(code) => m.http_status(code, &self.config),
            }
        } else {
            match report {
                Report::Status(code) | Report::Timeout(code) => m.http_status(code, &self.config),
                Report::ConnectFailed => m.http_status(503, &self.config),
                Report::ConnectSuccessFinal => m.http_status(200, &self.config),
                Report::ConnectSuccess => None,
            }
        };
        for kind in reached.into_iter().flatten().flatten() {
            let _ = self.events.send(OutlierEvent {
                cluster: self.cluster.clone(),
                host: host.address,
                kind,
            });
        }
    }
}

/// Where outlier events go: `cluster_manager.outlier_detection.event_log_path`.
pub struct EventLog {
    file: Mutex<std::fs::File>,
}

impl EventLog {
    /// Opens (appends to) `path`.
    pub fn open(path: &str) -> std::io::Result<EventLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(EventLog {
            file: Mutex::new(file),
        })
    }

    fn write(&self, event: &OutlierDetectionEvent) {
        use std::io::Write;
        // Envoy writes every field, defaults included.
        let mut line = courier_proto::to_json_with_defaults(event).to_string();
        line.push('\n');
        let Ok(mut f) = self.file.lock() else { return };
        if let Err(e) = f.write_all(line.as_bytes()) {
            tracing::warn!(error = %e, "cannot write an outlier detection event");
        }
    }
}

/// One ejection or unejection, for the event log.
struct Logged<'a> {
    cluster: &'a str,
    host: &'a Host,
    kind: Option<EjectionType>,
    enforced: bool,
    since: Option<Instant>,
    num_ejections: u32,
    rates: Option<(f64, f64, f64)>,
}

impl EventLog {
    fn log(&self, e: Logged<'_>) {
        use outlier_detection_event::Event;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let event = match e.kind {
            None => None,
            Some(EjectionType::SuccessRate | EjectionType::SuccessRateLocalOrigin) => {
                let (avg, threshold, host) = e.rates.unwrap_or((-1.0, -1.0, -1.0));
                Some(Event::EjectSuccessRateEvent(OutlierEjectSuccessRate {
                    host_success_rate: host as u32,
                    cluster_average_success_rate: avg as u32,
                    cluster_success_rate_ejection_threshold: threshold as u32,
                }))
            }
            Some(EjectionType::FailurePercentage | EjectionType::FailurePercentageLocalOrigin) => {
                let host = e.rates.map_or(-1.0, |r| r.2);
                Some(Event::EjectFailurePercentageEvent(
                    OutlierEjectFailurePercentage {
                        host_success_rate: host as u32,
                    },
                ))
            }
            Some(_) => Some(Event::EjectConsecutiveEvent(OutlierEjectConsecutive {})),
        };
        use courier_proto::envoy::data::cluster::v3::Action;
        self.write(&OutlierDetectionEvent {
            r#type: e.kind.map_or(0, EjectionType::proto),
            timestamp: Some(courier_proto::google::protobuf::Timestamp {
                seconds: now.as_secs() as i64,
                nanos: now.subsec_nanos() as i32,
            }),
            secs_since_last_action: e
                .since
                .map(|t| courier_proto::google::protobuf::UInt64Value {
                    value: t.elapsed().as_secs(),
                }),
            cluster_name: e.cluster.to_string(),
            upstream_url: e.host.address.to_string(),
            action: if e.kind.is_some() {
                Action::Eject as i32
            } else {
                Action::Uneject as i32
            },
            num_ejections: e.num_ejections,
            enforced: e.enforced,
            event,
        });
    }
}

/// The main thread's side: the events workers post, and each detected cluster's
/// interval.
pub struct Decider {
    rx: mpsc::UnboundedReceiver<OutlierEvent>,
}

impl Decider {
    /// The channel workers post to, and the main thread's end of it.
    pub fn channel() -> (mpsc::UnboundedSender<OutlierEvent>, Decider) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, Decider { rx })
    }
}

/// Decides ejections until the server ends.
pub async fn run(ctx: Rc<impl UpstreamContext + 'static>, mut decider: Decider) {
    let mut changes = ctx.cluster_manager().borrow().subscribe();
    let mut timers = PerClusterTasks::default();
    loop {
        reconcile(&ctx, &mut timers);
        tokio::select! {
            event = decider.rx.recv() => {
                let Some(event) = event else { return };
                on_consecutive(&ctx, &event);
            }
            changed = changes.changed() => if changed.is_err() { return },
        }
    }
}

/// Keeps one interval timer per detected cluster.
fn reconcile<C: UpstreamContext + 'static>(ctx: &Rc<C>, timers: &mut PerClusterTasks<Detector>) {
    let detectors: Vec<(String, Arc<Detector>)> = ctx
        .cluster_manager()
        .borrow()
        .active()
        .values()
        .filter_map(|e| Some((e.info.name.clone(), e.info.outlier.clone()?)))
        .collect();
    timers.reconcile(detectors, |name, detector| {
        let (c, n, d) = (ctx.clone(), name.to_string(), detector.clone());
        tokio::task::spawn_local(async move {
            loop {
                tokio::time::sleep(d.config.interval).await;
                on_interval(&c, &n);
            }
        })
    });
}

/// A worker saw a host reach a consecutive-failure threshold.
fn on_consecutive<C: UpstreamContext + 'static>(ctx: &Rc<C>, event: &OutlierEvent) {
    let (info, host) = {
        let cm = ctx.cluster_manager().borrow();
        let Some(entry) = cm.get(&event.cluster) else {
            return;
        };
        let Some(host) = entry
            .info
            .hosts
            .hosts
            .iter()
            .find(|h| h.address == event.host)
            .cloned()
        else {
            return;
        };
        (entry.info.clone(), host)
    };
    let Some(detector) = &info.outlier else {
        return;
    };
    if host
        .stats
        .flags()
        .intersects(HealthFlags::FAILED_OUTLIER_CHECK)
    {
        return;
    }
    detector.stats.detected(event.kind);
    if eject(&info, detector, &host, event.kind, None) {
        super::health_refresh::refresh(ctx, &info.name);
    }
    if event.kind == EjectionType::Consecutive5xx {
        detector.stats.inc("ejections_consecutive_5xx");
    }
    host.stats.outlier.reset(event.kind);
}

/// Ejects `host` if `max_ejection_percent` allows and the `enforcing_*` chance says so;
/// whether it did.
fn eject(
    info: &ClusterInfo,
    d: &Detector,
    host: &Host,
    kind: EjectionType,
    rates: Option<(f64, f64, f64)>,
) -> bool {
    let hosts = &info.hosts.hosts;
    let active = ejected_count(info);
    let percent = 100.0 * (active + 1) as f64 / hosts.len().max(1) as f64;
    let allowed = percent <= f64::from(d.config.max_ejection_percent.min(100))
        || (d.config.always_eject_one_host && active == 0);
    if !allowed {
        d.stats.inc("ejections_overflow");
        return false;
    }
    if matches!(
        kind,
        EjectionType::Consecutive5xx | EjectionType::SuccessRate
    ) {
        d.stats.inc("ejections_total");
    }
    let enforced = fastrand::u32(..100) < d.config.enforcing(kind);
    let mut e = host.stats.outlier.ejections();
    if enforced {
        d.stats.enforced(kind);
        host.stats.set_flag(HealthFlags::FAILED_OUTLIER_CHECK, true);
        e.num_ejections += 1;
        e.last_ejection = Some(Instant::now());
        let jitter_ms = d.config.max_ejection_time_jitter.as_millis() as u64;
        e.jitter = Duration::from_millis(fastrand::u64(..=jitter_ms));
        let base = d.config.base_ejection_time;
        // Saturating: the times come from the configuration.
        if base.saturating_mul(e.backoff) < d.config.max_ejection_time.saturating_add(base) {
            e.backoff += 1;
        }
        d.stats.ejections_active.set(active as i64 + 1);
        tracing::debug!(cluster = %info.name, host = %host.address, ?kind, "outlier detection ejected a host");
    }
    if let Some(log) = &d.log {
        log.log(Logged {
            cluster: &info.name,
            host,
            kind: Some(kind),
            enforced,
            since: e.last_unejection,
            num_ejections: e.num_ejections,
            rates,
        });
    }
    enforced
}

fn ejected_count(info: &ClusterInfo) -> usize {
    info.hosts
        .hosts
        .iter()
        .filter(|h| {
            h.stats
                .flags()
                .intersects(HealthFlags::FAILED_OUTLIER_CHECK)
        })
        .count()
}

/// Brings `host` back; its consecutive counts start over.
fn uneject(info: &ClusterInfo, host: &Host) {
    host.stats
        .set_flag(HealthFlags::FAILED_OUTLIER_CHECK, false);
    let m = &host.stats.outlier;
    for kind in [
        EjectionType::Consecutive5xx,
        EjectionType::ConsecutiveGatewayFailure,
        EjectionType::ConsecutiveLocalOriginFailure,
    ] {
        m.reset(kind);
    }
    let mut e = m.ejections();
    e.last_unejection = Some(Instant::now());
    let Some(d) = &info.outlier else { return };
    d.stats.ejections_active.set(ejected_count(info) as i64);
    if let Some(log) = &d.log {
        log.log(Logged {
            cluster: &info.name,
            host,
            kind: None,
            enforced: false,
            since: e.last_ejection,
            num_ejections: e.num_ejections,
            rates: None,
        });
    }
}

/// An active health check passed for an ejected host: with
/// `successful_active_health_check_uneject_host`, it comes back at once. Whether it did.
pub fn on_health_check_passed(info: &ClusterInfo, host: &Host) -> bool {
    let Some(d) = &info.outlier else { return false };
    let flags = host.stats.flags();
    if !d.config.successful_active_health_check_uneject_host
        || flags.intersects(HealthFlags::FAILED_ACTIVE_HC)
        || !flags.intersects(HealthFlags::FAILED_OUTLIER_CHECK)
    {
        return false;
    }
    uneject(info, host);
    true
}

/// One interval of cluster `name`: ejections that have run their time end, and the
/// interval's success rates and failure percentages eject.
fn on_interval<C: UpstreamContext + 'static>(ctx: &Rc<C>, name: &str) {
    let Some(info) = ctx
        .cluster_manager()
        .borrow()
        .get(name)
        .map(|e| e.info.clone())
    else {
        return;
    };
    let Some(d) = &info.outlier else { return };
    let c = &d.config;
    let now = Instant::now();
    let mut changed = false;
    let mut external = Vec::new();
    let mut local = Vec::new();
    for host in &info.hosts.hosts {
        let m = &host.stats.outlier;
        if host
            .stats
            .flags()
            .intersects(HealthFlags::FAILED_OUTLIER_CHECK)
        {
            let due = {
                let e = m.ejections();
                let time = c
                    .base_ejection_time
                    .saturating_mul(e.backoff)
                    .min(c.max_ejection_time)
                    .saturating_add(e.jitter);
                e.last_ejection
                    .is_some_and(|t| now.duration_since(t) >= time)
            };
            if due {
                uneject(&info, host);
                changed = true;
            }
        }
        external.push(m.external.take());
        local.push(m.local.take());
    }
    for (counts, origin_local) in [(external, false), (local, true)] {
        changed |= rates(&info, d, &counts, origin_local);
    }
    for host in &info.hosts.hosts {
        if host
            .stats
            .flags()
            .intersects(HealthFlags::FAILED_OUTLIER_CHECK)
        {
            continue;
        }
        let mut e = host.stats.outlier.ejections();
        if e.last_unejection
            .is_some_and(|t| now.duration_since(t) >= c.interval)
            && e.backoff > 0
        {
            e.backoff -= 1;
        }
    }
    if changed {
        super::health_refresh::refresh(ctx, name);
    }
}

/// Success rate and failure percentage ejections over one interval's `counts` (success,
/// total) per host; whether any host was ejected.
fn rates(info: &ClusterInfo, d: &Detector, counts: &[(u32, u32)], origin_local: bool) -> bool {
    let c = &d.config;
    let hosts = &info.hosts.hosts;
    if (hosts.len() as u32) < c.success_rate_minimum_hosts
        && (hosts.len() as u32) < c.failure_percentage_minimum_hosts
    {
        return false;
    }
    let mut sr_hosts: Vec<(usize, f64)> = Vec::new();
    let mut fp_hosts: Vec<(usize, f64)> = Vec::new();
    for (i, (host, &(success, total))) in hosts.iter().zip(counts).enumerate() {
        if total == 0
            || host
                .stats
                .flags()
                .intersects(HealthFlags::FAILED_OUTLIER_CHECK)
        {
            continue;
        }
        let rate = f64::from(success) * 100.0 / f64::from(total);
        if total >= c.success_rate_request_volume {
            sr_hosts.push((i, rate));
        }
        if total >= c.failure_percentage_request_volume {
            fp_hosts.push((i, rate));
        }
    }
    let mut ejected = false;
    if !sr_hosts.is_empty() && sr_hosts.len() as u32 >= c.success_rate_minimum_hosts {
        let n = sr_hosts.len() as f64;
        let mean = sr_hosts.iter().map(|(_, r)| r).sum::<f64>() / n;
        let variance = sr_hosts
            .iter()
            .map(|(_, r)| (r - mean).powi(2))
            .sum::<f64>()
            / n;
        let threshold = mean - f64::from(c.success_rate_stdev_factor) / 1000.0 * variance.sqrt();
        let kind = if origin_local {
            EjectionType::SuccessRateLocalOrigin
        } else {
            EjectionType::SuccessRate
        };
        for &(i, rate) in &sr_hosts {
            if rate < threshold {
                d.stats.inc("ejections_success_rate");
                d.stats.detected(kind);
                ejected |= eject(info, d, &hosts[i], kind, Some((mean, threshold, rate)));
            }
        }
    }
    if !fp_hosts.is_empty() && fp_hosts.len() as u32 >= c.failure_percentage_minimum_hosts {
        let kind = if origin_local {
            EjectionType::FailurePercentageLocalOrigin
        } else {
            EjectionType::FailurePercentage
        };
        for &(i, rate) in &fp_hosts {
            if hosts[i]
                .stats
                .flags()
                .intersects(HealthFlags::FAILED_OUTLIER_CHECK)
            {
                continue;
            }
            if 100.0 - rate >= f64::from(c.failure_percentage_threshold) {
                d.stats.detected(kind);
                ejected |= eject(info, d, &hosts[i], kind, Some((-1.0, -1.0, rate)));
            }
        }
    }
    ejected
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigError;
    use courier_proto::envoy::config::cluster::v3::OutlierDetection as OutlierProto;

    fn config(yaml: &str) -> Result<OutlierConfig, ConfigError> {
        let p: OutlierProto = courier_proto::from_yaml(yaml).expect("an OutlierDetection");
        OutlierConfig::compile(&p)
    }

    #[test]
    fn consecutive_thresholds_are_reported_once_when_reached() {
        let c = config("consecutive_5xx: 3\nconsecutive_gateway_failure: 2\n").expect("valid");
        let m = HostMonitor::default();
        assert_eq!(m.http_status(503, &c), Some([None, None]));
        assert_eq!(
            m.http_status(502, &c),
            Some([Some(EjectionType::ConsecutiveGatewayFailure), None])
        );
        assert_eq!(
            m.http_status(500, &c),
            Some([None, Some(EjectionType::Consecutive5xx)])
        );
        assert_eq!(m.http_status(500, &c), Some([None, None]));
        assert_eq!(m.http_status(200, &c), None);
        assert_eq!(m.external.take(), (1, 5));
    }

    #[test]
    fn invalid_settings_are_refused_as_envoy_refuses_them() {
        let err = |y: &str| config(y).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err("base_ejection_time: 60s\nmax_ejection_time: 10s\n")
            .contains("max_ejection_time cannot be smaller than base_ejection_time"));
        assert!(err("max_ejection_percent: 101\n").contains("less than or equal to 100"));
        assert!(err("interval: 0s\n").contains("greater than 0s"));
        // Envoy's defaults: max_ejection_time is 300 s or the base time if larger.
        assert_eq!(
            config("base_ejection_time: 400s\n")
                .map(|c| c.max_ejection_time)
                .ok(),
            Some(Duration::from_secs(400))
        );
    }
}
