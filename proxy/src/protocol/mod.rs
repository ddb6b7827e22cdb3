//! HTTP protocol options and facts (gRPC's, [`grpc`]), as both sides configure them: a connection manager for its
//! downstream codecs and a cluster for its upstream ones (`http2_protocol_options`, the
//! HTTP/1 `header_key_format`, header and stream limits). Config only, below the codecs
//! and the clusters that use it.

pub mod cookie;
pub mod grpc;
pub mod grpc_frame;
pub mod h2_options;
pub mod header_case;
pub mod header_mutations;
pub mod key_format;
pub mod message;
pub mod stream_limits;
