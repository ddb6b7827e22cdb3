//! Tag extraction (Envoy's `TagProducer`): the parts of a stat's name that become labels
//! in `/stats/prometheus` — `cluster.backend.upstream_rq_200` is
//! `envoy_cluster_upstream_rq{envoy_response_code="200",envoy_cluster_name="backend"}`.
//!
//! Each extractor is a regex whose first capture group is cut out of the name and whose
//! second (or, without one, the first) is the tag's value. Every extractor runs on the
//! whole name, in Envoy's order: those that apply to any name, then those whose regex
//! starts with the name's first token (`^cluster\.`), each in configuration order; the
//! cuts are applied together at the end. A `substr` a name must contain skips the regex
//! for most names. `stats_config.stats_tags` adds extractors (or fixed tags) after
//! Envoy's defaults, or replaces them with `use_all_default_tags: false`.

use std::collections::HashMap;

use courier_proto::envoy::config::metrics::v3::{tag_specifier::TagValue, StatsConfig};

use crate::config::ConfigError;

/// Envoy's default extractors (tag name, regex, substring a matching name contains), in
/// Envoy's order. Their regexes are Envoy's own, so that labels come out the same.
const DEFAULT_EXTRACTORS: &[(&str, &str, &str)] = &[
    ("envoy.response_code", r"_rq(_(\d{3}))$", "_rq_"),
    ("envoy.response_code_class", r"_rq_(\d)xx$", "_rq_"),
    (
        "envoy.dynamo_partition_id",
        r"^http(?=\.).*?\.dynamodb\.table(?=\.).*?\.capacity(?=\.).*?(\.__partition_id=(\w{7}))$",
        ".dynamodb.table.",
    ),
    (
        "envoy.dyanmo_operation",
        r"^http(?=\.).*?\.dynamodb.(?:operation|table(?=\.).*?\.capacity)(\.(.*?))(?:\.|$)",
        ".dynamodb.",
    ),
    (
        "envoy.mongo_callsite",
        r"^mongo(?=\.).*?\.collection(?=\.).*?\.callsite\.((.*?)\.).*?query.\w+?$",
        ".collection.",
    ),
    (
        "envoy.dynamo_table",
        r"^http(?=\.).*?\.dynamodb.(?:table|error)\.((.*?)\.)",
        ".dynamodb.",
    ),
    (
        "envoy.mongo_collection",
        r"^mongo(?=\.).*?\.collection\.((.*?)\.).*?query.\w+?$",
        ".collection.",
    ),
    (
        "envoy.mongo_cmd",
        r"^mongo(?=\.).*?\.cmd\.((.*?)\.)\w+?$",
        ".cmd.",
    ),
    // Envoy 1.40's tokenized `cluster.*.grpc.*.$.**`: the token after the service's
    // first, so a dotted service's `cluster.c.grpc.svc.Greeter.Echo.total` has method
    // `Greeter` and keeps `Echo` in its name (measured, `tests/http_grpc_stats.rs`).
    (
        "envoy.grpc_bridge_method",
        r"^cluster(?=\.).*?\.grpc\.[^.]+\.(([^.]+)\.)[^.]",
        ".grpc.",
    ),
    (
        "envoy.http_user_agent",
        r"^http(?=\.).*?\.user_agent\.((.*?)\.)\w+?$",
        ".user_agent.",
    ),
    (
        "envoy.virtual_cluster",
        r"^vhost(?=\.).*?\.vcluster\.((.*?)\.)\w+?$",
        ".vcluster.",
    ),
    (
        "envoy.fault_downstream_cluster",
        r"^http(?=\.).*?\.fault\.((.*?)\.)\w+?$",
        ".fault.",
    ),
    (
        "envoy.ssl_cipher",
        r"^listener(?=\.).*?\.ssl\.cipher(\.(.*?))$",
        "",
    ),
    (
        "cipher_suite",
        r"^cluster(?=\.).*?\.ssl\.ciphers(\.(.*?))$",
        ".ssl.ciphers.",
    ),
    (
        "envoy.grpc_bridge_service",
        r"^cluster(?=\.).*?\.grpc\.((.*?)\.)",
        ".grpc.",
    ),
    ("envoy.tcp_prefix", r"^tcp\.((.*?)\.)\w+?$", ""),
    ("envoy.udp_prefix", r"^udp\.((.*?)\.)\w+?$", ""),
    (
        "envoy.clientssl_prefix",
        r"^auth\.clientssl\.((.*?)\.)\w+?$",
        "",
    ),
    ("envoy.ratelimit_prefix", r"^ratelimit\.((.*?)\.)\w+?$", ""),
    ("envoy.cluster_name", r"^cluster\.(([^\.]+)\.).*", ""),
    (
        "envoy.http_conn_manager_prefix",
        r"^listener(?=\.).*?\.http\.((.*?)\.)",
        ".http.",
    ),
    ("envoy.http_conn_manager_prefix", r"^http\.((.*?)\.)", ""),
    (
        "envoy.listener_address",
        r"^listener\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)",
        "",
    ),
    ("envoy.virtual_host", r"^vhost\.((.*?)\.)", ""),
    ("envoy.mongo_prefix", r"^mongo\.((.*?)\.)", ""),
    (
        "envoy.rds_route_config",
        r"^http(?=\.).*?\.rds\.((.*?)\.)\w+?$",
        ".rds.",
    ),
    (
        "envoy.worker_id",
        r"^listener_manager\.((worker_\d+)\.)",
        "listener_manager.worker_",
    ),
];

