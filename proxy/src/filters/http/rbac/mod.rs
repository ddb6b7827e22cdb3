//! The RBAC filter (`envoy.filters.http.rbac`): requests allowed or denied (`403 RBAC:
//! access denied`) by policies on the request, its connection and its client.
//!
//! As Envoy 1.40 (measured, `tests/http_rbac.rs`):
//!
//! - `rules` (an `envoy.config.rbac.v3.RBAC`): with action `ALLOW` a request goes on only
//!   when a policy matches (so an empty `rules` denies everything), with `DENY` only when
//!   none does, with `LOG` always. Without `rules` the filter enforces nothing. Policies
//!   are tried in their names' order and the first that matches is the one counted.
//! - A policy matches when one of its permissions and one of its principals do
//!   ([`rules`]): `any`, `header` (pseudo-headers included, `:path` with its query),
//!   `url_path` (without query), `destination_ip`/`_port`/`_port_range` (the connection's
//!   local address), `requested_server_name` (the SNI; empty on plaintext), `direct_remote_ip`
//!   and `source_ip` (the peer), `remote_ip` (the client behind `x-forwarded-for`, as the
//!   connection manager's `use_remote_address` and `xff_num_trusted_hops` say),
//!   `authenticated` (a TLS connection, its peer certificate's URI SANs, else DNS SANs, else subject), and `and`/`or`/`not` of them.
//! - `shadow_rules` are evaluated too, only counted.
//! - A denied request is answered `403` with the body `RBAC: access denied` (gRPC:
//!   `grpc-status: 7`).
//! - The most specific `RBACPerRoute` in `typed_per_filter_config` (route, virtual host,
//!   route configuration) replaces the filter's `rules` and `shadow_rules` (and
//!   `track_per_rule_stats`); one without `rbac` turns the filter off there. Its stat
//!   prefixes have no effect: its decisions are counted under the filter's, as Envoy's.
//! - Counters `http.<stat_prefix>.rbac.[<rules_stat_prefix>.]allowed` and `denied`,
//!   `http.<stat_prefix>.rbac.[<shadow_rules_stat_prefix>.]shadow_allowed` and
//!   `shadow_denied`; with `track_per_rule_stats`, `…policy.<name>.allowed` (and
//!   `denied`, `shadow_allowed`, `shadow_denied`) for the policy that decided.
//!
//! - `matcher` and `shadow_matcher` (the xDS matcher API, [`crate::matching`], on the
//!   request's headers and its connection): the action reached (an
//!   `envoy.config.rbac.v3.Action`) decides — `DENY` denies, `ALLOW` and `LOG` allow —
//!   and names the policy; no action reached denies, as Envoy's matcher engine does.
//!
//! Refused as unsupported: audit logging, CEL `condition`s, and permissions and
//! principals on metadata, filter state, URI templates or extensions. Envoy's dynamic metadata (`access_log_hint`, the
//! effective policy) is not kept: nothing in Courier reads it.

pub mod rules;

use std::sync::{Arc, OnceLock};

use courier_proto::envoy::config::rbac::v3 as rbac_pb;
use courier_proto::envoy::extensions::filters::http::rbac::v3 as pb;
use http::{Response, StatusCode};

use crate::config::ConfigError;
use crate::http::codec::body::ProxyBody;
use crate::stats::{Counter, Store};
pub use rules::{RequestView, XffTrust};

/// The filter's config type.
pub const FILTER_TYPE: &str = "envoy.extensions.filters.http.rbac.v3.RBAC";
/// The filter's well-known name (an HTTP filter without `typed_config`).
pub const FILTER_NAME: &str = "envoy.filters.http.rbac";
/// The per-route config's type (`typed_per_filter_config`).
pub const PER_ROUTE_TYPE: &str = "envoy.extensions.filters.http.rbac.v3.RBACPerRoute";
/// Envoy's body for a denied request.
pub const BODY: &str = "RBAC: access denied";

/// What a policy match means (`RBAC.action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
    Log,
}

