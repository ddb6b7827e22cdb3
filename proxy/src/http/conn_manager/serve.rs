//! One request through the connection manager (Envoy's `ActiveStream`): header checks and
//! sanitising, the HTTP filters' decode and encode steps, route selection and local
//! replies, then the router filter ([`crate::http::router`]).

use std::borrow::Cow;
use std::convert::Infallible;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Body as _;

use crate::filters::http::cors::CorsRequest;
use crate::filters::http::fault::FaultPolicy;
use crate::filters::http::fault::{AbortWith, FaultFilter};
use crate::filters::http::health_check::HealthCheckRequest;
use crate::filters::http::local_ratelimit::RateLimitPolicy;
use crate::filters::http::local_ratelimit::RateLimited;
use crate::filters::http::rbac::RbacRules;
use crate::filters::http::rbac::{RequestView, XffTrust};
use crate::filters::http::HttpFilter;
use crate::http::codec::body::ProxyBody;
use crate::http::codec::h1_server::{CodecEvent, H1Service, H1Settings, ServeFuture};
use crate::http::codec::handoff::DownstreamUpgrade;
use crate::http::conn_manager::access_log::LogEntry;
use crate::http::conn_manager::config::{EscapedSlashes, HcmConfig, RouteSource, UnderscoreAction};
use crate::http::conn_manager::conn_info::ConnInfo;
use crate::http::conn_manager::local_reply::{
    grpc_local_reply, is_grpc, local_reply, set_grpc_status, LocalReply,
};
use crate::http::conn_manager::path::{sanitize_path, unescape_slashes};
use crate::http::conn_manager::stream_idle::{StreamIdle, UntilIdle};
use crate::http::conn_manager::upgrade::{self};
use crate::http::route::header_mutations::FormatContext;
use crate::http::route::per_filter::{self, FilterConfigs};
use crate::http::route::{Action, ClusterSpec, Pseudo, RouteTable};
use crate::http::router::forward::forward;
use crate::http::router::{
    is_scheme, redirect, tls_redirect, Internal, Outcome, Routed, X_ENVOY_EXTERNAL_ADDRESS,
    X_ENVOY_FORCE_TRACE, X_ENVOY_INTERNAL, X_FORWARDED_CLIENT_CERT, X_FORWARDED_FOR,
    X_FORWARDED_PROTO, X_REQUEST_ID,
};
use courier_runtime::event::rt;

pub(crate) fn protocol_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        _ => "HTTP/1.1",
    }
}

/// A request's future ([`serve`]) on the heap, built in place: it is several KiB, and
/// built on the stack first it would be copied whole into its box on every request (which
/// the optimiser does or does not elide as the code around it changes; measured at 7.6 KB
/// of `memcpy` a request when it did not).
pub fn serve_boxed(
    conn: Rc<ConnInfo>,
    req: Request<ProxyBody>,
    upgrade: Option<DownstreamUpgrade>,
) -> ServeFuture {
    // The box is allocated before the future is built (arguments are evaluated in order),
    // so that it is built where it stays.
    pin_in(Box::new_uninit(), serve(conn, req, upgrade)) as ServeFuture
}

/// `value` in `slot`, pinned.
pub(crate) fn pin_in<T>(slot: Box<std::mem::MaybeUninit<T>>, value: T) -> Pin<Box<T>> {
    Box::into_pin(Box::write(slot, value))
}

/// A downstream request in `downstream_rq_active` and its connection's active count, until
/// its response body ends (the guard goes into the body's completion) or it is dropped
/// without a response (its stream reset, its timeout).
pub(crate) struct ActiveRequest(Rc<ConnInfo>);

impl ActiveRequest {
    fn new(conn: &Rc<ConnInfo>) -> Self {
        conn.active.set(conn.active.get() + 1);
        conn.config.stats.downstream_rq_active.inc(conn.worker);
        ActiveRequest(conn.clone())
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        let conn = &self.0;
        conn.active.set(conn.active.get().saturating_sub(1));
        conn.config.stats.downstream_rq_active.dec(conn.worker);
    }
}

