//! A local rate limit's `descriptors`: each a list of key/value entries with its own token
//! bucket, taken by a request whose descriptors (from `rate_limits` actions) include one
//! with exactly the same entries, in the same order.
//!
//! Refused by path: an entry without a value (Envoy 1.40's "wildcard" entries, whose
//! buckets are made per distinct request value in an LRU shared under a lock, which
//! Courier's workers do not take).

use courier_proto::envoy::extensions::common::ratelimit::v3::LocalRateLimitDescriptor;

use crate::config::ConfigError;
use crate::filters::token_bucket::Bucket;
use crate::http::route::rate_limits::Entry;

/// A compiled `LocalRateLimitDescriptor`.
pub(super) struct LocalDescriptor {
    pub(super) entries: Box<[Entry]>,
    pub(super) bucket: Bucket,
}

/// Compiles `descriptors` at `path`: duplicates are refused, as Envoy does.
pub(super) fn compile(
    descriptors: &[LocalRateLimitDescriptor],
    path: &str,
) -> Result<Vec<LocalDescriptor>, ConfigError> {
    let mut out: Vec<LocalDescriptor> = Vec::with_capacity(descriptors.len());
    for (i, d) in descriptors.iter().enumerate() {
        let at = format!("{path}[{i}]");
        if d.entries.is_empty() {
            return Err(ConfigError::new(
                format!("{at}.entries"),
                "value must contain at least 1 item(s)",
            ));
        }
        let mut entries = Vec::with_capacity(d.entries.len());
        for (j, e) in d.entries.iter().enumerate() {
            if e.key.is_empty() {
                return Err(ConfigError::new(
                    format!("{at}.entries[{j}].key"),
                    "value length must be at least 1 characters",
                ));
            }
            if e.value.is_empty() {
                return Err(ConfigError::unsupported(format!("{at}.entries[{j}].value")));
            }
            entries.push((e.key.clone(), e.value.clone()));
        }
        let Some(tb) = &d.token_bucket else {
            return Err(ConfigError::new(
                format!("{at}.token_bucket"),
                "value is required",
            ));
        };
        let bucket = Bucket::compile(tb, &format!("{at}.token_bucket"), "descriptor ")?;
        if out.iter().any(|o| *o.entries == *entries) {
            let shown: Vec<String> = entries.iter().map(|(k, v)| format!("{k}={v}")).collect();
            return Err(ConfigError::new(
                at,
                format!(
                    "duplicate descriptor in the local rate descriptor: {}",
                    shown.join(", ")
                ),
            ));
        }
        out.push(LocalDescriptor {
            entries: entries.into(),
            bucket,
        });
    }
    Ok(out)
}
