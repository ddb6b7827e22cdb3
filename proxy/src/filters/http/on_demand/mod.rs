//! `envoy.filters.http.on_demand` with on-demand CDS (`odcds`): a request routed to a
//! cluster this worker does not hold waits while the main thread asks the control plane
//! for it, then goes on to the router — which finds the cluster, or answers as for an
//! unknown cluster (503, `NC`) when it did not arrive within `odcds.timeout` (default
//! 5 s), as Envoy's filter continues the chain in both cases.
//!
//! The cluster name is the route's `cluster`, or the value of its `cluster_header`
//! (Envoy's `clusterName()`); weighted clusters are not discovered on demand. Only delta
//! xDS can subscribe to single clusters: the source must be ADS over `DELTA_GRPC` or an
//! `api_config_source` with `DELTA_GRPC` (checked where the subscription is made). Without
//! `odcds` the filter would only serve on-demand VHDS, which Courier refuses with the
//! route configuration's `vhds`, so it does nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_proto::envoy::config::core::v3::{config_source::ConfigSourceSpecifier, ConfigSource};
use courier_proto::envoy::extensions::filters::http::on_demand::v3::{OnDemand, OnDemandCds};

use crate::config::{self, ConfigError};
use crate::upstream::on_demand::{self as discovery, ClusterArrival};
use crate::upstream::ThreadLocalClusterManager;

/// The filter's config type.
pub const FILTER_TYPE: &str = "envoy.extensions.filters.http.on_demand.v3.OnDemand";
/// Its well-known name.
pub const FILTER_NAME: &str = "envoy.filters.http.on_demand";
/// Its per-route config type (refused: Courier does not switch on-demand CDS per route).
pub const PER_ROUTE_TYPE: &str = "envoy.extensions.filters.http.on_demand.v3.PerRouteConfig";

const DEFAULT_TIMEOUT: Duration = Duration::from_millis(5000);

/// On-demand CDS settings.
#[derive(Debug)]
pub struct OdCds {
    source: Arc<ConfigSource>,
    timeout: Duration,
}

/// The compiled filter.
pub struct OnDemandFilter {
    /// Its name in `http_filters`.
    pub name: String,
    odcds: Option<OdCds>,
}

impl OnDemandFilter {
    /// Compiles the filter's config (at `path`).
    pub fn compile(
        name: &str,
        proto: &OnDemand,
        path: &str,
    ) -> Result<OnDemandFilter, ConfigError> {
        let odcds = proto
            .odcds
            .as_ref()
            .map(|o| compile_odcds(o, &format!("{path}.odcds")))
            .transpose()?;
        Ok(OnDemandFilter {
            name: name.to_string(),
            odcds,
        })
    }

    /// Waits, if the request's cluster is missing, until it is discovered or the timeout
    /// passes. `cluster` is the name the route gives (none: nothing to discover).
    pub async fn on_request(&self, cluster: Option<&str>) {
        let (Some(odcds), Some(cluster)) = (&self.odcds, cluster.filter(|c| !c.is_empty())) else {
            return;
        };
        if ThreadLocalClusterManager::with(|tlcm| tlcm.get(cluster).is_some()) {
            return;
        }
        discovery::request(cluster, &odcds.source);
        let arrived = ClusterArrival::new(cluster, Instant::now() + odcds.timeout).await;
        tracing::debug!(cluster, arrived, "on-demand cluster discovery done");
    }
}

fn compile_odcds(proto: &OnDemandCds, path: &str) -> Result<OdCds, ConfigError> {
    if !proto.resources_locator.is_empty() {
        return Err(ConfigError::unsupported(format!(
            "{path}.resources_locator"
        )));
    }
    let Some(source) = &proto.source else {
        // Envoy's xDS-TP singleton subscription: a resources locator Courier does not use.
        return Err(ConfigError::unsupported(format!(
            "{path} without a source (xDS-TP)"
        )));
    };
    config::validate_config_source(source).map_err(|e| e.at(&format!("{path}.source")))?;
    match &source.config_source_specifier {
        Some(ConfigSourceSpecifier::Ads(_)) => {}
        Some(ConfigSourceSpecifier::ApiConfigSource(api))
            if config::api_type_is_delta(api).unwrap_or(false) => {}
        _ => return Err(ConfigError::new(
            format!("{path}.source"),
            "on-demand CDS needs delta xDS: ads, or an api_config_source with api_type DELTA_GRPC",
        )),
    }
    let timeout = match &proto.timeout {
        Some(d) => config::duration(d, &format!("{path}.timeout"))?,
        None => DEFAULT_TIMEOUT,
    };
    Ok(OdCds {
        source: Arc::new(source.clone()),
        timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::route::per_filter::PerFilterCompiler;

    fn filter(yaml: &str) -> Result<OnDemandFilter, ConfigError> {
        let proto: OnDemand = courier_proto::from_yaml(yaml).expect("OnDemand");
        OnDemandFilter::compile("od", &proto, "http_filters[0].typed_config")
    }

    #[test]
    fn odcds_needs_delta_and_a_source() {
        assert!(filter("odcds: { source: { ads: {} } }").is_ok());
        assert!(filter("odcds: { source: { api_config_source: { api_type: DELTA_GRPC, grpc_services: [{ envoy_grpc: { cluster_name: xds } }] } } }").is_ok());
        let sotw = filter("odcds: { source: { api_config_source: { api_type: GRPC, grpc_services: [{ envoy_grpc: { cluster_name: xds } }] } } }");
        assert!(sotw.is_err_and(|e| e.message.contains("needs delta xDS")));
        assert!(filter("odcds: {}").is_err());
        assert!(filter("odcds: { source: { ads: {} }, resources_locator: xdstp://x }").is_err());
    }

    #[test]
    fn per_route_config_is_refused_not_ignored() {
        let any = courier_proto::google::protobuf::Any {
            type_url: format!("type.googleapis.com/{PER_ROUTE_TYPE}"),
            value: Vec::new(),
        };
        let store = crate::stats::Store::new(1);
        let compiled = crate::filters::http::HTTP_FILTERS.compile(&any, "route", &store);
        assert!(compiled.is_err_and(|e| e.message == "not supported by Courier"));
    }
}
