//! The YAML spellings real bootstraps use.

use courier_proto::envoy::config::bootstrap::v3::Bootstrap;
use courier_proto::envoy::config::cluster::v3::Cluster;
use courier_proto::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use courier_proto::google::protobuf::value::Kind;
use courier_proto::{from_json, from_yaml, unpack_any};

#[test]
fn integers_wrappers_and_strings_for_numbers() {
    let yaml = r#"
name: c
per_connection_buffer_limit_bytes: 32768      # UInt32Value from an integer
cleanup_interval: 5s
circuit_breakers:
  thresholds:
  - max_connections: 100
    max_requests: "1000"                      # wrapper from a decimal string
    max_retries: 0x10                         # hex, as YAML allows
lb_policy: 1                                  # enum by number
common_lb_config:
  healthy_panic_threshold: { value: 50.5 }
load_assignment:
  cluster_name: c
  endpoints:
  - lb_endpoints:
    - endpoint: { address: { socket_address: { address: 10.0.0.1, port_value: 8080 } } }
      load_balancing_weight: 2
"#;
    let c: Cluster = from_yaml(yaml).unwrap();
    assert_eq!(c.per_connection_buffer_limit_bytes.unwrap().value, 32768);
    assert_eq!(c.cleanup_interval.unwrap().seconds, 5);
    let t = &c.circuit_breakers.unwrap().thresholds[0];
    assert_eq!(t.max_connections.unwrap().value, 100);
    assert_eq!(t.max_requests.unwrap().value, 1000);
    assert_eq!(t.max_retries.unwrap().value, 16);
    assert_eq!(c.lb_policy, 1);
    let panic = c.common_lb_config.unwrap().healthy_panic_threshold.unwrap();
    assert_eq!(panic.value, 50.5);
    let lb = &c.load_assignment.unwrap().endpoints[0].lb_endpoints[0];
    assert_eq!(lb.load_balancing_weight.unwrap().value, 2);
}

#[test]
fn int64_as_number_or_string_and_durations() {
    let yaml = r#"
stats_flush_interval: 1.5s
static_resources:
  clusters:
  - name: c
    connect_timeout: 0.25s
    max_requests_per_connection: 3
    outlier_detection:
      interval: 10s
      base_ejection_time: "30s"
    upstream_connection_options:
      tcp_keepalive: { keepalive_time: 60 }
overload_manager:
  refresh_interval: 0.25s
  resource_monitors:
  - name: envoy.resource_monitors.fixed_heap
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig
      max_heap_size_bytes: "2147483648"
  - name: envoy.resource_monitors.fixed_heap
    typed_config:
      '@type': type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig
      max_heap_size_bytes: 4294967296
"#;
    let b: Bootstrap = from_yaml(yaml).unwrap();
    let d = b.stats_flush_interval.unwrap();
    assert_eq!((d.seconds, d.nanos), (1, 500_000_000));
    let c = &b.static_resources.as_ref().unwrap().clusters[0];
    assert_eq!(c.connect_timeout.unwrap().nanos, 250_000_000);
    let od = c.outlier_detection.as_ref().unwrap();
    assert_eq!(od.base_ejection_time.unwrap().seconds, 30);
    let json = courier_proto::to_json(&b);
    let monitors = &json["overload_manager"]["resource_monitors"];
    // int64/uint64 render as strings in the proto3 JSON mapping.
    assert_eq!(
        monitors[0]["typed_config"]["max_heap_size_bytes"],
        "2147483648"
    );
    assert_eq!(
        monitors[1]["typed_config"]["max_heap_size_bytes"],
        "4294967296"
    );
}

#[test]
fn booleans_and_nested_any() {
    let yaml = r#"
name: c
ignore_health_on_host_removal: true
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    explicit_http_config:
      http2_protocol_options:
        allow_connect: True
        max_concurrent_streams: 100
upstream_config:
  name: envoy.upstreams.http.generic
  typed_config:
    "@type": type.googleapis.com/xds.type.v3.TypedStruct
    type_url: type.googleapis.com/envoy.extensions.upstreams.http.generic.v3.GenericConnectionPoolProto
    value: { any: [1, two, { three: false }] }
"#;
    let c: Cluster = from_yaml(yaml).unwrap();
    assert!(c.ignore_health_on_host_removal);
    let opts: HttpProtocolOptions = unpack_any(
        &c.typed_extension_protocol_options
            ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"],
    )
    .unwrap();
    let json = courier_proto::to_json(&opts);
    assert_eq!(
        json["explicit_http_config"]["http2_protocol_options"]["allow_connect"],
        true
    );
    // TypedStruct is not in envoy-types, but Envoy accepts it anywhere: so do we.
    let ts: courier_proto::typed_struct::TypedStruct = unpack_any(
        c.upstream_config
            .as_ref()
            .unwrap()
            .typed_config
            .as_ref()
            .unwrap(),
    )
    .unwrap();
    assert!(ts.type_url.ends_with("GenericConnectionPoolProto"));
    assert!(ts.value.unwrap().fields.contains_key("any"));
    let round: Cluster = courier_proto::from_value(&courier_proto::to_json(&c)).unwrap();
    assert_eq!(round, c);
}

