//! The stat registry and its per-thread cells.
//!
//! Cells live in blocks of [`BLOCK_SLOTS`] stats: one cache-line-aligned row per thread,
//! so a thread's cells pack eight to a line without ever sharing one with another
//! thread's. A stat is a block and a slot (8 bytes per thread), instead of a line per
//! thread; at 10,000 clusters that is tens of megabytes. Names are kept as an interned
//! scope (`cluster.<name>`) and an interned leaf (`upstream_cx_total`), so the name of a
//! cluster is stored once for all of its stats.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// Index of the main thread's cell (workers use `0..concurrency`).
pub const MAIN_THREAD: usize = usize::MAX;

/// Stats per block.
const BLOCK_SLOTS: usize = 512;

/// One thread's cells of a block.
#[repr(align(64))]
struct Row([AtomicU64; BLOCK_SLOTS]);

/// `BLOCK_SLOTS` stats' cells for every thread (workers, then the main thread).
struct Block {
    rows: Box<[Row]>,
    /// Where a dropped stat returns its slot.
    arena: Weak<Mutex<Arena>>,
}

/// Hands out slots: recycled ones first, then the unused tail of the newest block.
#[derive(Default)]
struct Arena {
    free: Vec<(Arc<Block>, u16)>,
    newest: Option<Arc<Block>>,
    used_in_newest: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a single push/pop/insert that cannot leave the data
    // inconsistent, so a lock poisoned by a panic elsewhere is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One stat's cells: a slot in a block.
struct Cells {
    block: Arc<Block>,
    slot: u16,
    /// Whether the stat was ever written (Envoy's "used" flag: `/stats?usedonly` and the
    /// stats sinks skip stats never touched). It fits in the padding after `slot`, so it
    /// costs no memory.
    used: AtomicBool,
}

impl Cells {
    fn new(arena: &Arc<Mutex<Arena>>, threads: usize) -> Cells {
        let mut a = lock(arena);
        if let Some((block, slot)) = a.free.pop() {
            // Whoever used the slot before has dropped every handle to it.
            for row in block.rows.iter() {
                row.0[usize::from(slot)].store(0, Ordering::Relaxed);
            }
            return Cells {
                block,
                slot,
                used: AtomicBool::new(false),
            };
        }
        let block = match &a.newest {
            Some(b) if a.used_in_newest < BLOCK_SLOTS => b.clone(),
            _ => {
                let b = Arc::new(Block {
                    rows: (0..threads + 1)
                        .map(|_| Row(std::array::from_fn(|_| AtomicU64::new(0))))
                        .collect(),
                    arena: Arc::downgrade(arena),
                });
                a.newest = Some(b.clone());
                a.used_in_newest = 0;
                b
            }
        };
        // BLOCK_SLOTS fits in u16.
        let slot = a.used_in_newest as u16;
        a.used_in_newest += 1;
        Cells {
            block,
            slot,
            used: AtomicBool::new(false),
        }
    }

    #[inline]
    fn cell(&self, thread: usize) -> &AtomicU64 {
        let rows = &self.block.rows;
        &rows[thread.min(rows.len() - 1)].0[usize::from(self.slot)]
    }

    /// Marks the stat used. Read first: once set, the flag's cache line is only ever
    /// read, so workers writing their own cells do not bounce it between them.
    #[inline]
    fn mark_used(&self) {
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
    }

    fn is_used(&self) -> bool {
        self.used.load(Ordering::Relaxed)
    }

