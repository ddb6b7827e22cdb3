//! Scaled timers: the `envoy.overload_actions.reduce_timeouts` action (Envoy's
//! `ScaledRangeTimerManager`). A scaled timer armed for `max` fires after
//! `min + (max - min) * (1 - state)`, `state` being the action's, and `min` the timer
//! type's `min_timeout` (capped at `max`) or `min_scale` of `max`. A timer type the action
//! does not list is not scaled.
//!
//! As in Envoy, a timer already armed follows the scale as it changes: Envoy keeps its
//! timers in queues whose deadlines it recomputes on every change. Courier's timers are
//! deadlines computed from a start (the connection's, its last activity) and the scaled
//! duration whenever they are looked at, so they need only be looked at again when the
//! scale changes: each worker keeps the wakers of its armed scaled timers
//! ([`ScaleWatch`]) and wakes them when the state it was published changes. Nothing is
//! registered unless the action is configured.

use std::cell::{Cell, RefCell};
use std::sync::OnceLock;
use std::task::Waker;
use std::time::Duration;

use courier_proto::envoy::config::overload::v3::scale_timers_overload_action_config::{
    scale_timer::OverloadAdjust, TimerType as ProtoTimer,
};
use courier_proto::envoy::config::overload::v3::ScaleTimersOverloadActionConfig;

use crate::config::ConfigError;

/// The timers Courier scales (Envoy's `ScaledTimerType`s it has).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerType {
    /// `HTTP_DOWNSTREAM_CONNECTION_IDLE`: the connection manager's `idle_timeout`.
    ConnectionIdle = 0,
    /// `HTTP_DOWNSTREAM_STREAM_IDLE`: `stream_idle_timeout` and a route's `idle_timeout`.
    StreamIdle = 1,
    /// `TRANSPORT_SOCKET_CONNECT`: a filter chain's `transport_socket_connect_timeout`.
    TransportSocketConnect = 2,
    /// `HTTP_DOWNSTREAM_CONNECTION_MAX`: the connection manager's
    /// `max_connection_duration`.
    ConnectionMax = 3,
}

/// A timer type's least duration under full pressure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Minimum {
    /// `min_timeout`: an absolute duration.
    Absolute(Duration),
    /// `min_scale`: a share of the timer's duration, in `[0, 1]`.
    Scaled(f64),
}

/// The minimums of the timer types the action scales (`None`: not scaled).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TimerMinimums([Option<Minimum>; 4]);

impl TimerMinimums {
    fn get(&self, t: TimerType) -> Option<Minimum> {
        self.0[t as usize]
    }
}

/// Compiles the action's `typed_config` at `path` (a `ScaleTimersOverloadActionConfig`).
pub fn compile(
    config: &ScaleTimersOverloadActionConfig,
    path: &str,
) -> Result<TimerMinimums, ConfigError> {
    if config.timer_scale_factors.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.timer_scale_factors"),
            "value must contain at least 1 item(s)",
        ));
    }
    let mut out = TimerMinimums::default();
    for (i, t) in config.timer_scale_factors.iter().enumerate() {
        let at = format!("{path}.timer_scale_factors[{i}]");
        let kind = match ProtoTimer::try_from(t.timer) {
            Ok(ProtoTimer::HttpDownstreamConnectionIdle) => TimerType::ConnectionIdle,
            Ok(ProtoTimer::HttpDownstreamStreamIdle) => TimerType::StreamIdle,
            Ok(ProtoTimer::TransportSocketConnect) => TimerType::TransportSocketConnect,
            Ok(ProtoTimer::HttpDownstreamConnectionMax) => TimerType::ConnectionMax,
            // Courier has no stream flush timeout to scale.
            Ok(ProtoTimer::HttpDownstreamStreamFlush) => {
                return Err(ConfigError::unsupported(format!(
                    "{at}.timer (HTTP_DOWNSTREAM_STREAM_FLUSH)"
                )))
            }
            Ok(ProtoTimer::Unspecified) | Err(_) => {
                return Err(ConfigError::new(
                    format!("{at}.timer"),
                    "value must be a defined enum value other than UNSPECIFIED",
                ))
            }
        };
        let min = match &t.overload_adjust {
            Some(OverloadAdjust::MinTimeout(d)) => {
                Minimum::Absolute(crate::config::duration(d, &format!("{at}.min_timeout"))?)
            }
            Some(OverloadAdjust::MinScale(p)) => {
                if !(0.0..=100.0).contains(&p.value) {
                    return Err(ConfigError::new(
                        format!("{at}.min_scale.value"),
                        "value must be inside range [0, 100]",
                    ));
                }
                Minimum::Scaled(p.value / 100.0)
            }
            None => {
                return Err(ConfigError::new(
                    format!("{at}.overload_adjust"),
                    "is required (min_timeout or min_scale)",
                ))
            }
        };
        let slot = &mut out.0[kind as usize];
        if slot.is_some() {
            return Err(ConfigError::new(
                format!("{at}.timer"),
                format!(
                    "Found duplicate entry for timer type {}",
                    ProtoTimer::try_from(t.timer)
                        .map(|t| t.as_str_name())
                        .unwrap_or("?")
                ),
            ));
        }
        *slot = Some(min);
    }
    Ok(out)
}

/// The process's minimums, set once by the overload manager before any worker accepts.
static MINIMUMS: OnceLock<TimerMinimums> = OnceLock::new();

