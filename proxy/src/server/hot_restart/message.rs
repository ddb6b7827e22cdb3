//! Envoy's `HotRestartMessage` (`source/server/hot_restart.proto`) and its framing over a
//! Unix datagram socket: an 8-byte big-endian length, then the encoded message, cut into
//! datagrams of at most [`MAX_SENDMSG_SIZE`] bytes; a passed descriptor rides as
//! `SCM_RIGHTS` control data on the datagram that carries the reply.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use prost::Message;

/// Envoy's `MaxSendmsgSize`.
pub const MAX_SENDMSG_SIZE: usize = 4096;

/// `envoy.HotRestartMessage`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HotRestartMessage {
    /// The request or the reply.
    #[prost(oneof = "RequestReply", tags = "1, 2")]
    pub requestreply: Option<RequestReply>,
    /// Set by a parent that did not understand the last request.
    #[prost(bool, tag = "3")]
    pub didnt_recognize_your_last_message: bool,
}

/// `HotRestartMessage.requestreply`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum RequestReply {
    /// Child to parent.
    #[prost(message, tag = "1")]
    Request(Request),
    /// Parent to child.
    #[prost(message, tag = "2")]
    Reply(Reply),
}

/// `HotRestartMessage.Request`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    /// Which request.
    #[prost(oneof = "RequestKind", tags = "1, 2, 3, 4, 5")]
    pub request: Option<RequestKind>,
}

/// `HotRestartMessage.Request.request`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum RequestKind {
    /// A listen socket by address.
    #[prost(message, tag = "1")]
    PassListenSocket(PassListenSocketRequest),
    /// Close the admin listener.
    #[prost(message, tag = "2")]
    ShutdownAdmin(Empty),
    /// The parent's stats.
    #[prost(message, tag = "3")]
    Stats(Empty),
    /// Stop accepting and drain.
    #[prost(message, tag = "4")]
    DrainListeners(Empty),
    /// Exit.
    #[prost(message, tag = "5")]
    Terminate(Empty),
}

/// An empty message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Empty {}

/// `Request.PassListenSocket`. `worker_index` is Courier's addition (a field Envoy's
/// parent skips as unknown): which of an SO_REUSEPORT group's sockets the child wants.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PassListenSocketRequest {
    /// `tcp://ip:port`.
    #[prost(string, tag = "1")]
    pub address: String,
    /// The worker whose socket is asked for.
    #[prost(uint32, tag = "2")]
    pub worker_index: u32,
}

/// `HotRestartMessage.Reply`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Reply {
    /// Which reply.
    #[prost(oneof = "ReplyKind", tags = "1, 2, 3")]
    pub reply: Option<ReplyKind>,
}

/// `HotRestartMessage.Reply.reply`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ReplyKind {
    /// The descriptor's number in the parent (-1: none); the descriptor itself is the
    /// datagram's `SCM_RIGHTS`.
    #[prost(message, tag = "1")]
    PassListenSocket(PassListenSocketReply),
    /// The admin is closed.
    #[prost(message, tag = "2")]
    ShutdownAdmin(ShutdownAdminReply),
    /// The parent's stats.
    #[prost(message, tag = "3")]
    Stats(StatsReply),
}

/// `Reply.PassListenSocket`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PassListenSocketReply {
    /// -1 when the parent has no such socket.
    #[prost(int32, tag = "1")]
    pub fd: i32,
}

/// `Reply.ShutdownAdmin`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ShutdownAdminReply {
    /// When the first epoch started (for `uptime_all_epochs`).
    #[prost(uint64, tag = "1")]
    pub original_start_time_unix_seconds: u64,
}

/// `Reply.Stats`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StatsReply {
    /// Unused by Courier (sent as 0).
    #[prost(uint64, tag = "1")]
    pub memory_allocated: u64,
    /// The parent's open downstream connections (`server.parent_connections`).
    #[prost(uint64, tag = "2")]
    pub num_connections: u64,
    /// What each counter gained since the last reply that included it.
    #[prost(map = "string, uint64", tag = "3")]
    pub counter_deltas: HashMap<String, u64>,
    /// Gauges' current values.
    #[prost(map = "string, uint64", tag = "4")]
    pub gauges: HashMap<String, u64>,
}

impl HotRestartMessage {
    /// A request.
    pub fn request(kind: RequestKind) -> Self {
        HotRestartMessage {
            requestreply: Some(RequestReply::Request(Request {
                request: Some(kind),
            })),
            didnt_recognize_your_last_message: false,
        }
    }

    /// A reply.
    pub fn reply(kind: ReplyKind) -> Self {
        HotRestartMessage {
            requestreply: Some(RequestReply::Reply(Reply { reply: Some(kind) })),
            didnt_recognize_your_last_message: false,
        }
    }
}

/// The datagrams that carry `message`: the length prefix and the encoding, cut in chunks.
pub fn frame(message: &HotRestartMessage) -> Vec<Vec<u8>> {
    let body = message.encode_to_vec();
    let mut whole = Vec::with_capacity(8 + body.len());
    whole.extend_from_slice(&(body.len() as u64).to_be_bytes());
    whole.extend_from_slice(&body);
    whole.chunks(MAX_SENDMSG_SIZE).map(<[u8]>::to_vec).collect()
}

/// Reassembles datagrams into a message.
#[derive(Default)]
pub struct Reassembly {
    buf: Vec<u8>,
    /// A descriptor received with any datagram of the message.
    pub fd: Option<OwnedFd>,
}

