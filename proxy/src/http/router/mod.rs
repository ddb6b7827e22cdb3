//! The router filter. Forwarding a request is `forward.rs` (the cluster, the upstream head,
//! the attempts, the reply), with its `timeouts.rs` and `retry.rs`; one attempt is
//! [`upstream_request`], a request's mirrors [`shadow`], the per-worker connection pools
//! [`pool`]. Here: what the connection manager hands the router (`Routed`, `Internal`) and
//! learns from it (`Outcome`), the header names both use, redirects, and an upgrade's
//! connection of its own.

pub(crate) mod forward;
pub mod pool;
mod retry;
pub mod retry_buffer;
pub mod shadow;
mod timeouts;
pub mod upstream_request;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};

use crate::http::codec::body::ProxyBody;
use crate::http::codec::handoff::DownstreamUpgrade;
use crate::http::conn_manager::conn_info::ConnInfo;
use crate::http::conn_manager::headers::strip_response_hop_by_hop;
use crate::http::conn_manager::stream_idle::{Expiry, StreamIdle};
use crate::http::conn_manager::upgrade::{self, WorkerIo};
use crate::http::request_stats::StatSinks;
use crate::http::route::header_mutations::FormatContext;
use crate::http::route::{Redirect, Route, RouteAction, RouteTable, VirtualHost};
use crate::http::router::upstream_request::AttemptError;
use crate::upstream::ClusterInfo;
use courier_runtime::event::rt;

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_ENVOY_EXTERNAL_ADDRESS: HeaderName =
    HeaderName::from_static("x-envoy-external-address");
pub(crate) static X_ENVOY_INTERNAL: HeaderName = HeaderName::from_static("x-envoy-internal");
pub(crate) static X_FORWARDED_CLIENT_CERT: HeaderName =
    HeaderName::from_static("x-forwarded-client-cert");
pub(crate) static X_ENVOY_FORCE_TRACE: HeaderName = HeaderName::from_static("x-envoy-force-trace");
pub(crate) static X_ENVOY_ORIGINAL_PATH: HeaderName =
    HeaderName::from_static("x-envoy-original-path");
pub(crate) static X_ENVOY_ORIGINAL_HOST: HeaderName =
    HeaderName::from_static("x-envoy-original-host");
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) static X_ENVOY_IS_TIMEOUT_RETRY: HeaderName =
    HeaderName::from_static("x-envoy-is-timeout-retry");
pub(crate) static X_ENVOY_EXPECTED_RQ_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-expected-rq-timeout-ms");
pub(crate) static X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");
pub(crate) static X_ENVOY_OVERLOADED: HeaderName = HeaderName::from_static("x-envoy-overloaded");
pub(crate) static X_ENVOY_ATTEMPT_COUNT: HeaderName =
    HeaderName::from_static("x-envoy-attempt-count");

pub(crate) fn rewrite_prefix(route: &Route, path: &str, new_prefix: &str) -> String {
    if route.is_regex() {
        // Envoy replaces the whole path (query kept) for regex matches.
        let q = path.find('?').map_or("", |i| &path[i..]);
        return format!("{new_prefix}{q}");
    }
    match route.matched_prefix_len() {
        Some(n) if n <= path.len() && path.is_char_boundary(n) => {
            format!("{new_prefix}{}", &path[n..])
        }
        _ => path.to_string(),
    }
}

pub(crate) fn rewrite_regex(re: &regex::Regex, sub: &str, path: &str) -> String {
    let (p, q) = match path.find('?') {
        Some(i) => (&path[..i], &path[i..]),
        None => (path, ""),
    };
    format!("{}{q}", re.replace_all(p, sub))
}