/// Handles one request end to end. `upgrade` delivers the downstream connection (or HTTP/2
/// stream) once the response accepting an upgrade request is sent.
pub async fn serve(
    conn: Rc<ConnInfo>,
    req: Request<ProxyBody>,
    upgrade: Option<DownstreamUpgrade>,
) -> Result<Response<ProxyBody>, Infallible> {
    let cfg = conn.config.clone();
    let worker = conn.worker;
    let start = Instant::now();
    let start_wall = SystemTime::now();
    conn.requests.set(conn.requests.get() + 1);
    conn.last_activity.set(start);
    cfg.stats.downstream_rq_total.inc(worker);
    let active = ActiveRequest::new(&conn);
    if req.version() == Version::HTTP_2 {
        cfg.stats.downstream_rq_http2_total.inc(worker);
    } else {
        cfg.stats.downstream_rq_http1_total.inc(worker);
    }
    let log_state = (!cfg.access_logs.is_empty()).then(|| {
        (
            req.method().to_string(),
            req.uri()
                .path_and_query()
                .map_or_else(|| req.uri().path().to_string(), |p| p.to_string()),
            authority_of(&req).unwrap_or_default(),
            req.headers().clone(),
            req.version(),
        )
    });
    let mut outcome = Outcome {
        flags: "-",
        ..Default::default()
    };
    let request_id_for_response = if cfg.always_set_request_id_in_response {
        req.headers().get(&X_REQUEST_ID).cloned()
    } else {
        None
    };
    let h2_upgrade = matches!(upgrade, Some(DownstreamUpgrade::Http2(_)));
    let grpc = is_grpc(req.headers());
    let deadline = cfg.request_timeout.map(|t| start + t);
    let idle = Rc::new(StreamIdle::new(
        cfg.stream_idle_timeout,
        req.body().is_end_stream(),
        cfg.stats.downstream_rq_idle_timeout.clone(),
        worker,
    ));
    let mut req = req;
    if !req.body().is_end_stream() {
        req.body_mut().report_activity(idle.clone());
    }
    // The work future is built in the await's own expression: bound to a local first, it
    // would take room in this future twice (the local and the timeout's copy), about
    // 34 KiB instead of 8 for every request.
    let mut resp = match rt::timeout(
        deadline,
        UntilIdle::new(process(&conn, req, upgrade, &mut outcome, &idle), &idle),
    )
    .await
    {
        Some(Some(r)) => r,
        Some(None) => {
            outcome.flags = "SI";
            let status = if idle.request_complete() {
                StatusCode::GATEWAY_TIMEOUT
            } else {
                // An HTTP/1.1 connection then closes: its request body was not read to the end.
                StatusCode::REQUEST_TIMEOUT
            };
            local_reply(status, "stream timeout")
        }
        None => {
            cfg.stats.downstream_rq_timeout.inc(worker);
            outcome.flags = "-";
            local_reply(StatusCode::REQUEST_TIMEOUT, "request timeout")
        }
    };
    if grpc {
        if let Some(LocalReply(status)) = resp.extensions().get::<LocalReply>().copied() {
            grpc_local_reply(&mut resp, status);
        }
    }
    if h2_upgrade && resp.status().is_success() {
        // Any 2xx to an extended CONNECT opens the tunnel (RFC 8441), so an upstream that
        // answered the upgrade with an ordinary response cannot be passed on as one.
        outcome.flags = "UPE";
        resp = local_reply(StatusCode::BAD_GATEWAY, "upstream did not switch protocols");
    }
    // Counted and logged as the upstream answered (a `101`), as Envoy's connection manager
    // does before its HTTP/2 codec turns it into a `200`.
    let status = resp.status().as_u16();
    let class = (status / 100) as usize;
    if (1..=5).contains(&class) {
        cfg.stats.downstream_rq_xx[class - 1].inc(worker);
    }
    if h2_upgrade {
        upgrade::h1_to_h2_response(&mut resp);
    }
    finish_response(&cfg, &mut resp);
    if let Some(id) = outcome.request_id.take().or(request_id_for_response) {
        // The request's id, whatever the upstream said (as Envoy).
        resp.headers_mut().insert(X_REQUEST_ID.clone(), id);
    }
    // While the server fails its health checks every response ends its connection, as
    // Envoy's drain-close: `connection: close` on HTTP/1.1, GOAWAY on HTTP/2.
    if crate::worker::health_failed() {
        conn.drain_close();
    }
    if conn.closing.get() && resp.version() != Version::HTTP_2 {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    // Completion: when the response body ends (or is dropped).
    let conn2 = conn.clone();
    let (parts, body) = resp.into_parts();
    let resp_headers = log_state.as_ref().map(|_| parts.headers.clone());
    let timers = log_state.as_ref().map(|_| idle.clone());
    let on_done = move |_ok: bool, bytes_sent: u64| {
        let cfg = &conn2.config;
        cfg.stats.downstream_rq_completed.inc(worker);
        cfg.stats
            .downstream_rq_time
            .record(worker, start.elapsed().as_millis() as u64);
        drop(active);
        conn2.last_activity.set(Instant::now());
        if let Some((method, path, authority, headers, version)) = &log_state {
            let entry = LogEntry {
                start: start_wall,
                method,
                path,
                authority,
                protocol: protocol_name(*version),
                request: headers,
                response: resp_headers.as_ref(),
                status,
                // A timeout that cut the response body off after its head.
                flags: timers
                    .as_ref()
                    .and_then(|t| t.expired())
                    .map_or(outcome.flags, |e| e.flag()),
                bytes_received: 0,
                bytes_sent,
                duration: start.elapsed(),
                upstream_host: outcome.upstream_host,
                upstream_cluster: outcome.upstream_cluster.as_deref(),
                remote: conn2.remote,
                route_name: &outcome.route_name,
            };
            for l in &cfg.access_logs {
                l.log(&entry);
            }
        }
    };
    let mut body = body;
    body.on_end(Box::new(on_done));
    if !body.is_end_stream() {
        body.enforce_idle_timeout(idle);
    }
    Ok(Response::from_parts(parts, body))
}

pub(crate) fn authority_of<B>(req: &Request<B>) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str().to_string());
    }
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Header-size accounting as Envoy's `max_request_headers_kb` (names + values).
pub(crate) fn headers_size<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    let mut n = req.method().as_str().len()
        + uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(1, |p| p.as_str().len());
    for (k, v) in req.headers() {
        n += k.as_str().len() + v.len();
    }
    n
}

