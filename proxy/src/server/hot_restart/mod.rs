//! Hot restart (Envoy's `HotRestartImpl`): a new process takes over the listen sockets of
//! the running one, which drains and exits, so no connection is refused or reset, even
//! across a binary upgrade.
//!
//! # Envoy's protocol
//! Every process with hot restart enabled binds a Unix datagram socket as a *parent*,
//! `<--socket-path>_parent_<base_id*10 + epoch%3>` (abstract, `@envoy_domain_socket_…`,
//! by default), and a process of epoch N > 0 binds `…_child_<…N%3>` and talks to epoch
//! N-1's parent socket ([`child::HotRestartingChild`]; the parent's answers are
//! [`parent::HotRestartingParent`]). Messages are Envoy's `HotRestartMessage`
//! ([`message`]). The child, in this order:
//! 1. checks the running generation's `hot_restart_version` (the file
//!    `/dev/shm/courier_hot_restart_<base_id>`, Envoy's shared memory's role) — a mismatch
//!    is an error before anything is asked;
//! 2. loads and compiles its bootstrap and adds its listeners, asking the parent for each
//!    listen socket by address (and worker index, for an SO_REUSEPORT group) and receiving
//!    the descriptor with `SCM_RIGHTS`; what the parent does not have it binds. A bad
//!    bootstrap or a failed bind ends the child here, the parent untouched;
//! 3. asks the parent to close its admin listener (`ShutdownAdmin`), then binds it;
//! 4. once initialised (clusters and listeners warmed, workers accepting), asks the parent
//!    to drain (`DrainListeners`: the parent stops accepting and drains its connections
//!    for `--drain-time-s`, as on `/drain_listeners?graceful`), and at
//!    `--parent-shutdown-time-s` sends `Terminate`; the parent exits.
//!
//! Stats carry over ([`stats`]): the child asks for the parent's stats every few seconds
//! and just before `Terminate`, adding counter deltas to its own counters, and adding the
//! parent's `*_active`/`*_buffered` gauges (Envoy's `Accumulate` import mode) until the
//! parent is gone; other gauges are `NeverImport`. Histograms restart.
//!
//! # Self hot restart (beyond Envoy)
//! On SIGHUP or `POST /hot_restart`, Courier runs its own binary again
//! (`/proc/self/exe`'s path re-resolved, so a binary replaced at the same path is the one
//! started) with the same arguments and `--restart-epoch N+1`; the new process is an
//! ordinary child of the protocol above ([`self_restart`]).
//!
//! A container (or a systemd unit) lives as long as the process it started. So the
//! process that was started by its supervisor never exits on a self restart: once
//! terminated by its child, it closes everything it served with and stays as a *holder*
//! (a subreaper, so every later generation is re-parented to it): it forwards
//! SIGTERM/SIGINT/SIGHUP to the live generations, reaps them, and exits with the last
//! generation's exit code once none is left. Processes started by a self restart exit
//! when terminated, as Envoy's parents do, and drain and exit if the holder dies (a pidfd
//! on it). They start with SIGHUP/SIGTERM/SIGINT blocked until their handlers are
//! installed, so a signal the holder forwards to a starting generation waits instead of
//! killing it. A restart asked for while the serving generation still has its parent is
//! queued and starts when that parent is terminated (only two generations live at once). The alternative — the old process `exec`ing the
//! new binary in place once it has handed its sockets to a short-lived holder — needs two
//! hand-overs and two drains per restart, and a connection open on the old process at
//! `exec` is cut; the holder costs one idle process and neither.

pub mod child;
pub mod message;
pub mod parent;
pub mod self_restart;
pub mod stats;

use std::os::unix::net::SocketAddr as UnixAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::options::Options;

/// What `/hot_restart_version` says: Courier's own protocol revision and message layout.
/// Two processes hot restart into each other only if they say the same.
pub const HOT_RESTART_VERSION: &str = "courier.1.envoy-hot-restart-message";

/// How long a child waits for any answer of its parent.
pub const PARENT_TIMEOUT: Duration = Duration::from_secs(5);

