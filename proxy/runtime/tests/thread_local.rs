//! The slot system (RCU from the main thread to the workers) through its public API, on
//! real worker threads.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use std::thread::JoinHandle;

use courier_runtime::event::{Dispatcher, DispatcherHandle};
use courier_runtime::thread_local::{MainPoster, MainTask, SlotId};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::mpsc::UnboundedReceiver;

const DEADLINE: Duration = Duration::from_secs(30);

/// The loops here carry no local state of their own.
type Ctx = courier_runtime::event::Ctx<()>;
type ThreadLocal = courier_runtime::thread_local::ThreadLocal<()>;

/// A worker thread running a dispatcher, as the proxy's workers do.
struct Worker {
    dispatcher: DispatcherHandle<()>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    fn spawn() -> Worker {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let (mut dispatcher, handle) = Dispatcher::new(()).expect("dispatcher");
            tx.send(handle).expect("send handle");
            dispatcher.run().expect("loop");
        });
        Worker {
            dispatcher: rx.recv_timeout(DEADLINE).expect("worker started"),
            thread: Some(thread),
        }
    }

    fn stop(mut self) {
        let _ = self.dispatcher.post(Box::new(|ctx: &mut Ctx| ctx.exit()));
        if let Some(t) = self.thread.take() {
            t.join().expect("worker thread");
        }
    }
}

/// Workers plus the main thread's inbox, which the test drains by hand.
struct Fixture {
    tls: Arc<ThreadLocal>,
    workers: Vec<Worker>,
    main: UnboundedReceiver<MainTask>,
}

impl Fixture {
    fn new(n: usize) -> Fixture {
        let (poster, main) = MainPoster::new();
        let tls = ThreadLocal::new(poster);
        let workers: Vec<Worker> = (0..n).map(|_| Worker::spawn()).collect();
        tls.register_workers(workers.iter().map(|w| w.dispatcher.clone()).collect());
        Fixture { tls, workers, main }
    }

    /// Runs main-thread tasks until `done` holds (panics after the deadline).
    fn run_main_until(&mut self, what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !done() {
            match self.main.try_recv() {
                Ok(task) => task(),
                Err(TryRecvError::Empty) => {
                    assert!(Instant::now() < deadline, "timed out waiting for {what}");
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(TryRecvError::Disconnected) => panic!("main inbox closed"),
            }
        }
    }

    /// Runs a no-op on every worker and waits for its completion: every callback posted
    /// before has run (and been dropped) on every worker.
    fn barrier(&mut self) {
        let done = Arc::new(AtomicUsize::new(0));
        let d = done.clone();
        self.tls.run_on_all_workers(
            Arc::new(|_: &mut Ctx| {}),
            Box::new(move || {
                d.fetch_add(1, Ordering::SeqCst);
            }),
        );
        self.run_main_until("a barrier", || done.load(Ordering::SeqCst) == 1);
    }

    /// Worker `index`'s current value of `slot`.
    fn read_on<T: Send + Sync + 'static>(&self, index: usize, slot: SlotId<T>) -> Option<Arc<T>> {
        let (tx, rx) = mpsc::channel();
        let posted = self.tls.post_to(
            index,
            Box::new(move |_: &mut Ctx| {
                let _ = tx.send(slot.get());
            }),
        );
        assert!(posted, "worker {index} is gone");
        rx.recv_timeout(DEADLINE).expect("worker answered")
    }

    /// Every worker's current value of `slot`, by worker index.
    fn read_all<T: Send + Sync + 'static>(&self, slot: SlotId<T>) -> Vec<Option<Arc<T>>> {
        (0..self.workers.len())
            .map(|i| self.read_on(i, slot))
            .collect()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for w in self.workers.drain(..) {
            w.stop();
        }
    }
}

/// Posts to worker `index` a callback that blocks until the returned sender fires (or is
/// dropped); returns once the worker is inside it.
fn block_worker(
    f: &Fixture,
    index: usize,
    then: impl FnOnce(&mut Ctx) + Send + 'static,
) -> mpsc::Sender<()> {
    let (gate_tx, gate_rx) = mpsc::channel::<()>();
    let (entered_tx, entered_rx) = mpsc::channel::<()>();
    let posted = f.tls.post_to(
        index,
        Box::new(move |ctx: &mut Ctx| {
            let _ = entered_tx.send(());
            let _ = gate_rx.recv_timeout(DEADLINE);
            then(ctx);
        }),
    );
    assert!(posted);
    entered_rx
        .recv_timeout(DEADLINE)
        .expect("worker entered the blocking callback");
    gate_tx
}

