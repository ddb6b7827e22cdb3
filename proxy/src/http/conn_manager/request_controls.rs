//! The `x-envoy-*` request headers through which a client steers the router: retries and
//! timeouts for its own request.
//!
//! Only an internal request ([`crate::http::conn_manager::internal_address`]) still carries them: the
//! connection manager strips them from every other one. The router obeys them and removes
//! them, as Envoy 1.40's does (measured): they are not sent upstream.
//!
//! - `x-envoy-retry-on`, `x-envoy-retry-grpc-on`: conditions added to the route's retry
//!   policy (unknown tokens are ignored); `x-envoy-max-retries` replaces its
//!   `num_retries` when any condition is on; `x-envoy-retriable-status-codes` and
//!   `x-envoy-retriable-header-names` add codes and (present) response headers.
//! - `x-envoy-upstream-rq-timeout-ms` replaces the route timeout (`0`: none), and
//!   `x-envoy-upstream-rq-per-try-timeout-ms` the per-try timeout, with or without
//!   retries; a value that is not a number is ignored.
//! - `x-envoy-upstream-rq-timeout-alt-response`: an upstream timeout answers `204` with
//!   no body instead of `504`.
//! - `x-envoy-upstream-alt-stat-name` and `x-envoy-hedge-on-per-try-timeout` are removed
//!   without effect: Courier keeps no alternative stats and does not hedge.
//!
//! The router's config can change that ([`ControlOptions`]): `respect_expected_rq_timeout`
//! takes the route timeout from `x-envoy-expected-rq-timeout-ms` when there is one (and
//! then leaves `x-envoy-upstream-rq-timeout-ms` alone, to go upstream); `strict_check_headers`
//! refuses a request whose listed control is malformed (`400 invalid header '<name>' with
//! value '<value>'`, the connection closing) rather than ignoring the value.

use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};

use courier_proto::envoy::extensions::filters::http::router::v3::Router;

use crate::config::ConfigError;
use crate::http::conn_manager::headers::parse_decimal;
use crate::http::route::RetryPolicy;

static RETRY_ON: HeaderName = HeaderName::from_static("x-envoy-retry-on");
static RETRY_GRPC_ON: HeaderName = HeaderName::from_static("x-envoy-retry-grpc-on");
static MAX_RETRIES: HeaderName = HeaderName::from_static("x-envoy-max-retries");
static RETRIABLE_STATUS_CODES: HeaderName =
    HeaderName::from_static("x-envoy-retriable-status-codes");
static RETRIABLE_HEADER_NAMES: HeaderName =
    HeaderName::from_static("x-envoy-retriable-header-names");
static TIMEOUT_MS: HeaderName = HeaderName::from_static("x-envoy-upstream-rq-timeout-ms");
static PER_TRY_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-upstream-rq-per-try-timeout-ms");
static TIMEOUT_ALT_RESPONSE: HeaderName =
    HeaderName::from_static("x-envoy-upstream-rq-timeout-alt-response");
static ALT_STAT_NAME: HeaderName = HeaderName::from_static("x-envoy-upstream-alt-stat-name");
static HEDGE_ON_PER_TRY_TIMEOUT: HeaderName =
    HeaderName::from_static("x-envoy-hedge-on-per-try-timeout");
static EXPECTED_TIMEOUT_MS: HeaderName = HeaderName::from_static("x-envoy-expected-rq-timeout-ms");

/// How the router takes the controls: its `respect_expected_rq_timeout` and
/// `strict_check_headers`.
#[derive(Debug, Clone, Default)]
pub struct ControlOptions {
    /// `respect_expected_rq_timeout`.
    pub respect_expected_timeout: bool,
    /// `strict_check_headers`.
    pub strict: Vec<HeaderName>,
}

