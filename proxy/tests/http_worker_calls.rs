//! What a worker's own requests carry, as Envoy's async client sends them: the HTTP
//! authorization check (`x-envoy-internal`, no `x-forwarded-for`), Lua's `httpCall()`
//! (both, `send_xff = false` turning the address off, a given `x-forwarded-for` appended
//! to), request mirrors (both), and `x-envoy-expected-rq-timeout-ms` for a call with a
//! timeout. Run through Courier and Envoy 1.40; the two must agree.

mod http_support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http_support::*;

const SCRIPT: &str = r#"
function envoy_on_request(h)
  local p = h:headers():get(':path')
  local call = {[':method'] = 'GET', [':authority'] = 'svc'}
  if p == '/lua' then
    call[':path'] = '/from-lua'
    h:httpCall('a', call, '', {timeout_ms = 1000})
  elseif p == '/lua-noxff' then
    call[':path'] = '/from-lua-noxff'
    call['x-forwarded-for'] = '10.0.0.1'
    h:httpCall('a', call, '', {timeout_ms = 0, send_xff = false})
  elseif p == '/lua-xff' then
    call[':path'] = '/from-lua-xff'
    call['x-forwarded-for'] = '10.0.0.1'
    h:httpCall('a', call, '', 500)
  end
end
"#;

fn boot(a: &Upstream) -> String {
    let routes = r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              routes:
              - match: { prefix: "/mirror" }
                route: { cluster: a, timeout: 7s, request_mirror_policies: [{ cluster: a }] }
              - match: { prefix: "/" }
                route: { cluster: a }
"#;
    let script: String = SCRIPT
        .lines()
        .map(|l| format!("                  {l}\n"))
        .collect();
    let filters = format!(
        r#"          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              http_service:
                server_uri: {{ uri: "http://authz", cluster: a, timeout: 2s }}
                path_prefix: /check
          - name: envoy.filters.http.lua
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              default_source_code:
                inline_string: |
{script}"#
    );
    with_filters(
        &bootstrap(routes, "", &cluster("a", &[a.addr], "")),
        &filters,
    )
}

/// Each request's upstream arrivals (`want` of them), sorted by path, with the three
/// fields Envoy's async client sets.
fn run(proxy: &Courier, a: &Upstream) -> Vec<String> {
    let cases: &[(&str, usize)] = &[
        ("/plain", 2),
        ("/lua", 3),
        ("/lua-noxff", 3),
        ("/lua-xff", 3),
        ("/mirror", 3),
    ];
    let mut out = Vec::new();
    for (path, want) in cases {
        a.seen.lock().expect("seen").clear();
        let before = a.requests.load(Ordering::SeqCst);
        let r = get(proxy.listener, "h", path, &[]);
        // The mirror may arrive after the response.
        let deadline = Instant::now() + Duration::from_secs(5);
        while a.requests.load(Ordering::SeqCst) - before < *want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut seen: Vec<String> = a
            .seen
            .lock()
            .expect("seen")
            .iter()
            .map(|s| {
                let f = |n: &str| s.header(n).unwrap_or("-").to_string();
                format!(
                    "{} internal={} xff={} timeout={}",
                    s.path,
                    f("x-envoy-internal"),
                    f("x-forwarded-for"),
                    f("x-envoy-expected-rq-timeout-ms")
                )
            })
            .collect();
        seen.sort();
        out.push(format!("{path}: {} [{}]", r.status, seen.join("; ")));
    }
    out
}

#[test]
fn worker_calls_carry_what_envoys_async_client_adds() {
    let a = Upstream::start("a");
    let got = run(&Courier::start(&boot(&a)), &a);
    let a = Upstream::start("a");
    match Courier::start_envoy(&boot(&a)) {
        Some(envoy) => assert_eq!(run(&envoy, &a), got, "envoy vs courier"),
        None => eprintln!("envoy not on PATH: skipping the worker calls differential"),
    }
    // The machine's own address differs between machines.
    let local: Vec<String> = got
        .iter()
        .flat_map(|l| l.split("xff=").skip(1))
        .filter_map(|v| v.split(' ').next())
        .flat_map(|v| v.split(','))
        .filter(|v| *v != "-" && *v != "10.0.0.1")
        .map(str::to_string)
        .collect();
    let got: Vec<String> = got
        .iter()
        .map(|l| local.iter().fold(l.clone(), |l, ip| l.replace(ip, "LOCAL")))
        .collect();
    assert_eq!(
        got,
        [
            "/plain: 200 [/check/plain internal=true xff=- timeout=2000; /plain internal=- xff=- timeout=15000]",
            "/lua: 200 [/check/lua internal=true xff=- timeout=2000; /from-lua internal=true xff=LOCAL timeout=1000; /lua internal=- xff=- timeout=15000]",
            "/lua-noxff: 200 [/check/lua-noxff internal=true xff=- timeout=2000; /from-lua-noxff internal=true xff=10.0.0.1 timeout=-; /lua-noxff internal=- xff=- timeout=15000]",
            "/lua-xff: 200 [/check/lua-xff internal=true xff=- timeout=2000; /from-lua-xff internal=true xff=10.0.0.1,LOCAL timeout=500; /lua-xff internal=- xff=- timeout=15000]",
            "/mirror: 200 [/check/mirror internal=true xff=- timeout=2000; /mirror internal=- xff=- timeout=7000; /mirror internal=true xff=LOCAL timeout=7000]",
        ]
    );
}
