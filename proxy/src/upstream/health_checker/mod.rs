//! Active health checking (Envoy's `HealthChecker`), on the main thread.
//!
//! A cluster's `health_checks` compile into a [`HealthCheck`]; the [`runner`] keeps one
//! session per host of every cluster that has one, probes the host ([`http`], [`tcp`],
//! [`grpc`]) and moves it between healthy and failing with Envoy's rules ([`Session`]):
//! a host starts failing until its first check, a first success or an ACTIVE failure
//! (an unexpected HTTP status not in `retriable_statuses`) changes it at once, other
//! outcomes need the thresholds.
//! A change sets the host's flags and the cluster manager publishes a new host set to
//! the workers.

pub mod event_log;
pub mod grpc;
pub mod http;
pub mod runner;
pub mod tcp;

use std::sync::Arc;
use std::time::Duration;

use courier_proto::envoy::config::core::v3::health_check::{self, HealthChecker};
use courier_proto::envoy::config::core::v3::HealthCheck as HealthCheckProto;

use crate::config::{self, ConfigError};
use crate::stats::{Counter, Gauge, Store};

/// What a check probes with.
#[derive(Debug)]
pub enum Probe {
    /// `http_health_check`.
    Http(http::HttpCheck),
    /// `tcp_health_check`.
    Tcp(tcp::TcpCheck),
    /// `grpc_health_check`.
    Grpc(grpc::GrpcCheck),
}

impl Probe {
    /// Envoy's `health_checker_type` in events.
    pub fn type_name(&self) -> &'static str {
        match self {
            Probe::Http(_) => "HTTP",
            Probe::Tcp(_) => "TCP",
            Probe::Grpc(_) => "GRPC",
        }
    }
}

/// A compiled `HealthCheck`.
#[derive(Debug)]
pub struct HealthCheck {
    /// `timeout`: one probe's deadline.
    pub timeout: Duration,
    /// `interval`.
    pub interval: Duration,
    /// `initial_jitter`: the first probe waits up to this long.
    pub initial_jitter: Duration,
    /// `interval_jitter`: added to each interval, up to this much.
    pub interval_jitter: Duration,
    /// `interval_jitter_percent`: added to each interval, up to this share of it.
    pub interval_jitter_percent: u32,
    /// `unhealthy_threshold`: network failures before a healthy host fails.
    pub unhealthy_threshold: u32,
    /// `healthy_threshold`: successes before a failing host is healthy again.
    pub healthy_threshold: u32,
    /// `reuse_connection` (default true).
    pub reuse_connection: bool,
    /// `no_traffic_interval` (default 60 s): the interval while the cluster has had no
    /// traffic.
    pub no_traffic_interval: Duration,
    /// `no_traffic_healthy_interval` (default: `no_traffic_interval`).
    pub no_traffic_healthy_interval: Duration,
    /// `unhealthy_interval` (default: `interval`).
    pub unhealthy_interval: Duration,
    /// `unhealthy_edge_interval` (default: `unhealthy_interval`).
    pub unhealthy_edge_interval: Duration,
    /// `healthy_edge_interval` (default: `interval`).
    pub healthy_edge_interval: Duration,
    /// Where events go (`event_log_path` and file event sinks).
    pub event_log: Option<Arc<event_log::EventLog>>,
    /// `always_log_health_check_failures`.
    pub always_log_failures: bool,
    /// `always_log_health_check_success`.
    pub always_log_success: bool,
    /// The probe.
    pub probe: Probe,
}

const FILE_SINK: &str =
    "envoy.extensions.health_check.event_sinks.file.v3.HealthCheckEventFileSink";

/// A required, positive duration.
fn positive(
    d: Option<&courier_proto::google::protobuf::Duration>,
    path: &str,
) -> Result<Duration, ConfigError> {
    let Some(d) = d else {
        return Err(ConfigError::new(path, "value is required"));
    };
    let d = config::duration(d, path)?;
    if d.is_zero() {
        return Err(ConfigError::new(path, "value must be greater than 0s"));
    }
    Ok(d)
}

/// An optional duration that must be positive when set.
fn positive_or(
    d: Option<&courier_proto::google::protobuf::Duration>,
    default: Duration,
    path: &str,
) -> Result<Duration, ConfigError> {
    match d {
        None => Ok(default),
        Some(_) => positive(d, path),
    }
}