impl ControlOptions {
    /// Compiles the router's options at `path` (its `typed_config`).
    pub fn compile(router: &Router, path: &str) -> Result<ControlOptions, ConfigError> {
        let checkable = [
            &TIMEOUT_MS,
            &PER_TRY_TIMEOUT_MS,
            &MAX_RETRIES,
            &RETRY_ON,
            &RETRY_GRPC_ON,
        ];
        let strict = router
            .strict_check_headers
            .iter()
            .enumerate()
            .map(|(i, name)| {
                checkable
                    .iter()
                    .find(|h| h.as_str() == name)
                    .map(|h| HeaderName::clone(h))
                    .ok_or_else(|| {
                        ConfigError::new(
                            format!("{path}.strict_check_headers[{i}]"),
                            format!(
                                "'{name}' cannot be checked: one of {} can",
                                checkable.map(|h| h.as_str()).join(", ")
                            ),
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(ControlOptions {
            respect_expected_timeout: router.respect_expected_rq_timeout,
            strict,
        })
    }

    /// Checks the `strict_check_headers` controls of `headers`: `Err` with Envoy's reply
    /// body naming the first malformed one.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), String> {
        for name in &self.strict {
            let Some(v) = headers.get(name) else { continue };
            let valid = if *name == RETRY_ON {
                tokens(Some(v)).all(|t| RetryPolicy::none().enable(t))
            } else if *name == RETRY_GRPC_ON {
                tokens(Some(v)).all(|t| RetryPolicy::none().enable_grpc(t))
            } else if *name == MAX_RETRIES {
                // Envoy's check takes any 64-bit count (its use then takes 32 bits).
                parse_decimal(Some(v)).is_some()
            } else {
                parse_decimal(Some(v)).is_some()
            };
            if !valid {
                return Err(format!(
                    "invalid header '{name}' with value '{}'",
                    String::from_utf8_lossy(v.as_bytes())
                ));
            }
        }
        Ok(())
    }
}

/// The controls a request carried, taken off its headers.
#[derive(Debug, Clone, Default)]
pub struct RequestControls {
    retry_on: Option<HeaderValue>,
    retry_grpc_on: Option<HeaderValue>,
    max_retries: Option<u32>,
    status_codes: Option<HeaderValue>,
    header_names: Option<HeaderValue>,
    /// `x-envoy-upstream-rq-timeout-ms`: the route timeout (`Some(None)`: none).
    pub timeout: Option<Option<Duration>>,
    /// `x-envoy-upstream-rq-per-try-timeout-ms` (`Some(None)`: none).
    pub per_try_timeout: Option<Option<Duration>>,
    /// `x-envoy-upstream-rq-timeout-alt-response`: a timeout answers `204`.
    pub alt_response: bool,
}

impl RequestControls {
    /// Takes the controls off `headers`.
    pub fn take(headers: &mut HeaderMap, options: &ControlOptions) -> RequestControls {
        let ms = |v: Option<HeaderValue>| {
            parse_decimal(v.as_ref())
                .map(|n| Some(Duration::from_millis(n)).filter(|d| !d.is_zero()))
        };
        // With `respect_expected_rq_timeout` an expected timeout is the timeout, kept for
        // the next hop, and the other header is left to go upstream (as Envoy).
        let timeout = match headers.get(&EXPECTED_TIMEOUT_MS) {
            Some(expected) if options.respect_expected_timeout => ms(Some(expected.clone())),
            _ => ms(headers.remove(&TIMEOUT_MS)),
        };
        let c = RequestControls {
            retry_on: headers.remove(&RETRY_ON),
            retry_grpc_on: headers.remove(&RETRY_GRPC_ON),
            max_retries: parse_decimal(headers.remove(&MAX_RETRIES).as_ref())
                .and_then(|n| u32::try_from(n).ok()),
            status_codes: headers.remove(&RETRIABLE_STATUS_CODES),
            header_names: headers.remove(&RETRIABLE_HEADER_NAMES),
            timeout,
            per_try_timeout: ms(headers.remove(&PER_TRY_TIMEOUT_MS)),
            alt_response: headers.remove(&TIMEOUT_ALT_RESPONSE).is_some(),
        };
        headers.remove(&ALT_STAT_NAME);
        headers.remove(&HEDGE_ON_PER_TRY_TIMEOUT);
        c
    }

    /// The route's retry policy with these controls merged in (`None`: no retries).
    pub fn retry_policy(&self, route: Option<&Arc<RetryPolicy>>) -> Option<Arc<RetryPolicy>> {
        let touches = self.retry_on.is_some()
            || self.retry_grpc_on.is_some()
            || self.max_retries.is_some()
            || self.status_codes.is_some()
            || self.header_names.is_some();
        if !touches {
            return route.cloned();
        }
        let mut p = route.map_or_else(RetryPolicy::none, |r| RetryPolicy::clone(r));
        for token in tokens(self.retry_on.as_ref()) {
            p.enable(token);
        }
        for token in tokens(self.retry_grpc_on.as_ref()) {
            p.enable_grpc(token);
        }
        p.status_codes
            .extend(tokens(self.status_codes.as_ref()).filter_map(|t| t.parse::<u16>().ok()));
        for name in tokens(self.header_names.as_ref()) {
            if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
                p.add_retriable_header(name);
            }
        }
        if !p.retries_anything() {
            return route.cloned();
        }
        if let Some(n) = self.max_retries {
            p.num_retries = n;
        }
        Some(Arc::new(p))
    }
}

/// A header value's comma-separated tokens, trimmed, empty ones left out.
fn tokens(v: Option<&HeaderValue>) -> impl Iterator<Item = &str> {
    v.and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::conn_manager::headers::test_header_map as headers;

    #[test]
    fn controls_are_taken_off_the_request() {
        let mut h = headers(&[
            ("x-envoy-retry-on", "bogus, 5xx"),
            ("x-envoy-max-retries", "3"),
            ("x-envoy-upstream-rq-timeout-ms", "0"),
            ("x-envoy-upstream-rq-per-try-timeout-ms", "abc"),
            ("x-envoy-upstream-alt-stat-name", "x"),
            ("x-envoy-force-trace", "1"),
        ]);
        let c = RequestControls::take(&mut h, &ControlOptions::default());
        assert_eq!(h.len(), 1, "only x-envoy-force-trace stays: {h:?}");
        assert_eq!(c.timeout, Some(None));
        assert_eq!(c.per_try_timeout, None);
        let p = c.retry_policy(None).expect("5xx turns retries on");
        assert!(p.on_5xx);
        assert_eq!(p.num_retries, 3);
    }

    #[test]
    fn strict_checks_name_the_malformed_control() {
        let options = ControlOptions {
            respect_expected_timeout: false,
            strict: vec![RETRY_ON.clone(), MAX_RETRIES.clone(), TIMEOUT_MS.clone()],
        };
        let ok = headers(&[
            ("x-envoy-retry-on", "5xx, reset"),
            ("x-envoy-max-retries", "2"),
            ("x-envoy-upstream-rq-per-try-timeout-ms", "x"),
        ]);
        assert_eq!(options.check(&ok), Ok(()));
        for (name, value) in [
            ("x-envoy-retry-on", "5xx,bogus"),
            ("x-envoy-max-retries", "-1"),
            ("x-envoy-upstream-rq-timeout-ms", "abc"),
        ] {
            assert_eq!(
                options.check(&headers(&[(name, value)])),
                Err(format!("invalid header '{name}' with value '{value}'"))
            );
        }
    }

    #[test]
    fn the_expected_timeout_can_be_the_timeout() {
        let options = ControlOptions {
            respect_expected_timeout: true,
            strict: Vec::new(),
        };
        let mut h = headers(&[
            ("x-envoy-expected-rq-timeout-ms", "200"),
            ("x-envoy-upstream-rq-timeout-ms", "100"),
        ]);
        let c = RequestControls::take(&mut h, &options);
        assert_eq!(c.timeout, Some(Some(Duration::from_millis(200))));
        assert_eq!(h.len(), 2, "both stay for the next hop");
    }

    #[test]
    fn max_retries_alone_turns_nothing_on() {
        let mut h = headers(&[("x-envoy-max-retries", "3")]);
        assert!(RequestControls::take(&mut h, &ControlOptions::default())
            .retry_policy(None)
            .is_none());
    }

    #[test]
    fn header_conditions_join_the_routes() {
        let mut route = RetryPolicy::none();
        route.enable("connect-failure");
        route.num_retries = 3;
        let route = Arc::new(route);
        let mut h = headers(&[
            (
                "x-envoy-retry-on",
                "retriable-status-codes,retriable-headers",
            ),
            ("x-envoy-retriable-status-codes", "418, 419,x"),
            ("x-envoy-retriable-header-names", "x-foo"),
            ("x-envoy-retry-grpc-on", "unavailable"),
        ]);
        let p = RequestControls::take(&mut h, &ControlOptions::default())
            .retry_policy(Some(&route))
            .expect("policy");
        assert!(p.on_connect_failure && p.on_status_codes);
        assert_eq!(p.num_retries, 3);
        assert_eq!(p.status_codes, [418, 419]);
        assert_eq!(p.grpc_statuses, [14]);
        assert!(p.retry_response(200, &headers(&[("x-foo", "1")])));
        assert!(p.retry_response(419, &HeaderMap::new()));
        assert!(!p.retry_response(500, &HeaderMap::new()));
    }
}
