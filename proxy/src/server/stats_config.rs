//! The bootstrap's `stats_config`: Prometheus tags (`stats_tags`, `use_all_default_tags`),
//! which stats are shown (`stats_matcher`) and histograms' bucket bounds
//! (`histogram_bucket_settings`).
//!
//! `stats_matcher` decides what the admin shows (`/stats`, `/stats/prometheus`), as in
//! Envoy; unlike Envoy, a rejected stat is still kept (Courier's own logic reads some of
//! them, and a stat costs a few bytes per worker), so it saves no memory.

use courier_proto::envoy::config::bootstrap::v3::Bootstrap;
use courier_proto::envoy::config::metrics::v3::stats_matcher::StatsMatcher;

use std::sync::Arc;

use crate::config::ConfigError;
use crate::http::route::StrMatch;
use crate::stats::tags::TagProducer;
use crate::stats::{BucketRule, StatFilter, StatsView};

/// Compiles `stats_config` (refusing, by path, what Courier does not build).
pub fn compile(bootstrap: &Bootstrap) -> Result<StatsView, ConfigError> {
    let config = bootstrap.stats_config.as_ref();
    let buckets = match config {
        Some(c) => bucket_rules(&c.histogram_bucket_settings)?,
        None => Vec::new(),
    };
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
    Ok(StatsView {
        tags,
        shown,
        buckets,
    })
}

/// `bins`' bounds (Envoy's validation; the value tunes Envoy's `circllhist` and has no
/// counterpart in Courier's bucket counters).
const MAX_BINS: u32 = 46082;

/// Compiles `histogram_bucket_settings` with Envoy's checks: a `match`, bounds above 0
/// and unique (sorted here, as Envoy sorts them: their order does not matter).
fn bucket_rules(
    settings: &[courier_proto::envoy::config::metrics::v3::HistogramBucketSettings],
) -> Result<Vec<BucketRule>, ConfigError> {
    settings
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let at = format!("stats_config.histogram_bucket_settings[{i}]");
            let m = s
                .r#match
                .as_ref()
                .ok_or_else(|| ConfigError::new(format!("{at}.match"), "value is required"))?;
            let matcher = StrMatch::compile(m, &format!("{at}.match"))?;
            for (j, b) in s.buckets.iter().enumerate() {
                // NaN is not greater than 0 either.
                if b.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
                    return Err(ConfigError::new(
                        format!("{at}.buckets[{j}]"),
                        "value must be greater than 0",
                    ));
                }
                if s.buckets[..j].contains(b) {
                    return Err(ConfigError::new(
                        format!("{at}.buckets[{j}]"),
                        "repeated value must contain unique items",
                    ));
                }
            }
            if let Some(bins) = &s.bins {
                if bins.value == 0 || bins.value > MAX_BINS {
                    return Err(ConfigError::new(
                        format!("{at}.bins"),
                        format!("value must be inside range (0, {MAX_BINS}]"),
                    ));
                }
            }
            let mut bounds = s.buckets.clone();
            bounds.sort_by(f64::total_cmp);
            let filter: StatFilter = Box::new(move |name: &str| matcher.matches(name));
            Ok((filter, Arc::from(bounds)))
        })
        .collect()
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
