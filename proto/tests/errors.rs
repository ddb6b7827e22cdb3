//! Malformed inputs and the exact error each one gets.

use courier_proto::envoy::config::bootstrap::v3::Bootstrap;
use courier_proto::envoy::config::cluster::v3::Cluster;
use courier_proto::LoadError;

const STATIC_TCP: &str = include_str!("../../examples/static-tcp.yaml");

enum Input<'a> {
    Yaml(&'a str),
    Json(&'a str),
}

/// Loads `input` as a Bootstrap and checks the error's path and exact Display.
fn check(input: Input<'_>, path: &str, display: &str) {
    let err: LoadError = match input {
        Input::Yaml(t) => courier_proto::from_yaml::<Bootstrap>(t),
        Input::Json(t) => courier_proto::from_json::<Bootstrap>(t),
    }
    .expect_err("input must be rejected");
    assert_eq!(err.to_string(), display);
    assert_eq!(err.path(), path);
    if path.is_empty() {
        assert!(!display.starts_with(": "));
    } else {
        assert!(display.starts_with(&format!("{path}: ")));
    }
}

/// The static-tcp example with `from` replaced by `to` (which must occur).
fn tcp(from: &str, to: &str) -> String {
    assert!(STATIC_TCP.contains(from), "{from}");
    STATIC_TCP.replacen(from, to, 1)
}

/// A bootstrap with one cluster whose body is `body` (4-space indented).
fn cluster(body: &str) -> String {
    format!("static_resources:\n  clusters:\n  - name: c\n{body}\n")
}

const C0: &str = "static_resources.clusters[0]";

#[test]
fn unknown_field() {
    check(
        Input::Yaml(&tcp("lb_endpoints:", "lb_endpoint:")),
        "static_resources.clusters[0].load_assignment.endpoints[0]",
        "static_resources.clusters[0].load_assignment.endpoints[0]: unknown field \"lb_endpoint\" (line 29, column 9)",
    );
}

#[test]
fn unknown_field_points_at_the_key_not_the_mapping() {
    check(
        Input::Yaml(&cluster("    type: STATIC\n    conect_timeout: 1s")),
        C0,
        "static_resources.clusters[0]: unknown field \"conect_timeout\" (line 5, column 5)",
    );
}

#[test]
fn unknown_field_in_flow_mapping() {
    check(
        Input::Yaml(&tcp("port_value: 9002 }", "port_valu: 9002 }")),
        "static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[1].endpoint.address.socket_address",
        "static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[1].endpoint.address.socket_address: unknown field \"port_valu\" (line 31, column 72)",
    );
}

#[test]
fn unknown_field_at_root_has_no_prefix() {
    check(
        Input::Yaml("node: {id: a}\nstatic_resource: {}\n"),
        "",
        "unknown field \"static_resource\" (line 2, column 1)",
    );
}

#[test]
fn unknown_field_inside_typed_config() {
    check(
        Input::Yaml(&tcp("stat_prefix: tcp_in", "stat_prefx: tcp_in")),
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config",
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config: unknown field \"stat_prefx\" (line 18, column 11)",
    );
}

#[test]
fn invalid_duration() {
    check(
        Input::Yaml(&tcp("0.25s", "abc")),
        "static_resources.clusters[0].connect_timeout",
        "static_resources.clusters[0].connect_timeout: invalid duration \"abc\" (expected a string like \"1.5s\") (line 24, column 22)",
    );
}

#[test]
fn duration_as_bare_number() {
    check(
        Input::Yaml(&tcp("idle_timeout: 60s", "idle_timeout: 60")),
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.idle_timeout",
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.idle_timeout: invalid duration 60 (expected a string like \"1.5s\") (line 20, column 25)",
    );
}

#[test]
fn unknown_enum_value() {
    check(
        Input::Yaml(&tcp("ROUND_ROBIN", "ROUND")),
        "static_resources.clusters[0].lb_policy",
        "static_resources.clusters[0].lb_policy: unknown enum value \"ROUND\" for envoy.config.cluster.v3.Cluster.LbPolicy (expected one of ROUND_ROBIN, LEAST_REQUEST, RING_HASH, RANDOM, MAGLEV, CLUSTER_PROVIDED, LOAD_BALANCING_POLICY_CONFIG) (line 25, column 16)",
    );
}

#[test]
fn enum_of_wrong_type() {
    check(
        Input::Yaml(&cluster("    type: true")),
        "static_resources.clusters[0].type",
        "static_resources.clusters[0].type: wrong type: expected an enum value name or number (envoy.config.cluster.v3.Cluster.DiscoveryType), got boolean true (line 4, column 11)",
    );
}

#[test]
fn uint32_out_of_range() {
    check(
        Input::Yaml(&tcp("port_value: 10000", "port_value: 99999999999")),
        "static_resources.listeners[0].address.socket_address.port_value",
        "static_resources.listeners[0].address.socket_address.port_value: invalid uint32 value 99999999999: out of range (line 12, column 57)",
    );
}

#[test]
fn uint32_negative() {
    check(
        Input::Yaml(&tcp("port_value: 10000", "port_value: -1")),
        "static_resources.listeners[0].address.socket_address.port_value",
        "static_resources.listeners[0].address.socket_address.port_value: invalid uint32 value -1: out of range (line 12, column 57)",
    );
}

#[test]
fn uint32_not_a_number() {
    check(
        Input::Yaml(&tcp("port_value: 10000", "port_value: http")),
        "static_resources.listeners[0].address.socket_address.port_value",
        "static_resources.listeners[0].address.socket_address.port_value: invalid uint32 value \"http\" (line 12, column 57)",
    );
}

#[test]
fn wrapper_not_an_integer() {
    check(
        Input::Yaml(&tcp("load_balancing_weight: 2", "load_balancing_weight: 1.5")),
        "static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[1].load_balancing_weight",
        "static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[1].load_balancing_weight: invalid uint32 value 1.5: not an integer (line 32, column 34)",
    );
}

#[test]
fn unknown_type_url() {
    check(
        Input::Yaml(&tcp("tcp_proxy.v3.TcpProxy", "tcp_proxy.v3.TcpProxx")),
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config",
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config: unknown \"@type\" \"type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxx\" in Any (no such message type in Envoy's v3 API) (line 17, column 11)",
    );
}

#[test]
fn missing_type_url() {
    check(
        Input::Yaml(&tcp(
            "          \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n",
            "",
        )),
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config",
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config: missing \"@type\" in Any (line 17, column 11)",
    );
}

#[test]
fn type_url_without_slash() {
    check(
        Input::Yaml(&tcp(
            "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        )),
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config",
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config: invalid \"@type\" \"envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\" in Any (expected \"type.googleapis.com/<message name>\") (line 17, column 11)",
    );
}

#[test]
fn oneof_conflict() {
    check(
        Input::Yaml(&cluster("    type: STATIC\n    cluster_type: {name: envoy.clusters.aggregate}")),
        C0,
        "static_resources.clusters[0]: fields \"type\" and \"cluster_type\" are mutually exclusive (oneof \"cluster_discovery_type\"); set only one (line 5, column 5)",
    );
}

#[test]
fn message_given_a_scalar() {
    check(
        Input::Yaml("admin: 127.0.0.1:9901\n"),
        "admin",
        "admin: wrong type: expected a mapping (envoy.config.bootstrap.v3.Admin), got string \"127.0.0.1:9901\" (line 1, column 8)",
    );
}

#[test]
fn list_given_a_mapping() {
    check(
        Input::Yaml("static_resources:\n  clusters:\n    name: c\n"),
        "static_resources.clusters",
        "static_resources.clusters: wrong type: expected a list, got a mapping (line 3, column 5)",
    );
}

#[test]
fn quoted_on_is_not_a_boolean() {
    // A plain `yes` or `on` is a boolean (yaml-cpp reads it so), and so is a quoted "yes"
    // (the proto JSON parser takes it); a quoted "on" is refused, by Envoy too.
    check(
        Input::Yaml(&cluster("    respect_dns_ttl: \"on\"")),
        "static_resources.clusters[0].respect_dns_ttl",
        "static_resources.clusters[0].respect_dns_ttl: wrong type: expected a boolean, got string \"on\" (use true or false) (line 4, column 22)",
    );
}

#[test]
fn map_field_given_a_list() {
    check(
        Input::Yaml(&cluster("    metadata: {filter_metadata: [1]}")),
        "static_resources.clusters[0].metadata.filter_metadata",
        "static_resources.clusters[0].metadata.filter_metadata: wrong type: expected a mapping, got a list (line 4, column 33)",
    );
}

#[test]
fn invalid_base64() {
    check(
        Input::Yaml(&cluster(
            "    metadata: {typed_filter_metadata: {x: {\"@type\": type.googleapis.com/google.protobuf.BytesValue, value: \"!!!\"}}}",
        )),
        "static_resources.clusters[0].metadata.typed_filter_metadata.x.value",
        "static_resources.clusters[0].metadata.typed_filter_metadata.x.value: invalid base64 in bytes value: Invalid symbol 33, offset 0. (line 4, column 108)",
    );
}

#[test]
fn nested_any_error_has_the_full_path() {
    let yaml = "\
static_resources:
  listeners:
  - name: l
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: h
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
              dynamic_stat: true
";
    check(
        Input::Yaml(yaml),
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0].typed_config",
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0].typed_config: unknown field \"dynamic_stat\" (line 14, column 15)",
    );
}

#[test]
fn multiple_documents() {
    check(
        Input::Yaml("node: {id: a}\n---\nnode: {id: b}\n"),
        "",
        "expected a single YAML document, found 2 (separated by \"---\")",
    );
}

#[test]
fn yaml_syntax_error() {
    check(
        Input::Yaml("node:\n  id: a\n cluster: b\n"),
        "",
        "invalid YAML: did not find expected key while parsing a block mapping (line 3, column 2)",
    );
    check(
        Input::Yaml("node: {id: a\n"),
        "",
        "invalid YAML: did not find expected ',' or '}' while parsing a flow mapping started at line 1, column 7 (line 2, column 1)",
    );
}

#[test]
fn root_of_wrong_type() {
    check(
        Input::Yaml("- node: {}\n"),
        "",
        "wrong type: expected a mapping (envoy.config.bootstrap.v3.Bootstrap), got a list (line 1, column 1)",
    );
}

#[test]
fn json_unknown_field() {
    check(
        Input::Json("{\"node\": {\"idx\": \"a\"}}"),
        "node",
        "node: unknown field \"idx\" (line 1, column 15)",
    );
}

#[test]
fn json_wrong_type() {
    check(
        Input::Json("{\n  \"node\": {\n    \"id\": 1\n  }\n}"),
        "node.id",
        "node.id: wrong type: expected a string, got number 1 (line 3, column 11)",
    );
}

#[test]
fn json_syntax_error() {
    check(
        Input::Json("{\"node\": {\"id\": \"a\"},}"),
        "",
        "invalid JSON: trailing comma (line 1, column 22)",
    );
    check(
        Input::Json("{\"node\": {}} extra"),
        "",
        "invalid JSON: trailing characters (line 1, column 14)",
    );
}

#[test]
fn json_duration_out_of_range() {
    check(
        Input::Json(r#"{"stats_flush_interval": "315576000001s"}"#),
        "stats_flush_interval",
        "stats_flush_interval: invalid duration \"315576000001s\": out of range (expected a string like \"1.5s\") (line 1, column 40)",
    );
}

#[test]
fn from_value_errors_have_a_path_but_no_location() {
    let value =
        serde_json::json!({"name": "c", "load_assignment": {"endpoints": [{"lb_endpoint": []}]}});
    let err = courier_proto::from_value::<Cluster>(&value).unwrap_err();
    assert_eq!(err.path(), "load_assignment.endpoints[0]");
    assert_eq!(err.location(), None);
    assert_eq!(
        err.to_string(),
        "load_assignment.endpoints[0]: unknown field \"lb_endpoint\""
    );
}

#[test]
fn error_accessors() {
    let err = courier_proto::from_yaml::<Bootstrap>(&tcp("ROUND_ROBIN", "ROUND")).unwrap_err();
    assert_eq!(
        err.location(),
        Some(courier_proto::Location {
            line: 25,
            column: 16
        })
    );
    assert!(err.reason().starts_with("unknown enum value \"ROUND\""));
    assert!(!err.reason().contains("line"));
}
