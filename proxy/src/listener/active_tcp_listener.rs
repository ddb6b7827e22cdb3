//! A worker's accepting socket (Envoy's `ActiveTcpListener`).

use std::io;
use std::sync::Arc;

use mio::event::Event;
use mio::net::TcpListener;
use mio::Interest;

use super::accept_backoff::{is_transient, AcceptBackoff};
use super::ListenerConfig;
use crate::overload::actions;
use crate::overload::connection_limit::ConnectionPermit;
use crate::overload::load_shed::{self, Point};
use crate::worker::{Ctx, EventHandler, HandlerId, Next, WorkerLocal};

const TIMER_RESUME_ACCEPT: u64 = 1;
const TIMER_OVERLOAD_RECHECK: u64 = 2;
/// How often a listener stopped by the overload manager looks again.
const OVERLOAD_RECHECK: std::time::Duration = std::time::Duration::from_millis(50);

/// Accepts connections on one worker's socket and hands each to its filter chain. The
/// listener's current config is read from the worker's listener table on every accept, so
/// an in-place update needs no new socket.
pub struct ActiveTcpListener {
    name: String,
    socket: TcpListener,
    /// Pauses accepting while `accept` fails (the descriptor limit): one retry pending at
    /// most, however many connections arrive meanwhile.
    backoff: AcceptBackoff,
    /// Not accepting under `stop_accepting_connections` (a re-check timer is pending).
    overload_paused: bool,
}

impl ActiveTcpListener {
    /// Registers `socket` on this worker.
    pub fn start(
        ctx: &mut Ctx,
        me: HandlerId,
        name: String,
        socket: std::net::TcpListener,
    ) -> io::Result<Box<dyn EventHandler<WorkerLocal>>> {
        socket.set_nonblocking(true)?;
        let mut socket = TcpListener::from_std(socket);
        ctx.registry
            .register(&mut socket, me.token(0), Interest::READABLE)?;
        Ok(Box::new(ActiveTcpListener {
            name,
            socket,
            backoff: AcceptBackoff::new(),
            overload_paused: false,
        }))
    }

    fn accept_all(&mut self, ctx: &mut Ctx, me: HandlerId) -> Next {
        // The overload manager's `stop_accepting_connections`: connections wait in the
        // kernel's backlog; one timer looks again, however many arrive meanwhile.
        if actions::states().stop_accepting_connections >= 1.0 {
            if !self.overload_paused {
                self.overload_paused = true;
                ctx.schedule(me, OVERLOAD_RECHECK, TIMER_OVERLOAD_RECHECK);
            }
            return Next::Continue;
        }
        let Some(config) = ctx
            .local
            .listeners
            .get(&self.name)
            .map(|l| l.config.clone())
        else {
            return Next::Close;
        };
        loop {
            match self.socket.accept() {
                Ok((stream, _peer)) => {
                    self.backoff.accepted(&self.name);
                    let permit = if config.ignore_global_conn_limit {
                        Some(ConnectionPermit::exempt())
                    } else {
                        ConnectionPermit::try_acquire()
                    };
                    let Some(permit) = permit else {
                        // At the global limit: closed at once (the drop), as Envoy does.
                        config.stats.downstream_global_cx_overflow.inc(ctx.local.id);
                        continue;
                    };
                    // Past the global limit, as in Envoy: the `tcp_listener_accept` load
                    // shed point, then `reject_incoming_connections` (the permit given
                    // back as the connection closes).
                    if load_shed::should_shed(Point::TcpListenerAccept, ctx.local.id)
                        || actions::applies(actions::states().reject_incoming_connections)
                    {
                        config.stats.downstream_cx_overload_reject.inc(ctx.local.id);
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    accept_connection(ctx, &config, stream, permit);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Continue,
                Err(e) if is_transient(&e) => {}
                Err(e) => {
                    // Typically EMFILE: stop for a while rather than spin; connections
                    // wait in the kernel's queue meanwhile.
                    config.stats.downstream_cx_accept_error.inc(ctx.local.id);
                    let pause = self.backoff.failed(&self.name, &e);
                    ctx.schedule(me, pause, TIMER_RESUME_ACCEPT);
                    return Next::Continue;
                }
            }
        }
    }
}

fn accept_connection(
    ctx: &mut Ctx,
    config: &Arc<ListenerConfig>,
    stream: mio::net::TcpStream,
    permit: ConnectionPermit,
) {
    let restored = if config.restore_original_dst {
        super::original_dst::original_dst(&stream)
    } else {
        None
    };
    // `use_original_dst`: the listener of the original destination takes it, its own
    // listener filters and chains included.
    let handed_off = restored
        .filter(|_| config.use_original_dst)
        .and_then(|dst| super::original_dst::listener_for(&ctx.local.listeners, dst))
        .map(|l| l.config.clone())
        .filter(|c| !Arc::ptr_eq(c, config));
    let config = handed_off.as_ref().unwrap_or(config);
    if let Some(filter) = &config.proxy_protocol {
        let (filter, listener) = (filter.clone(), config.clone());
        let started = ctx.insert_handler(move |ctx, id| {
            super::proxy_protocol::Reading::start(
                ctx, id, stream, listener, filter, restored, permit,
            )
        });
        if let Err(e) = started {
            tracing::debug!(listener = %config.name, error = %e, "connection ended in the PROXY protocol filter");
        }
        return;
    }
    super::tls_inspector::inspect_then_connect(ctx, config, stream, restored, None, permit);
}

impl EventHandler<WorkerLocal> for ActiveTcpListener {
    fn on_ready(&mut self, _source: usize, _event: &Event, ctx: &mut Ctx, me: HandlerId) -> Next {
        // Paused: the pending retry takes what arrived meanwhile (a retry per arrival
        // would multiply the retries, and the log, with every queued connection).
        if self.backoff.paused() || self.overload_paused {
            return Next::Continue;
        }
        self.accept_all(ctx, me)
    }

    fn on_timer(&mut self, tag: u64, ctx: &mut Ctx, me: HandlerId) -> Next {
        if tag == TIMER_OVERLOAD_RECHECK {
            self.overload_paused = false;
            if self.backoff.paused() {
                return Next::Continue;
            }
            return self.accept_all(ctx, me);
        }
        if tag == TIMER_RESUME_ACCEPT {
            self.backoff.resume();
            return self.accept_all(ctx, me);
        }
        Next::Continue
    }
}