/// One extractor: a regex, or a fixed value (`fixed_value`, a tag every stat gets).
struct Extractor {
    tag: String,
    regex: Option<fancy_regex::Regex>,
    substr: String,
    fixed: String,
}

impl Extractor {
    fn new(tag: &str, regex: &str, substr: &str, path: &str) -> Result<Extractor, ConfigError> {
        let compiled = fancy_regex::Regex::new(regex)
            .map_err(|e| ConfigError::new(path, format!("invalid regex '{regex}': {e}")))?;
        Ok(Extractor {
            tag: tag.to_string(),
            regex: Some(compiled),
            substr: substr.to_string(),
            fixed: String::new(),
        })
    }

    fn fixed(tag: &str, value: &str) -> Extractor {
        Extractor {
            tag: tag.to_string(),
            regex: None,
            substr: String::new(),
            fixed: value.to_string(),
        }
    }

    /// The name's first token this extractor needs (`^cluster\.` → `cluster`), if any.
    fn prefix(regex: &str) -> Option<String> {
        let rest = regex.strip_prefix('^')?;
        let end = rest
            .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .unwrap_or(rest.len());
        let (token, after) = rest.split_at(end);
        let dotted = after.is_empty() || after.starts_with(r"\.") || after.starts_with(r"(?=\.)");
        (!token.is_empty() && dotted).then(|| token.to_string())
    }

    /// Extracts this tag from `name`: its value, and the span to cut.
    fn extract(&self, name: &str) -> Option<(String, Option<(usize, usize)>)> {
        let Some(regex) = &self.regex else {
            return Some((self.fixed.clone(), None));
        };
        if !self.substr.is_empty() && !name.contains(&self.substr) {
            return None;
        }
        let caps = regex.captures(name).ok()??;
        let remove = caps.get(1)?;
        let value = caps.get(2).unwrap_or(remove);
        Some((
            value.as_str().to_string(),
            Some((remove.start(), remove.end())),
        ))
    }
}

/// Every extractor and fixed tag, as `stats_config` sets them. Fixed tags sit with the
/// extractors that apply to any name, in configuration order (so they come out after
/// Envoy's defaults of that kind and before the first-token ones, as in Envoy).
pub struct TagProducer {
    any_name: Vec<Extractor>,
    by_first_token: HashMap<String, Vec<Extractor>>,
}

impl Default for TagProducer {
    fn default() -> TagProducer {
        let mut p = TagProducer::empty();
        for (tag, regex, substr) in DEFAULT_EXTRACTORS {
            // Envoy's own regexes: they compile.
            if let Ok(e) = Extractor::new(tag, regex, substr, "") {
                p.add(e, regex);
            }
        }
        p
    }
}

impl TagProducer {
    fn empty() -> TagProducer {
        TagProducer {
            any_name: Vec::new(),
            by_first_token: HashMap::new(),
        }
    }

    fn add(&mut self, e: Extractor, regex: &str) {
        match Extractor::prefix(regex) {
            Some(token) => self.by_first_token.entry(token).or_default().push(e),
            None => self.any_name.push(e),
        }
    }

