//! `filter_chain_matcher`: a listener's filter chain picked by the xDS matcher API
//! (Envoy's `FilterChainManagerImpl` with a matcher) in place of the chains'
//! `filter_chain_match`, which is then ignored.
//!
//! Its inputs are the network ones (addresses, ports, the SNI, the transport and ALPN
//! the listener filters found); its actions are `google.protobuf.StringValue`s naming
//! a chain. Every chain must then have a unique `name`. A match naming no chain closes
//! the connection as no match at all does without a `default_filter_chain`
//! (`no_filter_chain_match`); no match takes the default chain. Refused by path: the
//! `envoy.matching.actions.format_string` action (a chain named by a format string).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use courier_proto::xds::core::v3::TypedExtensionConfig;

use super::filter_chain_match::ConnectionFacts;
use crate::config::ConfigError;
use crate::matching::{Context, Matcher, MatchingData};

const STRING_VALUE: &str = "google.protobuf.StringValue";

/// A compiled `filter_chain_matcher`: its leaves are chain indexes (`None`: a name no
/// chain has).
pub struct ChainMatcher {
    matcher: Matcher<Option<usize>>,
}

/// What the matcher decided.
pub enum Picked {
    /// The chain at this index.
    Chain(usize),
    /// An action named a chain the listener does not have: no chain.
    Unknown,
    /// Nothing matched: the default chain.
    NoMatch,
}

impl ChainMatcher {
    /// Compiles `m` for chains named `names` (in order); `listener` names the listener in
    /// Envoy's messages.
    pub fn compile(
        m: &courier_proto::xds::r#type::matcher::v3::Matcher,
        names: &[&str],
        listener: &str,
    ) -> Result<ChainMatcher, ConfigError> {
        for (i, name) in names.iter().enumerate() {
            if name.is_empty() {
                return Err(ConfigError::new(
                    format!("filter_chains[{i}].name"),
                    format!("error adding listener '{listener}': \"name\" field is required when using a listener matcher"),
                ));
            }
            if names[..i].contains(name) {
                return Err(ConfigError::new(
                    format!("filter_chains[{i}].name"),
                    format!("error adding listener '{listener}': \"name\" field is duplicated with value '{name}'"),
                ));
            }
        }
        let action = |a: &TypedExtensionConfig, path: &str| -> Result<Option<usize>, ConfigError> {
            let Some(any) = a.typed_config.as_ref() else {
                return Err(ConfigError::new(path, "action is required"));
            };
            let ty = courier_proto::type_url::message_name(&any.type_url);
            if ty != STRING_VALUE {
                return Err(ConfigError::unsupported(format!(
                    "{path}.typed_config ({ty})"
                )));
            }
            let name: String = courier_proto::unpack_any::<String>(any)
                .map_err(|e| ConfigError::new(format!("{path}.typed_config"), e.to_string()))?;
            Ok(names.iter().position(|n| *n == name))
        };
        let matcher = Matcher::compile(m, Context::Network, &action, "filter_chain_matcher")?;
        Ok(ChainMatcher { matcher })
    }

    /// The chain for a connection with these `facts`.
    pub fn pick(&self, facts: &ConnectionFacts) -> Picked {
        let unknown = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
        let local = facts
            .restored_local
            .or(facts.socket_local)
            .unwrap_or(unknown);
        let peer = facts.socket_peer.unwrap_or(unknown);
        let data = MatchingData {
            source: facts.restored_remote.unwrap_or(peer),
            direct_source: peer,
            destination: local,
            server_name: facts.server_name.as_deref(),
            tls: None,
            transport_protocol: Some(facts.transport_protocol),
            application_protocols: &facts.application_protocols,
            request_headers: None,
            pseudo: None,
            response: None,
        };
        match self.matcher.evaluate(&data) {
            Some(Some(i)) => Picked::Chain(*i),
            Some(None) => Picked::Unknown,
            None => Picked::NoMatch,
        }
    }
}
