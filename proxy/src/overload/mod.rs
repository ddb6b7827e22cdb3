//! The overload manager (bootstrap `overload_manager`): resource monitors, and the actions
//! the proxy takes as resources run short.
//!
//! - Reactive monitors (`monitors.rs`: `injected_resource`, `fixed_heap`,
//!   `cgroup_memory`) are read on the main thread every `refresh_interval` (1 s by
//!   default); each action's state is the highest of its triggers' (`actions.rs`), and
//!   the states the workers act on are published to them through a slot when they
//!   change. Stats as Envoy's: `overload.<monitor>.pressure` (percent),
//!   `failed_updates`, `overload.<action>.active` and `scale_percent`.
//! - `reduce_timeouts` ([`scaled_timers`]) scales the downstream timers Courier has
//!   (connection idle, stream idle, TLS handshake, max connection duration) as Envoy's
//!   `ScaledRangeTimerManager` does; its state reaches the workers with the others, and
//!   a worker wakes its armed scaled timers when it changes.
//! - Load shed points ([`load_shed`], `loadshed_points`): states computed like actions'
//!   and published with them; workers check them at accept, at codec creation, on
//!   HTTP/1 and HTTP/2 dispatch and at request headers. Stats as Envoy's:
//!   `overload.<point>.scale_percent` and `shed_load_count`.
//! - The `envoy.resource_monitors.global_downstream_max_connections` monitor is a
//!   proactive limit checked by every worker as it accepts ([`connection_limit`]);
//!   without it, the runtime key `overload.global_downstream_max_connections`, as in
//!   Envoy, and else — where Envoy has no limit — a default derived from the
//!   file-descriptor limit, so that a connection flood is refused cleanly
//!   (`downstream_global_cx_overflow`) before descriptors run out for upstreams and the
//!   admin. A listener with `ignore_global_conn_limit` is exempt.
//!
//! Not built yet, refused by path: the `reset_high_memory_stream` action and
//! `buffer_factory_config` (they need per-stream buffer accounting), the
//! `HTTP_DOWNSTREAM_STREAM_FLUSH` timer, and the load shed points Courier has no code path
//! for (`connection_pool_new_connection`, HTTP/2's go-away-and-close, the downstream
//! filter check, HTTP/3's).

pub mod actions;
pub mod connection_limit;
pub mod load_shed;
mod monitors;
pub mod scaled_timers;
pub mod states;

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_proto::envoy::config::overload::v3::resource_monitor::ConfigType;
use courier_proto::envoy::config::overload::v3::OverloadManager as OverloadManagerProto;
use courier_runtime::thread_local::Slot;

use crate::config::ConfigError;
use crate::stats::{Counter, Gauge, Store, MAIN_THREAD};
use actions::{Action, ActionKind, ActionStates};
use connection_limit::LimitSource;
use monitors::{Monitor, RESOURCE_MONITORS};

/// The name the downstream-connections monitor must have (Envoy's proactive resource).
pub const GLOBAL_DOWNSTREAM_MAX_CONNECTIONS: &str =
    "envoy.resource_monitors.global_downstream_max_connections";

/// How often free heap is given back while `shrink_heap` is active (Envoy's period).
const SHRINK_HEAP_EVERY: Duration = Duration::from_secs(10);

/// The bootstrap's `overload_manager`, compiled.
#[derive(Debug, Clone)]
pub struct OverloadConfig {
    /// Where the global connection limit comes from.
    pub connection_limit: LimitSource,
    refresh_interval: Duration,
    monitors: Vec<(String, Monitor)>,
    actions: Vec<Action>,
    points: Vec<load_shed::LoadShedPoint>,
}

