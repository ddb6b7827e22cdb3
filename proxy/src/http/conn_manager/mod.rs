//! The HTTP connection manager (Envoy's `http_connection_manager`): its [`config`], the
//! downstream [`connection`] (protocol detection, HTTP/1.1 or HTTP/2, draining), the checks
//! and rewrites every request gets ([`headers`], [`internal_address`], [`early_header_mutation`], [`xff`], [`original_ip`], [`request_id`], [`client_cert`],
//! [`request_controls`]), stream idle timers ([`stream_idle`]), upgrades and tunnels
//! ([`upgrade`]); each request ends in the [`crate::access_log`]s.

pub mod client_cert;
pub mod config;
pub mod conn_info;
pub mod connection;
pub mod early_header_mutation;
pub mod headers;
pub mod internal_address;
pub mod local_reply;
pub mod original_ip;
pub mod path;
pub mod request_controls;
pub mod request_id;
pub mod serve;
pub mod service_calls;
pub mod stream_idle;
pub mod upgrade;
pub mod xff;
