//! xDS resource TTLs (Envoy's `TtlManager`): a resource that came in a `Resource` wrapper
//! with a `ttl` goes away unless an update or a heartbeat (the wrapper without a resource)
//! refreshes it in time. An expired resource is removed as a delta removal would remove it
//! — in state of the world too, as Envoy does.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use courier_proto::ResourceType;
use tokio::sync::Notify;

/// The deadlines of one stream's resources that have a TTL.
#[derive(Default)]
pub struct Ttls {
    deadlines: RefCell<BTreeMap<(ResourceType, String), Instant>>,
    changed: Notify,
}

impl Ttls {
    /// Gives resource `name` of `kind` `ttl` from now (`None`: it has none any more).
    pub fn set(&self, kind: ResourceType, name: &str, ttl: Option<Duration>) {
        let mut deadlines = self.deadlines.borrow_mut();
        match ttl {
            Some(ttl) => {
                deadlines.insert((kind, name.to_string()), Instant::now() + ttl);
                self.changed.notify_one();
            }
            None => {
                deadlines.remove(&(kind, name.to_string()));
            }
        }
    }

    /// Whether resource `name` of `kind` has a TTL (a heartbeat may refresh it).
    pub fn holds(&self, kind: ResourceType, name: &str) -> bool {
        self.deadlines
            .borrow()
            .contains_key(&(kind, name.to_string()))
    }

    /// Waits until resources expire; returns them (their TTLs forgotten).
    pub async fn expired(&self) -> Vec<(ResourceType, String)> {
        loop {
            let next = self.deadlines.borrow().values().min().copied();
            match next {
                None => self.changed.notified().await,
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at.into()) => {}
                        () = self.changed.notified() => continue,
                    }
                }
            }
            let now = Instant::now();
            let mut deadlines = self.deadlines.borrow_mut();
            let gone: Vec<(ResourceType, String)> = deadlines
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(k, _)| k.clone())
                .collect();
            for k in &gone {
                deadlines.remove(k);
            }
            if !gone.is_empty() {
                return gone;
            }
        }
    }
}
