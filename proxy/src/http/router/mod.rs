//! One request through the connection manager and the router filter: header sanitising,
//! route selection, local replies, and forwarding with retries and timeouts.

pub mod async_client;
pub mod async_stream;
pub mod pool;
pub mod retry_buffer;
pub mod shadow;
pub mod upstream_request;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Body as _;

use crate::http::codec::body::ProxyBody;
use crate::http::codec::handoff::DownstreamUpgrade;
use crate::http::conn_manager::conn_info::ConnInfo;
use crate::http::conn_manager::headers::{
    decimal_value, strip_hop_by_hop, strip_response_hop_by_hop,
};
use crate::http::conn_manager::local_reply::{
    is_grpc, local_reply, LocalReply, DURATION_TIMEOUT, GRPC_TIMEOUT, NO_HEALTHY_UPSTREAM,
    UPSTREAM_CONNECT_ERROR, UPSTREAM_OVERFLOW, UPSTREAM_PROTOCOL_ERROR, UPSTREAM_REFUSED,
    UPSTREAM_REMOTE_RESET, UPSTREAM_RESET, UPSTREAM_TIMEOUT,
};
use crate::http::conn_manager::request_controls::RequestControls;
use crate::http::conn_manager::stream_idle::{Expiry, StreamIdle};
use crate::http::conn_manager::upgrade::{self, WorkerIo};
use crate::http::request_stats::StatSinks;
use crate::http::route::{
    ClusterSpec, HostRewrite, Pseudo, Redirect, Route, RouteAction, RouteTable, VirtualHost,
};
use crate::http::router::retry_buffer::{Replay, RetryBuffer};
use crate::protocol::header_case::HeaderCase;
use crate::protocol::header_mutations::FormatContext;
use crate::protocol::stream_limits::{StreamEnds, UPSTREAM_DURATION_REACHED};
use crate::upstream::{ClusterInfo, ThreadLocalClusterManager};
use courier_runtime::event::rt;
use upstream_request::{send_once, AttemptError};

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_ENVOY_EXTERNAL_ADDRESS: HeaderName =
    HeaderName::from_static("x-envoy-external-address");
pub(crate) static X_ENVOY_INTERNAL: HeaderName = HeaderName::from_static("x-envoy-internal");
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
    let location = redirect_location(rd, Some(route), authority, path, request_scheme);
    let mut r = Response::new(ProxyBody::empty());
    *r.status_mut() = rd.status;
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    r
}

