//! The parent's side (Envoy's `HotRestartingParent`): answers the next generation's
//! requests on the main thread.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Weak;

use tokio::io::Interest;

use super::message::{
    recv_datagram, send_message, HotRestartMessage, PassListenSocketReply, Reassembly, ReplyKind,
    RequestKind, RequestReply, ShutdownAdminReply, StatsReply, MAX_SENDMSG_SIZE,
};
use super::{HotRestartConfig, HotRestartError};

/// What the parent does for its child; the server implements it.
pub trait ParentHooks {
    /// A duplicate of the listen socket bound to `address` for `worker`, if any.
    fn listen_socket(&self, address: SocketAddr, worker: usize) -> Option<OwnedFd>;
    /// Closes the admin listener; returns the first epoch's start (Unix seconds) and the
    /// admin's task, aborted: the listener is closed once it is done.
    fn shutdown_admin(&self) -> (u64, Option<tokio::task::JoinHandle<()>>);
    /// Stops accepting and drains (the child is serving).
    fn drain_listeners(&self);
    /// The stats reply.
    fn stats(&self) -> StatsReply;
    /// Exits.
    fn terminate(&self);
}

/// The parent's socket, bound at start-up by every process with hot restart enabled.
pub struct HotRestartingParent {
    socket: std::os::unix::net::UnixDatagram,
}

impl HotRestartingParent {
    /// Binds `…_parent_<id>`. With `dynamic`, tries base ids until one is free and sets it
    /// in `config` (Envoy's `--use-dynamic-base-id`).
    pub fn bind(
        config: &mut HotRestartConfig,
        dynamic: bool,
    ) -> Result<HotRestartingParent, HotRestartError> {
        if !dynamic {
            let name = config.socket_name("parent", config.epoch);
            let socket = super::bind_datagram(&name, config.base_id, config.socket_mode)?;
            return Ok(HotRestartingParent { socket });
        }
        let start = u64::from(std::process::id()) % 100_000;
        let mut last = None;
        for i in 0..64 {
            config.base_id = start + i;
            let name = config.socket_name("parent", config.epoch);
            match super::bind_datagram(&name, config.base_id, config.socket_mode) {
                Ok(socket) => return Ok(HotRestartingParent { socket }),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(HotRestartError::Protocol("dynamic base id")))
    }

    /// Answers requests until the hooks' owner is gone (or the task is aborted).
    pub async fn serve(self, hooks: Weak<dyn ParentHooks>) {
        if let Err(e) = self.socket.set_nonblocking(true) {
            tracing::error!(error = %e, "hot restart: parent socket unusable");
            return;
        }
        let socket = match tokio::net::UnixDatagram::from_std(self.socket) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "hot restart: parent socket unusable");
                return;
            }
        };
        let mut buf = vec![0u8; MAX_SENDMSG_SIZE];
        let mut partial: HashMap<String, Reassembly> = HashMap::new();
        loop {
            let received = socket
                .async_io(Interest::READABLE, || {
                    recv_datagram(socket.as_raw_fd(), &mut buf)
                })
                .await;
            let (n, from, _) = match received {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "hot restart: receive failed");
                    continue;
                }
            };
            let Some(from) = from else {
                tracing::warn!("hot restart: a datagram from an unnamed socket; ignored");
                continue;
            };
            let key = format!("{from:?}");
            let whole = partial.entry(key.clone()).or_default();
            let message = match whole.push(&buf[..n]) {
                Ok(Some(m)) => m,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "hot restart: bad message from a child");
                    partial.remove(&key);
                    continue;
                }
            };
            partial.remove(&key);
            let Some(hooks) = hooks.upgrade() else { return };
            let kind = match message.requestreply {
                Some(RequestReply::Request(r)) => r.request,
                _ => None,
            };
            let (reply, fd): (Option<HotRestartMessage>, Option<OwnedFd>) = match kind {
                Some(RequestKind::PassListenSocket(r)) => {
                    let fd = super::parse_tcp_url(&r.address)
                        .and_then(|address| hooks.listen_socket(address, r.worker_index as usize));
                    tracing::info!(address = %r.address, worker = r.worker_index, passed = fd.is_some(), "hot restart: child asked for a listen socket");
                    let number = fd.as_ref().map_or(-1, |f| f.as_raw_fd());
                    (
                        Some(HotRestartMessage::reply(ReplyKind::PassListenSocket(
                            PassListenSocketReply { fd: number },
                        ))),
                        fd,
                    )
                }
                Some(RequestKind::ShutdownAdmin(_)) => {
                    tracing::info!("hot restart: child took over the admin address");
                    let (start, admin) = hooks.shutdown_admin();
                    if let Some(admin) = admin {
                        // The child binds the admin address once answered: the listener must
                        // be closed by then, not whenever the aborted task is next dropped.
                        let _ = admin.await;
                    }
                    (
                        Some(HotRestartMessage::reply(ReplyKind::ShutdownAdmin(
                            ShutdownAdminReply {
                                original_start_time_unix_seconds: start,
                            },
                        ))),
                        None,
                    )
                }
                Some(RequestKind::Stats(_)) => (
                    Some(HotRestartMessage::reply(ReplyKind::Stats(hooks.stats()))),
                    None,
                ),
                Some(RequestKind::DrainListeners(_)) => {
                    tracing::info!("hot restart: child is serving; draining listeners");
                    hooks.drain_listeners();
                    (None, None)
                }
                Some(RequestKind::Terminate(_)) => {
                    tracing::info!("hot restart: terminated by the child");
                    hooks.terminate();
                    (None, None)
                }
                None => (
                    Some(HotRestartMessage {
                        requestreply: None,
                        didnt_recognize_your_last_message: true,
                    }),
                    None,
                ),
            };
            drop(hooks);
            if let Some(reply) = reply {
                // The child waits on its socket, so its queue drains as we send.
                let mut tries = 0;
                loop {
                    match send_message(&socket, &from, &reply, fd.as_ref().map(|f| f.as_raw_fd())) {
                        Ok(()) => break,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && tries < 1000 => {
                            tries += 1;
                            tokio::task::yield_now().await;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "hot restart: cannot answer the child");
                            break;
                        }
                    }
                }
            }
        }
    }
}
