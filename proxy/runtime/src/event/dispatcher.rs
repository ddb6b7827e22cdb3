//! The dispatcher loop and its handler table.

use std::io;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::{Events, Poll, Registry, Token, Waker};
use slab::Slab;

use super::rt::{self, Target};
use super::TimerQueue;

/// A callback posted to a worker from another thread.
pub type Posted<L> = Box<dyn FnOnce(&mut Ctx<L>) + Send>;

const WAKER: Token = Token(usize::MAX);
/// Each handler owns up to this many mio registrations (e.g. a proxy session's two sockets).
const SOURCES_PER_HANDLER: usize = 4;

/// Names one handler instance: its slab key and a generation, so a token or timer that
/// outlives its handler is never delivered to a newcomer that reused the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HandlerId {
    key: usize,
    generation: u64,
}

impl HandlerId {
    /// The mio token for this handler's `source`-th registration (`source < 4`).
    pub fn token(&self, source: usize) -> Token {
        debug_assert!(source < SOURCES_PER_HANDLER);
        Token(self.key * SOURCES_PER_HANDLER + source)
    }
}

/// What a handler wants after a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Keep the handler registered.
    Continue,
    /// The handler is finished: remove it and drop it at the end of the loop iteration.
    Close,
}

/// Something driven by the dispatcher: a listener, a proxy session, a connection. `L` is
/// the loop's local state (the worker's, for Courier's workers).
pub trait EventHandler<L> {
    /// Readiness on the registration `source` (the index passed to [`HandlerId::token`]).
    fn on_ready(&mut self, source: usize, event: &Event, ctx: &mut Ctx<L>, me: HandlerId) -> Next;
    /// A timer scheduled with `tag` expired.
    fn on_timer(&mut self, tag: u64, ctx: &mut Ctx<L>, me: HandlerId) -> Next;
    /// The worker asks every handler to finish (listener drain, shutdown). Default: close.
    fn on_drain(&mut self, _ctx: &mut Ctx<L>, _me: HandlerId) -> Next {
        Next::Close
    }
    /// A waker from [`rt::Runtime::handler_waker`](super::rt::Runtime::handler_waker) for
    /// this handler fired. Default: nothing.
    fn on_wake(&mut self, _ctx: &mut Ctx<L>, _me: HandlerId) -> Next {
        Next::Continue
    }
}

/// A handler as the loop holds it.
type BoxHandler<L> = Box<dyn EventHandler<L>>;

struct Entry<L> {
    generation: u64,
    handler: Option<BoxHandler<L>>,
}

/// Everything a handler may touch during a callback; `local` is the loop's own state.
pub struct Ctx<L> {
    /// Registers sockets with this worker's poll.
    pub registry: Registry,
    /// This worker's timers.
    pub timers: TimerQueue,
    /// The loop's notion of now, refreshed once per iteration.
    pub now: Instant,
    /// The loop's local state, owned by the loop and lent to each callback.
    pub local: L,
    handlers: Slab<Entry<L>>,
    deferred: Vec<BoxHandler<L>>,
    generation: u64,
    exit: bool,
}

impl<L> Ctx<L> {
    /// Adds a handler; `build` receives its id first so it can register its sockets.
    pub fn insert_handler<F>(&mut self, build: F) -> io::Result<HandlerId>
    where
        F: FnOnce(&mut Ctx<L>, HandlerId) -> io::Result<BoxHandler<L>>,
    {
        self.generation += 1;
        let generation = self.generation;
        let key = self.handlers.insert(Entry {
            generation,
            handler: None,
        });
        let id = HandlerId { key, generation };
        match build(self, id) {
            Ok(handler) => {
                if let Some(entry) = self.handlers.get_mut(key) {
                    entry.handler = Some(handler);
                }
                Ok(id)
            }
            Err(e) => {
                self.handlers.remove(key);
                Err(e)
            }
        }
    }