/// How a hot restart can fail.
#[derive(Debug, thiserror::Error)]
pub enum HotRestartError {
    /// `--restart-epoch` > 0 with `--disable-hot-restart`.
    #[error("--restart-epoch {0} needs hot restart, but --disable-hot-restart is set")]
    Disabled(u32),
    /// The domain socket could not be bound (another process has this base id).
    #[error("unable to bind hot restart domain socket {name}: {source} (is another Courier or Envoy running with base id {base_id}? see --base-id, --use-dynamic-base-id)")]
    Bind {
        /// The socket's name.
        name: String,
        /// Its base id.
        base_id: u64,
        /// The bind error.
        source: std::io::Error,
    },
    /// Nothing listens at the parent's socket.
    #[error("no parent of epoch {epoch} answers at {name}: {source} (a stale socket, or a wrong --base-id/--restart-epoch)")]
    NoParent {
        /// The parent's epoch.
        epoch: u32,
        /// Its socket's name.
        name: String,
        /// The send error.
        source: std::io::Error,
    },
    /// The parent did not answer in time.
    #[error("the parent of epoch {epoch} at {name} did not answer {what} within {timeout:?}")]
    Timeout {
        /// The parent's epoch.
        epoch: u32,
        /// Its socket's name.
        name: String,
        /// The request.
        what: &'static str,
        /// How long we waited.
        timeout: Duration,
    },
    /// The running generation speaks another protocol.
    #[error("hot restart version mismatch: the running generation (base id {base_id}) is '{theirs}', this binary is '{ours}'")]
    VersionMismatch {
        /// The base id.
        base_id: u64,
        /// The running generation's version.
        theirs: String,
        /// Ours.
        ours: &'static str,
    },
    /// No running generation registered a version.
    #[error(
        "--restart-epoch {epoch}: no running generation with base id {base_id} ({path}: {source})"
    )]
    NoVersion {
        /// Our epoch.
        epoch: u32,
        /// The base id.
        base_id: u64,
        /// The file read.
        path: String,
        /// The read error.
        source: std::io::Error,
    },
    /// Any other socket error.
    #[error("hot restart: {0}")]
    Io(#[from] std::io::Error),
    /// The parent answered nonsense.
    #[error("hot restart: unexpected reply from the parent to {0}")]
    Protocol(&'static str),
}

/// The hot-restart part of the command line.
#[derive(Debug, Clone)]
pub struct HotRestartConfig {
    /// `--restart-epoch`.
    pub epoch: u32,
    /// `--base-id` (or the dynamic one chosen).
    pub base_id: u64,
    /// `--socket-path`: a path, or `@name` for Linux's abstract namespace.
    pub socket_path: String,
    /// `--socket-mode` for path sockets.
    pub socket_mode: u32,
    /// `--parent-shutdown-time-s`.
    pub parent_shutdown_time: Duration,
}

impl HotRestartConfig {
    /// The configuration from the options; `None` under `--disable-hot-restart`.
    pub fn from_options(options: &Options) -> Result<Option<HotRestartConfig>, HotRestartError> {
        if options.disable_hot_restart {
            if options.restart_epoch > 0 {
                return Err(HotRestartError::Disabled(options.restart_epoch));
            }
            return Ok(None);
        }
        Ok(Some(HotRestartConfig {
            epoch: options.restart_epoch,
            base_id: options.base_id.unwrap_or(0),
            socket_path: options.socket_path.clone(),
            socket_mode: options.socket_mode,
            parent_shutdown_time: Duration::from_secs(options.parent_shutdown_time_s),
        }))
    }

    /// The socket name of `role` ("parent" or "child") for `epoch` (Envoy's
    /// `createDomainSocketAddress`: at most three generations' names in use).
    pub fn socket_name(&self, role: &str, epoch: u32) -> String {
        format!(
            "{}_{role}_{}",
            self.socket_path,
            self.base_id.saturating_mul(10) + u64::from(epoch % 3)
        )
    }

    /// The file holding the running generation's version.
    pub fn version_file(&self) -> PathBuf {
        PathBuf::from(format!("/dev/shm/courier_hot_restart_{}", self.base_id))
    }
}

/// A std Unix socket address for a name (`@…`: abstract).
pub fn unix_addr(name: &str) -> std::io::Result<UnixAddr> {
    use std::os::linux::net::SocketAddrExt;
    match name.strip_prefix('@') {
        Some(abstract_name) => UnixAddr::from_abstract_name(abstract_name.as_bytes()),
        None => UnixAddr::from_pathname(name),
    }
}

/// Binds a datagram socket at `name` (a stale path socket is removed first, as Envoy does;
/// an abstract name in use is an error). `mode` applies to path sockets.
pub fn bind_datagram(
    name: &str,
    base_id: u64,
    mode: u32,
) -> Result<std::os::unix::net::UnixDatagram, HotRestartError> {
    let bind_err = |source| HotRestartError::Bind {
        name: name.to_string(),
        base_id,
        source,
    };
    let addr = unix_addr(name).map_err(bind_err)?;
    if !name.starts_with('@') {
        let _ = std::fs::remove_file(name);
    }
    let socket = std::os::unix::net::UnixDatagram::bind_addr(&addr).map_err(bind_err)?;
    if !name.starts_with('@') {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(name, std::fs::Permissions::from_mode(mode)).map_err(bind_err)?;
    }
    Ok(socket)
}

/// Writes this generation's version for the next one to check (epoch 0 creates it).
pub fn publish_version(config: &HotRestartConfig) {
    if let Err(e) = std::fs::write(config.version_file(), HOT_RESTART_VERSION) {
        tracing::warn!(path = %config.version_file().display(), error = %e, "cannot record the hot restart version");
    }
}

/// Removes the version a last generation published, as it exits.
pub fn unpublish_version(config: &HotRestartConfig) {
    let path = config.version_file();
    if let Err(e) = std::fs::remove_file(&path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove the hot restart version");
        }
    }
}

/// Checks that the running generation speaks our version (a child, before anything else).
pub fn check_version(config: &HotRestartConfig) -> Result<(), HotRestartError> {
    let path = config.version_file();
    let theirs = std::fs::read_to_string(&path).map_err(|source| HotRestartError::NoVersion {
        epoch: config.epoch,
        base_id: config.base_id,
        path: path.display().to_string(),
        source,
    })?;
    if theirs.trim() != HOT_RESTART_VERSION {
        return Err(HotRestartError::VersionMismatch {
            base_id: config.base_id,
            theirs: theirs.trim().to_string(),
            ours: HOT_RESTART_VERSION,
        });
    }
    Ok(())
}

/// Parses Envoy's `tcp://ip:port` listen socket address.
pub fn parse_tcp_url(url: &str) -> Option<std::net::SocketAddr> {
    url.strip_prefix("tcp://").unwrap_or(url).parse().ok()
}
