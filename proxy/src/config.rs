//! Shared pieces of compiling Envoy protos into Courier's internal types: the error that
//! names the offending field, and converters for addresses and durations.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use courier_proto::envoy::config::core::v3 as core;
use courier_proto::google::protobuf;

/// A configuration that Courier cannot apply, naming the field (`clusters[2].lb_policy`)
/// and why. It becomes a start-up error for the bootstrap and a NACK's detail for xDS.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// Field path within the resource.
    pub path: String,
    /// What is wrong there.
    pub message: String,
}

impl ConfigError {
    /// An error at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }

    /// Prefixes the path with the enclosing field (`at("clusters[2]")`).
    pub fn at(mut self, prefix: &str) -> Self {
        self.path = if self.path.is_empty() {
            prefix.to_string()
        } else {
            format!("{prefix}.{}", self.path)
        };
        self
    }

    /// Rejects a field Courier does not implement and that would change behaviour.
    pub fn unsupported(path: impl Into<String>) -> Self {
        ConfigError::new(path, "not supported by Courier")
    }
}

/// Converts a proto Duration (negative durations are errors).
pub fn duration(d: &protobuf::Duration, path: &str) -> Result<Duration, ConfigError> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(ConfigError::new(path, "duration must not be negative"));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// An optional duration with a default.
pub fn duration_or(
    d: Option<&protobuf::Duration>,
    default: Duration,
    path: &str,
) -> Result<Duration, ConfigError> {
    d.map_or(Ok(default), |d| duration(d, path))
}

/// The socket address of an `Address` that must be an IP:port (names are not resolved here).
pub fn socket_address(addr: Option<&core::Address>, path: &str) -> Result<SocketAddr, ConfigError> {
    let sa = socket_address_parts(addr, path)?;
    let ip: IpAddr = sa.0.parse().map_err(|_| {
        ConfigError::new(
            format!("{path}.socket_address.address"),
            format!("malformed IP address: {}", sa.0),
        )
    })?;
    let compat_ok = match ip {
        IpAddr::V6(v6) => v6.is_unspecified() || v6.to_ipv4_mapped().is_some(),
        IpAddr::V4(_) => false,
    };
    if ipv4_compat(addr) && !compat_ok {
        return Err(ConfigError::new(
            format!("{path}.socket_address.ipv4_compat"),
            format!(
                "Only IPv6 address '::' or valid IPv4-mapped IPv6 address can set ipv4_compat: {}",
                SocketAddr::new(ip, sa.1)
            ),
        ));
    }
    Ok(SocketAddr::new(ip, sa.1))
}

/// `socket_address.ipv4_compat`: an IPv6 listener that takes IPv4 connections too.
pub fn ipv4_compat(addr: Option<&core::Address>) -> bool {
    matches!(
        addr.and_then(|a| a.address.as_ref()),
        Some(core::address::Address::SocketAddress(sa)) if sa.ipv4_compat
    )
}

/// Host and port of an `Address` (for DNS clusters the host may be a name).
pub fn socket_address_parts(
    addr: Option<&core::Address>,
    path: &str,
) -> Result<(String, u16), ConfigError> {
    use core::address::Address as A;
    use core::socket_address::PortSpecifier;
    let Some(addr) = addr else {
        return Err(ConfigError::new(path, "address is required"));
    };
    let sa = match &addr.address {
        Some(A::SocketAddress(sa)) => sa,
        Some(A::Pipe(_)) => return Err(ConfigError::unsupported(format!("{path}.pipe"))),
        Some(A::EnvoyInternalAddress(_)) => {
            return Err(ConfigError::unsupported(format!(
                "{path}.envoy_internal_address"
            )))
        }
        None => return Err(ConfigError::new(path, "address is required")),
    };
    if sa.protocol != core::socket_address::Protocol::Tcp as i32 {
        return Err(ConfigError::unsupported(format!(
            "{path}.socket_address.protocol"
        )));
    }
    let port = match sa.port_specifier {
        Some(PortSpecifier::PortValue(p)) => u16::try_from(p).map_err(|_| {
            ConfigError::new(
                format!("{path}.socket_address.port_value"),
                format!("port {p} out of range"),
            )
        })?,
        Some(PortSpecifier::NamedPort(_)) => {
            return Err(ConfigError::unsupported(format!(
                "{path}.socket_address.named_port"
            )))
        }
        None => 0,
    };
    if sa.address.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.socket_address.address"),
            "address is required",
        ));
    }
    Ok((sa.address.clone(), port))
}

/// Envoy's stat-name form of an address: `127.0.0.1_10000`, `[::1]_80`.
pub fn address_stat_name(addr: &SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("{}_{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]_{}", a.ip(), a.port()),
    }
}

/// A share of requests: a `FractionalPercent` (with a runtime key, see
/// [`crate::layered_runtime::RuntimeFraction`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fraction {
    numerator: u32,
    denominator: u32,
}

impl Fraction {
    /// Every request.
    pub const ALL: Fraction = Fraction {
        numerator: 1,
        denominator: 1,
    };

    /// No request.
    pub const NONE: Fraction = Fraction {
        numerator: 0,
        denominator: 100,
    };

