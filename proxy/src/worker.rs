//! A worker thread (Envoy's `Worker`): one dispatcher, the sockets it accepted, its upstream
//! connections, its load-balancer state and its stat cells. Workers never talk to each
//! other and never lock; the main thread reaches them only by posting.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::event::{Dispatcher, DispatcherHandle, HandlerId};
use crate::filters::network::tcp_proxy::SCRATCH_SIZE;
use crate::http::RouteSnapshot;
use crate::listener::ListenerConfig;
use crate::thread_local::{SlotId, SlotTable};
use crate::upstream::{ClusterSnapshot, LbStates};

/// The well-known slots every worker reads.
#[derive(Debug, Clone, Copy)]
pub struct WorkerSlots {
    /// Cluster snapshots.
    pub clusters: SlotId<ClusterSnapshot>,
    /// RDS route tables.
    pub routes: SlotId<RouteSnapshot>,
}

/// A listener as one worker sees it.
pub struct WorkerListener {
    /// The accepting socket's handler.
    pub handler: HandlerId,
    /// The listener's current config (replaced in place on a filter-chain update).
    pub config: Arc<ListenerConfig>,
}

/// A worker's own state, reachable from every handler through `ctx.local`.
pub struct WorkerLocal {
    /// Index of this worker (its stat cell).
    pub id: usize,
    /// This worker's copies of every thread-local slot.
    pub slots: SlotTable,
    /// Where the cluster manager publishes its snapshots.
    pub cluster_slot: SlotId<ClusterSnapshot>,
    /// Where RDS route tables are published.
    pub route_slot: SlotId<RouteSnapshot>,
    /// Per-cluster load-balancer state (round-robin positions), rebuilt when a host set
    /// changes.
    pub lb: LbStates,
    /// Listeners this worker accepts on, by name.
    pub listeners: HashMap<String, WorkerListener>,
    /// Scratch buffer every proxied read goes through (see the tcp_proxy session).
    pub scratch: Box<[u8]>,
    /// Open connections by the tag of the filter chain that accepted them, for draining.
    pub connections: HashMap<u64, HashSet<HandlerId>>,
}

impl WorkerLocal {
    /// Fresh state for worker `id`.
    pub fn new(id: usize, slots: WorkerSlots) -> Self {
        WorkerLocal {
            id,
            slots: SlotTable::default(),
            cluster_slot: slots.clusters,
            route_slot: slots.routes,
            lb: LbStates::default(),
            listeners: HashMap::new(),
            scratch: vec![0; SCRATCH_SIZE].into_boxed_slice(),
            connections: HashMap::new(),
        }
    }

    /// The current cluster snapshot on this worker.
    #[inline]
    pub fn clusters(&self) -> Option<Arc<ClusterSnapshot>> {
        self.slots.get(self.cluster_slot).cloned()
    }

    /// The current RDS route tables on this worker.
    #[inline]
    pub fn routes(&self) -> Option<&Arc<RouteSnapshot>> {
        self.slots.get(self.route_slot)
    }

    /// Records a connection accepted by the chain `chain_tag`.
    pub fn track_connection(&mut self, chain_tag: u64, id: HandlerId) {
        self.connections.entry(chain_tag).or_default().insert(id);
    }

    /// Connections accepted by `chain_tag`.
    pub fn connections_of(&self, chain_tag: u64) -> Vec<HandlerId> {
        self.connections
            .get(&chain_tag)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Forgets a closed connection.
    pub fn untrack_connection(&mut self, chain_tag: u64, id: HandlerId) {
        if let Some(set) = self.connections.get_mut(&chain_tag) {
            set.remove(&id);
            if set.is_empty() {
                self.connections.remove(&chain_tag);
            }
        }
    }
}

/// The main thread's handle to a running worker.
pub struct Worker {
    /// Posts callbacks to the worker.
    pub dispatcher: DispatcherHandle,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts worker `id` on its own thread.
    pub fn spawn(id: usize, slots: WorkerSlots) -> io::Result<Worker> {
        // The dispatcher holds handlers that are not `Send`, so it is built on its thread.
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("courier-worker-{id}"))
            .spawn(move || {
                let (mut dispatcher, handle) = match Dispatcher::new(WorkerLocal::new(id, slots)) {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let _ = tx.send(Ok(handle));
                if let Err(e) = dispatcher.run() {
                    tracing::error!(worker = id, error = %e, "worker event loop failed");
                }
            })?;
        let dispatcher = rx
            .recv()
            .map_err(|_| io::Error::other("worker thread exited during start-up"))??;
        Ok(Worker {
            dispatcher,
            thread: Some(thread),
        })
    }

    /// Asks the worker to exit and waits for its thread.
    pub fn stop(mut self) {
        let _ = self.dispatcher.post(Box::new(|ctx| ctx.exit()));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
