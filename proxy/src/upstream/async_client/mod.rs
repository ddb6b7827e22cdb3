//! The main thread's own clients of a cluster (Envoy's `Http::AsyncClient` and
//! `Grpc::AsyncClientManager`): what a tracer, an access-log service or a stats sink uses
//! to reach its collector. They run on the main thread's async runtime, never on a worker:
//! a slow collector holds up a report, not a request.
//!
//! A collector is named by cluster; each connection goes to a host of that cluster as the
//! main thread's cluster manager has it at that moment (the first eligible host), so a
//! collector that moves (EDS, DNS) is followed.

pub mod grpc;
pub mod http;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

/// Finds a host of a cluster, as the main thread's cluster manager has it.
pub type HostOf = Rc<dyn Fn(&str) -> Option<SocketAddr>>;

thread_local! {
    /// Set once by the server on the main thread.
    static HOST_OF: RefCell<Option<HostOf>> = const { RefCell::new(None) };
}

/// Installs the cluster lookup (the server does, on the main thread).
pub fn set_host_of(host_of: HostOf) {
    HOST_OF.with(|h| *h.borrow_mut() = Some(host_of));
}

/// A host of `cluster` to connect to now, if the cluster exists and has one (main thread
/// only; elsewhere always `None`).
pub fn host_of(cluster: &str) -> Option<SocketAddr> {
    let f = HOST_OF.with(|h| h.borrow().clone())?;
    f(cluster)
}
