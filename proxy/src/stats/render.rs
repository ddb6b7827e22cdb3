//! Admin renderings of the store: Envoy's text, JSON and Prometheus formats.

use std::fmt::Write;

use super::{HistogramSnapshot, Store};

/// The quantiles Envoy's `/stats` reports for histograms, in percent.
const QUANTILES: [f64; 10] = [0.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 100.0];

/// What an admin stats request asks for: `filter=` (a regex searched in each name) and
/// `usedonly` (only stats that were ever written).
#[derive(Default)]
pub struct StatsQuery {
    /// `filter=`, compiled.
    pub filter: Option<regex::Regex>,
    /// `usedonly`.
    pub used_only: bool,
}

/// A compiled query, with the names of the stats never used when `usedonly` is asked.
struct Selection<'a> {
    query: &'a StatsQuery,
    unused: std::collections::HashSet<String>,
}

impl<'a> Selection<'a> {
    fn new(store: &Store, query: &'a StatsQuery) -> Selection<'a> {
        let mut unused = std::collections::HashSet::new();
        if query.used_only {
            let e = store.entries();
            unused.extend(e.counters.into_iter().filter(|c| !c.used).map(|c| c.name));
            unused.extend(e.gauges.into_iter().filter(|g| !g.used).map(|g| g.name));
            unused.extend(e.histograms.into_iter().filter(|h| !h.used).map(|h| h.name));
            unused.extend(e.text_readouts.into_iter().filter(|t| !t.2).map(|t| t.0));
        }
        Selection { query, unused }
    }
}

/// Whether stat `name` is shown: `stats_matcher` lets it through, `filter` finds it and,
/// with `usedonly`, it was used.
fn keep(store: &Store, sel: &Selection<'_>, name: &str) -> bool {
    sel.query.filter.as_ref().is_none_or(|f| f.is_match(name))
        && !sel.unused.contains(name)
        && store.view().shows(name)
}

/// Histograms passing `filter`, sorted by name.
fn histograms(store: &Store, filter: &Selection<'_>) -> Vec<(String, HistogramSnapshot)> {
    let mut all: Vec<_> = store
        .histograms()
        .into_iter()
        .filter(|(k, _)| keep(store, filter, k))
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

/// A quantile as Envoy prints it (no trailing zeros).
fn quantile_text(v: f64) -> String {
    let s = format!("{v:.6}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Text readouts passing `filter`, sorted by name.
fn text_readouts(store: &Store, filter: &Selection<'_>) -> Vec<(String, String)> {
    let mut all: Vec<_> = store
        .text_readouts()
        .into_iter()
        .filter(|(k, _)| keep(store, filter, k))
        .collect();
    all.sort();
    all
}

/// `name: value` lines sorted by name, as Envoy's `/stats`; `filter` keeps names containing
/// it. Text readouts come first (quoted), then counters and gauges, then histograms.
pub fn render_text(store: &Store, query: &StatsQuery) -> String {
    let filter = &Selection::new(store, query);
    let mut out = String::new();
    for (k, v) in text_readouts(store, filter) {
        let _ = writeln!(out, "{k}: {}", serde_json::Value::from(v));
    }
    let mut all: Vec<(String, String)> = store
        .displayed_counters()
        .into_iter()
        .map(|(k, v)| (k, v.to_string()))
        .chain(store.gauges().into_iter().map(|(k, v)| (k, v.to_string())))
        .filter(|(k, _)| keep(store, filter, k))
        .collect();
    all.sort();
    for (k, v) in all {
        let _ = writeln!(out, "{k}: {v}");
    }
    // Histograms last, as Envoy: cumulative quantiles (Courier has no flush interval, so
    // the interval figure is `nan`).
    for (k, h) in histograms(store, filter) {
        if h.count() == 0 {
            let _ = writeln!(out, "{k}: No recorded values");
            continue;
        }
        let parts: Vec<String> = QUANTILES
            .iter()
            .map(|q| {
                let v = h.quantile(q / 100.0).unwrap_or(f64::NAN);
                format!("P{}(nan,{})", quantile_text(*q), quantile_text(v))
            })
            .collect();
        let _ = writeln!(out, "{k}: {}", parts.join(" "));
    }
    out
}

/// `{"stats":[{"name":…,"value":…}]}`, as Envoy's `/stats?format=json`.
pub fn render_json(store: &Store, query: &StatsQuery) -> serde_json::Value {
    let filter = &Selection::new(store, query);
    let mut all: Vec<(String, serde_json::Value)> = store
        .displayed_counters()
        .into_iter()
        .map(|(k, v)| (k, v.into()))
        .chain(store.gauges().into_iter().map(|(k, v)| (k, v.into())))
        .filter(|(k, _)| keep(store, filter, k))
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let mut stats: Vec<_> = text_readouts(store, filter)
        .into_iter()
        .map(|(name, value)| (name, serde_json::Value::from(value)))
        .chain(all)
        .map(|(name, value)| serde_json::json!({"name": name, "value": value}))
        .collect();
    let computed: Vec<_> = histograms(store, filter)
        .into_iter()
        .map(|(name, h)| {
            let values: Vec<_> = QUANTILES
                .iter()
                .map(|q| serde_json::json!({"interval": null, "cumulative": h.quantile(q / 100.0)}))
                .collect();
            serde_json::json!({"name": name, "values": values})
        })
        .collect();
    if !computed.is_empty() {
        stats.push(serde_json::json!({"histograms": {
            "supported_quantiles": QUANTILES,
            "computed_quantiles": computed,
        }}));
    }
    serde_json::json!({ "stats": stats })
}

/// `key="value"` with the key sanitized (`envoy.cluster_name` is `envoy_cluster_name`)
/// and the value escaped for the Prometheus text format.
fn label(key: &str, value: &str) -> String {
    format!(
        "{}=\"{}\"",
        sanitize(key),
        value.replace('\\', "\\\\").replace('"', "\\\"")
    )
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
pub fn render_prometheus(store: &Store, query: &StatsQuery) -> String {
    let filter = &Selection::new(store, query);
    let mut out = String::new();
    let mut emit = |kind: &str, samples: Vec<(String, String)>| {
        let mut families: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (name, value) in samples {
            if !keep(store, filter, &name) {
                continue;
            }
            let (base, tags) = store.view().tags.produce(&name);
            let metric = format!("envoy_{}", sanitize(&base));
            let inner: Vec<String> = tags.iter().map(|(k, v)| label(k, v)).collect();
            // Envoy writes `{}` for a stat without tags.
            let labels = format!("{{{}}}", inner.join(","));
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
            .displayed_counters()
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
    render_prometheus_histograms(store, filter, &mut out);
    out
}

/// `histogram` families: cumulative `_bucket{le=…}` lines, `_sum` and `_count`.
fn render_prometheus_histograms(store: &Store, filter: &Selection<'_>, out: &mut String) {
    let mut families: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (name, h) in histograms(store, filter) {
        let (base, tags) = store.view().tags.produce(&name);
        let metric = format!("envoy_{}", sanitize(&base));
        let labels: Vec<String> = tags.iter().map(|(k, v)| label(k, v)).collect();
        let with = |extra: Option<String>| {
            let all: Vec<String> = labels.iter().cloned().chain(extra).collect();
            format!("{{{}}}", all.join(","))
        };
        let lines = families.entry(metric.clone()).or_default();
        let mut cumulative = 0;
        for (bound, n) in h.bounds.iter().zip(&h.counts) {
            cumulative += n;
            let le = with(Some(format!("le=\"{}\"", quantile_text(*bound))));
            lines.push(format!("{metric}_bucket{le} {cumulative}"));
        }
        let inf = with(Some("le=\"+Inf\"".to_string()));
        lines.push(format!("{metric}_bucket{inf} {}", h.count()));
        lines.push(format!("{metric}_sum{} {}", with(None), h.sum));
        lines.push(format!("{metric}_count{} {}", with(None), h.count()));
    }
    for (metric, lines) in families {
        let _ = writeln!(out, "# TYPE {metric} histogram");
        for l in lines {
            let _ = writeln!(out, "{l}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_extracts_cluster_names() {
        let store = Store::new(1);
        store.counter("cluster.echo.upstream_cx_total").add(0, 3);
        store.gauge("server.live").set(1);
        let text = render_prometheus(&store, &StatsQuery::default());
        assert!(text.contains("envoy_cluster_upstream_cx_total{envoy_cluster_name=\"echo\"} 3"));
        assert!(text.contains("# TYPE envoy_server_live gauge\nenvoy_server_live{} 1"));
    }
}