pub(crate) async fn process(
    conn: &Rc<ConnInfo>,
    mut req: Request<ProxyBody>,
    mut downstream_upgrade: Option<DownstreamUpgrade>,
    outcome: &mut Outcome,
    idle: &StreamIdle,
) -> Response<ProxyBody> {
    let cfg = &conn.config;
    let worker = conn.worker;
    // The version and framing (HTTP/1.0 without `accept_http_10`, Content-Length with
    // Transfer-Encoding and the like) were checked by the codec: `downstream_h1` for
    // HTTP/1, hyper's for HTTP/2.
    if req.headers().len() > cfg.max_headers_count
        || headers_size(&req) > cfg.max_request_headers_kb as usize * 1024
    {
        cfg.stats.downstream_rq_too_large.inc(worker);
        conn.closing.set(true);
        return local_reply(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "");
    }
    match cfg.underscores {
        UnderscoreAction::Allow => {}
        UnderscoreAction::Reject => {
            if req.headers().keys().any(|k| k.as_str().contains('_')) {
                conn.closing.set(true);
                return local_reply(StatusCode::BAD_REQUEST, "");
            }
        }
        UnderscoreAction::Drop => {
            let drop: Vec<HeaderName> = req
                .headers()
                .keys()
                .filter(|k| k.as_str().contains('_'))
                .cloned()
                .collect();
            for k in drop {
                req.headers_mut().remove(k);
            }
        }
    }
    // Host / authority, borrowed from cheap clones of the request's own (shared) bytes, as
    // the request itself moves on upstream.
    let uri_authority = req.uri().authority().cloned();
    let host_header = match &uri_authority {
        Some(_) => None,
        None => req.headers().get(header::HOST).cloned(),
    };
    let found = match (&uri_authority, &host_header) {
        (Some(a), _) => Some(a.as_str()),
        (None, Some(h)) => h.to_str().ok(),
        (None, None) => None,
    };
    let mut authority: Cow<'_, str> = match found {
        Some(a) => Cow::Borrowed(a),
        None if req.version() == Version::HTTP_10 => {
            Cow::Owned(cfg.default_host_for_http_10.clone().unwrap_or_default())
        }
        None => {
            conn.closing.set(true);
            // Envoy's reply has no body.
            return local_reply(StatusCode::BAD_REQUEST, "");
        }
    };
    // `strip_trailing_host_dot`, then the port, as Envoy's connection manager.
    if cfg.strip_trailing_host_dot {
        let host = crate::http::route::strip_port(&authority);
        if let Some(bare) = host.strip_suffix('.') {
            authority = Cow::Owned(format!("{bare}{}", &authority[host.len()..]));
        }
    }
    if let Some(any) = cfg.strip_port {
        let stripped = crate::http::route::strip_port(&authority);
        if stripped.len() != authority.len() {
            let port_matches =
                authority[stripped.len() + 1..].parse::<u16>().ok() == Some(conn.local.port());
            if any || port_matches {
                authority = Cow::Owned(stripped.to_string());
            }
        }
    }
    // Path.
    let method = req.method().clone();
    let path_and_query = req.uri().path_and_query().cloned();
    let mut path: Cow<'_, str> = path_and_query
        .as_ref()
        .map_or(Cow::Borrowed("/"), |p| Cow::Borrowed(p.as_str()));
    let asterisk = method == Method::OPTIONS && path == "*";
    if !path.starts_with('/') && !asterisk {
        conn.closing.set(true);
        return local_reply(StatusCode::BAD_REQUEST, "");
    }
    // Escaped slashes first, then normalisation, as Envoy's connection manager.
    let mut redirect_unescaped = false;
    if cfg.escaped_slashes != EscapedSlashes::Keep {
        if let Some(p) = unescape_slashes(&path) {
            match cfg.escaped_slashes {
                EscapedSlashes::Reject => {
                    conn.closing.set(true);
                    return local_reply(StatusCode::BAD_REQUEST, "");
                }
                EscapedSlashes::Redirect => redirect_unescaped = true,
                EscapedSlashes::Forward | EscapedSlashes::Keep => {}
            }
            path = Cow::Owned(p);
        }
    }
    if cfg.normalize_path || cfg.merge_slashes {
        match sanitize_path(&path, cfg.normalize_path, cfg.merge_slashes) {
            Some(p) => path = Cow::Owned(p),
            None => {
                conn.closing.set(true);
                return local_reply(StatusCode::BAD_REQUEST, "");
            }
        }
    }
    if redirect_unescaped {
        let mut r = local_reply(StatusCode::TEMPORARY_REDIRECT, "");
        if let Ok(v) = HeaderValue::from_str(&path) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        return r;
    }
    // Forwarding headers. An internal request keeps its controls and request id; without
    // `internal_address_config` every request is external (Envoy 1.40's default).
    let headers = req.headers_mut();
    let internal = cfg.internal_addresses.is_internal(
        conn.remote.ip(),
        headers,
        cfg.use_remote_address,
        cfg.xff_num_trusted_hops,
    );
    if internal {
        // `forward_client_cert_details`' SANITIZE holds for internal requests too.
        headers.remove(&X_FORWARDED_CLIENT_CERT);
    } else {
        crate::http::conn_manager::headers::strip_external_control_headers(
            headers,
            cfg.use_remote_address,
        );
    }
    let remote_ip = conn.remote.ip();
    if cfg.use_remote_address {
        if !cfg.skip_xff_append {
            // As Envoy: a loopback peer (127.0.0.1 or ::1 exactly, a v4-mapped one
            // included) is this machine, named by its own address.
            let ip = if crate::server::local_info::is_loopback(remote_ip) {
                cfg.local_address.to_string()
            } else {
                remote_ip.to_string()
            };
            let v = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
                Some(prev) if !prev.is_empty() => format!("{prev},{ip}"),
                _ => ip,
            };
            if let Ok(v) = HeaderValue::from_str(&v) {
                headers.insert(X_FORWARDED_FOR.clone(), v);
            }
        }
        if !internal {
            if let Ok(v) = HeaderValue::from_str(&remote_ip.to_string()) {
                headers.insert(X_ENVOY_EXTERNAL_ADDRESS.clone(), v);
            }
        }
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    } else if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }
    if internal {
        headers.insert(X_ENVOY_INTERNAL.clone(), HeaderValue::from_static("true"));
    }
    if cfg.generate_request_id {
        let regenerate = cfg.use_remote_address && !internal && !cfg.preserve_external_request_id;
        if regenerate || !headers.contains_key(&X_REQUEST_ID) {
            headers.insert(
                X_REQUEST_ID.clone(),
                crate::http::conn_manager::headers::uuid4_value(),
            );
        }
    }
    if cfg.always_set_request_id_in_response
        || (internal && headers.contains_key(&X_ENVOY_FORCE_TRACE))
    {
        outcome.request_id = headers.get(&X_REQUEST_ID).cloned();
    }
    if let Some(via) = &cfg.via {
        crate::http::conn_manager::headers::append_value(headers, &header::VIA, via);
    }
    // Route.
    let table: Option<Arc<RouteTable>> = match &cfg.routes {
        RouteSource::Static(t) => Some(t.clone()),
        RouteSource::Rds(rds) => crate::http::route::rds::table(&rds.route_config_name),
    };
    let Some(table) = table else {
        cfg.stats.no_route.inc(worker);
        outcome.flags = "NR";
        return local_reply(StatusCode::NOT_FOUND, "");
    };
    if method == Method::CONNECT {
        // Only routes with a `connect_matcher` take CONNECT, and Courier has none: Envoy's
        // 404, and the connection (a would-be tunnel) closes.
        cfg.stats.no_route.inc(worker);
        outcome.flags = "NR";
        conn.closing.set(true);
        return local_reply(StatusCode::NOT_FOUND, "");
    }
    // `internal_only_headers` leave every external request (before routing, as Envoy).
    if internal {
        // The router obeys (and removes) its controls: see `forward`.
        req.extensions_mut().insert(Internal);
    } else {
        for name in &table.internal_only_headers {
            req.headers_mut().remove(name);
        }
    }
    // What header matchers see of `:method`, `:path`, `:authority` and `:scheme` (built
    // where used: held across the request's awaits it would take room in its future).
    let scheme = Pseudo::scheme_of(req.uri());
    let pseudo = || Pseudo::request(&method, &path, &authority, scheme);
    let vh = table.find_vhost(&authority);
    // `require_tls` comes before the routes, as in Envoy: even a request no route takes
    // is sent to `https`.
    if vh.is_some_and(|vh| vh.require_tls.redirects(req.headers())) {
        return tls_redirect(&authority, &path);
    }
    // A request no route takes still goes through the filters, as in Envoy (a health
    // check, a fault or a rate limit may answer it), with no per-route settings.
    let routed = vh.and_then(|vh| Some((vh, vh.find_route(&path, req.headers(), &pseudo())?)));
    if let Some((_, route)) = routed {
        if !cfg.access_logs.is_empty() {
            outcome.route_name = route.name.clone();
        }
    }
    let fcx_remote = conn.remote;
    let fcx_local = conn.local;
    let protocol = protocol_name(req.version());
    // Upgrades (websocket).
    let mut upgrade = crate::http::codec::handoff::is_upgrade(req.headers())
        .then(|| req.headers().get(header::UPGRADE))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    if upgrade.as_deref() == Some("h2c") {
        // Envoy does not upgrade to h2c: the request is served as plain HTTP/1.1, without
        // its upgrade headers.
        crate::http::conn_manager::headers::drop_h2c_upgrade(req.headers_mut());
        upgrade = None;
    }
    let upgrade_refused = upgrade.as_ref().is_some_and(|up| {
        let allowed = match routed.map(|(_, route)| &route.action) {
            Some(Action::Route(a)) => a
                .upgrades
                .iter()
                .find(|(t, _)| t == up)
                .map_or_else(|| cfg.upgrades.iter().any(|t| t == up), |(_, en)| *en),
            _ => false,
        };
        !allowed
    });
    // The filters before the router, in the chain's order. CORS acts on requests routed
    // to a cluster only (Envoy's sees no route entry for direct responses and
    // redirects): a preflight is answered at once, without the route's response headers
    // (Envoy's answer gets none), and its headers go on whatever answers a later filter
    // or the router gives.
    let mut cors = None;
    let mut rate_limit = None;
    let mut health_mark = None;
    // Boxed, as it is rare: held across the request's awaits, it is copied with them.
    let mut compress: Option<Box<crate::filters::http::compressor::CompressorRequest<'_>>> = None;
    let grpc = cfg.compressor.is_some() && is_grpc(req.headers());
    // Boxed: it is rare, and a response kept inline would be copied on every request.
    let mut filter_reply: Option<Box<Response<ProxyBody>>> = None;
    let levels = match routed {
        Some((vh, route)) => [&route.filters, &vh.filters, &table.filters],
        None => [&per_filter::NONE; 3],
    };
    let to_cluster = routed.is_some_and(|(_, route)| matches!(route.action, Action::Route(_)));
    for chained in &cfg.filters {
        if !per_filter::runs(levels, chained.filter.name(), chained.off_by_default) {
            continue;
        }
        match &chained.filter {
            HttpFilter::Cors(f) if to_cluster => {
                match f.on_request(levels, &method, req.headers(), worker) {
                    CorsRequest::Preflight(r) => {
                        let mut r = *r;
                        // Envoy's compressor sees the preflight before its codec gives it
                        // a length.
                        let length = r.headers_mut().remove(header::CONTENT_LENGTH);
                        compress_response(cfg, levels, compress.as_deref(), grpc, &mut r, worker);
                        if let Some(l) = length {
                            r.headers_mut().insert(header::CONTENT_LENGTH, l);
                        }
                        return r;
                    }
                    CorsRequest::Allowed(h) => cors = Some(h),
                    CorsRequest::Pass => {}
                }
            }
            HttpFilter::Cors(_) => {}
            HttpFilter::HealthCheck(f) => {
                let failed = crate::worker::health_failed();
                match f.on_request(req.headers(), &pseudo(), failed, worker) {
                    HealthCheckRequest::Answer(r) => {
                        filter_reply = Some(r);
                        break;
                    }
                    HealthCheckRequest::PassThrough => health_mark = Some((f, true, failed)),
                    HealthCheckRequest::Pass if failed => health_mark = Some((f, false, true)),
                    HealthCheckRequest::Pass => {}
                }
            }
            HttpFilter::LocalRateLimit(f) => {
                let route_policy = per_filter::policy_arc::<RateLimitPolicy>(levels, &f.name);
                let cx = FormatContext {
                    remote: Some(fcx_remote),
                    local: Some(fcx_local),
                    protocol,
                    upstream: None,
                    request: None,
                };
                match f.on_request(
                    route_policy.as_ref(),
                    &conn.rate_limit_buckets,
                    req.headers_mut(),
                    &cx,
                    worker,
                ) {
                    RateLimited::Refuse(r) => {
                        outcome.flags = "RL";
                        filter_reply = Some(r);
                        break;
                    }
                    RateLimited::Pass(r) => rate_limit = r,
                }
            }
            HttpFilter::Rbac(f) => {
                let route_rules = per_filter::policy::<RbacRules>(levels, &f.name);
                let view = RequestView {
                    headers: req.headers(),
                    pseudo: pseudo(),
                    local: conn.local,
                    peer: conn.remote.ip(),
                    xff: XffTrust {
                        use_remote_address: cfg.use_remote_address,
                        trusted_hops: cfg.xff_num_trusted_hops,
                        appended: cfg.use_remote_address && !cfg.skip_xff_append,
                    },
                };
                if let Some(r) = f.on_request(route_rules, &view, worker) {
                    filter_reply = Some(r);
                    break;
                }
            }
            HttpFilter::Compressor(f) => {
                compress = Some(f.on_request(levels, &mut req, worker));
            }
            HttpFilter::Fault(f) => {
                // Boxed: its delay would otherwise take room in every request's future.
                filter_reply = Box::pin(inject_fault(
                    f,
                    levels,
                    routed.map(|(_, route)| &route.action),
                    req.headers(),
                    &pseudo(),
                    outcome,
                    worker,
                ))
                .await;
                if filter_reply.is_some() {
                    break;
                }
            }
        }
    }
    // A filter's answer gets the route's response headers only on a route to a cluster
    // (Envoy's route entry; measured).
    let route_headers = routed.filter(|_| filter_reply.is_none() || to_cluster);
    let Some((vh, route)) = routed else {
        let mut resp = match filter_reply {
            Some(reply) => *reply,
            None => {
                cfg.stats.no_route.inc(worker);
                outcome.flags = "NR";
                local_reply(StatusCode::NOT_FOUND, "")
            }
        };
        mark_response(&mut resp, rate_limit, health_mark, cors);
        compress_response(cfg, levels, compress.as_deref(), grpc, &mut resp, worker);
        return resp;
    };
    let mut resp = match (filter_reply, &route.action) {
        (Some(reply), _) => *reply,
        // The refusal still gets the route's response headers, as Envoy's does.
        (None, _) if upgrade_refused => {
            cfg.stats.downstream_rq_ws_on_non_ws_route.inc(worker);
            // As Envoy, an HTTP/1.1 connection whose upgrade was refused is closed.
            if req.version() != Version::HTTP_2 {
                conn.closing.set(true);
            }
            local_reply(StatusCode::FORBIDDEN, "")
        }
        (None, Action::Direct { status, body }) => {
            cfg.stats.rq_direct_response.inc(worker);
            let mut r = match body {
                Some(b) => {
                    let mut r = Response::new(ProxyBody::full(b.clone()));
                    r.headers_mut()
                        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                    r.headers_mut()
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(b.len()));
                    r
                }
                None => {
                    let mut r = Response::new(ProxyBody::empty());
                    r.headers_mut()
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
                    r
                }
            };
            *r.status_mut() = *status;
            r.extensions_mut().insert(LocalReply(None));
            // Envoy sets Location on 201 and redirect direct responses.
            let code = status.as_u16();
            if code == 201 || matches!(code, 301 | 302 | 303 | 307 | 308) {
                if let Ok(v) = HeaderValue::from_str(&format!("http://{authority}{path}")) {
                    r.headers_mut().insert(header::LOCATION, v);
                }
            }
            r
        }
        (None, Action::Redirect(rd)) => {
            cfg.stats.rq_redirect.inc(worker);
            // As Envoy: without a scheme of its own, the redirect keeps the request's, as
            // `x-forwarded-proto` (set above) tells it.
            let scheme = req
                .headers()
                .get(&X_FORWARDED_PROTO)
                .and_then(|v| v.to_str().ok())
                .filter(|s| is_scheme(s))
                .unwrap_or("http");
            redirect(rd, route, &authority, &path, scheme)
        }
        (None, Action::Route(action)) => {
            // The headers go upstream; a copy is kept only for what reads them later.
            let req_headers_for_cx =
                (upgrade.is_some() || table.reads_request_headers).then(|| req.headers().clone());
            let fcx = FormatContext {
                remote: Some(fcx_remote),
                local: Some(fcx_local),
                protocol,
                upstream: None,
                request: req_headers_for_cx.as_ref(),
            };
            let on_upgrade = upgrade.as_ref().and(downstream_upgrade.take());
            if let Some(t) = action.idle_timeout {
                idle.set_route_timeout(t);
            }
            let routed = Routed {
                authority: &authority,
                path: &path,
                table: &table,
                vh,
                route,
                action,
                fcx: &fcx,
            };
            forward(conn, req, routed, on_upgrade, outcome, idle).await
        }
    };
    // Response header mutations: route, virtual host, route configuration.
    let fcx = FormatContext {
        remote: Some(fcx_remote),
        local: Some(fcx_local),
        protocol,
        upstream: outcome.upstream_host,
        request: None,
    };
    if let Some((vh, route)) = route_headers {
        route.response_headers.apply(resp.headers_mut(), &fcx);
        vh.response_headers.apply(resp.headers_mut(), &fcx);
        table.response_headers.apply(resp.headers_mut(), &fcx);
    }
    mark_response(&mut resp, rate_limit, health_mark, cors);
    compress_response(cfg, levels, compress.as_deref(), grpc, &mut resp, worker);
    resp
}