#[test]
fn every_worker_sees_each_new_value() {
    let f = Fixture::new(4);
    let slot = f.tls.allocate_slot::<u64>();
    assert!(f.read_all(slot.id()).iter().all(Option::is_none));
    for v in [1u64, 2, 3] {
        slot.set(Arc::new(v));
        // Posts to one worker run in order, so a read posted after the set sees it.
        let seen: Vec<Option<u64>> = f
            .read_all(slot.id())
            .iter()
            .map(|o| o.as_deref().copied())
            .collect();
        assert_eq!(seen, vec![Some(v); 4]);
        assert_eq!(slot.current().as_deref(), Some(&v));
    }
}

#[test]
fn completion_fires_exactly_once_after_every_worker() {
    let mut f = Fixture::new(4);
    let ran = Arc::new(AtomicUsize::new(0));
    let completions = Arc::new(AtomicUsize::new(0));
    let ran_at_completion = Arc::new(AtomicUsize::new(0));

    // Worker 3 is busy: the others run the callback, the completion must wait for it.
    let gate = block_worker(&f, 3, |_| {});
    {
        let ran = ran.clone();
        let completions = completions.clone();
        let ran_at_completion = ran_at_completion.clone();
        let ran_for_completion = ran.clone();
        f.tls.run_on_all_workers(
            Arc::new(move |_: &mut Ctx| {
                ran.fetch_add(1, Ordering::SeqCst);
            }),
            Box::new(move || {
                ran_at_completion
                    .store(ran_for_completion.load(Ordering::SeqCst), Ordering::SeqCst);
                completions.fetch_add(1, Ordering::SeqCst);
            }),
        );
    }
    // Once workers 0..3 answer a later post, they have finished the callback (and its
    // accounting); still no completion may be queued.
    let probe = f.tls.allocate_slot::<u64>();
    for i in 0..3 {
        let _ = f.read_on(i, probe.id());
    }
    assert_eq!(ran.load(Ordering::SeqCst), 3);
    assert!(
        matches!(f.main.try_recv(), Err(TryRecvError::Empty)),
        "completion queued while a worker had not run the callback"
    );

    gate.send(()).expect("release worker 3");
    let c = completions.clone();
    f.run_main_until("the completion", || c.load(Ordering::SeqCst) == 1);
    assert_eq!(ran_at_completion.load(Ordering::SeqCst), 4);
    // A later round completes after this one's completion was queued: no duplicate.
    f.barrier();
    f.barrier();
    assert_eq!(completions.load(Ordering::SeqCst), 1);
}

#[test]
fn completion_counts_a_stopped_worker_as_done() {
    let mut f = Fixture::new(2);
    let stopped = f.workers.pop().expect("worker 1");
    stopped.stop();
    let done = Arc::new(AtomicUsize::new(0));
    let d = done.clone();
    f.tls.run_on_all_workers(
        Arc::new(|_: &mut Ctx| {}),
        Box::new(move || {
            d.fetch_add(1, Ordering::SeqCst);
        }),
    );
    f.run_main_until("the completion", || done.load(Ordering::SeqCst) == 1);
}

/// A snapshot that is big enough to matter.
struct Snapshot {
    _payload: Vec<u8>,
}

fn snapshot() -> Arc<Snapshot> {
    Arc::new(Snapshot {
        _payload: vec![0; 1 << 16],
    })
}

thread_local! {
    /// What "in-flight work" on a worker holds on to.
    static IN_FLIGHT: RefCell<Option<Arc<Snapshot>>> = const { RefCell::new(None) };
}

