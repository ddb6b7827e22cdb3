//! The overload manager's states as each worker sees them: the actions' and load shed
//! points' states, copied into a thread-local by the overload slot's apply function and
//! read on every request and accept. A leaf: the actions, the load shed points and the
//! scaled timers all read it.

use std::cell::Cell;

/// How many load shed points Courier has ([`super::load_shed::Point`]).
pub const POINTS: usize = 5;

/// The states of the actions workers take, as published to them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ActionStates {
    /// `stop_accepting_requests`.
    pub stop_accepting_requests: f64,
    /// `disable_http_keepalive`.
    pub disable_http_keepalive: f64,
    /// `stop_accepting_connections` (acted on when saturated).
    pub stop_accepting_connections: f64,
    /// `reject_incoming_connections`.
    pub reject_incoming_connections: f64,
    /// `reduce_timeouts`.
    pub reduce_timeouts: f64,
    /// The load shed points' states, by [`super::load_shed::Point`] (its discriminant).
    pub points: [f64; POINTS],
}

thread_local! {
    /// This worker's copy of the states: read on every request and accept, so a plain
    /// thread-local kept by the slot's apply function.
    static STATES: Cell<ActionStates> = const { Cell::new(ActionStates {
        stop_accepting_requests: 0.0,
        disable_http_keepalive: 0.0,
        stop_accepting_connections: 0.0,
        reject_incoming_connections: 0.0,
        reduce_timeouts: 0.0,
        points: [0.0; POINTS],
    }) };
}

thread_local! {
    /// Nothing is active (the common case): the request path's checks stop here.
    static QUIET: Cell<bool> = const { Cell::new(true) };
}

/// Replaces this worker's states with `new`, returning the previous ones.
pub fn publish(new: ActionStates) -> ActionStates {
    QUIET.with(|q| q.set(new == ActionStates::default()));
    STATES.with(|s| s.replace(new))
}

/// Whether no action nor load shed point is active on this worker.
#[inline]
pub fn quiet() -> bool {
    QUIET.with(Cell::get)
}

/// This worker's action states.
#[inline]
pub fn states() -> ActionStates {
    if quiet() {
        return ActionStates::default();
    }
    STATES.with(Cell::get)
}

/// Whether an action in `state` applies to this request or connection: always when
/// saturated, never when off, else a draw with the state's probability (Envoy's
/// `bernoulli`).
#[inline]
pub fn applies(state: f64) -> bool {
    state >= 1.0 || (state > 0.0 && fastrand::f64() < state)
}