impl Reassembly {
    /// Adds a datagram; returns the message once it is whole.
    pub fn push(&mut self, datagram: &[u8]) -> io::Result<Option<HotRestartMessage>> {
        self.buf.extend_from_slice(datagram);
        if self.buf.len() < 8 {
            return Ok(None);
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&self.buf[..8]);
        let len = u64::from_be_bytes(len) as usize;
        if len > 64 << 20 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("hot restart message of {len} bytes (not a hot restart peer?)"),
            ));
        }
        if self.buf.len() < 8 + len {
            return Ok(None);
        }
        if self.buf.len() > 8 + len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "hot restart datagrams longer than their length prefix",
            ));
        }
        let message = HotRestartMessage::decode(&self.buf[8..]).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("undecodable hot restart message: {e}"),
            )
        })?;
        self.buf.clear();
        Ok(Some(message))
    }
}

/// Sends one datagram to `to` (a `sockaddr_un`), with `fd` as `SCM_RIGHTS` if given.
pub fn send_datagram(
    socket: RawFd,
    to: &std::os::unix::net::SocketAddr,
    data: &[u8],
    fd: Option<RawFd>,
) -> io::Result<()> {
    let (mut addr, addr_len) = sockaddr_un(to)?;
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // Room for one descriptor, aligned as the kernel wants it.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is a plain C struct; zeroed is its valid empty state.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_un).cast();
    msg.msg_namelen = addr_len;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        // SAFETY: the control buffer outlives the call and is large enough for one
        // descriptor's CMSG_SPACE; the CMSG_* macros stay within it.
        unsafe {
            let space = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        }
    }
    // SAFETY: every pointer in msg points at locals alive for the call.
    let sent = unsafe { libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one datagram into `buf`: its length, its sender, and a descriptor passed with
/// it (taken into an `OwnedFd`, so a stray one is closed, never leaked).
pub fn recv_datagram(
    socket: RawFd,
    buf: &mut [u8],
) -> io::Result<(
    usize,
    Option<std::os::unix::net::SocketAddr>,
    Option<OwnedFd>,
)> {
    // SAFETY: sockaddr_un is a plain C struct; zeroed is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 8];
    // SAFETY: as in send_datagram.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_un).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_un>() as u32;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: every pointer in msg points at locals alive for the call.
    let n = unsafe { libc::recvmsg(socket, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fd = None;
    // SAFETY: the kernel filled msg_control; CMSG_* walk only what it wrote.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let raw = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
                fd = Some(OwnedFd::from_raw_fd(raw));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    let from = from_sockaddr_un(&addr, msg.msg_namelen);
    Ok((n as usize, from, fd))
}

/// A `sockaddr_un` for a std address (path or abstract name).
fn sockaddr_un(
    to: &std::os::unix::net::SocketAddr,
) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    use std::os::linux::net::SocketAddrExt;
    // SAFETY: sockaddr_un is a plain C struct; zeroed is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let (bytes, offset): (&[u8], usize) = if let Some(name) = to.as_abstract_name() {
        (name, 1)
    } else if let Some(path) = to.as_pathname() {
        use std::os::unix::ffi::OsStrExt;
        (path.as_os_str().as_bytes(), 0)
    } else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "unnamed Unix socket address",
        ));
    };
    if bytes.len() + offset >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "Unix socket name too long",
        ));
    }
    for (i, b) in bytes.iter().enumerate() {
        addr.sun_path[i + offset] = *b as libc::c_char;
    }
    let base = std::mem::size_of::<libc::sa_family_t>();
    let len = base + offset + bytes.len() + usize::from(offset == 0);
    Ok((addr, len as libc::socklen_t))
}

fn from_sockaddr_un(
    addr: &libc::sockaddr_un,
    len: libc::socklen_t,
) -> Option<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    let base = std::mem::size_of::<libc::sa_family_t>();
    let path_len = (len as usize).checked_sub(base)?;
    if path_len == 0 {
        return None;
    }
    let raw: Vec<u8> = addr.sun_path[..path_len.min(addr.sun_path.len())]
        .iter()
        .map(|c| *c as u8)
        .collect();
    if raw.first() == Some(&0) {
        std::os::unix::net::SocketAddr::from_abstract_name(&raw[1..]).ok()
    } else {
        let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
        use std::os::unix::ffi::OsStrExt;
        std::os::unix::net::SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(&raw[..end])).ok()
    }
}

/// Sends a whole message (the descriptor, if any, with the first datagram).
pub fn send_message(
    socket: &impl AsRawFd,
    to: &std::os::unix::net::SocketAddr,
    message: &HotRestartMessage,
    fd: Option<RawFd>,
) -> io::Result<()> {
    for (i, chunk) in frame(message).iter().enumerate() {
        send_datagram(
            socket.as_raw_fd(),
            to,
            chunk,
            if i == 0 { fd } else { None },
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_message_survives_chunking() {
        let mut stats = StatsReply::default();
        for i in 0..2000 {
            stats
                .counter_deltas
                .insert(format!("cluster.c{i}.upstream_rq_total"), i);
        }
        let message = HotRestartMessage::reply(ReplyKind::Stats(stats));
        let chunks = frame(&message);
        assert!(chunks.len() > 1);
        let mut r = Reassembly::default();
        let mut out = None;
        for c in &chunks {
            out = r.push(c).unwrap();
        }
        assert_eq!(out, Some(message));
    }
}