#[test]
fn old_snapshots_are_freed_when_the_last_user_drops_them() {
    let mut f = Fixture::new(3);
    let slot = f.tls.allocate_slot::<Snapshot>();

    // Replaced with nobody holding it: freed once every worker swapped.
    let first = snapshot();
    let first_weak: Weak<Snapshot> = Arc::downgrade(&first);
    slot.set(first);
    f.barrier();
    // Three workers plus the main thread's `current`.
    assert_eq!(first_weak.strong_count(), 4);
    slot.set(snapshot());
    f.barrier();
    assert_eq!(first_weak.strong_count(), 0, "old snapshot still alive");

    // Replaced while worker 1 still uses it: alive until that work ends.
    let second_weak = Arc::downgrade(&slot.current().expect("current"));
    let id = slot.id();
    assert!(f.tls.post_to(
        1,
        Box::new(move |_: &mut Ctx| {
            let held = id.get();
            IN_FLIGHT.with(|h| *h.borrow_mut() = held);
        })
    ));
    slot.set(snapshot());
    f.barrier();
    assert_eq!(
        second_weak.strong_count(),
        1,
        "only the in-flight user holds it"
    );
    assert!(f.tls.post_to(
        1,
        Box::new(|_: &mut Ctx| IN_FLIGHT.with(|h| drop(h.borrow_mut().take())))
    ));
    f.barrier();
    assert_eq!(second_weak.strong_count(), 0, "freed by its last user");
}

#[test]
fn a_set_while_a_worker_is_busy_applies_at_its_next_iteration() {
    let f = Fixture::new(2);
    let slot = f.tls.allocate_slot::<u64>();
    slot.set(Arc::new(1));
    assert_eq!(f.read_on(0, slot.id()).as_deref(), Some(&1));

    // Worker 0 is stuck in a callback; when it resumes, it must still see the old value
    // (nothing swaps under a running callback), and the new one right after.
    let (seen_tx, seen_rx) = mpsc::channel();
    let id = slot.id();
    let gate = block_worker(&f, 0, move |_: &mut Ctx| {
        let _ = seen_tx.send(id.get().map(|v| *v));
    });
    slot.set(Arc::new(2));
    // The idle worker applies it at once.
    assert_eq!(f.read_on(1, slot.id()).as_deref(), Some(&2));

    gate.send(()).expect("release worker 0");
    assert_eq!(seen_rx.recv_timeout(DEADLINE).expect("seen"), Some(1));
    assert_eq!(f.read_on(0, slot.id()).as_deref(), Some(&2));
}

#[test]
fn dropping_a_slot_clears_it_on_every_worker() {
    let mut f = Fixture::new(2);
    let slot = f.tls.allocate_slot::<Snapshot>();
    let value = snapshot();
    let weak = Arc::downgrade(&value);
    slot.set(value);
    let id = slot.id();
    drop(slot);
    f.barrier();
    assert!(f.read_all(id).iter().all(Option::is_none));
    assert_eq!(weak.strong_count(), 0);
}

thread_local! {
    /// What an `apply` function was handed on this worker.
    static APPLIED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

#[test]
fn an_applied_slot_hands_each_value_to_every_worker_after_storing_it() {
    let f = Fixture::new(2);
    let slot = f.tls.allocate_slot_applied::<u64>(|v| {
        APPLIED.with(|a| a.borrow_mut().push(**v));
    });
    let id = slot.id();
    for v in [7u64, 8] {
        slot.set(Arc::new(v));
    }
    for i in 0..2 {
        let (tx, rx) = mpsc::channel();
        assert!(f.tls.post_to(
            i,
            Box::new(move |_: &mut Ctx| {
                let _ = tx.send((APPLIED.with(|a| a.borrow().clone()), id.get()));
            })
        ));
        let (applied, stored) = rx.recv_timeout(DEADLINE).expect("worker answered");
        assert_eq!(applied, vec![7, 8], "worker {i}");
        assert_eq!(stored.as_deref(), Some(&8), "worker {i}");
    }
}

#[test]
fn a_slot_reads_nothing_off_the_workers() {
    let f = Fixture::new(1);
    let slot = f.tls.allocate_slot::<u64>();
    slot.set(Arc::new(1));
    assert_eq!(f.read_on(0, slot.id()).as_deref(), Some(&1));
    // The main thread is no worker: it reads the published value with `current`.
    assert!(slot.id().get().is_none());
    assert_eq!(slot.current().as_deref(), Some(&1));
}
