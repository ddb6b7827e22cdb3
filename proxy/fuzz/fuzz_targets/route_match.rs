//! Fuzzes route selection: arbitrary host, path and headers against a table using every
//! matcher kind. Matching must never panic.
#![no_main]

use std::sync::OnceLock;

use courier::http::route::{RouteConfiguration, RouteTable};
use libfuzzer_sys::fuzz_target;

fn table() -> &'static RouteTable {
    static T: OnceLock<RouteTable> = OnceLock::new();
    T.get_or_init(|| {
        let rc: RouteConfiguration = courier_proto::from_value(&serde_json::json!({
            "name": "fuzz",
            "virtual_hosts": [
                {"name": "a", "domains": ["*.example.com", "pre.*", "exact.host:8080"], "routes": [
                    {"match": {"path_separated_prefix": "/sep"}, "direct_response": {"status": 200}}
                ]},
                {"name": "b", "domains": ["*"], "routes": [
                    {"match": {"prefix": "/CI", "case_sensitive": false}, "direct_response": {"status": 200}},
                    {"match": {"path": "/p"}, "direct_response": {"status": 200}},
                    {"match": {"safe_regex": {"regex": "/r/[a-z]+/\\d+"}}, "direct_response": {"status": 200}},
                    {"match": {"prefix": "/h", "headers": [
                        {"name": "x-a", "string_match": {"contains": "z", "ignore_case": true}},
                        {"name": "x-b", "present_match": true, "invert_match": true}
                    ]}, "direct_response": {"status": 200}},
                    {"match": {"prefix": "/q", "query_parameters": [{"name": "k", "string_match": {"safe_regex": {"regex": "v.*"}}}]}, "direct_response": {"status": 200}},
                    {"match": {"prefix": "/"}, "direct_response": {"status": 404}}
                ]}
            ]
        }))
        .expect("fuzz route config");
        RouteTable::compile(&rc, &courier::stats::Store::new(1), &courier::filters::http::HTTP_FILTERS).expect("compiles")
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let host = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("/");
    let mut headers = http::HeaderMap::new();
    for line in parts.next().unwrap_or("").lines() {
        if let Some((k, v)) = line.split_once(':') {
            if let (Ok(k), Ok(v)) = (
                http::header::HeaderName::from_bytes(k.trim().as_bytes()),
                http::HeaderValue::from_str(v.trim()),
            ) {
                headers.append(k, v);
            }
        }
    }
    let pseudo = courier::http::route::Pseudo {
        method: Some("GET"),
        path: Some(path),
        authority: Some(host),
        scheme: Some("http"),
        status: None,
    };
    let _ = table().route(host, path, &headers, &pseudo, 0);
    let _ = courier::http::conn_manager::path::sanitize_path(path, true, true);
});
