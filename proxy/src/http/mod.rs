//! HTTP on the workers, by layer (see ARCHITECTURE.md at the repository root):
//!
//! - [`codec`]: bytes ⇄ messages. Courier's HTTP/1.1 server ([`codec::h1_server`], parser
//!   [`codec::downstream_h1`]) and client ([`codec::upstream_h1`]) on a shared head parser
//!   ([`codec::h1_head`]), hyper's HTTP/2 watched by [`codec::h2_settings`], and the
//!   [`codec::body`] that flows through the proxy. A codec is given a service and never
//!   imports the layers above it.
//! - [`conn_manager`]: the HTTP connection manager (Envoy's `http_connection_manager`): its
//!   compiled [`conn_manager::config`], the downstream [`conn_manager::connection`]
//!   (protocol detection, drain), one request's path through checks, sanitation, the HTTP
//!   filters and route selection ([`conn_manager::serve`]), local replies
//!   ([`conn_manager::local_reply`]), forwarded headers and internal addresses, stream idle
//!   timers, upgrades and tunnels, and the access log.
//! - [`router`]: the router filter: forwarding with attempts, retries, timeouts and
//!   mirrors ([`router::shadow`]), one upstream attempt ([`router::upstream_request`]), the
//!   per-worker HTTP connection pools ([`router::pool`], kept and drained by the worker's
//!   `ThreadLocalClusterManager`) and retry buffers.
//! - [`route`]: route tables compiled from `RouteConfiguration`s (inline or RDS) with their
//!   matchers, hash policies, header mutations, mirror policies and opaque per-filter
//!   configs ([`route::per_filter`]); [`route::rds`] is the RDS route provider's worker side.
//! - [`request_stats`]: the upstream request stats a cluster, a route and a virtual cluster
//!   keep.
//!
//! The HTTP filters live in `crate::filters::http`, one folder each; the protocol options
//! both sides configure in `crate::protocol`. Known differences from Envoy, and what is
//! not supported yet, are listed in `integration-tests/DIFFERENCES.md`.

pub mod codec;
pub mod conn_manager;
pub mod request_stats;
pub mod route;
pub mod router;

pub use conn_manager::config::{HcmConfig, RdsSubscription, HTTP_CONNECTION_MANAGER};