#[test]
fn any_inside_any() {
    // An Any (typed_per_filter_config value) inside an Any (HCM typed_config).
    let yaml = r#"
name: l
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: h
      route_config:
        virtual_hosts:
        - name: v
          domains: ["*"]
          typed_per_filter_config:
            envoy.filters.http.router:
              "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
              disabled: true
              config:
                "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
                suppress_envoy_headers: true
      http_filters:
      - name: envoy.filters.http.router
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#;
    let l: courier_proto::envoy::config::listener::v3::Listener = from_yaml(yaml).unwrap();
    let json = courier_proto::to_json(&l);
    let vh =
        &json["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0];
    assert_eq!(
        vh["typed_per_filter_config"]["envoy.filters.http.router"]["config"]
            ["suppress_envoy_headers"],
        true
    );
    let again: courier_proto::envoy::config::listener::v3::Listener =
        courier_proto::from_value(&json).unwrap();
    assert_eq!(again, l);
}

#[test]
fn struct_and_value_metadata() {
    let yaml = r#"
name: c
metadata:
  filter_metadata:
    envoy.lb:
      canary: true
      version: 1.2
      replicas: 3
      zone: ~
      tags: [a, 1, { nested: x }]
"#;
    let c: Cluster = from_yaml(yaml).unwrap();
    let md = c.metadata.unwrap();
    let s = &md.filter_metadata["envoy.lb"].fields;
    assert_eq!(s["canary"].kind, Some(Kind::BoolValue(true)));
    // A plain float is a string to Envoy (yaml-cpp, then JSON), and in a Struct stays one.
    assert_eq!(s["version"].kind, Some(Kind::StringValue("1.2".into())));
    assert_eq!(s["replicas"].kind, Some(Kind::NumberValue(3.0)));
    assert!(matches!(s["zone"].kind, Some(Kind::NullValue(_))));
    let Some(Kind::ListValue(tags)) = &s["tags"].kind else {
        panic!("list")
    };
    assert_eq!(tags.values.len(), 3);
}

#[test]
fn json_and_camel_case_names() {
    let c: Cluster =
        from_json(r#"{"name": "c", "connectTimeout": "2s", "lbPolicy": "RING_HASH"}"#).unwrap();
    assert_eq!(c.connect_timeout.unwrap().seconds, 2);
    assert_eq!(c.lb_policy, 2);
    let y: Cluster = from_yaml("name: c\nconnectTimeout: 2s\nlbPolicy: RING_HASH\n").unwrap();
    assert_eq!(y, c);
}

#[test]
fn anchors_and_merge_keys() {
    let yaml = r#"
name: c
connect_timeout: &t 1s
cleanup_interval: *t
circuit_breakers:
  thresholds:
  - &defaults { max_connections: 1, max_requests: 2 }
  - <<: *defaults
    priority: HIGH
"#;
    let c: Cluster = from_yaml(yaml).unwrap();
    assert_eq!(c.cleanup_interval, c.connect_timeout);
    let t = &c.circuit_breakers.unwrap().thresholds;
    assert_eq!(t[1].max_requests.unwrap().value, 2);
    assert_eq!(t[1].priority, 1);

    // Errors in a document with merge keys still name the path.
    let bad = yaml.replace("priority: HIGH", "priority: HIGHEST");
    let err = from_yaml::<Cluster>(&bad).unwrap_err();
    assert_eq!(err.path(), "circuit_breakers.thresholds[1].priority");
    assert!(err.to_string().starts_with(
        "circuit_breakers.thresholds[1].priority: unknown enum value \"HIGHEST\" for envoy.config.core.v3.RoutingPriority"
    ), "{err}");
}

#[test]
fn empty_documents_are_default() {
    for text in [
        "",
        "  \n",
        "# only a comment\n",
        "---\n",
        "~\n",
        "null\n",
        "---\n# c\n",
    ] {
        let b: Bootstrap = from_yaml(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(b, Bootstrap::default(), "{text:?}");
    }
    for text in ["", " ", "null"] {
        assert_eq!(from_json::<Bootstrap>(text).unwrap(), Bootstrap::default());
    }
    assert_eq!(
        courier_proto::from_value::<Bootstrap>(&serde_json::Value::Null).unwrap(),
        Bootstrap::default()
    );
}

#[test]
fn multi_document_is_an_error() {
    let err =
        from_yaml::<Bootstrap>("---\nnode: {id: a}\n---\nnode: {id: b}\n---\n{}\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "expected a single YAML document, found 3 (separated by \"---\")"
    );
    assert_eq!(err.path(), "");
}
