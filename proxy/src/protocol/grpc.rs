//! gRPC facts both the connection manager and the access logs read: whether a message
//! is gRPC, and the gRPC status an HTTP status stands for.

use http::header;

use crate::stats::dynamic::DynamicCounters;

/// Whether a request is gRPC (`content-type: application/grpc`, or `+` a suffix).
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    // `application/grpc` or `application/grpc+proto`, not `application/grpc-web`.
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v == b"application/grpc" || v.starts_with(b"application/grpc+")
    })
}

/// gRPC's status for an HTTP status (Envoy's `Grpc::Utility::httpToGrpcStatus`).
pub fn http_to_grpc_status(status: u16) -> u32 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// A `grpc-timeout` value for `d`, in milliseconds as Envoy writes it (`300m`), in the
/// next larger unit (seconds, minutes, hours) while it takes more than gRPC's eight digits.
pub fn timeout_value(d: std::time::Duration) -> http::HeaderValue {
    let mut n = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let mut unit = 'm';
    for (div, next) in [(1000, 'S'), (60, 'M'), (60, 'H')] {
        if n <= 99_999_999 {
            break;
        }
        n /= div;
        unit = next;
    }
    http::HeaderValue::from_str(&format!("{n}{unit}"))
        .unwrap_or(http::HeaderValue::from_static("0m"))
}

/// A gRPC request's service and method from its `:path` (Envoy's
/// `Grpc::Common::resolveServiceAndMethod`): the path before any `?`, split on `/` with
/// empty parts skipped, must have exactly two parts.
pub fn service_and_method(path: &str) -> Option<(&str, &str)> {
    let path = path.split('?').next().unwrap_or("");
    let mut parts = path.split('/').filter(|p| !p.is_empty());
    let service = parts.next()?;
    let method = parts.next()?;
    parts.next().is_none().then_some((service, method))
}

/// Whether a response is gRPC (Envoy's `Grpc::Common::isGrpcResponseHeaders`): a
/// headers-only one (trailers-only) when it has a `grpc-status`, else a `200` whose
/// content-type is gRPC's.
pub fn is_grpc_response(status: u16, headers: &http::HeaderMap, end_stream: bool) -> bool {
    if end_stream {
        return headers.contains_key("grpc-status");
    }
    status == 200 && is_grpc(headers)
}

/// Counts a `grpc-status` under `prefix` (Envoy's `Grpc::Context::chargeStat`, the names
/// the gRPC-Web and gRPC statistics filters share): the status's own counter, `success`
/// (status `0`) or `failure`, and `total`.
pub fn charge_status(counters: &DynamicCounters, prefix: &str, status: &[u8], worker: usize) {
    let status = String::from_utf8_lossy(status);
    counters.add(&format!("{prefix}{status}"), worker, 1);
    let outcome = if status == "0" { "success" } else { "failure" };
    counters.add(&format!("{prefix}{outcome}"), worker, 1);
    counters.add(&format!("{prefix}total"), worker, 1);
}
