//! Every bootstrap in `examples/` loads, and survives YAML → proto → JSON → proto unchanged.

use std::path::{Path, PathBuf};

use courier_proto::envoy::config::bootstrap::v3::Bootstrap;

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

#[test]
fn there_are_examples() {
    let names: Vec<_> = examples()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for wanted in ["static-tcp.yaml", "static-http.yaml", "ads.yaml"] {
        assert!(
            names.iter().any(|n| n == wanted),
            "missing {wanted}: {names:?}"
        );
    }
}

#[test]
fn every_example_round_trips() {
    for file in examples() {
        let bootstrap: Bootstrap =
            courier_proto::load_file(&file).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(bootstrap, Bootstrap::default(), "{}", file.display());

        // proto → JSON value → proto
        let json = courier_proto::to_json(&bootstrap);
        assert!(json.is_object(), "{}: {json}", file.display());
        let again: Bootstrap = courier_proto::from_value(&json)
            .unwrap_or_else(|e| panic!("{}: from_value: {e}", file.display()));
        assert_eq!(again, bootstrap, "{}", file.display());

        // … and through JSON text, and JSON text read as YAML (JSON is YAML).
        let text = serde_json::to_string_pretty(&json).unwrap();
        let from_text: Bootstrap = courier_proto::from_json(&text).unwrap();
        assert_eq!(from_text, bootstrap, "{}", file.display());
        // Read as YAML, a float (`3.0`) is a plain scalar Envoy reads as a string, as a
        // Struct keeps it; the rest is the same.
        let as_yaml: Bootstrap = courier_proto::from_yaml(&text).unwrap();
        let mut floats_as_strings = json.clone();
        stringify_floats(&mut floats_as_strings);
        let want: Bootstrap = courier_proto::from_value(&floats_as_strings).unwrap();
        assert_eq!(as_yaml, want, "{}", file.display());

        // Rendering is stable.
        assert_eq!(courier_proto::to_json(&again), json, "{}", file.display());
    }
}

#[test]
fn static_tcp_content() {
    let b: Bootstrap = courier_proto::load_file(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/static-tcp.yaml"),
    )
    .unwrap();
    let sr = b.static_resources.unwrap();
    assert_eq!(sr.clusters[0].name, "echo");
    let cla = sr.clusters[0].load_assignment.as_ref().unwrap();
    let eps = &cla.endpoints[0].lb_endpoints;
    assert_eq!(eps.len(), 3);
    assert_eq!(
        eps[1].load_balancing_weight.as_ref().map(|w| w.value),
        Some(2)
    );
    let tcp = sr.listeners[0].filter_chains[0].filters[0]
        .config_type
        .as_ref()
        .unwrap();
    let courier_proto::envoy::config::listener::v3::filter::ConfigType::TypedConfig(any) = tcp
    else {
        panic!("typed_config")
    };
    let tcp: courier_proto::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy =
        courier_proto::unpack_any(any).unwrap();
    assert_eq!(tcp.stat_prefix, "tcp_in");
    assert_eq!(tcp.idle_timeout.unwrap().seconds, 60);
}

#[test]
fn ads_content() {
    let b: Bootstrap = courier_proto::load_file(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/ads.yaml"),
    )
    .unwrap();
    let dr = b.dynamic_resources.unwrap();
    assert!(dr.ads_config.is_some());
    let xds = &b.static_resources.unwrap().clusters[0];
    assert_eq!(xds.name, "xds_cluster");
    let opts = &xds.typed_extension_protocol_options
        ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
    let opts: courier_proto::envoy::extensions::upstreams::http::v3::HttpProtocolOptions =
        courier_proto::unpack_any(opts).unwrap();
    assert!(opts.upstream_protocol_options.is_some());
}

#[test]
fn load_file_errors_name_the_file() {
    let dir = std::env::temp_dir().join(format!("courier-proto-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let yaml = dir.join("bad.yaml");
    std::fs::write(&yaml, "node:\n  id: a\n  idd: b\n").unwrap();
    let err = courier_proto::load_file::<Bootstrap>(&yaml).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: node: unknown field \"idd\" (line 3, column 3)",
            yaml.display()
        )
    );
    assert_eq!(err.load_error().unwrap().path(), "node");
    assert_eq!(err.file(), yaml.as_path());

    // .json is parsed as JSON: YAML syntax is an error there.
    let json = dir.join("bad.json");
    std::fs::write(&json, "static_resources: {}\n").unwrap();
    let err = courier_proto::load_file::<Bootstrap>(&json).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: invalid JSON: expected value (line 1, column 1)",
            json.display()
        )
    );
    std::fs::write(&json, r#"{"node": {"id": "a"}}"#).unwrap();
    let b = courier_proto::load_file::<Bootstrap>(&json).unwrap();
    assert_eq!(b.node.unwrap().id, "a");

    let missing = dir.join("missing.yaml");
    let err = courier_proto::load_file::<Bootstrap>(&missing).unwrap_err();
    assert!(matches!(err, courier_proto::FileError::Read { .. }));
    assert!(err
        .to_string()
        .starts_with(&format!("{}: ", missing.display())));

    std::fs::remove_dir_all(&dir).unwrap();
}

/// `v` with each float (a number serde_json renders with a fraction or exponent) made the
/// string of its rendering.
fn stringify_floats(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Number(n) if n.is_f64() => *v = serde_json::Value::String(n.to_string()),
        serde_json::Value::Array(items) => items.iter_mut().for_each(stringify_floats),
        serde_json::Value::Object(map) => map.values_mut().for_each(stringify_floats),
        _ => {}
    }
}
