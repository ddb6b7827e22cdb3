//! The per-worker event loop (Envoy's `Dispatcher`): a mio `Poll`, a queue of callbacks
//! posted from other threads and woken by a `mio::Waker`, a timer queue, and deferred
//! deletion of closed handlers.

mod dispatcher;
pub mod rt;
mod timer;

pub use dispatcher::{
    Ctx, Dispatcher, DispatcherHandle, EventHandler, HandlerId, Next, PostError, Posted,
};
pub use timer::TimerQueue;
