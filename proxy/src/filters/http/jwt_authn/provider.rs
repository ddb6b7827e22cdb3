//! A `JwtProvider` compiled: who issues its tokens, for whom, with which keys, and what
//! a good token leaves on the request. The fields Courier does not act on are refused
//! by path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use courier_proto::envoy::config::core::v3::http_uri::HttpUpstreamType;
use courier_proto::envoy::extensions::filters::http::jwt_authn::v3 as pb;
use http::HeaderName;

use super::jwks::Jwks;
use crate::config::ConfigError;
use crate::http::route::RetryPolicy;

/// jwt_verify_lib's default clock skew.
const DEFAULT_CLOCK_SKEW: u64 = 60;

/// Envoy's `remote_jwks.cache_duration` when unset.
const DEFAULT_CACHE_DURATION: Duration = Duration::from_secs(600);
/// `cache_duration`'s bounds in Envoy's proto.
const MIN_CACHE_DURATION: Duration = Duration::from_millis(1);
const MAX_CACHE_DURATION: Duration = Duration::from_secs(2_500_000 * 3600);

/// Where a provider's keys come from.
pub enum KeySource {
    /// `local_jwks`; `None` when it did not parse (as Envoy, requests then fail with
    /// `Jwks doesn't have any valid public key`).
    Local(Option<Jwks>),
    /// `remote_jwks`: fetched by the connection manager on each worker when a token
    /// needs them (and, with `async_fetch`, by the main thread ahead of requests).
    Remote(Arc<RemoteJwks>),
}

/// The compiled configs' count, for [`RemoteJwks::id`].
static REMOTE_IDS: AtomicU64 = AtomicU64::new(0);

/// `remote_jwks` compiled: where to GET the key set, and for how long a worker keeps it.
#[derive(Debug)]
pub struct RemoteJwks {
    /// Unique among the configs compiled by this process: a worker's cache key (a new
    /// config starts with an empty cache, as Envoy's per-config cache).
    pub id: u64,
    /// `http_uri.uri`, as configured (for the logs).
    pub uri: String,
    /// `http_uri.cluster`.
    pub cluster: String,
    /// `http_uri.uri`'s host: the request's `:authority`.
    pub authority: String,
    /// `http_uri.uri`'s path.
    pub path: String,
    /// `http_uri.timeout`; `None` when zero (no timeout, as Envoy's async client).
    pub timeout: Option<Duration>,
    /// `cache_duration`.
    pub cache_duration: Duration,
    /// `retry_policy`, as Envoy's fetcher turns it into a route retry policy.
    pub retry: Option<FetchRetry>,
    /// `async_fetch`: the main thread fetches the set ahead of requests and keeps it
    /// fresh ([`super::async_fetch`]).
    pub async_fetch: Option<AsyncFetch>,
}

/// `remote_jwks.async_fetch` compiled.
#[derive(Debug, Clone, Copy)]
pub struct AsyncFetch {
    /// `fast_listener`: the listener serves before the first fetch is done (else it
    /// warms until that fetch succeeds or fails).
    pub fast_listener: bool,
    /// `failed_refetch_duration` (default 1 s): the wait after a failed fetch.
    pub failed_refetch: Duration,
    /// The wait after a good fetch: `cache_duration` in whole seconds, less 5 s when
    /// longer than that (Envoy refetches before a set would expire).
    pub good_refetch: Duration,
}

/// Envoy's `failed_refetch_duration` when unset.
const DEFAULT_FAILED_REFETCH: Duration = Duration::from_secs(1);
/// How long before a set's `cache_duration` ends Envoy refetches it.
const REFETCH_BEFORE_EXPIRY: Duration = Duration::from_secs(5);

impl AsyncFetch {
    fn compile(
        a: &pb::JwksAsyncFetch,
        cache_duration: Duration,
        path: &str,
    ) -> Result<AsyncFetch, ConfigError> {
        let failed_refetch = crate::config::duration_or(
            a.failed_refetch_duration.as_ref(),
            DEFAULT_FAILED_REFETCH,
            &format!("{path}.failed_refetch_duration"),
        )?;
        // Envoy reads the cache duration in whole seconds here.
        let whole = Duration::from_secs(cache_duration.as_secs());
        let good_refetch = match whole > REFETCH_BEFORE_EXPIRY {
            true => whole - REFETCH_BEFORE_EXPIRY,
            false => whole,
        };
        Ok(AsyncFetch {
            fast_listener: a.fast_listener,
            failed_refetch,
            good_refetch,
        })
    }
}

