//! Filters chosen per request by the xDS matcher API: Envoy's match delegate
//! (`envoy.extensions.common.matching.v3.ExtensionWithMatcher`, the filter
//! `envoy.filters.http.match_delegate`) and the composite filter
//! (`envoy.filters.http.composite`) it usually wraps.
//!
//! - An `ExtensionWithMatcher` whose `extension_config` is a `Composite`: the matcher's
//!   actions are `ExecuteFilterAction`s, each naming the filter (`typed_config`) or the
//!   filters (`filter_chain`, or `filter_chain_name` in the composite's
//!   `named_filter_chains`) the request then goes through at the composite's place in the
//!   chain; no match, an unknown chain name or a `sample_percent` draw that fails: the
//!   request goes on as if the composite were not there. Counted in
//!   `<stat_prefix>composite.filter_delegation_success`.
//! - An `ExtensionWithMatcher` wrapping any other filter: the matcher's actions are
//!   `SkipFilter`s; a request they match skips the filter.
//! - A `Composite` with its own `matcher`, without the wrapper, chooses as the first.
//!
//! The matcher reads the request's headers and its connection (the inputs RBAC's
//! matcher reads), once, when the request's headers are there. Refused by path:
//! `dynamic_config` (ECDS), the deprecated `matcher` of `ExtensionWithMatcher`, a
//! composite or match delegate inside an action, and per-route matchers
//! (`ExtensionWithMatcherPerRoute`, `CompositePerRoute`).

use std::sync::Arc;

use courier_proto::envoy::config::core::v3::TypedExtensionConfig;
use courier_proto::envoy::extensions::common::matching::v3::ExtensionWithMatcher;
use courier_proto::envoy::extensions::filters::http::composite::v3::{
    Composite, ExecuteFilterAction, FilterChainConfiguration,
};
use courier_proto::google::protobuf::Any;
use courier_proto::xds::core::v3::TypedExtensionConfig as XdsExtension;
use courier_proto::xds::r#type::matcher::v3::Matcher as MatcherProto;

use super::{FilterArgs, HttpFilter, CHAIN};
use crate::config::ConfigError;
use crate::layered_runtime::RuntimeFraction;
use crate::matching::{Context, Matcher, MatchingData};
use crate::stats::Counter;

/// The filter's config type (the match delegate's).
pub const FILTER_TYPE: &str = "envoy.extensions.common.matching.v3.ExtensionWithMatcher";
/// The filter's well-known name.
pub const FILTER_NAME: &str = "envoy.filters.http.match_delegate";
/// The composite filter's config type.
pub const COMPOSITE_TYPE: &str = "envoy.extensions.filters.http.composite.v3.Composite";
/// The composite filter's well-known name.
pub const COMPOSITE_NAME: &str = "envoy.filters.http.composite";

const EXECUTE: &str = "envoy.extensions.filters.http.composite.v3.ExecuteFilterAction";
const SKIP: &str = "envoy.extensions.filters.common.matcher.action.v3.SkipFilter";

/// What a matched action does.
enum Action {
    /// Run these filters (`None`: the sampling draw picks whether).
    Run {
        filters: Arc<[HttpFilter]>,
        sample: Option<RuntimeFraction>,
    },
    /// A chain name the composite does not have: nothing.
    Nothing,
    /// Skip the wrapped filter.
    Skip,
}

/// A match delegate or composite filter.
pub struct CompositeFilter {
    /// The filter's name in `http_filters`.
    pub name: String,
    matcher: Matcher<Action>,
    /// The filter a match delegate wraps (`None` for a composite).
    wrapped: Option<Box<HttpFilter>>,
    /// `composite.filter_delegation_success` (a composite's).
    delegated: Option<Arc<Counter>>,
}