/// The compressor's response pass, when the chain has a compressor that runs for the
/// request: `seen` is what it made of the request, if the request reached it (Envoy runs
/// it on the answers of filters before it too, without the request's `accept-encoding`).
pub(crate) fn compress_response(
    cfg: &HcmConfig,
    levels: [&FilterConfigs; 3],
    seen: Option<&crate::filters::http::compressor::CompressorRequest<'_>>,
    grpc: bool,
    resp: &mut Response<ProxyBody>,
    worker: usize,
) {
    let Some(chained) = cfg.compressor.and_then(|i| cfg.filters.get(i)) else {
        return;
    };
    let HttpFilter::Compressor(f) = &chained.filter else {
        return;
    };
    // A local reply to a gRPC request goes out in gRPC's form, headers only, which is
    // what Envoy's compressor sees of it: it is given that form first.
    if grpc {
        if let Some(LocalReply(status)) = resp.extensions_mut().remove::<LocalReply>() {
            grpc_local_reply(resp, status);
        }
    }
    match seen {
        Some(r) => r.on_response(resp, worker),
        None if per_filter::runs(levels, &f.name, chained.off_by_default) => {
            f.unseen(levels).on_response(resp, worker)
        }
        None => {}
    }
}

/// What the filters add to whatever answers a request: rate limit headers, the health
/// check filter's marks, CORS headers.
pub(crate) fn mark_response(
    resp: &mut Response<ProxyBody>,
    rate_limit: Option<crate::filters::http::local_ratelimit::Remaining>,
    health_mark: Option<(
        &crate::filters::http::health_check::HealthCheckFilter,
        bool,
        bool,
    )>,
    cors: Option<crate::filters::http::cors::AllowedHeaders>,
) {
    if let Some(r) = rate_limit {
        r.apply(resp.headers_mut());
    }
    if let Some((f, health_check, failed)) = health_mark {
        f.mark(resp.headers_mut(), health_check, failed);
    }
    if let Some(cors) = cors {
        cors.apply(resp.headers_mut());
    }
}

