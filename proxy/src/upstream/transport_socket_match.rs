//! `transport_socket_matches`: each endpoint of a cluster picks its transport socket by
//! metadata, as Envoy's `TransportSocketMatcherImpl` does: the first match whose `match`
//! fields all equal fields of the endpoint's `envoy.transport_socket_match` metadata,
//! else the first that its locality's metadata satisfies, else the cluster's own
//! `transport_socket` (`default`). Istio marks mTLS-capable endpoints this way
//! (`tlsMode: istio`). The choice is made once per host, when its host set is built.

use std::sync::Arc;

use courier_proto::envoy::config::cluster::v3 as pb;
use courier_proto::envoy::config::core::v3::Metadata;
use courier_proto::google::protobuf::Value;

use crate::config::ConfigError;
use crate::stats::{Counter, Store, MAIN_THREAD};
use crate::transport_socket::tls::{ClientTls, SslStats};

/// The metadata namespace matches read.
const NAMESPACE: &str = "envoy.transport_socket_match";

/// One `transport_socket_matches` entry, compiled.
pub struct SocketMatch {
    /// `name`, for stats.
    pub name: String,
    /// `match`: every field must be in the metadata, equal.
    labels: Vec<(String, Value)>,
    /// Its transport socket: TLS, or the raw socket (`None`).
    pub tls: Option<ClientTls>,
    /// `cluster.<name>.<match>.total_match_count`: hosts that took it.
    total_match_count: Arc<Counter>,
}

/// A cluster's transport socket matches (empty without any).
#[derive(Default)]
pub struct SocketMatches {
    matches: Vec<SocketMatch>,
    /// `cluster.<name>.default.total_match_count`, once there are matches.
    default_count: Option<Arc<Counter>>,
}

impl std::fmt::Debug for SocketMatches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.matches.iter().map(|m| &m.name))
            .finish()
    }
}

impl SocketMatches {
    /// Compiles `proto.transport_socket_matches`; TLS handshakes count into `ssl()`, the
    /// cluster's `ssl.*` (shared by every socket of the cluster, as in Envoy).
    pub fn compile(
        proto: &pb::Cluster,
        store: &Store,
        ssl: &dyn Fn() -> Arc<SslStats>,
    ) -> Result<SocketMatches, ConfigError> {
        if proto.transport_socket_matcher.is_some() {
            return Err(ConfigError::unsupported("transport_socket_matcher"));
        }
        if proto.transport_socket_matches.is_empty() {
            return Ok(SocketMatches::default());
        }
        let scope = format!("cluster.{}", proto.name);
        let mut matches = Vec::with_capacity(proto.transport_socket_matches.len());
        for (i, m) in proto.transport_socket_matches.iter().enumerate() {
            let path = format!("transport_socket_matches[{i}]");
            let context = crate::transport_socket::compile_upstream(
                m.transport_socket.as_ref(),
                &format!("{path}.transport_socket"),
            )?;
            let mut labels: Vec<(String, Value)> = m
                .r#match
                .as_ref()
                .map(|s| {
                    s.fields
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default();
            labels.sort_by(|a, b| a.0.cmp(&b.0));
            matches.push(SocketMatch {
                name: m.name.clone(),
                labels,
                tls: context.map(|context| ClientTls {
                    context,
                    stats: ssl(),
                }),
                total_match_count: store.counter(&format!("{scope}.{}.total_match_count", m.name)),
            });
        }
        Ok(SocketMatches {
            matches,
            default_count: Some(store.counter(&format!("{scope}.default.total_match_count"))),
        })
    }

    /// Whether there are none (every host takes the cluster's socket).
    pub fn is_empty(&self) -> bool {
        self.matches.is_empty()
    }

    /// The match a host takes (an index for [`SocketMatches::tls`]), `None` for the
    /// cluster's own socket; counted in `total_match_count`.
    pub fn choose(&self, endpoint: Option<&Metadata>, locality: Option<&Metadata>) -> Option<u16> {
        let found = self.find(endpoint, locality);
        self.count(found);
        found
    }

    /// [`SocketMatches::choose`] without counting (the host is not created yet).
    pub fn find(&self, endpoint: Option<&Metadata>, locality: Option<&Metadata>) -> Option<u16> {
        if self.matches.is_empty() {
            return None;
        }
        [endpoint, locality]
            .into_iter()
            .find_map(|metadata| {
                self.matches
                    .iter()
                    .position(|m| labels_match(&m.labels, metadata))
            })
            .and_then(|i| u16::try_from(i).ok())
    }

    /// Counts a host created with match `found` (`None`: the default).
    pub fn count(&self, found: Option<u16>) {
        let counter = match found {
            Some(i) => self
                .matches
                .get(usize::from(i))
                .map(|m| &m.total_match_count),
            None => self.default_count.as_ref(),
        };
        if let Some(c) = counter {
            c.inc(MAIN_THREAD);
        }
    }

    /// The transport socket of match `i`: TLS, or `None` for the raw socket.
    pub fn tls(&self, i: u16) -> Option<&ClientTls> {
        self.matches
            .get(usize::from(i))
            .and_then(|m| m.tls.as_ref())
    }

    /// Every match's socket (for checks over all of a cluster's sockets).
    pub fn sockets(&self) -> impl Iterator<Item = Option<&ClientTls>> {
        self.matches.iter().map(|m| m.tls.as_ref())
    }
}

/// Envoy's `metadataLabelMatch`: every label is in the namespace's struct, equal (an
/// empty `match` matches anything, even no metadata).
fn labels_match(labels: &[(String, Value)], metadata: Option<&Metadata>) -> bool {
    if labels.is_empty() {
        return true;
    }
    let Some(fields) = metadata.and_then(|m| m.filter_metadata.get(NAMESPACE)) else {
        return false;
    };
    labels
        .iter()
        .all(|(k, v)| fields.fields.get(k).is_some_and(|f| f == v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(yaml: &str) -> Metadata {
        courier_proto::from_yaml(yaml).expect("metadata")
    }

    #[test]
    fn the_endpoint_is_asked_first_then_its_locality_then_the_default() {
        let proto: pb::Cluster = courier_proto::from_yaml(
            r#"name: c
transport_socket_matches:
- name: mtls
  match: { tlsMode: istio }
- name: plain
  match: { tlsMode: disabled }
"#,
        )
        .expect("cluster");
        let store = Store::new(1);
        let ssl = || SslStats::new(&store, "cluster.c", false);
        let m = SocketMatches::compile(&proto, &store, &ssl).expect("compiles");
        let istio =
            metadata("filter_metadata: { envoy.transport_socket_match: { tlsMode: istio } }");
        let disabled =
            metadata("filter_metadata: { envoy.transport_socket_match: { tlsMode: disabled } }");
        assert_eq!(m.choose(Some(&istio), None), Some(0));
        assert_eq!(m.choose(None, Some(&istio)), Some(0));
        assert_eq!(m.choose(Some(&disabled), Some(&istio)), Some(1));
        assert_eq!(m.choose(None, None), None);
        let counts: Vec<u64> = ["mtls", "plain", "default"]
            .iter()
            .map(|n| {
                store
                    .counter(&format!("cluster.c.{n}.total_match_count"))
                    .value()
            })
            .collect();
        assert_eq!(counts, vec![2, 1, 1]);
    }

    #[test]
    fn an_empty_match_takes_every_endpoint_as_in_envoy() {
        assert!(labels_match(&[], None));
        let v = Value {
            kind: Some(courier_proto::google::protobuf::value::Kind::StringValue(
                "x".into(),
            )),
        };
        assert!(!labels_match(&[("k".into(), v)], None));
    }
}