impl CompositeFilter {
    /// Compiles an `ExtensionWithMatcher` (`wrapper`) or a bare `Composite`.
    pub fn compile(a: &FilterArgs<'_>) -> Result<CompositeFilter, ConfigError> {
        let Some(any) = a.config else {
            return Err(ConfigError::new(a.path, "value is required"));
        };
        let ty = courier_proto::type_url::message_name(&any.type_url);
        if ty == COMPOSITE_TYPE {
            let c: Composite = super::unpack(any, a.path)?;
            let Some(m) = &c.matcher else {
                // Without a matcher, a composite delegates to nothing (Envoy's filter
                // waits for a wrapper's match that never comes).
                return Err(ConfigError::unsupported(format!(
                    "{} (a composite without a matcher or match delegate)",
                    a.path
                )));
            };
            return composite(a, &c, m, &format!("{}.matcher", a.path));
        }
        let e: ExtensionWithMatcher = super::unpack(any, a.path)?;
        #[allow(deprecated)]
        if e.matcher.is_some() {
            return Err(ConfigError::unsupported(format!("{}.matcher", a.path)));
        }
        let Some(m) = &e.xds_matcher else {
            return Err(ConfigError::new(
                format!("{}.xds_matcher", a.path),
                "one of matcher or xds_matcher must be set",
            ));
        };
        let matcher_path = format!("{}.xds_matcher", a.path);
        let inner_path = format!("{}.extension_config", a.path);
        let Some(ext) = &e.extension_config else {
            return Err(ConfigError::new(inner_path, "value is required"));
        };
        let inner_any = ext.typed_config.as_ref().ok_or_else(|| {
            ConfigError::new(format!("{inner_path}.typed_config"), "value is required")
        })?;
        if courier_proto::type_url::message_name(&inner_any.type_url) == COMPOSITE_TYPE {
            let c: Composite = super::unpack(inner_any, &format!("{inner_path}.typed_config"))?;
            if c.matcher.is_some() {
                return Err(ConfigError::unsupported(format!(
                    "{inner_path}.typed_config.matcher"
                )));
            }
            return composite(a, &c, m, &matcher_path);
        }
        let wrapped = build(&ext.name, inner_any, &inner_path, a)?;
        let action = |t: &XdsExtension, path: &str| -> Result<Action, ConfigError> {
            match action_type(t, path)?.1 {
                SKIP => Ok(Action::Skip),
                other => Err(ConfigError::unsupported(format!(
                    "{path}.typed_config ({other})"
                ))),
            }
        };
        Ok(CompositeFilter {
            name: a.name.to_owned(),
            matcher: Matcher::compile(m, Context::HttpRequest, &action, &matcher_path)?,
            wrapped: Some(Box::new(wrapped)),
            delegated: None,
        })
    }

    /// The filters a request with this `data` goes through in this filter's place (on
    /// `worker`).
    pub fn pick<'a>(&'a self, data: &MatchingData<'_>, worker: usize) -> &'a [HttpFilter] {
        let found = self.matcher.evaluate(data);
        if let Some(wrapped) = &self.wrapped {
            return match found {
                Some(Action::Skip) => &[],
                _ => std::slice::from_ref(&**wrapped),
            };
        }
        match found {
            Some(Action::Run { filters, sample }) => {
                if sample.as_ref().is_some_and(|s| !s.sample()) {
                    return &[];
                }
                if let Some(c) = &self.delegated {
                    c.inc(worker);
                }
                filters
            }
            _ => &[],
        }
    }
}

