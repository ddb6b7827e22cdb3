//! Self hot restart: the next generation started by the process itself, and the holder
//! the supervisor's process becomes (see the module above for why).

use std::ffi::OsString;
use std::path::PathBuf;

/// Set in the environment of a generation started by a self restart, to the holder's pid:
/// such a process exits when terminated, and drains and exits when the holder is gone; one
/// without it (the supervisor's) stays as the holder.
pub const SPAWNED_ENV: &str = "COURIER_HOT_RESTART_SPAWNED";

/// Whether this process was started by a self restart.
pub fn spawned() -> bool {
    std::env::var_os(SPAWNED_ENV).is_some()
}

/// The holder's pid, in a generation started by a self restart.
pub fn holder() -> Option<i32> {
    std::env::var(SPAWNED_ENV).ok()?.parse().ok()
}

/// The signals a new generation handles (drain, self restart) but cannot until its main
/// loop installs its handlers: blocked from its start (the holder forwards them to every
/// generation, a starting one included, whose default action would kill it) and unblocked
/// by [`unblock_signals`], so one sent meanwhile waits instead.
const DEFERRED_SIGNALS: [i32; 3] = [libc::SIGHUP, libc::SIGTERM, libc::SIGINT];

fn deferred_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in DEFERRED_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Unblocks the signals a generation was started with blocked (its handlers are installed).
pub fn unblock_signals() {
    let set = deferred_set();
    // SAFETY: pthread_sigmask reads a valid set; the old mask is not wanted.
    unsafe {
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

/// A descriptor that becomes readable when the process `pid` exits (`pidfd_open`).
pub fn pidfd(pid: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just returned to us and is owned by nothing else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Resolves when the holder of this (self-restarted) generation is gone; never for a
/// process without one. The generation then drains and exits, as on SIGTERM: with its
/// supervisor's process gone, nothing would ever stop it.
pub async fn holder_gone() {
    let Some(pid) = holder() else {
        return std::future::pending().await;
    };
    let fd = match pidfd(pid) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(pid, error = %e, "self hot restart: cannot watch the holder");
            return std::future::pending().await;
        }
    };
    // SAFETY: the descriptor is owned by the AsyncFd, which neither replaces nor closes it
    // while registered.
    let watch = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    };
    match watch {
        Ok(watch) => {
            let _ = watch.readable().await;
        }
        Err(e) => {
            tracing::warn!(pid, error = %e, "self hot restart: cannot watch the holder");
            std::future::pending::<()>().await;
        }
    }
}

/// The binary to start: `/proc/self/exe`'s path, re-resolved, so a binary replaced at that
/// path (the link then reads `… (deleted)`) is the one started.
pub fn binary() -> std::io::Result<PathBuf> {
    let link = std::fs::read_link("/proc/self/exe")?;
    let text = link.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => link,
    })
}

/// This process's arguments for the next generation: `--restart-epoch` set to `epoch`,
/// and a dynamic base id replaced by the one chosen.
pub fn next_args(args: &[OsString], epoch: u32, base_id: u64) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len() + 4);
    let mut it = args.iter().skip(1);
    while let Some(arg) = it.next() {
        let text = arg.to_string_lossy();
        match text.as_ref() {
            "--restart-epoch" | "--base-id" | "--base-id-path" => {
                it.next();
            }
            "--use-dynamic-base-id" => {}
            t if t.starts_with("--restart-epoch=")
                || t.starts_with("--base-id=")
                || t.starts_with("--base-id-path=") => {}
            _ => out.push(arg.clone()),
        }
    }
    out.push("--restart-epoch".into());
    out.push(epoch.to_string().into());
    out.push("--base-id".into());
    out.push(base_id.to_string().into());
    out
}

