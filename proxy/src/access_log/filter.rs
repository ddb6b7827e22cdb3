//! Access-log filters (`access_log[].filter`): which requests an access log writes, as
//! Envoy's `AccessLogFilter`s decide it — status code, duration, health checks, tracing,
//! runtime sampling, a header, response flags, gRPC status, the log type, and `and`/`or`
//! of those.
//!
//! `traceable_filter` passes what Envoy's passes: a request the connection manager traces
//! because `x-envoy-force-trace` (or a request id marked so) asked it to, not a sampled
//! one, and never a health check. `grpc_status_filter` takes the status from the
//! response's trailers, else its headers, else the HTTP status (`200` is `UNKNOWN`), as
//! Envoy does for any response, gRPC or not.
//!
//! `extension_filter` takes Envoy's `envoy.access_loggers.extension_filters.cel` (an
//! `ExpressionFilter`, see `cel.rs`): the entry is logged when its expression is `true`.
//!
//! Refused by path: `metadata_filter` (Courier keeps no dynamic metadata), another
//! extension filter, and the CEL filter's `cel_config` (Envoy's opt-in string functions).

use courier_proto::envoy::config::accesslog::v3::access_log_filter::FilterSpecifier;
use courier_proto::envoy::config::accesslog::v3::comparison_filter::Op;
use courier_proto::envoy::config::accesslog::v3::{AccessLogFilter, ComparisonFilter};

use courier_proto::envoy::config::accesslog::v3::{extension_filter, ExtensionFilter};
use courier_proto::envoy::extensions::access_loggers::filters::cel::v3::ExpressionFilter;

use super::cel::Expression;
use super::{LogEntry, RESPONSE_FLAGS};
use crate::config::{ConfigError, Fraction};
use crate::http::route::{compile_header_matcher, HeaderMatcher, Pseudo};

/// A compiled filter.
pub enum LogFilter {
    /// `status_code_filter`.
    Status(Comparison),
    /// `duration_filter` (milliseconds).
    Duration(Comparison),
    /// `not_health_check_filter`.
    NotHealthCheck,
    /// `traceable_filter`.
    Traceable,
    /// `runtime_filter`: a share of requests, by their request id unless independent.
    Runtime {
        key: String,
        default: Fraction,
        independent: bool,
    },
    /// `and_filter`.
    And(Vec<LogFilter>),
    /// `or_filter`.
    Or(Vec<LogFilter>),
    /// `header_filter`.
    Header(Box<HeaderMatcher>),
    /// `response_flag_filter`: any of these flags (empty: any flag at all).
    ResponseFlags(Vec<String>),
    /// `log_type_filter`: the entry's type is (or, under `exclude`, is not) one of these.
    LogType { types: Vec<i32>, exclude: bool },
    /// `grpc_status_filter`: the request's gRPC status is (or, under `exclude`, is not)
    /// one of these.
    GrpcStatus { statuses: Vec<i64>, exclude: bool },
    /// `envoy.access_loggers.extension_filters.cel`: the expression is `true`.
    Cel(Box<Expression>),
}

/// The type of the CEL filter's config.
const EXPRESSION_FILTER: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter";

/// An `extension_filter` at `path`: the CEL filter (by its config's type, as Envoy finds
/// it), or refused.
fn extension(f: &ExtensionFilter, path: &str) -> Result<LogFilter, ConfigError> {
    let Some(extension_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        return Err(ConfigError::new(
            format!("{path}.typed_config"),
            "an extension filter needs a typed_config",
        ));
    };
    if any.type_url != EXPRESSION_FILTER {
        return Err(ConfigError::new(
            format!("{path}.typed_config"),
            format!(
                "access log extension filter {} ({}) is not supported by Courier",
                if f.name.is_empty() {
                    "(unnamed)"
                } else {
                    &f.name
                },
                any.type_url
            ),
        ));
    }
    let at = format!("{path}.typed_config");
    let cel: ExpressionFilter =
        courier_proto::unpack_any(any).map_err(|e| ConfigError::new(&at, e.to_string()))?;
    if cel.cel_config.is_some() {
        return Err(ConfigError::unsupported(format!("{at}.cel_config")));
    }
    let expr = super::cel::compile_at(&cel.expression, &format!("{at}.expression"))?;
    Ok(LogFilter::Cel(Box::new(expr)))
}

/// A `ComparisonFilter`: its operator and value (a runtime key may override it).
#[derive(Debug)]
pub struct Comparison {
    op: Op,
    default: u64,
    key: String,
}

impl Comparison {
    fn compile(c: Option<&ComparisonFilter>, path: &str) -> Result<Comparison, ConfigError> {
        let c = c.ok_or_else(|| ConfigError::new(path, "comparison is required"))?;
        let value = c
            .value
            .as_ref()
            .ok_or_else(|| ConfigError::new(format!("{path}.value"), "value is required"))?;
        Ok(Comparison {
            op: Op::try_from(c.op).unwrap_or(Op::Eq),
            default: u64::from(value.default_value),
            key: value.runtime_key.clone(),
        })
    }

    fn holds(&self, actual: u64) -> bool {
        let value = crate::layered_runtime::snapshot().get_integer(&self.key, self.default);
        match self.op {
            Op::Eq => actual == value,
            Op::Ge => actual >= value,
            Op::Le => actual <= value,
            Op::Ne => actual != value,
        }
    }
}

