//! Plain YAML scalars resolved as Envoy resolves them (yaml-cpp's booleans and integers,
//! everything else a string), whatever the YAML 1.2 core schema says.

use courier_proto::envoy::config::cluster::v3::Cluster;
use courier_proto::google::protobuf::value::Kind;
use courier_proto::{from_yaml, LoadError};

fn cluster(body: &str) -> Result<Cluster, LoadError> {
    from_yaml(&format!("name: c\n{body}\n"))
}

#[test]
fn booleans_and_integers_are_refused_in_string_fields() {
    for (value, got) in [
        ("off", "boolean false"),
        ("yes", "boolean true"),
        ("n", "boolean false"),
        ("on", "boolean true"),
        ("y", "boolean true"),
        ("No", "boolean false"),
        ("TRUE", "boolean true"),
        ("5", "number 5"),
        ("0x10", "number 16"),
    ] {
        let err = cluster(&format!("alt_stat_name: {value}")).expect_err(value);
        assert_eq!(err.path(), "alt_stat_name", "{value}");
        assert_eq!(
            err.to_string(),
            format!(
                "alt_stat_name: wrong type: expected a string, got {got} (quote it to make it a \
                 string) (line 2, column 16)"
            ),
            "{value}"
        );
    }
}

#[test]
fn other_plain_scalars_and_quoted_ones_are_strings() {
    for (value, want) in [
        ("\"yes\"", "yes"),
        ("'off'", "off"),
        ("\"5\"", "5"),
        ("yEs", "yEs"),
        ("1.5", "1.5"),
        ("1e3", "1e3"),
        (".inf", ".inf"),
        ("08", "08"),
        ("0o17", "0o17"),
        ("1_000", "1_000"),
        ("5000000000", "5000000000"),
        ("0x100000000", "4294967296"),
        ("|-\n  on", "on"),
    ] {
        let c = cluster(&format!("alt_stat_name: {value}")).expect(value);
        assert_eq!(c.alt_stat_name, want, "{value}");
    }
}

#[test]
fn struct_values() {
    let c = cluster(
        "metadata:\n  filter_metadata:\n    m: {a: yes, b: off, c: n, d: True, e: 0x10, f: 010, \
         g: +5, h: 1e3, i: .inf, j: 5000000000, k: ~, l: \"yes\", m: '010', n: 1.50, o: 08, \
         p: 1_000, q: null, r: , s: -7, t: [on, 2, 2.5], yes: 1}",
    )
    .expect("metadata");
    let fields = &c.metadata.expect("metadata").filter_metadata["m"].fields;
    let kind = |k: &str| fields[k].kind.clone().expect(k);
    let string = |s: &str| Kind::StringValue(s.to_string());
    assert_eq!(kind("a"), Kind::BoolValue(true));
    assert_eq!(kind("b"), Kind::BoolValue(false));
    assert_eq!(kind("c"), Kind::BoolValue(false));
    assert_eq!(kind("d"), Kind::BoolValue(true));
    assert_eq!(kind("e"), Kind::NumberValue(16.0));
    assert_eq!(kind("f"), Kind::NumberValue(8.0));
    assert_eq!(kind("g"), Kind::NumberValue(5.0));
    assert_eq!(kind("h"), string("1e3"));
    assert_eq!(kind("i"), string(".inf"));
    assert_eq!(kind("j"), string("5000000000"));
    assert!(matches!(kind("k"), Kind::NullValue(_)));
    assert_eq!(kind("l"), string("yes"));
    assert_eq!(kind("m"), string("010"));
    assert_eq!(kind("n"), string("1.50"));
    assert_eq!(kind("o"), string("08"));
    assert_eq!(kind("p"), string("1_000"));
    assert!(matches!(kind("q"), Kind::NullValue(_)));
    assert!(matches!(kind("r"), Kind::NullValue(_)));
    assert_eq!(kind("s"), Kind::NumberValue(-7.0));
    let Kind::ListValue(list) = kind("t") else {
        panic!("list")
    };
    let kinds: Vec<_> = list
        .values
        .into_iter()
        .map(|v| v.kind.expect("kind"))
        .collect();
    assert_eq!(
        kinds,
        [Kind::BoolValue(true), Kind::NumberValue(2.0), string("2.5")]
    );
    // Keys are strings, as yaml-cpp reads them.
    assert_eq!(fields["yes"].kind, Some(Kind::NumberValue(1.0)));
}

