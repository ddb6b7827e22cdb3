//! The network local rate limit filter (`envoy.filters.network.local_ratelimit`): a
//! token per new connection from a bucket every worker shares.
//!
//! As Envoy 1.40: the filter decides when the connection is established (its
//! `onNewConnection`, before a TLS handshake or any byte is read), in chain order. With
//! no token left the connection is closed at once and
//! `local_rate_limit.<stat_prefix>.rate_limited` counted. The bucket is the HTTP filter's
//! ([`crate::filters::token_bucket`]: `token_bucket` with `fill_interval` at least
//! 50 ms, refilled continuously, full at start). Filters with the same non-empty
//! `share_key` and the same `token_bucket` take from one bucket, on any listener (Envoy's
//! singleton keyed by both); a config without `share_key` has its own. A filter
//! `runtime_enabled` turns off takes no token.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Weak};

use courier_proto::envoy::extensions::filters::network::local_ratelimit::v3 as pb;
use courier_proto::envoy::r#type::v3::TokenBucket;

use crate::config::ConfigError;
use crate::filters::token_bucket::{Bucket, Tokens};
use crate::layered_runtime::RuntimeFlag;
use crate::stats::{Counter, Store};

/// A compiled network local rate limit filter.
pub struct NetworkLocalRateLimit {
    enabled: RuntimeFlag,
    bucket: Bucket,
    tokens: Arc<Tokens>,
    rate_limited: Arc<Counter>,
}

thread_local! {
    /// The buckets shared by `share_key`: configs compile on the main thread, so the
    /// registry is that thread's (workers only ever see the compiled `Arc`s). Entries
    /// whose last config is gone are dropped at the next compile.
    static SHARED: RefCell<HashMap<(String, TokenBucket), Weak<Tokens>>> =
        RefCell::new(HashMap::new());
}

/// The bucket for `key` and `tb`: the one a live config with both holds, else a new one.
fn shared_tokens(key: &str, tb: &TokenBucket, bucket: &Bucket) -> Arc<Tokens> {
    SHARED.with(|shared| {
        let mut shared = shared.borrow_mut();
        shared.retain(|_, t| t.strong_count() > 0);
        let k = (key.to_string(), *tb);
        if let Some(t) = shared.get(&k).and_then(Weak::upgrade) {
            tracing::debug!(
                share_key = key,
                "local rate limit: using an existing bucket"
            );
            return t;
        }
        let t = Arc::new(Tokens::full(bucket));
        shared.insert(k, Arc::downgrade(&t));
        t
    })
}

impl NetworkLocalRateLimit {
    /// Compiles the filter's `LocalRateLimit` (paths under `typed_config`).
    pub fn compile(
        p: &pb::LocalRateLimit,
        store: &Store,
    ) -> Result<NetworkLocalRateLimit, ConfigError> {
        if p.stat_prefix.is_empty() {
            return Err(ConfigError::new(
                "stat_prefix",
                "value length must be at least 1 characters",
            ));
        }
        let tb = p
            .token_bucket
            .as_ref()
            .ok_or_else(|| ConfigError::new("token_bucket", "value is required"))?;
        let bucket = Bucket::compile(tb, "token_bucket", "")?;
        let enabled = super::common::runtime_enabled(p.runtime_enabled.as_ref())?;
        let tokens = match p.share_key.as_str() {
            "" => Arc::new(Tokens::full(&bucket)),
            key => shared_tokens(key, tb, &bucket),
        };
        let base = format!("local_rate_limit.{}", p.stat_prefix);
        Ok(NetworkLocalRateLimit {
            enabled,
            bucket,
            tokens,
            rate_limited: store.counter(&super::common::join(&base, "rate_limited")),
        })
    }

    /// Envoy's `onNewConnection`: whether the connection may go on (a token taken), or
    /// is closed (counted).
    pub fn admits(&self, worker: usize) -> bool {
        if !self.enabled.enabled() || self.tokens.take(&self.bucket) {
            return true;
        }
        self.rate_limited.inc(worker);
        tracing::trace!("local_rate_limit: rate limiting connection");
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(yaml: &str) -> NetworkLocalRateLimit {
        let p: pb::LocalRateLimit = courier_proto::from_yaml(yaml).expect("config");
        NetworkLocalRateLimit::compile(&p, &Store::new(1)).expect("compiles")
    }

    #[test]
    fn configs_with_one_share_key_and_bucket_share_its_tokens() {
        let a = compile(
            "{ stat_prefix: a, share_key: k, token_bucket: { max_tokens: 2, fill_interval: 60s } }",
        );
        let b = compile(
            "{ stat_prefix: b, share_key: k, token_bucket: { max_tokens: 2, fill_interval: 60s } }",
        );
        let other = compile(
            "{ stat_prefix: c, share_key: k, token_bucket: { max_tokens: 2, fill_interval: 30s } }",
        );
        let alone =
            compile("{ stat_prefix: d, token_bucket: { max_tokens: 2, fill_interval: 60s } }");
        assert!(a.admits(0));
        assert!(b.admits(0));
        assert!(!a.admits(0));
        assert!(other.admits(0) && other.admits(0));
        assert!(alone.admits(0) && alone.admits(0));
        assert_eq!(a.rate_limited.value(), 1);
    }
}