impl HealthCheck {
    /// Compiles a cluster's `health_checks` (at most one, as in Envoy). `http2` says
    /// whether the cluster speaks HTTP/2 (a gRPC check needs it).
    pub fn compile_all(
        checks: &[HealthCheckProto],
        cluster: &str,
        http2: bool,
    ) -> Result<Option<Arc<HealthCheck>>, ConfigError> {
        match checks {
            [] => Ok(None),
            [one] => HealthCheck::compile(one, cluster, http2)
                .map(|c| Some(Arc::new(c)))
                .map_err(|e| e.at("health_checks[0]")),
            _ => Err(ConfigError::new(
                "health_checks",
                "Multiple health checks not supported",
            )),
        }
    }

    #[allow(deprecated)] // `event_log_path` is what configs still send
    fn compile(
        hc: &HealthCheckProto,
        cluster: &str,
        http2: bool,
    ) -> Result<HealthCheck, ConfigError> {
        for (field, set) in [
            ("alt_port", hc.alt_port.is_some()),
            ("event_service", hc.event_service.is_some()),
            ("tls_options", hc.tls_options.is_some()),
            (
                "transport_socket_match_criteria",
                hc.transport_socket_match_criteria.is_some(),
            ),
        ] {
            if set {
                return Err(ConfigError::unsupported(field));
            }
        }
        let timeout = positive(hc.timeout.as_ref(), "timeout")?;
        let interval = positive(hc.interval.as_ref(), "interval")?;
        let threshold = |v: Option<&courier_proto::google::protobuf::UInt32Value>, path: &str| {
            v.map(|v| v.value)
                .ok_or_else(|| ConfigError::new(path, "value is required"))
        };
        let unhealthy_threshold =
            threshold(hc.unhealthy_threshold.as_ref(), "unhealthy_threshold")?;
        let healthy_threshold = threshold(hc.healthy_threshold.as_ref(), "healthy_threshold")?;
        let no_traffic_interval = positive_or(
            hc.no_traffic_interval.as_ref(),
            Duration::from_secs(60),
            "no_traffic_interval",
        )?;
        let unhealthy_interval = positive_or(
            hc.unhealthy_interval.as_ref(),
            interval,
            "unhealthy_interval",
        )?;
        let mut event_log = None;
        if !hc.event_log_path.is_empty() {
            event_log = Some(hc.event_log_path.clone());
        }
        for (i, sink) in hc.event_logger.iter().enumerate() {
            let path = format!("event_logger[{i}]");
            let Some(any) = &sink.typed_config else {
                return Err(ConfigError::new(path, "typed_config is required"));
            };
            if courier_proto::type_url::message_name(&any.type_url) != FILE_SINK {
                return Err(ConfigError::unsupported(format!(
                    "{path}.typed_config ({})",
                    any.type_url
                )));
            }
            let file: courier_proto::envoy::extensions::health_check::event_sinks::file::v3::HealthCheckEventFileSink =
                courier_proto::unpack_any(any).map_err(|e| ConfigError::new(path.clone(), e.to_string()))?;
            if event_log
                .as_ref()
                .is_some_and(|p| *p != file.event_log_path)
            {
                // Envoy writes each event to every sink; Courier keeps one file.
                return Err(ConfigError::unsupported(format!(
                    "{path} (a second event log file)"
                )));
            }
            event_log = Some(file.event_log_path);
        }
        let probe = match &hc.health_checker {
            Some(HealthChecker::HttpHealthCheck(h)) => Probe::Http(
                http::HttpCheck::compile(h, cluster).map_err(|e| e.at("http_health_check"))?,
            ),
            Some(HealthChecker::TcpHealthCheck(t)) => {
                Probe::Tcp(tcp::TcpCheck::compile(t).map_err(|e| e.at("tcp_health_check"))?)
            }
            Some(HealthChecker::GrpcHealthCheck(g)) => {
                if !http2 {
                    return Err(ConfigError::new(
                        "grpc_health_check",
                        format!("{cluster} cluster must support HTTP/2 for gRPC healthchecking"),
                    ));
                }
                Probe::Grpc(
                    grpc::GrpcCheck::compile(g, cluster).map_err(|e| e.at("grpc_health_check"))?,
                )
            }
            Some(HealthChecker::CustomHealthCheck(c)) => {
                return Err(ConfigError::unsupported(format!(
                    "custom_health_check ({})",
                    c.name
                )))
            }
            None => {
                return Err(ConfigError::new(
                    "health_checker",
                    "one of http_health_check, tcp_health_check, grpc_health_check is required",
                ))
            }
        };
        let event_log = match event_log {
            Some(path) => Some(event_log::EventLog::open(&path).map_err(|e| {
                ConfigError::new("event_log_path", format!("cannot open '{path}': {e}"))
            })?),
            None => None,
        };
        Ok(HealthCheck {
            timeout,
            interval,
            initial_jitter: config::duration_or(
                hc.initial_jitter.as_ref(),
                Duration::ZERO,
                "initial_jitter",
            )?,
            interval_jitter: config::duration_or(
                hc.interval_jitter.as_ref(),
                Duration::ZERO,
                "interval_jitter",
            )?,
            interval_jitter_percent: hc.interval_jitter_percent,
            unhealthy_threshold,
            healthy_threshold,
            reuse_connection: hc.reuse_connection.as_ref().is_none_or(|b| b.value),
            no_traffic_interval,
            no_traffic_healthy_interval: positive_or(
                hc.no_traffic_healthy_interval.as_ref(),
                no_traffic_interval,
                "no_traffic_healthy_interval",
            )?,
            unhealthy_interval,
            unhealthy_edge_interval: positive_or(
                hc.unhealthy_edge_interval.as_ref(),
                unhealthy_interval,
                "unhealthy_edge_interval",
            )?,
            healthy_edge_interval: positive_or(
                hc.healthy_edge_interval.as_ref(),
                interval,
                "healthy_edge_interval",
            )?,
            event_log,
            always_log_failures: hc.always_log_health_check_failures,
            always_log_success: hc.always_log_health_check_success,
            probe,
        })
    }