/// A composite choosing by `m`.
fn composite(
    a: &FilterArgs<'_>,
    c: &Composite,
    m: &MatcherProto,
    matcher_path: &str,
) -> Result<CompositeFilter, ConfigError> {
    let mut named: Vec<(&str, Arc<[HttpFilter]>)> = Vec::new();
    let mut names: Vec<&String> = c.named_filter_chains.keys().collect();
    names.sort();
    for n in names {
        let at = format!("{}.named_filter_chains[{n}]", a.path);
        named.push((n.as_str(), chain(&c.named_filter_chains[n], &at, a)?));
    }
    let action = |t: &XdsExtension, path: &str| -> Result<Action, ConfigError> {
        let (any, ty) = action_type(t, path)?;
        if ty != EXECUTE {
            return Err(ConfigError::unsupported(format!(
                "{path}.typed_config ({ty})"
            )));
        }
        let at = format!("{path}.typed_config");
        let e: ExecuteFilterAction = super::unpack(any, &at)?;
        if e.dynamic_config.is_some() {
            return Err(ConfigError::unsupported(format!("{at}.dynamic_config")));
        }
        let set = [
            e.typed_config.is_some(),
            e.filter_chain.is_some(),
            !e.filter_chain_name.is_empty(),
        ];
        if set.iter().filter(|s| **s).count() != 1 {
            return Err(ConfigError::new(
                at,
                "exactly one of typed_config, dynamic_config, filter_chain or filter_chain_name must be set",
            ));
        }
        let sample = e
            .sample_percent
            .as_ref()
            .map(|p| RuntimeFraction::compile(p, &format!("{at}.sample_percent")))
            .transpose()?;
        let filters: Arc<[HttpFilter]> = if let Some(t) = &e.typed_config {
            Arc::from(vec![extension(t, &format!("{at}.typed_config"), a)?])
        } else if let Some(c) = &e.filter_chain {
            chain(c, &format!("{at}.filter_chain"), a)?
        } else {
            match named.iter().find(|(n, _)| *n == e.filter_chain_name) {
                Some((_, f)) => f.clone(),
                None => return Ok(Action::Nothing),
            }
        };
        Ok(Action::Run { filters, sample })
    };
    // `filter_delegation_error` counts filters that fail to be made per request; Courier
    // makes them when the config loads (a failure refuses it), so it stays 0.
    let counter = |leaf: &str| {
        a.store
            .counter(&format!("http.{}.composite.{leaf}", a.stat_prefix))
    };
    counter("filter_delegation_error");
    Ok(CompositeFilter {
        name: a.name.to_owned(),
        matcher: Matcher::compile(m, Context::HttpRequest, &action, matcher_path)?,
        wrapped: None,
        delegated: Some(counter("filter_delegation_success")),
    })
}

/// An action's config and its type, which must be given.
fn action_type<'t>(t: &'t XdsExtension, path: &str) -> Result<(&'t Any, &'t str), ConfigError> {
    let any = t
        .typed_config
        .as_ref()
        .ok_or_else(|| ConfigError::new(format!("{path}.typed_config"), "value is required"))?;
    Ok((any, courier_proto::type_url::message_name(&any.type_url)))
}

/// A `FilterChainConfiguration`'s filters, in order.
fn chain(
    c: &FilterChainConfiguration,
    path: &str,
    a: &FilterArgs<'_>,
) -> Result<Arc<[HttpFilter]>, ConfigError> {
    c.typed_config
        .iter()
        .enumerate()
        .map(|(i, t)| extension(t, &format!("{path}.typed_config[{i}]"), a))
        .collect::<Result<Vec<_>, _>>()
        .map(Arc::from)
}

/// One filter named in an action.
fn extension(
    t: &TypedExtensionConfig,
    path: &str,
    a: &FilterArgs<'_>,
) -> Result<HttpFilter, ConfigError> {
    let any = t
        .typed_config
        .as_ref()
        .ok_or_else(|| ConfigError::new(format!("{path}.typed_config"), "value is required"))?;
    build(&t.name, any, path, a)
}

/// The filter `name` configured by `any`, built through the chain's registry; a match
/// delegate or composite inside another is refused.
fn build(name: &str, any: &Any, path: &str, a: &FilterArgs<'_>) -> Result<HttpFilter, ConfigError> {
    let ty = courier_proto::type_url::message_name(&any.type_url);
    if ty == FILTER_TYPE || ty == COMPOSITE_TYPE {
        return Err(ConfigError::unsupported(format!(
            "{path}.typed_config ({ty})"
        )));
    }
    let Some(found) = CHAIN.resolve(Some(any), name, false, path)? else {
        return Err(ConfigError::new(path, "unknown filter"));
    };
    let at = format!("{path}.typed_config");
    (found.factory.build)(&FilterArgs {
        name,
        config: found.config.as_ref(),
        path: &at,
        stat_prefix: a.stat_prefix,
        store: a.store,
    })
}
