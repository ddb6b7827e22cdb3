//! The bootstrap's `stats_config`: Prometheus tags (`stats_tags`, `use_all_default_tags`)
//! and which stats are shown (`stats_matcher`).
//!
//! `stats_matcher` decides what the admin shows (`/stats`, `/stats/prometheus`), as in
//! Envoy; unlike Envoy, a rejected stat is still kept (Courier's own logic reads some of
//! them, and a stat costs a few bytes per worker), so it saves no memory.

use courier_proto::envoy::config::bootstrap::v3::Bootstrap;
use courier_proto::envoy::config::metrics::v3::stats_matcher::StatsMatcher;

use crate::config::ConfigError;
use crate::http::route::StrMatch;
use crate::stats::tags::TagProducer;
use crate::stats::{StatFilter, StatsView};

/// Compiles `stats_config` (refusing, by path, what Courier does not build).
pub fn compile(bootstrap: &Bootstrap) -> Result<StatsView, ConfigError> {
    let config = bootstrap.stats_config.as_ref();
    if config.is_some_and(|c| !c.histogram_bucket_settings.is_empty()) {
        return Err(ConfigError::unsupported(
            "stats_config.histogram_bucket_settings",
        ));
    }
    let tags = TagProducer::compile(config)?;
    let shown = match config.and_then(|c| c.stats_matcher.as_ref()) {
        None => None,
        Some(m) => match &m.stats_matcher {
            None => None,
            Some(StatsMatcher::RejectAll(false)) => None,
            Some(StatsMatcher::RejectAll(true)) => Some(Box::new(|_: &str| false) as StatFilter),
            Some(StatsMatcher::InclusionList(list)) => {
                let matchers = list_matchers(&list.patterns, "inclusion_list")?;
                Some(
                    Box::new(move |name: &str| matchers.iter().any(|m| m.matches(name)))
                        as StatFilter,
                )
            }
            Some(StatsMatcher::ExclusionList(list)) => {
                let matchers = list_matchers(&list.patterns, "exclusion_list")?;
                Some(
                    Box::new(move |name: &str| !matchers.iter().any(|m| m.matches(name)))
                        as StatFilter,
                )
            }
        },
    };
    Ok(StatsView { tags, shown })
}

fn list_matchers(
    patterns: &[courier_proto::envoy::r#type::matcher::v3::StringMatcher],
    list: &str,
) -> Result<Vec<StrMatch>, ConfigError> {
    if patterns.is_empty() {
        return Err(ConfigError::new(
            format!("stats_config.stats_matcher.{list}.patterns"),
            "value must contain at least 1 item(s)",
        ));
    }
    patterns
        .iter()
        .enumerate()
        .map(|(i, p)| {
            StrMatch::compile(
                p,
                &format!("stats_config.stats_matcher.{list}.patterns[{i}]"),
            )
        })
        .collect()
}
