//! The connection manager's `request_id_extension` (Envoy's UUID extension,
//! `pack_trace_reason` and `use_request_id_for_trace_sampling`) with Zipkin tracing at 50%
//! random sampling: the `x-request-id` the upstream receives (generated or the client's,
//! its trace mark written or not) and the tracing counters. Each configuration runs
//! through Courier and, when `envoy` is on PATH, through Envoy 1.40: the transcripts must
//! be equal, and equal to what is written here where it matters.

mod http_support;

use http_support::*;

fn boot(upstream: std::net::SocketAddr, extension: &str) -> String {
    bootstrap(
        &all_to("c"),
        &format!(
            "          internal_address_config: {{ cidr_ranges: [ {{ address_prefix: 10.0.0.0, prefix_len: 8 }} ] }}
{extension}          tracing:
            random_sampling: {{ value: 50 }}
            provider:
              name: envoy.tracers.zipkin
              typed_config:
                \"@type\": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig
                collector_cluster: zipkin
                collector_endpoint: /api/v2/spans
                collector_endpoint_version: HTTP_JSON
"
        ),
        &format!(
            "{}{}",
            cluster("c", &[upstream], ""),
            cluster("zipkin", &[refusing_addr()], "")
        ),
    )
}

fn extension(fields: &str) -> String {
    format!(
        "          request_id_extension:
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig
{fields}"
    )
}

/// Pivot 0 (sampled at 50%).
const LOW: &str = "00000000-1111-4222-8333-444444444444";
/// Pivot 0xffff % 10000 = 5535 (not sampled at 50%).
const HIGH: &str = "0000ffff-1111-4222-8333-444444444444";

/// The requests' extra headers.
fn requests() -> Vec<Vec<(&'static str, String)>> {
    let marked = |mark: char| format!("00000000-1111-{mark}222-8333-444444444444");
    let internal = ("x-forwarded-for", "10.0.0.1".to_string());
    vec![
        // Generated: forced, as a random id's sampling would be a coin toss.
        vec![("x-envoy-force-trace", "1".into()), internal.clone()],
        vec![("x-request-id", LOW.into())],
        vec![("x-request-id", HIGH.into())],
        vec![("x-request-id", marked('9'))],
        vec![("x-request-id", marked('a'))],
        vec![("x-request-id", marked('b'))],
        vec![(
            "x-request-id",
            "0000ffff-1111-a222-8333-444444444444".into(),
        )],
        vec![("x-request-id", "not-a-uuid".into())],
        vec![(
            "x-request-id",
            "zzzzzzzz-1111-4222-8333-444444444444".into(),
        )],
        vec![
            ("x-request-id", HIGH.into()),
            ("x-envoy-force-trace", "1".into()),
            internal.clone(),
        ],
        vec![
            ("x-request-id", HIGH.into()),
            ("x-client-trace-id", "1".into()),
        ],
        vec![("x-request-id", "0000ffff".into())],
    ]
}

/// How the id the upstream received relates to the one sent: equal, equal but for its
/// mark (the new mark), or generated (its mark).
fn relation(sent: Option<&str>, got: Option<&str>) -> String {
    let mark = |id: &str| id.chars().nth(14).unwrap_or('-');
    match (sent, got) {
        (_, None) => "none".into(),
        (None, Some(g)) if g.len() == 36 => format!("generated, mark {}", mark(g)),
        (Some(s), Some(g)) if s == g => "as sent".into(),
        (Some(s), Some(g)) if s.len() == g.len() && s.len() == 36 => {
            let differ: Vec<usize> = s
                .bytes()
                .zip(g.bytes())
                .enumerate()
                .filter(|(_, (a, b))| a != b)
                .map(|(i, _)| i)
                .collect();
            if differ == [14] {
                format!("mark {}", mark(g))
            } else {
                format!("changed {g}")
            }
        }
        (_, Some(g)) => format!("other {g}"),
    }
}

