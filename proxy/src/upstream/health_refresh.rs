//! Publishing a host health change (active health checking, outlier detection) to the
//! workers, now or when the cluster's `update_merge_window` ends.

use std::rc::Rc;

use super::{HealthRefresh, UpstreamContext};

/// Publishes a host health change of `cluster` to the workers, now or when its merge
/// window ends; tells the server when a warming cluster became active.
pub fn refresh<C: UpstreamContext + 'static>(ctx: &Rc<C>, cluster: &str) {
    let outcome = {
        let mut cm = ctx.cluster_manager().borrow_mut();
        let outcome = cm.refresh_health(cluster);
        cm.publish();
        outcome
    };
    match outcome {
        HealthRefresh::Applied { activated: true } => ctx.clusters_warmed(),
        HealthRefresh::Held(wait) => {
            let (ctx, cluster) = (ctx.clone(), cluster.to_string());
            tokio::task::spawn_local(async move {
                tokio::time::sleep(wait).await;
                let mut cm = ctx.cluster_manager().borrow_mut();
                cm.apply_merged_health(&cluster);
                cm.publish();
            });
        }
        HealthRefresh::Applied { activated: false } | HealthRefresh::Merged => {}
    }
}