    /// How long until the next probe: Envoy's choice among the intervals by the host's
    /// state, whether that state is about to change, and whether the cluster has had
    /// traffic; plus jitter.
    pub fn next_interval(
        &self,
        state: State,
        transition: Transition,
        had_traffic: bool,
    ) -> Duration {
        let pending = transition == Transition::ChangePending;
        let base = if had_traffic {
            match (state, pending) {
                (State::Unhealthy, true) => self.unhealthy_edge_interval,
                (State::Unhealthy, false) => self.unhealthy_interval,
                (State::Healthy, true) => self.healthy_edge_interval,
                (State::Healthy, false) => self.interval,
            }
        } else if state == State::Healthy && !pending {
            self.no_traffic_healthy_interval
        } else {
            self.no_traffic_interval
        };
        self.with_jitter(base, self.interval_jitter)
    }

    /// How long the first probe waits.
    pub fn first_delay(&self) -> Duration {
        if self.initial_jitter.is_zero() {
            Duration::ZERO
        } else {
            self.with_jitter(Duration::ZERO, self.initial_jitter)
        }
    }

    fn with_jitter(&self, base: Duration, jitter: Duration) -> Duration {
        let base_ms = base.as_millis() as u64;
        let mut ms = base_ms;
        let percent = u64::from(self.interval_jitter_percent).saturating_mul(base_ms) / 100;
        if percent > 0 {
            ms += fastrand::u64(..percent);
        }
        let jitter_ms = jitter.as_millis() as u64;
        if jitter_ms > 0 {
            ms += fastrand::u64(..jitter_ms);
        }
        // Never zero: a zero interval would spin.
        Duration::from_millis(ms.max(1))
    }
}

/// `cluster.<name>.health_check.*`.
pub struct HealthCheckStats {
    /// `attempt`.
    pub attempt: Arc<Counter>,
    /// `success`.
    pub success: Arc<Counter>,
    /// `failure`.
    pub failure: Arc<Counter>,
    /// `network_failure`.
    pub network_failure: Arc<Counter>,
    /// `passive_failure`.
    pub passive_failure: Arc<Counter>,
    /// `verify_cluster`.
    pub verify_cluster: Arc<Counter>,
    /// `healthy`: hosts passing.
    pub healthy: Arc<Gauge>,
    /// `degraded`: hosts passing degraded.
    pub degraded: Arc<Gauge>,
}

