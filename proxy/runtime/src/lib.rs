//! Courier's floor: the per-worker event loop and the slot system, knowing nothing of
//! proxying.
//!
//! - [`event`]: the [`Dispatcher`](event::Dispatcher) (Envoy's), a mio loop generic over
//!   its local state, with a task runtime ([`event::rt`]) so hyper's futures run on the
//!   worker that owns their sockets;
//! - [`thread_local`](mod@thread_local): slots (Envoy's `ThreadLocal::Slot`), the RCU
//!   channel from the main thread to the workers.
//!
//! Nothing here imports a cluster, a listener or a route: the proxy instantiates the loop
//! with its worker's state (see `courier::worker`).

pub mod event;
pub mod thread_local;
