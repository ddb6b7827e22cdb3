//! On-demand cluster discovery (Envoy's ODCDS `ClusterDiscoveryManager`), the worker side:
//! a request that names a cluster this worker does not hold asks the main thread for it
//! ([`request`]) and waits ([`ClusterArrival`]) until a cluster snapshot holding it reaches
//! this worker, or until its timeout. The main thread subscribes to the cluster on the
//! configured delta xDS stream (`xds::on_demand`); the cluster then arrives like any other,
//! through the cluster manager's slot.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use courier_proto::envoy::config::core::v3::ConfigSource;
use courier_runtime::event::rt;
use tokio::sync::mpsc;

use super::ThreadLocalClusterManager;

/// A worker's request for a cluster it does not hold.
#[derive(Debug, Clone)]
pub struct ClusterRequest {
    /// The cluster's name.
    pub name: String,
    /// Where to discover it (`odcds.source`).
    pub source: Arc<ConfigSource>,
}

static SINK: OnceLock<mpsc::UnboundedSender<ClusterRequest>> = OnceLock::new();

/// Opens the workers' channel to the main thread (once per process: the server that
/// calls it first reads the requests).
pub fn install() -> Option<mpsc::UnboundedReceiver<ClusterRequest>> {
    let (tx, rx) = mpsc::unbounded_channel();
    SINK.set(tx).ok().map(|()| rx)
}

/// Asks the main thread for cluster `name` (from a worker). Without a running server the
/// request goes nowhere and the waiting request times out.
pub fn request(name: &str, source: &Arc<ConfigSource>) {
    if let Some(tx) = SINK.get() {
        let _ = tx.send(ClusterRequest {
            name: name.to_string(),
            source: source.clone(),
        });
    }
}

/// Completes with `true` once this worker holds cluster `name`, or with `false` at
/// `deadline`.
pub struct ClusterArrival {
    name: String,
    sleep: rt::Sleep,
    /// The waker registered with the worker's cluster manager, withdrawn on drop.
    registered: Option<std::task::Waker>,
}

impl ClusterArrival {
    /// Waits for `name` until `deadline`.
    pub fn new(name: &str, deadline: Instant) -> ClusterArrival {
        ClusterArrival {
            name: name.to_string(),
            sleep: rt::Sleep::until(deadline),
            registered: None,
        }
    }
}

impl Future for ClusterArrival {
    type Output = bool;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        let this = &mut *self;
        let held = ThreadLocalClusterManager::with(|tlcm| {
            if tlcm.get(&this.name).is_some() {
                return true;
            }
            tlcm.wake_on_arrival(&this.name, cx.waker());
            false
        });
        if !held {
            this.registered = Some(cx.waker().clone());
        }
        if held {
            return Poll::Ready(true);
        }
        match Pin::new(&mut this.sleep).poll(cx) {
            Poll::Ready(()) => Poll::Ready(false),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for ClusterArrival {
    fn drop(&mut self) {
        // A request that timed out (or went away) leaves no waker behind.
        if let Some(waker) = self.registered.take() {
            ThreadLocalClusterManager::try_with(|tlcm| tlcm.forget_arrival(&self.name, &waker));
        }
    }
}
