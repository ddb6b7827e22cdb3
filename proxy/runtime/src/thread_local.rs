//! Thread-local slots (Envoy's `ThreadLocal::Slot`): the RCU channel from the main thread to
//! the workers.
//!
//! The main thread builds an immutable snapshot and [`Slot::set`]s it: a callback is posted
//! to every worker, which swaps the `Arc` in its thread's slot table. Code on a worker —
//! an event handler or a task — reads its copy with [`SlotId::get`], without any
//! synchronisation; work in flight keeps the old `Arc` alive until it is done, and the old
//! snapshot is freed when the last holder drops it. A slot may also name an `apply`
//! function that each worker runs on every new value (a per-worker manager diffing the old
//! and the new snapshot, say). [`ThreadLocal::run_on_all_workers`] runs a callback
//! everywhere and then a completion on the main thread, for actions that must wait until
//! no worker uses the old value.

use std::any::Any;
use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwapOption;
use tokio::sync::{mpsc, oneshot};

use crate::event::{Ctx, DispatcherHandle, Posted};

/// Identifies a slot; `Copy`, so workers can keep it in their own state.
pub struct SlotId<T> {
    index: usize,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for SlotId<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SlotId<T> {}

impl<T> std::fmt::Debug for SlotId<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SlotId({})", self.index)
    }
}

impl<T: Send + Sync + 'static> SlotId<T> {
    /// This thread's current value of the slot (`None` off the workers, or before the
    /// first value reached this one).
    #[inline]
    pub fn get(self) -> Option<Arc<T>> {
        TABLE.with(|t| t.borrow().get(self).cloned())
    }
}

/// One thread's values of every slot.
#[derive(Default)]
struct SlotTable {
    values: Vec<Option<Box<dyn Any>>>,
}

thread_local! {
    static TABLE: RefCell<SlotTable> = RefCell::new(SlotTable::default());
}

impl SlotTable {
    #[inline]
    fn get<T: Send + Sync + 'static>(&self, slot: SlotId<T>) -> Option<&Arc<T>> {
        self.values
            .get(slot.index)?
            .as_ref()?
            .downcast_ref::<Arc<T>>()
    }

    fn set(index: usize, value: Option<Box<dyn Any>>) {
        // The old value drops outside the borrow: its destructor may read a slot.
        let old = TABLE.with(|t| {
            let mut t = t.borrow_mut();
            if t.values.len() <= index {
                t.values.resize_with(index + 1, || None);
            }
            std::mem::replace(&mut t.values[index], value)
        });
        drop(old);
    }
}

pub type MainTask = Box<dyn FnOnce() + Send>;

/// The main thread's inbox: completions of `run_on_all_workers` and other posts from
/// workers. The server drains it on the main runtime.
#[derive(Clone)]
pub struct MainPoster {
    tx: mpsc::UnboundedSender<MainTask>,
}

impl MainPoster {
    /// A poster and the receiver the main thread must drain.
    pub fn new() -> (MainPoster, mpsc::UnboundedReceiver<MainTask>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (MainPoster { tx }, rx)
    }

    /// Queues `task` on the main thread; dropped if the main thread has exited.
    pub fn post(&self, task: MainTask) {
        let _ = self.tx.send(task);
    }
}

/// A callback every worker runs, without its loop's local state (what a slot posts).
type Broadcast = Arc<dyn Fn() + Send + Sync>;

/// What a [`Slot`] needs of the slot system, whatever the workers' local state.
trait Broadcaster: Send + Sync {
    fn broadcast(&self, cb: Broadcast, on_complete: MainTask);
}

/// The slot system: the set of workers (loops with local state `L`) and the main thread's
/// inbox.
pub struct ThreadLocal<L> {
    workers: OnceLock<Vec<DispatcherHandle<L>>>,
    main: MainPoster,
    next_slot: AtomicUsize,
}