/// Whether `s` is a URI scheme (RFC 3986 §3.1).
pub(crate) fn is_scheme(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

pub(crate) fn redirect(
    rd: &Redirect,
    route: &Route,
    authority: &str,
    path: &str,
    request_scheme: &str,
) -> Response<ProxyBody> {
    let scheme = rd.scheme.as_deref().unwrap_or(request_scheme);
    let (orig_host, orig_port) = {
        let h = crate::http::route::strip_port(authority);
        let port = authority
            .get(h.len() + 1..)
            .and_then(|p| p.parse::<u16>().ok());
        (h.to_string(), port)
    };
    // Envoy: `host_redirect` replaces host and port; otherwise the request's host keeps its
    // port unless `port_redirect` replaces it or the scheme changes away from a default port.
    let host = match (&rd.host, rd.port) {
        (Some(h), Some(p)) => format!("{}:{p}", crate::http::route::strip_port(h)),
        (Some(h), None) => h.clone(),
        (None, Some(p)) => format!("{orig_host}:{p}"),
        (None, None) => match orig_port {
            Some(80) if rd.scheme.is_some() => orig_host,
            Some(p) => format!("{orig_host}:{p}"),
            None => orig_host,
        },
    };
    let host = match rd.port {
        Some(p) if (scheme == "http" && p == 80) || (scheme == "https" && p == 443) => {
            crate::http::route::strip_port(&host).to_string()
        }
        _ => host,
    };
    let mut new_path = if let Some(p) = &rd.path {
        p.clone()
    } else if let Some(p) = &rd.prefix_rewrite {
        rewrite_prefix(route, path, p)
    } else if let Some((re, sub)) = &rd.regex_rewrite {
        rewrite_regex(re, sub, path)
    } else {
        path.to_string()
    };
    if rd.strip_query {
        if let Some(i) = new_path.find('?') {
            new_path.truncate(i);
        }
    } else if rd.path.is_some() && !new_path.contains('?') {
        if let Some(i) = path.find('?') {
            new_path.push_str(&path[i..]);
        }
    }
    let location = format!("{scheme}://{host}{new_path}");
    let mut r = Response::new(ProxyBody::empty());
    *r.status_mut() = rd.status;
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    r
}

/// Envoy's answer to a plaintext request for a virtual host with `require_tls`: `301` to the
/// same host and path (query included) over `https`.
pub(crate) fn tls_redirect(authority: &str, path: &str) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::empty());
    *r.status_mut() = StatusCode::MOVED_PERMANENTLY;
    if let Ok(v) = HeaderValue::from_str(&format!("https://{authority}{path}")) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    r
}

/// Marks an internal request ([`crate::http::conn_manager::internal_address`]) for
/// [`forward::forward`], which obeys its controls
/// ([`crate::http::conn_manager::request_controls::RequestControls`]).
#[derive(Clone, Copy)]
pub(crate) struct Internal;

/// What the connection manager settled about a request before the router forwards it
/// ([`forward::forward`]): the authority and path it was routed by, the route it matched
/// with its virtual host and route table, and what the header formatters read.
#[derive(Clone, Copy)]
pub(crate) struct Routed<'a> {
    pub(crate) authority: &'a str,
    pub(crate) path: &'a str,
    pub(crate) table: &'a RouteTable,
    pub(crate) vh: &'a VirtualHost,
    pub(crate) route: &'a Route,
    pub(crate) action: &'a RouteAction,
    pub(crate) fcx: &'a FormatContext<'a>,
}

/// Appends `host` to `x-forwarded-host` unless it is the last value there already (Envoy's
/// `append_x_forwarded_host`).
pub(crate) fn append_forwarded_host(headers: &mut http::HeaderMap, host: &str) {
    let joined = match headers.get(&X_FORWARDED_HOST).and_then(|v| v.to_str().ok()) {
        Some(existing) if existing.rsplit(',').next().map(str::trim) == Some(host) => return,
        Some(existing) => format!("{existing},{host}"),
        None => host.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&joined) {
        headers.insert(X_FORWARDED_HOST.clone(), v);
    }
}

