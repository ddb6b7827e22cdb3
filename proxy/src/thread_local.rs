//! Thread-local slots (Envoy's `ThreadLocal::Slot`): the RCU channel from the main thread to
//! the workers.
//!
//! The main thread builds an immutable snapshot and [`Slot::set`]s it: a callback is posted
//! to every worker, which swaps the `Arc` in its own [`SlotTable`]. A worker reads its copy
//! without any synchronisation; work in flight keeps the old `Arc` alive until it is done,
//! and the old snapshot is freed when the last holder drops it.
//! [`ThreadLocal::run_on_all_workers`] runs a callback everywhere and then a completion on
//! the main thread, for actions that must wait until no worker uses the old value.

use std::any::Any;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwapOption;
use tokio::sync::{mpsc, oneshot};

use crate::event::{Ctx, DispatcherHandle};

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

/// One worker's values of every slot.
#[derive(Default)]
pub struct SlotTable {
    values: Vec<Option<Box<dyn Any + Send>>>,
}

impl SlotTable {
    /// This worker's current value of `slot`.
    #[inline]
    pub fn get<T: Send + Sync + 'static>(&self, slot: SlotId<T>) -> Option<&Arc<T>> {
        self.values
            .get(slot.index)?
            .as_ref()?
            .downcast_ref::<Arc<T>>()
    }

    fn set<T: Send + Sync + 'static>(&mut self, slot: SlotId<T>, value: Option<Arc<T>>) {
        if self.values.len() <= slot.index {
            self.values.resize_with(slot.index + 1, || None);
        }
        self.values[slot.index] = value.map(|v| Box::new(v) as Box<dyn Any + Send>);
    }
}

/// A callback for the main thread.
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

/// The slot system: the set of workers and the main thread's inbox.
pub struct ThreadLocal {
    workers: OnceLock<Vec<DispatcherHandle>>,
    main: MainPoster,
    next_slot: AtomicUsize,
}

impl ThreadLocal {
    /// A slot system; slots can be allocated at once (workers learn their ids at spawn),
    /// values are delivered once [`register_workers`](Self::register_workers) ran.
    pub fn new(main: MainPoster) -> Arc<ThreadLocal> {
        Arc::new(ThreadLocal {
            workers: OnceLock::new(),
            main,
            next_slot: AtomicUsize::new(0),
        })
    }

    /// Sets the workers' dispatchers; only the first call has an effect.
    pub fn register_workers(&self, workers: Vec<DispatcherHandle>) {
        let _ = self.workers.set(workers);
    }

    fn workers(&self) -> &[DispatcherHandle] {
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
        Slot {
            id: SlotId {
                index: self.next_slot.fetch_add(1, Ordering::Relaxed),
                _type: PhantomData,
            },
            tls: self.clone(),
            current: ArcSwapOption::empty(),
        }
    }

    /// Posts `cb` to every worker; once every worker has run it, `on_complete` runs on the
    /// main thread, exactly once. Workers whose loop has exited count as done.
    pub fn run_on_all_workers<F>(&self, cb: Arc<F>, on_complete: MainTask)
    where
        F: Fn(&mut Ctx) + Send + Sync + 'static,
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
            let posted = worker.post(Box::new(move |ctx: &mut Ctx| {
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
        F: Fn(&mut Ctx) + Send + Sync + 'static,
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
    pub fn post_to(&self, index: usize, cb: crate::event::Posted) -> bool {
        self.workers()
            .get(index)
            .is_some_and(|w| w.post(cb).is_ok())
    }
}

/// A typed slot: the main thread's handle to one value replicated on every worker.
pub struct Slot<T> {
    id: SlotId<T>,
    tls: Arc<ThreadLocal>,
    current: ArcSwapOption<T>,
}

impl<T: Send + Sync + 'static> Slot<T> {
    /// The id workers use to read their copy.
    pub fn id(&self) -> SlotId<T> {
        self.id
    }

    /// Publishes `value` to every worker (each applies it at its next loop iteration).
    pub fn set(&self, value: Arc<T>) {
        self.current.store(Some(value.clone()));
        let id = self.id;
        self.tls.run_on_all_workers(
            Arc::new(move |ctx: &mut Ctx| ctx.local.slots.set(id, Some(value.clone()))),
            Box::new(|| {}),
        );
    }

    /// Publishes `value` and resolves once every worker holds it.
    pub async fn set_and_wait(&self, value: Arc<T>) {
        self.current.store(Some(value.clone()));
        let id = self.id;
        self.tls
            .run_on_all_workers_async(move |ctx: &mut Ctx| {
                ctx.local.slots.set(id, Some(value.clone()))
            })
            .await;
    }

    /// The last published value, for readers outside the workers (admin, stats).
    pub fn current(&self) -> Option<Arc<T>> {
        self.current.load_full()
    }
}

impl<T> Drop for Slot<T> {
    fn drop(&mut self) {
        let index = self.id.index;
        self.tls.run_on_all_workers(
            Arc::new(move |ctx: &mut Ctx| {
                if let Some(v) = ctx.local.slots.values.get_mut(index) {
                    *v = None;
                }
            }),
            Box::new(|| {}),
        );
    }
}
