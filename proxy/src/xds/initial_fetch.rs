//! `initial_fetch_timeout`: how long a subscription may wait for its first response before
//! whatever waits on it (initialisation, a warming cluster or listener) goes on without it.
//!
//! At 10,000 EDS clusters there are 10,000 such deadlines at once. One queue drained by a
//! single main-thread task keeps each deadline to a heap entry instead of a task and a
//! timer of its own.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::rc::{Rc, Weak};
use std::time::Duration;

use courier_proto::ResourceType;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::server::Server;

/// A subscription whose first response is awaited: (type, name; empty for CDS/LDS).
pub type Subscription = (ResourceType, String);

/// The pending initial-fetch deadlines.
#[derive(Default)]
pub struct InitialFetchTimers {
    /// Subscriptions whose timer is running or has fired, so a subscription is timed once
    /// for as long as it stays needed; the value tells a live deadline from a stale one
    /// left by an earlier subscription to the same name.
    started: HashMap<Subscription, u64>,
    due: BinaryHeap<Reverse<(Instant, u64, Subscription)>>,
    next_id: u64,
    /// Wakes the draining task when an earlier deadline is queued.
    changed: Rc<Notify>,
}

impl InitialFetchTimers {
    /// Queues `subscription` to time out after `timeout`, unless it was already started;
    /// a zero timeout disables the timer, as in Envoy.
    pub fn start(&mut self, subscription: Subscription, timeout: Duration) {
        if timeout.is_zero() || self.started.contains_key(&subscription) {
            return;
        }
        self.next_id += 1;
        self.started.insert(subscription.clone(), self.next_id);
        let deadline = Instant::now() + timeout;
        let earliest = self.next_deadline();
        self.due
            .push(Reverse((deadline, self.next_id, subscription)));
        if earliest.is_none_or(|at| deadline < at) {
            self.changed.notify_one();
        }
    }

    /// Forgets subscriptions of `kind` that are no longer needed, so one needed again
    /// later is timed afresh.
    pub fn retain(&mut self, kind: ResourceType, needed: impl Fn(&str) -> bool) {
        self.started.retain(|(t, n), _| *t != kind || needed(n));
    }

    /// Pops the subscriptions whose deadline has passed.
    fn pop_due(&mut self, now: Instant) -> Vec<Subscription> {
        let mut fired = Vec::new();
        while self.next_deadline().is_some_and(|at| at <= now) {
            if let Some(Reverse((_, id, subscription))) = self.due.pop() {
                if self.started.get(&subscription) == Some(&id) {
                    fired.push(subscription);
                }
            }
        }
        fired
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.due.peek().map(|Reverse((at, _, _))| *at)
    }
}

/// Drains the server's queue on the main thread's `LocalSet` until the server is dropped,
/// calling `fire` for each subscription whose deadline passes.
pub fn spawn(server: Weak<Server>, fire: fn(&Rc<Server>, ResourceType, &str)) {
    tokio::task::spawn_local(async move {
        loop {
            let (next, changed) = {
                let Some(server) = server.upgrade() else {
                    return;
                };
                let xds = server.xds.borrow();
                (
                    xds.initial_fetch.next_deadline(),
                    xds.initial_fetch.changed.clone(),
                )
            };
            // Registered before sleeping, so a deadline queued meanwhile is not missed.
            let notified = changed.notified();
            match next {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = notified => continue,
                    }
                }
                None => {
                    notified.await;
                    continue;
                }
            }
            let Some(server) = server.upgrade() else {
                return;
            };
            let fired = server
                .xds
                .borrow_mut()
                .initial_fetch
                .pop_due(Instant::now());
            for (kind, name) in fired {
                fire(&server, kind, &name);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use courier_proto::ResourceType::{Cluster, Endpoint};

    #[tokio::test(start_paused = true)]
    async fn fires_each_subscription_once_in_deadline_order() {
        let mut t = InitialFetchTimers::default();
        t.start((Cluster, "late".into()), Duration::from_secs(2));
        t.start((Endpoint, "early".into()), Duration::from_secs(1));
        t.start((Endpoint, "early".into()), Duration::from_secs(1));
        t.start((Endpoint, "never".into()), Duration::ZERO);
        assert!(t.pop_due(Instant::now()).is_empty());
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(
            t.pop_due(Instant::now()),
            vec![(Endpoint, "early".to_string())]
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            t.pop_due(Instant::now()),
            vec![(Cluster, "late".to_string())]
        );
        // Already started: not timed again while still needed.
        t.start((Endpoint, "early".into()), Duration::from_secs(1));
        assert_eq!(t.next_deadline(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_subscription_no_longer_needed_is_dropped_and_timed_afresh_later() {
        let mut t = InitialFetchTimers::default();
        t.start((Endpoint, "c".into()), Duration::from_secs(1));
        t.retain(Endpoint, |_| false);
        t.start((Endpoint, "c".into()), Duration::from_secs(5));
        // The first deadline belongs to the dropped subscription: it does not fire.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(t.pop_due(Instant::now()).is_empty());
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(t.pop_due(Instant::now()), vec![(Endpoint, "c".to_string())]);
    }
}
