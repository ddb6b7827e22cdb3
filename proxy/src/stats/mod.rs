//! Stats with Envoy's names.
//!
//! Every counter and gauge has one cell per worker plus one for the main thread: a worker
//! only ever writes its own cell (no locks, and no cache line shared with another thread's
//! cells), and a reader on the main thread (admin, stats flush) sums the cells. Handles are created on the main thread
//! through the [`Store`] and handed to workers inside immutable snapshots, so the hot path
//! never looks a stat up by name.

pub mod dynamic;
mod render;
pub mod sinks;
mod store;
pub mod subscription;
pub mod tags;

pub use render::{render_json, render_prometheus, render_text, StatsQuery};
pub use store::{
    BucketRule, Counter, CounterEntry, Entries, Gauge, GaugeEntry, GaugeValue, Histogram,
    HistogramEntry, HistogramSnapshot, Raised, StatFilter, StatGroup, StatValue, StatsView, Store,
    TextReadout, HISTOGRAM_BUCKETS, MAIN_THREAD,
};
