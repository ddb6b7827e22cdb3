//! A control plane + proxy pair per test.

use std::sync::Arc;

use courier_control_plane::{Resource, ResourceType, Snapshot};
use courier_integration_tests::proxy::ProxyOptions;
use courier_integration_tests::{Bootstrap, Cp, Proxy, ProxyKind};

pub const NODE: &str = "proxy-under-test";

pub struct Fx {
    pub cp: Cp,
    pub proxy: Proxy,
    pub boot: Bootstrap,
}

pub fn snapshot(resources: impl IntoIterator<Item = Arc<Resource>>) -> Snapshot {
    Snapshot::builder()
        .resources(resources)
        .build()
        .expect("consistent snapshot")
}

impl Fx {
    /// SotW ADS with `resources`; waits until every type is ACKed and the proxy is LIVE.
    pub async fn ads(resources: Vec<Arc<Resource>>) -> Fx {
        let cp = Cp::start().await;
        Fx::with(cp, |port| Bootstrap::ads(NODE, port), resources).await
    }

    /// Same with a bootstrap of choice and default options.
    pub async fn with(
        cp: Cp,
        boot: impl FnOnce(u16) -> Bootstrap,
        resources: Vec<Arc<Resource>>,
    ) -> Fx {
        Fx::with_opts(cp, boot, resources, ProxyOptions::default()).await
    }

    pub async fn with_opts(
        cp: Cp,
        boot: impl FnOnce(u16) -> Bootstrap,
        resources: Vec<Arc<Resource>>,
        opts: ProxyOptions,
    ) -> Fx {
        let boot = boot(cp.port);
        let s = cp.set(&boot.node, snapshot(resources));
        let proxy = Proxy::start_with(ProxyKind::from_env(), &boot.yaml(), opts).await;
        cp.ack_all(&boot.node, &s).await;
        proxy.wait_live().await;
        Fx { cp, proxy, boot }
    }

    pub fn node(&self) -> &str {
        &self.boot.node
    }

    /// Upserts resources; waits for the ACK of every changed type.
    pub async fn update(&self, rs: Vec<Arc<Resource>>) {
        self.change(rs, vec![]).await
    }

    /// Removes resources; waits for the ACKs.
    pub async fn remove(&self, rs: &[(ResourceType, &str)]) {
        self.change(
            vec![],
            rs.iter().map(|(k, n)| (*k, n.to_string())).collect(),
        )
        .await
    }

    pub async fn change(&self, up: Vec<Arc<Resource>>, rm: Vec<(ResourceType, String)>) {
        let kinds: Vec<ResourceType> = up
            .iter()
            .map(|r| r.kind())
            .chain(rm.iter().map(|(k, _)| *k))
            .collect();
        self.change_wait(up, rm, &kinds).await
    }

    /// Upserts resources; waits only for the ACKs of `wait` types.
    pub async fn update_wait(&self, up: Vec<Arc<Resource>>, wait: &[ResourceType]) {
        self.change_wait(up, vec![], wait).await
    }

    pub async fn change_wait(
        &self,
        up: Vec<Arc<Resource>>,
        rm: Vec<(ResourceType, String)>,
        kinds: &[ResourceType],
    ) {
        let s = self
            .cp
            .cp
            .cache()
            .update_resources(self.node(), up, rm)
            .expect("consistent change");
        for k in ResourceType::ALL {
            if kinds.contains(&k) {
                self.cp.ack(self.node(), k, s.version(k)).await;
            }
        }
    }

    /// Upserts one resource without waiting; returns its type's new version.
    pub fn push(&self, r: Arc<Resource>) -> String {
        self.cp
            .cp
            .cache()
            .update_resource(self.node(), r)
            .expect("consistent change")
    }

    /// The current version of a type in the node's snapshot.
    pub fn version(&self, kind: ResourceType) -> String {
        self.cp
            .cp
            .cache()
            .snapshot(self.node())
            .map(|s| s.version(kind).to_string())
            .unwrap_or_default()
    }
}
