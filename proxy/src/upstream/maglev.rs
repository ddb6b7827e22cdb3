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

use std::sync::Arc;

use xxhash_rust::xxh64::xxh64;

use super::host::Host;

/// `maglev_lb_config.table_size` when unset.
pub const DEFAULT_TABLE_SIZE: u64 = 65537;

/// A built table: each slot names one of the table's hosts, in as few bytes as their
/// number needs (a byte for up to 255 hosts: 64 KiB for the default size).
pub struct MaglevTable {
    /// The hosts, as indices into the host set.
    hosts: Vec<u32>,
    slots: Slots,
}

/// Slots holding indices into [`MaglevTable::hosts`].
enum Slots {
    Narrow(Vec<u8>),
    Medium(Vec<u16>),
    Wide(Vec<u32>),
}

impl Slots {
    fn len(&self) -> usize {
        match self {
            Slots::Narrow(v) => v.len(),
            Slots::Medium(v) => v.len(),
            Slots::Wide(v) => v.len(),
        }
    }

    fn get(&self, i: usize) -> usize {
        match self {
            Slots::Narrow(v) => usize::from(v[i]),
            Slots::Medium(v) => usize::from(v[i]),
            Slots::Wide(v) => v[i] as usize,
        }
    }
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
    /// The table of the `eligible` ones of `hosts`; `size` is prime (checked with the config).
    pub fn build(hosts: &[Arc<Host>], eligible: &[usize], size: u64) -> MaglevTable {
        let total: f64 = eligible
            .iter()
            .map(|&i| f64::from(hosts[i].weight.max(1)))
            .sum();
        if eligible.is_empty() || size < 2 {
            return MaglevTable {
                hosts: Vec::new(),
                slots: Slots::Wide(Vec::new()),
            };
        }
        let mut keyed: Vec<(String, usize)> = eligible
            .iter()
            .map(|&i| (hosts[i].address.to_string(), i))
            .collect();
        keyed.sort();
        let mut entries: Vec<Entry> = keyed
            .iter()
            .enumerate()
            .map(|(n, (key, i))| Entry {
                index: n as u32,
                offset: xxh64(key.as_bytes(), 0) % size,
                skip: xxh64(key.as_bytes(), 1) % (size - 1) + 1,
                weight: f64::from(hosts[*i].weight.max(1)) / total,
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
        let slots = match keyed.len() {
            0..=255 => Slots::Narrow(slots.into_iter().map(|s| s as u8).collect()),
            256..=65535 => Slots::Medium(slots.into_iter().map(|s| s as u16).collect()),
            _ => Slots::Wide(slots),
        };
        MaglevTable {
            hosts: keyed.iter().map(|(_, i)| *i as u32).collect(),
            slots,
        }
    }

    /// The host (an index into the host set) for `hash`; a host selection retried
    /// `attempt` times moves the hash as Envoy's does (XOR with `-attempt`, changing most of
    /// its bits). `None` for an empty table.
    pub fn choose(&self, hash: u64, attempt: u32) -> Option<usize> {
        if self.hosts.is_empty() {
            return None;
        }
        let hash = if attempt > 0 {
            hash ^ 0u64.wrapping_sub(u64::from(attempt))
        } else {
            hash
        };
        let slot = self.slots.get((hash % self.slots.len() as u64) as usize);
        Some(self.hosts[slot] as usize)
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

    use crate::upstream::HostSet;

    fn set(weights: &[u32]) -> HostSet {
        crate::upstream::host_set::test_host_set(weights)
    }

    fn build(set: &HostSet, size: u64) -> MaglevTable {
        MaglevTable::build(&set.hosts, &set.eligible, size)
    }

    #[test]
    fn slots_follow_weights() {
        let t = build(&set(&[1, 1, 2]), 10007);
        let owned = |host: usize| {
            (0..t.slots.len())
                .filter(|&i| t.hosts[t.slots.get(i)] as usize == host)
                .count()
        };
        assert_eq!(owned(0) + owned(1) + owned(2), 10007);
        // Within a slot or two of the weights' shares.
        assert!(owned(2).abs_diff(10007 / 2) <= 2, "{}", owned(2));
        assert!(owned(0).abs_diff(10007 / 4) <= 2, "{}", owned(0));
        assert_eq!(t.choose(10007 + 5, 0), t.choose(5, 0));
        assert!(build(&set(&[]), 7).choose(1, 0).is_none());
    }

    #[test]
    fn primes() {
        assert!(is_prime(65537) && is_prime(7) && is_prime(2));
        assert!(!is_prime(65536) && !is_prime(1) && !is_prime(9));
    }
}
