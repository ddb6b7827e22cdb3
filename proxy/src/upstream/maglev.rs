//! The lookup table of a `MAGLEV` cluster (Envoy's `MaglevTable`, from Google's Maglev
//! paper): a prime-sized table whose slots the eligible hosts fill in turn, each along its
//! own permutation of the slots, as often as its weight allows; a request's hash picks the
//! slot `hash % size`.
//!
//! Built exactly as Envoy builds its own, so that the same request hash picks the same host
//! from either proxy: hosts in the order of their addresses, a host's permutation from the
//! xxHash64 of its address with seeds 0 (offset) and 1 (skip), weights normalized and
//! compared with the heaviest.
//!
//! One table serves every worker: it is built once per host set (by the first worker that
//! needs it) and kept with the set, as a table is large (65537 slots by default).

use xxhash_rust::xxh64::xxh64;

use super::host::HostSet;

/// `maglev_lb_config.table_size` when unset.
pub const DEFAULT_TABLE_SIZE: u64 = 65537;

/// A built table: each slot names a host by its index in the host set.
pub struct MaglevTable {
    slots: Vec<u32>,
}

/// A host as the table is filled.
struct Entry {
    index: u32,
    offset: u64,
    skip: u64,
    weight: f64,
    target: f64,
    next: u64,
}

impl MaglevTable {
    /// The table of `set`'s eligible hosts; `size` is prime (checked with the config).
    pub fn build(set: &HostSet, size: u64) -> MaglevTable {
        let total: f64 = set
            .eligible
            .iter()
            .map(|&i| f64::from(set.hosts[i].weight.max(1)))
            .sum();
        if set.eligible.is_empty() || size < 2 {
            return MaglevTable { slots: Vec::new() };
        }
        let mut keyed: Vec<(String, usize)> = set
            .eligible
            .iter()
            .map(|&i| (set.hosts[i].address.to_string(), i))
            .collect();
        keyed.sort();
        let mut entries: Vec<Entry> = keyed
            .iter()
            .map(|(key, i)| Entry {
                index: *i as u32,
                offset: xxh64(key.as_bytes(), 0) % size,
                skip: xxh64(key.as_bytes(), 1) % (size - 1) + 1,
                weight: f64::from(set.hosts[*i].weight.max(1)) / total,
                target: 0.0,
                next: 0,
            })
            .collect();
        let max_weight = entries.iter().map(|e| e.weight).fold(0.0, f64::max);
        const EMPTY: u32 = u32::MAX;
        let mut slots = vec![EMPTY; size as usize];
        let mut filled = 0u64;
        let mut iteration = 1u64;
        while filled < size {
            for e in entries.iter_mut() {
                if filled >= size {
                    break;
                }
                // A host as heavy as the heaviest takes a slot every round; one a third as
                // heavy every third round.
                if (iteration as f64) * e.weight < e.target {
                    continue;
                }
                e.target += max_weight;
                let mut c = (e.offset + e.skip * e.next) % size;
                while slots[c as usize] != EMPTY {
                    e.next += 1;
                    c = (e.offset + e.skip * e.next) % size;
                }
                slots[c as usize] = e.index;
                e.next += 1;
                filled += 1;
            }
            iteration += 1;
        }
        MaglevTable { slots }
    }

    /// The host (an index into the host set) for `hash`; a host selection retried
    /// `attempt` times moves the hash as Envoy's does (XOR with `-attempt`, changing most of
    /// its bits). `None` for an empty table.
    pub fn choose(&self, hash: u64, attempt: u32) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let hash = if attempt > 0 {
            hash ^ 0u64.wrapping_sub(u64::from(attempt))
        } else {
            hash
        };
        Some(self.slots[(hash % self.slots.len() as u64) as usize] as usize)
    }

    /// The table's size.
    pub fn size(&self) -> u64 {
        self.slots.len() as u64
    }
}

/// Whether `n` is prime (Envoy requires a prime table size).
pub fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u64;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(weights: &[u32]) -> HostSet {
        crate::upstream::host::test_host_set(weights)
    }

    #[test]
    fn slots_follow_weights() {
        let t = MaglevTable::build(&set(&[1, 1, 2]), 10007);
        let owned = |host: u32| t.slots.iter().filter(|&&s| s == host).count();
        assert_eq!(owned(0) + owned(1) + owned(2), 10007);
        // Within a slot or two of the weights' shares.
        assert!(owned(2).abs_diff(10007 / 2) <= 2, "{}", owned(2));
        assert!(owned(0).abs_diff(10007 / 4) <= 2, "{}", owned(0));
        assert_eq!(t.choose(10007 + 5, 0), t.choose(5, 0));
        assert!(MaglevTable::build(&set(&[]), 7).choose(1, 0).is_none());
    }

    #[test]
    fn primes() {
        assert!(is_prime(65537) && is_prime(7) && is_prime(2));
        assert!(!is_prime(65536) && !is_prime(1) && !is_prime(9));
    }
}
