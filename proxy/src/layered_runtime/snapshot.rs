//! One immutable view of every runtime layer merged (Envoy's `Runtime::SnapshotImpl`): what
//! the workers and the main thread read a runtime key from.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Fraction;

/// One runtime value: its text, and the typed forms it parses as (Envoy's
/// `Snapshot::Entry`). Which forms are present decides which lookups see it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Entry {
    /// The value as `/runtime` shows it.
    pub raw: String,
    /// For [`Snapshot::get_integer`]: a non-negative number (floored).
    pub uint: Option<u64>,
    /// For [`Snapshot::get_double`].
    pub double: Option<f64>,
    /// For [`Snapshot::get_boolean`]: `true`/`false` (any case) or an integer (non-zero).
    pub boolean: Option<bool>,
    /// For [`Snapshot::feature_enabled`]: a `FractionalPercent`.
    pub fraction: Option<Fraction>,
}

impl Entry {
    /// An entry from text (a disk file, an admin override, a string in a proto layer),
    /// parsed as Envoy's `resolveEntryType` does: a boolean, else a number, else a
    /// `FractionalPercent` in YAML.
    pub fn from_text(raw: String) -> Entry {
        let mut entry = Entry {
            raw,
            ..Entry::default()
        };
        let stripped = entry.raw.trim();
        if stripped.eq_ignore_ascii_case("true") {
            entry.boolean = Some(true);
            return entry;
        }
        if stripped.eq_ignore_ascii_case("false") {
            entry.boolean = Some(false);
            return entry;
        }
        if let Ok(n) = stripped.parse::<u64>() {
            entry.boolean = Some(n != 0);
        }
        if let Some(d) = parse_double(stripped) {
            entry.set_number(d);
            return entry;
        }
        entry.fraction = courier_proto::from_yaml::<
            courier_proto::envoy::r#type::v3::FractionalPercent,
        >(&entry.raw)
        .ok()
        .map(|p| Fraction::of(&p));
        entry
    }

    /// An entry from a proto layer's number (`raw` is its text).
    pub fn from_number(value: f64) -> Entry {
        let mut entry = Entry {
            raw: format_number(value),
            ..Entry::default()
        };
        entry.set_number(value);
        if value.fract() == 0.0 && value.abs() < f64::from(i32::MAX) {
            entry.boolean = Some(value != 0.0);
        }
        entry
    }

    /// An entry from a proto layer's boolean.
    pub fn from_bool(value: bool) -> Entry {
        Entry {
            raw: value.to_string(),
            boolean: Some(value),
            ..Entry::default()
        }
    }

    /// An entry from a proto layer's `FractionalPercent`-shaped struct (`raw` is its JSON).
    pub fn from_fraction(raw: String, fraction: Option<Fraction>) -> Entry {
        Entry {
            raw,
            fraction,
            ..Entry::default()
        }
    }

    fn set_number(&mut self, value: f64) {
        self.double = Some(value);
        // Envoy floors a non-negative number into the integer form.
        if value >= 0.0 && value <= u64::MAX as f64 {
            self.uint = Some(value as u64);
        }
    }
}

/// `absl::SimpleAtod`: a decimal or exponent number (`inf`/`nan` included), surrounding
/// whitespace allowed.
fn parse_double(s: &str) -> Option<f64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    s.parse::<f64>().ok()
}

/// A proto number as text: integers without a fraction, others in their shortest form.
fn format_number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e17 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

/// A named layer's values.
#[derive(Debug, Default)]
pub struct Layer {
    /// The layer's `name`.
    pub name: String,
    /// Its entries by key.
    pub values: HashMap<String, Arc<Entry>>,
}

/// Every layer, and their values merged (a later layer overrides an earlier one).
#[derive(Debug, Default)]
pub struct Snapshot {
    layers: Vec<Arc<Layer>>,
    values: HashMap<String, Arc<Entry>>,
}

impl Snapshot {
    /// Merges `layers` in order.
    pub fn new(layers: Vec<Arc<Layer>>) -> Snapshot {
        let mut values = HashMap::new();
        for layer in &layers {
            for (k, v) in &layer.values {
                values.insert(k.clone(), v.clone());
            }
        }
        Snapshot { layers, values }
    }

    /// The layers, first to last.
    pub fn layers(&self) -> &[Arc<Layer>] {
        &self.layers
    }

    /// Every merged entry.
    pub fn values(&self) -> &HashMap<String, Arc<Entry>> {
        &self.values
    }

