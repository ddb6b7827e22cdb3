//! A worker-local async runtime driven by the dispatcher, so hyper's connection futures run
//! on the worker that owns their sockets.
//!
//! - **Tasks**: `'static` futures (not `Send`) in a slab, polled by the dispatcher when
//!   their waker fires. Handlers can be woken the same way ([`Runtime::handler_waker`] →
//!   [`EventHandler::on_wake`](super::EventHandler::on_wake)).
//! - **Wakers** are `Send + Sync` (an `Arc` with an "already queued" flag and a shared
//!   queue); a wake from another thread also wakes the dispatcher's `mio::Waker`.
//! - **I/O**: [`TcpIo`] registers a mio socket under a runtime token; readiness wakes the
//!   task waiting on it. It implements `hyper::rt::{Read, Write}`.
//! - **Timers**: [`Sleep`] (a `hyper::rt::Sleep`) and [`RtTimer`] (a `hyper::rt::Timer`).
//! - [`LocalExec`] is a `hyper::rt::Executor` spawning onto this worker.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::io::{self, Write as _};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use slab::Slab;

use super::HandlerId;

/// Tokens at or above this bit belong to runtime I/O registrations.
pub(crate) const IO_BIT: usize = 1 << 62;

type BoxFuture = Pin<Box<dyn Future<Output = ()>>>;

/// What a waker schedules.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Target {
    Task(usize, u64),
    Handler(HandlerId),
}

struct ReadyQueue {
    id: usize,
    queue: Mutex<Vec<Arc<TargetWaker>>>,
    waker: Option<Arc<mio::Waker>>,
}

static NEXT_RT: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    static CURRENT: RefCell<Option<Rc<Runtime>>> = const { RefCell::new(None) };
    static CURRENT_ID: Cell<usize> = const { Cell::new(0) };
}

/// A scheduled wake-up: what to run, and whether it is already queued.
pub(crate) struct TargetWaker {
    pub(crate) target: Target,
    queued: AtomicBool,
    ready: Arc<ReadyQueue>,
}

impl Wake for TargetWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        self.ready
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(self.clone());
        if CURRENT_ID.with(|c| c.get()) != self.ready.id {
            if let Some(w) = &self.ready.waker {
                let _ = w.wake();
            }
        }
    }
}

struct TaskEntry {
    generation: u64,
    future: Option<BoxFuture>,
    waker: Arc<TargetWaker>,
}

/// Readiness shared between a registered socket and the dispatcher.
#[derive(Default)]
struct IoShared {
    readable: Cell<bool>,
    writable: Cell<bool>,
    /// The peer's FIN (or an error) was reported: reads must go on until they return it,
    /// since no further readiness event will come.
    read_closed: Cell<bool>,
    read_waker: RefCell<Option<Waker>>,
    write_waker: RefCell<Option<Waker>>,
    /// Bytes read from and written to the socket so far (an access log's
    /// `%BYTES_RECEIVED%` and `%BYTES_SENT%` for a connection).
    received: Cell<u64>,
    sent: Cell<u64>,
}

/// A connection's byte counts, readable after its [`TcpIo`] is gone.
#[derive(Clone)]
pub struct IoCounters(Rc<IoShared>);

impl IoCounters {
    /// Bytes read from the socket.
    pub fn received(&self) -> u64 {
        self.0.received.get()
    }

    /// Bytes written to the socket.
    pub fn sent(&self) -> u64 {
        self.0.sent.get()
    }
}

struct TimerEntry {
    generation: u64,
    deadline: Instant,
    waker: Option<Waker>,
}

#[derive(Default)]
struct Timers {
    heap: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    entries: Slab<TimerEntry>,
    generation: u64,
}

impl Timers {
    /// Drops heap entries of cancelled or moved timers once they outnumber the live ones.
    ///
    /// Cancelling leaves the heap entry behind (removing from a binary heap is O(n)), and
    /// nearly every request cancels a long timer (the 15 s route timeout) within
    /// milliseconds. Without this the heap would hold every request of the last 15 s
    /// (over a million at 40k req/s, tens of MB), and each push and pop would walk it.
    /// Rebuilding from the live entries when the dead ones are three quarters of the heap
    /// costs O(live) per O(live) cancellations: constant per timer.
    fn compact(&mut self) {
        if self.heap.len() < 64 || self.heap.len() < 4 * self.entries.len() {
            return;
        }
        let entries = &self.entries;
        self.heap.retain(|Reverse((deadline, key, generation))| {
            entries
                .get(*key)
                .is_some_and(|e| e.generation == *generation && e.deadline == *deadline)
        });
    }
}

