//! Outlier detection (Envoy's `DetectorImpl`): passive health from real traffic.

/// A host's outlier counters, written by every worker that sends it requests.
#[derive(Debug, Default)]
pub struct HostMonitor {}