impl HealthCheckStats {
    /// Registers (or finds) cluster `name`'s.
    pub fn new(store: &Store, name: &str) -> Arc<HealthCheckStats> {
        let c = |s: &str| store.counter(&format!("cluster.{name}.health_check.{s}"));
        let g = |s: &str| store.gauge(&format!("cluster.{name}.health_check.{s}"));
        Arc::new(HealthCheckStats {
            attempt: c("attempt"),
            success: c("success"),
            failure: c("failure"),
            network_failure: c("network_failure"),
            passive_failure: c("passive_failure"),
            verify_cluster: c("verify_cluster"),
            healthy: g("healthy"),
            degraded: g("degraded"),
        })
    }
}

/// The state a probe leaves a host in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Passing.
    Healthy,
    /// Failing.
    Unhealthy,
}

/// Whether a result changed the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing changed.
    Unchanged,
    /// The host moved (or its degraded mark did).
    Changed,
    /// The result points the other way, below its threshold.
    ChangePending,
}

/// Why a probe failed (Envoy's `HealthCheckFailureType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The host answered, and the answer fails (an unexpected status, a mismatch).
    Active,
    /// The connection failed or was reset.
    Network,
    /// No answer within `timeout`.
    Timeout,
}

impl FailureKind {
    /// Envoy's name in events.
    pub fn name(self) -> &'static str {
        match self {
            FailureKind::Active => "ACTIVE",
            FailureKind::Network => "NETWORK",
            FailureKind::Timeout => "NETWORK_TIMEOUT",
        }
    }
}

/// A probe's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Passed; `degraded` when the host says so (`x-envoy-degraded`).
    Success {
        /// The host answered degraded.
        degraded: bool,
    },
    /// Failed.
    Failure {
        /// Why.
        kind: FailureKind,
        /// A `retriable_statuses` status: counts toward the threshold like a network
        /// failure.
        retriable: bool,
        /// The HTTP status, for events (0: none).
        status: u16,
    },
}

/// One host's checking state (Envoy's `ActiveHealthCheckSession` counters).
#[derive(Debug)]
pub struct Session {
    /// No result yet.
    pub first_check: bool,
    num_healthy: u32,
    num_unhealthy: u32,
}

impl Default for Session {
    fn default() -> Self {
        Session {
            first_check: true,
            num_healthy: 0,
            num_unhealthy: 0,
        }
    }
}

impl Session {
    /// Applies `outcome` to the host's `flags`: the state it leaves the host in and
    /// whether that changed.
    pub fn apply(
        &mut self,
        outcome: Outcome,
        flags: &super::HostStats,
        hc: &HealthCheck,
    ) -> (State, Transition) {
        use super::health_flags::HealthFlags as F;
        let failing = flags.flags().intersects(F::FAILED_ACTIVE_HC);
        match outcome {
            Outcome::Success { degraded } => {
                self.num_unhealthy = 0;
                let mut transition = Transition::Unchanged;
                if failing {
                    self.num_healthy += 1;
                    // A first result moves the host at once: faster start-up, as Envoy.
                    if self.first_check || self.num_healthy >= hc.healthy_threshold {
                        flags.set_flag(F::FAILED_ACTIVE_HC | F::ACTIVE_HC_TIMEOUT, false);
                        transition = Transition::Changed;
                    } else {
                        transition = Transition::ChangePending;
                    }
                    // Slow start counts the host's age from here, as Envoy's
                    // `lastHcPassTime`.
                    flags.set_healthy_since(std::time::Instant::now());
                }
                if flags.set_flag(F::DEGRADED_ACTIVE_HC, degraded)
                    && transition == Transition::Unchanged
                {
                    transition = Transition::Changed;
                }
                if self.first_check && transition == Transition::Unchanged {
                    // The host's first result ends its pending state: a change for the
                    // cluster's warming.
                    transition = Transition::Changed;
                }
                self.first_check = false;
                flags.set_hc_checked();
                (State::Healthy, transition)
            }
            Outcome::Failure {
                kind, retriable, ..
            } => {
                self.num_healthy = 0;
                let mut transition = Transition::Unchanged;
                if !failing {
                    self.num_unhealthy += 1;
                    let network = kind != FailureKind::Active;
                    if (!network && !retriable) || self.num_unhealthy >= hc.unhealthy_threshold {
                        flags.set_flag(F::FAILED_ACTIVE_HC, true);
                        transition = Transition::Changed;
                    } else {
                        transition = Transition::ChangePending;
                    }
                }
                let now_failing = flags.flags().intersects(F::FAILED_ACTIVE_HC);
                flags.set_flag(
                    F::ACTIVE_HC_TIMEOUT,
                    kind == FailureKind::Timeout && now_failing,
                );
                if self.first_check && transition == Transition::Unchanged {
                    transition = Transition::Changed;
                }
                self.first_check = false;
                flags.set_hc_checked();
                (State::Unhealthy, transition)
            }
        }
    }
}