/// One worker's runtime. Reached through [`try_with`] or [`current`] on the worker's thread.
pub struct Runtime {
    registry: Registry,
    ready: Arc<ReadyQueue>,
    tasks: RefCell<Slab<TaskEntry>>,
    task_generation: Cell<u64>,
    io: RefCell<Slab<Rc<IoShared>>>,
    timers: RefCell<Timers>,
}

impl Runtime {
    /// Installs a runtime for the current thread.
    pub(crate) fn install(registry: Registry, waker: Option<Arc<mio::Waker>>) {
        let id = NEXT_RT.fetch_add(1, Ordering::Relaxed);
        let rt = Rc::new(Runtime {
            registry,
            ready: Arc::new(ReadyQueue {
                id,
                queue: Mutex::new(Vec::new()),
                waker,
            }),
            tasks: RefCell::new(Slab::new()),
            task_generation: Cell::new(0),
            io: RefCell::new(Slab::new()),
            timers: RefCell::new(Timers::default()),
        });
        CURRENT_ID.with(|c| c.set(id));
        CURRENT.with(|c| *c.borrow_mut() = Some(rt));
    }

    /// Spawns a task on this runtime.
    pub fn spawn<F: Future<Output = ()> + 'static>(&self, fut: F) {
        let generation = self.task_generation.get() + 1;
        self.task_generation.set(generation);
        let mut tasks = self.tasks.borrow_mut();
        let entry = tasks.vacant_entry();
        let key = entry.key();
        let waker = Arc::new(TargetWaker {
            target: Target::Task(key, generation),
            queued: AtomicBool::new(false),
            ready: self.ready.clone(),
        });
        entry.insert(TaskEntry {
            generation,
            future: Some(Box::pin(fut)),
            waker: waker.clone(),
        });
        drop(tasks);
        waker.wake_by_ref();
    }

    /// A waker that schedules `on_wake` of handler `id`.
    pub fn handler_waker(&self, id: HandlerId) -> Waker {
        Waker::from(Arc::new(TargetWaker {
            target: Target::Handler(id),
            queued: AtomicBool::new(false),
            ready: self.ready.clone(),
        }))
    }

    /// Whether something is queued to run.
    pub(crate) fn has_ready(&self) -> bool {
        !self
            .ready
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Takes the queued wake-ups, clearing their "queued" flags (a wake during the run
    /// queues them again).
    pub(crate) fn take_ready(&self, into: &mut Vec<Arc<TargetWaker>>) {
        {
            let mut q = self.ready.queue.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::swap(&mut *q, into);
        }
        for w in into.iter() {
            w.queued.store(false, Ordering::Release);
        }
    }

    /// Polls task `key` if it is still the same task.
    pub(crate) fn poll_task(&self, key: usize, generation: u64) {
        let (mut fut, waker) = {
            let mut tasks = self.tasks.borrow_mut();
            let Some(entry) = tasks.get_mut(key) else {
                return;
            };
            if entry.generation != generation {
                return;
            }
            let Some(fut) = entry.future.take() else {
                return;
            };
            (fut, entry.waker.clone())
        };
        let w = Waker::from(waker);
        let mut cx = Context::from_waker(&w);
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(()) => {
                let removed = {
                    let mut tasks = self.tasks.borrow_mut();
                    match tasks.get(key) {
                        Some(e) if e.generation == generation => Some(tasks.remove(key)),
                        _ => None,
                    }
                };
                drop(removed);
                drop(fut);
            }
            Poll::Pending => {
                let mut tasks = self.tasks.borrow_mut();
                if let Some(entry) = tasks.get_mut(key) {
                    if entry.generation == generation {
                        entry.future = Some(fut);
                        return;
                    }
                }
                drop(tasks);
                drop(fut);
            }
        }
    }

    /// Number of live tasks.
    pub fn task_count(&self) -> usize {
        self.tasks.borrow().len()
    }

    /// Delivers a readiness event for the runtime token `key`.
    pub(crate) fn on_io_event(&self, key: usize, event: &Event) {
        let Some(shared) = self.io.borrow().get(key).cloned() else {
            return;
        };
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            shared.readable.set(true);
            if event.is_read_closed() || event.is_error() {
                shared.read_closed.set(true);
            }
            if let Some(w) = shared.read_waker.borrow_mut().take() {
                w.wake();
            }
        }
        if event.is_writable() || event.is_write_closed() || event.is_error() {
            shared.writable.set(true);
            if let Some(w) = shared.write_waker.borrow_mut().take() {
                w.wake();
            }
        }
    }

    /// Wakes every sleeper whose deadline passed.
    pub(crate) fn fire_timers(&self, now: Instant) {
        let mut wake = Vec::new();
        {
            let mut t = self.timers.borrow_mut();
            while let Some(Reverse((deadline, key, generation))) = t.heap.peek().copied() {
                if deadline > now {
                    break;
                }
                t.heap.pop();
                if let Some(e) = t.entries.get_mut(key) {
                    if e.generation == generation && e.deadline <= now {
                        if let Some(w) = e.waker.take() {
                            wake.push(w);
                        }
                    }
                }
            }
        }
        for w in wake {
            w.wake();
        }
    }

    /// How long until the earliest timer.
    pub(crate) fn timer_timeout(&self, now: Instant) -> Option<Duration> {
        self.timers
            .borrow()
            .heap
            .peek()
            .map(|Reverse((d, _, _))| d.saturating_duration_since(now))
    }

    fn register_io(&self, stream: &mut TcpStream) -> io::Result<(usize, Rc<IoShared>)> {
        let shared = Rc::new(IoShared {
            readable: Cell::new(true),
            writable: Cell::new(true),
            ..Default::default()
        });
        let key = self.io.borrow_mut().insert(shared.clone());
        if let Err(e) = self.registry.register(
            stream,
            Token(IO_BIT | key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.io.borrow_mut().remove(key);
            return Err(e);
        }
        Ok((key, shared))
    }

    fn deregister_io(&self, key: usize, stream: &mut TcpStream) {
        let _ = self.registry.deregister(stream);
        let mut io = self.io.borrow_mut();
        if io.contains(key) {
            io.remove(key);
        }
    }

    fn register_sleep(&self, reg: &mut Option<(usize, u64)>, deadline: Instant, waker: &Waker) {
        let mut t = self.timers.borrow_mut();
        if let Some((key, generation)) = *reg {
            if let Some(e) = t.entries.get_mut(key) {
                if e.generation == generation {
                    let reset = e.deadline != deadline;
                    e.deadline = deadline;
                    match &mut e.waker {
                        Some(w) if w.will_wake(waker) => {}
                        slot => *slot = Some(waker.clone()),
                    }
                    if reset {
                        t.heap.push(Reverse((deadline, key, generation)));
                    }
                    return;
                }
            }
        }
        t.generation += 1;
        let generation = t.generation;
        let key = t.entries.insert(TimerEntry {
            generation,
            deadline,
            waker: Some(waker.clone()),
        });
        t.heap.push(Reverse((deadline, key, generation)));
        *reg = Some((key, generation));
    }

    fn cancel_sleep(&self, key: usize, generation: u64) {
        let mut t = self.timers.borrow_mut();
        if t.entries
            .get(key)
            .is_some_and(|e| e.generation == generation)
        {
            t.entries.remove(key);
            t.compact();
        }
    }
}