    /// This share with its numerator lowered to at most `numerator` (a request header's
    /// percentage can only narrow a configured one).
    pub fn capped(self, numerator: u32) -> Fraction {
        Fraction {
            numerator: self.numerator.min(numerator),
            ..self
        }
    }

    /// A `FractionalPercent` (an unknown denominator reads as `HUNDRED`, its default).
    pub fn of(p: &courier_proto::envoy::r#type::v3::FractionalPercent) -> Fraction {
        use courier_proto::envoy::r#type::v3::fractional_percent::DenominatorType;
        let denominator = match DenominatorType::try_from(p.denominator) {
            Ok(DenominatorType::TenThousand) => 10_000,
            Ok(DenominatorType::Million) => 1_000_000,
            _ => 100,
        };
        Fraction {
            numerator: p.numerator,
            denominator,
        }
    }

    /// `numerator` out of `denominator`.
    pub const fn new(numerator: u32, denominator: u32) -> Fraction {
        Fraction {
            numerator,
            denominator,
        }
    }

    /// `numerator` percent.
    pub const fn percent(numerator: u32) -> Fraction {
        Fraction::new(numerator, 100)
    }

    /// Whether this request falls in the share (a fresh draw each call).
    pub fn sample(&self) -> bool {
        self.numerator >= self.denominator || fastrand::u32(0..self.denominator) < self.numerator
    }

    /// Whether a request with this random value falls in the share (Envoy's
    /// `evaluateFractionalPercent`: the value modulo the denominator, below the numerator),
    /// so that one value per request splits consistently across several shares.
    pub fn contains(&self, random: u64) -> bool {
        random % u64::from(self.denominator.max(1)) < u64::from(self.numerator)
    }
}

/// Checks a `ConfigSource` names something Courier can subscribe with (a cluster's EDS
/// source, a connection manager's RDS source, the bootstrap's).
pub fn validate_config_source(source: &core::ConfigSource) -> Result<(), ConfigError> {
    use core::config_source::ConfigSourceSpecifier;
    match &source.config_source_specifier {
        Some(ConfigSourceSpecifier::Ads(_)) => Ok(()),
        Some(ConfigSourceSpecifier::ApiConfigSource(api)) => {
            api_type_is_delta(api)?;
            if is_rest(api) {
                validate_rest_api(api).map_err(|e| e.at("api_config_source"))?;
            }
            Ok(())
        }
        Some(ConfigSourceSpecifier::PathConfigSource(_)) => Ok(()),
        #[allow(deprecated)]
        Some(ConfigSourceSpecifier::Path(_)) => Ok(()),
        Some(ConfigSourceSpecifier::Self_(_)) => Err(ConfigError::unsupported("self")),
        None => Err(ConfigError::new("", "config_source_specifier is required")),
    }
}

/// Whether `api` is a REST-JSON source.
pub fn is_rest(api: &core::ApiConfigSource) -> bool {
    api.api_type == core::api_config_source::ApiType::Rest as i32
}

/// Checks a REST `api_config_source` on its own, with Envoy's errors (paths relative to
/// it): one cluster name, no gRPC service, a `refresh_delay`, a positive `request_timeout`.
/// `rate_limit_settings` applies to gRPC only and is ignored, as in Envoy.
pub fn validate_rest_api(api: &core::ApiConfigSource) -> Result<(), ConfigError> {
    if api.cluster_names.is_empty() && api.grpc_services.is_empty() {
        return Err(ConfigError::new(
            "",
            "API configs must have either a gRPC service or a cluster name defined",
        ));
    }
    if !api.grpc_services.is_empty() {
        return Err(ConfigError::new(
            "grpc_services",
            "envoy.config.core.v3.ApiConfigSource, if not a gRPC type, must not have a gRPC service specified",
        ));
    }
    if api.cluster_names.len() != 1 {
        return Err(ConfigError::new(
            "cluster_names",
            "envoy.config.core.v3.ApiConfigSource must have a singleton cluster name specified",
        ));
    }
    let Some(refresh) = &api.refresh_delay else {
        return Err(ConfigError::new(
            "refresh_delay",
            "refresh_delay is required for REST API configuration sources",
        ));
    };
    duration(refresh, "refresh_delay")?;
    if let Some(t) = &api.request_timeout {
        if duration(t, "request_timeout")?.is_zero() {
            return Err(ConfigError::new(
                "request_timeout",
                "value must be greater than 0s",
            ));
        }
    }
    Ok(())
}

/// Whether an `ApiConfigSource` subscribes with the delta protocol (else state of the
/// world, which REST-JSON polls are); an `api_type` Courier does not speak is refused.
pub fn api_type_is_delta(api: &core::ApiConfigSource) -> Result<bool, ConfigError> {
    use core::api_config_source::ApiType;
    match ApiType::try_from(api.api_type) {
        Ok(ApiType::Grpc | ApiType::AggregatedGrpc | ApiType::Rest) => Ok(false),
        Ok(ApiType::DeltaGrpc | ApiType::AggregatedDeltaGrpc) => Ok(true),
        _ => Err(ConfigError::unsupported(
            "api_type (only GRPC, DELTA_GRPC and REST)",
        )),
    }
}