    /// Schedules `tag` to fire on `me` after `after`.
    pub fn schedule(&mut self, me: HandlerId, after: Duration, tag: u64) {
        self.timers.schedule(self.now + after, me, tag);
    }

    /// Asks the loop to exit after this iteration.
    pub fn exit(&mut self) {
        self.exit = true;
    }

    /// Number of live handlers (listeners + connections).
    pub fn handler_count(&self) -> usize {
        self.handlers.len()
    }

    /// Calls `on_drain` on the handler `id`, if it is still alive.
    pub fn drain_handler(&mut self, id: HandlerId) {
        self.with_handler(id, |h, ctx| h.on_drain(ctx, id));
    }

    /// Closes the handler `id` at once (its sockets close when it is dropped at the end of
    /// this loop iteration).
    pub fn close_handler(&mut self, id: HandlerId) {
        if let Some(entry) = self.handlers.get(id.key) {
            if entry.generation == id.generation {
                if let Some(handler) = self.handlers.remove(id.key).handler {
                    self.deferred.push(handler);
                }
            }
        }
    }

    /// Calls `on_drain` on every live handler.
    pub fn drain_all(&mut self) {
        let ids: Vec<HandlerId> = self
            .handlers
            .iter()
            .map(|(key, e)| HandlerId {
                key,
                generation: e.generation,
            })
            .collect();
        for id in ids {
            self.drain_handler(id);
        }
    }

    fn with_handler<F>(&mut self, id: HandlerId, f: F)
    where
        F: FnOnce(&mut dyn EventHandler<L>, &mut Ctx<L>) -> Next,
    {
        let Some(entry) = self.handlers.get_mut(id.key) else {
            return;
        };
        if entry.generation != id.generation {
            return;
        }
        // Take the handler out so the callback can borrow the context mutably (and even
        // insert new handlers) without aliasing it.
        let Some(mut handler) = entry.handler.take() else {
            return;
        };
        let next = f(handler.as_mut(), self);
        // The callback may have closed this very handler (close_handler): then the entry is
        // gone or belongs to a newcomer, and the handler must not be put back.
        let still_ours = self
            .handlers
            .get(id.key)
            .is_some_and(|e| e.generation == id.generation);
        match (next, still_ours) {
            (Next::Continue, true) => {
                if let Some(entry) = self.handlers.get_mut(id.key) {
                    entry.handler = Some(handler);
                }
            }
            (Next::Close, true) => {
                self.handlers.remove(id.key);
                self.deferred.push(handler);
            }
            (_, false) => self.deferred.push(handler),
        }
    }
}

/// The posting side of a dispatcher, usable from any thread.
pub struct DispatcherHandle<L> {
    tx: Sender<Posted<L>>,
    waker: Arc<Waker>,
}

impl<L> Clone for DispatcherHandle<L> {
    fn clone(&self) -> Self {
        DispatcherHandle {
            tx: self.tx.clone(),
            waker: self.waker.clone(),
        }
    }
}

/// A post to a worker whose loop has exited.
#[derive(Debug, thiserror::Error)]
#[error("the worker's dispatcher has exited")]
pub struct PostError;

impl<L> DispatcherHandle<L> {
    /// Queues `cb` to run on the dispatcher's thread at its next loop iteration.
    pub fn post(&self, cb: Posted<L>) -> Result<(), PostError> {
        self.tx.send(cb).map_err(|_| PostError)?;
        self.waker.wake().map_err(|_| PostError)
    }
}

/// One event loop; runs on the thread that calls [`Dispatcher::run`].
pub struct Dispatcher<L> {
    poll: Poll,
    posted: Receiver<Posted<L>>,
    ctx: Ctx<L>,
    rt: std::rc::Rc<rt::Runtime>,
    ready: Vec<Arc<rt::TargetWaker>>,
}

