//! A min-heap of deadlines owned by one dispatcher.
//!
//! Timers are not cancelled: a handler re-arms by scheduling a new deadline and ignores a
//! fire that no longer matches its state, which keeps scheduling O(log n) with no
//! bookkeeping per timer. Fires for handlers that are gone are dropped by the dispatcher.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use super::HandlerId;

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    deadline: Instant,
    seq: u64,
    handler: HandlerId,
    tag: u64,
}

/// Deadlines by handler, earliest first.
#[derive(Default)]
pub struct TimerQueue {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
}

impl TimerQueue {
    /// Fires `handler.on_timer(tag)` at `deadline` (or at the next loop iteration after).
    pub fn schedule(&mut self, deadline: Instant, handler: HandlerId, tag: u64) {
        self.seq += 1;
        self.heap.push(Reverse(Entry {
            deadline,
            seq: self.seq,
            handler,
            tag,
        }));
    }

    /// How long the loop may block before the earliest deadline.
    pub fn timeout(&self, now: Instant) -> Option<Duration> {
        self.heap
            .peek()
            .map(|Reverse(e)| e.deadline.saturating_duration_since(now))
    }

    /// Removes and returns the next expired timer.
    pub fn pop_expired(&mut self, now: Instant) -> Option<(HandlerId, u64)> {
        match self.heap.peek() {
            Some(Reverse(e)) if e.deadline <= now => {
                let Reverse(e) = self.heap.pop()?;
                Some((e.handler, e.tag))
            }
            _ => None,
        }
    }

    /// Number of pending timers.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no timer is pending.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}
