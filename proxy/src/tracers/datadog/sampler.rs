//! How a new trace is sampled, as dd-trace-cpp decides it without sampling rules: the
//! agent's rate for this service (from its answers to trace reports, `rate_by_service`,
//! the key `service:<name>,env:` or else the catch-all `service:,env:`), else the default
//! rate of 1. A trace id is kept when its low half times Knuth's factor falls under the
//! rate's share of the id space, so every tracer keeps the same traces.

use std::sync::atomic::{AtomicU64, Ordering};

/// Knuth's multiplicative hashing factor (dd-trace-cpp's).
const KNUTH_FACTOR: u64 = 1_111_111_111_111_111_111;

/// A sampling decision for a new trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// 1 (keep) or 0 (drop).
    pub priority: i32,
    /// The decision maker (`_dd.p.dm`): `-0` default rate, `-1` agent rate.
    pub mechanism: &'static str,
    /// The rate applied (`_dd.agent_psr`).
    pub rate: f64,
    /// Whether the rate came from the agent (then `_dd.p.ksr`).
    pub from_agent: bool,
}

/// The agent's rate for one service, shared by the workers (read) and the main thread
/// (written when the agent answers).
#[derive(Debug)]
pub struct Sampler {
    key: String,
    /// The rate's bits; NaN until the agent names one.
    rate: AtomicU64,
}

impl Sampler {
    /// A sampler for `service`.
    pub fn new(service: &str) -> Sampler {
        Sampler {
            key: format!("service:{service},env:"),
            rate: AtomicU64::new(f64::NAN.to_bits()),
        }
    }

    /// Decides for a new trace whose id's low half is `trace_low`.
    pub fn decide(&self, trace_low: u64) -> Decision {
        let agent = f64::from_bits(self.rate.load(Ordering::Relaxed));
        let (rate, from_agent, mechanism) = if agent.is_nan() {
            (1.0, false, "-0")
        } else {
            (agent, true, "-1")
        };
        Decision {
            priority: i32::from(keeps(trace_low, rate)),
            mechanism,
            rate,
            from_agent,
        }
    }

    /// Takes the rates in an agent's answer (`{"rate_by_service": {...}}`); an answer
    /// without them leaves the last ones.
    pub fn update(&self, body: &[u8]) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
            return;
        };
        let Some(rates) = v.get("rate_by_service").and_then(|r| r.as_object()) else {
            return;
        };
        let rate = rates
            .get(&self.key)
            .or_else(|| rates.get("service:,env:"))
            .and_then(serde_json::Value::as_f64)
            .filter(|r| (0.0..=1.0).contains(r));
        self.rate
            .store(rate.unwrap_or(f64::NAN).to_bits(), Ordering::Relaxed);
    }
}

/// Whether a trace id is kept at `rate`.
fn keeps(trace_low: u64, rate: f64) -> bool {
    if rate >= 1.0 {
        return true;
    }
    let threshold = (rate * u64::MAX as f64) as u64;
    trace_low.wrapping_mul(KNUTH_FACTOR) < threshold
}

/// A rate as dd-trace-cpp writes it in `_dd.p.ksr`: up to six decimals, no trailing
/// zeros (`1`, `0.5`).
pub fn format_rate(rate: f64) -> String {
    let s = format!("{rate:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_rate_for_the_service_or_the_catch_all_applies() {
        let s = Sampler::new("checkout");
        assert_eq!(s.decide(7).mechanism, "-0");
        s.update(br#"{"rate_by_service":{"service:,env:":1}}"#);
        let d = s.decide(7);
        assert_eq!((d.mechanism, d.priority, d.from_agent), ("-1", 1, true));
        s.update(br#"{"rate_by_service":{"service:checkout,env:":0,"service:,env:":1}}"#);
        assert_eq!(s.decide(7).priority, 0);
    }

    #[test]
    fn rates_are_written_as_dd_trace_cpp_writes_them() {
        assert_eq!(format_rate(1.0), "1");
        assert_eq!(format_rate(0.5), "0.5");
        assert_eq!(format_rate(0.123_456_78), "0.123457");
    }

    #[test]
    fn a_half_rate_keeps_about_half() {
        let kept = (0..10_000u64)
            .filter(|i| keeps(fastrand::u64(..) ^ i, 0.5))
            .count();
        assert!((4_000..6_000).contains(&kept), "{kept}");
    }
}
