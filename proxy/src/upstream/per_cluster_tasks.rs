//! One main-thread task per active cluster that has some setting (an outlier detector, an
//! `ORIGINAL_DST` sweep), kept in step with the cluster manager: started for a new
//! cluster, restarted when the setting is replaced (a cluster update), stopped when the
//! cluster goes.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::task::JoinHandle;

/// The tasks, by cluster name, with the setting each was started for.
pub struct PerClusterTasks<T> {
    tasks: HashMap<String, (Arc<T>, JoinHandle<()>)>,
}

impl<T> Default for PerClusterTasks<T> {
    fn default() -> Self {
        PerClusterTasks {
            tasks: HashMap::new(),
        }
    }
}

impl<T> PerClusterTasks<T> {
    /// Keeps a task for each of `wanted` (cluster name, setting), starting the missing
    /// ones with `start`; the others are aborted.
    pub fn reconcile(
        &mut self,
        wanted: Vec<(String, Arc<T>)>,
        start: impl Fn(&str, &Arc<T>) -> JoinHandle<()>,
    ) {
        self.tasks.retain(|name, (setting, task)| {
            let keep = wanted
                .iter()
                .any(|(n, s)| n == name && Arc::ptr_eq(s, setting));
            if !keep {
                task.abort();
            }
            keep
        });
        for (name, setting) in wanted {
            if let std::collections::hash_map::Entry::Vacant(slot) = self.tasks.entry(name) {
                let task = start(slot.key(), &setting);
                slot.insert((setting, task));
            }
        }
    }
}

impl<T> Drop for PerClusterTasks<T> {
    fn drop(&mut self) {
        for (_, task) in self.tasks.values() {
            task.abort();
        }
    }
}