/// Runs the fault filter on a request: delays it, and answers it when the fault aborts it.
pub(crate) async fn inject_fault(
    filter: &FaultFilter,
    levels: [&FilterConfigs; 3],
    action: Option<&Action>,
    headers: &http::HeaderMap,
    pseudo: &Pseudo<'_>,
    outcome: &mut Outcome,
    worker: usize,
) -> Option<Box<Response<ProxyBody>>> {
    // The most specific level naming the filter decides, whatever the route does (only
    // `upstream_cluster` needs a route to a cluster).
    let route_policy = per_filter::policy_arc::<FaultPolicy>(levels, &filter.name);
    let cluster = match action {
        Some(Action::Route(a)) => match &a.cluster {
            ClusterSpec::Single(c) => Some(c.as_str()),
            ClusterSpec::Header(h) => headers.get(h).and_then(|v| v.to_str().ok()),
            ClusterSpec::Weighted { .. } => None,
        },
        _ => None,
    };
    let mut injection =
        filter.on_request(route_policy.as_ref(), headers, pseudo, cluster, worker)?;
    if let Some(d) = injection.delay {
        outcome.flags = "DI";
        rt::Sleep::until(Instant::now() + d).await;
    }
    let abort = injection.abort(headers, filter, worker);
    outcome.active_fault = Some(injection.active);
    let (with, body) = abort?;
    outcome.flags = if outcome.flags == "DI" { "DI,FI" } else { "FI" };
    let mut r = match with {
        AbortWith::Http(status) => local_reply(status, ""),
        AbortWith::Grpc(_) => local_reply(StatusCode::OK, ""),
    };
    if let AbortWith::Grpc(g) = with {
        set_grpc_status(&mut r, g);
    }
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    *r.body_mut() = ProxyBody::full(body);
    Some(Box::new(r))
}