/// Runs `f` with this thread's runtime, if it has one.
pub fn try_with<R>(f: impl FnOnce(&Rc<Runtime>) -> R) -> Option<R> {
    CURRENT
        .try_with(|c| c.borrow().as_ref().cloned())
        .ok()
        .flatten()
        .map(|rt| f(&rt))
}

/// The current thread's runtime (a worker's).
pub fn current() -> Option<Rc<Runtime>> {
    CURRENT
        .try_with(|c| c.borrow().as_ref().cloned())
        .ok()
        .flatten()
}

/// Spawns a future on the current worker; dropped (with a log) outside a worker.
pub fn spawn<F: Future<Output = ()> + 'static>(fut: F) {
    if try_with(|rt| rt.spawn(fut)).is_none() {
        tracing::error!("spawn outside a worker runtime");
    }
}

/// A hyper executor spawning onto the current worker.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalExec;

impl<F: Future<Output = ()> + 'static> hyper::rt::Executor<F> for LocalExec {
    fn execute(&self, fut: F) {
        spawn(fut);
    }
}

/// A deadline future on the worker's timer heap. `Send + Sync` (plain data) as hyper
/// requires; it only does anything on the worker thread that polls it.
#[derive(Debug)]
pub struct Sleep {
    deadline: Instant,
    reg: Option<(usize, u64)>,
}

impl Sleep {
    /// Completes at `deadline`.
    pub fn until(deadline: Instant) -> Sleep {
        Sleep {
            deadline,
            reg: None,
        }
    }

    /// Completes after `d`.
    pub fn after(d: Duration) -> Sleep {
        Sleep::until(Instant::now() + d)
    }

