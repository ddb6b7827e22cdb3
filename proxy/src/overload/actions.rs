//! Overload actions: what the proxy does as resources run short, each driven by triggers
//! on monitors' pressures (Envoy's `OverloadAction`s). The main thread computes every
//! action's state in `[0, 1]`; workers read the states they act on from a per-worker copy
//! the overload manager's slot keeps current ([`ActionStates`]).

use std::sync::Arc;

use courier_proto::envoy::config::overload::v3::{trigger::TriggerOneof, OverloadAction};

use courier_proto::envoy::config::overload::v3::ScaleTimersOverloadActionConfig;

use super::scaled_timers::{self, TimerMinimums};
pub use super::states::{applies, states, ActionStates};
use crate::config::ConfigError;

/// The actions Courier takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionKind {
    /// New HTTP requests are answered `503 envoy overloaded` (a share of them while the
    /// state is between 0 and 1).
    StopAcceptingRequests,
    /// Responses end their connection (HTTP/1 `connection: close`, HTTP/2 GOAWAY).
    DisableHttpKeepalive,
    /// Listeners stop accepting (connections wait in the kernel's backlog).
    StopAcceptingConnections,
    /// New connections are closed as they are accepted.
    RejectIncomingConnections,
    /// Free heap is given back to the system every 10 s while active.
    ShrinkHeap,
    /// Timers shorten between their configured duration and a minimum
    /// ([`super::scaled_timers`]).
    ReduceTimeouts,
}

impl ActionKind {
    fn named(name: &str) -> Option<ActionKind> {
        Some(match name {
            "envoy.overload_actions.stop_accepting_requests" => ActionKind::StopAcceptingRequests,
            "envoy.overload_actions.disable_http_keepalive" => ActionKind::DisableHttpKeepalive,
            "envoy.overload_actions.stop_accepting_connections" => {
                ActionKind::StopAcceptingConnections
            }
            "envoy.overload_actions.reject_incoming_connections" => {
                ActionKind::RejectIncomingConnections
            }
            "envoy.overload_actions.shrink_heap" => ActionKind::ShrinkHeap,
            "envoy.overload_actions.reduce_timeouts" => ActionKind::ReduceTimeouts,
            _ => return None,
        })
    }
}

/// When a trigger fires.
#[derive(Debug, Clone, Copy, PartialEq)]
enum TriggerKind {
    /// Saturated at or above this pressure, else off.
    Threshold(f64),
    /// Off below `scaling`, saturated at or above `saturation`, linear between.
    Scaled { scaling: f64, saturation: f64 },
}

/// One trigger: a monitor (by index) and when it fires.
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    /// Index of the monitor in the manager's list.
    pub monitor: usize,
    kind: TriggerKind,
}

impl Trigger {
    /// The trigger's state for a pressure.
    pub fn state(&self, pressure: f64) -> f64 {
        match self.kind {
            TriggerKind::Threshold(v) => {
                if pressure >= v {
                    1.0
                } else {
                    0.0
                }
            }
            TriggerKind::Scaled {
                scaling,
                saturation,
            } => {
                // At the scaling threshold the trigger is still off, as Envoy's.
                if pressure <= scaling {
                    0.0
                } else if pressure >= saturation {
                    1.0
                } else {
                    (pressure - scaling) / (saturation - scaling)
                }
            }
        }
    }
}

/// A compiled action.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    /// Its name (its stats' scope: `overload.<name>.*`).
    pub name: String,
    /// What it does.
    pub kind: ActionKind,
    /// Its triggers; the action's state is the highest of theirs.
    pub triggers: Vec<Trigger>,
    /// `reduce_timeouts`: the timers it scales and their minimums.
    pub timer_minimums: Option<TimerMinimums>,
}