impl RemoteJwks {
    /// Compiles `remote_jwks` at `path`.
    fn compile(r: &pb::RemoteJwks, path: &str) -> Result<RemoteJwks, ConfigError> {
        let at = format!("{path}.http_uri");
        let uri = r
            .http_uri
            .as_ref()
            .ok_or_else(|| ConfigError::new(&at, "value is required"))?;
        if uri.uri.is_empty() {
            return Err(ConfigError::new(
                format!("{at}.uri"),
                "value length must be at least 1 characters",
            ));
        }
        let cluster = match &uri.http_upstream_type {
            Some(HttpUpstreamType::Cluster(c)) if !c.is_empty() => c.clone(),
            _ => {
                return Err(ConfigError::new(
                    format!("{at}.cluster"),
                    "value length must be at least 1 characters",
                ))
            }
        };
        let timeout = uri
            .timeout
            .as_ref()
            .ok_or_else(|| ConfigError::new(format!("{at}.timeout"), "value is required"))?;
        let timeout = crate::config::duration(timeout, &format!("{at}.timeout"))?;
        let at = format!("{path}.cache_duration");
        let cache_duration =
            crate::config::duration_or(r.cache_duration.as_ref(), DEFAULT_CACHE_DURATION, &at)?;
        if cache_duration < MIN_CACHE_DURATION || cache_duration >= MAX_CACHE_DURATION {
            return Err(ConfigError::new(
                at,
                "value must be inside range [1ms, 2500000h0m0s)",
            ));
        }
        let (authority, uri_path) = crate::protocol::message::host_and_path(&uri.uri);
        let retry = r
            .retry_policy
            .as_ref()
            .map(|p| core_retry_policy(p, &format!("{path}.retry_policy")))
            .transpose()?;
        let async_fetch = r
            .async_fetch
            .as_ref()
            .map(|a| AsyncFetch::compile(a, cache_duration, &format!("{path}.async_fetch")))
            .transpose()?;
        Ok(RemoteJwks {
            id: REMOTE_IDS.fetch_add(1, Ordering::Relaxed),
            uri: uri.uri.clone(),
            cluster,
            authority: authority.to_string(),
            path: uri_path.to_string(),
            timeout: (!timeout.is_zero()).then_some(timeout),
            cache_duration,
            retry,
            async_fetch,
        })
    }
}

/// A key set fetch's retry policy.
pub struct FetchRetry(pub RetryPolicy);

impl std::fmt::Debug for FetchRetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchRetry")
            .field("num_retries", &self.0.num_retries)
            .field("base_interval", &self.0.base_interval)
            .field("max_interval", &self.0.max_interval)
            .finish()
    }
}

/// A `core.v3.RetryPolicy` as Envoy's JWKS fetcher turns it into a route retry policy
/// (`convertCoreToRouteRetryPolicy`): `num_retries` (default 1), the back-off (default
/// 1 s to 10 s; `max_interval` defaults to 10 × `base_interval`), a per-try timeout of
/// `max_interval`, and retries on `5xx,gateway-error,connect-failure,reset` (Envoy reads
/// none of the policy's other fields here).
fn core_retry_policy(
    p: &courier_proto::envoy::config::core::v3::RetryPolicy,
    path: &str,
) -> Result<FetchRetry, ConfigError> {
    use courier_proto::envoy::config::route::v3 as route;
    use courier_proto::google::protobuf::Duration as PbDuration;
    let ms =
        |d: &PbDuration| (d.seconds.max(0) as u64) * 1000 + (d.nanos.max(0) as u64) / 1_000_000;
    let (base, max) = match &p.retry_back_off {
        None => (1000, 10_000),
        Some(b) => {
            let base = b.base_interval.as_ref().map(ms).ok_or_else(|| {
                ConfigError::new(
                    format!("{path}.retry_back_off.base_interval"),
                    "value is required",
                )
            })?;
            if base == 0 {
                return Err(ConfigError::new(
                    format!("{path}.retry_back_off.base_interval"),
                    "value must be greater than 0s",
                ));
            }
            let max = b.max_interval.as_ref().map_or(base * 10, ms);
            if max < base {
                return Err(ConfigError::new(
                    format!("{path}.retry_back_off"),
                    "max_interval must be greater than or equal to the base_interval",
                ));
            }
            (base, max)
        }
    };
    let duration = |ms: u64| PbDuration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    };
    let converted = route::RetryPolicy {
        retry_on: "5xx,gateway-error,connect-failure,reset".into(),
        num_retries: Some(
            p.num_retries
                .unwrap_or(courier_proto::google::protobuf::UInt32Value { value: 1 }),
        ),
        per_try_timeout: Some(duration(max)),
        retry_back_off: Some(route::retry_policy::RetryBackOff {
            base_interval: Some(duration(base)),
            max_interval: Some(duration(max)),
        }),
        ..Default::default()
    };
    RetryPolicy::compile(&converted, path).map(FetchRetry)
}