impl<L: 'static> ThreadLocal<L> {
    /// A slot system; slots can be allocated at once, values are delivered once
    /// [`register_workers`](Self::register_workers) ran.
    pub fn new(main: MainPoster) -> Arc<ThreadLocal<L>> {
        Arc::new(ThreadLocal {
            workers: OnceLock::new(),
            main,
            next_slot: AtomicUsize::new(0),
        })
    }

    /// Sets the workers' dispatchers; only the first call has an effect.
    pub fn register_workers(&self, workers: Vec<DispatcherHandle<L>>) {
        let _ = self.workers.set(workers);
    }

    fn workers(&self) -> &[DispatcherHandle<L>] {
        self.workers.get().map_or(&[], Vec::as_slice)
    }

    /// Number of workers.
    pub fn concurrency(&self) -> usize {
        self.workers().len()
    }

    /// The main thread's inbox.
    pub fn main_poster(&self) -> &MainPoster {
        &self.main
    }

    /// Allocates a new slot, empty on every worker.
    pub fn allocate_slot<T: Send + Sync + 'static>(self: &Arc<Self>) -> Slot<T> {
        self.slot(None)
    }

    /// Allocates a new slot whose every new value each worker also hands to `apply`, right
    /// after storing it (the per-worker state that follows the value updates itself there).
    pub fn allocate_slot_applied<T: Send + Sync + 'static>(
        self: &Arc<Self>,
        apply: fn(&Arc<T>),
    ) -> Slot<T> {
        self.slot(Some(apply))
    }

    fn slot<T: Send + Sync + 'static>(self: &Arc<Self>, apply: Option<fn(&Arc<T>)>) -> Slot<T> {
        Slot {
            id: SlotId {
                index: self.next_slot.fetch_add(1, Ordering::Relaxed),
                _type: PhantomData,
            },
            tls: self.clone(),
            current: ArcSwapOption::empty(),
            apply,
        }
    }

    /// Posts `cb` to every worker; once every worker has run it, `on_complete` runs on the
    /// main thread, exactly once. Workers whose loop has exited count as done.
    pub fn run_on_all_workers<F>(&self, cb: Arc<F>, on_complete: MainTask)
    where
        F: Fn(&mut Ctx<L>) + Send + Sync + 'static,
    {
        let workers = self.workers();
        if workers.is_empty() {
            self.main.post(on_complete);
            return;
        }
        let remaining = Arc::new(AtomicUsize::new(workers.len()));
        let completion = Arc::new(std::sync::Mutex::new(Some(on_complete)));
        let finish = {
            let main = self.main.clone();
            let remaining = remaining.clone();
            let completion = completion.clone();
            move || {
                if remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                    let task = completion.lock().ok().and_then(|mut c| c.take());
                    if let Some(task) = task {
                        main.post(task);
                    }
                }
            }
        };
        let finish = Arc::new(finish);
        for worker in workers {
            let cb = cb.clone();
            let done = finish.clone();
            let posted = worker.post(Box::new(move |ctx: &mut Ctx<L>| {
                cb(ctx);
                done();
            }));
            if posted.is_err() {
                finish();
            }
        }
    }

    /// [`run_on_all_workers`](Self::run_on_all_workers) as a future that resolves on
    /// completion.
    pub async fn run_on_all_workers_async<F>(&self, cb: F)
    where
        F: Fn(&mut Ctx<L>) + Send + Sync + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.run_on_all_workers(
            Arc::new(cb),
            Box::new(move || {
                let _ = tx.send(());
            }),
        );
        let _ = rx.await;
    }

    /// Posts `cb` to worker `index` only.
    pub fn post_to(&self, index: usize, cb: Posted<L>) -> bool {
        self.workers()
            .get(index)
            .is_some_and(|w| w.post(cb).is_ok())
    }
}

impl<L: 'static> Broadcaster for ThreadLocal<L> {
    fn broadcast(&self, cb: Broadcast, on_complete: MainTask) {
        self.run_on_all_workers(Arc::new(move |_: &mut Ctx<L>| cb()), on_complete);
    }
}

/// A typed slot: the main thread's handle to one value replicated on every worker.
pub struct Slot<T> {
    id: SlotId<T>,
    tls: Arc<dyn Broadcaster>,
    current: ArcSwapOption<T>,
    apply: Option<fn(&Arc<T>)>,
}

impl<T: Send + Sync + 'static> Slot<T> {
    /// The id workers use to read their copy.
    pub fn id(&self) -> SlotId<T> {
        self.id
    }

    /// The callback that stores `value` on a worker (and applies it).
    fn store_on_workers(&self, value: Arc<T>) -> Broadcast {
        let (index, apply) = (self.id.index, self.apply);
        Arc::new(move || {
            SlotTable::set(index, Some(Box::new(value.clone())));
            if let Some(apply) = apply {
                apply(&value);
            }
        })
    }

    /// Publishes `value` to every worker (each applies it at its next loop iteration).
    pub fn set(&self, value: Arc<T>) {
        self.current.store(Some(value.clone()));
        self.tls
            .broadcast(self.store_on_workers(value), Box::new(|| {}));
    }

    /// Publishes `value` and resolves once every worker holds it.
    pub async fn set_and_wait(&self, value: Arc<T>) {
        self.current.store(Some(value.clone()));
        let (tx, rx) = oneshot::channel();
        self.tls.broadcast(
            self.store_on_workers(value),
            Box::new(move || {
                let _ = tx.send(());
            }),
        );
        let _ = rx.await;
    }

    /// The last published value, for readers outside the workers (admin, stats).
    pub fn current(&self) -> Option<Arc<T>> {
        self.current.load_full()
    }
}

impl<T> Drop for Slot<T> {
    fn drop(&mut self) {
        let index = self.id.index;
        self.tls.broadcast(
            Arc::new(move || SlotTable::set(index, None)),
            Box::new(|| {}),
        );
    }
}
