//! Listeners: compiled listener configs, the sockets every worker accepts on, and the main
//! thread's listener manager (add, update in place or by generation, drain, remove).

pub mod accept_backoff;
mod active_tcp_listener;
mod config;
pub mod filter_chain_match;
pub mod filter_chain_matcher;
pub mod http_inspector;
pub mod listener_filters;
mod manager;
mod new_connection;
pub mod original_dst;
pub mod proxy_protocol;
mod socket;
mod socket_options;
pub mod tls_inspector;

pub use active_tcp_listener::ActiveTcpListener;
pub use config::{compile_listener, FilterChain, ListenerConfig, ListenerStats, RdsNeed};
pub use manager::{ListenerEntry, ListenerManager};
pub use new_connection::AcceptedConnection;
pub use socket::{local_addr, peer_addr};