#[test]
fn numbers_in_numeric_fields() {
    let panic = |v: &str| {
        cluster(&format!(
            "common_lb_config: {{ healthy_panic_threshold: {{ value: {v} }} }}"
        ))
        .map(|c| {
            c.common_lb_config
                .expect("lb")
                .healthy_panic_threshold
                .expect("p")
                .value
        })
    };
    assert_eq!(panic("1.50").expect("1.50"), 1.5);
    assert_eq!(panic("1e1").expect("1e1"), 10.0);
    assert_eq!(panic("0x10").expect("hex"), 16.0);
    assert_eq!(panic("010").expect("octal"), 8.0);
    assert_eq!(panic("\"2.5\"").expect("quoted"), 2.5);
    assert!(panic(".inf").is_err());
    assert!(panic("yes").is_err());

    let limit = |v: &str| {
        cluster(&format!("per_connection_buffer_limit_bytes: {v}"))
            .map(|c| c.per_connection_buffer_limit_bytes.expect("limit").value)
    };
    for (v, want) in [
        ("1e3", 1000),
        ("1.0", 1),
        ("0x10", 16),
        ("010", 8),
        ("08", 8),
        ("+5", 5),
        ("\"16\"", 16),
        ("\"1e3\"", 1000),
        ("\"0x10\"", 16),
    ] {
        assert_eq!(limit(v).expect(v), want, "{v}");
    }
    for v in [
        "1.5",
        "5000000000",
        "1_000",
        "-0x10",
        ".inf",
        "yes",
        "\" 16\"",
        "0o17",
    ] {
        assert!(limit(v).is_err(), "{v}");
    }
    let err = limit("1.5").expect_err("fraction");
    assert_eq!(
        err.to_string(),
        "per_connection_buffer_limit_bytes: invalid uint32 value 1.5: not an integer (line 2, \
         column 36)"
    );

    // 64-bit integers beyond int32 become decimal strings, which a uint64 field reads.
    let c = cluster("ring_hash_lb_config: { maximum_ring_size: 5000000000 }").expect("uint64");
    let ring = c.lb_config.expect("lb_config");
    assert!(format!("{ring:?}").contains("5000000000"), "{ring:?}");
}

#[test]
fn booleans_in_boolean_fields() {
    for (v, want) in [
        ("yes", true),
        ("Off", false),
        ("y", true),
        ("\"yes\"", true),
        ("\"1\"", true),
        ("\"F\"", false),
    ] {
        let c = cluster(&format!("ignore_health_on_host_removal: {v}")).expect(v);
        assert_eq!(c.ignore_health_on_host_removal, want, "{v}");
    }
    for v in ["1", "\"on\"", "\"\""] {
        assert!(
            cluster(&format!("ignore_health_on_host_removal: {v}")).is_err(),
            "{v}"
        );
    }
}

#[test]
fn locations_after_a_respelled_scalar_are_the_written_ones() {
    let line =
        "common_lb_config: { healthy_panic_threshold: { value: 0x10 }, update_merge_window: y }";
    let err = cluster(line).expect_err("a boolean for a duration");
    let column = line.find("y }").expect("y") + 1;
    assert_eq!(err.path(), "common_lb_config.update_merge_window");
    assert!(
        err.to_string()
            .ends_with(&format!("(line 2, column {column})")),
        "{err}"
    );
}
