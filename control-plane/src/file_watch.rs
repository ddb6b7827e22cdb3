//! Watching the resources path for changes.
//!
//! Polls file metadata (the list of files, each one's size and modification time) rather than
//! using inotify: it works the same for a file, a directory, an editor's rename-over-write and
//! a Kubernetes ConfigMap symlink swap, needs no extra dependency, and a 250 ms poll of a few
//! `stat` calls is cheap while meeting the "within a second" goal.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::resources_file::files_of;

/// How often the path is checked.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// What identifies one state of the resources path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(Vec<(PathBuf, Option<SystemTime>, u64)>);

/// The current fingerprint of `path`; unreadable entries still produce one (so the change
/// to "unreadable" is noticed and reported by the reload).
pub fn fingerprint(path: &Path) -> Fingerprint {
    let files = files_of(path).unwrap_or_default();
    Fingerprint(
        files
            .into_iter()
            .map(|f| {
                // Follow symlinks: a ConfigMap swaps the link target, not the link.
                let meta = std::fs::metadata(&f).ok();
                let modified = meta.as_ref().and_then(|m| m.modified().ok());
                let len = meta.map(|m| m.len()).unwrap_or(0);
                (f, modified, len)
            })
            .collect(),
    )
}

/// Calls `on_change` whenever the fingerprint of `path` changes, until the task is dropped.
/// `initial` is the fingerprint of what was loaded before watching started.
pub async fn watch(path: PathBuf, initial: Fingerprint, mut on_change: impl FnMut()) {
    let mut last = initial;
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let path2 = path.clone();
        // stat calls block; keep them off the async workers.
        let Ok(now) = tokio::task::spawn_blocking(move || fingerprint(&path2)).await else {
            continue;
        };
        if now != last {
            tracing::info!(path = %path.display(), "resources changed, reloading");
            last = now;
            on_change();
        }
    }
}
