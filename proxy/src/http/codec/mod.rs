//! HTTP codecs: Courier's own HTTP/1.1 server ([`h1_server`], parsing in
//! [`downstream_h1`], Envoy's checks on a request's fields in [`request_fields`], refusals
//! in [`codec_error`]) and client ([`upstream_h1`]) on a shared head parser ([`h1_head`]),
//! hyper's HTTP/2 watched by [`h2_settings`] (upstream) and [`h2_head_watch`] (downstream), and the
//! [`body`] that flows through the proxy. A codec is given a service ([`h1_server::H1Service`])
//! and never imports the connection manager, the router or a filter.

pub mod body;
pub mod codec_error;
pub mod downstream_body;
pub mod downstream_h1;
pub mod fields;
pub mod h1_head;
pub mod h1_server;
pub mod h2_head_watch;
pub mod h2_settings;
pub mod handoff;
pub mod header_map_pool;
pub mod request_fields;
pub mod upstream_h1;
