//! The per-type services (CDS, EDS, LDS, RDS, SDS, RTDS): the same SotW and delta engines as ADS,
//! restricted to one type, plus the unary `Fetch*` (REST-style polling over gRPC).

use courier_proto::envoy::service::cluster::v3::cluster_discovery_service_server::ClusterDiscoveryService;
use courier_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use courier_proto::envoy::service::endpoint::v3::endpoint_discovery_service_server::EndpointDiscoveryService;
use courier_proto::envoy::service::listener::v3::listener_discovery_service_server::ListenerDiscoveryService;
use courier_proto::envoy::service::route::v3::route_discovery_service_server::RouteDiscoveryService;
use courier_proto::envoy::service::runtime::v3::runtime_discovery_service_server::RuntimeDiscoveryService;
use courier_proto::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryService;
use tonic::{Request, Response, Status, Streaming};

use super::{DeltaStream, Scope, SotwStream, XdsServer};
use crate::resource::ResourceType;

impl XdsServer {
    /// Answers a unary fetch with the requested resources of `kind` (all if none named).
    fn fetch(
        &self,
        kind: ResourceType,
        req: DiscoveryRequest,
    ) -> Result<DiscoveryResponse, Status> {
        if let Err(why) = Scope::Single(kind).resolve(&req.type_url) {
            return Err(Status::invalid_argument(why));
        }
        let node = req.node.unwrap_or_default();
        let key = self.shared.cache.node_key(&node);
        let snapshot =
            self.shared.cache.snapshot(&key).ok_or_else(|| {
                Status::unavailable(format!("no snapshot for node {:?}", node.id))
            })?;
        let tr = snapshot.of(kind);
        let resources = if req.resource_names.is_empty() {
            tr.items().values().map(|r| r.any().clone()).collect()
        } else {
            req.resource_names
                .iter()
                .filter_map(|n| tr.items().get(n))
                .map(|r| r.any().clone())
                .collect()
        };
        Ok(DiscoveryResponse {
            version_info: tr.version().to_string(),
            resources,
            type_url: kind.type_url().to_string(),
            ..Default::default()
        })
    }
}

macro_rules! per_type_service {
    ($svc:ident, $trait:ident, $kind:expr,
     $stream_ty:ident, $stream_fn:ident, $delta_ty:ident, $delta_fn:ident, $fetch_fn:ident) => {
        #[doc = concat!("The `", stringify!($trait), "` over the shared cache.")]
        #[derive(Debug, Clone)]
        pub(crate) struct $svc(pub(crate) XdsServer);

        #[tonic::async_trait]
        impl $trait for $svc {
            type $stream_ty = SotwStream;
            type $delta_ty = DeltaStream;

            async fn $stream_fn(
                &self,
                request: Request<Streaming<DiscoveryRequest>>,
            ) -> Result<Response<SotwStream>, Status> {
                Ok(Response::new(
                    self.0.open_sotw(Scope::Single($kind), request.into_inner()),
                ))
            }

            async fn $delta_fn(
                &self,
                request: Request<Streaming<DeltaDiscoveryRequest>>,
            ) -> Result<Response<DeltaStream>, Status> {
                Ok(Response::new(
                    self.0
                        .open_delta(Scope::Single($kind), request.into_inner()),
                ))
            }

            async fn $fetch_fn(
                &self,
                request: Request<DiscoveryRequest>,
            ) -> Result<Response<DiscoveryResponse>, Status> {
                self.0.fetch($kind, request.into_inner()).map(Response::new)
            }
        }
    };
}

per_type_service!(
    Cds,
    ClusterDiscoveryService,
    ResourceType::Cluster,
    StreamClustersStream,
    stream_clusters,
    DeltaClustersStream,
    delta_clusters,
    fetch_clusters
);
per_type_service!(
    Eds,
    EndpointDiscoveryService,
    ResourceType::Endpoint,
    StreamEndpointsStream,
    stream_endpoints,
    DeltaEndpointsStream,
    delta_endpoints,
    fetch_endpoints
);
per_type_service!(
    Lds,
    ListenerDiscoveryService,
    ResourceType::Listener,
    StreamListenersStream,
    stream_listeners,
    DeltaListenersStream,
    delta_listeners,
    fetch_listeners
);
per_type_service!(
    Rds,
    RouteDiscoveryService,
    ResourceType::Route,
    StreamRoutesStream,
    stream_routes,
    DeltaRoutesStream,
    delta_routes,
    fetch_routes
);
per_type_service!(
    Sds,
    SecretDiscoveryService,
    ResourceType::Secret,
    StreamSecretsStream,
    stream_secrets,
    DeltaSecretsStream,
    delta_secrets,
    fetch_secrets
);
per_type_service!(
    Rtds,
    RuntimeDiscoveryService,
    ResourceType::Runtime,
    StreamRuntimeStream,
    stream_runtime,
    DeltaRuntimeStream,
    delta_runtime,
    fetch_runtime
);