fn transcript(start: fn(&str) -> Option<Courier>, ext: &str) -> Option<Vec<String>> {
    let upstream = Upstream::start("u");
    let proxy = start(&boot(upstream.addr, ext))?;
    let mut out = Vec::new();
    for headers in requests() {
        let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = get(proxy.listener, "example.com", "/", &pairs);
        let sent = headers
            .iter()
            .find(|(k, _)| *k == "x-request-id")
            .map(|(_, v)| v.as_str());
        let got = upstream
            .last()
            .and_then(|s| s.header("x-request-id").map(str::to_string));
        out.push(format!(
            "{pairs:?} -> {} {}",
            r.status,
            relation(sent, got.as_deref())
        ));
    }
    for c in [
        "random_sampling",
        "service_forced",
        "client_enabled",
        "not_traceable",
    ] {
        out.push(format!(
            "{c}={}",
            proxy.stat(&format!("http.ingress.tracing.{c}"))
        ));
    }
    Some(out)
}

fn compared(ext: &str) -> Vec<String> {
    let ours = transcript(|b| Some(Courier::start(b)), ext).expect("courier");
    if let Some(theirs) = transcript(Courier::start_envoy, ext) {
        assert_eq!(ours, theirs, "courier vs envoy");
    }
    ours
}

fn has(t: &[String], line: &str) {
    assert!(t.iter().any(|l| l == line), "{line:?} not in {t:#?}");
}

#[test]
fn default_extension_packs_the_reason() {
    let t = compared(&extension(""));
    has(
        &t,
        &format!("[(\"x-request-id\", \"{LOW}\")] -> 200 mark 9"),
    );
    has(
        &t,
        &format!("[(\"x-request-id\", \"{HIGH}\")] -> 200 as sent"),
    );
    has(&t, "[(\"x-envoy-force-trace\", \"1\"), (\"x-forwarded-for\", \"10.0.0.1\")] -> 200 generated, mark a");
    // An absent extension is the same.
    assert_eq!(compared(""), t);
}

#[test]
fn pack_trace_reason_false_leaves_the_id() {
    let t = compared(&extension("              pack_trace_reason: false\n"));
    has(
        &t,
        &format!("[(\"x-request-id\", \"{LOW}\")] -> 200 as sent"),
    );
    // The decision reads the id's pivot, not its mark (measured: Envoy reads no mark it
    // would not write).
    has(&t, "random_sampling=4");
    has(&t, "service_forced=2");
}

#[test]
fn use_request_id_for_trace_sampling_false_leaves_the_decision_to_the_tracer() {
    let t = compared(&extension(
        "              use_request_id_for_trace_sampling: false\n",
    ));
    has(
        &t,
        &format!("[(\"x-request-id\", \"{LOW}\")] -> 200 as sent"),
    );
    has(
        &t,
        &format!("[(\"x-request-id\", \"{HIGH}\")] -> 200 as sent"),
    );
    // Every request counts as sampled, the forced ones too.
    has(&t, "random_sampling=12");
    has(&t, "service_forced=0");
}

#[test]
fn bad_extensions_are_refused_as_envoy_refuses_them() {
    let base = boot(
        refusing_addr(),
        &extension("              pack_trace_reason: true\n"),
    );
    if let Some((code, out)) = envoy_validate(&base) {
        assert_eq!(code, Some(0), "{out}");
    }
    let cases: &[(&str, &str, &str)] = &[
        (
            "type.googleapis.com/envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig",
            "type.googleapis.com/google.protobuf.Struct",
            "request_id_extension.typed_config",
        ),
        (
            "              pack_trace_reason: true\n",
            "              pack_trace_reason: 7\n",
            "pack_trace_reason",
        ),
    ];
    for (from, to, _) in cases {
        if let Some((code, out)) = envoy_validate(&base.replacen(from, to, 1)) {
            assert_ne!(code, Some(0), "envoy took {to}: {out}");
        }
    }
    assert_refused_by_path(&base, cases);
}
