//! Pausing a listener whose `accept` fails (typically `EMFILE`/`ENFILE` at the descriptor
//! limit, or `ENOBUFS`/`ENOMEM`).
//!
//! Such an error leaves the connection in the kernel's queue and the socket readable, so
//! retrying at once spins a core, and logging each failure floods the log (one admin
//! connection at the limit made ~750,000 lines a second). A failing listener therefore
//! pauses: it waits out a back-off (doubling from [`FIRST_PAUSE`] to [`MAX_PAUSE`]) with
//! exactly one retry pending, ignores readiness meanwhile, logs at most one line per
//! [`LOG_EVERY`] with the count of failures it did not log, and resumes by itself when an
//! accept succeeds again (descriptors freed). Both the workers' listeners and the admin
//! server use it.

use std::io;
use std::time::{Duration, Instant};

/// The first pause after a failed accept.
pub const FIRST_PAUSE: Duration = Duration::from_millis(50);
/// The longest pause: how late, at most, a listener notices descriptors are free again.
pub const MAX_PAUSE: Duration = Duration::from_secs(1);
/// At most one log line per listener this often.
pub const LOG_EVERY: Duration = Duration::from_secs(1);

/// Whether an accept error is about the connection itself (the peer went away before it
/// was accepted, a signal): the next accept is tried at once, with no pause and no log.
pub fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted | io::ErrorKind::WouldBlock
    ) || e.raw_os_error() == Some(libc::EPROTO)
}

/// One listener's accept back-off.
#[derive(Debug)]
pub struct AcceptBackoff {
    /// Whether a retry is pending: readiness is ignored until it runs.
    paused: bool,
    /// The next pause.
    pause: Duration,
    /// When the last line was logged.
    logged_at: Option<Instant>,
    /// Failures since the last line (not logged).
    suppressed: u64,
    /// Failures since the last successful accept.
    failures: u64,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff::new()
    }
}

impl AcceptBackoff {
    /// A listener accepting normally.
    pub const fn new() -> Self {
        AcceptBackoff {
            paused: false,
            pause: FIRST_PAUSE,
            logged_at: None,
            suppressed: 0,
            failures: 0,
        }
    }

    /// Whether the listener waits for its retry (a readiness event is then ignored: the
    /// pending retry accepts what queued meanwhile).
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// An accept failed with a non-transient error: the listener pauses for the returned
    /// time, after which the caller retries once and calls [`AcceptBackoff::resume`]. Logs
    /// at most one line per [`LOG_EVERY`].
    pub fn failed(&mut self, listener: &str, error: &io::Error) -> Duration {
        let pause = self.pause;
        self.pause = (self.pause * 2).min(MAX_PAUSE);
        self.paused = true;
        self.failures += 1;
        let now = Instant::now();
        if self
            .logged_at
            .is_none_or(|at| now.duration_since(at) >= LOG_EVERY)
        {
            tracing::warn!(
                listener,
                error = %error,
                failures_not_logged = self.suppressed,
                pause_ms = pause.as_millis() as u64,
                "accept failed; pausing accepts"
            );
            self.logged_at = Some(now);
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
        pause
    }

    /// The pause is over: the caller accepts again.
    pub fn resume(&mut self) {
        self.paused = false;
    }

    /// An accept succeeded: the back-off starts over, and a listener that had failed says
    /// it recovered.
    pub fn accepted(&mut self, listener: &str) {
        if self.failures > 0 {
            tracing::info!(
                listener,
                failures = self.failures,
                "accepting again after failed accepts"
            );
            *self = AcceptBackoff::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_to_the_cap_and_start_over_after_a_success() {
        let mut b = AcceptBackoff::new();
        let e = io::Error::from_raw_os_error(libc::EMFILE);
        assert!(!is_transient(&e));
        assert_eq!(b.failed("l", &e), FIRST_PAUSE);
        assert!(b.paused());
        b.resume();
        assert_eq!(b.failed("l", &e), FIRST_PAUSE * 2);
        for _ in 0..10 {
            b.failed("l", &e);
        }
        assert_eq!(b.failed("l", &e), MAX_PAUSE);
        // All but the first failure fell within one log period.
        assert_eq!(b.suppressed, 12);
        b.resume();
        b.accepted("l");
        assert!(!b.paused());
        assert_eq!(b.failed("l", &e), FIRST_PAUSE);
    }
}