impl LogFilter {
    /// Compiles `filter` at `path`.
    pub fn compile(filter: &AccessLogFilter, path: &str) -> Result<LogFilter, ConfigError> {
        let list = |filters: &[AccessLogFilter], at: &str| {
            if filters.len() < 2 {
                return Err(ConfigError::new(
                    format!("{path}.{at}.filters"),
                    "value must contain at least 2 item(s)",
                ));
            }
            filters
                .iter()
                .enumerate()
                .map(|(i, f)| LogFilter::compile(f, &format!("{path}.{at}.filters[{i}]")))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(match &filter.filter_specifier {
            Some(FilterSpecifier::StatusCodeFilter(f)) => LogFilter::Status(Comparison::compile(
                f.comparison.as_ref(),
                &format!("{path}.status_code_filter.comparison"),
            )?),
            Some(FilterSpecifier::DurationFilter(f)) => LogFilter::Duration(Comparison::compile(
                f.comparison.as_ref(),
                &format!("{path}.duration_filter.comparison"),
            )?),
            Some(FilterSpecifier::NotHealthCheckFilter(_)) => LogFilter::NotHealthCheck,
            Some(FilterSpecifier::TraceableFilter(_)) => LogFilter::Traceable,
            Some(FilterSpecifier::RuntimeFilter(f)) => LogFilter::Runtime {
                key: f.runtime_key.clone(),
                default: f
                    .percent_sampled
                    .as_ref()
                    .map_or(Fraction::NONE, Fraction::of),
                independent: f.use_independent_randomness,
            },
            Some(FilterSpecifier::AndFilter(f)) => LogFilter::And(list(&f.filters, "and_filter")?),
            Some(FilterSpecifier::OrFilter(f)) => LogFilter::Or(list(&f.filters, "or_filter")?),
            Some(FilterSpecifier::HeaderFilter(f)) => {
                let at = format!("{path}.header_filter.header");
                let h = f
                    .header
                    .as_ref()
                    .ok_or_else(|| ConfigError::new(&at, "value is required"))?;
                LogFilter::Header(Box::new(compile_header_matcher(h, &at)?))
            }
            Some(FilterSpecifier::ResponseFlagFilter(f)) => {
                for (i, flag) in f.flags.iter().enumerate() {
                    if !RESPONSE_FLAGS.contains(&flag.as_str()) {
                        return Err(ConfigError::new(
                            format!("{path}.response_flag_filter.flags[{i}]"),
                            format!("unknown response flag {flag}"),
                        ));
                    }
                }
                LogFilter::ResponseFlags(f.flags.clone())
            }
            Some(FilterSpecifier::LogTypeFilter(f)) => LogFilter::LogType {
                types: f.types.clone(),
                exclude: f.exclude,
            },
            Some(FilterSpecifier::GrpcStatusFilter(f)) => {
                for (i, s) in f.statuses.iter().enumerate() {
                    if !(0..=16).contains(s) {
                        return Err(ConfigError::new(
                            format!("{path}.grpc_status_filter.statuses[{i}]"),
                            "value must be one of the defined enum values",
                        ));
                    }
                }
                LogFilter::GrpcStatus {
                    statuses: f.statuses.iter().map(|&s| i64::from(s)).collect(),
                    exclude: f.exclude,
                }
            }
            Some(FilterSpecifier::ExtensionFilter(f)) => {
                extension(f, &format!("{path}.extension_filter"))?
            }
            Some(FilterSpecifier::MetadataFilter(_)) => {
                return Err(ConfigError::new(
                    format!("{path}.metadata_filter"),
                    "not supported by Courier: it keeps no dynamic metadata",
                ))
            }
            None => return Err(ConfigError::new(path, "filter_specifier is required")),
        })
    }

    /// Whether the request `e` is logged.
    pub fn passes(&self, e: &LogEntry<'_>) -> bool {
        match self {
            LogFilter::Status(c) => c.holds(u64::from(e.status)),
            LogFilter::Duration(c) => {
                c.holds(u64::try_from(e.duration.as_millis()).unwrap_or(u64::MAX))
            }
            LogFilter::NotHealthCheck => !e.health_check,
            // Envoy's: traced, for `ServiceForced` (never a health check).
            LogFilter::Traceable => e.service_forced && !e.health_check,
            LogFilter::Runtime {
                key,
                default,
                independent,
            } => {
                let share = crate::layered_runtime::snapshot().fraction(key, *default);
                let request_id = e
                    .request
                    .get("x-request-id")
                    .map(|v| v.as_bytes())
                    .filter(|_| !independent);
                let random = match request_id {
                    // The same request id samples the same way everywhere.
                    Some(id) => {
                        xxhash_rust::xxh64::xxh64(id, 0)
                            ^ xxhash_rust::xxh64::xxh64(key.as_bytes(), 0)
                    }
                    None => fastrand::u64(..),
                };
                share.contains(random)
            }
            LogFilter::And(all) => all.iter().all(|f| f.passes(e)),
            LogFilter::Or(any) => any.iter().any(|f| f.passes(e)),
            LogFilter::Header(m) => {
                let pseudo = Pseudo {
                    method: Some(e.method),
                    path: Some(e.path),
                    authority: Some(e.authority),
                    scheme: None,
                    status: None,
                };
                m.matches(e.request, &pseudo)
            }
            LogFilter::ResponseFlags(wanted) => {
                let set: Vec<&str> = if e.flags == "-" {
                    Vec::new()
                } else {
                    e.flags.split(',').collect()
                };
                if wanted.is_empty() {
                    !set.is_empty()
                } else {
                    set.iter().any(|f| wanted.iter().any(|w| w == f))
                }
            }
            LogFilter::LogType { types, exclude } => {
                types.contains(&(e.log_type as i32)) != *exclude
            }
            LogFilter::GrpcStatus { statuses, exclude } => {
                // Statuses above 16 are invalid here (Envoy's `allow_user_defined` false);
                // none at all is `UNKNOWN`.
                let status = super::grpc_status(e, false).unwrap_or(2);
                statuses.contains(&status) != *exclude
            }
            LogFilter::Cel(expr) => expr.passes(e),
        }
    }
}
