//! A token bucket shared by every worker: one atomic word, no lock, refilled
//! continuously (Envoy's atomic token bucket, what its local rate limiters use). The
//! HTTP local rate limit filter and the network one take their tokens from it one at a
//! time; the body pacing of the bandwidth limit and fault filters
//! (`filters::http::stream_rate_limiter`) takes as many as it can ([`Tokens::take_up_to`],
//! Envoy's `consume(n, allow_partial)`).

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

    /// A bucket holding `tokens` (at most its size) now.
    pub fn holding(b: &Bucket, tokens: f64) -> Tokens {
        Tokens(AtomicU64::new(
            (now_secs() - tokens.min(b.max_tokens) / b.rate).to_bits(),
        ))
    }

    /// Takes up to `want` whole tokens, as many as there are: how many it took.
    pub fn take_up_to(&self, b: &Bucket, want: u64) -> u64 {
        self.take_up_to_at(b, want, now_secs())
    }

    /// [`Tokens::take_up_to`] at `now` (seconds since the clocks' base).
    fn take_up_to_at(&self, b: &Bucket, want: u64, now: f64) -> u64 {
        let mut old = self.0.load(Ordering::Relaxed);
        loop {
            let empty_at = f64::from_bits(old).max(now - b.max_tokens / b.rate);
            // Whole tokens only, as Envoy's `floor`; a rounding error short of a whole
            // one still counts it.
            let whole = (((now - empty_at) * b.rate + 1e-9).max(0.0)).floor() as u64;
            let took = want.min(whole);
            if took == 0 {
                return 0;
            }
            let next = empty_at + took as f64 / b.rate;
            match self.0.compare_exchange_weak(
                old,
                next.to_bits(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return took,
                Err(current) => old = current,
            }
        }
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

    /// A bucket of `rate` bytes a second holding `tokens` at time `at` (seconds).
    fn bytes_at(rate: f64, tokens: f64, at: f64) -> (Bucket, Tokens) {
        let b = Bucket {
            max_tokens: rate,
            rate,
        };
        (b, Tokens(AtomicU64::new((at - tokens / rate).to_bits())))
    }

    #[test]
    fn partial_takes_give_what_is_there_and_refill_with_time() {
        // 32 KiB/s, full (a second's worth) at t = 100 s.
        let (b, t) = bytes_at(32_768.0, 32_768.0, 100.0);
        assert_eq!(t.take_up_to_at(&b, 65_536, 100.0), 32_768);
        assert_eq!(t.take_up_to_at(&b, 65_536, 100.0), 0);
        // 50 ms later: 1638.4 bytes' worth, of which 1638 whole ones.
        assert_eq!(t.take_up_to_at(&b, 65_536, 100.05), 1_638);
        // The fraction left over is kept: 50 ms more make 1638.8, then 1639.2 …
        assert_eq!(t.take_up_to_at(&b, 65_536, 100.10), 1_638);
        assert_eq!(t.take_up_to_at(&b, 65_536, 100.15), 1_639);
        // Asking for less than there is takes what was asked.
        assert_eq!(t.take_up_to_at(&b, 10, 100.20), 10);
        assert_eq!(t.take_up_to_at(&b, 65_536, 100.20), 1_628);
    }

    #[test]
    fn an_idle_bucket_fills_to_its_size_and_no_more() {
        let (b, t) = bytes_at(1_024.0, 0.0, 5.0);
        assert_eq!(t.take_up_to_at(&b, u64::MAX, 5.0), 0);
        // Ten seconds idle: one second's worth, the bucket's size.
        assert_eq!(t.take_up_to_at(&b, u64::MAX, 15.0), 1_024);
        assert_eq!(t.take_up_to_at(&b, u64::MAX, 15.5), 512);
    }

    #[test]
    fn a_paced_transfer_takes_as_long_as_its_rate_says() {
        // Envoy's fault filter bucket: 50 ms' worth to start with, then ticks every
        // 50 ms; 64 KiB at 32 KiB/s go in two seconds (less the first 50 ms).
        let (b, t) = bytes_at(32_768.0, 32_768.0 * 0.05, 0.0);
        let mut left: u64 = 65_536;
        let mut ticks = 0;
        while left > 0 {
            left -= t.take_up_to_at(&b, left, ticks as f64 * 0.05);
            ticks += 1;
        }
        assert_eq!(ticks, 40, "ticks of 50 ms");
    }
}