/// Sends an upgrade request (websocket) on a connection of its own and, on `101`, joins
/// it with the downstream connection into a tunnel (Envoy's upgrade handling; the pool's
/// connections are never upgraded, so they stay reusable).
/// What bounds an upgrade's tunnel besides the connection manager's stream idle timeout.
pub(crate) struct TunnelLimits {
    /// The route's `idle_timeout`.
    idle_timeout: Option<Duration>,
    /// The end of the stream's `max_stream_duration`.
    ends_at: Option<Instant>,
    /// The cluster's `upstream_rq_max_duration_reached`, for its `max_stream_duration`.
    duration_reached: Arc<crate::stats::Counter>,
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn send_upgrade(
    cluster: &Arc<ClusterInfo>,
    host: &Arc<crate::upstream::Host>,
    worker: usize,
    req: Request<ProxyBody>,
    downstream: DownstreamUpgrade,
    downstream_conn: &Rc<ConnInfo>,
    limits: TunnelLimits,
    sinks: &StatSinks<'_>,
) -> Result<Response<ProxyBody>, AttemptError> {
    let stats = cluster.stats.clone();
    stats.upstream_cx_total.inc(worker);
    let deadline = Instant::now() + cluster.connect_timeout;
    let io = match rt::timeout(Some(deadline), rt::TcpIo::connect(host.address)).await {
        Some(Ok(io)) => io,
        Some(Err(e)) => {
            tracing::debug!(cluster = %cluster.name, error = %e, "upstream connect failure");
            stats.upstream_cx_connect_fail.inc(worker);
            return Err(AttemptError::ConnectFailure);
        }
        None => {
            stats.upstream_cx_connect_timeout.inc(worker);
            return Err(AttemptError::ConnectFailure);
        }
    };
    sinks.attempt(worker);
    // The cluster's stream duration runs from here, the tunnel included, as Envoy's.
    let upstream_ends = cluster.stream_limits.attempt_ends();
    let sent = if cluster.http2 {
        rt::timeout(upstream_ends, upgrade::send_extended_connect(io, req)).await
    } else {
        rt::timeout(upstream_ends, send_h1_upgrade(io, req)).await
    };
    let Some(sent) = sent else {
        limits.duration_reached.inc(worker);
        return Err(AttemptError::MaxDuration);
    };
    let mut resp = match sent {
        Ok(r) => r,
        Err(e @ upgrade::UpgradeSendError::Handshake(_)) => {
            tracing::debug!(error = %e, "upstream upgrade connection failed");
            return Err(AttemptError::ConnectFailure);
        }
        Err(e) => {
            tracing::debug!(error = %e, "upstream reset before the upgrade response");
            return Err(AttemptError::Reset);
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream = hyper::upgrade::on(&mut resp);
        let conn = downstream_conn.clone();
        conn.config.stats.downstream_cx_upgrades_total.inc(worker);
        conn.config.stats.downstream_cx_upgrades_active.inc(worker);
        // Counted from the 101 on, so an attempt dropped by its timeout leaves no count.
        stats.upstream_cx_active.inc(worker);
        // The tunnel is an active stream of its connection until it closes: an HTTP/2
        // connection carrying one is not idle.
        conn.active.set(conn.active.get() + 1);
        // The tunnel is the stream's body: the stream idle timeout goes on applying to it.
        let cfg = &downstream_conn.config;
        let idle = StreamIdle::new(
            cfg.stream_idle_timeout,
            true,
            cfg.stats.downstream_rq_idle_timeout.clone(),
            worker,
        );
        if let Some(t) = limits.idle_timeout {
            idle.set_route_timeout(t);
        }
        // The stream's `max_stream_duration` and the cluster's end the tunnel, whichever
        // comes first (Envoy resets it).
        let stream_end = limits.ends_at.map(|d| {
            let counter = cfg.stats.downstream_rq_max_duration_reached.clone();
            (d, counter, Expiry::Route)
        });
        let cluster_end =
            upstream_ends.map(|d| (d, limits.duration_reached, Expiry::UpstreamDuration));
        let end = match (stream_end, cluster_end) {
            (Some(s), Some(c)) => Some(if c.0 < s.0 { c } else { s }),
            (s, c) => s.or(c),
        };
        if let Some((d, counter, expiry)) = end {
            idle.set_response_deadline(d, counter, expiry);
        }
        upgrade::tunnel(downstream, upstream, idle, move || {
            conn.config.stats.downstream_cx_upgrades_active.dec(worker);
            stats.upstream_cx_active.dec(worker);
            conn.active.set(conn.active.get().saturating_sub(1));
            conn.last_activity.set(Instant::now());
            // The downstream connection stops counting as active with the tunnel.
            drop(conn);
        });
    }
    // Refused (not 101): the connection closes once the response body is done.
    let (mut parts, body) = resp.into_parts();
    strip_response_hop_by_hop(&mut parts.headers, parts.status);
    Ok(Response::from_parts(parts, ProxyBody::stream(body, None)))
}

/// Sends an upgrade request to an HTTP/1.1 upstream on `io` of its own.
pub(crate) async fn send_h1_upgrade(
    io: rt::TcpIo,
    req: Request<ProxyBody>,
) -> Result<Response<hyper::body::Incoming>, upgrade::UpgradeSendError> {
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake::<_, ProxyBody>(WorkerIo::new(io))
        .await
        .map_err(upgrade::UpgradeSendError::Handshake)?;
    rt::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream upgrade connection closed");
        }
    });
    sender
        .send_request(req)
        .await
        .map_err(upgrade::UpgradeSendError::Reset)
}

