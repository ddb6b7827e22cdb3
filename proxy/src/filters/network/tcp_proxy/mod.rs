//! `envoy.filters.network.tcp_proxy`: bidirectional byte copy between the downstream
//! connection and an upstream host of a cluster.

mod config;
mod session;

pub use config::{TcpProxyConfig, TcpStats};
pub use session::{TcpProxySession, SCRATCH_SIZE};
