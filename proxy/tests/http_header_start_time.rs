//! `%START_TIME%` in header values (Contour's `x-request-start: t=%START_TIME(%s.%3f)%`):
//! the request's start in the format given, on the request and on its answer. Each case
//! runs through Courier and, when `envoy` is on PATH, through Envoy 1.40; the values are
//! times, so what is compared is their form and that they are the request's start.

mod http_support;

use std::time::{SystemTime, UNIX_EPOCH};

use http_support::*;

fn routes() -> String {
    r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: up }
                request_headers_to_add:
                - header: { key: x-request-start, value: "t=%START_TIME(%s.%3f)%" }
                - header: { key: x-start-default, value: "%START_TIME%" }
                response_headers_to_add:
                - header: { key: x-start-year, value: "%START_TIME(%Y)% %%literal" }
"#
    .to_string()
}

fn check(proxy: &Courier, up: &Upstream) {
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let r = Client::connect(proxy.listener).get("example.com", "/", &[]);
    let after = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert_eq!(r.status, 200);
    let seen = up.last().expect("the upstream saw the request");
    let start = seen.header("x-request-start").expect("x-request-start");
    let secs: f64 = start
        .strip_prefix("t=")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("not t=<seconds>.<millis>: {start}"));
    assert_eq!(start.len(), "t=".len() + 10 + 1 + 3, "{start}");
    assert!(
        secs >= before - 0.002 && secs <= after,
        "{secs} not in [{before}, {after}]"
    );
    let default = seen.header("x-start-default").expect("x-start-default");
    assert!(
        default.len() == 24 && default.ends_with('Z') && default.as_bytes()[10] == b'T',
        "{default}"
    );
    let year = r.header("x-start-year").expect("x-start-year");
    assert!(
        year.len() == 4 + " %literal".len() && year.ends_with(" %literal"),
        "{year}"
    );
}

#[test]
fn start_time_in_header_values_as_envoy() {
    let up = Upstream::start("up");
    let b = bootstrap(&routes(), "", &cluster("up", &[up.addr], ""));
    check(&Courier::start(&b), &up);
    if let Some(envoy) = Courier::start_envoy(&b) {
        check(&envoy, &up);
    }
}
