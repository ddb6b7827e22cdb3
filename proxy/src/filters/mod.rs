//! Filters: network (L4) filters on listener filter chains, and HTTP filters inside the
//! HTTP connection manager.

pub mod http;
pub mod network;
pub mod token_bucket;