/// Compiles `action` at `path`; `monitor` finds a trigger's monitor by name (`None`:
/// unknown, `Some(Err)`: not a pressure-reporting monitor).
pub fn compile(
    action: &OverloadAction,
    path: &str,
    monitor: &dyn Fn(&str) -> Option<Result<usize, ()>>,
) -> Result<Action, ConfigError> {
    let kind = match ActionKind::named(&action.name) {
        Some(k) => k,
        None => {
            return Err(ConfigError::unsupported(format!(
                "{path}.name ({})",
                action.name
            )))
        }
    };
    let mut timer_minimums = None;
    if kind == ActionKind::ReduceTimeouts {
        let Some(any) = &action.typed_config else {
            return Err(ConfigError::new(
                format!("{path}.typed_config"),
                format!("Overload action \"{}\" requires typed_config", action.name),
            ));
        };
        let config: ScaleTimersOverloadActionConfig = courier_proto::unpack_any(any)
            .map_err(|e| ConfigError::new(format!("{path}.typed_config"), e.to_string()))?;
        timer_minimums = Some(scaled_timers::compile(
            &config,
            &format!("{path}.typed_config"),
        )?);
    } else if action.typed_config.is_some() {
        return Err(ConfigError::unsupported(format!("{path}.typed_config")));
    }
    if action.triggers.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.triggers"),
            "value must contain at least 1 item(s)",
        ));
    }
    let mut triggers = Vec::new();
    for (i, t) in action.triggers.iter().enumerate() {
        let at = format!("{path}.triggers[{i}]");
        let index = match monitor(&t.name) {
            Some(Ok(index)) => index,
            Some(Err(())) => {
                return Err(ConfigError::new(
                    format!("{at}.name"),
                    format!(
                        "{} is a proactive resource: it cannot trigger an action",
                        t.name
                    ),
                ))
            }
            None => {
                return Err(ConfigError::new(
                    format!("{at}.name"),
                    format!("Unknown trigger resource {}", t.name),
                ))
            }
        };
        triggers.push(compile_trigger(t, &at, index)?);
    }
    Ok(Action {
        name: action.name.clone(),
        kind,
        triggers,
        timer_minimums,
    })
}

/// Compiles trigger `t` (at `at`) on the monitor at `index`.
pub fn compile_trigger(
    t: &courier_proto::envoy::config::overload::v3::Trigger,
    at: &str,
    index: usize,
) -> Result<Trigger, ConfigError> {
    let kind = match &t.trigger_oneof {
        Some(TriggerOneof::Threshold(th)) => {
            if !(0.0..=1.0).contains(&th.value) {
                return Err(ConfigError::new(
                    format!("{at}.threshold.value"),
                    "value must be inside range [0, 1]",
                ));
            }
            TriggerKind::Threshold(th.value)
        }
        Some(TriggerOneof::Scaled(s)) => {
            for (field, v) in [
                ("scaling_threshold", s.scaling_threshold),
                ("saturation_threshold", s.saturation_threshold),
            ] {
                if !(0.0..=1.0).contains(&v) {
                    return Err(ConfigError::new(
                        format!("{at}.scaled.{field}"),
                        "value must be inside range [0, 1]",
                    ));
                }
            }
            if s.scaling_threshold >= s.saturation_threshold {
                return Err(ConfigError::new(
                    format!("{at}.scaled"),
                    "scaling_threshold must be less than saturation_threshold",
                ));
            }
            TriggerKind::Scaled {
                scaling: s.scaling_threshold,
                saturation: s.saturation_threshold,
            }
        }
        None => {
            return Err(ConfigError::new(
                at,
                "trigger_oneof is required (threshold or scaled)",
            ))
        }
    };
    Ok(Trigger {
        monitor: index,
        kind,
    })
}

/// The slot's apply function: each worker copies the new states (and has its armed scaled
/// timers looked at again when the timers' scale changed).
pub fn apply_on_worker(new: &Arc<ActionStates>) {
    let old = super::states::publish(**new);
    if old.reduce_timeouts != new.reduce_timeouts {
        scaled_timers::on_scale_change();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers_fire_as_envoys() {
        let t = Trigger {
            monitor: 0,
            kind: TriggerKind::Threshold(0.9),
        };
        assert_eq!((t.state(0.89), t.state(0.9)), (0.0, 1.0));
        let s = Trigger {
            monitor: 0,
            kind: TriggerKind::Scaled {
                scaling: 0.5,
                saturation: 0.9,
            },
        };
        assert_eq!(s.state(0.4), 0.0);
        assert!((s.state(0.7) - 0.5).abs() < 1e-9);
        assert_eq!(s.state(0.95), 1.0);
        assert!(!applies(0.0) && applies(1.0));
    }
}