/// Starts the next generation. The caller watches it with [`exited`].
pub fn spawn(epoch: u32, base_id: u64) -> std::io::Result<u32> {
    let binary = binary()?;
    let args: Vec<OsString> = std::env::args_os().collect();
    let next = next_args(&args, epoch, base_id);
    let holder = match holder() {
        Some(pid) => pid,
        None => {
            // Later generations are re-parented here when their parent exits.
            // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes a plain integer argument.
            unsafe {
                libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
            }
            std::process::id() as i32
        }
    };
    let set = deferred_set();
    let mut command = std::process::Command::new(&binary);
    command.args(&next).env(SPAWNED_ENV, holder.to_string());
    // std empties the child's signal mask before running this; the mask survives exec.
    // SAFETY: sigprocmask is async-signal-safe, and `set` is a copy owned by the closure.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(move || {
            if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    tracing::info!(binary = %binary.display(), epoch, pid = child.id(), "self hot restart: next generation started");
    Ok(child.id())
}

/// What `--hot-restart-on-config-change` compares: the bootstrap file's bytes, hashed.
pub fn file_digest(path: &std::path::Path) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let bytes = std::fs::read(path).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    Some(h.finish())
}

/// Reaps any exited child without blocking: `(pid, exit code)` of each.
pub fn reap() -> Vec<(i32, i32)> {
    let mut out = Vec::new();
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into a local.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return out;
        }
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            128 + libc::WTERMSIG(status)
        };
        out.push((pid, code));
    }
}

/// Every live descendant of this process (children, and theirs), from `/proc`.
pub fn descendants() -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut parent_of = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // The command name is in parentheses and may hold spaces: fields follow the last ')'.
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
                continue;
            };
            let mut fields = rest.split_whitespace();
            let state = fields.next();
            if state == Some("Z") {
                continue;
            }
            if let Some(ppid) = fields.next().and_then(|p| p.parse::<i32>().ok()) {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut out = vec![me];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out.remove(0);
    out
}

/// The holder: forwards SIGTERM/SIGINT/SIGHUP to the live generations, reaps them, and
/// returns the exit code of the last one once none is left.
pub async fn hold() -> i32 {
    use tokio::signal::unix::{signal, SignalKind};
    tracing::info!("self hot restart: this process now only holds the generations it started");
    let kinds = [
        SignalKind::terminate(),
        SignalKind::interrupt(),
        SignalKind::hangup(),
        SignalKind::child(),
    ];
    let mut streams = Vec::new();
    for kind in kinds {
        match signal(kind) {
            Ok(s) => streams.push((kind, s)),
            Err(e) => tracing::error!(error = %e, "holder: cannot install a signal handler"),
        }
    }
    let mut last_code = 0;
    loop {
        for (_, code) in reap() {
            last_code = code;
        }
        if descendants().is_empty() {
            tracing::info!(code = last_code, "holder: no generation left; exiting");
            return last_code;
        }
        // A re-parented orphan's exit is a SIGCHLD too; the tick catches what a coalesced
        // signal hides.
        let futures = streams.iter_mut().map(|(kind, s)| {
            let kind = *kind;
            Box::pin(async move {
                s.recv().await;
                kind
            })
        });
        let got = tokio::select! {
            (kind, _, _) = futures::future::select_all(futures) => Some(kind),
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => None,
        };
        let number = match got {
            Some(k) if k == SignalKind::terminate() => libc::SIGTERM,
            Some(k) if k == SignalKind::interrupt() => libc::SIGINT,
            Some(k) if k == SignalKind::hangup() => libc::SIGHUP,
            _ => continue,
        };
        for pid in descendants() {
            // SAFETY: kill takes plain integers.
            unsafe {
                libc::kill(pid, number);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_args_replace_epoch_and_base_id() {
        let args: Vec<OsString> = [
            "courier",
            "-c",
            "b.yaml",
            "--restart-epoch",
            "2",
            "--use-dynamic-base-id",
            "--base-id-path=/tmp/id",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let next = next_args(&args, 3, 41);
        let next: Vec<String> = next.iter().map(|a| a.to_string_lossy().into()).collect();
        assert_eq!(
            next,
            ["-c", "b.yaml", "--restart-epoch", "3", "--base-id", "41"]
        );
    }
}