    #[inline]
    fn add(&self, thread: usize, n: u64) {
        self.mark_used();
        // Only `thread` writes this cell, so a relaxed load+store is enough and avoids a
        // locked read-modify-write on the hot path.
        let cell = self.cell(thread);
        cell.store(
            cell.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    fn sum(&self) -> u64 {
        self.block
            .rows
            .iter()
            .map(|r| r.0[usize::from(self.slot)].load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

impl Drop for Cells {
    fn drop(&mut self) {
        if let Some(arena) = self.block.arena.upgrade() {
            lock(&arena).free.push((self.block.clone(), self.slot));
        }
    }
}

/// A monotonically increasing count, one cell per thread.
pub struct Counter {
    cells: Cells,
}

impl Counter {
    /// Adds one on `thread`'s cell (a worker index, or [`MAIN_THREAD`]).
    #[inline]
    pub fn inc(&self, thread: usize) {
        self.cells.add(thread, 1);
    }

    /// Adds `n` on `thread`'s cell.
    #[inline]
    pub fn add(&self, thread: usize, n: u64) {
        self.cells.add(thread, n);
    }

    /// The sum over all threads.
    pub fn value(&self) -> u64 {
        self.cells.sum()
    }

    /// Whether it was ever added to (Envoy's `used()`).
    pub fn used(&self) -> bool {
        self.cells.is_used()
    }
}

/// A value that goes up and down; per-thread deltas summed when read.
pub struct Gauge {
    cells: Cells,
    /// Read as an unsigned 64-bit value (Envoy's gauges are `uint64`): a set-only gauge
    /// such as a subscription's `version` hash uses the whole range.
    unsigned: bool,
}

/// A gauge's value as rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GaugeValue {
    /// An up-and-down gauge (per-thread deltas may be negative).
    Signed(i64),
    /// A set-only gauge holding a full `u64`.
    Unsigned(u64),
}

impl GaugeValue {
    /// The value as a signed number (an unsigned one above `i64::MAX` saturates).
    pub fn as_i64(self) -> i64 {
        match self {
            GaugeValue::Signed(v) => v,
            GaugeValue::Unsigned(v) => i64::try_from(v).unwrap_or(i64::MAX),
        }
    }
}

impl std::fmt::Display for GaugeValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GaugeValue::Signed(v) => v.fmt(f),
            GaugeValue::Unsigned(v) => v.fmt(f),
        }
    }
}

impl From<GaugeValue> for serde_json::Value {
    fn from(v: GaugeValue) -> serde_json::Value {
        match v {
            GaugeValue::Signed(v) => v.into(),
            GaugeValue::Unsigned(v) => v.into(),
        }
    }
}

/// A string stat (Envoy's text readout), e.g. a subscription's `version_text`; set and
/// read on the main thread.
#[derive(Default)]
pub struct TextReadout {
    value: Mutex<String>,
    used: AtomicBool,
}

impl TextReadout {
    /// Replaces the value.
    pub fn set(&self, value: &str) {
        self.used.store(true, Ordering::Relaxed);
        let mut v = lock(&self.value);
        v.clear();
        v.push_str(value);
    }

    /// The current value.
    pub fn value(&self) -> String {
        lock(&self.value).clone()
    }

    /// Whether it was ever set.
    pub fn used(&self) -> bool {
        self.used.load(Ordering::Relaxed)
    }
}

/// A gauge raised by one while this lives ([`Gauge::raise`]).
pub struct Raised<'a> {
    gauge: &'a Gauge,
    thread: usize,
}

impl Drop for Raised<'_> {
    fn drop(&mut self) {
        self.gauge.dec(self.thread);
    }
}

impl Gauge {
    /// Adds `n` (may be negative) on `thread`'s cell.
    #[inline]
    pub fn add(&self, thread: usize, n: i64) {
        // Two's complement: adding the bit pattern of a negative delta subtracts.
        self.cells.add(thread, n as u64);
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self, thread: usize) {
        self.add(thread, 1);
    }

    /// Subtracts one.
    #[inline]
    pub fn dec(&self, thread: usize) {
        self.add(thread, -1);
    }

    /// Adds one on `thread`'s cell until the returned guard drops: a future dropped
    /// mid-way (a timeout, a reset) takes its count down with it.
    pub fn raise(&self, thread: usize) -> Raised<'_> {
        self.inc(thread);
        Raised {
            gauge: self,
            thread,
        }
    }

    /// Sets the gauge from the main thread (only for gauges no worker touches).
    pub fn set(&self, value: i64) {
        // Two's complement: the bit pattern of the value.
        self.set_unsigned(value as u64);
    }

    /// Sets the whole `u64` of a gauge created by [`Store::unsigned_gauge`].
    pub fn set_unsigned(&self, value: u64) {
        self.cells.mark_used();
        let rows = &self.cells.block.rows;
        for (i, row) in rows.iter().enumerate() {
            let v = if i == rows.len() - 1 { value } else { 0 };
            row.0[usize::from(self.cells.slot)].store(v, Ordering::Relaxed);
        }
    }

    /// The sum over all threads.
    pub fn value(&self) -> i64 {
        self.cells.sum() as i64
    }

    /// Whether it was ever set or changed (Envoy's `used()`).
    pub fn used(&self) -> bool {
        self.cells.is_used()
    }

    /// The value as rendered: unsigned for a gauge created as one.
    pub fn rendered(&self) -> GaugeValue {
        if self.unsigned {
            GaugeValue::Unsigned(self.cells.sum())
        } else {
            GaugeValue::Signed(self.value())
        }
    }
}

/// Envoy's default histogram bucket bounds, in the unit recorded (milliseconds for the
/// request-time histograms).
pub const HISTOGRAM_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// [`HISTOGRAM_BUCKETS`], shared by every histogram no `histogram_bucket_settings` rule
/// names.
pub fn default_buckets() -> Arc<[f64]> {
    static DEFAULT: std::sync::OnceLock<Arc<[f64]>> = std::sync::OnceLock::new();
    DEFAULT
        .get_or_init(|| Arc::from(HISTOGRAM_BUCKETS.as_slice()))
        .clone()
}

/// A distribution of values (Envoy's histogram): bucket counts and sum.
pub struct Histogram {
    storage: HistogramStorage,
    /// The buckets' upper bounds, ascending.
    bounds: Arc<[f64]>,
}

