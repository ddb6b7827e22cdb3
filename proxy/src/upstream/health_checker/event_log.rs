//! Health check events (`event_log_path`, the file event sink): one JSON
//! `envoy.data.core.v3.HealthCheckEvent` per line, as Envoy writes them.

use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use courier_proto::envoy::config::core::v3::{
    address, socket_address, Address, Locality, SocketAddress,
};
use courier_proto::envoy::data::core::v3::{
    health_check_event::Event, HealthCheckAddHealthy, HealthCheckEjectUnhealthy, HealthCheckEvent,
    HealthCheckFailure, HealthCheckSuccessful, HealthCheckerType,
};

use super::FailureKind;

/// An open event log file.
#[derive(Debug)]
pub struct EventLog {
    // Only the main thread writes; the mutex makes the compiled cluster `Sync`.
    file: Mutex<File>,
}

/// What happened to a host.
#[derive(Debug, Clone, Copy)]
pub enum HostEvent {
    /// It failed and is now failing.
    EjectUnhealthy(FailureKind, u16),
    /// It passed and is now healthy (`first_check`: on its first check).
    AddHealthy(bool),
    /// A check failed (logged on a first check, or with `always_log_health_check_failures`).
    Failure(FailureKind, bool, u16),
    /// A check passed (with `always_log_health_check_success`).
    Success,
}

impl EventLog {
    /// Opens (appends to) `path`.
    pub fn open(path: &str) -> std::io::Result<Arc<EventLog>> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Arc::new(EventLog {
            file: Mutex::new(file),
        }))
    }

    /// Writes one event about `host` of `cluster`.
    pub fn log(&self, checker: &str, cluster: &str, host: SocketAddr, event: HostEvent) {
        let failure_type = |k: FailureKind| match k {
            FailureKind::Active => 0,
            FailureKind::Network => 2,
            FailureKind::Timeout => 3,
        };
        let event = match event {
            HostEvent::EjectUnhealthy(k, status) => {
                Event::EjectUnhealthyEvent(HealthCheckEjectUnhealthy {
                    failure_type: failure_type(k),
                    http_status_code: u32::from(status),
                })
            }
            HostEvent::AddHealthy(first_check) => {
                Event::AddHealthyEvent(HealthCheckAddHealthy { first_check })
            }
            HostEvent::Failure(k, first_check, status) => {
                Event::HealthCheckFailureEvent(HealthCheckFailure {
                    failure_type: failure_type(k),
                    first_check,
                    http_status_code: u32::from(status),
                })
            }
            HostEvent::Success => Event::SuccessfulHealthCheckEvent(HealthCheckSuccessful {}),
        };
        let checker_type = match checker {
            "HTTP" => HealthCheckerType::Http,
            "GRPC" => HealthCheckerType::Grpc,
            _ => HealthCheckerType::Tcp,
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let msg = HealthCheckEvent {
            health_checker_type: checker_type as i32,
            host: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: host.ip().to_string(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                        host.port(),
                    ))),
                    ..Default::default()
                })),
            }),
            cluster_name: cluster.to_string(),
            timestamp: Some(courier_proto::google::protobuf::Timestamp {
                seconds: now.as_secs() as i64,
                nanos: now.subsec_nanos() as i32,
            }),
            metadata: None,
            locality: Some(Locality::default()),
            event: Some(event),
        };
        // Envoy writes every field, defaults included.
        let mut line = courier_proto::to_json_with_defaults(&msg).to_string();
        line.push('\n');
        let Ok(mut file) = self.file.lock() else {
            return;
        };
        if let Err(e) = file.write_all(line.as_bytes()) {
            tracing::warn!(error = %e, "cannot write a health check event");
        }
    }
}