    /// The producer `stats_config` (at `stats_config`) describes.
    pub fn compile(config: Option<&StatsConfig>) -> Result<TagProducer, ConfigError> {
        let Some(config) = config else {
            return Ok(TagProducer::default());
        };
        let use_defaults = config.use_all_default_tags.is_none_or(|b| b.value);
        let mut p = if use_defaults {
            TagProducer::default()
        } else {
            TagProducer::empty()
        };
        let mut names: Vec<&str> = if use_defaults {
            DEFAULT_EXTRACTORS.iter().map(|(t, _, _)| *t).collect()
        } else {
            Vec::new()
        };
        for (i, spec) in config.stats_tags.iter().enumerate() {
            let path = format!("stats_config.stats_tags[{i}]");
            if names.contains(&spec.tag_name.as_str()) {
                return Err(ConfigError::new(
                    format!("{path}.tag_name"),
                    format!("Tag name '{}' specified twice.", spec.tag_name),
                ));
            }
            names.push(&spec.tag_name);
            match &spec.tag_value {
                Some(TagValue::FixedValue(v)) => {
                    p.any_name.push(Extractor::fixed(&spec.tag_name, v))
                }
                Some(TagValue::Regex(r)) if !r.is_empty() => {
                    let e = Extractor::new(&spec.tag_name, r, "", &format!("{path}.regex"))?;
                    p.add(e, r);
                }
                _ => {
                    let defaults: Vec<_> = DEFAULT_EXTRACTORS
                        .iter()
                        .filter(|(t, _, _)| *t == spec.tag_name)
                        .collect();
                    if defaults.is_empty() {
                        return Err(ConfigError::new(
                            path,
                            format!(
                                "No regex specified for tag specifier and no default regex for name: '{}'",
                                spec.tag_name
                            ),
                        ));
                    }
                    for (tag, regex, substr) in defaults {
                        p.add(Extractor::new(tag, regex, substr, &path)?, regex);
                    }
                }
            }
        }
        Ok(p)
    }

    /// `name` with its tags cut out, and the tags (name, value) in extraction order.
    pub fn produce(&self, name: &str) -> (String, Vec<(String, String)>) {
        let mut tags = Vec::new();
        let mut cuts: Vec<(usize, usize)> = Vec::new();
        let first_token = name.split_once('.').map(|(t, _)| t);
        let keyed = first_token
            .and_then(|t| self.by_first_token.get(t))
            .map(Vec::as_slice)
            .unwrap_or_default();
        for e in self.any_name.iter().chain(keyed) {
            if let Some((value, cut)) = e.extract(name) {
                tags.push((e.tag.clone(), value));
                cuts.extend(cut);
            }
        }
        if cuts.is_empty() {
            return (name.to_string(), tags);
        }
        let mut out = String::with_capacity(name.len());
        for (i, ch) in name.char_indices() {
            if !cuts.iter().any(|(s, e)| i >= *s && i < *e) {
                out.push(ch);
            }
        }
        (out, tags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(name: &str) -> (String, Vec<(String, String)>) {
        TagProducer::default().produce(name)
    }

    #[test]
    fn envoys_default_tags_come_out() {
        assert_eq!(
            tags("cluster.backend.upstream_rq_200"),
            (
                "cluster.upstream_rq".to_string(),
                vec![
                    ("envoy.response_code".to_string(), "200".to_string()),
                    ("envoy.cluster_name".to_string(), "backend".to_string())
                ]
            )
        );
        // Envoy's cluster regex stops at the first dot of a dotted cluster name.
        assert_eq!(
            tags("cluster.backend.svc.upstream_rq_total").0,
            "cluster.svc.upstream_rq_total"
        );
        assert_eq!(
            tags("listener.127.0.0.1_80.http.ingress.downstream_rq_2xx").0,
            "listener.http.downstream_rq_xx"
        );
        assert_eq!(tags("listener_manager.listener_added").1, vec![]);
        // A gRPC method's: the token after the service's first.
        assert_eq!(
            tags("cluster.c.grpc.svc.Greeter.Echo.total").0,
            "cluster.grpc.Echo.total"
        );
        assert_eq!(tags("cluster.c.grpc.Svc.M.total").0, "cluster.grpc.total");
        assert_eq!(tags("cluster.c.grpc.total").0, "cluster.grpc.total");
        assert_eq!(Extractor::prefix(r"^http(?=\.).*?"), Some("http".into()));
        assert_eq!(Extractor::prefix(r"_rq(_(\d{3}))$"), None);
    }

    #[test]
    fn custom_tags_follow_or_replace_the_defaults() {
        let config = StatsConfig {
            stats_tags: vec![courier_proto::envoy::config::metrics::v3::TagSpecifier {
                tag_name: "cluster_name".into(),
                tag_value: Some(TagValue::Regex(
                    r"^cluster\.((.+?(\..+?\.svc\.cluster\.local)?)\.)".into(),
                )),
            }],
            use_all_default_tags: Some(courier_proto::google::protobuf::BoolValue { value: false }),
            ..Default::default()
        };
        let p = TagProducer::compile(Some(&config)).expect("valid");
        assert_eq!(
            p.produce("cluster.a.ns.svc.cluster.local.upstream_rq_200"),
            (
                "cluster.upstream_rq_200".to_string(),
                vec![(
                    "cluster_name".to_string(),
                    "a.ns.svc.cluster.local".to_string()
                )]
            )
        );
        let twice = StatsConfig {
            stats_tags: vec![courier_proto::envoy::config::metrics::v3::TagSpecifier {
                tag_name: "envoy.cluster_name".into(),
                tag_value: None,
            }],
            ..Default::default()
        };
        assert!(TagProducer::compile(Some(&twice)).is_err());
    }
}
