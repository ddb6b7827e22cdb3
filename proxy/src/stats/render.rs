//! Admin renderings of the store: Envoy's text, JSON and Prometheus formats.

use std::fmt::Write;

use super::Store;

/// `name: value` lines sorted by name, as Envoy's `/stats`; `filter` keeps names containing it.
pub fn render_text(store: &Store, filter: Option<&str>) -> String {
    let mut all: Vec<(String, String)> = store
        .counters()
        .into_iter()
        .map(|(k, v)| (k, v.to_string()))
        .chain(store.gauges().into_iter().map(|(k, v)| (k, v.to_string())))
        .filter(|(k, _)| filter.is_none_or(|f| k.contains(f)))
        .collect();
    all.sort();
    let mut out = String::new();
    for (k, v) in all {
        let _ = writeln!(out, "{k}: {v}");
    }
    out
}

/// `{"stats":[{"name":…,"value":…}]}`, as Envoy's `/stats?format=json`.
pub fn render_json(store: &Store, filter: Option<&str>) -> serde_json::Value {
    let mut all: Vec<(String, serde_json::Value)> = store
        .counters()
        .into_iter()
        .map(|(k, v)| (k, v.into()))
        .chain(store.gauges().into_iter().map(|(k, v)| (k, v.into())))
        .filter(|(k, _)| filter.is_none_or(|f| k.contains(f)))
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let stats: Vec<_> = all
        .into_iter()
        .map(|(name, value)| serde_json::json!({"name": name, "value": value}))
        .collect();
    serde_json::json!({ "stats": stats })
}

/// Envoy's tag extraction for the families Courier emits: the entity name becomes a label.
fn extract_tags(name: &str) -> (String, Vec<(&'static str, String)>) {
    const RULES: [(&str, &str); 5] = [
        ("cluster.", "envoy_cluster_name"),
        ("listener.", "envoy_listener_address"),
        ("http.", "envoy_http_conn_manager_prefix"),
        ("tcp.", "envoy_tcp_prefix"),
        ("vhost.", "envoy_virtual_host"),
    ];
    for (prefix, tag) in RULES {
        if let Some(rest) = name.strip_prefix(prefix) {
            if let Some((entity, stat)) = rest.rsplit_once('.') {
                // Multi-part suffixes (e.g. `lds.update_attempt`) are rare; the last
                // segment is the stat and the rest the entity, except for known nested stats.
                let (entity, stat) = split_nested(entity, stat);
                return (
                    format!(
                        "{}{}",
                        prefix.trim_end_matches('.'),
                        format_args!("_{stat}")
                    ),
                    vec![(tag, entity)],
                );
            }
        }
    }
    (name.to_string(), Vec::new())
}

fn split_nested(entity: &str, stat: &str) -> (String, String) {
    for nested in [".rds.", ".lb_", ".health_check."] {
        if let Some(idx) = entity.find(nested) {
            return (
                entity[..idx].to_string(),
                format!("{}.{stat}", &entity[idx + 1..]),
            );
        }
    }
    (entity.to_string(), stat.to_string())
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Prometheus text exposition, as Envoy's `/stats/prometheus`.
pub fn render_prometheus(store: &Store) -> String {
    let mut out = String::new();
    let mut emit = |kind: &str, samples: Vec<(String, String)>| {
        let mut families: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (name, value) in samples {
            let (base, tags) = extract_tags(&name);
            let metric = format!("envoy_{}", sanitize(&base));
            let labels = if tags.is_empty() {
                String::new()
            } else {
                let inner: Vec<String> = tags
                    .iter()
                    .map(|(k, v)| {
                        format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
                    })
                    .collect();
                format!("{{{}}}", inner.join(","))
            };
            families
                .entry(metric.clone())
                .or_default()
                .push(format!("{metric}{labels} {value}"));
        }
        for (metric, mut lines) in families {
            lines.sort();
            let _ = writeln!(out, "# TYPE {metric} {kind}");
            for l in lines {
                let _ = writeln!(out, "{l}");
            }
        }
    };
    emit(
        "counter",
        store
            .counters()
            .into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect(),
    );
    emit(
        "gauge",
        store
            .gauges()
            .into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_extracts_cluster_names() {
        let store = Store::new(1);
        store.counter("cluster.echo.upstream_cx_total").add(0, 3);
        store.gauge("server.live").set(1);
        let text = render_prometheus(&store);
        assert!(text.contains("envoy_cluster_upstream_cx_total{envoy_cluster_name=\"echo\"} 3"));
        assert!(text.contains("# TYPE envoy_server_live gauge\nenvoy_server_live 1"));
    }
}
