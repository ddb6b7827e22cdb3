//! A worker thread (Envoy's `Worker`): one dispatcher (`courier_runtime`'s, with
//! [`WorkerLocal`] as its loop state), the sockets it accepted, and, in its thread, its
//! `ThreadLocalClusterManager` (balancers and upstream pools), RDS tables and stat cells.
//! Workers never talk to each other and never lock; the main thread reaches them only by
//! posting.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;

use courier_runtime::event;
use courier_runtime::thread_local as tls;

pub use courier_runtime::event::{EventHandler, HandlerId, Next};
pub use courier_runtime::thread_local::MainPoster;

use crate::filters::network::tcp_proxy::SCRATCH_SIZE;
use crate::listener::ListenerConfig;

/// A worker's dispatcher, its loop state being [`WorkerLocal`].
pub type Dispatcher = event::Dispatcher<WorkerLocal>;
/// The posting side of a worker's dispatcher.
pub type DispatcherHandle = event::DispatcherHandle<WorkerLocal>;
/// What a worker's handlers are given on each callback.
pub type Ctx = event::Ctx<WorkerLocal>;
/// The slot system over Courier's workers.
pub type ThreadLocal = tls::ThreadLocal<WorkerLocal>;

/// A listener as one worker sees it.
pub struct WorkerListener {
    /// The accepting socket's handler (`None` for a listener with `bind_to_port: false`,
    /// reached only by another's `use_original_dst` hand-off).
    pub handler: Option<HandlerId>,
    /// The listener's current config (replaced in place on a filter-chain update).
    pub config: Arc<ListenerConfig>,
}

/// A worker's own state, lent to every handler callback as `ctx.local`. What tasks (hyper's
/// futures) need as well lives in the worker's thread: slots
/// ([`courier_runtime::thread_local::SlotId::get`]), the
/// [`crate::upstream::ThreadLocalClusterManager`] and the RDS tables
/// ([`crate::http::route::rds::table`]).
pub struct WorkerLocal {
    /// Index of this worker (its stat cell).
    pub id: usize,
    /// Listeners this worker accepts on, by name.
    pub listeners: HashMap<String, WorkerListener>,
    /// Scratch buffer every proxied read goes through (see the tcp_proxy session).
    pub scratch: Box<[u8]>,
    /// Open connections by the tag of the filter chain that accepted them, for draining.
    pub connections: HashMap<u64, HashSet<HandlerId>>,
}

impl WorkerLocal {
    /// Fresh state for worker `id`.
    pub fn new(id: usize) -> Self {
        WorkerLocal {
            id,
            listeners: HashMap::new(),
            scratch: vec![0; SCRATCH_SIZE].into_boxed_slice(),
            connections: HashMap::new(),
        }
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

thread_local! {
    /// The server fails its health checks (`/healthcheck/fail`): this worker's
    /// connections drain-close. Read on every response, so a plain thread-local.
    static HEALTH_FAILED: Cell<bool> = const { Cell::new(false) };
}

/// Whether the server fails its health checks, as this worker was told.
pub fn health_failed() -> bool {
    HEALTH_FAILED.with(Cell::get)
}

thread_local! {
    /// A hot restart's gradual drain on this worker: its end and its length.
    static GRADUAL_DRAIN: Cell<Option<(std::time::Instant, std::time::Duration)>> =
        const { Cell::new(None) };
}

/// Starts a gradual drain on this worker (posted by the main thread of a hot restart's
/// parent under `--drain-strategy gradual`): from now on responses drain-close with
/// Envoy's probability.
pub fn start_gradual_drain(drain_time: std::time::Duration) {
    GRADUAL_DRAIN.with(|d| d.set(Some((std::time::Instant::now() + drain_time, drain_time))));
}

/// Envoy's `DrainManagerImpl::drainClose()`, read on every response: true while health
/// checks fail; during a gradual drain, true with probability elapsed/drain time (whole
/// seconds, as Envoy counts them), and always once the drain time is over.
pub fn drain_close() -> bool {
    if health_failed() {
        return true;
    }
    let Some((deadline, drain_time)) = GRADUAL_DRAIN.with(Cell::get) else {
        return false;
    };
    let now = std::time::Instant::now();
    if now >= deadline {
        return true;
    }
    let total = drain_time.as_secs();
    if total == 0 {
        return true;
    }
    let elapsed = total.saturating_sub((deadline - now).as_secs());
    elapsed > fastrand::u64(..) % total
}

/// Tells this worker whether the server fails its health checks (posted by the main
/// thread on `/healthcheck/fail` and `/healthcheck/ok`).
pub fn set_health_failed(failed: bool) {
    HEALTH_FAILED.with(|h| h.set(failed));
}

/// The main thread's handle to a running worker.
pub struct Worker {
    /// Posts callbacks to the worker.
    pub dispatcher: DispatcherHandle,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts worker `id` on its own thread.
    pub fn spawn(id: usize) -> io::Result<Worker> {
        // The dispatcher holds handlers that are not `Send`, so it is built on its thread.
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("courier-worker-{id}"))
            .spawn(move || {
                let (mut dispatcher, handle) = match Dispatcher::new(WorkerLocal::new(id)) {
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
