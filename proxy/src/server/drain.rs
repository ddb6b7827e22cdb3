//! Signals and the shutdown drain (Envoy's `DrainManager` for the whole server).

use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, SignalKind};

use super::{Server, ServerState};
use crate::stats::Store;

/// Sum of `listener.*.downstream_cx_active`.
pub fn active_downstream_connections(store: &Store) -> i64 {
    store
        .gauges()
        .into_iter()
        .filter(|(name, _)| {
            name.starts_with("listener.") && name.ends_with(".downstream_cx_active")
        })
        .map(|(_, v)| v.as_i64())
        .sum()
}

/// Waits for SIGTERM/SIGINT or the loss of a self hot restart's holder (graceful drain,
/// then exit 0; a second signal exits at once with code 1), `/quitquitquit` or a hot
/// restart child's `Terminate` (exit 0 now).
/// SIGHUP starts a self hot restart (`super::hot_restart`). Returns the exit code.
pub async fn run_until_shutdown(server: Rc<Server>) -> i32 {
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::error!(error = %e, "cannot install the SIGHUP handler");
            None
        }
    };
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            tracing::error!("cannot install signal handlers; running until /quitquitquit");
            server.exit.notified().await;
            return 0;
        }
    };
    // A self-restarted generation starts with these blocked; one sent meanwhile arrives now.
    super::hot_restart::self_restart::unblock_signals();
    let holder_gone = super::hot_restart::self_restart::holder_gone();
    tokio::pin!(holder_gone);
    loop {
        let hangup = async {
            match hup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term.recv() => {
                tracing::info!("caught SIGTERM; draining");
                server.hot_restart.stop_signal.set(Some(libc::SIGTERM));
                break
            }
            _ = int.recv() => {
                tracing::info!("caught SIGINT; draining");
                server.hot_restart.stop_signal.set(Some(libc::SIGINT));
                break
            }
            _ = &mut holder_gone => {
                tracing::warn!("the self hot restart holder is gone; draining");
                break
            }
            _ = server.exit.notified() => {
                tracing::info!("exit requested");
                return 0;
            }
            _ = hangup => match server.self_restart() {
                Ok(done) => tracing::info!("caught SIGHUP; hot restart: {done}"),
                Err(e) => tracing::warn!("caught SIGHUP; no hot restart: {e}"),
            },
        }
    }
    let drain = drain(&server);
    tokio::select! {
        _ = drain => 0,
        _ = term.recv() => { tracing::warn!("second signal; exiting now"); 1 }
        _ = int.recv() => { tracing::warn!("second signal; exiting now"); 1 }
        _ = server.exit.notified() => 0,
    }
}

/// Stops accepting, lets connections finish for up to the drain time.
async fn drain(server: &Server) {
    server.set_state(ServerState::Draining);
    server
        .listener_manager
        .borrow_mut()
        .stop_listeners(true, true, false);
    let deadline = Instant::now() + server.options.drain_time();
    // Connection counts live in worker stat cells; checking them periodically is cheaper
    // than having every worker report every close.
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        let active = active_downstream_connections(&server.store);
        if active <= 0 {
            tracing::info!("all connections closed; exiting");
            return;
        }
        if Instant::now() >= deadline {
            tracing::info!(active, "drain time over; exiting");
            return;
        }
    }
}
