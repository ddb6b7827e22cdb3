//! `--mode validate` with REST-JSON config sources (`api_type: REST`): accepted where Envoy
//! accepts them, refused with Envoy's reason where Envoy refuses them. When `envoy` is on
//! PATH, every case is also checked against Envoy's own `--mode validate`.

mod common;

use common::*;

/// A bootstrap whose CDS and LDS come over REST with `api_config_source` fields `api`
/// (the static cluster `xds` exists).
fn rest_bootstrap(api: &str) -> String {
    format!(
        r#"node: {{ id: node-1, cluster: c }}
admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }} }}
dynamic_resources:
  cds_config: {{ api_config_source: {{ {api} }}, resource_api_version: V3 }}
  lds_config: {{ api_config_source: {{ {api} }}, resource_api_version: V3 }}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    load_assignment: {{ cluster_name: xds, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 1 }} }} }} }}] }}] }}
"#
    )
}

/// Envoy's verdict on `yaml` (`None` when Envoy is not installed): exit 0, and its output.
fn envoy_validate(yaml: &str) -> Option<(bool, String)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), "bootstrap.yaml", yaml);
    let out = std::process::Command::new("envoy")
        .args(["--mode", "validate", "--use-dynamic-base-id", "-c"])
        .arg(&cfg)
        .output()
        .ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    Some((out.status.success(), text))
}

fn courier_validate(yaml: &str) -> Finished {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), "bootstrap.yaml", yaml);
    run_to_exit(&[
        "--mode",
        "validate",
        "-c",
        path.to_str().expect("utf-8 path"),
    ])
}

const GOOD: &str = "api_type: REST, transport_api_version: V3, cluster_names: [xds], refresh_delay: 1s, request_timeout: 1s";

#[test]
fn validate_accepts_rest_sources_as_envoy_does() {
    for api in [
        GOOD,
        // request_timeout defaults to 1 s; rate_limit_settings is for gRPC and ignored.
        "api_type: REST, cluster_names: [xds], refresh_delay: 0.2s",
        "api_type: REST, cluster_names: [xds], refresh_delay: 1s, rate_limit_settings: { max_tokens: 1 }",
    ] {
        let yaml = rest_bootstrap(api);
        let f = courier_validate(&yaml);
        assert_eq!(f.code(), 0, "{api}: {f:?}");
        assert!(f.stdout.contains("OK"), "{api}: {f:?}");
        if let Some((ok, out)) = envoy_validate(&yaml) {
            assert!(ok, "Envoy refuses {api}: {out}");
        }
    }
}

#[test]
fn validate_refuses_bad_rest_sources_with_envoys_reason() {
    let cases = [
        (
            "api_type: REST, cluster_names: [xds]",
            "refresh_delay is required for REST API configuration sources",
        ),
        (
            "api_type: REST, cluster_names: [xds], refresh_delay: 1s, grpc_services: [{ envoy_grpc: { cluster_name: xds } }]",
            "if not a gRPC type, must not have a gRPC service specified",
        ),
        (
            "api_type: REST, cluster_names: [xds, xds], refresh_delay: 1s",
            "must have a singleton cluster name specified",
        ),
        (
            "api_type: REST, refresh_delay: 1s",
            "API configs must have either a gRPC service or a cluster name defined",
        ),
        (
            "api_type: REST, cluster_names: [nope], refresh_delay: 1s",
            "must have a statically defined non-EDS cluster: 'nope' does not exist",
        ),
        (
            "api_type: REST, cluster_names: [xds], refresh_delay: 1s, request_timeout: 0s",
            "value must be greater than 0s",
        ),
    ];
    for (api, reason) in cases {
        let yaml = rest_bootstrap(api);
        let f = courier_validate(&yaml);
        assert_eq!(f.code(), 1, "{api}: {f:?}");
        assert!(!f.stderr.contains("panicked"), "{api}: {f:?}");
        let errors = f.error_lines();
        assert_eq!(errors.len(), 1, "{api}: {f:?}");
        assert!(errors[0].contains(reason), "{api}: {f:?}");
        assert!(
            errors[0].contains("dynamic_resources.cds_config.api_config_source"),
            "{api}: {f:?}"
        );
        if let Some((ok, out)) = envoy_validate(&yaml) {
            assert!(!ok, "Envoy accepts {api}");
            assert!(
                out.contains(reason),
                "Envoy's reason for {api} differs: {out}"
            );
        }
    }
}

#[test]
fn rest_ads_config_is_refused_as_envoy_does() {
    let yaml = rest_bootstrap(GOOD).replace(
        "  cds_config:",
        &format!("  ads_config: {{ {GOOD} }}\n  cds_config:"),
    );
    let yaml = yaml.replace(
        &format!("{{ api_config_source: {{ {GOOD} }}, resource_api_version: V3 }}"),
        "{ ads: {}, resource_api_version: V3 }",
    );
    let f = courier_validate(&yaml);
    assert_eq!(f.code(), 1, "{f:?}");
    let reason = "type must be of non-aggregated gRPC";
    assert!(f.stderr.contains(reason), "{f:?}");
    if let Some((ok, out)) = envoy_validate(&yaml) {
        assert!(!ok && out.contains(reason), "{out}");
    }
}

/// A REST EDS source of a static cluster is validated like the bootstrap's.
#[test]
fn validate_checks_rest_eds_sources() {
    let yaml = format!(
        "{}  - name: e\n    type: EDS\n    connect_timeout: 1s\n    eds_cluster_config: {{ eds_config: {{ api_config_source: {{ api_type: REST, cluster_names: [xds] }}, resource_api_version: V3 }} }}\n",
        rest_bootstrap(GOOD)
    );
    let f = courier_validate(&yaml);
    assert_eq!(f.code(), 1, "{f:?}");
    let reason = "refresh_delay is required for REST API configuration sources";
    assert!(f.stderr.contains(reason), "{f:?}");
    if let Some((ok, out)) = envoy_validate(&yaml) {
        assert!(!ok && out.contains(reason), "{out}");
    }
}
