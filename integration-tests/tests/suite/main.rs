//! The integration suite: the bundled control plane drives a proxy (`courier`, or Envoy with
//! `PROXY_UNDER_TEST=envoy`) through dynamic add, update and remove; every scenario is
//! asserted through real traffic and admin state. See `integration-tests/README.md`.

mod churn;
mod clusters;
mod endpoints;
mod fixture;
mod http;
mod listeners;
mod matrix;
mod nack;
mod on_demand;
mod pools;
mod resilience;
mod rest;
mod scripted;
mod sources;
mod xds_rtds;
mod xds_sds;
mod xds_stats;
mod xds_tls;