/// A compiled `envoy.config.rbac.v3.RBAC` (its policies in their names' order), or a
/// matcher whose actions decide.
pub enum Engine {
    /// `rules`.
    Rules {
        action: Action,
        policies: Vec<rules::Policy>,
    },
    /// `matcher`: its actions, numbered for the per-policy counters.
    Matcher {
        matcher: crate::matching::Matcher<MatchedAction>,
        names: Vec<String>,
    },
}

/// A matcher's `envoy.config.rbac.v3.Action`.
pub struct MatchedAction {
    action: Action,
    index: usize,
}

/// The RBAC action type a matcher's leaves must have.
const ACTION_TYPE: &str = "envoy.config.rbac.v3.Action";

/// An engine's decision, and the policy that matched, if one did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision<'a> {
    /// The request may go on.
    pub allowed: bool,
    /// The first policy (by name) that matched.
    pub policy: Option<&'a str>,
    /// Its place in the engine's policies.
    index: Option<usize>,
}

impl Engine {
    /// Compiles `rules` at `path`.
    pub fn compile(p: &rbac_pb::Rbac, path: &str) -> Result<Engine, ConfigError> {
        let action = action(p.action, &format!("{path}.action"))?;
        if p.audit_logging_options.is_some() {
            return Err(ConfigError::unsupported(format!(
                "{path}.audit_logging_options"
            )));
        }
        // Envoy keeps policies in a sorted map: the first match by name is the one named.
        let mut names: Vec<&String> = p.policies.keys().collect();
        names.sort();
        let policies = names
            .into_iter()
            .map(|name| {
                rules::Policy::compile(name, &p.policies[name], &format!("{path}.policies[{name}]"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Engine::Rules { action, policies })
    }

    /// Compiles a `matcher` at `path`: its actions must be RBAC `Action`s.
    pub fn compile_matcher(
        m: &courier_proto::xds::r#type::matcher::v3::Matcher,
        context: crate::matching::Context,
        path: &str,
    ) -> Result<Engine, ConfigError> {
        let names = std::cell::RefCell::new(Vec::new());
        let compile_action = |a: &courier_proto::xds::core::v3::TypedExtensionConfig,
                              at: &str|
         -> Result<MatchedAction, ConfigError> {
            let any = a.typed_config.as_ref().ok_or_else(|| {
                ConfigError::new(format!("{at}.typed_config"), "value is required")
            })?;
            let ty = courier_proto::type_url::message_name(&any.type_url);
            if ty != ACTION_TYPE {
                return Err(ConfigError::new(
                    format!("{at}.typed_config"),
                    format!("requirement violation while creating match tree: INVALID_ARGUMENT: Unsupported action type: {ty}"),
                ));
            }
            let p: rbac_pb::Action =
                courier_proto::unpack_any(any).map_err(|e| ConfigError::new(at, e.to_string()))?;
            let mut names = names.borrow_mut();
            names.push(p.name);
            Ok(MatchedAction {
                action: action(p.action, &format!("{at}.typed_config.action"))?,
                index: names.len() - 1,
            })
        };
        let matcher = crate::matching::Matcher::compile(m, context, &compile_action, path)?;
        Ok(Engine::Matcher {
            matcher,
            names: names.into_inner(),
        })
    }

    /// How many policies the engine can name (its counters' places).
    fn policy_count(&self) -> usize {
        match self {
            Engine::Rules { policies, .. } => policies.len(),
            Engine::Matcher { names, .. } => names.len(),
        }
    }

    /// The engine's decision for a request.
    pub fn decide(&self, r: &RequestView<'_>) -> Decision<'_> {
        match self {
            Engine::Rules { action, policies } => {
                let index = policies.iter().position(|p| p.matches(r));
                let allowed = match action {
                    Action::Allow => index.is_some(),
                    Action::Deny => index.is_none(),
                    Action::Log => true,
                };
                Decision {
                    allowed,
                    policy: index.map(|i| policies[i].name.as_str()),
                    index,
                }
            }
            Engine::Matcher { matcher, names } => {
                let data = r.matching_data();
                match matcher.evaluate(&data) {
                    Some(m) => Decision {
                        allowed: m.action != Action::Deny,
                        policy: Some(names[m.index].as_str()),
                        index: Some(m.index),
                    },
                    None => Decision {
                        allowed: false,
                        policy: None,
                        index: None,
                    },
                }
            }
        }
    }
}

/// An `RBAC.Action` value at `path`.
fn action(v: i32, path: &str) -> Result<Action, ConfigError> {
    match rbac_pb::rbac::Action::try_from(v) {
        Ok(rbac_pb::rbac::Action::Allow) => Ok(Action::Allow),
        Ok(rbac_pb::rbac::Action::Deny) => Ok(Action::Deny),
        Ok(rbac_pb::rbac::Action::Log) => Ok(Action::Log),
        Err(_) => Err(ConfigError::new(
            path,
            "value must be one of the defined enum values",
        )),
    }
}

/// The rules an RBAC config enforces and shadows: the filter's own, or a route's.
pub struct RbacRules {
    enforced: Option<Engine>,
    shadow: Option<Engine>,
    per_rule_stats: bool,
}

impl RbacRules {
    /// Compiles an `RBAC` at `path` (stat prefixes are the filter's business).
    pub fn compile(p: &pb::Rbac, path: &str) -> Result<RbacRules, ConfigError> {
        let context = crate::matching::Context::HttpRequest;
        // As Envoy: `rules` win over `matcher` when both are set.
        let enforced = match (&p.rules, &p.matcher) {
            (Some(r), _) => Some(Engine::compile(r, &format!("{path}.rules"))?),
            (None, Some(m)) => Some(Engine::compile_matcher(
                m,
                context,
                &format!("{path}.matcher"),
            )?),
            (None, None) => None,
        };
        let shadow = match (&p.shadow_rules, &p.shadow_matcher) {
            (Some(r), _) => Some(Engine::compile(r, &format!("{path}.shadow_rules"))?),
            (None, Some(m)) => Some(Engine::compile_matcher(
                m,
                context,
                &format!("{path}.shadow_matcher"),
            )?),
            (None, None) => None,
        };
        Ok(RbacRules {
            enforced,
            shadow,
            per_rule_stats: p.track_per_rule_stats,
        })
    }

    /// Compiles an `RBACPerRoute` at `path`: without `rbac`, rules that do nothing.
    pub fn per_route(p: &pb::RbacPerRoute, path: &str) -> Result<RbacRules, ConfigError> {
        match &p.rbac {
            Some(r) => RbacRules::compile(r, &format!("{path}.rbac")),
            None => Ok(RbacRules {
                enforced: None,
                shadow: None,
                per_rule_stats: false,
            }),
        }
    }
}

/// Counters under one prefix: `<prefix>.<allowed>` and `<prefix>.policy.<name>.<allowed>`
/// (`denied` alike).
struct Outcomes {
    store: Store,
    prefix: String,
    allowed: Arc<Counter>,
    denied: Arc<Counter>,
    /// `allowed` or `shadow_allowed`.
    allowed_name: &'static str,
    denied_name: &'static str,
    /// The per-policy counters of the filter's own engine, by policy, made on first use
    /// (Envoy shows none before).
    own: Box<[[OnceLock<Arc<Counter>>; 2]]>,
}

impl Outcomes {
    fn new(store: &Store, prefix: String, shadow: bool, own: Option<&Engine>) -> Outcomes {
        let (allowed_name, denied_name) = match shadow {
            true => ("shadow_allowed", "shadow_denied"),
            false => ("allowed", "denied"),
        };
        Outcomes {
            allowed: store.counter(&format!("{prefix}.{allowed_name}")),
            denied: store.counter(&format!("{prefix}.{denied_name}")),
            store: store.clone(),
            prefix,
            allowed_name,
            denied_name,
            own: own
                .map(|e| (0..e.policy_count()).map(|_| Default::default()).collect())
                .unwrap_or_default(),
        }
    }

    /// Counts a decision; `own`: the filter's own engine's (not a route's).
    fn count(&self, d: Decision<'_>, per_rule: bool, own: bool, worker: usize) {
        let (total, name) = match d.allowed {
            true => (&self.allowed, self.allowed_name),
            false => (&self.denied, self.denied_name),
        };
        total.inc(worker);
        let (Some(policy), Some(i), true) = (d.policy, d.index, per_rule) else {
            return;
        };
        let make = || {
            self.store
                .counter(&format!("{}.policy.{policy}.{name}", self.prefix))
        };
        match self.own.get(i).filter(|_| own) {
            Some(cells) => cells[usize::from(!d.allowed)].get_or_init(make).inc(worker),
            // A route's policy, which route tables from RDS share between connection
            // managers: named when counted (under this filter's prefix).
            None => make().inc(worker),
        }
    }
}

/// `<base>.<prefix>` (`<base>` alone for an empty prefix; a prefix's own trailing `.` is
/// not doubled), as Envoy joins stat prefixes.
fn stat_prefix(base: &str, prefix: &str) -> String {
    match prefix.strip_suffix('.').unwrap_or(prefix) {
        "" => base.to_string(),
        p => format!("{base}.{p}"),
    }
}

/// A connection manager's RBAC filter.
pub struct RbacFilter {
    /// The filter's name in `http_filters`: its key in `typed_per_filter_config`.
    pub name: String,
    rules: RbacRules,
    enforced: Outcomes,
    shadow: Outcomes,
}

impl RbacFilter {
    /// Compiles the filter named `name` (its `RBAC` at `path`) of a connection manager
    /// whose stats are under `http.<prefix>`.
    pub fn compile(
        name: &str,
        p: &pb::Rbac,
        path: &str,
        prefix: &str,
        store: &Store,
    ) -> Result<RbacFilter, ConfigError> {
        let base = format!("http.{prefix}.rbac");
        let rules = RbacRules::compile(p, path)?;
        let enforced = stat_prefix(&base, &p.rules_stat_prefix);
        let shadow = stat_prefix(&base, &p.shadow_rules_stat_prefix);
        Ok(RbacFilter {
            name: name.to_string(),
            enforced: Outcomes::new(store, enforced, false, rules.enforced.as_ref()),
            shadow: Outcomes::new(store, shadow, true, rules.shadow.as_ref()),
            rules,
        })
    }

    /// The filter's decision for a request: `route_rules` are the most specific per-route
    /// ones (`None`: the filter's own). A denied request gets this answer, with Envoy's
    /// response code details.
    pub fn on_request(
        &self,
        route_rules: Option<&RbacRules>,
        r: &RequestView<'_>,
        worker: usize,
    ) -> Option<(Box<Response<ProxyBody>>, String)> {
        let own = route_rules.is_none();
        let rules = route_rules.unwrap_or(&self.rules);
        if let Some(shadow) = &rules.shadow {
            let d = shadow.decide(r);
            tracing::debug!(filter = %self.name, allowed = d.allowed, policy = ?d.policy, "rbac shadow");
            self.shadow.count(d, rules.per_rule_stats, own, worker);
        }
        let engine = rules.enforced.as_ref()?;
        let d = engine.decide(r);
        tracing::debug!(filter = %self.name, allowed = d.allowed, policy = ?d.policy, "rbac");
        self.enforced.count(d, rules.per_rule_stats, own, worker);
        // Envoy's response code details name the policy that denied (`none`: no policy
        // of an ALLOW list matched).
        (!d.allowed).then(|| {
            (
                Box::new(crate::http::conn_manager::local_reply::local_reply(
                    StatusCode::FORBIDDEN,
                    BODY,
                )),
                format!(
                    "rbac_access_denied_matched_policy[{}]",
                    d.policy.unwrap_or("none")
                ),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::conn_manager::headers::test_header_map;
    use crate::http::route::Pseudo;
    use http::Method;

    fn filter(yaml: &str, store: &Store) -> Result<RbacFilter, ConfigError> {
        let p: pb::Rbac = courier_proto::from_yaml(yaml).expect("RBAC");
        RbacFilter::compile("rbac", &p, "f", "ingress", store)
    }

    fn view<'a>(h: &'a http::HeaderMap, m: &'a Method, path: &'a str) -> RequestView<'a> {
        RequestView {
            headers: h,
            pseudo: Pseudo::request(m, path, "host", "http"),
            local: "127.0.0.1:80".parse().expect("address"),
            peer: "10.0.0.1".parse().expect("address"),
            peer_port: 40000,
            tls: None,
            requested_server_name: None,
            xff: XffTrust::default(),
        }
    }

    const POLICIES: &str = r#"policies: {
        b: { permissions: [{ url_path: { path: { prefix: /b } } }], principals: [{ any: true }] },
        a: { permissions: [{ url_path: { path: { prefix: /b/a } } }], principals: [{ any: true }] } }"#;

    #[test]
    fn actions_decide_and_the_first_policy_by_name_is_counted() {
        let store = Store::new(1);
        let f = filter(
            &format!(
                "{{ rules_stat_prefix: r_, track_per_rule_stats: true, rules: {{ action: ALLOW, {POLICIES} }}, shadow_rules: {{ action: DENY, {POLICIES} }} }}"
            ),
            &store,
        )
        .expect("valid");
        let h = test_header_map(&[]);
        let get = Method::GET;
        assert!(f.on_request(None, &view(&h, &get, "/b/a"), 0).is_none());
        let (denied, details) = f
            .on_request(None, &view(&h, &get, "/c"), 0)
            .expect("denied");
        assert_eq!(denied.status(), StatusCode::FORBIDDEN);
        assert_eq!(details, "rbac_access_denied_matched_policy[none]");
        let value = |n: &str| store.counter(n).value();
        assert_eq!(value("http.ingress.rbac.r_.allowed"), 1);
        assert_eq!(value("http.ingress.rbac.r_.denied"), 1);
        assert_eq!(value("http.ingress.rbac.r_.policy.a.allowed"), 1);
        assert_eq!(value("http.ingress.rbac.r_.policy.b.allowed"), 0);
        assert_eq!(value("http.ingress.rbac.shadow_allowed"), 1);
        assert_eq!(value("http.ingress.rbac.shadow_denied"), 1);
        assert_eq!(value("http.ingress.rbac.policy.a.shadow_denied"), 1);

        let log = filter(
            &format!("{{ rules: {{ action: LOG, {POLICIES} }} }}"),
            &store,
        );
        assert!(log
            .expect("valid")
            .on_request(None, &view(&h, &get, "/c"), 0)
            .is_none());
    }

    #[test]
    fn routes_replace_or_turn_off_the_filters_rules() {
        let store = Store::new(1);
        let f = filter("{ rules: {} }", &store).expect("valid");
        let h = test_header_map(&[]);
        let get = Method::GET;
        let r = view(&h, &get, "/");
        assert!(f.on_request(None, &r, 0).is_some(), "no policy: all denied");
        let off = RbacRules::per_route(&pb::RbacPerRoute::default(), "r").expect("valid");
        assert!(f.on_request(Some(&off), &r, 0).is_none());
        let deny: pb::RbacPerRoute =
            courier_proto::from_yaml("{ rbac: { rules: { action: DENY } } }").expect("per route");
        let deny = RbacRules::per_route(&deny, "r").expect("valid");
        assert!(f.on_request(Some(&deny), &r, 0).is_none());
        assert_eq!(store.counter("http.ingress.rbac.allowed").value(), 1);
        assert!(filter("{}", &store)
            .expect("valid")
            .on_request(None, &r, 0)
            .is_none());
    }

    #[test]
    fn configs_courier_cannot_evaluate_are_refused_by_path() {
        let store = Store::new(1);
        let err = |yaml: &str| filter(yaml, &store).err().map(|e| e.path);
        assert_eq!(
            err("{ rules: { policies: { p: { permissions: [{ any: true }], principals: [{ any: true }], condition: { const_expr: { bool_value: true } } } } } }").as_deref(),
            Some("f.rules.policies[p].condition")
        );
        assert_eq!(
            err("{ shadow_rules: { policies: { p: { permissions: [], principals: [{ any: true }] } } } }").as_deref(),
            Some("f.shadow_rules.policies[p].permissions")
        );
        assert_eq!(
            err("{ matcher: { matcher_list: { matchers: [] } } }").as_deref(),
            Some("f.matcher.matcher_list.matchers")
        );
        assert_eq!(stat_prefix("b", "x."), "b.x");
        assert_eq!(stat_prefix("b", ""), "b");
    }
}
