//! A local rate limit's `descriptors`: each a list of key/value entries with its own token
//! bucket, taken by a request whose descriptors (from `rate_limits` actions) include one
//! with exactly the same entries, in the same order.
//!
//! A descriptor with an entry without a value is a *wildcard* (Envoy 1.40's dynamic
//! descriptors): a request descriptor with the same keys, in the same order, and the same
//! values where the wildcard has one, gets a bucket of its own per distinct descriptor,
//! made full on first use. Each wildcard keeps at most `max_dynamic_descriptors` (default
//! 20) such buckets, the least recently used one forgotten first: [`DynamicBuckets`].
//! An exact descriptor is looked up first; of several wildcards, the first in config order
//! that matches is taken (Envoy walks a hash map, in no defined order).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use courier_proto::envoy::extensions::common::ratelimit::v3::LocalRateLimitDescriptor;

use crate::config::ConfigError;
use crate::filters::token_bucket::{Bucket, Tokens};
use crate::http::route::rate_limits::Entry;

/// `max_dynamic_descriptors`' default.
pub(super) const DEFAULT_MAX_DYNAMIC: u32 = 20;

/// A compiled `LocalRateLimitDescriptor`.
pub(super) struct LocalDescriptor {
    pub(super) entries: Box<[Entry]>,
    pub(super) bucket: Bucket,
    /// Whether an entry has no value: the descriptor's buckets are per request value.
    pub(super) wildcard: bool,
}

impl LocalDescriptor {
    /// Whether the request descriptor `request` is this wildcard's: the same keys in the
    /// same order, the same values where this one has a value.
    pub(super) fn wildcard_matches(&self, request: &[Entry]) -> bool {
        self.wildcard
            && self.entries.len() == request.len()
            && self
                .entries
                .iter()
                .zip(request)
                .all(|((k, v), (rk, rv))| k == rk && (v.is_empty() || v == rv))
    }
}

/// A wildcard descriptor's buckets, one per distinct request descriptor it matched, at
/// most one per slot: the least recently used is replaced when a new one needs a slot.
///
/// Shared by every worker without a lock (Envoy guards its LRU list with a mutex): each
/// slot is swapped atomically, and the recency is a tick taken from one counter. Two
/// workers meeting the same new descriptor at the same instant may both make a bucket
/// for it (a few requests then see a full bucket); the table converges at the next
/// lookup.
pub(super) struct DynamicBuckets {
    slots: Box<[ArcSwapOption<DynamicBucket>]>,
    clock: AtomicU64,
}

/// One request descriptor's bucket in a [`DynamicBuckets`].
struct DynamicBucket {
    entries: Box<[Entry]>,
    tokens: Arc<Tokens>,
    /// The tick of its last use.
    used: AtomicU64,
}

impl DynamicBuckets {
    /// An empty table of `size` slots (at least one).
    pub(super) fn new(size: u32) -> DynamicBuckets {
        DynamicBuckets {
            slots: (0..size.max(1)).map(|_| ArcSwapOption::empty()).collect(),
            clock: AtomicU64::new(1),
        }
    }

    /// The bucket of the request descriptor `entries`, made full if it has none.
    pub(super) fn get(&self, entries: &[Entry], bucket: &Bucket) -> Arc<Tokens> {
        let tick = self.clock.fetch_add(1, Ordering::Relaxed);
        // A lost race for a slot is retried a few times; past that, the request is
        // judged by a bucket of its own that nobody keeps (only under heavy contention
        // for the same slot).
        for _ in 0..4 {
            // The least recently used slot, an empty one (tick 0) first.
            let mut victim = (0usize, u64::MAX);
            for (i, slot) in self.slots.iter().enumerate() {
                let seen = slot.load();
                match seen.as_deref() {
                    Some(d) if *d.entries == *entries => {
                        d.used.store(tick, Ordering::Relaxed);
                        return d.tokens.clone();
                    }
                    Some(d) => {
                        let used = d.used.load(Ordering::Relaxed);
                        if used < victim.1 {
                            victim = (i, used);
                        }
                    }
                    None if victim.1 != 0 => victim = (i, 0),
                    None => {}
                }
            }
            let slot = &self.slots[victim.0];
            let current = slot.load_full();
            let fresh = Arc::new(DynamicBucket {
                entries: entries.into(),
                tokens: Arc::new(Tokens::full(bucket)),
                used: AtomicU64::new(tick),
            });
            let tokens = fresh.tokens.clone();
            let before = slot.compare_and_swap(&current, Some(fresh));
            if same((*before).as_ref(), current.as_ref()) {
                return tokens;
            }
        }
        Arc::new(Tokens::full(bucket))
    }
}

fn same(a: Option<&Arc<DynamicBucket>>, b: Option<&Arc<DynamicBucket>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
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
            wildcard: entries.iter().any(|(_, v)| v.is_empty()),
            entries: entries.into(),
            bucket,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(v: &str) -> Vec<Entry> {
        vec![("user".to_string(), v.to_string())]
    }

    #[test]
    fn a_wildcard_keeps_a_bucket_per_value_and_forgets_the_least_recently_used() {
        let b = Bucket {
            max_tokens: 1.0,
            rate: 1.0 / 3600.0,
        };
        let table = DynamicBuckets::new(2);
        assert!(table.get(&entries("a"), &b).take(&b));
        assert!(!table.get(&entries("a"), &b).take(&b), "a's bucket is kept");
        assert!(table.get(&entries("b"), &b).take(&b), "b has its own");
        // a is used again: b is now the least recently used.
        assert!(!table.get(&entries("a"), &b).take(&b));
        // c takes the least recently used slot: b's.
        assert!(table.get(&entries("c"), &b).take(&b));
        assert!(!table.get(&entries("a"), &b).take(&b), "a was kept");
        assert!(
            table.get(&entries("b"), &b).take(&b),
            "b was forgotten: full again"
        );
    }

    #[test]
    fn a_wildcard_matches_same_keys_and_its_fixed_values() {
        let d = LocalDescriptor {
            entries: vec![
                ("user".to_string(), String::new()),
                ("path".to_string(), "/x".to_string()),
            ]
            .into(),
            bucket: Bucket {
                max_tokens: 1.0,
                rate: 1.0,
            },
            wildcard: true,
        };
        let r = |u: &str, k: &str, p: &str| {
            vec![
                ("user".to_string(), u.to_string()),
                (k.to_string(), p.to_string()),
            ]
        };
        assert!(d.wildcard_matches(&r("a", "path", "/x")));
        assert!(!d.wildcard_matches(&r("a", "path", "/y")));
        assert!(!d.wildcard_matches(&r("a", "other", "/x")));
        assert!(!d.wildcard_matches(&entries("a")));
    }
}