    /// The deadline.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Moves the deadline.
    pub fn reset(&mut self, deadline: Instant) {
        self.deadline = deadline;
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if Instant::now() >= this.deadline {
            if let Some((k, g)) = this.reg.take() {
                try_with(|rt| rt.cancel_sleep(k, g));
            }
            return Poll::Ready(());
        }
        let deadline = this.deadline;
        let reg = &mut this.reg;
        try_with(|rt| rt.register_sleep(reg, deadline, cx.waker()));
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some((k, g)) = self.reg.take() {
            try_with(|rt| rt.cancel_sleep(k, g));
        }
    }
}

impl hyper::rt::Sleep for Sleep {}

/// hyper's timer over the worker's timer heap.
#[derive(Clone, Copy, Debug, Default)]
pub struct RtTimer;

impl hyper::rt::Timer for RtTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Sleep::after(duration))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Sleep::until(deadline))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        if let Some(mut s) = sleep.as_mut().downcast_mut_pin::<Sleep>() {
            s.as_mut().get_mut().reset(new_deadline);
        } else {
            *sleep = Box::pin(Sleep::until(new_deadline));
        }
    }
}

/// Races `fut` against a deadline: `None` on timeout.
pub fn timeout<F: Future>(deadline: Option<Instant>, fut: F) -> Timeout<F> {
    Timeout {
        fut,
        sleep: deadline.map(Sleep::until),
    }
}

pin_project_lite::pin_project! {
    /// The future of [`timeout`]: the wrapped future and its timer side by side. (An
    /// `async fn` here would hold up to three copies of the wrapped future in its state,
    /// and the request futures are kilobytes.)
    pub struct Timeout<F> {
        #[pin]
        fut: F,
        sleep: Option<Sleep>,
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.fut.poll(cx) {
            return Poll::Ready(Some(v));
        }
        match this.sleep.as_mut().map(|s| Pin::new(s).poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(None),
            _ => Poll::Pending,
        }
    }
}

/// A TCP socket registered with the worker's runtime; hyper's `Read` + `Write`.
pub struct TcpIo {
    stream: TcpStream,
    shared: Rc<IoShared>,
    key: usize,
}

impl TcpIo {
    /// Registers an accepted or connecting stream.
    pub fn new(mut stream: TcpStream) -> io::Result<TcpIo> {
        let (key, shared) = current()
            .ok_or_else(|| io::Error::other("no worker runtime"))?
            .register_io(&mut stream)?;
        Ok(TcpIo {
            stream,
            shared,
            key,
        })
    }

    /// Connects to `addr` (non-blocking) and waits until the connection is established.
    pub async fn connect(addr: SocketAddr) -> io::Result<TcpIo> {
        TcpIo::connected(TcpStream::connect(addr)?).await
    }

