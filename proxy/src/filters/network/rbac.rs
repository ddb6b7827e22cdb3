//! The network RBAC filter (`envoy.filters.network.rbac`): a connection allowed or
//! closed by `rules` or a `matcher` on what the connection offers — its addresses and
//! ports, the SNI, its TLS and the peer certificate's names (Kuma puts one on every
//! inbound listener, matching the peer's SPIFFE id).
//!
//! As Envoy 1.40: the decision is made once, on the connection's first bytes (after its
//! TLS handshake), before they go on; a denied connection is closed without them. Shadow
//! rules are evaluated and counted only. Counters `<stat_prefix>.rbac.allowed`, `denied`,
//! `<stat_prefix>.rbac.<shadow_rules_stat_prefix>.shadow_allowed`, `shadow_denied`
//! (each part joined by one dot, as Envoy joins stat prefixes). A connection that closes
//! before sending anything is decided (and counted) at its close, as Envoy does.
//! `enforcement_type: CONTINUOUS` decides the same as the default: nothing Courier's
//! rules read changes during a connection. Refused by path: `delay_deny`.

use std::net::SocketAddr;
use std::sync::Arc;

use courier_proto::envoy::extensions::filters::network::rbac::v3 as pb;

use super::common::join;
use crate::config::ConfigError;
use crate::filters::http::rbac::{Engine, RequestView, XffTrust};
use crate::matching::Context;
use crate::stats::{Counter, Store};
use crate::transport_socket::tls::TlsConnectionInfo;

/// A compiled network RBAC filter.
pub struct NetworkRbac {
    enforced: Option<Engine>,
    shadow: Option<Engine>,
    allowed: Arc<Counter>,
    denied: Arc<Counter>,
    shadow_allowed: Arc<Counter>,
    shadow_denied: Arc<Counter>,
}

/// What a connection offers the rules.
pub struct ConnectionFacts<'a> {
    /// Its local address.
    pub local: SocketAddr,
    /// Its peer.
    pub peer: SocketAddr,
    /// The SNI the TLS inspector found.
    pub requested_server_name: Option<&'a str>,
    /// What its TLS handshake settled (`None`: plaintext).
    pub tls: Option<&'a TlsConnectionInfo>,
}

impl NetworkRbac {
    /// Compiles the filter's `RBAC` (paths under `typed_config`).
    pub fn compile(p: &pb::Rbac, store: &Store) -> Result<NetworkRbac, ConfigError> {
        if p.stat_prefix.is_empty() {
            return Err(ConfigError::new(
                "stat_prefix",
                "value length must be at least 1 characters",
            ));
        }
        if p.delay_deny.is_some() {
            return Err(ConfigError::unsupported("delay_deny"));
        }
        if pb::rbac::EnforcementType::try_from(p.enforcement_type).is_err() {
            return Err(ConfigError::new(
                "enforcement_type",
                "value must be one of the defined enum values",
            ));
        }
        let context = Context::Network;
        let engine =
            |rules: &Option<_>, matcher: &Option<_>, r: &str, m: &str| match (rules, matcher) {
                (Some(rules), _) => Engine::compile(rules, r).map(Some),
                (None, Some(matcher)) => Engine::compile_matcher(matcher, context, m).map(Some),
                (None, None) => Ok(None),
            };
        let base = join(&p.stat_prefix, "rbac.");
        let c = |name: &str| store.counter(&join(&base, name));
        let shadow_base = join(&base, &p.shadow_rules_stat_prefix);
        let shadow = |name: &str| store.counter(&join(&shadow_base, name));
        Ok(NetworkRbac {
            enforced: engine(&p.rules, &p.matcher, "rules", "matcher")?,
            shadow: engine(
                &p.shadow_rules,
                &p.shadow_matcher,
                "shadow_rules",
                "shadow_matcher",
            )?,
            allowed: c("allowed"),
            denied: c("denied"),
            shadow_allowed: shadow("shadow_allowed"),
            shadow_denied: shadow("shadow_denied"),
        })
    }

    /// Whether the connection may go on (counted); `None` when nothing is enforced.
    pub fn admits(&self, conn: &ConnectionFacts<'_>, worker: usize) -> bool {
        let headers = http::HeaderMap::new();
        let view = RequestView {
            headers: &headers,
            pseudo: crate::http::route::Pseudo::default(),
            local: conn.local,
            peer: conn.peer.ip(),
            peer_port: conn.peer.port(),
            tls: conn.tls,
            requested_server_name: conn.requested_server_name,
            // A connection's client is its peer.
            xff: XffTrust {
                use_remote_address: true,
                trusted_hops: 0,
                appended: false,
                detected: None,
            },
        };
        if let Some(shadow) = &self.shadow {
            let d = shadow.decide(&view);
            tracing::debug!(allowed = d.allowed, policy = ?d.policy, "network rbac shadow");
            match d.allowed {
                true => self.shadow_allowed.inc(worker),
                false => self.shadow_denied.inc(worker),
            }
        }
        let Some(engine) = &self.enforced else {
            return true;
        };
        let d = engine.decide(&view);
        tracing::debug!(allowed = d.allowed, policy = ?d.policy, "network rbac");
        match d.allowed {
            true => self.allowed.inc(worker),
            false => self.denied.inc(worker),
        }
        d.allowed
    }
}

/// A chain's filters before its terminal one, in order.
#[derive(Clone, Default)]
pub struct ReadFilters(pub Arc<[Arc<NetworkRbac>]>);

impl ReadFilters {
    /// Whether the chain has any.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether every filter lets the connection go on (each counts its decision; the
    /// first that denies ends the walk, as Envoy's filter chain stops).
    pub fn admit(&self, conn: &ConnectionFacts<'_>, worker: usize) -> bool {
        self.0.iter().all(|f| f.admits(conn, worker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_prefixes_join_as_envoys() {
        assert_eq!(join("inbound.", "rbac."), "inbound.rbac.");
        assert_eq!(join("inbound", "rbac."), "inbound.rbac.");
        assert_eq!(
            join(&join("net.rbac.", "sh_"), "shadow_allowed"),
            "net.rbac.sh_.shadow_allowed"
        );
        assert_eq!(
            join(&join("net.rbac.", ""), "shadow_allowed"),
            "net.rbac.shadow_allowed"
        );
    }
}