/// The request's response flags and upstream for the access log.
#[derive(Default)]
pub(crate) struct Outcome {
    pub(crate) flags: &'static str,
    /// A fault the request is counted in (`active_faults`) until it completes.
    pub(crate) active_fault: Option<crate::filters::http::fault::ActiveFault>,
    /// The `x-request-id` the response echoes (`always_set_request_id_in_response`, or an
    /// internal request's `x-envoy-force-trace`), once the request's is settled.
    pub(crate) request_id: Option<HeaderValue>,
    pub(crate) upstream_host: Option<SocketAddr>,
    pub(crate) upstream_cluster: Option<String>,
    pub(crate) route_name: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::conn_manager::path::*;

    #[test]
    fn escaped_slashes_are_unescaped_in_the_path_only() {
        assert_eq!(unescape_slashes("/a/b?x=%2F"), None);
        assert_eq!(
            unescape_slashes("/a%2Fb%2fc%5Cd%5ce%2G%?q=%2F").as_deref(),
            Some("/a/b/c\\d\\e%2G%?q=%2F")
        );
        assert_eq!(unescape_slashes("/%2F").as_deref(), Some("//"));
    }

    #[test]
    fn path_normalisation() {
        assert_eq!(normalize_dots("/a/./b/../c"), "/a/c");
        assert_eq!(normalize_dots("/../a"), "/a");
        assert_eq!(normalize_dots("/a/b/.."), "/a/");
        assert_eq!(merge_slashes("//a///b/"), "/a/b/");
        let mut h = http::HeaderMap::new();
        let ours = HeaderValue::from_static("ours");
        let append_via = |h: &mut http::HeaderMap| {
            crate::http::conn_manager::headers::append_value(h, &header::VIA, &ours)
        };
        append_via(&mut h);
        assert_eq!(h.get_all(header::VIA).iter().collect::<Vec<_>>(), ["ours"]);
        h.append(header::VIA, HeaderValue::from_static("1.1 b"));
        append_via(&mut h);
        assert_eq!(
            h.get_all(header::VIA).iter().collect::<Vec<_>>(),
            ["ours, 1.1 b, ours"]
        );
        let norm = |p: &str| sanitize_path(p, true, false);
        assert_eq!(norm("/a/%2e%2E/x?q=%2e").as_deref(), Some("/x?q=%2e"));
        assert_eq!(
            norm("/a/%41%7e%20%2f%3a").as_deref(),
            Some("/a/A~%20%2f%3a")
        );
        assert_eq!(norm("/a\\b\\..\\c").as_deref(), Some("/a/c"));
        assert_eq!(norm("/a/%00"), None);
        assert_eq!(norm("/a/%zz/%4").as_deref(), Some("/a/%zz/%4"));
        assert_eq!(norm("/é/%C3%A9").as_deref(), Some("/é/%C3%A9"));
        let v = crate::http::conn_manager::headers::uuid4_value();
        let id = v.to_str().unwrap_or_default();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        assert_eq!(id.matches('-').count(), 4);
        assert_eq!(crate::http::conn_manager::headers::decimal_value(7), "7");
        assert_eq!(
            crate::http::conn_manager::headers::decimal_value(1023),
            "1023"
        );
        assert_eq!(
            crate::http::conn_manager::headers::decimal_value(40_000),
            "40000"
        );
    }
}
