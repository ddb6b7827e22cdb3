//! The open-file limit: raised to its hard limit at start-up, as Envoy does, so that a
//! proxy started under a low soft limit (shells and systemd often give 1024) is not
//! starved of descriptors while the system allows more.

/// The soft and hard `RLIMIT_NOFILE`, as they were and as they are now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit the process started with.
    pub soft_before: u64,
    /// The soft limit now (the hard limit, unless raising it failed).
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and logs both at info. A failure is
/// logged and the process goes on with the limit it has (Envoy's behaviour too).
pub fn raise() -> Option<FdLimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; the resource id is a constant.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot read the open file limit");
        return None;
    }
    let soft_before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own; the resource id is a constant.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        } else {
            tracing::warn!(
                soft = lim.rlim_cur,
                hard = lim.rlim_max,
                error = %std::io::Error::last_os_error(),
                "cannot raise the open file limit to its hard limit"
            );
        }
    }
    let limit = FdLimit {
        soft_before,
        soft: lim.rlim_cur,
        hard: lim.rlim_max,
    };
    tracing::info!(
        soft = limit.soft,
        hard = limit.hard,
        soft_at_start = limit.soft_before,
        "open file limit"
    );
    Some(limit)
}
