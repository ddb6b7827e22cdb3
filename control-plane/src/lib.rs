//! # courier-control-plane
//!
//! Courier's bundled xDS management server: a per-node [`SnapshotCache`], gRPC services on
//! tonic (ADS state-of-the-world and delta, per-type CDS/EDS/LDS/RDS/SDS, SotW and delta), a
//! [`StatusRegistry`] of what every node ACKed and NACKed, and the `courier-cp` server that
//! serves a resources file with a management HTTP API.
//!
//! ## In-process use (tests)
//!
//! ```no_run
//! use std::time::Duration;
//! use courier_control_plane::{ControlPlane, Resource, ResourceType, Snapshot};
//! use courier_proto::envoy::config::cluster::v3::Cluster;
//!
//! # async fn demo() -> anyhow::Result<()> {
//! // 1. A control plane and its xDS server on an ephemeral port.
//! let cp = ControlPlane::new();
//! let server = cp.start("127.0.0.1:0".parse()?).await?;
//! let xds_port = server.local_addr().port(); // put this in the proxy's ADS bootstrap
//!
//! // 2. Set (replace) a node's snapshot. `build` refuses inconsistent snapshots (an EDS
//! //    cluster without its ClusterLoadAssignment, a listener without its RDS route).
//! let cluster: Cluster = courier_proto::from_yaml("name: demo\ntype: STATIC\n")?;
//! let snapshot = Snapshot::builder().resource(Resource::cluster(&cluster)?).build()?;
//! let snapshot = cp.cache().set_snapshot("node-1", snapshot);
//! let v1 = snapshot.version(ResourceType::Cluster).to_string();
//!
//! // 3. Wait on facts, never sleep: node-1 ACKed that version of CDS.
//! cp.status().wait_for_ack("node-1", ResourceType::Cluster, &v1, Duration::from_secs(10)).await?;
//!
//! // 4. Update or remove one resource; each returns the type's new version to await.
//! let v2 = cp.cache().update_resource("node-1", Resource::cluster(&cluster)?)?;
//! let v3 = cp.cache().remove_resource("node-1", ResourceType::Cluster, "demo")?;
//! cp.status().wait_for_ack("node-1", ResourceType::Cluster, &v3, Duration::from_secs(10)).await?;
//!
//! // 5. NACKs: the last one per node and type, with Envoy's error_detail.
//! if let Some(nack) = cp.status().last_nack("node-1", ResourceType::Listener) {
//!     println!("rejected {}: {}", nack.rejected_version, nack.message);
//! }
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! * Snapshots are keyed by node id by default; [`SnapshotCache::with_hash`] with
//!   [`NodeClusterHash`] (or any [`NodeHash`]) groups nodes. A key without its own snapshot is
//!   served the default snapshot ([`SnapshotCache::set_default_snapshot`]).
//! * Versions: unless given explicitly ([`SnapshotBuilder::version`]), a type's version is a
//!   hash of its content, and every resource's version is a hash of its encoded bytes (used
//!   by delta). `update_resource`/`remove_resource` always derive the changed type's version
//!   from content. Statuses are keyed by node *id* (not cache key).
//!
//! ## Protocol choices (see `/work/shared/XDS.md`)
//!
//! * ADS push order is CDS, EDS, LDS, RDS, SDS, RTDS (a proxy asks for its runtime layers
//!   before CDS anyway); one SotW response per type in flight (the next
//!   waits for the ACK/NACK), but a type waiting for its ACK never blocks the others, since
//!   Envoy holds its CDS ACK while clusters warm on EDS.
//! * EDS/RDS on ADS are answered with the requested names the snapshot has (non-strict);
//!   [`ServerConfig::ads_strict`] switches to go-control-plane's behaviour of waiting until
//!   every requested name exists (rule 21).
//! * No push loops: an ACK or NACK alone never triggers a response; a NACKed version is not
//!   re-sent until the snapshot changes (rule 23, unlike go-control-plane).
//! * Delta streams track what each client holds, honour `initial_resource_versions`, and send
//!   only differences and removals.
//! * REST-JSON ([`ControlPlane::start_rest`], `courier-cp --rest-listen`): polls answered from
//!   the snapshot, `304` when the client holds the current version for the same names,
//!   ACK/NACK from `version_info`/`error_detail`; see `server/rest.rs`.

pub mod admin;
pub mod app;
pub mod cache;
pub mod file_watch;
pub mod resource;
pub mod resources_file;
pub mod server;
pub mod status;

use std::net::SocketAddr;

pub use cache::{
    NodeClusterHash, NodeHash, NodeIdHash, Snapshot, SnapshotBuilder, SnapshotCache, SnapshotError,
};
pub use resource::{Resource, ResourceError, ResourceType};
pub use server::{RestServerHandle, ServerConfig, ServerTls, XdsServer, XdsServerHandle};
pub use status::{NackRecord, NodeStatus, StatusRegistry, TypeStatus, WaitTimeout};

/// Version string of this build, `courier-cp <version> (<git rev>)`.
pub fn version_string() -> String {
    format!(
        "courier-cp {} ({})",
        env!("CARGO_PKG_VERSION"),
        env!("COURIER_CP_GIT_REV")
    )
}

/// A snapshot cache, a status registry and the xDS server over them: the one handle tests
/// need. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    cache: SnapshotCache,
    status: StatusRegistry,
    config: ServerConfig,
}

impl Default for ControlPlane {
    fn default() -> Self {
        ControlPlane::new()
    }
}

impl ControlPlane {
    /// A control plane keyed by node id with the default [`ServerConfig`].
    pub fn new() -> ControlPlane {
        ControlPlane::with_cache(SnapshotCache::new(), ServerConfig::default())
    }

    /// A control plane over an existing cache (e.g. keyed by [`NodeClusterHash`]).
    pub fn with_cache(cache: SnapshotCache, config: ServerConfig) -> ControlPlane {
        ControlPlane {
            cache,
            status: StatusRegistry::new(),
            config,
        }
    }

    /// The snapshot cache: set snapshots, update or remove resources.
    pub fn cache(&self) -> &SnapshotCache {
        &self.cache
    }

    /// Per-node status: ACKed versions, NACKs, streams; waits on them.
    pub fn status(&self) -> &StatusRegistry {
        &self.status
    }

    /// The xDS services over this cache and registry.
    pub fn xds_server(&self) -> XdsServer {
        XdsServer::new(self.cache.clone(), self.status.clone(), self.config.clone())
    }

    /// Binds `addr` (port 0: ephemeral) and serves xDS in a background task until the handle
    /// is shut down or dropped.
    pub async fn start(&self, addr: SocketAddr) -> std::io::Result<XdsServerHandle> {
        self.xds_server().start(addr).await
    }

    /// Binds `addr` (port 0: ephemeral) and serves REST-JSON xDS (`api_type: REST`) in a
    /// background task until the handle is shut down or dropped.
    pub async fn start_rest(&self, addr: SocketAddr) -> std::io::Result<RestServerHandle> {
        self.xds_server().start_rest(addr).await
    }
}