/// A set of audiences, as jwt_verify_lib's `CheckAudience` compares them: without an
/// `http://` or `https://` scheme and a trailing `/`.
#[derive(Debug, Default)]
pub struct Audiences(Vec<String>);

/// `aud` without the scheme and trailing slash `CheckAudience` ignores.
fn sanitize(aud: &str) -> &str {
    let a = aud
        .strip_prefix("http://")
        .or_else(|| aud.strip_prefix("https://"))
        .unwrap_or(aud);
    a.strip_suffix('/').unwrap_or(a)
}

impl Audiences {
    /// The configured audiences.
    pub fn new(list: &[String]) -> Audiences {
        Audiences(list.iter().map(|a| sanitize(a).to_string()).collect())
    }

    /// Whether a token's audiences are allowed: any of them listed, or none configured.
    pub fn allows(&self, token: &[String]) -> bool {
        self.0.is_empty()
            || token
                .iter()
                .any(|a| self.0.iter().any(|c| c == sanitize(a)))
    }
}

/// `claim_to_headers`: a claim (`a.b` reaches into objects) copied to a header.
pub struct ClaimToHeader {
    pub header: HeaderName,
    pub claim: Vec<String>,
}

/// A compiled provider.
pub struct Provider {
    /// Its name in `providers`.
    pub name: String,
    pub issuer: String,
    pub audiences: Audiences,
    /// Its keys.
    pub keys: KeySource,
    pub forward: bool,
    pub forward_payload_header: Option<HeaderName>,
    pub pad_forward_payload_header: bool,
    pub claim_to_headers: Vec<ClaimToHeader>,
    pub clock_skew: u64,
    /// Where its tokens are: the proto's locations (the default ones applied by the
    /// extractor).
    pub from_headers: Vec<(HeaderName, String)>,
    pub from_params: Vec<String>,
    pub from_cookies: Vec<String>,
}

/// A header name at `path`, lower-cased as Envoy's `LowerCaseString`.
fn header(name: &str, path: &str) -> Result<HeaderName, ConfigError> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| ConfigError::new(path, format!("invalid header name '{name}'")))
}

