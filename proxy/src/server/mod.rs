//! The process: start-up, the main thread's state, signals, draining and shutdown.
//!
//! Everything here runs on the main thread's single-threaded tokio runtime. The managers
//! live in `RefCell`s borrowed only between awaits, never across one.

mod drain;
pub mod fd_limit;
pub mod hot_restart;
mod instance;
pub mod jwks_fetch;
pub mod local_info;
pub mod stats_config;

pub use instance::{run, Server, ServerState};
