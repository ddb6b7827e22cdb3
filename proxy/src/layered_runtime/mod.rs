//! Envoy's runtime (`layered_runtime`): keys that override configured values while the
//! proxy runs — a route's traffic share, a fault's percentage, a filter's enablement.
//!
//! The bootstrap's layers (static, disk, admin, RTDS) are merged by the main thread's
//! [`Loader`] into an immutable [`Snapshot`], published like any other config: through a
//! slot to the workers (which read it without locking) and to an `arc-swap` for readers
//! off the workers (the admin, the main thread's own users). [`RuntimeFraction`] and
//! [`RuntimeFlag`] are what a compiled config holds for a runtime-overridable value; they
//! read the snapshot only when a key is configured.
//!
//! An RTDS layer ([`rtds`]) holds what the xDS client last accepted for its `Runtime`
//! resource; the subscription is the xDS client's, which waits for the layers' first
//! resources before it starts CDS, as Envoy's server does.

mod feature;
mod layer;
mod loader;
pub mod rtds;
mod snapshot;

use std::sync::{Arc, LazyLock, OnceLock};

use arc_swap::ArcSwap;
use courier_runtime::thread_local::{Slot, SlotId};

pub use feature::{RuntimeFlag, RuntimeFraction};
pub use loader::{validate, Loader, NoAdminLayer};
pub use snapshot::{Entry, Layer, Snapshot};

static SLOT: OnceLock<SlotId<Snapshot>> = OnceLock::new();
static CURRENT: LazyLock<ArcSwap<Snapshot>> =
    LazyLock::new(|| ArcSwap::from_pointee(Snapshot::default()));

/// The runtime as this thread sees it: a worker's slot value, else the latest published
/// (an empty one before any loader ran).
pub fn snapshot() -> Arc<Snapshot> {
    if let Some(s) = SLOT.get().and_then(|id| id.get()) {
        return s;
    }
    CURRENT.load_full()
}

fn install(slot: SlotId<Snapshot>) {
    // A second loader in one process (tests) publishes through its own slot; the first
    // stays the one workers read, which is the one the process serves with.
    let _ = SLOT.set(slot);
}

fn publish(slot: &Slot<Snapshot>, snapshot: Arc<Snapshot>) {
    CURRENT.store(snapshot.clone());
    slot.set(snapshot);
}
