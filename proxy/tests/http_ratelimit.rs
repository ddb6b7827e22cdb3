//! The global rate limit filter (`envoy.filters.http.ratelimit`) against a real rate
//! limit service (tonic, `envoy.service.ratelimit.v3.RateLimitService`): descriptors from
//! route and virtual host actions, per-route overrides, over-limit replies, errors and
//! timeouts under both failure modes, the service's headers, and the counters. Each
//! scenario runs through Courier and, when `envoy` is on PATH, through Envoy 1.40: the
//! transcripts must be equal, and equal to what is written here where it matters.

mod http_support;

use std::time::Duration;

use courier_proto::envoy::config::core::v3::HeaderValue;
use courier_proto::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use courier_proto::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
use courier_proto::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use courier_proto::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use http_support::*;

/// The rate limit service: a descriptor entry `user=blocked` is over the limit,
/// `user=error` fails the call, `user=slow` answers past the filter's timeout; anything
/// else is allowed, with the descriptors it was asked about in `x-rl-seen` for the
/// upstream.
#[derive(Clone, Default)]
struct Rls;

fn hv(key: &str, value: &str) -> HeaderValue {
    HeaderValue {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl RateLimitService for Rls {
    async fn should_rate_limit(
        &self,
        request: tonic::Request<RateLimitRequest>,
    ) -> Result<tonic::Response<RateLimitResponse>, tonic::Status> {
        let req = request.into_inner();
        let seen: Vec<String> = req
            .descriptors
            .iter()
            .map(|d| {
                d.entries
                    .iter()
                    .map(|e| format!("{}={}", e.key, e.value))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect();
        let has = |v: &str| seen.iter().any(|d| d.contains(&format!("user={v}")));
        if has("error") {
            return Err(tonic::Status::unavailable("down"));
        }
        if has("slow") {
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
        let limit = |name: &str, per: u32, unit: Unit, remaining: u32| DescriptorStatus {
            code: Code::Ok as i32,
            current_limit: Some(RateLimit {
                name: name.into(),
                requests_per_unit: per,
                unit: unit as i32,
            }),
            limit_remaining: remaining,
            duration_until_reset: Some(courier_proto::google::protobuf::Duration {
                seconds: 42,
                nanos: 0,
            }),
            ..Default::default()
        };
        let statuses = vec![
            limit("per-minute", 100, Unit::Minute, 7),
            DescriptorStatus::default(),
            limit("", 10, Unit::Second, 9),
            limit("odd", 5, Unit::Unknown, 20),
        ];
        let resp = if has("blocked") {
            RateLimitResponse {
                overall_code: Code::OverLimit as i32,
                statuses,
                response_headers_to_add: vec![hv("x-rl", "over")],
                raw_body: b"slow down".to_vec(),
                ..Default::default()
            }
        } else {
            RateLimitResponse {
                overall_code: Code::Ok as i32,
                request_headers_to_add: vec![hv(
                    "x-rl-seen",
                    &format!("{} {}", req.domain, seen.join(" | ")),
                )],
                response_headers_to_add: vec![hv("x-rl-resp", "ok")],
                statuses: if has("bare") { vec![] } else { statuses },
                ..Default::default()
            }
        };
        Ok(tonic::Response::new(resp))
    }
}

const H2: &str = "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: { http2_protocol_options: {} }\n";

/// Routes: `/none` without actions (and the virtual host's ignored), `/own` with the
/// filter's per-route actions and domain, `/direct` a direct response, everything else
/// with a user action (and the virtual host's generic key).
const ROUTES: &str = r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              rate_limits:
              - actions: [{ generic_key: { descriptor_value: vh } }]
              routes:
              - match: { prefix: "/none" }
                route: { cluster: up }
                typed_per_filter_config:
                  rl:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute
                    vh_rate_limits: IGNORE
              - match: { prefix: "/own" }
                route: { cluster: up }
                typed_per_filter_config:
                  rl:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute
                    domain: other
                    rate_limits:
                    - actions: [{ request_headers: { header_name: x-user, descriptor_key: user } }, { generic_key: { descriptor_value: own } }, { request_headers: { header_name: ":path", descriptor_key: path } }]
              - match: { prefix: "/direct" }
                direct_response: { status: 200, body: { inline_string: direct } }
              - match: { prefix: "/include" }
                route:
                  cluster: up
                  include_vh_rate_limits: true
                  rate_limits:
                  - actions: [{ request_headers: { header_name: x-user, descriptor_key: user } }]
              - match: { prefix: "/" }
                route:
                  cluster: up
                  rate_limits:
                  - actions: [{ request_headers: { header_name: x-user, descriptor_key: user } }]
                  - actions: [{ remote_address: {} }, { destination_cluster: {} }]
"#;

fn filter(extra: &str) -> String {
    format!(
        r#"          - name: rl
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
              domain: main
              timeout: 0.25s
              rate_limit_service:
                transport_api_version: V3
                grpc_service: {{ envoy_grpc: {{ cluster_name: rls }} }}
{extra}"#
    )
}

fn setup(extra: &str) -> (String, Upstream) {
    let rls = spawn_grpc_server(RateLimitServiceServer::new(Rls));
    let up = Upstream::start("up");
    let clusters = cluster("up", &[up.addr], "") + &cluster("rls", &[rls], H2);
    (
        with_filters(&bootstrap(ROUTES, "", &clusters), &filter(extra)),
        up,
    )
}

fn exchange(proxy: &Courier, up: &Upstream, path: &str, headers: &[(&str, &str)]) -> String {
    let before = up.requests.load(std::sync::atomic::Ordering::SeqCst);
    let r = Client::connect(proxy.listener).get("example.com", path, headers);
    let mut keep: Vec<String> = r
        .headers
        .iter()
        .filter(|(k, _)| {
            let k = k.to_ascii_lowercase();
            k.starts_with("x-rl")
                || k.starts_with("x-ratelimit")
                || k == "x-envoy-ratelimited"
                || k == "content-type"
        })
        .map(|(k, v)| format!("{}={v}", k.to_ascii_lowercase()))
        .collect();
    keep.sort();
    let mut out = format!("{path} -> {} {keep:?} body={:?}", r.status, r.body_str());
    let after = up.requests.load(std::sync::atomic::Ordering::SeqCst);
    match (after > before).then(|| up.last()).flatten() {
        Some(seen) => out.push_str(&format!(
            " | upstream x-rl-seen={:?}",
            seen.header("x-rl-seen")
        )),
        None => out.push_str(" | not forwarded"),
    }
    out
}

fn counters(proxy: &Courier, prefix: &str) -> Vec<String> {
    ["ok", "over_limit", "error", "failure_mode_allowed"]
        .iter()
        .map(|n| {
            let name = format!("cluster.up.{prefix}{n}");
            format!("{name}={}", proxy.stat(&name))
        })
        .chain(
            ["upstream_rq_429", "upstream_rq_403"]
                .iter()
                .map(|n| format!("cluster.up.{n}={}", proxy.stat(&format!("cluster.up.{n}")))),
        )
        .collect()
}

fn compare(courier: &[String], envoy: Option<Vec<String>>) {
    for line in courier {
        eprintln!("courier: {line}");
    }
    let Some(envoy) = envoy else { return };
    for line in &envoy {
        eprintln!("envoy:   {line}");
    }
    assert_eq!(
        courier,
        envoy.as_slice(),
        "Courier (left) and Envoy (right) differ"
    );
}

#[test]
fn descriptors_and_answers_as_envoy() {
    let (b, up) = setup("");
    let run = |proxy: &Courier| {
        let mut t = vec![
            exchange(proxy, &up, "/a", &[("x-user", "alice")]),
            exchange(proxy, &up, "/a", &[]),
            exchange(proxy, &up, "/a", &[("x-user", "blocked")]),
            exchange(proxy, &up, "/include", &[("x-user", "bob")]),
            exchange(proxy, &up, "/none", &[("x-user", "carol")]),
            exchange(proxy, &up, "/none", &[]),
            exchange(proxy, &up, "/own", &[("x-user", "dave")]),
            exchange(proxy, &up, "/own", &[("x-user", "blocked")]),
            exchange(proxy, &up, "/direct", &[("x-user", "blocked")]),
            exchange(proxy, &up, "/a", &[("x-user", "error")]),
            exchange(proxy, &up, "/a", &[("x-user", "slow")]),
        ];
        t.extend(counters(proxy, "ratelimit."));
        t
    };
    let courier = run(&Courier::start(&b));
    compare(&courier, Courier::start_envoy(&b).map(|e| run(&e)));
    assert!(
        courier[0].contains("-> 200")
            && courier[0]
                .contains("main user=alice | remote_address=127.0.0.1,destination_cluster=up"),
        "{}",
        courier[0]
    );
    assert!(
        courier[2].contains("-> 429")
            && courier[2].contains("x-envoy-ratelimited=true")
            && courier[2].contains("slow down"),
        "{}",
        courier[2]
    );
    assert!(courier[5].contains("x-rl-seen=None"), "{}", courier[5]);
    assert!(
        courier[9].contains("-> 200"),
        "failure mode allow: {}",
        courier[9]
    );
}

#[test]
fn failure_mode_deny_and_stat_prefix_as_envoy() {
    let (b, up) = setup(
        "              failure_mode_deny: true\n              status_on_error: { code: 503 }\n              stat_prefix: edge\n              disable_x_envoy_ratelimited_header: true\n              rate_limited_status: { code: 403 }\n",
    );
    let run = |proxy: &Courier| {
        let mut t = vec![
            exchange(proxy, &up, "/a", &[("x-user", "error")]),
            exchange(proxy, &up, "/a", &[("x-user", "slow")]),
            exchange(proxy, &up, "/a", &[("x-user", "blocked")]),
            exchange(proxy, &up, "/a", &[("x-user", "erin")]),
        ];
        t.extend(counters(proxy, "ratelimit.edge."));
        t
    };
    let courier = run(&Courier::start(&b));
    compare(&courier, Courier::start_envoy(&b).map(|e| run(&e)));
    assert!(
        courier[0].contains("-> 503") && courier[0].contains("not forwarded"),
        "{}",
        courier[0]
    );
    assert!(
        courier[2].contains("-> 403") && !courier[2].contains("x-envoy-ratelimited"),
        "{}",
        courier[2]
    );
}

#[test]
fn refuses_what_it_does_not_act_on() {
    let (base, _) = setup("");
    let at = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0].typed_config";
    let d = "              domain: main\n";
    assert_refused_by_path(
        &base,
        &[
            (
                d,
                "              domain: main\n              enable_retry_after_header: true\n",
                &format!("{at}.enable_retry_after_header"),
            ),
            (
                d,
                "              domain: main\n              metadata_namespace: x\n",
                &format!("{at}.metadata_namespace"),
            ),
            (
                d,
                "              domain: main\n              request_type: sometimes\n",
                &format!("{at}.request_type"),
            ),
            (
                d,
                "              domain: main\n              stage: 11\n",
                &format!("{at}.stage"),
            ),
            (
                "vh_rate_limits: IGNORE",
                "vh_rate_limits: IGNORE\n                    override_option: OVERRIDE_POLICY",
                "override_option",
            ),
        ],
    );
    for (from, to) in [
        (d, "              domain: \"\"\n"),
        (d, "              domain: main\n              stage: 11\n"),
    ] {
        if let Some((code, _)) = envoy_validate(&base.replacen(from, to, 1)) {
            assert_ne!(code, Some(0), "Envoy accepts {to}");
        }
    }
}

#[test]
fn x_ratelimit_headers_as_envoy() {
    let (b, up) = setup("              enable_x_ratelimit_headers: DRAFT_VERSION_03\n");
    let run = |proxy: &Courier| {
        vec![
            exchange(proxy, &up, "/a", &[("x-user", "fred")]),
            exchange(proxy, &up, "/a", &[("x-user", "blocked")]),
            exchange(proxy, &up, "/a", &[("x-user", "bare")]),
            exchange(proxy, &up, "/none", &[]),
        ]
    };
    let courier = run(&Courier::start(&b));
    compare(&courier, Courier::start_envoy(&b).map(|e| run(&e)));
    assert!(
        courier[0].contains("x-ratelimit-limit=100, 100;w=60;name=\\\"per-minute\\\", 10;w=1")
            && courier[0].contains("x-ratelimit-remaining=7")
            && courier[0].contains("x-ratelimit-reset=42"),
        "{}",
        courier[0]
    );
    assert!(
        courier[1].contains("-> 429") && courier[1].contains("x-ratelimit-remaining=7"),
        "{}",
        courier[1]
    );
}
