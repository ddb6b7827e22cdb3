//! A cluster's compiled `outlier_detection` settings.

use std::time::Duration;

use courier_proto::envoy::config::cluster::v3::OutlierDetection as OutlierProto;

use crate::config::{self, ConfigError};

/// Why a host is ejected (Envoy's `OutlierEjectionType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EjectionType {
    /// `consecutive_5xx`.
    Consecutive5xx,
    /// `consecutive_gateway_failure`.
    ConsecutiveGatewayFailure,
    /// `consecutive_local_origin_failure`.
    ConsecutiveLocalOriginFailure,
    /// Success rate (external origin).
    SuccessRate,
    /// Success rate (local origin).
    SuccessRateLocalOrigin,
    /// Failure percentage (external origin).
    FailurePercentage,
    /// Failure percentage (local origin).
    FailurePercentageLocalOrigin,
}

impl EjectionType {
    pub(super) fn proto(self) -> i32 {
        use courier_proto::envoy::data::cluster::v3::OutlierEjectionType as T;
        (match self {
            EjectionType::Consecutive5xx => T::Consecutive5xx,
            EjectionType::ConsecutiveGatewayFailure => T::ConsecutiveGatewayFailure,
            EjectionType::ConsecutiveLocalOriginFailure => T::ConsecutiveLocalOriginFailure,
            EjectionType::SuccessRate => T::SuccessRate,
            EjectionType::SuccessRateLocalOrigin => T::SuccessRateLocalOrigin,
            EjectionType::FailurePercentage => T::FailurePercentage,
            EjectionType::FailurePercentageLocalOrigin => T::FailurePercentageLocalOrigin,
        }) as i32
    }
}

/// What a worker saw of one request to a host (Envoy's `Outlier::Result`, or an HTTP
/// status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// The host answered with this status.
    Status(u16),
    /// A connection to the host was made (the request goes on over it).
    ConnectSuccess,
    /// A connection was made and that is all the request needs (`tcp_proxy`).
    ConnectSuccessFinal,
    /// Connecting failed, or the connection was reset before the answer.
    ConnectFailed,
    /// The host did not answer in time; `code` is the status the client gets.
    Timeout(u16),
}

/// A compiled `outlier_detection`.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierConfig {
    pub(super) interval: Duration,
    pub(super) base_ejection_time: Duration,
    pub(super) max_ejection_time: Duration,
    pub(super) max_ejection_time_jitter: Duration,
    pub(super) max_ejection_percent: u32,
    pub(super) always_eject_one_host: bool,
    pub(super) consecutive_5xx: u32,
    pub(super) consecutive_gateway_failure: u32,
    pub(super) consecutive_local_origin_failure: u32,
    enforcing_consecutive_5xx: u32,
    enforcing_consecutive_gateway_failure: u32,
    enforcing_consecutive_local_origin_failure: u32,
    enforcing_success_rate: u32,
    enforcing_local_origin_success_rate: u32,
    enforcing_failure_percentage: u32,
    enforcing_failure_percentage_local_origin: u32,
    pub(super) success_rate_minimum_hosts: u32,
    pub(super) success_rate_request_volume: u32,
    pub(super) success_rate_stdev_factor: u32,
    pub(super) failure_percentage_threshold: u32,
    pub(super) failure_percentage_minimum_hosts: u32,
    pub(super) failure_percentage_request_volume: u32,
    pub(super) split_external_local_origin_errors: bool,
    /// `successful_active_health_check_uneject_host` (default true).
    pub successful_active_health_check_uneject_host: bool,
}