    /// A key's merged entry.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        if key.is_empty() {
            return None;
        }
        self.values.get(key).map(|e| &**e)
    }

    /// A key's integer value, else `default`.
    pub fn get_integer(&self, key: &str, default: u64) -> u64 {
        self.get(key).and_then(|e| e.uint).unwrap_or(default)
    }

    /// A key's number, else `default`.
    pub fn get_double(&self, key: &str, default: f64) -> f64 {
        self.get(key).and_then(|e| e.double).unwrap_or(default)
    }

    /// A key's boolean, else `default`.
    pub fn get_boolean(&self, key: &str, default: bool) -> bool {
        self.get(key).and_then(|e| e.boolean).unwrap_or(default)
    }

    /// The share a key sets (Envoy's `featureEnabled` with a `FractionalPercent`
    /// default): a `FractionalPercent` value, else an integer read as a percentage
    /// (above 100: every request), else `default`.
    pub fn fraction(&self, key: &str, default: Fraction) -> Fraction {
        match self.get(key) {
            Some(Entry {
                fraction: Some(f), ..
            }) => *f,
            Some(Entry { uint: Some(n), .. }) if *n > 100 => Fraction::ALL,
            Some(Entry { uint: Some(n), .. }) => Fraction::percent(*n as u32),
            _ => default,
        }
    }

    /// Whether `random` falls in the share `key` sets (see [`Snapshot::fraction`]).
    pub fn feature_enabled(&self, key: &str, default: Fraction, random: u64) -> bool {
        self.fraction(key, default).contains(random)
    }

    /// Envoy's `featureEnabled(key, default_percent)`: an integer percentage, capped at
    /// 100, drawn once.
    pub fn percent_enabled(&self, key: &str, default: u64) -> bool {
        match self.get_integer(key, default).min(100) {
            0 => false,
            100 => true,
            cutoff => fastrand::u64(0..100) < cutoff,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(pairs: &[(&str, Entry)]) -> Snapshot {
        let layer = Layer {
            name: "l".into(),
            values: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), Arc::new(v.clone())))
                .collect(),
        };
        Snapshot::new(vec![Arc::new(layer)])
    }

    #[test]
    fn text_entries_parse_as_envoy() {
        let e = Entry::from_text(" 7 ".into());
        assert_eq!(
            (e.uint, e.boolean, e.double),
            (Some(7), Some(true), Some(7.0))
        );
        let e = Entry::from_text("TRUE".into());
        assert_eq!((e.boolean, e.uint), (Some(true), None));
        let e = Entry::from_text("-3".into());
        assert_eq!((e.uint, e.double, e.boolean), (None, Some(-3.0), None));
        let e = Entry::from_text("2.7".into());
        assert_eq!((e.uint, e.double), (Some(2), Some(2.7)));
        let e = Entry::from_text("{numerator: 5, denominator: MILLION}".into());
        assert_eq!(e.fraction, Some(Fraction::new(5, 1_000_000)));
        let e = Entry::from_text("hello".into());
        assert_eq!(
            e,
            Entry {
                raw: "hello".into(),
                ..Entry::default()
            }
        );
    }

    #[test]
    fn numbers_print_as_written() {
        assert_eq!(Entry::from_number(4294967295.0).raw, "4294967295");
        assert_eq!(Entry::from_number(1.5).raw, "1.5");
        assert_eq!(Entry::from_number(-5.0).raw, "-5");
        assert_eq!(Entry::from_number(-5.0).uint, None);
    }

    #[test]
    fn fraction_lookups_follow_envoy() {
        let s = snapshot(&[
            ("pct", Entry::from_number(30.0)),
            ("big", Entry::from_number(500.0)),
            (
                "frac",
                Entry::from_text("{numerator: 1, denominator: TEN_THOUSAND}".into()),
            ),
            ("word", Entry::from_text("x".into())),
        ]);
        let default = Fraction::percent(50);
        assert_eq!(s.fraction("pct", default), Fraction::percent(30));
        assert_eq!(s.fraction("big", default), Fraction::ALL);
        assert_eq!(s.fraction("frac", default), Fraction::new(1, 10_000));
        assert_eq!(s.fraction("word", default), default);
        assert_eq!(s.fraction("", default), default);
        assert!(s.feature_enabled("pct", default, 129));
        assert!(!s.feature_enabled("pct", default, 131));
        assert!(!s.percent_enabled("missing", 0));
        assert!(s.percent_enabled("big", 0));
    }

    #[test]
    fn later_layers_override() {
        let a = Layer {
            name: "a".into(),
            values: [("k".to_string(), Arc::new(Entry::from_number(1.0)))].into(),
        };
        let b = Layer {
            name: "b".into(),
            values: [("k".to_string(), Arc::new(Entry::from_number(2.0)))].into(),
        };
        let s = Snapshot::new(vec![Arc::new(a), Arc::new(b)]);
        assert_eq!(s.get_integer("k", 0), 2);
        assert_eq!(s.layers().len(), 2);
    }
}
