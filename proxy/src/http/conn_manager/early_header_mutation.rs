//! The connection manager's `early_header_mutation_extensions`: Envoy's `header_mutation`
//! extension (`envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation`),
//! the only one built. Its `mutations` (`remove`, `append` with `append_action` and
//! Envoy's value formatting) run in order on a request's headers as it arrives: before the
//! connection manager's own sanitising and forwarding headers, routing, tracing and the
//! filters (measured against Envoy 1.40: an `x-forwarded-for` set here decides
//! internal-ness). `remove_on_match` removes every field whose name its `key_matcher`
//! matches.

use courier_proto::envoy::config::common::mutation_rules::v3::header_mutation::Action;
use courier_proto::envoy::config::core::v3::TypedExtensionConfig;
use courier_proto::envoy::extensions::http::early_header_mutation::header_mutation::v3::HeaderMutation;
use std::net::SocketAddr;

use http::HeaderMap;

use crate::config::ConfigError;
use crate::http::route::StrMatch;
use crate::protocol::header_mutations::{FormatContext, HeaderMutations};

const HEADER_MUTATION_TYPE: &str =
    "envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation";

/// One mutation.
enum Step {
    /// A removal or an addition.
    Mutate(HeaderMutations),
    /// `remove_on_match`: the fields whose names match.
    RemoveMatching(StrMatch),
}

/// The compiled extensions: every mutation of every extension, in order.
pub struct EarlyHeaderMutations {
    steps: Box<[Step]>,
    /// Some step reads the request's headers (`%REQ(…)%`).
    reads_request: bool,
}

impl EarlyHeaderMutations {
    /// Compiles the extensions (`None` when there are none).
    pub fn compile(
        extensions: &[TypedExtensionConfig],
    ) -> Result<Option<EarlyHeaderMutations>, ConfigError> {
        if extensions.is_empty() {
            return Ok(None);
        }
        let mut steps = Vec::new();
        for (i, e) in extensions.iter().enumerate() {
            let at = format!("early_header_mutation_extensions[{i}].typed_config");
            let Some(any) = &e.typed_config else {
                return Err(ConfigError::new(at, "value is required"));
            };
            let name = courier_proto::type_url::message_name(&any.type_url);
            if name != HEADER_MUTATION_TYPE {
                return Err(ConfigError::new(
                    at,
                    format!(
                        "Didn't find a registered implementation for '{}' with type URL: '{name}'",
                        e.name
                    ),
                ));
            }
            let c: HeaderMutation = courier_proto::unpack_any(any)
                .map_err(|err| ConfigError::new(&at, err.to_string()))?;
            for (j, m) in c.mutations.iter().enumerate() {
                let path = format!("{at}.mutations[{j}]");
                let step = match &m.action {
                    // Removes nothing (Envoy takes it).
                    Some(Action::Remove(name)) if name.is_empty() => continue,
                    Some(Action::Remove(name)) => Step::Mutate(HeaderMutations::compile(
                        &[],
                        std::slice::from_ref(name),
                        "",
                        &format!("{path}.remove"),
                    )?),
                    Some(Action::Append(option)) => Step::Mutate(HeaderMutations::compile(
                        std::slice::from_ref(option),
                        &[],
                        &format!("{path}.append"),
                        "",
                    )?),
                    Some(Action::RemoveOnMatch(r)) => {
                        let at = format!("{path}.remove_on_match.key_matcher");
                        let Some(m) = &r.key_matcher else {
                            return Err(ConfigError::new(at, "value is required"));
                        };
                        Step::RemoveMatching(StrMatch::compile(m, &at)?)
                    }
                    None => return Err(ConfigError::new(path, "action is required")),
                };
                steps.push(step);
            }
        }
        let reads_request = steps
            .iter()
            .any(|s| matches!(s, Step::Mutate(m) if m.reads_request_headers()));
        Ok(Some(EarlyHeaderMutations {
            steps: steps.into(),
            reads_request,
        }))
    }

    /// Runs the mutations on `headers` of a request from `remote` to `local` over
    /// `protocol`; each step reads the headers as the steps before it left them.
    pub fn apply(
        &self,
        headers: &mut HeaderMap,
        remote: SocketAddr,
        local: SocketAddr,
        protocol: &str,
    ) {
        for step in self.steps.iter() {
            let step = match step {
                Step::Mutate(m) => m,
                Step::RemoveMatching(m) => {
                    let doomed: Vec<http::header::HeaderName> = headers
                        .keys()
                        .filter(|k| m.matches(k.as_str()))
                        .cloned()
                        .collect();
                    for name in doomed {
                        headers.remove(name);
                    }
                    continue;
                }
            };
            let before =
                (self.reads_request && step.reads_request_headers()).then(|| headers.clone());
            let cx = FormatContext {
                remote: Some(remote),
                local: Some(local),
                protocol,
                upstream: None,
                request: before.as_ref(),
                // Made as the request arrives: now is its start.
                start: None,
            };
            step.apply(headers, &cx);
        }
    }
}
