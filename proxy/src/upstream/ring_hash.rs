//! The ring of a `RING_HASH` cluster (Envoy's `RingHashLoadBalancer::Ring`, a ketama
//! ring): each eligible host owns points on a 64-bit ring in proportion to its weight, and a
//! request's hash goes to the first point at or after it.
//!
//! Built exactly as Envoy builds its own, so that the same request hash picks the same
//! host from either proxy: a host's points are the xxHash64 of `<address>_<i>`, the scale
//! gives the lightest host a whole number of points (at least `minimum_ring_size` in all,
//! at most `maximum_ring_size`), and fractional shares are carried from host to host.
//!
//! One ring serves every worker: it is built once per host set (by the first worker that
//! needs it) and kept with the set.

use std::sync::Arc;

use xxhash_rust::xxh64::xxh64;

use super::host::Host;

/// `minimum_ring_size` when unset.
pub const DEFAULT_MIN_RING_SIZE: u64 = 1024;
/// `maximum_ring_size` when unset (and its upper bound).
pub const DEFAULT_MAX_RING_SIZE: u64 = 8 * 1024 * 1024;

/// A built ring: points sorted by hash, each naming a host by its index in the host set.
pub struct Ring {
    points: Vec<(u64, u32)>,
    /// The sizes it was built with.
    sizes: (u64, u64),
}

impl Ring {
    /// The ring of `set`'s eligible hosts.
    pub fn build(
        hosts: &[Arc<Host>],
        eligible: &[usize],
        min_ring_size: u64,
        max_ring_size: u64,
    ) -> Ring {
        let weights: Vec<(usize, f64)> = eligible
            .iter()
            .map(|&i| (i, f64::from(hosts[i].weight.max(1))))
            .collect();
        let total: f64 = weights.iter().map(|(_, w)| w).sum();
        let sizes = (min_ring_size, max_ring_size);
        if weights.is_empty() || total <= 0.0 {
            return Ring {
                points: Vec::new(),
                sizes,
            };
        }
        let min_weight = weights
            .iter()
            .map(|(_, w)| w / total)
            .fold(f64::INFINITY, f64::min);
        let scale =
            ((min_weight * min_ring_size as f64).ceil() / min_weight).min(max_ring_size as f64);
        let mut points = Vec::with_capacity(scale.ceil() as usize);
        let (mut current, mut target) = (0.0_f64, 0.0_f64);
        let mut key = String::new();
        for (index, weight) in weights {
            target += scale * (weight / total);
            let address = hosts[index].address.to_string();
            let mut i = 0u64;
            while current < target {
                use std::fmt::Write;
                key.clear();
                // Infallible: writing to a String.
                let _ = write!(key, "{address}_{i}");
                points.push((xxh64(key.as_bytes(), 0), index as u32));
                i += 1;
                current += 1.0;
            }
        }
        points.sort_by_key(|p| p.0);
        Ring { points, sizes }
    }

    /// Whether the ring was built with these sizes.
    pub fn built_with(&self, min_ring_size: u64, max_ring_size: u64) -> bool {
        self.sizes == (min_ring_size, max_ring_size)
    }

    /// The host (an index into the host set) owning `hash`: the first point at or after it,
    /// wrapping to the first point; a host selection retried `attempt` times takes the
    /// point that many places on, as Envoy's. `None` for an empty ring.
    pub fn choose(&self, hash: u64, attempt: u32) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        // Envoy's ketama search finds the first point whose hash is >= `hash` (a hash past the
        // last point goes to the first).
        let i = self.points.partition_point(|p| p.0 < hash);
        let i = if i == self.points.len() { 0 } else { i };
        let i = (i + attempt as usize) % self.points.len();
        Some(self.points[i].1 as usize)
    }

    /// The number of points.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Whether the ring has no points (no eligible host).
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::upstream::HostSet;

    fn set(weights: &[u32]) -> HostSet {
        crate::upstream::host_set::test_host_set(weights)
    }

    fn build(set: &HostSet, min_ring_size: u64, max_ring_size: u64) -> Ring {
        Ring::build(&set.hosts, &set.eligible, min_ring_size, max_ring_size)
    }

    #[test]
    fn points_follow_weights_and_the_minimum_size() {
        let r = build(
            &set(&[1, 1, 1]),
            DEFAULT_MIN_RING_SIZE,
            DEFAULT_MAX_RING_SIZE,
        );
        // ceil(1024 / 3) points each.
        assert_eq!(r.len(), 3 * 342);
        let r = build(&set(&[1, 3]), 8, DEFAULT_MAX_RING_SIZE);
        let owned = |host: u32| r.points.iter().filter(|p| p.1 == host).count();
        assert_eq!((owned(0), owned(1)), (2, 6));
        let r = build(&set(&[1, 1]), 1024, 10);
        assert_eq!(r.len(), 10);
    }

    #[test]
    fn a_hash_goes_to_the_first_point_at_or_after_it() {
        let r = build(&set(&[1, 1, 1]), 16, DEFAULT_MAX_RING_SIZE);
        let first = r.points[0];
        let last = r.points[r.points.len() - 1];
        assert_eq!(r.choose(first.0, 0), Some(first.1 as usize));
        assert_eq!(r.choose(first.0 - 1, 0), Some(first.1 as usize));
        assert_eq!(r.choose(last.0 + 1, 0), Some(first.1 as usize));
        let second = r.points[1];
        assert_eq!(r.choose(first.0 + 1, 0), Some(second.1 as usize));
        assert_eq!(r.choose(first.0, 1), Some(second.1 as usize));
        assert!(build(&set(&[]), 16, 16).choose(5, 0).is_none());
    }
}