/// Sets the timer minimums (the main thread, at start-up).
pub fn configure(minimums: TimerMinimums) {
    let _ = MINIMUMS.set(minimums);
}

/// Whether `reduce_timeouts` scales timers of type `t`.
#[inline]
pub fn scales(t: TimerType) -> bool {
    MINIMUMS.get().is_some_and(|m| m.get(t).is_some())
}

/// The duration a timer of type `t` armed for `max` runs for now.
#[inline]
pub fn scaled(t: TimerType, max: Duration) -> Duration {
    let Some(min) = MINIMUMS.get().and_then(|m| m.get(t)) else {
        return max;
    };
    scale(min, max, super::states::states().reduce_timeouts)
}

/// Envoy's range: the minimum (capped at `max`), plus what lies above it shrunk by the
/// action's `state`.
fn scale(min: Minimum, max: Duration, state: f64) -> Duration {
    if state <= 0.0 {
        return max;
    }
    let min = match min {
        Minimum::Absolute(d) => d,
        Minimum::Scaled(share) => max.mul_f64(share),
    }
    .min(max);
    min + (max - min).mul_f64((1.0 - state).clamp(0.0, 1.0))
}

/// This worker's armed scaled timers: slots of wakers, and the free slots' indexes.
#[derive(Default)]
struct Watchers {
    wakers: Vec<Option<Waker>>,
    free: Vec<usize>,
}

thread_local! {
    static WATCHERS: RefCell<Watchers> = RefCell::new(Watchers::default());
    /// Bumped each time this worker's scale changes.
    static GENERATION: Cell<u64> = const { Cell::new(0) };
}

/// The scale changed on this worker: every armed scaled timer is looked at again.
pub(super) fn on_scale_change() {
    GENERATION.with(|g| g.set(g.get() + 1));
    let wakers: Vec<Waker> =
        WATCHERS.with(|w| w.borrow().wakers.iter().flatten().cloned().collect());
    for w in wakers {
        w.wake();
    }
}

/// How many times this worker's scale has changed.
#[inline]
pub fn generation() -> u64 {
    GENERATION.with(Cell::get)
}

/// A scaled timer's registration with its worker: its waker is woken when the scale
/// changes. Removed on drop.
pub struct ScaleWatch {
    slot: usize,
}

impl ScaleWatch {
    /// Registers `waker` (a no-op returning `None` when `t` is not scaled).
    pub fn register(t: TimerType, waker: &Waker) -> Option<ScaleWatch> {
        if !scales(t) {
            return None;
        }
        WATCHERS.with(|w| {
            let mut w = w.borrow_mut();
            let slot = match w.free.pop() {
                Some(s) => {
                    w.wakers[s] = Some(waker.clone());
                    s
                }
                None => {
                    w.wakers.push(Some(waker.clone()));
                    w.wakers.len() - 1
                }
            };
            Some(ScaleWatch { slot })
        })
    }

    /// Keeps the registered waker current (the task polling the timer may change).
    pub fn update(&self, waker: &Waker) {
        WATCHERS.with(|w| {
            let mut w = w.borrow_mut();
            if let Some(Some(old)) = w.wakers.get_mut(self.slot) {
                if !old.will_wake(waker) {
                    *old = waker.clone();
                }
            }
        });
    }
}

impl Drop for ScaleWatch {
    fn drop(&mut self) {
        let _ = WATCHERS.try_with(|w| {
            let mut w = w.borrow_mut();
            if let Some(s) = w.wakers.get_mut(self.slot) {
                if s.take().is_some() {
                    w.free.push(self.slot);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scaled_timer_runs_between_its_minimum_and_its_maximum_as_envoys() {
        let max = Duration::from_secs(10);
        let abs = Minimum::Absolute(Duration::from_secs(2));
        assert_eq!(scale(abs, max, 0.0), max);
        assert_eq!(scale(abs, max, 1.0), Duration::from_secs(2));
        assert_eq!(scale(abs, max, 0.5), Duration::from_secs(6));
        // A minimum above the maximum is the maximum.
        assert_eq!(
            scale(Minimum::Absolute(Duration::from_secs(20)), max, 1.0),
            max
        );
        assert_eq!(
            scale(Minimum::Scaled(0.2), max, 1.0),
            Duration::from_secs(2)
        );
        assert_eq!(
            scale(Minimum::Scaled(0.2), max, 0.25),
            Duration::from_secs(8)
        );
    }

    #[test]
    fn watchers_are_woken_on_a_change_and_forgotten_on_drop() {
        let _ = MINIMUMS.set(TimerMinimums([Some(Minimum::Scaled(0.0)); 4]));
        let woken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        struct Count(std::sync::Arc<std::sync::atomic::AtomicUsize>);
        impl std::task::Wake for Count {
            fn wake(self: std::sync::Arc<Self>) {
                self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let waker = Waker::from(std::sync::Arc::new(Count(woken.clone())));
        let a = ScaleWatch::register(TimerType::StreamIdle, &waker).expect("scaled");
        let b = ScaleWatch::register(TimerType::StreamIdle, &waker).expect("scaled");
        let before = generation();
        on_scale_change();
        assert_eq!(woken.load(std::sync::atomic::Ordering::Relaxed), 2);
        assert_eq!(generation(), before + 1);
        drop(a);
        on_scale_change();
        assert_eq!(woken.load(std::sync::atomic::Ordering::Relaxed), 3);
        drop(b);
        WATCHERS.with(|w| assert_eq!(w.borrow().free.len(), 2));
    }
}