/// Compiles the bootstrap's `overload_manager` (checked as Envoy checks it; what is not
/// built is refused by path). `nofile` is the descriptor limit the default connection
/// limit comes from.
pub fn compile(
    om: Option<&OverloadManagerProto>,
    nofile: u64,
) -> Result<OverloadConfig, ConfigError> {
    let default = LimitSource::RuntimeOrDefault(connection_limit::default_from_fd_limit(nofile));
    let mut config = OverloadConfig {
        connection_limit: default,
        refresh_interval: Duration::from_secs(1),
        monitors: Vec::new(),
        actions: Vec::new(),
        points: Vec::new(),
    };
    let Some(om) = om else {
        return Ok(config);
    };
    // Per-stream buffer accounting (`reset_high_memory_stream`'s) is not built.
    if om.buffer_factory_config.is_some() {
        return Err(ConfigError::unsupported(
            "overload_manager.buffer_factory_config",
        ));
    }
    if let Some(r) = &om.refresh_interval {
        config.refresh_interval = crate::config::duration(r, "overload_manager.refresh_interval")?
            .max(Duration::from_millis(1));
    }
    for (i, m) in om.resource_monitors.iter().enumerate() {
        let path = format!("overload_manager.resource_monitors[{i}]");
        if config.monitors.iter().any(|(n, _)| *n == m.name) {
            return Err(ConfigError::new(
                format!("{path}.name"),
                format!("Duplicate resource monitor {}", m.name),
            ));
        }
        let typed = m
            .config_type
            .as_ref()
            .map(|ConfigType::TypedConfig(any)| any);
        let Some(found) = RESOURCE_MONITORS.resolve(typed, &m.name, false, &path)? else {
            continue;
        };
        let any = found.config.unwrap_or_default();
        let monitor = (found.factory.build)(&any).map_err(|e| e.at(&path))?;
        if let Monitor::DownstreamConnections(max) = monitor {
            if m.name != GLOBAL_DOWNSTREAM_MAX_CONNECTIONS {
                return Err(ConfigError::new(
                    format!("{path}.name"),
                    format!(
                        "the downstream connections monitor must be named {GLOBAL_DOWNSTREAM_MAX_CONNECTIONS}, not {}",
                        m.name
                    ),
                ));
            }
            config.connection_limit = LimitSource::Monitor(max);
        }
        config.monitors.push((m.name.clone(), monitor));
    }
    for (i, a) in om.actions.iter().enumerate() {
        let path = format!("overload_manager.actions[{i}]");
        if config.actions.iter().any(|x| x.name == a.name) {
            return Err(ConfigError::new(
                format!("{path}.name"),
                format!("Duplicate overload action {}", a.name),
            ));
        }
        let monitors = &config.monitors;
        let find = |name: &str| reactive_monitor(monitors, name);
        config.actions.push(actions::compile(a, &path, &find)?);
    }
    for (i, p) in om.loadshed_points.iter().enumerate() {
        let path = format!("overload_manager.loadshed_points[{i}]");
        if config.points.iter().any(|x| x.name == p.name) {
            return Err(ConfigError::new(
                format!("{path}.name"),
                format!("Duplicate loadshed point {}", p.name),
            ));
        }
        let monitors = &config.monitors;
        let find = |name: &str| reactive_monitor(monitors, name);
        config.points.push(load_shed::compile(p, &path, &find)?);
    }
    Ok(config)
}

/// The place of monitor `name` among `monitors`, for a trigger: `Err` when it is a
/// proactive resource (which triggers nothing), `None` when there is no such monitor.
fn reactive_monitor(monitors: &[(String, Monitor)], name: &str) -> Option<Result<usize, ()>> {
    let i = monitors.iter().position(|(n, _)| n == name)?;
    Some(if monitors[i].1.is_proactive() {
        Err(())
    } else {
        Ok(i)
    })
}

struct MonitorStats {
    pressure: Arc<Gauge>,
    failed_updates: Arc<Counter>,
}

struct ActionStats {
    active: Arc<Gauge>,
    scale_percent: Arc<Gauge>,
}

/// The main thread's overload manager: reads the monitors, computes the actions' states,
/// publishes what workers act on.
pub struct OverloadManager {
    config: OverloadConfig,
    slot: Slot<ActionStates>,
    tls: Arc<crate::worker::ThreadLocal>,
    monitor_stats: Vec<Option<MonitorStats>>,
    action_stats: Vec<ActionStats>,
    /// Each load shed point's `scale_percent`.
    point_stats: Vec<Arc<Gauge>>,
}