/// Where `rd` sends a request for `authority` and `path` (Envoy's `newUri`): a
/// `prefix_rewrite` needs the `route` that matched (without one the path stays).
pub(crate) fn redirect_location(
    rd: &Redirect,
    route: Option<&Route>,
    authority: &str,
    path: &str,
    request_scheme: &str,
) -> String {
    let rewritten = if rd.path.is_some() {
        None
    } else if let (Some(p), Some(route)) = (&rd.prefix_rewrite, route) {
        Some(rewrite_prefix(route, path, p))
    } else if let Some((re, sub)) = &rd.regex_rewrite {
        Some(rewrite_regex(re, sub, path))
    } else {
        None
    };
    rd.location(authority, path, rewritten, request_scheme)
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

/// Marks an internal request ([`crate::http::conn_manager::internal_address`]) for [`forward`], which obeys its
/// controls ([`RequestControls`]).
#[derive(Clone, Copy)]
pub(crate) struct Internal;

/// What an upstream timeout answers.
#[derive(Clone, Copy)]
pub(crate) enum TimeoutReply {
    /// Envoy's `504 upstream request timeout`.
    GatewayTimeout,
    /// `204` with no body (`x-envoy-upstream-rq-timeout-alt-response`).
    NoContent,
}

impl TimeoutReply {
    fn response(self) -> Response<ProxyBody> {
        match self {
            TimeoutReply::GatewayTimeout => {
                local_reply(StatusCode::GATEWAY_TIMEOUT, UPSTREAM_TIMEOUT)
            }
            TimeoutReply::NoContent => {
                let mut r = local_reply(StatusCode::NO_CONTENT, "");
                r.headers_mut().remove(header::CONTENT_LENGTH);
                r
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn forward(
    conn: &Rc<ConnInfo>,
    req: Request<ProxyBody>,
    authority: &str,
    path: &str,
    table: &RouteTable,
    vh: &VirtualHost,
    route: &Route,
    action: &RouteAction,
    fcx: &FormatContext<'_>,
    mut on_upgrade: Option<DownstreamUpgrade>,
    outcome: &mut Outcome,
    idle: &StreamIdle,
) -> Response<ProxyBody> {
    let cfg = &conn.config;
    let worker = conn.worker;
    let start = Instant::now();
    // Cluster.
    let (cluster_name, weighted) = match &action.cluster {
        ClusterSpec::Single(c) => (Cow::Borrowed(c.as_str()), None),
        ClusterSpec::Header(h) => match req.headers().get(h).and_then(|v| v.to_str().ok()) {
            Some(c) if !c.is_empty() => (Cow::Owned(c.to_string()), None),
            _ => {
                cfg.stats.no_cluster.inc(worker);
                outcome.ended("NC", "cluster_not_found");
                return local_reply(action.cluster_not_found, "");
            }
        },
        ClusterSpec::Weighted { clusters, total } => {
            let mut r = fastrand::u64(0..*total);
            let mut pick = &clusters[clusters.len() - 1];
            for c in clusters {
                if r < c.weight as u64 {
                    pick = c;
                    break;
                }
                r -= c.weight as u64;
            }
            (Cow::Borrowed(pick.name.as_str()), Some(pick))
        }
    };
    let cluster = ThreadLocalClusterManager::with(|tlcm| tlcm.get(&cluster_name));
    let Some(cluster) = cluster else {
        cfg.stats.no_cluster.inc(worker);
        outcome.ended("NC", "cluster_not_found");
        return local_reply(action.cluster_not_found, "");
    };
    if !cfg.access_logs.is_empty() || outcome.span.as_ref().is_some_and(|s| s.0.sampled()) {
        outcome.upstream_cluster = Some(cluster.name.clone());
    }
    let pool = pool::cluster_pool(&cluster, &cfg.store, worker);
    // Build the upstream request head.
    let is_upgrade = on_upgrade.is_some();
    let (mut parts, body) = req.into_parts();
    // A stateful session's host, when a filter set one (an empty extensions map otherwise:
    // no work on the plain path); boxed, as it is held across the attempts' awaits.
    let session = parts
        .extensions
        .remove::<crate::upstream::host_override::UpstreamOverride>()
        .map(Box::new);
    strip_hop_by_hop(&mut parts.headers);
    // `100-continue` was answered here (or by the codec); other expectations go on, as
    // Envoy forwards them.
    if parts
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
    {
        parts.headers.remove(header::EXPECT);
    }
    // An internal request's `x-envoy-*` controls, taken off it (an external one lost them
    // to the connection manager).
    // Only what the attempts need of them is kept: the controls themselves would take room
    // in every request's future.
    let internal = parts.extensions.get::<Internal>().is_some();
    let (retry, timeout_controls) = match parts.extensions.remove::<Internal>() {
        Some(Internal) => {
            if let Err(body) = cfg.controls.check(&parts.headers) {
                conn.closing.set(true);
                return local_reply(StatusCode::BAD_REQUEST, &body);
            }
            let c = RequestControls::take(&mut parts.headers, &cfg.controls);
            (
                c.retry_policy(action.retry_policy.as_ref()),
                Some((c.timeout, c.per_try_timeout, c.alt_response)),
            )
        }
        None => (action.retry_policy.clone(), None),
    };
    // As Envoy, `retriable_request_headers` and virtual clusters look at the request
    // before the route's header mutations.
    let (retry, vcluster) = {
        let scheme = Pseudo::scheme_of(&parts.uri);
        let pseudo = Pseudo::request(&parts.method, path, authority, scheme);
        (
            retry.filter(|r| r.applies_to(&parts.headers, &pseudo)),
            vh.virtual_cluster(&parts.headers, &pseudo),
        )
    };
    // The load balancer's hash (a route's `hash_policy`), also from the request as it came;
    // a cookie it makes goes on the response (boxed: rare).
    let (lb_hash, set_cookie) = match &action.hash_policy {
        Some(policies) => {
            let h = policies.hash(&parts.headers, path, conn.remote, conn.local);
            (h.hash, h.set_cookie.map(Box::new))
        }
        None => (None, None),
    };
    // An `ORIGINAL_DST` cluster's destination: the request's header or the connection's
    // restored local address.
    let original_dst = cluster.original_dst.as_ref().map(|od| {
        od.destination(
            Some(&parts.headers),
            conn.local_restored.then_some(conn.local),
            worker,
        )
    });
    let sinks = StatSinks {
        cluster: &pool.stats.rq,
        route: route.stats.as_deref(),
        vcluster,
        internal,
    };
    // Kept to be reused upstream when the authority is unchanged (no copy). The field
    // stays where it is: removing it would move the map's last field into its place, and
    // Envoy sends `host` where the client did (first, as a rule).
    let downstream_host = parts.headers.get(header::HOST).cloned();
    let new_path: Cow<'_, str> = if let Some(p) = &action.prefix_rewrite {
        Cow::Owned(rewrite_prefix(route, path, p))
    } else if let Some((re, sub)) = &action.regex_rewrite {
        Cow::Owned(rewrite_regex(re, sub, path))
    } else {
        Cow::Borrowed(path)
    };
    if new_path != path {
        if let Ok(v) = HeaderValue::from_str(path) {
            parts.headers.insert(X_ENVOY_ORIGINAL_PATH.clone(), v);
        }
        if let Some(l) = outcome.log.as_mut() {
            l.rewritten_path = Some(new_path.as_ref().into());
        }
    }
    let mut upstream_authority: Cow<'_, str> = match &action.host_rewrite {
        HostRewrite::Literal(h) => Cow::Borrowed(h),
        _ => Cow::Borrowed(authority),
    };
    if is_upgrade {
        if let Some(u) = fcx.request.and_then(|h| h.get(header::UPGRADE)) {
            parts.headers.insert(header::UPGRADE, u.clone());
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
    }
    if let Some(w) = weighted {
        w.request_headers.apply(&mut parts.headers, fcx);
    }
    route.request_headers.apply(&mut parts.headers, fcx);
    vh.request_headers.apply(&mut parts.headers, fcx);
    table.request_headers.apply(&mut parts.headers, fcx);
    // A custom response redirect makes the request again as it goes upstream, as Envoy's
    // router changes the request in place.
    if let Some(head) = outcome.custom.as_mut().and_then(|c| c.head.as_mut()) {
        head.headers = parts.headers.clone();
        head.path = new_path.to_string();
    }
    let grpc = is_grpc(&parts.headers);
    let mut timeouts = action.timeouts(
        grpc,
        parts
            .headers
            .get(GRPC_TIMEOUT)
            .and_then(|v| crate::http::route::parse_grpc_timeout(v.as_bytes())),
        cfg.max_stream_duration,
    );
    let mut per_try = retry.as_ref().and_then(|r| r.per_try_timeout);
    let mut alt_response = false;
    if let Some((timeout, per_try_timeout, alt)) = timeout_controls {
        timeouts.route = timeout.unwrap_or(timeouts.route);
        per_try = per_try_timeout.unwrap_or(per_try);
        alt_response = alt;
    }
    // As Envoy, a per-try timeout no shorter than the route's is no per-try timeout.
    let per_try = per_try.filter(|p| timeouts.route.is_none_or(|t| *p < t));
    let timeout_reply = match alt_response {
        true => TimeoutReply::NoContent,
        false => TimeoutReply::GatewayTimeout,
    };
    let global_deadline = timeouts.route.map(|t| start + t);
    // `max_stream_duration`, an upgrade's tunnel included (Envoy resets it).
    let duration_deadline = timeouts.duration.map(|d| start + d);
    // `max_grpc_timeout` (without `max_stream_duration`): each attempt tells the server
    // its own deadline (below).
    let grpc_timeout_from_route = grpc
        && !is_upgrade
        && action.max_grpc_timeout.is_some()
        && action.stream_duration.is_none();
    if let Some(t) = timeouts
        .grpc_timeout
        .filter(|_| !is_upgrade && !grpc_timeout_from_route)
    {
        // As Envoy: the gRPC server learns the deadline the proxy holds it to.
        parts
            .headers
            .insert(GRPC_TIMEOUT, crate::protocol::grpc::timeout_value(t));
    }
    // The earlier of the route timeout and the stream's duration bounds every attempt.
    let overall_deadline = match (global_deadline, duration_deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    // Request mirrors, sent with the first attempt (not for an upgrade), fed as the client's
    // body passes.
    let mut stream_body = Some(body);
    let mut mirrors = if action.shadows.is_empty() || is_upgrade {
        Vec::new()
    } else {
        // A mirror may fall this far behind: the listener's buffer limit, or the route's
        // when that is larger (Envoy mirrors bodies past the route's).
        let limit = route
            .buffer_limit
            .map_or(conn.buffer_limit, |l| l.max(conn.buffer_limit));
        let (mirrors, feeds) = shadow::plan(
            &action.shadows,
            &parts.headers,
            stream_body.as_ref().is_some_and(|b| !b.is_end_stream()),
            limit,
            &pool.stats.retry_or_shadow_abandoned,
            worker,
        );
        if !feeds.is_empty() {
            stream_body = stream_body.take().map(|b| shadow::tee(b, feeds));
        }
        mirrors
    };
    // Body, when retries are possible: taken whole if it is all in, else forwarded as it
    // arrives with a copy kept for a retry (Envoy's buffering, which holds nothing back).
    let mut buffered: Option<Bytes> = None;
    let mut retry_buffer: Option<Rc<RetryBuffer>> = None;
    let retries_allowed = retry.as_ref().is_some_and(|r| r.num_retries > 0);
    if retries_allowed && !is_upgrade {
        if let Some(b) = stream_body.take() {
            if b.is_end_stream() {
                buffered = Some(Bytes::new());
            } else {
                let limit = route.buffer_limit.unwrap_or(conn.buffer_limit);
                let abandoned = pool.stats.retry_or_shadow_abandoned.clone();
                let rb = RetryBuffer::new(b, limit, abandoned, worker);
                match rb.prefill() {
                    Some(bytes) => buffered = Some(bytes),
                    None => retry_buffer = Some(rb),
                }
            }
        }
    }
    let replayable = |buffered: &Option<Bytes>, rb: &Option<Rc<RetryBuffer>>| {
        buffered.is_some() || rb.as_ref().is_some_and(|b| b.replayable())
    };
    // Counted in `max_requests` from the first attempt's host choice to the end.
    let mut request_slot = None;
    let mut attempt: u32 = 0;
    // The hosts tried so far, for a `previous_hosts` retry predicate.
    let mut tried: Vec<std::net::SocketAddr> = Vec::new();
    let mut last_error: Option<AttemptError> = None;
    // The last attempt's connection, for the access log.
    let connected = std::cell::Cell::new(None);
    // A retriable failure met with no retries left (`URX`, next to the failure's flag).
    let mut retry_limit_exceeded = false;
    let mut last_response: Option<Response<ProxyBody>> = None;
    let upstream_start = Instant::now();
    loop {
        attempt += 1;
        if overall_deadline.is_some_and(|d| Instant::now() >= d) {
            // Not made: `attempt` counts the attempts sent.
            attempt -= 1;
            break;
        }
        if let Some(l) = outcome.log.as_mut() {
            l.attempts = Some(attempt);
        }
        // The retry policy's host predicates, on retries only, as Envoy consults them.
        let avoiding = retry
            .as_ref()
            .filter(|r| (r.avoid_previous_hosts || r.omit_canary_hosts) && attempt > 1);
        let overridden = match &session {
            None => None,
            Some(o) => match o.host(&cluster) {
                Some(h) => Some(h),
                None if o.strict => {
                    cluster.stats.upstream_cx_none_healthy.inc(worker);
                    outcome.ended("UH", "no_healthy_upstream");
                    return local_reply(o.status, NO_HEALTHY_UPSTREAM);
                }
                None => None,
            },
        };
        let host = match (original_dst, avoiding) {
            _ if overridden.is_some() => overridden,
            (Some(dst), _) => dst.and_then(|dst| pool::original_dst_host(&cluster, dst)),
            (None, Some(r)) => pool::choose_host_avoiding(
                &cluster,
                lb_hash,
                &tried,
                r.omit_canary_hosts,
                r.host_reselections,
            ),
            (None, None) => pool::choose_host(&cluster, lb_hash),
        };
        let Some(host) = host else {
            cluster.stats.upstream_cx_none_healthy.inc(worker);
            outcome.ended("UH", "no_healthy_upstream");
            return local_reply(StatusCode::SERVICE_UNAVAILABLE, NO_HEALTHY_UPSTREAM);
        };
        if cluster.hosts.panic {
            cluster.stats.lb_healthy_panic.inc(worker);
        }
        outcome.upstream_host = Some(host.address);
        if let Some(l) = outcome.log.as_mut() {
            l.upstream_hostname = host.hostname.clone();
        }
        // max_requests, once the request has its host (Envoy's pool checks it there).
        if request_slot.is_none() {
            if pool.breakers.requests.get() >= cluster.thresholds.max_requests {
                pool.stats.rq_pending_overflow.inc(worker);
                outcome.ended("UO", "upstream_reset_before_response_started{overflow}");
                let mut r = local_reply(StatusCode::SERVICE_UNAVAILABLE, UPSTREAM_OVERFLOW);
                r.headers_mut()
                    .insert(X_ENVOY_OVERLOADED.clone(), HeaderValue::from_static("true"));
                return r;
            }
            request_slot = Some(pool.request_slot());
        }
        if retry.as_ref().is_some_and(|r| r.avoid_previous_hosts) {
            tried.push(host.address);
        }
        // As Envoy: the endpoint's hostname (a DNS cluster's name, an endpoint's
        // `hostname`); an endpoint without one leaves the authority as it is.
        if let (HostRewrite::Auto, Some(name)) = (&action.host_rewrite, &host.hostname) {
            upstream_authority = Cow::Owned(name.to_string());
        }
        let body = if let Some(b) = &buffered {
            ProxyBody::full(b.clone())
        } else if let Some(rb) = &retry_buffer {
            ProxyBody::filtered(Replay::new(rb.clone()))
        } else {
            match stream_body.take() {
                Some(b) if !b.is_end_stream() => b,
                // Nothing to stream (a GET): sent as a complete, empty body.
                _ => ProxyBody::empty(),
            }
        };
        // Upgrades are built in the HTTP/1.1 form whatever the cluster's protocol; for an
        // HTTP/2 cluster, `send_upgrade` makes an extended CONNECT of it.
        // `use_downstream_protocol_config`: the downstream connection's protocol.
        let cluster_h2 =
            cluster.http2 || (cluster.http_downstream && conn.http2.get() == Some(true));
        let h2_upstream = cluster_h2 && !is_upgrade;
        let span_protocol = if cluster_h2 { "HTTP/2" } else { "HTTP/1.1" };
        let mut head = http::request::Builder::new()
            .method(parts.method.clone())
            .version(if h2_upstream {
                Version::HTTP_2
            } else {
                Version::HTTP_11
            });
        // Unchanged (the common case), the request's own path is reused without parsing.
        let path_and_query = match parts.uri.path_and_query() {
            Some(pq) if pq.as_str() == new_path => pq.clone(),
            _ => match http::uri::PathAndQuery::try_from(new_path.as_ref()) {
                Ok(pq) => pq,
                Err(_) => return local_reply(StatusCode::BAD_REQUEST, ""),
            },
        };
        let uri = if h2_upstream {
            Uri::builder()
                .scheme("http")
                .authority(upstream_authority.as_ref())
                .path_and_query(path_and_query)
                .build()
        } else {
            Uri::builder().path_and_query(path_and_query).build()
        };
        let Ok(uri) = uri else {
            return local_reply(StatusCode::BAD_REQUEST, "");
        };
        head = head.uri(uri);
        let Ok(mut up_req) = head.body(body) else {
            return local_reply(StatusCode::BAD_REQUEST, "");
        };
        // The names the client spelled (`preserve_case`), for an HTTP/1 upstream to write.
        if !h2_upstream {
            if let Some(case) = parts.extensions.get::<HeaderCase>() {
                up_req.extensions_mut().insert(case.clone());
            }
        }
        // The last possible attempt takes the headers instead of copying them.
        let last_attempt = !(retry.as_ref().is_some_and(|r| attempt <= r.num_retries)
            && replayable(&buffered, &retry_buffer));
        *up_req.headers_mut() = if last_attempt {
            std::mem::take(&mut parts.headers)
        } else {
            parts.headers.clone()
        };
        if upstream_authority != authority {
            // A rewritten host: the original goes along, as Envoy sends it.
            if let Ok(v) = HeaderValue::from_str(authority) {
                up_req
                    .headers_mut()
                    .insert(X_ENVOY_ORIGINAL_HOST.clone(), v);
            }
            if action.append_x_forwarded_host {
                append_forwarded_host(up_req.headers_mut(), authority);
            }
        }
        if h2_upstream {
            // `:authority` carries it.
            up_req.headers_mut().remove(header::HOST);
        } else {
            announce_streamed_body(&mut up_req, is_upgrade);
            let value = match &downstream_host {
                Some(v) if v.as_bytes() == upstream_authority.as_bytes() => Some(v.clone()),
                _ => HeaderValue::from_str(&upstream_authority).ok(),
            };
            if let Some(v) = value {
                up_req.headers_mut().insert(header::HOST, v);
            }
        }
        if !cfg.suppress_envoy_headers || grpc_timeout_from_route {
            // The time left of the route timeout, capped by the per-try timeout: the whole
            // timeout on the first attempt, less what earlier attempts used on a retry (as
            // Envoy; measuring the first attempt's few microseconds made it 299 under load).
            let elapsed = if attempt == 1 {
                0
            } else {
                start.elapsed().as_millis() as u64
            };
            let left = timeouts
                .route
                .map(|t| (t.as_millis() as u64).saturating_sub(elapsed));
            let per_try_ms = per_try.map(|p| p.as_millis() as u64);
            let expected = match (left, per_try_ms) {
                (Some(t), Some(p)) => Some(t.min(p)),
                (t, p) => t.or(p),
            };
            if let Some(ms) = expected {
                if !cfg.suppress_envoy_headers {
                    up_req
                        .headers_mut()
                        .insert(X_ENVOY_EXPECTED_RQ_TIMEOUT_MS.clone(), decimal_value(ms));
                }
                if grpc_timeout_from_route {
                    // As Envoy: the server learns the timeout this attempt is held to, an
                    // internal request's timeout controls and the per-try one included.
                    up_req.headers_mut().insert(
                        GRPC_TIMEOUT,
                        crate::protocol::grpc::timeout_value(Duration::from_millis(ms)),
                    );
                }
            }
        }
        if attempt > 1 && vh.timeout_retry_header {
            let timeout = matches!(last_error, Some(AttemptError::PerTryTimeout));
            up_req.headers_mut().insert(
                X_ENVOY_IS_TIMEOUT_RETRY.clone(),
                HeaderValue::from_static(if timeout { "true" } else { "false" }),
            );
        }
        if vh.attempt_count_upstream {
            up_req
                .headers_mut()
                .insert(X_ENVOY_ATTEMPT_COUNT.clone(), decimal_value(attempt.into()));
        }
        // The mirrors get the first attempt's head.
        for mirror in mirrors.drain(..) {
            mirror.send(
                &up_req,
                &upstream_authority,
                &cfg.store,
                worker,
                overall_deadline,
            );
        }
        // `spawn_upstream_span`: the attempt's own span, whose context goes upstream.
        if let Some(traced) = outcome.span.as_mut() {
            traced
                .0
                .start_attempt(up_req.headers_mut(), &cluster.name, host.address, attempt);
        }
        host.stats.rq_total.inc(worker);
        let active = (
            pool.stats.rq_active.raise(worker),
            host.stats.rq_active.raise(worker),
        );
        let try_deadline = match (per_try.map(|p| Instant::now() + p), overall_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let result = match on_upgrade.take() {
            Some(downstream) => {
                // Boxed: rare, and the request future would otherwise carry its size.
                let upgraded = Box::pin(send_upgrade(
                    &cluster,
                    &host,
                    worker,
                    up_req,
                    downstream,
                    conn,
                    TunnelLimits {
                        idle_timeout: action.idle_timeout,
                        ends_at: duration_deadline,
                        duration_reached: pool.stats.rq_max_duration_reached.clone(),
                    },
                    &sinks,
                ));
                rt::timeout(try_deadline, upgraded).await
            }
            None => {
                // Built in place: a future held in a local would take room of its own in
                // the request future, next to the copy the timeout holds.
                rt::timeout(
                    try_deadline,
                    send_once(
                        &pool,
                        &cluster,
                        &host,
                        worker,
                        &sinks,
                        up_req,
                        upstream_request::AttemptAddrs {
                            downstream: Some((conn.remote, conn.local)),
                            connected: outcome.log.is_some().then_some(&connected),
                        },
                    ),
                )
                .await
            }
        };
        drop(active);
        if let Some(l) = outcome.log.as_mut() {
            l.connected = connected.get();
            if matches!(result, Some(Ok(_))) {
                l.upstream_rx = Some(Instant::now());
            }
        }
        if let Some(detector) = &cluster.outlier {
            report_outlier(detector, &host, &result);
        }
        let err = match result {
            Some(Ok(resp)) => {
                let status = resp.status().as_u16();
                let retriable = retry
                    .as_ref()
                    .is_some_and(|r| r.retry_response(status, resp.headers()));
                let left = retry.as_ref().is_some_and(|r| attempt <= r.num_retries);
                let more = left && replayable(&buffered, &retry_buffer);
                let slot = if retriable && more {
                    RetrySlot::take(&pool, &cluster, worker, sinks)
                } else {
                    None
                };
                if let Some(slot) = slot {
                    if let Some(traced) = outcome.span.as_mut() {
                        let end = crate::tracers::AttemptEnd::canceled(status, span_protocol);
                        traced.0.end_attempt(&end, worker);
                    }
                    sinks.cluster.charge_retried(worker, status);
                    // Kept in case no retry can follow, read off its connection first: an
                    // open body would hold the attempt's connection (an HTTP/2 stream
                    // slot) while the retry looks for one.
                    last_response = Some(settle(resp, overall_deadline).await);
                    last_error = None;
                    if !backoff(retry.as_deref(), attempt, overall_deadline).await {
                        break;
                    }
                    drop(slot);
                    sinks.retry(worker);
                    continue;
                }
                if retriable && !left {
                    sinks.retry_limit_exceeded(worker);
                    outcome.flags = with_retry_limit_exceeded(outcome.flags);
                } else if attempt > 1 && !retriable {
                    sinks.retry_success(worker);
                }
                if let Some(traced) = outcome.span.as_mut() {
                    traced.0.attempt_answered(status, span_protocol);
                }
                let elapsed = upstream_start.elapsed();
                sinks.charge(worker, status, Some(elapsed.as_millis() as u64));
                outcome.set_details("via_upstream");
                let mut resp = resp;
                if !cfg.suppress_envoy_headers {
                    resp.headers_mut().insert(
                        X_ENVOY_UPSTREAM_SERVICE_TIME.clone(),
                        decimal_value(start.elapsed().as_millis() as u64),
                    );
                }
                if vh.attempt_count_response {
                    resp.headers_mut()
                        .insert(X_ENVOY_ATTEMPT_COUNT.clone(), decimal_value(attempt.into()));
                }
                if let Some(w) = weighted {
                    w.response_headers.apply(resp.headers_mut(), fcx);
                }
                if let Some(cookie) = set_cookie {
                    resp.headers_mut().append(header::SET_COOKIE, *cookie);
                }
                // Envoy's route timeout spans the whole response: a body still arriving
                // when it ends is cut off (an upgrade's tunnel is not).
                if !is_upgrade && !resp.body().is_end_stream() {
                    // The stream's duration, when it ends first, counts as such.
                    let cut = match (global_deadline, duration_deadline) {
                        (Some(g), Some(d)) if d < g => Some((
                            d,
                            cfg.stats.downstream_rq_max_duration_reached.clone(),
                            Expiry::Route,
                        )),
                        (Some(g), _) => Some((g, pool.stats.rq.timeout.clone(), Expiry::Route)),
                        (None, Some(d)) => Some((
                            d,
                            cfg.stats.downstream_rq_max_duration_reached.clone(),
                            Expiry::Route,
                        )),
                        (None, None) => None,
                    };
                    // The cluster's `max_stream_duration` resets the upstream stream, the
                    // body included.
                    let cut = match (cut, resp.extensions().get::<StreamEnds>()) {
                        (Some(c), Some(e)) if c.0 <= e.0 => Some(c),
                        (_, Some(e)) => Some((
                            e.0,
                            pool.stats.rq_max_duration_reached.clone(),
                            Expiry::UpstreamDuration,
                        )),
                        (c, None) => c,
                    };
                    if let Some((deadline, counter, expiry)) = cut {
                        idle.set_response_deadline(deadline, counter, expiry);
                    }
                }
                return resp;
            }
            Some(Err(e)) => e,
            None => {
                if overall_deadline.is_some_and(|d| Instant::now() >= d) {
                    if let Some(traced) = outcome.span.as_mut() {
                        let end = crate::tracers::AttemptEnd::canceled(0, span_protocol);
                        traced.0.end_attempt(&end, worker);
                    }
                    break;
                }
                pool.stats.rq_per_try_timeout.inc(worker);
                AttemptError::PerTryTimeout
            }
        };
        if let Some(traced) = outcome.span.as_mut() {
            traced.0.end_attempt(&err.span_end(span_protocol), worker);
        }
        let retriable = match &err {
            AttemptError::Overflow => false,
            AttemptError::ConnectFailure(_) => {
                retry.as_ref().is_some_and(|r| r.retry_connect_failure())
            }
            AttemptError::Reset
            | AttemptError::Protocol
            | AttemptError::HeadOverflow
            | AttemptError::MaxDuration => retry.as_ref().is_some_and(|r| r.retry_reset()),
            AttemptError::Refused => retry.as_ref().is_some_and(|r| r.retry_refused()),
            AttemptError::PerTryTimeout => retry.as_ref().is_some_and(|r| r.retry_timeout()),
        };
        let left = retry.as_ref().is_some_and(|r| attempt <= r.num_retries);
        let more = left && replayable(&buffered, &retry_buffer);
        if attempt > 1 && !retriable {
            sinks.retry_success(worker);
        }
        last_error = Some(err);
        last_response = None;
        let slot = if retriable && more {
            RetrySlot::take(&pool, &cluster, worker, sinks)
        } else {
            None
        };
        if let Some(slot) = slot {
            if !backoff(retry.as_deref(), attempt, overall_deadline).await {
                break;
            }
            drop(slot);
            sinks.retry(worker);
            continue;
        }
        if retriable && !left {
            sinks.retry_limit_exceeded(worker);
            retry_limit_exceeded = true;
        }
        break;
    }
    if duration_deadline.is_some_and(|d| Instant::now() >= d) {
        cfg.stats.downstream_rq_max_duration_reached.inc(worker);
        outcome.ended("-", "max_duration_timeout");
        // gRPC's DEADLINE_EXCEEDED rather than the 504's UNAVAILABLE, as Envoy.
        let mut r = local_reply(StatusCode::GATEWAY_TIMEOUT, DURATION_TIMEOUT);
        r.extensions_mut().insert(LocalReply(Some(4)));
        return r;
    }
    if let Some(mut resp) = last_response {
        outcome.set_details("via_upstream");
        sinks.charge(worker, resp.status().as_u16(), None);
        if !cfg.suppress_envoy_headers {
            resp.headers_mut().insert(
                X_ENVOY_UPSTREAM_SERVICE_TIME.clone(),
                decimal_value(start.elapsed().as_millis() as u64),
            );
        }
        if vh.attempt_count_response {
            resp.headers_mut()
                .insert(X_ENVOY_ATTEMPT_COUNT.clone(), decimal_value(attempt.into()));
        }
        return resp;
    }
    let mut reply = match &last_error {
        None | Some(AttemptError::PerTryTimeout)
            if global_deadline.is_some_and(|d| Instant::now() >= d) || last_error.is_none() =>
        {
            sinks.timeout(worker);
            outcome.ended("UT", "response_timeout");
            timeout_reply.response()
        }
        Some(AttemptError::PerTryTimeout) => {
            outcome.ended("UT", "upstream_per_try_timeout");
            timeout_reply.response()
        }
        Some(AttemptError::Overflow) => {
            outcome.ended("UO", "upstream_reset_before_response_started{overflow}");
            let mut r = local_reply(StatusCode::SERVICE_UNAVAILABLE, UPSTREAM_OVERFLOW);
            r.headers_mut()
                .insert(X_ENVOY_OVERLOADED.clone(), HeaderValue::from_static("true"));
            r
        }
        Some(AttemptError::ConnectFailure(reason)) => {
            match reason {
                Some(r) => {
                    outcome.ended(
                        "UF",
                        "upstream_reset_before_response_started{remote_connection_failure}",
                    );
                    // Envoy's, with each whitespace as `_` (it writes them so).
                    outcome.set_details_owned(|| {
                        format!(
                            "upstream_reset_before_response_started{{remote_connection_failure|{r}}}"
                        )
                        .replace(|c: char| c.is_ascii_whitespace(), "_")
                    });
                }
                None => outcome.ended(
                    "UF",
                    "upstream_reset_before_response_started{connection_timeout}",
                ),
            }
            if let Some(l) = outcome.log.as_mut() {
                l.transport_failure = reason.clone();
            }
            local_reply(StatusCode::SERVICE_UNAVAILABLE, UPSTREAM_CONNECT_ERROR)
        }
        Some(AttemptError::Protocol) => {
            outcome.ended(
                "UPE",
                "upstream_reset_before_response_started{protocol_error}",
            );
            local_reply(StatusCode::BAD_GATEWAY, UPSTREAM_PROTOCOL_ERROR)
        }
        Some(AttemptError::Reset) => {
            outcome.ended(
                "UC",
                "upstream_reset_before_response_started{connection_termination}",
            );
            local_reply(StatusCode::SERVICE_UNAVAILABLE, UPSTREAM_RESET)
        }
        Some(AttemptError::Refused) => {
            outcome.ended(
                "UR",
                "upstream_reset_before_response_started{remote_refused_stream_reset}",
            );
            local_reply(StatusCode::SERVICE_UNAVAILABLE, UPSTREAM_REFUSED)
        }
        Some(AttemptError::HeadOverflow) => {
            outcome.ended("UR", "upstream_reset_before_response_started{remote_reset}");
            local_reply(StatusCode::SERVICE_UNAVAILABLE, UPSTREAM_REMOTE_RESET)
        }
        Some(AttemptError::MaxDuration) => {
            outcome.ended("UMSDR", "upstream_max_stream_duration_reached");
            // Envoy's `408` while the client's request is still arriving.
            let status = if idle.request_complete() {
                StatusCode::GATEWAY_TIMEOUT
            } else {
                StatusCode::REQUEST_TIMEOUT
            };
            local_reply(status, UPSTREAM_DURATION_REACHED)
        }
        None => local_reply(StatusCode::GATEWAY_TIMEOUT, UPSTREAM_TIMEOUT),
    };
    if retry_limit_exceeded {
        outcome.flags = with_retry_limit_exceeded(outcome.flags);
    }
    // As Envoy's router, the reply to an upstream failure or timeout is the code the
    // request ends with; a stream's duration running out is not charged.
    if !matches!(last_error, Some(AttemptError::MaxDuration)) {
        sinks.charge(worker, reply.status().as_u16(), None);
    }
    // Envoy's router counts its attempts on its own replies too.
    if vh.attempt_count_response && attempt > 0 {
        reply
            .headers_mut()
            .insert(X_ENVOY_ATTEMPT_COUNT.clone(), decimal_value(attempt.into()));
    }
    reply
}

/// Appends `host` to `x-forwarded-host` unless it is the last value there already (Envoy's
/// `append_x_forwarded_host`).
/// Tells the cluster's outlier detector what an attempt on `host` saw, as Envoy's router
/// does: the status, a connection that failed or was reset, or a timeout (reported as
/// the 504 the client gets).
fn report_outlier<T>(
    detector: &crate::upstream::outlier_detection::Detector,
    host: &crate::upstream::Host,
    result: &Option<Result<Response<T>, AttemptError>>,
) {
    use crate::upstream::outlier_detection::Report;
    match result {
        Some(Ok(resp)) => {
            detector.report(host, Report::ConnectSuccess);
            detector.report(host, Report::Status(resp.status().as_u16()));
        }
        Some(Err(AttemptError::ConnectFailure(_))) => detector.report(host, Report::ConnectFailed),
        Some(Err(
            AttemptError::Reset
            | AttemptError::Protocol
            | AttemptError::Refused
            | AttemptError::HeadOverflow,
        )) => {
            // The connection was up: Envoy's pool reported it before the reset.
            detector.report(host, Report::ConnectSuccess);
            detector.report(host, Report::ConnectFailed);
        }
        Some(Err(AttemptError::Overflow | AttemptError::MaxDuration)) => {}
        None | Some(Err(AttemptError::PerTryTimeout)) => {
            detector.report(host, Report::Timeout(504))
        }
    }
}

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

/// The most of a kept response's body read now (by `deadline`): see the caller.
pub(crate) const SETTLED_BODY_LIMIT: usize = 64 * 1024;

/// A response whose body is read to its end (up to [`SETTLED_BODY_LIMIT`], else left
/// out), so that it no longer holds its upstream connection.
pub(crate) async fn settle(
    resp: Response<ProxyBody>,
    deadline: Option<Instant>,
) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    let read = http_body_util::Limited::new(body, SETTLED_BODY_LIMIT).collect();
    let bytes = match rt::timeout(deadline, read).await {
        Some(Ok(collected)) => collected.to_bytes(),
        // Too long, broken or too slow: the head alone, announced as such.
        _ => {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
            Bytes::new()
        }
    };
    Response::from_parts(parts, ProxyBody::full(bytes))
}

/// A retry in the `max_retries` circuit breaker (or the cluster's `retry_budget`): counted
/// from when it is scheduled until its attempt starts, as Envoy counts it.
pub(crate) struct RetrySlot(Rc<pool::ClusterPool>);

impl RetrySlot {
    /// A slot, or `None` (counted in `upstream_rq_retry_overflow`) when the breaker is full.
    fn take(
        pool: &Rc<pool::ClusterPool>,
        cluster: &ClusterInfo,
        worker: usize,
        sinks: StatSinks<'_>,
    ) -> Option<Self> {
        let b = &pool.breakers;
        let max = cluster
            .thresholds
            .max_retries(b.requests.get() + b.pending.get());
        if b.retries.get() >= max {
            sinks.retry_overflow(worker);
            return None;
        }
        b.retries.set(b.retries.get() + 1);
        Some(RetrySlot(pool.clone()))
    }
}

impl Drop for RetrySlot {
    fn drop(&mut self) {
        let b = &self.0.breakers;
        b.retries.set(b.retries.get().saturating_sub(1));
    }
}

/// Sleeps the back-off; false when the route deadline would pass first.
pub(crate) async fn backoff(
    policy: Option<&crate::http::route::RetryPolicy>,
    attempt: u32,
    deadline: Option<Instant>,
) -> bool {
    let Some(p) = policy else { return false };
    let d = p.backoff(attempt);
    let until = Instant::now() + d;
    if deadline.is_some_and(|dl| until >= dl) {
        return false;
    }
    rt::Sleep::until(until).await;
    true
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
    let alpn = crate::transport_socket::tls::AlpnFallback::Http1;
    let name = cluster.auto_sni.as_ref().and_then(|a| a.name_for(&req));
    let io = match crate::upstream::connect::connect(
        cluster,
        host,
        alpn,
        name.as_ref(),
        worker,
        Some((downstream_conn.remote, downstream_conn.local)),
    )
    .await
    {
        Ok(io) => io,
        Err(crate::upstream::connect::ConnectError::Failed(e)) => {
            tracing::debug!(cluster = %cluster.name, error = %e, "upstream connect failure");
            stats.upstream_cx_connect_fail.inc(worker);
            return Err(AttemptError::ConnectFailure(Some(
                crate::upstream::connect::transport_failure_reason(&e).into_boxed_str(),
            )));
        }
        Err(crate::upstream::connect::ConnectError::Timeout) => {
            stats.upstream_cx_connect_timeout.inc(worker);
            return Err(AttemptError::ConnectFailure(None));
        }
    };
    sinks.attempt(worker);
    // The cluster's stream duration runs from here, the tunnel included, as Envoy's.
    let upstream_ends = cluster.stream_limits.attempt_ends();
    let h2 =
        cluster.http2 || (cluster.http_downstream && downstream_conn.http2.get() == Some(true));
    let sent = if h2 {
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
            return Err(AttemptError::ConnectFailure(Some(
                e.to_string().into_boxed_str(),
            )));
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
            false,
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
    io: crate::transport_socket::Transport,
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
    /// When the request started (wall clock), for what formats `%START_TIME%`.
    pub(crate) start: Option<std::time::SystemTime>,
    /// Envoy's response code details, once known (empty before); those built at run time
    /// are in `log` (set through [`Outcome::ended`] and [`Outcome::set_details`]).
    pub(crate) details: &'static str,
    /// What only the access logs read (made when the connection manager has some).
    pub(crate) log: Option<Box<OutcomeLog>>,
    /// A fault the request is counted in (`active_faults`) until it completes.
    pub(crate) active_fault: Option<crate::filters::http::fault::ActiveFault>,
    /// The `x-request-id` the response echoes (`always_set_request_id_in_response`, or an
    /// internal request's `x-envoy-force-trace`), once the request's is settled.
    pub(crate) request_id: Option<HeaderValue>,
    pub(crate) upstream_host: Option<SocketAddr>,
    /// The client's address the connection manager's `original_ip_detection_extensions`
    /// found (none without them, or when they found none: the peer is).
    pub(crate) detected_remote: Option<std::net::IpAddr>,
    pub(crate) upstream_cluster: Option<String>,
    pub(crate) route_name: String,
    /// The request is a health check (the health check filter recognised it).
    pub(crate) health_check: bool,
    /// The request's span and its name, when the connection manager traces (boxed: most
    /// requests have none, and the outcome is moved along the request's path).
    pub(crate) span: Option<Box<(crate::tracers::ActiveSpan, String)>>,
    /// `x-envoy-decorator-operation` for the response (a route decorator's operation).
    pub(crate) decorator_operation: Option<Box<str>>,
    /// The custom response filter's state, when a redirect policy may apply (Envoy's
    /// filter state: it outlives a redirect).
    pub(crate) custom: Option<Box<crate::filters::http::custom_response::StreamState>>,
}

/// `flags` with `URX` joined in (Envoy lists a request's flags in alphabetical order).
fn with_retry_limit_exceeded(flags: &'static str) -> &'static str {
    match flags {
        "-" => "URX",
        "UT" => "URX,UT",
        "UF" => "UF,URX",
        "UC" => "UC,URX",
        "UPE" => "UPE,URX",
        "UR" => "UR,URX",
        "UO" => "UO,URX",
        "UMSDR" => "UMSDR,URX",
        other => other,
    }
}

/// What only the access logs read of a request's end: boxed, and made only when the
/// connection manager has access logs, so a request without keeps a small outcome (it is
/// moved along the request's path).
#[derive(Default)]
pub(crate) struct OutcomeLog {
    /// Response code details built at run time (a connect failure's reason, the policy
    /// RBAC matched), over [`Outcome`]'s.
    pub(crate) details: Option<String>,
    /// Why the last upstream connection attempt failed (Envoy's transport failure
    /// reason).
    pub(crate) transport_failure: Option<Box<str>>,
    /// The upstream connection the request went on (its last attempt's).
    pub(crate) connected: Option<upstream_request::Connected>,
    /// When the response's head came from upstream (its last attempt's).
    pub(crate) upstream_rx: Option<Instant>,
    /// The attempts the router made.
    pub(crate) attempts: Option<u32>,
    /// The upstream host's name, when it has one.
    pub(crate) upstream_hostname: Option<std::sync::Arc<str>>,
    /// The virtual cluster the request matched (not the catch-all).
    pub(crate) virtual_cluster: Option<std::sync::Arc<str>>,
    /// The request was traced for `x-envoy-force-trace` (Envoy's `ServiceForced`).
    pub(crate) service_forced: bool,
    /// The path the route rewrote the request's to (`:path` in the access log, the
    /// original then being `x-envoy-original-path`, as Envoy logs them).
    pub(crate) rewritten_path: Option<Box<str>>,
    /// The request's `x-request-id` once settled.
    pub(crate) request_id: Option<HeaderValue>,
}

impl Outcome {
    /// How the request ended: Envoy's response flags and response code details.
    pub(crate) fn ended(&mut self, flags: &'static str, details: &'static str) {
        self.flags = flags;
        self.set_details(details);
    }

    /// Envoy's response code details.
    pub(crate) fn set_details(&mut self, details: &'static str) {
        self.details = details;
        if let Some(l) = self.log.as_mut() {
            l.details = None;
        }
    }

    /// Response code details built at run time (kept only for the access logs).
    pub(crate) fn set_details_owned(&mut self, details: impl FnOnce() -> String) {
        if let Some(l) = self.log.as_mut() {
            l.details = Some(details());
        }
    }

    /// The response code details.
    pub(crate) fn details(&self) -> &str {
        self.log
            .as_ref()
            .and_then(|l| l.details.as_deref())
            .unwrap_or(self.details)
    }
}

/// A body of unknown length streamed to an HTTP/1.1 upstream goes chunked. hyper's client
/// assumes a GET, HEAD or CONNECT has no body and would send it without one (the client's
/// body then left unread), so the coding is named for it; Envoy forwards such a body.
fn announce_streamed_body(req: &mut Request<ProxyBody>, is_upgrade: bool) {
    let streamed = !req.body().is_end_stream() && req.body().size_hint().exact().is_none();
    if streamed
        && !is_upgrade
        && matches!(
            *req.method(),
            http::Method::GET | http::Method::HEAD | http::Method::CONNECT
        )
    {
        req.headers_mut().insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
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