impl Provider {
    /// Compiles provider `name` at `path`.
    pub fn compile(name: &str, p: &pb::JwtProvider, path: &str) -> Result<Provider, ConfigError> {
        let refused = [
            ("subjects", p.subjects.is_some()),
            ("require_expiration", p.require_expiration),
            ("max_lifetime", p.max_lifetime.is_some()),
            ("payload_in_metadata", !p.payload_in_metadata.is_empty()),
            (
                "normalize_payload_in_metadata",
                p.normalize_payload_in_metadata.is_some(),
            ),
            ("header_in_metadata", !p.header_in_metadata.is_empty()),
            (
                "failed_status_in_metadata",
                !p.failed_status_in_metadata.is_empty(),
            ),
            ("jwt_cache_config", p.jwt_cache_config.is_some()),
            ("clear_route_cache", p.clear_route_cache),
        ];
        if let Some((field, _)) = refused.iter().find(|(_, set)| *set) {
            return Err(ConfigError::unsupported(format!("{path}.{field}")));
        }
        use pb::jwt_provider::JwksSourceSpecifier as Src;
        let keys = match &p.jwks_source_specifier {
            Some(Src::LocalJwks(ds)) => {
                let at = format!("{path}.local_jwks");
                if ds.watched_directory.is_some() {
                    return Err(ConfigError::unsupported(format!("{at}.watched_directory")));
                }
                let text = crate::http::route::data_source(ds, &at)?;
                KeySource::Local(match Jwks::parse(&String::from_utf8_lossy(&text)) {
                    Ok(j) => Some(j),
                    Err(e) => {
                        tracing::warn!(provider = name, "invalid local jwks: {e}");
                        None
                    }
                })
            }
            Some(Src::RemoteJwks(r)) => KeySource::Remote(Arc::new(RemoteJwks::compile(
                r,
                &format!("{path}.remote_jwks"),
            )?)),
            None => {
                return Err(ConfigError::new(
                    format!("{path}.jwks_source_specifier"),
                    "value is required",
                ))
            }
        };
        let from_headers = p
            .from_headers
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let at = format!("{path}.from_headers[{i}].name");
                if h.name.is_empty() {
                    return Err(ConfigError::new(
                        at,
                        "value length must be at least 1 characters",
                    ));
                }
                Ok((header(&h.name, &at)?, h.value_prefix.clone()))
            })
            .collect::<Result<_, _>>()?;
        let forward_payload_header = match p.forward_payload_header.as_str() {
            "" => None,
            h => Some(header(h, &format!("{path}.forward_payload_header"))?),
        };
        let claim_to_headers = p
            .claim_to_headers
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let at = format!("{path}.claim_to_headers[{i}]");
                if !c.claim_path.is_empty() {
                    return Err(ConfigError::unsupported(format!("{at}.claim_path")));
                }
                if c.header_name.is_empty() {
                    return Err(ConfigError::new(
                        format!("{at}.header_name"),
                        "value length must be at least 1 characters",
                    ));
                }
                if c.claim_name.is_empty() {
                    return Err(ConfigError::new(
                        format!("{at}.claim_name"),
                        "value length must be at least 1 characters",
                    ));
                }
                Ok(ClaimToHeader {
                    header: header(&c.header_name, &format!("{at}.header_name"))?,
                    claim: c.claim_name.split('.').map(str::to_owned).collect(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Provider {
            name: name.to_string(),
            issuer: p.issuer.clone(),
            audiences: Audiences::new(&p.audiences),
            keys,
            forward: p.forward,
            forward_payload_header,
            pad_forward_payload_header: p.pad_forward_payload_header,
            claim_to_headers,
            clock_skew: match p.clock_skew_seconds {
                0 => DEFAULT_CLOCK_SKEW,
                s => u64::from(s),
            },
            from_headers,
            from_params: p.from_params.clone(),
            from_cookies: p.from_cookies.clone(),
        })
    }

    /// A claim's value as `claim_to_headers` writes it: a string as is, a number as an
    /// integer when it is a non-negative whole one (else as C's `%f`), a bool as
    /// `true`/`false`; anything else (or nothing) writes no header.
    pub fn claim_value(
        payload: &serde_json::Map<String, serde_json::Value>,
        path: &[String],
    ) -> Option<String> {
        use serde_json::Value;
        let (last, parents) = path.split_last()?;
        let mut obj = payload;
        for p in parents {
            obj = obj.get(p)?.as_object()?;
        }
        let v = match obj.get(last)? {
            Value::String(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => {
                let f = n.as_f64()?;
                if f < 0.0 || f >= u64::MAX as f64 || f.fract() != 0.0 {
                    format!("{f:.6}")
                } else {
                    (f as u64).to_string()
                }
            }
            _ => return None,
        };
        (!v.is_empty()).then_some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audiences_ignore_scheme_and_trailing_slash() {
        let a = Audiences::new(&["https://api.example.com/".into(), "b".into()]);
        assert!(a.allows(&["api.example.com".into()]));
        assert!(a.allows(&["x".into(), "http://b/".into()]));
        assert!(!a.allows(&["c".into()]));
        assert!(!a.allows(&[]));
        assert!(Audiences::new(&[]).allows(&[]));
    }

    #[test]
    fn claim_values() {
        let payload =
            serde_json::json!({"s":"x","n":42,"f":1.5,"neg":-2,"b":true,"o":{"k":"v"},"l":["a"]});
        let payload = payload.as_object().expect("object");
        let get = |p: &str| {
            Provider::claim_value(
                payload,
                &p.split('.').map(str::to_owned).collect::<Vec<_>>(),
            )
        };
        assert_eq!(get("s").as_deref(), Some("x"));
        assert_eq!(get("n").as_deref(), Some("42"));
        assert_eq!(get("f").as_deref(), Some("1.500000"));
        assert_eq!(get("neg").as_deref(), Some("-2.000000"));
        assert_eq!(get("b").as_deref(), Some("true"));
        assert_eq!(get("o.k").as_deref(), Some("v"));
        assert_eq!(get("l"), None);
        assert_eq!(get("missing"), None);
    }
}