impl<L> Dispatcher<L> {
    /// Creates a loop owning `local`, and the handle other threads post to.
    pub fn new(local: L) -> io::Result<(Dispatcher<L>, DispatcherHandle<L>)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = mpsc::channel();
        let registry = poll.registry().try_clone()?;
        rt::Runtime::install(poll.registry().try_clone()?, Some(waker.clone()));
        let ctx = Ctx {
            registry,
            timers: TimerQueue::default(),
            now: Instant::now(),
            local,
            handlers: Slab::new(),
            deferred: Vec::new(),
            generation: 0,
            exit: false,
        };
        Ok((
            Dispatcher {
                poll,
                posted: rx,
                ctx,
                rt: rt::current().ok_or_else(|| io::Error::other("runtime not installed"))?,
                ready: Vec::new(),
            },
            DispatcherHandle { tx, waker },
        ))
    }

    /// Runs until a posted callback calls [`Ctx::exit`] or every handle is dropped.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            self.ctx.now = Instant::now();
            let mut timeout = self.ctx.timers.timeout(self.ctx.now);
            if let Some(t) = self.rt.timer_timeout(self.ctx.now) {
                timeout = Some(timeout.map_or(t, |o| o.min(t)));
            }
            if self.rt.has_ready() {
                timeout = Some(Duration::ZERO);
            }
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            self.ctx.now = Instant::now();
            // Handlers created from here on cannot own any of these events, even at the slab
            // key of one closed meanwhile (tokens carry only the key).
            let polled = self.ctx.generation;
            // Posted callbacks first: a snapshot posted before a connection arrived then
            // applies to that connection, even when both show up in the same poll.
            if self.run_posted() {
                return Ok(());
            }
            for event in events.iter() {
                let token = event.token();
                if token == WAKER {
                    continue;
                }
                if token.0 & rt::IO_BIT != 0 {
                    self.rt.on_io_event(token.0 & !rt::IO_BIT, event);
                    continue;
                }
                let key = token.0 / SOURCES_PER_HANDLER;
                let source = token.0 % SOURCES_PER_HANDLER;
                let Some(entry) = self.ctx.handlers.get(key) else {
                    continue;
                };
                if entry.generation > polled {
                    continue;
                }
                let id = HandlerId {
                    key,
                    generation: entry.generation,
                };
                self.ctx
                    .with_handler(id, |h, ctx| h.on_ready(source, event, ctx, id));
            }
            while let Some((id, tag)) = self.ctx.timers.pop_expired(self.ctx.now) {
                self.ctx.with_handler(id, |h, ctx| h.on_timer(tag, ctx, id));
            }
            self.run_async();
            // Deferred deletion: handlers closed this iteration are dropped only now, after
            // every event that might still name them has been delivered or discarded.
            self.ctx.deferred.clear();
            if self.ctx.exit {
                return Ok(());
            }
        }
    }

    /// Fires runtime timers and runs woken tasks and handlers, a bounded number of rounds
    /// so that I/O is not starved.
    fn run_async(&mut self) {
        for _ in 0..32 {
            self.rt.fire_timers(Instant::now());
            self.rt.take_ready(&mut self.ready);
            if self.ready.is_empty() {
                return;
            }
            for w in std::mem::take(&mut self.ready) {
                match w.target {
                    Target::Task(key, generation) => self.rt.poll_task(key, generation),
                    Target::Handler(id) => {
                        self.ctx.with_handler(id, |h, ctx| h.on_wake(ctx, id));
                    }
                }
            }
        }
    }

    /// Runs every queued callback; returns true when all posting handles are gone.
    fn run_posted(&mut self) -> bool {
        loop {
            match self.posted.try_recv() {
                Ok(cb) => cb(&mut self.ctx),
                Err(TryRecvError::Empty) => return false,
                Err(TryRecvError::Disconnected) => return true,
            }
        }
    }

    /// The context, for set-up before the loop runs.
    pub fn ctx(&mut self) -> &mut Ctx<L> {
        &mut self.ctx
    }
}
