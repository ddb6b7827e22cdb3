//! Load shed points (the overload manager's `loadshed_points`, Envoy's `LoadShedPoint`s):
//! named places in a connection's or a request's life where, under pressure, the proxy
//! sheds it. Each point's state is the highest of its triggers' (as an action's), published
//! to the workers with the actions' ([`super::actions::ActionStates::points`]); a worker
//! sheds when [`should_shed`] draws true (always when saturated, with the state's
//! probability between). Stats as Envoy's: `overload.<point>.scale_percent` (the main
//! thread's) and `overload.<point>.shed_load_count` (each time a point shed).
//!
//! Envoy accepts any name (a point no code checks does nothing); so does Courier. The
//! points Envoy checks where Courier has no such code path (HTTP/3's, the downstream filter
//! check, HTTP/2's go-away-and-close) are refused by path.

use std::sync::{Arc, OnceLock};

use courier_proto::envoy::config::overload::v3::LoadShedPoint as LoadShedPointProto;

use super::actions::{self, Trigger};
use crate::config::ConfigError;
use crate::stats::Counter;

/// The points Courier checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// `envoy.load_shed_points.tcp_listener_accept`: a new connection is closed as it is
    /// accepted (counted in the listener's `downstream_cx_overload_reject`).
    TcpListenerAccept = 0,
    /// `envoy.load_shed_points.http_connection_manager_decode_headers`: a new request is
    /// answered `503 envoy overloaded` (`downstream_rq_overload_close`).
    HcmDecodeHeaders = 1,
    /// `envoy.load_shed_points.http1_server_abort_dispatch`: the HTTP/1 codec answers what
    /// arrives `500` and closes the connection.
    H1ServerAbortDispatch = 2,
    /// `envoy.load_shed_points.http2_server_go_away_on_dispatch`: as data arrives, an
    /// HTTP/2 connection sends a GOAWAY and drains; Envoy checks it on HTTP/1 too, whose
    /// response then says `connection: close`.
    H2ServerGoAwayOnDispatch = 3,
    /// `envoy.load_shed_points.hcm_ondata_creating_codec`: a connection is closed before
    /// its codec is created.
    HcmOndataCreatingCodec = 4,
}

/// How many points Courier checks.
pub use super::states::POINTS;

impl Point {
    fn named(name: &str) -> Option<Point> {
        Some(match name {
            "envoy.load_shed_points.tcp_listener_accept" => Point::TcpListenerAccept,
            "envoy.load_shed_points.http_connection_manager_decode_headers" => {
                Point::HcmDecodeHeaders
            }
            "envoy.load_shed_points.http1_server_abort_dispatch" => Point::H1ServerAbortDispatch,
            "envoy.load_shed_points.http2_server_go_away_on_dispatch" => {
                Point::H2ServerGoAwayOnDispatch
            }
            "envoy.load_shed_points.hcm_ondata_creating_codec" => Point::HcmOndataCreatingCodec,
            _ => return None,
        })
    }
}

/// Envoy's points Courier has no code path for.
const NOT_BUILT: &[&str] = &[
    "envoy.load_shed_points.http2_server_go_away_and_close_on_dispatch",
    "envoy.load_shed_points.http_downstream_filter_check",
    "envoy.load_shed_points.connection_pool_new_connection",
    "envoy.load_shed_points.http3_server_go_away_and_close_on_dispatch",
    "envoy.load_shed_points.http3_server_go_away_on_dispatch",
];

/// A compiled point.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadShedPoint {
    /// Its name (its stats' scope: `overload.<name>.*`).
    pub name: String,
    /// Which point workers check (`None`: a name no code checks, as in Envoy).
    pub point: Option<Point>,
    /// Its triggers; its state is the highest of theirs.
    pub triggers: Vec<Trigger>,
}

/// Compiles `point` at `path`; `monitor` finds a trigger's monitor as for actions.
pub fn compile(
    point: &LoadShedPointProto,
    path: &str,
    monitor: &dyn Fn(&str) -> Option<Result<usize, ()>>,
) -> Result<LoadShedPoint, ConfigError> {
    if point.name.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.name"),
            "value length must be at least 1 characters",
        ));
    }
    if NOT_BUILT.contains(&point.name.as_str()) {
        return Err(ConfigError::unsupported(format!(
            "{path}.name ({})",
            point.name
        )));
    }
    if point.triggers.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.triggers"),
            "value must contain at least 1 item(s)",
        ));
    }
    let mut triggers: Vec<Trigger> = Vec::new();
    for (i, t) in point.triggers.iter().enumerate() {
        let at = format!("{path}.triggers[{i}]");
        let index = match monitor(&t.name) {
            Some(Ok(index)) => index,
            // Envoy looks a point's triggers up among the reactive monitors only.
            Some(Err(())) | None => {
                return Err(ConfigError::new(
                    format!("{at}.name"),
                    format!(
                        "Unknown trigger resource {} for loadshed point {}",
                        t.name, point.name
                    ),
                ))
            }
        };
        if triggers.iter().any(|x| x.monitor == index) {
            return Err(ConfigError::new(
                format!("{at}.name"),
                format!(
                    "Duplicate trigger resource for LoadShedPoint {}",
                    point.name
                ),
            ));
        }
        triggers.push(actions::compile_trigger(t, &at, index)?);
    }
    Ok(LoadShedPoint {
        name: point.name.clone(),
        point: Point::named(&point.name),
        triggers,
    })
}

/// Each checked point's `shed_load_count` (`None`: not configured), set once at start-up.
static COUNTERS: OnceLock<[Option<Arc<Counter>>; POINTS]> = OnceLock::new();

/// Sets the configured points' counters (the main thread, at start-up).
pub fn configure(counters: [Option<Arc<Counter>>; POINTS]) {
    let _ = COUNTERS.set(counters);
}

/// Whether this worker sheds at `point` now (counted when it does).
#[inline]
pub fn should_shed(point: Point, worker: usize) -> bool {
    if super::states::quiet() {
        return false;
    }
    let state = super::states::states().points[point as usize];
    if !super::states::applies(state) {
        return false;
    }
    if let Some(Some(c)) = COUNTERS.get().map(|c| &c[point as usize]) {
        c.inc(worker);
    }
    true
}
