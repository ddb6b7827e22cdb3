//! Courier: an Envoy-compatible proxy whose configuration comes from a v3 bootstrap and any
//! xDS management server.
//!
//! Layout follows the architecture: the main thread ([`server`], [`xds`], [`admin`], the
//! managers in [`upstream`] and [`listener`]) builds immutable snapshots and publishes them
//! through `courier_runtime`'s thread-local slots to the [`worker`]s, each running its own
//! event loop (`courier_runtime::event`) with the network [`filters`].

pub mod access_log;
pub mod admin;
pub mod bootstrap;
pub mod config;
pub mod extensions;
pub mod filters;
pub mod http;
pub mod layered_runtime;
pub mod listener;
pub mod logging;
pub mod matching;
pub mod memory;
pub mod options;
pub mod overload;
pub mod protocol;
pub mod server;
pub mod stats;
pub mod tracers;
pub mod transport_socket;
pub mod upstream;
pub mod worker;
pub mod xds;

/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git revision the binary was built from (`COURIER_GIT_REV` at build time).
pub const GIT_REVISION: &str = env!("COURIER_GIT_REV");