/// The HTTP/1.1 codec serves its requests through the connection manager.
impl H1Service for ConnInfo {
    fn settings(&self) -> &H1Settings {
        &self.h1
    }

    fn serve(
        self: Rc<Self>,
        req: Request<ProxyBody>,
        upgrade: Option<DownstreamUpgrade>,
    ) -> ServeFuture {
        serve_boxed(self, req, upgrade)
    }

    fn local_reply(&self, status: StatusCode, body: &str) -> Response<ProxyBody> {
        let mut r = local_reply(status, body);
        finish_response(&self.config, &mut r);
        r
    }

    fn closing(&self) -> bool {
        self.closing.get()
    }

    fn count(&self, event: CodecEvent) {
        let stats = &self.config.stats;
        match event {
            CodecEvent::ProtocolError => stats.downstream_cx_protocol_error.inc(self.worker),
            CodecEvent::HeaderTimeout => stats.downstream_rq_header_timeout.inc(self.worker),
        }
    }
}

/// Server header, per `server_header_transformation`.
pub(crate) fn finish_response(cfg: &HcmConfig, resp: &mut Response<ProxyBody>) {
    use courier_proto::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::ServerHeaderTransformation as S;
    match cfg.server_header {
        S::Overwrite => {
            resp.headers_mut()
                .insert(header::SERVER, cfg.server_name.clone());
        }
        S::AppendIfAbsent => {
            resp.headers_mut()
                .entry(header::SERVER)
                .or_insert_with(|| cfg.server_name.clone());
        }
        S::PassThrough => {}
    }
    if let Some(via) = &cfg.via {
        crate::http::conn_manager::headers::append_value(resp.headers_mut(), &header::VIA, via);
    }
}