enum HistogramStorage {
    /// Per-thread cells: one per bound, one for larger values.
    PerThread { buckets: Box<[Cells]>, sum: Cells },
    /// Recorded by the main thread only (an xDS subscription's `update_duration`): plain
    /// counters, a fifth of the per-thread cells' memory, which matters at one histogram
    /// per cluster. The buckets, then the sum.
    MainThread(Box<[AtomicU64]>),
}

/// The bucket of `value` among `bounds` (ascending): the first bound it does not
/// exceed, else the one past the last.
fn bucket_of(bounds: &[f64], value: u64) -> usize {
    let v = value as f64;
    bounds.partition_point(|b| *b < v)
}

impl Histogram {
    fn new(store: &Store, bounds: Arc<[f64]>) -> Histogram {
        Histogram {
            storage: HistogramStorage::PerThread {
                buckets: (0..=bounds.len()).map(|_| store.cells()).collect(),
                sum: store.cells(),
            },
            bounds,
        }
    }

    /// A histogram only the main thread records into, outside the registry (for a
    /// [`StatGroup`]): plain counters, a fifth of per-thread cells' memory. `bounds`
    /// are the buckets' (see [`StatsView::buckets`]).
    pub fn main_thread(bounds: Arc<[f64]>) -> Histogram {
        Histogram {
            storage: HistogramStorage::MainThread(
                (0..bounds.len() + 2).map(|_| AtomicU64::new(0)).collect(),
            ),
            bounds,
        }
    }

    /// Records `value` on `thread`'s cells.
    #[inline]
    pub fn record(&self, thread: usize, value: u64) {
        let bucket = bucket_of(&self.bounds, value);
        match &self.storage {
            HistogramStorage::PerThread { buckets, sum } => {
                buckets[bucket].add(thread, 1);
                sum.add(thread, value);
            }
            HistogramStorage::MainThread(cells) => {
                cells[bucket].fetch_add(1, Ordering::Relaxed);
                cells[cells.len() - 1].fetch_add(value, Ordering::Relaxed);
            }
        }
    }

    /// Whether a value was ever recorded (Envoy's `used()`).
    pub fn used(&self) -> bool {
        match &self.storage {
            HistogramStorage::PerThread { sum, .. } => sum.is_used(),
            HistogramStorage::MainThread(cells) => cells
                .split_last()
                .is_some_and(|(_, buckets)| buckets.iter().any(|c| c.load(Ordering::Relaxed) > 0)),
        }
    }

    /// The counts and sum over all threads.
    pub fn snapshot(&self) -> HistogramSnapshot {
        match &self.storage {
            HistogramStorage::PerThread { buckets, sum } => HistogramSnapshot {
                counts: buckets.iter().map(Cells::sum).collect(),
                sum: sum.sum(),
                bounds: self.bounds.clone(),
            },
            HistogramStorage::MainThread(cells) => {
                let (sum, buckets) = cells.split_last().unwrap_or((&cells[0], &[]));
                HistogramSnapshot {
                    counts: buckets.iter().map(|c| c.load(Ordering::Relaxed)).collect(),
                    sum: sum.load(Ordering::Relaxed),
                    bounds: self.bounds.clone(),
                }
            }
        }
    }
}

/// A histogram's values at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Values per bucket of `bounds` (not cumulative), then above the last.
    pub counts: Vec<u64>,
    /// Sum of the recorded values.
    pub sum: u64,
    /// The buckets' upper bounds, ascending (the histogram's).
    pub bounds: Arc<[f64]>,
}

impl HistogramSnapshot {
    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The `q` quantile (0..=1), interpolated linearly inside its bucket; `None` without
    /// values. (Envoy's log-linear histogram gives slightly different figures.)
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let target = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (i, &n) in self.counts.iter().enumerate() {
            if n == 0 {
                continue;
            }
            if (below + n) as f64 >= target {
                // Values above the last bound read as the last bound (0 without bounds).
                let last = self.bounds.last().copied().unwrap_or(0.0);
                let lower = match i.checked_sub(1) {
                    None => 0.0,
                    Some(j) => self.bounds.get(j).copied().unwrap_or(last),
                };
                let upper = self.bounds.get(i).copied().unwrap_or(last);
                let within = (target - below as f64).max(0.0) / n as f64;
                return Some(lower + (upper - lower) * within);
            }
            below += n;
        }
        self.bounds.last().copied()
    }
}

/// A counter as [`Store::entries`] reads it.
pub struct CounterEntry {
    /// Full name.
    pub name: String,
    /// Value (since start, not since `/reset_counters`).
    pub value: u64,
    /// Whether it was ever added to.
    pub used: bool,
    /// The counter itself, for a registry stat.
    pub handle: Option<Arc<Counter>>,
}

/// A gauge as [`Store::entries`] reads it.
pub struct GaugeEntry {
    /// Full name.
    pub name: String,
    /// Value.
    pub value: GaugeValue,
    /// Whether it was ever set or changed.
    pub used: bool,
}