    /// Waits until `stream`, a non-blocking connect under way, is established.
    pub async fn connected(stream: TcpStream) -> io::Result<TcpIo> {
        let _ = stream.set_nodelay(true);
        let io = TcpIo::new(stream)?;
        io.shared.writable.set(false);
        std::future::poll_fn(|cx| {
            if !io.shared.writable.get() {
                *io.shared.write_waker.borrow_mut() = Some(cx.waker().clone());
                return Poll::Pending;
            }
            match io.stream.take_error() {
                Ok(Some(e)) | Err(e) => return Poll::Ready(Err(e)),
                Ok(None) => {}
            }
            match io.stream.peer_addr() {
                Ok(_) => Poll::Ready(Ok(())),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                    io.shared.writable.set(false);
                    *io.shared.write_waker.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                }
                Err(e) => Poll::Ready(Err(e)),
            }
        })
        .await?;
        Ok(io)
    }

    /// The connection's byte counts (they outlive it).
    pub fn counters(&self) -> IoCounters {
        IoCounters(self.shared.clone())
    }

    /// The socket.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Reads into `buf` (non-blocking, waker registered on `WouldBlock`).
    pub fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [MaybeUninit<u8>],
    ) -> Poll<io::Result<usize>> {
        loop {
            if !self.shared.readable.get() {
                *self.shared.read_waker.borrow_mut() = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let want = buf.len();
            match socket2::SockRef::from(&self.stream).recv(buf) {
                Ok(n) => {
                    self.shared
                        .received
                        .set(self.shared.received.get() + n as u64);
                    // A short read drained the socket: the next read would only say
                    // WouldBlock, and edge-triggered epoll reports any later data. This
                    // saves a syscall per message (tokio does the same).
                    if n > 0 && n < want && !self.shared.read_closed.get() {
                        self.shared.readable.set(false);
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.shared.readable.set(false);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Writes `bufs` (non-blocking, waker registered on `WouldBlock`).
    pub fn poll_send_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum();
        match bufs {
            // One piece (a small message, encoded whole): `send` skips writev's iovec
            // import and VFS layers.
            [one] => {
                self.poll_write_with(cx, len, |s: &TcpStream| socket2::SockRef::from(s).send(one))
            }
            _ => self.poll_write_with(cx, len, |mut s: &TcpStream| s.write_vectored(bufs)),
        }
    }

    /// Whether input (data, a close or an error) may have arrived since the last read
    /// drained the socket; false means certainly none.
    pub fn may_have_input(&self) -> bool {
        self.shared.readable.get()
    }

    /// Ready when input may have arrived ([`TcpIo::may_have_input`]); otherwise the waker
    /// is registered for the next read edge. No syscall either way.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.shared.readable.get() {
            return Poll::Ready(());
        }
        let mut slot = self.shared.read_waker.borrow_mut();
        // Polled again by the same task (as a served request is), the waker is there.
        if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *slot = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    fn poll_write_with(
        &mut self,
        cx: &mut Context<'_>,
        len: usize,
        mut f: impl FnMut(&TcpStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            if !self.shared.writable.get() {
                *self.shared.write_waker.borrow_mut() = Some(cx.waker().clone());
                return Poll::Pending;
            }
            match f(&self.stream) {
                Ok(n) => {
                    self.shared.sent.set(self.shared.sent.get() + n as u64);
                    // A short write filled the send buffer: wait for the next edge.
                    if n > 0 && n < len {
                        self.shared.writable.set(false);
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.shared.writable.set(false);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl Drop for TcpIo {
    fn drop(&mut self) {
        let key = self.key;
        let stream = &mut self.stream;
        try_with(|rt| rt.deregister_io(key, stream));
    }
}

impl TcpIo {
    /// Reads into hyper's cursor, showing `observe` the bytes read (for a transport that
    /// follows the stream going past, as the upstream HTTP/2 settings scan does).
    pub fn poll_read_observed(
        &mut self,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
        observe: impl FnOnce(&[u8]),
    ) -> Poll<io::Result<()>> {
        // SAFETY: `recv` only writes initialised bytes into the slice and we advance by
        // exactly the number it reports.
        let slice = unsafe { buf.as_mut() };
        let n = match self.poll_recv(cx, slice) {
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        // SAFETY: `recv` initialised the first `n` bytes of `slice`.
        observe(unsafe { std::slice::from_raw_parts(slice.as_ptr().cast::<u8>(), n) });
        // SAFETY: `n` bytes were written by `recv`.
        unsafe { buf.advance(n) };
        Poll::Ready(Ok(()))
    }
}

impl hyper::rt::Read for TcpIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().poll_read_observed(cx, buf, |_| {})
    }
}

/// Implements hyper's `Write` for a transport that wraps a [`TcpIo`] (in field `$io`) and
/// changes only how it reads: every call goes through to the socket.
#[macro_export]
macro_rules! write_through {
    ($ty:ty, $io:ident) => {
        impl hyper::rt::Write for $ty {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().$io).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().$io).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                true
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().$io).poll_flush(cx)
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().$io).poll_shutdown(cx)
            }
        }
    };
}

impl hyper::rt::Write for TcpIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_with(cx, buf.len(), |mut s: &TcpStream| s.write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_send_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream.shutdown(std::net::Shutdown::Write) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Arms a timer the way `register_sleep` does, without a runtime.
    fn arm(t: &mut Timers, deadline: Instant) -> (usize, u64) {
        t.generation += 1;
        let generation = t.generation;
        let key = t.entries.insert(TimerEntry {
            generation,
            deadline,
            waker: None,
        });
        t.heap.push(Reverse((deadline, key, generation)));
        (key, generation)
    }

    #[test]
    fn cancelled_timers_do_not_pile_up_in_the_heap() {
        let mut t = Timers::default();
        let far = Instant::now() + Duration::from_secs(15);
        let live: Vec<_> = (0..10).map(|_| arm(&mut t, far)).collect();
        // A request's worth of timers armed and cancelled, 100k times.
        for _ in 0..100_000 {
            let (key, _) = arm(&mut t, far);
            t.entries.remove(key);
            t.compact();
        }
        assert!(
            t.heap.len() <= 64.max(4 * t.entries.len()),
            "{}",
            t.heap.len()
        );
        // The live timers are all still there.
        for (key, generation) in live {
            assert!(t
                .heap
                .iter()
                .any(|Reverse((_, k, g))| *k == key && *g == generation));
        }
    }
}
