//! A listener's `socket_options`: raw `setsockopt(2)` calls on its sockets, each at the
//! state Envoy applies it in (before bind, once bound, once listening), only on sockets
//! of the IP version it names. A call the kernel refuses fails the listener, as in
//! Envoy.

use std::io;
use std::os::fd::AsRawFd;

use courier_proto::envoy::config::core::v3::socket_option::{SocketIpVersion, SocketState, Value};
use courier_proto::envoy::config::core::v3::SocketOption as SocketOptionProto;

use crate::config::ConfigError;

/// When an option is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Before `bind`.
    Prebind,
    /// After `bind`.
    Bound,
    /// After `listen`.
    Listening,
}

/// One compiled socket option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketOption {
    level: libc::c_int,
    name: libc::c_int,
    /// `int_value` (as a C `int`, as Envoy passes it) or `buf_value`.
    value: Vec<u8>,
    state: State,
    /// Only on IPv4 (`Some(false)`) or IPv6 (`Some(true)`) sockets.
    v6: Option<bool>,
}

/// Compiles `socket_options` at `path`.
pub fn compile(list: &[SocketOptionProto], path: &str) -> Result<Vec<SocketOption>, ConfigError> {
    list.iter()
        .enumerate()
        .filter_map(|(i, o)| {
            let at = format!("{path}[{i}]");
            // A datagram-only option never applies to a TCP listener's sockets.
            if o.r#type
                .as_ref()
                .is_some_and(|t| t.datagram.is_some() && t.stream.is_none())
            {
                return None;
            }
            Some(compile_one(o, &at))
        })
        .collect()
}

fn compile_one(o: &SocketOptionProto, at: &str) -> Result<SocketOption, ConfigError> {
    let int = |v: i64, field: &str| {
        libc::c_int::try_from(v)
            .map_err(|_| ConfigError::new(format!("{at}.{field}"), format!("{v} is out of range")))
    };
    let value = match &o.value {
        Some(Value::IntValue(v)) => int(*v, "int_value")?.to_ne_bytes().to_vec(),
        Some(Value::BufValue(b)) => b.clone(),
        None => {
            return Err(ConfigError::new(
                at,
                "one of int_value or buf_value is required",
            ))
        }
    };
    let state = match SocketState::try_from(o.state) {
        Ok(SocketState::StatePrebind) => State::Prebind,
        Ok(SocketState::StateBound) => State::Bound,
        Ok(SocketState::StateListening) => State::Listening,
        Err(_) => {
            return Err(ConfigError::new(
                format!("{at}.state"),
                "value must be one of the defined enum values",
            ))
        }
    };
    let v6 = match SocketIpVersion::try_from(o.ip_version) {
        Ok(SocketIpVersion::Unspecified) => None,
        Ok(SocketIpVersion::Ipv4) => Some(false),
        Ok(SocketIpVersion::Ipv6) => Some(true),
        Err(_) => {
            return Err(ConfigError::new(
                format!("{at}.ip_version"),
                "value must be one of the defined enum values",
            ))
        }
    };
    Ok(SocketOption {
        level: int(o.level, "level")?,
        name: int(o.name, "name")?,
        value,
        state,
        v6,
    })
}

/// Sets the options of `state` on `socket` (an IPv6 one when `v6`).
pub fn apply(
    options: &[SocketOption],
    state: State,
    socket: &impl AsRawFd,
    v6: bool,
) -> io::Result<()> {
    for o in options
        .iter()
        .filter(|o| o.state == state && o.v6.is_none_or(|want| want == v6))
    {
        let len = libc::socklen_t::try_from(o.value.len())
            .map_err(|_| io::Error::other("socket option value too long"))?;
        // SAFETY: the pointer and length describe `o.value`, alive for the call.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                o.level,
                o.name,
                o.value.as_ptr().cast(),
                len,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "setting socket option (level {}, name {}) failed: {e}",
                    o.level, o.name
                ),
            ));
        }
    }
    Ok(())
}