/// A histogram as [`Store::entries`] reads it.
pub struct HistogramEntry {
    /// Full name.
    pub name: String,
    /// Its values since start.
    pub snapshot: HistogramSnapshot,
    /// Whether a value was ever recorded.
    pub used: bool,
    /// The histogram itself, for a registry stat.
    pub handle: Option<Arc<Histogram>>,
}

/// Every stat, from [`Store::entries`].
#[derive(Default)]
pub struct Entries {
    /// Counters.
    pub counters: Vec<CounterEntry>,
    /// Gauges.
    pub gauges: Vec<GaugeEntry>,
    /// Histograms.
    pub histograms: Vec<HistogramEntry>,
    /// Text readouts: name, value, used.
    pub text_readouts: Vec<(String, String, bool)>,
}

/// One stat of a [`StatGroup`], as rendered.
pub enum StatValue<'a> {
    /// A counter.
    Counter(&'a str, u64),
    /// A gauge.
    Gauge(&'a str, GaugeValue),
    /// A text readout.
    Text(&'a str, String),
    /// A histogram.
    Histogram(&'a str, HistogramSnapshot),
}

/// Stats that one owner updates on the main thread only, kept together in plain fields
/// under one scope: one allocation and one registry entry for the set, where separate
/// stats cost a registry entry and per-thread cells each (an EDS cluster's configuration
/// update stats are eleven; at 100,000 clusters that is most of a cluster's memory).
pub trait StatGroup: Send + Sync + 'static {
    /// Calls `out` with each stat, named by its leaf.
    fn visit(&self, out: &mut dyn FnMut(StatValue<'_>));
}

/// A group held twice: to render, and to hand back typed.
struct GroupEntry {
    render: Arc<dyn StatGroup>,
    typed: Arc<dyn std::any::Any + Send + Sync>,
}

/// A stat's name: interned scope (everything before the last dot) and leaf.
type Key = (Arc<str>, Arc<str>);

#[derive(Default)]
struct Registry {
    /// Interned name parts, shared by every stat of a scope.
    parts: HashSet<Arc<str>>,
    counters: BTreeMap<Key, Arc<Counter>>,
    gauges: BTreeMap<Key, Arc<Gauge>>,
    histograms: BTreeMap<Key, Arc<Histogram>>,
    text_readouts: BTreeMap<Key, Arc<TextReadout>>,
    /// Stat groups, by scope.
    groups: BTreeMap<Arc<str>, GroupEntry>,
    /// Lookups by name, while `/stats/recentlookups/enable` has them tracked.
    recent: Option<RecentLookups>,
    /// Every lookup by name since start or `/stats/recentlookups/clear`.
    lookups: u64,
}

/// How many distinct names `/stats/recentlookups` keeps (Envoy's capacity once enabled).
const RECENT_LOOKUPS: usize = 100;

/// The most recently looked-up stat names and how often each was (Envoy's
/// `RecentLookups`): the least recently used name goes when the table is full.
#[derive(Default)]
struct RecentLookups {
    /// Names, least recently used first, with their counts.
    names: std::collections::VecDeque<(String, u64)>,
}

impl RecentLookups {
    fn record(&mut self, name: &str) {
        let count = match self.names.iter().position(|(n, _)| n == name) {
            Some(i) => self.names.remove(i).map_or(0, |(_, c)| c),
            None => 0,
        };
        if self.names.len() >= RECENT_LOOKUPS {
            self.names.pop_front();
        }
        self.names.push_back((name.to_string(), count + 1));
    }
}

impl Registry {
    fn intern(&mut self, part: &str) -> Arc<str> {
        if let Some(p) = self.parts.get(part) {
            return p.clone();
        }
        let p: Arc<str> = Arc::from(part);
        self.parts.insert(p.clone());
        p
    }

    fn key(&mut self, name: &str) -> Key {
        self.lookups += 1;
        if let Some(recent) = &mut self.recent {
            recent.record(name);
        }
        let (scope, leaf) = name.rsplit_once('.').unwrap_or(("", name));
        (self.intern(scope), self.intern(leaf))
    }
}

fn full_name((scope, leaf): &Key) -> String {
    if scope.is_empty() {
        leaf.to_string()
    } else {
        format!("{scope}.{leaf}")
    }
}

/// The registry of every stat by name. Cheap to clone; lookups happen on the main thread
/// when snapshots are built, never on a worker's hot path.
#[derive(Clone)]
pub struct Store {
    threads: usize,
    registry: Arc<Mutex<Registry>>,
    arena: Arc<Mutex<Arena>>,
    view: Arc<std::sync::OnceLock<StatsView>>,
    /// Counter values at the last `/reset_counters`: the admin shows counts since then.
    baselines: Arc<Mutex<std::collections::HashMap<String, u64>>>,
}

/// Whether a stat, by name, is shown.
pub type StatFilter = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// A `histogram_bucket_settings` rule: which histograms (by full name) take which
/// bucket bounds (ascending).
pub type BucketRule = (StatFilter, Arc<[f64]>);

/// Which stats the admin shows and how they are tagged (`stats_config`).
pub struct StatsView {
    /// Prometheus labels.
    pub tags: super::tags::TagProducer,
    /// `stats_matcher`: whether a stat is shown (`None`: all are).
    pub shown: Option<StatFilter>,
    /// `histogram_bucket_settings`: the first rule whose filter takes a histogram's name
    /// gives its bucket bounds (ascending).
    pub buckets: Vec<BucketRule>,
}

impl StatsView {
    /// Whether `name` is shown.
    pub fn shows(&self, name: &str) -> bool {
        self.shown.as_ref().is_none_or(|f| f(name))
    }

    /// The bucket bounds of the histogram `name`: the first matching rule's, else
    /// Envoy's defaults.
    pub fn buckets(&self, name: &str) -> Arc<[f64]> {
        self.buckets
            .iter()
            .find(|(matches, _)| matches(name))
            .map_or_else(default_buckets, |(_, b)| b.clone())
    }
}

impl Store {
    /// A store for `workers` worker threads.
    pub fn new(workers: usize) -> Self {
        Store {
            threads: workers,
            registry: Arc::default(),
            arena: Arc::default(),
            view: Arc::default(),
            baselines: Arc::default(),
        }
    }

    /// `/reset_counters`: from now on the admin shows every counter's count since this
    /// moment (as Envoy's, it changes only what the admin shows).
    pub fn reset_counters(&self) {
        let now = self.counters();
        *lock(&self.baselines) = now.into_iter().collect();
    }

    /// Every counter as the admin shows it: its count since the last `/reset_counters`.
    pub fn displayed_counters(&self) -> Vec<(String, u64)> {
        let baselines = lock(&self.baselines);
        let mut all = self.counters();
        if !baselines.is_empty() {
            for (name, value) in &mut all {
                *value = value.saturating_sub(baselines.get(name).copied().unwrap_or(0));
            }
        }
        all
    }

    /// `/stats/recentlookups/enable` (`true`) or `/disable`: starts tracking stat lookups
    /// by name, or stops and forgets them.
    pub fn track_lookups(&self, on: bool) {
        let mut r = lock(&self.registry);
        match (on, r.recent.is_some()) {
            (true, false) => r.recent = Some(RecentLookups::default()),
            (false, _) => r.recent = None,
            (true, true) => {}
        }
    }

    /// `/stats/recentlookups/clear`: forgets the lookups seen so far and zeroes their
    /// total (tracking goes on).
    pub fn clear_lookups(&self) {
        let mut r = lock(&self.registry);
        r.lookups = 0;
        if let Some(recent) = &mut r.recent {
            *recent = RecentLookups::default();
        }
    }

    /// The tracked lookups sorted by name (`None` when not tracking), and how many
    /// lookups there were in all since start or the last clear.
    pub fn recent_lookups(&self) -> (Option<Vec<(String, u64)>>, u64) {
        let r = lock(&self.registry);
        let names = r.recent.as_ref().map(|recent| {
            let mut names: Vec<(String, u64)> = recent.names.iter().cloned().collect();
            names.sort();
            names
        });
        (names, r.lookups)
    }

    /// Sets how stats are shown (once, at start-up; later calls change nothing).
    pub fn set_view(&self, view: StatsView) {
        let _ = self.view.set(view);
    }

    /// How stats are shown: as set, else Envoy's default tags and every stat.
    pub fn view(&self) -> &StatsView {
        self.view.get_or_init(|| StatsView {
            tags: super::tags::TagProducer::default(),
            shown: None,
            buckets: Vec::new(),
        })
    }

    fn cells(&self) -> Cells {
        Cells::new(&self.arena, self.threads)
    }

    /// The counter named `name`, created at zero on first use.
    pub fn counter(&self, name: &str) -> Arc<Counter> {
        let mut r = lock(&self.registry);
        let key = r.key(name);
        r.counters
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Counter {
                    cells: self.cells(),
                })
            })
            .clone()
    }

    /// The gauge named `name`, created at zero on first use.
    pub fn gauge(&self, name: &str) -> Arc<Gauge> {
        self.gauge_of_kind(name, false)
    }

    /// A set-only gauge holding a whole `u64` (a version hash), created at zero.
    pub fn unsigned_gauge(&self, name: &str) -> Arc<Gauge> {
        self.gauge_of_kind(name, true)
    }

    fn gauge_of_kind(&self, name: &str, unsigned: bool) -> Arc<Gauge> {
        let mut r = lock(&self.registry);
        let key = r.key(name);
        r.gauges
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Gauge {
                    cells: self.cells(),
                    unsigned,
                })
            })
            .clone()
    }

    /// The text readout named `name`, created empty on first use.
    pub fn text_readout(&self, name: &str) -> Arc<TextReadout> {
        let mut r = lock(&self.registry);
        let key = r.key(name);
        r.text_readouts.entry(key).or_default().clone()
    }

    /// Forgets every stat of `scope` and of the scopes nested in it (`cluster.a` and
    /// `cluster.a.outlier_detection`, not `cluster.ab`), as Envoy drops a removed
    /// cluster's scope: they leave `/stats`, their slots return to the arena once the
    /// last handle held elsewhere drops, and a later stat of the same name starts at zero.
    pub fn remove_scope(&self, scope: &str) {
        let mut r = lock(&self.registry);
        let exact: Arc<str> = Arc::from(scope);
        // '/' sorts right after '.', so `[scope., scope/)` holds exactly the nested scopes.
        let nested: Arc<str> = Arc::from(format!("{scope}."));
        let after_nested: Arc<str> = Arc::from(format!("{scope}/"));
        let empty: Arc<str> = Arc::from("");
        let doomed = |r: &Registry| -> Vec<Key> {
            let in_scope = |k: &&Key| *k.0 == *exact || k.0.starts_with(&*nested);
            let ranges = [
                (exact.clone(), empty.clone())..(nested.clone(), empty.clone()),
                (nested.clone(), empty.clone())..(after_nested.clone(), empty.clone()),
            ];
            let mut keys = Vec::new();
            for range in ranges {
                keys.extend(
                    r.counters
                        .range(range.clone())
                        .map(|(k, _)| k)
                        .filter(in_scope)
                        .cloned(),
                );
                keys.extend(
                    r.gauges
                        .range(range.clone())
                        .map(|(k, _)| k)
                        .filter(in_scope)
                        .cloned(),
                );
                keys.extend(
                    r.histograms
                        .range(range.clone())
                        .map(|(k, _)| k)
                        .filter(in_scope)
                        .cloned(),
                );
                keys.extend(
                    r.text_readouts
                        .range(range)
                        .map(|(k, _)| k)
                        .filter(in_scope)
                        .cloned(),
                );
            }
            keys
        };
        for key in doomed(&r) {
            r.counters.remove(&key);
            r.gauges.remove(&key);
            r.histograms.remove(&key);
            r.text_readouts.remove(&key);
        }
        r.groups
            .retain(|g, _| **g != *exact && !g.starts_with(&*nested));
    }

    /// The group of type `G` under `scope` if `fits` it, else a new one made by `make`
    /// (replacing whatever group was there).
    pub fn group<G: StatGroup>(
        &self,
        scope: &str,
        fits: impl FnOnce(&G) -> bool,
        make: impl FnOnce() -> G,
    ) -> Arc<G> {
        let mut r = lock(&self.registry);
        if let Some(g) = r
            .groups
            .get(scope)
            .and_then(|e| e.typed.clone().downcast::<G>().ok())
            .filter(|g| fits(g))
        {
            return g;
        }
        let g = Arc::new(make());
        let scope = r.intern(scope);
        r.groups.insert(
            scope,
            GroupEntry {
                render: g.clone(),
                typed: g.clone(),
            },
        );
        g
    }

    /// Calls `f` with every grouped stat's full name and value.
    fn visit_groups(&self, mut f: impl FnMut(String, StatValue<'_>)) {
        let r = lock(&self.registry);
        for (scope, g) in &r.groups {
            g.render.visit(&mut |v| {
                let leaf = match &v {
                    StatValue::Counter(l, _)
                    | StatValue::Gauge(l, _)
                    | StatValue::Text(l, _)
                    | StatValue::Histogram(l, _) => *l,
                };
                f(format!("{scope}.{leaf}"), v);
            });
        }
    }

    /// Every text readout's current value, by name (in no particular order).
    pub fn text_readouts(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = lock(&self.registry)
            .text_readouts
            .iter()
            .map(|(k, v)| (full_name(k), v.value()))
            .collect();
        self.visit_groups(|name, v| {
            if let StatValue::Text(_, t) = v {
                out.push((name, t));
            }
        });
        out
    }

    /// The histogram named `name`, created empty on first use.
    pub fn histogram(&self, name: &str) -> Arc<Histogram> {
        let mut r = lock(&self.registry);
        let key = r.key(name);
        r.histograms
            .entry(key)
            .or_insert_with(|| Arc::new(Histogram::new(self, self.view().buckets(name))))
            .clone()
    }

    /// A histogram only the main thread records into (see [`Histogram::record`]), created
    /// empty on first use.
    pub fn main_thread_histogram(&self, name: &str) -> Arc<Histogram> {
        let mut r = lock(&self.registry);
        let key = r.key(name);
        r.histograms
            .entry(key)
            .or_insert_with(|| Arc::new(Histogram::main_thread(self.view().buckets(name))))
            .clone()
    }

    /// A counter outside the registry (not listed by admin `/stats`), e.g. per-host stats
    /// that Envoy shows only in `/clusters`.
    pub fn detached_counter(&self) -> Arc<Counter> {
        Arc::new(Counter {
            cells: self.cells(),
        })
    }

    /// A gauge outside the registry.
    pub fn detached_gauge(&self) -> Arc<Gauge> {
        Arc::new(Gauge {
            cells: self.cells(),
            unsigned: false,
        })
    }

    /// Every counter's current value, by name (in no particular order).
    pub fn counters(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = lock(&self.registry)
            .counters
            .iter()
            .map(|(k, v)| (full_name(k), v.value()))
            .collect();
        self.visit_groups(|name, v| {
            if let StatValue::Counter(_, c) = v {
                out.push((name, c));
            }
        });
        out
    }

    /// Every histogram's current values, by name (in no particular order).
    pub fn histograms(&self) -> Vec<(String, HistogramSnapshot)> {
        let mut out: Vec<(String, HistogramSnapshot)> = lock(&self.registry)
            .histograms
            .iter()
            .map(|(k, v)| (full_name(k), v.snapshot()))
            .collect();
        self.visit_groups(|name, v| {
            if let StatValue::Histogram(_, h) = v {
                out.push((name, h));
            }
        });
        out
    }

    /// Every counter, gauge and histogram with its value and whether it was ever used, as
    /// a stats flush and `/stats?usedonly` read them (in no particular order). Registry
    /// stats come with their handle, so a flush can tell a stat from a later one of the
    /// same name; grouped stats (main-thread owned) have none, and count as used once
    /// they are not zero.
    pub fn entries(&self) -> Entries {
        let mut out = Entries::default();
        {
            let r = lock(&self.registry);
            out.counters
                .extend(r.counters.iter().map(|(k, c)| CounterEntry {
                    name: full_name(k),
                    value: c.value(),
                    used: c.used(),
                    handle: Some(c.clone()),
                }));
            out.gauges.extend(r.gauges.iter().map(|(k, g)| GaugeEntry {
                name: full_name(k),
                value: g.rendered(),
                used: g.used(),
            }));
            out.histograms
                .extend(r.histograms.iter().map(|(k, h)| HistogramEntry {
                    name: full_name(k),
                    snapshot: h.snapshot(),
                    used: h.used(),
                    handle: Some(h.clone()),
                }));
            out.text_readouts.extend(
                r.text_readouts
                    .iter()
                    .map(|(k, t)| (full_name(k), t.value(), t.used())),
            );
        }
        self.visit_groups(|name, v| match v {
            StatValue::Counter(_, value) => out.counters.push(CounterEntry {
                name,
                value,
                used: value != 0,
                handle: None,
            }),
            StatValue::Gauge(_, value) => out.gauges.push(GaugeEntry {
                name,
                value,
                used: value.as_i64() != 0,
            }),
            StatValue::Histogram(_, snapshot) => out.histograms.push(HistogramEntry {
                name,
                used: snapshot.count() != 0,
                snapshot,
                handle: None,
            }),
            StatValue::Text(_, t) => {
                let used = !t.is_empty();
                out.text_readouts.push((name, t, used));
            }
        });
        out
    }

    /// Every gauge's current value, by name (in no particular order).
    pub fn gauges(&self) -> Vec<(String, GaugeValue)> {
        let mut out: Vec<(String, GaugeValue)> = lock(&self.registry)
            .gauges
            .iter()
            .map(|(k, v)| (full_name(k), v.rendered()))
            .collect();
        self.visit_groups(|name, v| {
            if let StatValue::Gauge(_, g) = v {
                out.push((name, g));
            }
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_sum_across_threads() {
        let store = Store::new(2);
        let c = store.counter("a.b");
        c.inc(0);
        c.add(1, 5);
        c.inc(MAIN_THREAD);
        assert_eq!(store.counter("a.b").value(), 7);
        let g = store.gauge("g");
        g.inc(0);
        g.inc(1);
        g.dec(0);
        assert_eq!(g.value(), 1);
        g.set(42);
        assert_eq!(g.value(), 42);
    }

    #[test]
    fn names_split_into_interned_parts_render_whole() {
        let store = Store::new(1);
        store.counter("cluster.a.b.upstream_cx_total").inc(0);
        store.counter("cluster.a.upstream_cx_total").add(0, 2);
        store.gauge("uptime").set(3);
        let mut counters = store.counters();
        counters.sort();
        assert_eq!(
            counters,
            vec![
                ("cluster.a.b.upstream_cx_total".to_string(), 1),
                ("cluster.a.upstream_cx_total".to_string(), 2),
            ]
        );
        assert_eq!(
            store.gauges(),
            vec![("uptime".to_string(), GaugeValue::Signed(3))]
        );
        let version = store.unsigned_gauge("cds.version");
        version.set_unsigned(u64::MAX - 1);
        assert_eq!(version.rendered().to_string(), (u64::MAX - 1).to_string());
        store.text_readout("cds.version_text").set("v1");
        assert_eq!(
            store.text_readouts(),
            vec![("cds.version_text".to_string(), "v1".to_string())]
        );
        assert_eq!(store.counter("cluster.a.upstream_cx_total").value(), 2);
    }

    #[test]
    fn removing_a_scope_drops_it_and_its_nested_scopes_only() {
        let store = Store::new(1);
        for name in [
            "cluster.a.upstream_cx_total",
            "cluster.a.outlier_detection.ejections_total",
            "cluster.a-b.upstream_cx_total",
            "cluster.ab.upstream_cx_total",
            "cluster.a",
        ] {
            store.counter(name).inc(0);
        }
        store.unsigned_gauge("cluster.a.version").set_unsigned(7);
        store.text_readout("cluster.a.version_text").set("v");
        store.remove_scope("cluster.a");
        let mut left: Vec<String> = store.counters().into_iter().map(|(k, _)| k).collect();
        left.sort();
        assert_eq!(
            left,
            [
                "cluster.a",
                "cluster.a-b.upstream_cx_total",
                "cluster.ab.upstream_cx_total"
            ]
        );
        assert!(store.gauges().is_empty());
        assert!(store.text_readouts().is_empty());
        assert_eq!(store.counter("cluster.a.upstream_cx_total").value(), 0);
    }

    #[test]
    fn a_dropped_stat_slot_is_reused_from_zero() {
        let store = Store::new(2);
        let stats: Vec<_> = (0..BLOCK_SLOTS + 3)
            .map(|_| store.detached_counter())
            .collect();
        for (i, c) in stats.iter().enumerate() {
            c.add(i % 3, i as u64 + 1);
        }
        for (i, c) in stats.iter().enumerate() {
            assert_eq!(c.value(), i as u64 + 1, "stat {i} shares a cell");
        }
        drop(stats);
        let reused = store.detached_gauge();
        assert_eq!(reused.value(), 0);
        reused.dec(1);
        assert_eq!(reused.value(), -1);
        assert_eq!(lock(&store.arena).free.len(), BLOCK_SLOTS + 2);
    }

    #[test]
    fn histogram_buckets_sum_and_quantiles() {
        let store = Store::new(2);
        let h = store.histogram("http.p.downstream_rq_time");
        assert_eq!(h.snapshot().quantile(0.5), None);
        for v in [0, 1, 3, 7, 7, 40] {
            h.record(0, v);
        }
        h.record(MAIN_THREAD, 5_000_000);
        let snap = store.histogram("http.p.downstream_rq_time").snapshot();
        assert_eq!(snap.count(), 7);
        assert_eq!(snap.sum, 5_000_058);
        // 0 ≤ 0.5, 1 ≤ 1, 3 ≤ 5, 7 ≤ 10 (twice), 40 ≤ 50, 5e6 above the last bound.
        assert_eq!(&snap.counts[..6], &[1, 1, 1, 2, 0, 1]);
        assert_eq!(snap.counts[HISTOGRAM_BUCKETS.len()], 1);
        assert_eq!(snap.quantile(0.0), Some(0.0));
        // The median (rank 3.5 of 7) falls half a value into the two values of (5, 10]:
        // a quarter of the way through that bucket.
        assert_eq!(snap.quantile(0.5), Some(6.25));
        assert_eq!(snap.quantile(1.0), Some(3_600_000.0));
        assert_eq!(store.histograms().len(), 1);
    }

    #[test]
    fn a_main_thread_histogram_reads_as_a_per_thread_one() {
        let store = Store::new(2);
        let (a, b) = (store.histogram("a"), store.main_thread_histogram("b"));
        for v in [0, 3, 7, 8, 12, 4_000_000] {
            a.record(MAIN_THREAD, v);
            b.record(MAIN_THREAD, v);
        }
        assert_eq!(a.snapshot(), b.snapshot());
    }

    #[test]
    fn histograms_take_the_first_matching_rules_bounds() {
        let store = Store::new(1);
        let rule = |prefix: &'static str, bounds: &[f64]| -> BucketRule {
            (
                Box::new(move |n: &str| n.starts_with(prefix)),
                Arc::from(bounds),
            )
        };
        store.set_view(StatsView {
            tags: crate::stats::tags::TagProducer::default(),
            shown: None,
            buckets: vec![
                rule("a.", &[1.0, 10.0]),
                rule("a", &[5.0]),
                rule("none", &[]),
            ],
        });
        let a = store.histogram("a.x");
        for v in [0, 1, 2, 10, 11] {
            a.record(0, v);
        }
        let snap = a.snapshot();
        assert_eq!(&*snap.bounds, &[1.0, 10.0]);
        // A value on a bound is in that bound's bucket.
        assert_eq!(snap.counts, [2, 2, 1]);
        assert_eq!(&*store.histogram("ab").snapshot().bounds, &[5.0]);
        assert_eq!(
            &*store.histogram("b").snapshot().bounds,
            HISTOGRAM_BUCKETS.as_slice()
        );
        // Without bounds every value is above them; quantiles do not panic.
        let none = store.main_thread_histogram("none");
        none.record(MAIN_THREAD, 3);
        let snap = none.snapshot();
        assert_eq!(snap.counts, [1]);
        assert_eq!(snap.quantile(0.5), Some(0.0));
    }
}
