//! The child's side (Envoy's `HotRestartingChild`): requests to the parent generation,
//! each answered before the next is sent. The calls block the main thread for a local
//! round trip; every wait is bounded by [`super::PARENT_TIMEOUT`].

use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;

use super::message::{
    recv_datagram, send_message, Empty, HotRestartMessage, PassListenSocketRequest, Reassembly,
    ReplyKind, RequestKind, RequestReply, MAX_SENDMSG_SIZE,
};
use super::{HotRestartConfig, HotRestartError, PARENT_TIMEOUT};

/// A connection to the parent generation.
pub struct HotRestartingChild {
    socket: UnixDatagram,
    parent: std::os::unix::net::SocketAddr,
    parent_name: String,
    parent_epoch: u32,
    /// Set once `Terminate` went out: no request follows it.
    terminated: std::cell::Cell<bool>,
}

impl HotRestartingChild {
    /// Binds the child's socket after checking the running generation's version.
    pub fn new(config: &HotRestartConfig) -> Result<HotRestartingChild, HotRestartError> {
        super::check_version(config)?;
        let socket = super::bind_datagram(
            &config.socket_name("child", config.epoch),
            config.base_id,
            config.socket_mode,
        )?;
        socket.set_read_timeout(Some(PARENT_TIMEOUT))?;
        let parent_epoch = config.epoch - 1;
        let parent_name = config.socket_name("parent", parent_epoch);
        Ok(HotRestartingChild {
            socket,
            parent: super::unix_addr(&parent_name)?,
            parent_name,
            parent_epoch,
            terminated: std::cell::Cell::new(false),
        })
    }

    /// Whether the parent was told to exit.
    pub fn parent_terminated(&self) -> bool {
        self.terminated.get()
    }

    fn send(&self, kind: RequestKind) -> Result<(), HotRestartError> {
        send_message(
            &self.socket,
            &self.parent,
            &HotRestartMessage::request(kind),
            None,
        )
        .map_err(|source| HotRestartError::NoParent {
            epoch: self.parent_epoch,
            name: self.parent_name.clone(),
            source,
        })
    }

    fn ask(
        &self,
        kind: RequestKind,
        what: &'static str,
    ) -> Result<(ReplyKind, Option<OwnedFd>), HotRestartError> {
        self.send(kind)?;
        let mut buf = vec![0u8; MAX_SENDMSG_SIZE];
        let mut whole = Reassembly::default();
        loop {
            let (n, _, fd) =
                match recv_datagram(std::os::fd::AsRawFd::as_raw_fd(&self.socket), &mut buf) {
                    Ok(r) => r,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        return Err(HotRestartError::Timeout {
                            epoch: self.parent_epoch,
                            name: self.parent_name.clone(),
                            what,
                            timeout: PARENT_TIMEOUT,
                        })
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e.into()),
                };
            if fd.is_some() {
                whole.fd = fd;
            }
            if let Some(message) = whole.push(&buf[..n])? {
                if message.didnt_recognize_your_last_message {
                    return Err(HotRestartError::Protocol(what));
                }
                return match message.requestreply {
                    Some(RequestReply::Reply(r)) => match r.reply {
                        Some(kind) => Ok((kind, whole.fd.take())),
                        None => Err(HotRestartError::Protocol(what)),
                    },
                    _ => Err(HotRestartError::Protocol(what)),
                };
            }
        }
    }

    /// The parent's listen socket bound to `address` for `worker` (`None`: it has none).
    pub fn duplicate_parent_listen_socket(
        &self,
        address: SocketAddr,
        worker: usize,
    ) -> Result<Option<TcpListener>, HotRestartError> {
        if self.terminated.get() {
            return Ok(None);
        }
        let request = RequestKind::PassListenSocket(PassListenSocketRequest {
            address: format!("tcp://{address}"),
            worker_index: u32::try_from(worker).unwrap_or(u32::MAX),
        });
        match self.ask(request, "PassListenSocket")? {
            (ReplyKind::PassListenSocket(r), Some(fd)) if r.fd >= 0 => {
                tracing::info!(%address, worker, "listen socket taken over from the parent");
                Ok(Some(TcpListener::from(fd)))
            }
            (ReplyKind::PassListenSocket(_), _) => Ok(None),
            _ => Err(HotRestartError::Protocol("PassListenSocket")),
        }
    }

    /// Asks the parent to close its admin listener; returns the first epoch's start time
    /// (Unix seconds).
    pub fn shutdown_parent_admin(&self) -> Result<u64, HotRestartError> {
        match self.ask(RequestKind::ShutdownAdmin(Empty {}), "ShutdownAdmin")? {
            (ReplyKind::ShutdownAdmin(r), _) => Ok(r.original_start_time_unix_seconds),
            _ => Err(HotRestartError::Protocol("ShutdownAdmin")),
        }
    }

    /// Tells the parent to stop accepting and drain.
    pub fn drain_parent_listeners(&self) -> Result<(), HotRestartError> {
        self.send(RequestKind::DrainListeners(Empty {}))
    }

    /// The parent's stats (counter deltas since the last call, gauges now).
    pub fn parent_stats(&self) -> Result<super::message::StatsReply, HotRestartError> {
        match self.ask(RequestKind::Stats(Empty {}), "Stats")? {
            (ReplyKind::Stats(s), _) => Ok(s),
            _ => Err(HotRestartError::Protocol("Stats")),
        }
    }

    /// Tells the parent to exit. Nothing is asked of it after this.
    pub fn terminate_parent(&self) -> Result<(), HotRestartError> {
        if self.terminated.replace(true) {
            return Ok(());
        }
        self.send(RequestKind::Terminate(Empty {}))
    }
}
