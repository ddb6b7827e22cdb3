//! A token bucket shared by every worker: one atomic word, no lock, refilled
//! continuously (Envoy's atomic token bucket, what its local rate limiters use). The
//! HTTP local rate limit filter and the network one take their tokens from it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::config::{self, ConfigError};

/// A token bucket's size and refill rate (`token_bucket`).
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    /// `max_tokens`: what a full bucket holds.
    pub max_tokens: f64,
    /// Tokens per second.
    pub rate: f64,
}

impl Bucket {
    /// Compiles a `TokenBucket` at `at`; `what` names it in Envoy's message (`""` for the
    /// filter's own, `"descriptor "` for a descriptor's).
    pub fn compile(
        tb: &courier_proto::envoy::r#type::v3::TokenBucket,
        at: &str,
        what: &str,
    ) -> Result<Bucket, ConfigError> {
        let interval = tb
            .fill_interval
            .as_ref()
            .map(|d| config::duration(d, &format!("{at}.fill_interval")))
            .transpose()?
            .unwrap_or_default();
        if interval < Duration::from_millis(50) {
            return Err(ConfigError::new(
                format!("{at}.fill_interval"),
                format!("local rate limit {what}token bucket fill timer must be >= 50ms"),
            ));
        }
        let per_fill = tb.tokens_per_fill.as_ref().map_or(1, |v| v.value);
        if tb.max_tokens == 0 || per_fill == 0 {
            return Err(ConfigError::new(
                at,
                "max_tokens and tokens_per_fill must be greater than 0",
            ));
        }
        Ok(Bucket {
            max_tokens: f64::from(tb.max_tokens),
            rate: f64::from(per_fill) / interval.as_secs_f64(),
        })
    }
}

/// A token bucket's state: the (virtual) time at which it held no token, in seconds since
/// [`epoch`], as an `f64`'s bits. Taking a token moves it forward by one token's worth;
/// refilling is implicit in time passing (Envoy's atomic token bucket).
pub struct Tokens(AtomicU64);

/// The base of the buckets' clocks.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_secs() -> f64 {
    epoch().elapsed().as_secs_f64()
}

impl Tokens {
    /// A full bucket.
    pub fn full(b: &Bucket) -> Tokens {
        Tokens(AtomicU64::new(
            (now_secs() - b.max_tokens / b.rate).to_bits(),
        ))
    }

    /// Takes a token if there is one.
    pub fn take(&self, b: &Bucket) -> bool {
        let now = now_secs();
        let mut old = self.0.load(Ordering::Relaxed);
        loop {
            let empty_at = f64::from_bits(old).max(now - b.max_tokens / b.rate) + 1.0 / b.rate;
            // A token is there when the bucket's last one lands at `now` exactly; the
            // arithmetic may miss that by a rounding error.
            if empty_at > now + 1e-9 {
                return false;
            }
            match self.0.compare_exchange_weak(
                old,
                empty_at.to_bits(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(current) => old = current,
            }
        }
    }

    /// Tokens in the bucket, a fraction of one included.
    pub fn level(&self, b: &Bucket) -> f64 {
        let elapsed = now_secs() - f64::from_bits(self.0.load(Ordering::Relaxed));
        (elapsed * b.rate + 1e-9).clamp(0.0, b.max_tokens)
    }

    /// Whole tokens left.
    pub fn remaining(&self, b: &Bucket) -> u64 {
        self.level(b) as u64
    }

    /// Whole seconds (rounded up) until the next token, 0 while one is left.
    pub fn reset_secs(&self, b: &Bucket) -> u64 {
        let tokens = self.level(b);
        if tokens >= 1.0 {
            0
        } else {
            ((1.0 - tokens) / b.rate).ceil() as u64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_gives_its_tokens_then_waits_for_the_refill() {
        // One token a minute: nothing refills while the test runs.
        let b = Bucket {
            max_tokens: 2.0,
            rate: 1.0 / 60.0,
        };
        let t = Tokens::full(&b);
        assert_eq!(t.remaining(&b), 2);
        assert_eq!(t.reset_secs(&b), 0);
        assert!(t.take(&b));
        assert!(t.take(&b));
        assert!(!t.take(&b));
        assert_eq!(t.remaining(&b), 0);
        let reset = t.reset_secs(&b);
        assert!((59..=60).contains(&reset), "{reset}");
    }
}