/// Parses a health check payload (`text` is hex, `binary` raw bytes).
pub fn payload(p: &health_check::Payload, path: &str) -> Result<Vec<u8>, ConfigError> {
    use health_check::payload::Payload;
    match &p.payload {
        Some(Payload::Text(t)) => {
            let bytes = decode_hex(t)
                .filter(|b| !b.is_empty())
                .ok_or_else(|| ConfigError::new(path, format!("invalid hex string '{t}'")))?;
            Ok(bytes)
        }
        Some(Payload::Binary(b)) => Ok(b.clone()),
        None => Err(ConfigError::new(path, "payload is required")),
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Whether `segments` occur in `buf`, in order (Envoy's `PayloadMatcher`).
pub fn payload_matches(segments: &[Vec<u8>], buf: &[u8]) -> bool {
    let mut rest = buf;
    for seg in segments {
        match rest.windows(seg.len()).position(|w| w == seg.as_slice()) {
            Some(i) => rest = &rest[i + seg.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> Result<HealthCheck, ConfigError> {
        let proto: HealthCheckProto = courier_proto::from_yaml(yaml).expect("a HealthCheck");
        HealthCheck::compile(&proto, "c", false)
    }

    const BASE: &str = "timeout: 1s\ninterval: 2s\nunhealthy_threshold: 3\nhealthy_threshold: 2\n";

    #[test]
    fn thresholds_move_hosts_as_envoy_moves_them() {
        let hc = check(&format!("{BASE}tcp_health_check: {{}}\n")).expect("compiles");
        let stats = crate::upstream::HostStats::new(&Store::new(1));
        stats.prepare_for(true);
        let mut s = Session::default();
        let ok = Outcome::Success { degraded: false };
        let net = Outcome::Failure {
            kind: FailureKind::Network,
            retriable: false,
            status: 0,
        };
        let active = Outcome::Failure {
            kind: FailureKind::Active,
            retriable: false,
            status: 503,
        };
        // The first success makes the host healthy at once.
        assert_eq!(
            s.apply(ok, &stats, &hc),
            (State::Healthy, Transition::Changed)
        );
        // Network failures need the unhealthy threshold.
        assert_eq!(s.apply(net, &stats, &hc).1, Transition::ChangePending);
        assert_eq!(s.apply(net, &stats, &hc).1, Transition::ChangePending);
        assert_eq!(
            s.apply(net, &stats, &hc),
            (State::Unhealthy, Transition::Changed)
        );
        // Successes need the healthy threshold.
        assert_eq!(s.apply(ok, &stats, &hc).1, Transition::ChangePending);
        assert_eq!(s.apply(ok, &stats, &hc).1, Transition::Changed);
        // An active failure moves a healthy host at once.
        assert_eq!(s.apply(active, &stats, &hc).1, Transition::Changed);
        assert_eq!(stats.flags().to_string(), "/failed_active_hc");
    }

    #[test]
    fn invalid_checks_are_refused_with_envoys_reasons() {
        let err = |yaml: &str| check(yaml).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err(
            "interval: 1s\nunhealthy_threshold: 1\nhealthy_threshold: 1\ntcp_health_check: {}\n"
        )
        .contains("timeout"));
        assert!(err(&format!("{BASE}http_health_check: {{ path: /h, expected_statuses: [{{ start: 200, end: 200 }}] }}\n"))
            .contains("expecting start < end"));
        assert!(err(&format!(
            "{BASE}tcp_health_check: {{ send: {{ text: zz }} }}\n"
        ))
        .contains("invalid hex string"));
        assert!(err(&format!("{BASE}alt_port: 9\ntcp_health_check: {{}}\n")).contains("alt_port"));
    }

    #[test]
    fn payload_segments_match_in_order() {
        assert!(payload_matches(
            &[b"ab".to_vec(), b"cd".to_vec()],
            b"xxabyycd"
        ));
        assert!(!payload_matches(
            &[b"cd".to_vec(), b"ab".to_vec()],
            b"xxabyycd"
        ));
        assert_eq!(decode_hex("01ff"), Some(vec![1, 255]));
    }
}