impl OverloadManager {
    /// Sets the connection limit and starts the refresh loop (when a reactive monitor
    /// is configured).
    pub fn start(
        config: OverloadConfig,
        store: &Store,
        slot: Slot<ActionStates>,
        tls: Arc<crate::worker::ThreadLocal>,
    ) {
        connection_limit::configure(config.connection_limit);
        slot.set(Arc::new(ActionStates::default()));
        let monitor_stats = config
            .monitors
            .iter()
            .map(|(name, m)| {
                (!m.is_proactive()).then(|| MonitorStats {
                    pressure: store.gauge(&format!("overload.{name}.pressure")),
                    failed_updates: store.counter(&format!("overload.{name}.failed_updates")),
                })
            })
            .collect();
        let action_stats = config
            .actions
            .iter()
            .map(|a| ActionStats {
                active: store.gauge(&format!("overload.{}.active", a.name)),
                scale_percent: store.gauge(&format!("overload.{}.scale_percent", a.name)),
            })
            .collect();
        // Envoy makes `shed_load_count` for every point, checked or not.
        let mut counters: [Option<Arc<Counter>>; load_shed::POINTS] = Default::default();
        let point_stats = config
            .points
            .iter()
            .map(|p| {
                let count = store.counter(&format!("overload.{}.shed_load_count", p.name));
                if let Some(point) = p.point {
                    counters[point as usize] = Some(count);
                }
                store.gauge(&format!("overload.{}.scale_percent", p.name))
            })
            .collect();
        load_shed::configure(counters);
        if let Some(minimums) = config.actions.iter().find_map(|a| a.timer_minimums) {
            scaled_timers::configure(minimums);
        }
        if config.actions.is_empty() && config.points.is_empty() {
            return;
        }
        let manager = Rc::new(OverloadManager {
            config,
            slot,
            tls,
            monitor_stats,
            action_stats,
            point_stats,
        });
        tokio::task::spawn_local(async move {
            let mut published = ActionStates::default();
            let mut last_shrink: Option<Instant> = None;
            let mut pressures: Vec<Option<f64>> = vec![None; manager.config.monitors.len()];
            loop {
                let gauges = manager.refresh(&mut pressures, &mut published, &mut last_shrink);
                if let Some(gauges) = gauges {
                    // The action gauges say what the workers do: set once every worker
                    // has the new states.
                    manager.tls.run_on_all_workers_async(|_| {}).await;
                    gauges();
                }
                tokio::time::sleep(manager.config.refresh_interval).await;
            }
        });
    }

    /// One refresh: the monitors read (a failed read keeps the last pressure, counted),
    /// every action's state, the workers' states published if changed.
    /// Returns, when the workers' states changed, the setting of the action gauges to
    /// run once the workers have them (else they are set here).
    fn refresh(
        &self,
        pressures: &mut [Option<f64>],
        published: &mut ActionStates,
        last_shrink: &mut Option<Instant>,
    ) -> Option<impl FnOnce() + use<>> {
        for (i, (name, monitor)) in self.config.monitors.iter().enumerate() {
            let Some(stats) = &self.monitor_stats[i] else {
                continue;
            };
            match monitor.pressure() {
                Ok(p) => {
                    pressures[i] = Some(p);
                    stats.pressure.set((p * 100.0) as i64);
                }
                Err(e) => {
                    stats.failed_updates.inc(MAIN_THREAD);
                    tracing::debug!(monitor = %name, error = %e, "resource monitor update failed");
                }
            }
        }
        let mut states = ActionStates::default();
        let mut gauges: Vec<(Arc<Gauge>, i64)> = Vec::new();
        for (action, stats) in self.config.actions.iter().zip(&self.action_stats) {
            let state = action
                .triggers
                .iter()
                .filter_map(|t| pressures[t.monitor].map(|p| t.state(p)))
                .fold(0.0, f64::max);
            gauges.push((stats.active.clone(), i64::from(state >= 1.0)));
            gauges.push((stats.scale_percent.clone(), (state * 100.0) as i64));
            match action.kind {
                ActionKind::StopAcceptingRequests => states.stop_accepting_requests = state,
                ActionKind::DisableHttpKeepalive => states.disable_http_keepalive = state,
                ActionKind::StopAcceptingConnections => states.stop_accepting_connections = state,
                ActionKind::RejectIncomingConnections => states.reject_incoming_connections = state,
                ActionKind::ReduceTimeouts => states.reduce_timeouts = state,
                ActionKind::ShrinkHeap => {
                    let due = last_shrink.is_none_or(|t| t.elapsed() >= SHRINK_HEAP_EVERY);
                    if state >= 1.0 && due {
                        crate::memory::release_free_heap();
                        *last_shrink = Some(Instant::now());
                    }
                }
            }
        }
        for (p, gauge) in self.config.points.iter().zip(&self.point_stats) {
            let state = p
                .triggers
                .iter()
                .filter_map(|t| pressures[t.monitor].map(|v| t.state(v)))
                .fold(0.0, f64::max);
            if let Some(point) = p.point {
                states.points[point as usize] = state;
            }
            gauges.push((gauge.clone(), (state * 100.0) as i64));
        }
        let set_gauges = move || {
            for (gauge, value) in gauges {
                gauge.set(value);
            }
        };
        if states != *published {
            tracing::info!(?states, "overload action states changed");
            *published = states;
            self.slot.set(Arc::new(states));
            return Some(set_gauges);
        }
        set_gauges();
        None
    }
}