impl OutlierConfig {
    /// Compiles a cluster's `outlier_detection`, checked as Envoy checks it.
    pub fn compile(p: &OutlierProto) -> Result<OutlierConfig, ConfigError> {
        if !p.monitors.is_empty() {
            return Err(ConfigError::unsupported("monitors"));
        }
        if p.detect_degraded_hosts.as_ref().is_some_and(|b| b.value) {
            return Err(ConfigError::unsupported("detect_degraded_hosts"));
        }
        let u = |v: &Option<courier_proto::google::protobuf::UInt32Value>, default: u32| {
            v.as_ref().map_or(default, |v| v.value)
        };
        let percent = |v: &Option<courier_proto::google::protobuf::UInt32Value>,
                       default: u32,
                       field: &str|
         -> Result<u32, ConfigError> {
            let value = u(v, default);
            if value > 100 {
                return Err(ConfigError::new(
                    field,
                    "value must be less than or equal to 100",
                ));
            }
            Ok(value)
        };
        let positive = |d: &Option<courier_proto::google::protobuf::Duration>,
                        default: Duration,
                        field: &str|
         -> Result<Duration, ConfigError> {
            let d = config::duration_or(d.as_ref(), default, field)?;
            if d.is_zero() {
                return Err(ConfigError::new(field, "value must be greater than 0s"));
            }
            Ok(d)
        };
        let base_ejection_time = positive(
            &p.base_ejection_time,
            Duration::from_secs(30),
            "base_ejection_time",
        )?;
        let max_ejection_time = match &p.max_ejection_time {
            Some(_) => positive(&p.max_ejection_time, Duration::ZERO, "max_ejection_time")?,
            None => base_ejection_time.max(Duration::from_secs(300)),
        };
        if max_ejection_time < base_ejection_time {
            return Err(ConfigError::new(
                "max_ejection_time",
                "outlier detector's max_ejection_time cannot be smaller than base_ejection_time",
            ));
        }
        Ok(OutlierConfig {
            interval: positive(&p.interval, Duration::from_secs(10), "interval")?,
            base_ejection_time,
            max_ejection_time,
            max_ejection_time_jitter: config::duration_or(
                p.max_ejection_time_jitter.as_ref(),
                Duration::ZERO,
                "max_ejection_time_jitter",
            )?,
            max_ejection_percent: percent(&p.max_ejection_percent, 10, "max_ejection_percent")?,
            always_eject_one_host: p.always_eject_one_host.as_ref().is_some_and(|b| b.value),
            consecutive_5xx: u(&p.consecutive_5xx, 5),
            consecutive_gateway_failure: u(&p.consecutive_gateway_failure, 5),
            consecutive_local_origin_failure: u(&p.consecutive_local_origin_failure, 5),
            enforcing_consecutive_5xx: percent(
                &p.enforcing_consecutive_5xx,
                100,
                "enforcing_consecutive_5xx",
            )?,
            enforcing_consecutive_gateway_failure: percent(
                &p.enforcing_consecutive_gateway_failure,
                0,
                "enforcing_consecutive_gateway_failure",
            )?,
            enforcing_consecutive_local_origin_failure: percent(
                &p.enforcing_consecutive_local_origin_failure,
                100,
                "enforcing_consecutive_local_origin_failure",
            )?,
            enforcing_success_rate: percent(
                &p.enforcing_success_rate,
                100,
                "enforcing_success_rate",
            )?,
            enforcing_local_origin_success_rate: percent(
                &p.enforcing_local_origin_success_rate,
                100,
                "enforcing_local_origin_success_rate",
            )?,
            enforcing_failure_percentage: percent(
                &p.enforcing_failure_percentage,
                0,
                "enforcing_failure_percentage",
            )?,
            enforcing_failure_percentage_local_origin: percent(
                &p.enforcing_failure_percentage_local_origin,
                0,
                "enforcing_failure_percentage_local_origin",
            )?,
            success_rate_minimum_hosts: u(&p.success_rate_minimum_hosts, 5),
            success_rate_request_volume: u(&p.success_rate_request_volume, 100),
            success_rate_stdev_factor: u(&p.success_rate_stdev_factor, 1900),
            failure_percentage_threshold: percent(
                &p.failure_percentage_threshold,
                85,
                "failure_percentage_threshold",
            )?,
            failure_percentage_minimum_hosts: u(&p.failure_percentage_minimum_hosts, 5),
            failure_percentage_request_volume: u(&p.failure_percentage_request_volume, 50),
            split_external_local_origin_errors: p.split_external_local_origin_errors,
            successful_active_health_check_uneject_host: p
                .successful_active_health_check_uneject_host
                .as_ref()
                .is_none_or(|b| b.value),
        })
    }

    pub(super) fn enforcing(&self, t: EjectionType) -> u32 {
        match t {
            EjectionType::Consecutive5xx => self.enforcing_consecutive_5xx,
            EjectionType::ConsecutiveGatewayFailure => self.enforcing_consecutive_gateway_failure,
            EjectionType::ConsecutiveLocalOriginFailure => {
                self.enforcing_consecutive_local_origin_failure
            }
            EjectionType::SuccessRate => self.enforcing_success_rate,
            EjectionType::SuccessRateLocalOrigin => self.enforcing_local_origin_success_rate,
            EjectionType::FailurePercentage => self.enforcing_failure_percentage,
            EjectionType::FailurePercentageLocalOrigin => {
                self.enforcing_failure_percentage_local_origin
            }
        }
    }
}
