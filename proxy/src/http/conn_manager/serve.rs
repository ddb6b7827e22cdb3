//! One request through the connection manager (Envoy's `ActiveStream`): header checks and
//! sanitising, the HTTP filters' decode and encode steps, route selection and local
//! replies, then the router filter ([`crate::http::router`]).

use std::borrow::Cow;
use std::convert::Infallible;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Body as _;

use crate::access_log::{AccessLogType, LogEntry};
use crate::filters::http::api_key_auth::{ApiKeyAuth, RouteSettings as ApiKeySettings};
use crate::filters::http::bandwidth_limit::BandwidthResponse;
use crate::filters::http::basic_auth::{BasicAuth, RouteUsers};
use crate::filters::http::buffer::RouteBuffer;
use crate::filters::http::compressor::{CompressorFilter, CompressorRequest, Negotiation};
use crate::filters::http::cors::CorsRequest;
use crate::filters::http::custom_response::{CustomResponseFilter, Hooks, Pass, RequestHead};
use crate::filters::http::decompressor::DecompressorFilter;
use crate::filters::http::ext_authz::verdict::ResponseChanges;
use crate::filters::http::ext_proc::Mode as ExtProcMode;
use crate::filters::http::fault::FaultPolicy;
use crate::filters::http::fault::{AbortWith, FaultFilter, FaultResponseLimit};
use crate::filters::http::grpc_http1_bridge::BridgeResponse;
use crate::filters::http::grpc_json_transcoder::{TranscodeResponse, Transcoded};
use crate::filters::http::grpc_stats::GrpcStatsRequest;
use crate::filters::http::grpc_web::{is_grpc_web, GrpcWebRequest};
use crate::filters::http::health_check::{HealthCheckFilter, HealthCheckRequest};
use crate::filters::http::jwt_authn::requirement::Fetched;
use crate::filters::http::jwt_authn::{JwtPerRoute, JwtRequest};
use crate::filters::http::local_ratelimit::RateLimitPolicy;
use crate::filters::http::local_ratelimit::{LocalRateLimitFilter, RateLimited};
use crate::filters::http::lua::stream::{
    RequestPass, ResponsePass, RouteFacts, RunContext, StreamFacts, TlsFacts,
};
use crate::filters::http::lua::{LuaFilter, LuaPerRoute};
use crate::filters::http::rbac::RbacRules;
use crate::filters::http::rbac::{RbacFilter, RequestView, XffTrust};
use crate::filters::http::stateful_session::{Session, StatefulSessionPerRoute};
use crate::filters::http::HttpFilter;
use crate::http::codec::body::ProxyBody;
use crate::http::codec::h1_server::{CodecEvent, H1Service, H1Settings, HeadTimeout, ServeFuture};
use crate::http::codec::handoff::DownstreamUpgrade;
use crate::http::conn_manager::config::{EscapedSlashes, HcmConfig, RouteSource, UnderscoreAction};
use crate::http::conn_manager::conn_info::ConnInfo;
use crate::http::conn_manager::local_reply::{
    grpc_local_reply, is_grpc, local_reply, set_grpc_status, LocalReply,
};
use crate::http::conn_manager::path::{sanitize_path, unescape_slashes};
use crate::http::conn_manager::service_calls::ext_proc::{
    Processed as ExtProcessed, Session as ExtProcSession,
};
use crate::http::conn_manager::service_calls::lua::LuaCaller;
use crate::http::conn_manager::stream_idle::{StreamIdle, UntilIdle};
use crate::http::conn_manager::upgrade::{self};
use crate::http::route::per_filter::{self, FilterConfigs};
use crate::http::route::rate_limits::RateLimitView;
use crate::http::route::{Action, ClusterSpec, Pseudo, Redirect, Route, RouteTable, VirtualHost};
use crate::http::router::retry_buffer::{Filled, Replay, RetryBuffer};
use crate::http::router::{
    forward, is_scheme, redirect, tls_redirect, Internal, Outcome, X_ENVOY_EXTERNAL_ADDRESS,
    X_ENVOY_FORCE_TRACE, X_ENVOY_INTERNAL, X_FORWARDED_PROTO, X_REQUEST_ID,
};
use crate::overload::actions;
use crate::overload::load_shed::{self, Point};
use crate::protocol::header_mutations::FormatContext;
use crate::upstream::ThreadLocalClusterManager;
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
    start: Instant,
) -> ServeFuture {
    // The box is allocated before the future is built (arguments are evaluated in order),
    // so that it is built where it stays.
    pin_in(Box::new_uninit(), serve(conn, req, upgrade, start)) as ServeFuture
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
/// stream) once the response accepting an upgrade request is sent. The stream started at
/// `start` (an HTTP/1.1 head's first byte): `request_timeout` and the logged duration run
/// from there, as Envoy's.
pub async fn serve(
    conn: Rc<ConnInfo>,
    req: Request<ProxyBody>,
    upgrade: Option<DownstreamUpgrade>,
    start: Instant,
) -> Result<Response<ProxyBody>, Infallible> {
    let cfg = conn.config.clone();
    let worker = conn.worker;
    let start_wall = wall_clock_at(start);
    let active = count_request(&conn, &req, start);
    let log = RequestLog::of(&cfg, &req);
    let mut outcome = Outcome {
        flags: "-",
        start: Some(start_wall),
        log: log.as_ref().map(|_| Box::default()),
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
        log.is_some(),
    ));
    let mut req = req;
    if !req.body().is_end_stream() {
        req.body_mut().report_activity(idle.clone());
    }
    // The work future is built in the await's own expression: bound to a local first, it
    // would take room in this future twice (the local and the timeout's copy), about
    // 34 KiB instead of 8 for every request.
    let mut log = log;
    let mut resp = match rt::timeout(
        deadline,
        UntilIdle::new(
            process_recreating(
                &conn,
                req,
                upgrade,
                &mut outcome,
                &idle,
                &mut log,
                (start, start_wall),
            ),
            &idle,
        ),
    )
    .await
    {
        Some(Some(r)) => r,
        Some(None) => {
            outcome.ended("SI", "stream_idle_timeout");
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
            outcome.ended("-", "request_overall_timeout");
            local_reply(StatusCode::REQUEST_TIMEOUT, "request timeout")
        }
    };
    let status = finish_downstream_response(
        &conn,
        &mut resp,
        grpc,
        h2_upgrade,
        &mut outcome,
        request_id_for_response,
    );
    if let Some(traced) = outcome.span.as_mut() {
        traced.0.response_head(resp.headers());
    }
    // Completion: when the response body ends (or is dropped).
    let conn2 = conn.clone();
    let (parts, body) = resp.into_parts();
    let resp_headers = log.as_ref().map(|_| parts.headers.clone());
    let timers = log.as_ref().map(|_| idle.clone());
    let done = Completion {
        conn: conn2,
        start,
        active,
        log,
        start_wall,
        resp_headers,
        status,
        timers,
        outcome,
    };
    let mut body = body;
    if let Some(l) = idle.log() {
        // A response complete with its head is never polled: it ends when it is sent.
        l.response_whole.set(body.is_end_stream());
    }
    body.on_end(Box::new(move |ok: bool, bytes_sent: u64| {
        done.done(ok, bytes_sent)
    }));
    if !body.is_end_stream() {
        body.enforce_idle_timeout(idle);
    }
    Ok(Response::from_parts(parts, body))
}

/// The wall-clock time of `at`, a moment just past.
fn wall_clock_at(at: Instant) -> SystemTime {
    let now = SystemTime::now();
    now.checked_sub(at.elapsed()).unwrap_or(now)
}

/// Counts a new request on its connection (`downstream_rq_total`, by protocol, and
/// `downstream_rq_active` until the returned guard goes) and notes the connection active.
#[inline(always)]
fn count_request(conn: &Rc<ConnInfo>, req: &Request<ProxyBody>, start: Instant) -> ActiveRequest {
    let cfg = &conn.config;
    let worker = conn.worker;
    conn.requests.set(conn.requests.get() + 1);
    conn.last_activity.set(start);
    cfg.stats.downstream_rq_total.inc(worker);
    let active = ActiveRequest::new(conn);
    if req.version() == Version::HTTP_2 {
        cfg.stats.downstream_rq_http2_total.inc(worker);
    } else {
        cfg.stats.downstream_rq_http1_total.inc(worker);
    }
    active
}

/// What the access logs say of a request, taken as it arrives (before the connection
/// manager sanitises it and the router sends it on).
struct RequestLog {
    method: String,
    path: String,
    authority: String,
    headers: http::HeaderMap,
    version: Version,
    /// The body's length when the request announced it (a body the router takes whole
    /// is not read through the stream's watch).
    body_len: Option<u64>,
}

impl RequestLog {
    /// The request's log fields, when the connection manager has access logs.
    #[inline(always)]
    fn of(cfg: &HcmConfig, req: &Request<ProxyBody>) -> Option<RequestLog> {
        (!cfg.access_logs.is_empty()).then(|| RequestLog {
            method: req.method().to_string(),
            path: req
                .uri()
                .path_and_query()
                .map_or_else(|| req.uri().path().to_string(), |p| p.to_string()),
            authority: authority_of(req).unwrap_or_default(),
            headers: req.headers().clone(),
            version: req.version(),
            body_len: req.body().size_hint().exact(),
        })
    }
}

/// What the connection manager does to every response on its way out, in Envoy's order:
/// a local reply to a gRPC request in gRPC's form, an HTTP/2 upgrade's response checked,
/// the `downstream_rq_<n>xx` count, the `server` and `via` headers, the request's id, and
/// the connection's close (drain or `connection: close`). Returns the status as counted
/// and logged.
#[inline(always)]
fn finish_downstream_response(
    conn: &ConnInfo,
    resp: &mut Response<ProxyBody>,
    grpc: bool,
    h2_upgrade: bool,
    outcome: &mut Outcome,
    request_id_for_response: Option<HeaderValue>,
) -> u16 {
    let cfg = &conn.config;
    if grpc {
        if let Some(LocalReply(status)) = resp.extensions().get::<LocalReply>().copied() {
            grpc_local_reply(resp, status);
        }
    }
    if h2_upgrade && resp.status().is_success() {
        // Any 2xx to an extended CONNECT opens the tunnel (RFC 8441), so an upstream that
        // answered the upgrade with an ordinary response cannot be passed on as one.
        outcome.ended("UPE", "upgrade_failed");
        *resp = local_reply(StatusCode::BAD_GATEWAY, "upstream did not switch protocols");
    }
    // Counted and logged as the upstream answered (a `101`), as Envoy's connection manager
    // does before its HTTP/2 codec turns it into a `200`.
    let status = resp.status().as_u16();
    let class = (status / 100) as usize;
    if (1..=5).contains(&class) {
        cfg.stats.downstream_rq_xx[class - 1].inc(conn.worker);
    }
    if h2_upgrade {
        upgrade::h1_to_h2_response(resp);
    }
    finish_response(cfg, resp);
    if let Some(op) = outcome.decorator_operation.take() {
        if let Ok(v) = HeaderValue::from_str(&op) {
            resp.headers_mut().insert("x-envoy-decorator-operation", v);
        }
    }
    if let Some(id) = outcome.request_id.take().or(request_id_for_response) {
        // The request's id, whatever the upstream said (as Envoy).
        resp.headers_mut().insert(X_REQUEST_ID.clone(), id);
    }
    // While the server fails its health checks (or as a hot restart's gradual drain
    // decides) a response ends its connection, as Envoy's drain-close:
    // `connection: close` on HTTP/1.1, GOAWAY on HTTP/2.
    if crate::worker::drain_close() {
        conn.drain_close();
    }
    // The overload manager's `disable_http_keepalive` (a share of responses while scaled).
    if !conn.draining.get() && actions::applies(actions::states().disable_http_keepalive) {
        cfg.stats
            .downstream_cx_overload_disable_keepalive
            .inc(conn.worker);
        conn.close_after_response();
    }
    if conn.closing.get() && resp.version() != Version::HTTP_2 {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    status
}

/// A request's completion, run when its response body ends (or is dropped): its counts,
/// the end of its `downstream_rq_active`, and its access log entries. (Its fields drop in
/// order after it runs, as a closure's captures would.)
struct Completion {
    conn: Rc<ConnInfo>,
    start: Instant,
    active: ActiveRequest,
    log: Option<RequestLog>,
    start_wall: SystemTime,
    /// The response's headers, for the access logs.
    resp_headers: Option<http::HeaderMap>,
    status: u16,
    /// The stream's timers, for the access logs: a timeout that cut the response body off
    /// after its head is logged by its flag.
    timers: Option<Rc<StreamIdle>>,
    outcome: Outcome,
}

impl Completion {
    /// The response ended (`ok`: whole, else cut off), `bytes_sent` long.
    #[inline(always)]
    fn done(mut self, ok: bool, bytes_sent: u64) {
        let span = self.outcome.span.take();
        let span_ids = span.as_ref().and_then(|s| s.0.ids());
        let cfg = &self.conn.config;
        let worker = self.conn.worker;
        cfg.stats.downstream_rq_completed.inc(worker);
        cfg.stats
            .downstream_rq_time
            .record(worker, self.start.elapsed().as_millis() as u64);
        drop(self.active);
        self.conn.last_activity.set(Instant::now());
        if let Some(traced) = span {
            let (span, name) = *traced;
            let end = crate::tracers::SpanEnd {
                request_size: 0,
                response_size: bytes_sent,
                flags: self.outcome.flags,
                status: self.status,
                upstream_cluster: self.outcome.upstream_cluster.as_deref(),
            };
            span.finish(&name, &end, worker);
        }
        if let Some(log) = &self.log {
            write_access_logs(
                &self.conn,
                self.start,
                self.start_wall,
                log,
                self.resp_headers.as_ref(),
                self.status,
                self.timers.as_deref(),
                &self.outcome,
                span_ids,
                ok,
                bytes_sent,
            );
        }
    }
}

/// Writes a request's entry to the connection manager's access logs (`ok`: its response
/// went whole, `bytes_sent` long).
#[allow(clippy::too_many_arguments)]
fn write_access_logs(
    conn: &ConnInfo,
    start: Instant,
    start_wall: SystemTime,
    log: &RequestLog,
    resp_headers: Option<&http::HeaderMap>,
    status: u16,
    timers: Option<&StreamIdle>,
    outcome: &Outcome,
    span_ids: Option<crate::tracers::SpanIds>,
    ok: bool,
    bytes_sent: u64,
) {
    let cfg = &conn.config;
    let logged = outcome.log.as_deref();
    // A timeout that cut the response body off after its head.
    let expired = timers.and_then(|t| t.expired());
    let stream_log = timers.and_then(|t| t.log());
    let trailers = stream_log.and_then(|l| l.trailers.borrow_mut().take());
    let since = |at: Instant| at.saturating_duration_since(start);
    let request_end = stream_log.and_then(|l| l.request_end.get());
    let connected = logged.and_then(|l| l.connected);
    let timing = crate::access_log::Timing {
        request_rx: request_end.map(since),
        // The request goes upstream as it arrives: its last byte went once it had
        // arrived and the connection was there.
        upstream_tx: connected.map(|c| since(request_end.map_or(c.at, |r| r.max(c.at)))),
        upstream_rx: logged.and_then(|l| l.upstream_rx).map(since),
        downstream_tx: (ok || stream_log.is_some_and(|l| l.response_whole.get()))
            .then(|| start.elapsed()),
    };
    let entry = LogEntry {
        start: start_wall,
        method: &log.method,
        path: logged
            .and_then(|l| l.rewritten_path.as_deref())
            .unwrap_or(&log.path),
        original_path: logged
            .is_some_and(|l| l.rewritten_path.is_some())
            .then_some(&*log.path),
        authority: &log.authority,
        protocol: protocol_name(log.version),
        request: &log.headers,
        response: resp_headers,
        status,
        flags: expired.map_or(outcome.flags, |e| e.flag()),
        bytes_received: timers
            .map(|t| t.request_bytes())
            .filter(|&n| n > 0)
            // A body the router took whole went upstream unread by the watch;
            // one a filter refused before the router was never read (as Envoy).
            .or(log.body_len.filter(|_| outcome.upstream_host.is_some()))
            .unwrap_or(0),
        bytes_sent,
        duration: start.elapsed(),
        upstream_host: outcome.upstream_host,
        upstream_cluster: outcome.upstream_cluster.as_deref(),
        remote: logged_remote(conn, outcome.detected_remote).0,
        route_name: &outcome.route_name,
        tls: conn.tls.get().map(|t| &**t),
        requested_server_name: conn.requested_server_name.as_deref(),
        health_check: outcome.health_check,
        log_type: AccessLogType::DownstreamEnd,
        local: Some(conn.local),
        direct_remote: logged_remote(conn, outcome.detected_remote).1,
        upstream_local: connected.and_then(|c| c.local),
        details: expired.map_or(outcome.details(), |e| e.details()),
        transport_failure: logged.and_then(|l| l.transport_failure.as_deref()),
        trace: span_ids,
        request_id: logged
            .and_then(|l| l.request_id.as_ref())
            .and_then(|v| v.to_str().ok()),
        trailers: trailers.as_ref(),
        upstream_remote: connected.map(|c| c.remote),
        upstream_hostname: logged.and_then(|l| l.upstream_hostname.as_deref()),
        attempts: logged.and_then(|l| l.attempts),
        connection_id: Some(conn.id),
        timing,
        virtual_cluster: logged.and_then(|l| l.virtual_cluster.as_deref()),
        service_forced: logged.is_some_and(|l| l.service_forced),
    };
    for l in &cfg.access_logs {
        l.log(&entry, conn.worker);
    }
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

/// The value of a step of [`process`], or, when the step answered the request itself (a
/// refusal, a redirect), that answer returned at once.
macro_rules! step {
    ($step:expr) => {
        match $step {
            ControlFlow::Continue(value) => value,
            ControlFlow::Break(answer) => return answer,
        }
    };
}

/// [`process`], and again for each request a filter makes anew (Envoy's
/// `recreateStream`: a custom response redirect): the stream's outcome starts over but
/// for the filter state it keeps, and the access log tells of the last request.
async fn process_recreating(
    conn: &Rc<ConnInfo>,
    req: Request<ProxyBody>,
    upgrade: Option<DownstreamUpgrade>,
    outcome: &mut Outcome,
    idle: &StreamIdle,
    log: &mut Option<RequestLog>,
    (start, start_wall): (Instant, SystemTime),
) -> Response<ProxyBody> {
    let mut resp = process(conn, req, upgrade, outcome, idle).await;
    while let Some(again) = outcome.custom.as_mut().and_then(|c| c.recreate.take()) {
        if log.is_some() {
            *log = RequestLog::of(&conn.config, &again);
        }
        if let Some(l) = log.as_ref() {
            // As Envoy, the first request is logged as its answer came (nothing sent),
            // with the new request's head (Envoy changes the request in place).
            outcome.set_details("internal_redirect");
            if let Some(logged) = outcome.log.as_mut() {
                logged.rewritten_path = None;
            }
            write_access_logs(
                conn,
                start,
                start_wall,
                l,
                Some(resp.headers()),
                resp.status().as_u16(),
                Some(idle),
                outcome,
                None,
                false,
                0,
            );
        }
        drop(resp);
        // Envoy's recreated stream is a new one on the connection, counted as such.
        let stats = &conn.config.stats;
        stats.downstream_rq_total.inc(conn.worker);
        if again.version() == Version::HTTP_2 {
            stats.downstream_rq_http2_total.inc(conn.worker);
        } else {
            stats.downstream_rq_http1_total.inc(conn.worker);
        }
        let kept = std::mem::take(outcome);
        *outcome = Outcome {
            flags: "-",
            start: kept.start,
            log: kept.log.as_ref().map(|_| Box::default()),
            active_fault: kept.active_fault,
            span: kept.span,
            custom: kept.custom,
            ..Default::default()
        };
        // Boxed: it is rare, and would otherwise double this future's size.
        resp = Box::pin(process(conn, again, None, outcome, idle)).await;
    }
    resp
}

/// The connection manager's request path (Envoy's `ActiveStream::decodeHeaders`): the
/// request's checks and sanitising, its route, the HTTP filters before the router, then
/// whatever answers it (a filter, a redirect, a direct response, the router) with what the
/// route and the filters add to the answer. Each step is a function of its own, in order;
/// only the filters and the router wait.
pub(crate) async fn process(
    conn: &Rc<ConnInfo>,
    mut req: Request<ProxyBody>,
    mut downstream_upgrade: Option<DownstreamUpgrade>,
    outcome: &mut Outcome,
    idle: &StreamIdle,
) -> Response<ProxyBody> {
    // The version and framing (HTTP/1.0 without `accept_http_10`, Content-Length with
    // Transfer-Encoding and the like) were checked by the codec: `downstream_h1` for
    // HTTP/1, hyper's for HTTP/2.
    step!(check_header_fields(conn, &mut req));
    // The `http_connection_manager_decode_headers` load shed point, then the overload
    // manager's `stop_accepting_requests`, before anything else is done for the request,
    // as in Envoy.
    if load_shed::should_shed(Point::HcmDecodeHeaders, conn.worker)
        || actions::applies(actions::states().stop_accepting_requests)
    {
        conn.config
            .stats
            .downstream_rq_overload_close
            .inc(conn.worker);
        outcome.ended("OL", "overload");
        return local_reply(StatusCode::SERVICE_UNAVAILABLE, "envoy overloaded");
    }
    if let Some(early) = &conn.config.early_header_mutations {
        let protocol = protocol_name(req.version());
        early.apply(req.headers_mut(), conn.remote, conn.local, protocol);
    }
    // Host / authority, borrowed from cheap clones of the request's own (shared) bytes, as
    // the request itself moves on upstream.
    let uri_authority = req.uri().authority().cloned();
    let host_header = match &uri_authority {
        Some(_) => None,
        None => req.headers().get(header::HOST).cloned(),
    };
    let authority = step!(routed_authority(
        conn,
        req.version(),
        uri_authority.as_ref(),
        host_header.as_ref(),
    ));
    let method = req.method().clone();
    let path_and_query = req.uri().path_and_query().cloned();
    let path = step!(routed_path(conn, &method, path_and_query.as_ref()));
    let internal = step!(forwarding_headers(conn, req.headers_mut(), outcome));
    request_id(&conn.config, internal, req.headers_mut(), outcome);
    let table = step!(route_table(conn, &method, &mut req, internal, outcome));
    // The authority and path a Lua script's changes route the request by (declared before
    // what borrows them).
    let lua_route: (String, String);
    let scheme = Pseudo::scheme_of(req.uri());
    let vh = table.find_vhost(&authority);
    // `require_tls` comes before the routes, as in Envoy: even a request no route takes
    // is sent to `https`.
    if vh.is_some_and(|vh| vh.require_tls.redirects(req.headers())) {
        return tls_redirect(&authority, &path);
    }
    // A request no route takes still goes through the filters, as in Envoy (a health
    // check, a fault or a rate limit may answer it), with no per-route settings.
    let mut routed = vh.and_then(|vh| {
        // What header matchers see of `:method`, `:path`, `:authority` and `:scheme` (built
        // where used: held across the request's awaits it would take room in its future).
        let pseudo = Pseudo::request(&method, &path, &authority, scheme);
        Some((
            vh,
            vh.find_route(&path, req.headers(), &pseudo, fastrand::u64(..))?,
        ))
    });
    if let Some((vh, route)) = routed {
        if !conn.config.access_logs.is_empty() {
            outcome.route_name = route.name.clone();
            // Envoy knows the route's cluster from here on: a filter's answer is logged
            // with it too.
            if let Action::Route(action) = &route.action {
                let name = match &action.cluster {
                    ClusterSpec::Single(c) => Some(c.as_str()),
                    ClusterSpec::Header(h) => req.headers().get(h).and_then(|v| v.to_str().ok()),
                    ClusterSpec::Weighted { .. } => None,
                };
                outcome.upstream_cluster = name
                    .and_then(|n| ThreadLocalClusterManager::with(|tlcm| tlcm.get(n)))
                    .map(|c| c.name.clone());
                // As Envoy, the virtual cluster is known with the route (a route to a
                // cluster only).
                if let Some(l) = outcome.log.as_mut() {
                    let pseudo = Pseudo::request(&method, &path, &authority, scheme);
                    l.virtual_cluster = vh.virtual_cluster_name(req.headers(), &pseudo).cloned();
                }
            }
        }
    }
    if conn.config.log_on_new_request {
        log_request_start(conn, &req, outcome);
    }
    if let Some(tracing) = &conn.config.tracing {
        trace_request(
            tracing,
            conn,
            &mut req,
            routed.map(|(_, r)| r),
            &path,
            &authority,
            scheme,
            outcome,
        );
    }
    let mut s = Stream {
        conn,
        method: &method,
        path: &path,
        authority: &authority,
        scheme,
        protocol: protocol_name(req.version()),
        routed,
        table: &table,
        levels: match routed {
            Some((vh, route)) => [&route.filters, &vh.filters, &table.filters],
            None => [&per_filter::NONE; 3],
        },
        to_cluster: routed.is_some_and(|(_, route)| matches!(route.action, Action::Route(_))),
        start: outcome.start,
        detected_remote: outcome.detected_remote,
    };
    let upgrade = upgrade_request(&s, &mut req);
    let mut marks = FilterMarks {
        cors: None,
        rate_limit: None,
        health_mark: None,
        compress: None,
        decompress: Vec::new(),
        grpc: !conn.config.compressors.is_empty() && is_grpc(req.headers()),
        services: None,
        grpc_web: None,
        grpc_stats: None,
        bridge: None,
        transcode: None,
        responses: Vec::new(),
        custom: None,
        paced: Vec::new(),
        lua_dynamic: None,
    };
    // Without filters before the router, no filter pass is made (its future would be set
    // up and dropped for nothing on every request).
    let filter_reply = match conn.config.filters.is_empty() {
        true => None,
        false => step!(run_filters(&s, &mut req, &mut marks, outcome).await),
    };
    // A Lua script that changed the request's headers clears the route cache, as Envoy's
    // (`clear_route_cache`, true by default): the request is routed again by its new
    // authority, path and headers.
    if let Some(rerouted) = marks.services.as_mut().and_then(|m| m.lua_reroute.take()) {
        lua_route = *rerouted;
        {
            let (authority, path) = &lua_route;
            s.authority = authority;
            s.path = path;
            let pseudo = Pseudo::request(&method, path, authority, scheme);
            routed = table.find_vhost(authority).and_then(|vh| {
                Some((
                    vh,
                    vh.find_route(path, req.headers(), &pseudo, fastrand::u64(..))?,
                ))
            });
            s.routed = routed;
            s.levels = match routed {
                Some((vh, route)) => [&route.filters, &vh.filters, &table.filters],
                None => [&per_filter::NONE; 3],
            };
            s.to_cluster =
                routed.is_some_and(|(_, route)| matches!(route.action, Action::Route(_)));
        }
    }
    let responses = (!marks.responses.is_empty()).then(|| std::mem::take(&mut marks.responses));
    // The gRPC-Web filter's response pass runs last (it is first in chains that have it)
    // and may wait for a body: it is taken out of the marks, which apply at once.
    let grpc_web = marks.grpc_web.take();
    let grpc_stats = marks.grpc_stats.take();
    let bridge = marks.bridge.take();
    let transcode = marks.transcode.take();
    // A filter's answer gets the route's response headers only on a route to a cluster
    // (Envoy's route entry; measured).
    let route_headers = routed.filter(|_| filter_reply.is_none() || s.to_cluster);
    if let Some(f) = marks.custom {
        keep_for_redirect(&s, f, &req, outcome);
    }
    let Some((vh, route)) = routed else {
        let mut resp = no_route_answer(&s, filter_reply, outcome);
        if let Some(stages) = responses {
            response_passes(&s, stages, &mut resp, outcome).await;
        }
        request_complete(outcome, idle);
        marks.apply(&s, &mut resp, outcome);
        if recreating(outcome) {
            return resp;
        }
        if let Some(gw) = grpc_web {
            grpc_web_response(gw, &mut resp, conn.worker, outcome).await;
        }
        return resp;
    };
    let mut resp = match (filter_reply, &route.action) {
        (Some(reply), _) => *reply,
        // The refusal still gets the route's response headers, as Envoy's does.
        (None, _) if upgrade == UpgradeRequest::Refused => refuse_upgrade(conn, &req),
        (None, Action::Direct { status, body }) => {
            outcome.set_details("direct_response");
            direct_response(&s, *status, body.as_ref())
        }
        (None, Action::Redirect(rd)) => {
            outcome.set_details("direct_response");
            route_redirect(&s, &req, rd, route)
        }
        (None, Action::Route(action)) => {
            let upgrading = upgrade != UpgradeRequest::None;
            // The headers go upstream; a copy is kept only for what reads them later.
            let req_headers_for_cx =
                (upgrading || table.reads_request_headers).then(|| req.headers().clone());
            let fcx = s.format_context(None, req_headers_for_cx.as_ref());
            // The downstream's upgrade is taken (and dropped) even when not upgrading.
            let on_upgrade = upgrading.then_some(()).and(downstream_upgrade.take());
            if let Some(t) = action.idle_timeout {
                idle.set_route_timeout(t);
            }
            let path_changed = marks.services.as_ref().is_some_and(|m| m.path_changed);
            let path = match path_changed {
                true => Cow::Owned(
                    req.uri()
                        .path_and_query()
                        .map_or_else(|| path.to_string(), |p| p.as_str().to_owned()),
                ),
                false => Cow::Borrowed(&*path),
            };
            forward(
                conn,
                req,
                s.authority,
                &path,
                &table,
                vh,
                route,
                action,
                &fcx,
                on_upgrade,
                outcome,
                idle,
            )
            .await
        }
    };
    // Response header mutations: route, virtual host, route configuration.
    let fcx = s.format_context(outcome.upstream_host, None);
    if let Some((vh, route)) = route_headers {
        route.response_headers.apply(resp.headers_mut(), &fcx);
        vh.response_headers.apply(resp.headers_mut(), &fcx);
        table.response_headers.apply(resp.headers_mut(), &fcx);
    }
    if let Some(stages) = responses {
        response_passes(&s, stages, &mut resp, outcome).await;
    }
    if let Some(services) = &marks.services {
        for session in services.sessions.iter().rev() {
            session.on_response(outcome.upstream_host, &mut resp);
        }
    }
    request_complete(outcome, idle);
    marks.apply(&s, &mut resp, outcome);
    if recreating(outcome) {
        return resp;
    }
    // As chains put the gRPC statistics filter after the gRPC-Web one (Istio's order), it
    // sees the response as gRPC, before the gRPC-Web filter's pass.
    if let Some(gs) = grpc_stats {
        grpc_stats_response(*gs, &mut resp, conn.worker);
    }
    // The bridge is first in the chains that have it: its pass sees what the others made.
    // A local reply keeps the gRPC form it gets on its way out.
    if let Some(b) = bridge.filter(|_| resp.extensions().get::<LocalReply>().is_none()) {
        // Boxed: its wait would otherwise take room in every request's future.
        Box::pin(b.on_response(&mut resp)).await;
    }
    // The transcoder's answer is a gRPC one made JSON; a local reply is not gRPC.
    if let Some(t) = transcode.filter(|_| resp.extensions().get::<LocalReply>().is_none()) {
        // Boxed: its wait would otherwise take room in every request's future.
        Box::pin(t.on_response(&mut resp, conn.buffer_limit)).await;
    }
    if let Some(gw) = grpc_web {
        grpc_web_response(gw, &mut resp, conn.worker, outcome).await;
    }
    resp
}

/// The gRPC statistics filter's response pass. A local reply is seen as it goes out to a
/// gRPC request (in gRPC's form, by [`finish_downstream_response`]), as Envoy's filters see
/// its local replies.
#[cold]
fn grpc_stats_response(gs: GrpcStatsRequest, resp: &mut Response<ProxyBody>, worker: usize) {
    let local = resp.extensions().get::<LocalReply>().map(|l| {
        l.0.unwrap_or_else(|| crate::protocol::grpc::http_to_grpc_status(resp.status().as_u16()))
    });
    gs.on_response(resp, local, worker);
}

/// The gRPC-Web filter's response pass (boxed: its wait would otherwise take room in
/// every request's future).
async fn grpc_web_response(
    gw: Box<GrpcWebRequest>,
    resp: &mut Response<ProxyBody>,
    worker: usize,
    outcome: &mut Outcome,
) {
    if let Some(details) = Box::pin(gw.on_response(resp, worker)).await {
        outcome.set_details(details);
    }
}

/// The cluster a request's route sends it to, when this worker has it (Envoy's
/// `clusterInfo()` for filters): a weighted route's is not known before the router picks.
fn route_cluster(
    s: &Stream<'_>,
    headers: &http::HeaderMap,
) -> Option<Arc<crate::upstream::ClusterInfo>> {
    let name = routed_cluster(s, headers)?;
    ThreadLocalClusterManager::with(|tlcm| tlcm.get(name))
}

/// What the steps after routing share about a request: its routing facts, borrowed from
/// [`process`]'s locals (a few words, in place of long parameter lists).
struct Stream<'a> {
    conn: &'a Rc<ConnInfo>,
    method: &'a Method,
    /// The path as routed (unescaped and normalised as configured), with its query.
    path: &'a str,
    /// The host as routed (its trailing dot and port stripped as configured).
    authority: &'a str,
    /// The request's `:scheme`.
    scheme: &'static str,
    /// `HTTP/1.1`, `HTTP/2`, for header formatters.
    protocol: &'static str,
    /// The virtual host and route that took the request, if one did.
    routed: Option<(&'a VirtualHost, &'a Route)>,
    /// The route table the request was routed by.
    table: &'a RouteTable,
    /// The per-filter settings that apply, most specific first: the route's, its virtual
    /// host's, the route configuration's (none without a route).
    levels: [&'a FilterConfigs; 3],
    /// Whether the route sends the request to a cluster (not a redirect or a direct
    /// response).
    to_cluster: bool,
    /// When the request started (for `%START_TIME%` in header values).
    start: Option<SystemTime>,
    /// The client's address the `original_ip_detection_extensions` found (else the peer
    /// is).
    detected_remote: Option<std::net::IpAddr>,
}

impl<'a> Stream<'a> {
    /// What header matchers see of `:method`, `:path`, `:authority` and `:scheme`.
    #[inline(always)]
    fn pseudo(&self) -> Pseudo<'a> {
        Pseudo::request(self.method, self.path, self.authority, self.scheme)
    }

    /// What header formatters see of the request.
    #[inline(always)]
    fn format_context<'c>(
        &self,
        upstream: Option<std::net::SocketAddr>,
        request: Option<&'c http::HeaderMap>,
    ) -> FormatContext<'c> {
        FormatContext {
            remote: Some(match self.detected_remote {
                Some(ip) => std::net::SocketAddr::new(ip, 0),
                None => self.conn.remote,
            }),
            local: Some(self.conn.local),
            protocol: self.protocol,
            upstream,
            request,
            start: self.start,
        }
    }
}

/// What the filters before the router leave on whatever answers the request: rate limit
/// headers, the health check filter's marks, CORS headers, and the compressor's pass.
struct FilterMarks<'a> {
    cors: Option<crate::filters::http::cors::AllowedHeaders>,
    rate_limit: Option<crate::filters::http::local_ratelimit::Remaining>,
    health_mark: Option<(&'a HealthCheckFilter, bool, bool)>,
    /// The last compressor filter the request passed (which holds the ones before it).
    /// Boxed, as it is rare: held across the request's awaits, it is copied with them.
    compress: Option<Box<CompressorRequest<'a>>>,
    /// The decompressor filters the request passed, in chain order (empty, unallocated,
    /// without them).
    decompress: Vec<&'a DecompressorFilter>,
    /// A gRPC request, when the chain has a compressor (which sees a local reply to one in
    /// gRPC's form).
    grpc: bool,
    /// What services the filters asked (authorization, rate limits) put on the answer,
    /// and whether a filter changed the path; boxed, as it is rare: held across the
    /// request's awaits, it is copied with them.
    services: Option<Box<ServiceMarks>>,
    /// A gRPC-Web request's response pass, when the chain's gRPC-Web filter took it.
    grpc_web: Option<Box<GrpcWebRequest>>,
    /// A gRPC request's response pass, when the chain's gRPC statistics filter counts it.
    grpc_stats: Option<Box<GrpcStatsRequest>>,
    /// An HTTP/1 gRPC request's response pass, when the chain's bridge took it.
    bridge: Option<BridgeResponse>,
    /// A transcoded request's response pass (its gRPC answer made JSON).
    transcode: Option<Box<TranscodeResponse>>,
    /// The response passes that may wait (a Lua script's, an external processor's), in
    /// chain order (empty, unallocated, without them).
    responses: Vec<ResponseStage>,
    /// The custom response filter the request passed, if the chain has one.
    custom: Option<&'a CustomResponseFilter>,
    /// The bandwidth limit filters' response passes and the fault filters' response rate
    /// limits, in chain order (empty, unallocated, without them).
    paced: Vec<Paced>,
    /// The stream's dynamic metadata, once a Lua filter ran (its scripts share it).
    lua_dynamic: Option<crate::filters::http::lua::metadata::DynamicMetadata>,
}

/// A filter's pacing of the response body.
enum Paced {
    Bandwidth(BandwidthResponse),
    Fault(FaultResponseLimit),
}

/// What services a request's filters asked leave on it.
#[derive(Default)]
struct ServiceMarks {
    /// What ext_authz services that allowed the request (and OAuth2 refreshes) put on its answer, in chain
    /// order.
    authz: Vec<ResponseChanges>,
    /// Fields rate limit services that let the request go put on its answer.
    ratelimit_fields: Vec<(HeaderName, HeaderValue)>,
    /// A filter changed the request's path (ext_authz's query parameters, the gRPC
    /// bridge's query): the router sends the request's own rather than the routed one.
    path_changed: bool,
    /// A Lua script changed the request's headers: the authority and path it is routed
    /// again by.
    lua_reroute: Option<Box<(String, String)>>,
    /// The stateful sessions the request's filters read, in chain order: they name the
    /// host that answered on the response.
    sessions: Vec<Session>,
}

impl ServiceMarks {
    fn apply(&self, resp: &mut Response<ProxyBody>) {
        for changes in self.authz.iter().rev() {
            changes.apply(resp.headers_mut());
        }
        for (k, v) in &self.ratelimit_fields {
            resp.headers_mut().append(k.clone(), v.clone());
        }
    }
}

impl FilterMarks<'_> {
    /// Marks the answer, then compresses it, as the filters' encode steps.
    #[inline(always)]
    fn apply(mut self, s: &Stream<'_>, resp: &mut Response<ProxyBody>, outcome: &mut Outcome) {
        // Its answer replaces the response as Envoy's local reply once the response has
        // started: the other filters' marks go on it.
        if let Some(f) = self.custom {
            custom_response(s, f, resp, outcome);
        }
        mark_response(
            resp,
            self.rate_limit.take(),
            self.health_mark.take(),
            self.cors.take(),
        );
        // Response passes run from the last filter in the chain to the first.
        if let Some(services) = &self.services {
            services.apply(resp);
        }
        for f in self.decompress.iter().rev() {
            f.on_response(resp, s.conn.worker);
        }
        self.compress(s, resp);
        // Bodies are paced as they leave, after the other filters made them (as if the
        // bandwidth limit and fault filters were first in the chain, where they usually
        // are).
        for p in std::mem::take(&mut self.paced).into_iter().rev() {
            match p {
                Paced::Bandwidth(b) => b.on_response(resp, s.conn.buffer_limit, s.conn.worker),
                Paced::Fault(f) => f.on_response(resp, s.conn.buffer_limit),
            }
        }
    }

    /// The compressor's response pass (see [`compress_response`]).
    #[inline(always)]
    fn compress(&self, s: &Stream<'_>, resp: &mut Response<ProxyBody>) {
        let cfg = &s.conn.config;
        compress_response(
            cfg,
            s.levels,
            self.compress.as_deref(),
            self.grpc,
            resp,
            s.conn.worker,
        );
    }
}

/// The custom response filter's pass (out of line: it is rare).
#[cold]
#[inline(never)]
fn custom_response(
    s: &Stream<'_>,
    f: &CustomResponseFilter,
    resp: &mut Response<ProxyBody>,
    outcome: &mut Outcome,
) {
    let table = s.table;
    let scheme = s.scheme;
    // Whether a route takes the request a redirect makes (Envoy's `route()` once the
    // route cache is cleared).
    let routes = |host: &str, path: &str, headers: &http::HeaderMap| {
        let pseudo = Pseudo::request(&Method::GET, path, host, scheme);
        table
            .find_vhost(host)
            .and_then(|vh| vh.find_route(path, headers, &pseudo, fastrand::u64(..)))
            .is_some()
    };
    // A `body_format` tells of the request as the access logs would so far.
    let flags = outcome.flags;
    let details = outcome.details().to_string();
    let upstream_host = outcome.upstream_host;
    let upstream_cluster = outcome.upstream_cluster.clone();
    let route_name = outcome.route_name.clone();
    let health_check = outcome.health_check;
    let render = |format: &crate::access_log::BodyFormat,
                  head: Option<&RequestHead>,
                  response: &http::HeaderMap,
                  status: StatusCode| {
        let empty = http::HeaderMap::new();
        let request = head.map(|h| &h.headers);
        // The path as the router sent it (Envoy's router rewrites the request in place).
        let path = head.map_or(s.path, |h| h.path.as_str());
        let (remote, direct_remote) = logged_remote(s.conn, s.detected_remote);
        let start = s.start.unwrap_or_else(SystemTime::now);
        let entry = LogEntry {
            start,
            method: s.method.as_str(),
            path,
            original_path: (path != s.path).then_some(s.path),
            authority: s.authority,
            protocol: s.protocol,
            request: request.unwrap_or(&empty),
            response: Some(response),
            status: status.as_u16(),
            flags,
            bytes_received: 0,
            bytes_sent: 0,
            duration: start.elapsed().unwrap_or_default(),
            upstream_host,
            upstream_cluster: upstream_cluster.as_deref(),
            remote,
            route_name: &route_name,
            tls: s.conn.tls.get().map(|t| &**t),
            requested_server_name: s.conn.requested_server_name.as_deref(),
            health_check,
            log_type: AccessLogType::NotSet,
            local: Some(s.conn.local),
            direct_remote,
            upstream_local: None,
            details: &details,
            transport_failure: None,
            trace: None,
            request_id: request
                .and_then(|h| h.get(&X_REQUEST_ID))
                .and_then(|v| v.to_str().ok()),
            trailers: None,
            upstream_remote: upstream_host,
            upstream_hostname: None,
            attempts: None,
            connection_id: Some(s.conn.id),
            timing: crate::access_log::Timing::default(),
            virtual_cluster: None,
            service_forced: false,
        };
        format.render(&entry)
    };
    let state = outcome.custom.as_deref_mut();
    let pass = f.on_response(
        s.levels,
        resp,
        &s.format_context(None, None),
        state,
        &Hooks {
            routes: &routes,
            render: &render,
            worker: s.conn.worker,
        },
    );
    match pass {
        // Envoy's policy sends its local reply with empty details (the flags stay).
        Pass::Replaced => {
            outcome.set_details(crate::access_log::CLEARED_DETAILS);
            // Envoy's local reply `400` (a messaging error to it) ends an HTTP/1
            // connection.
            if resp.status() == StatusCode::BAD_REQUEST && s.protocol != "HTTP/2" {
                s.conn.closing.set(true);
            }
        }
        Pass::NoRoute => outcome.upstream_cluster = None,
        // The new request's route is the stream's from here on (Envoy's cleared route
        // cache): its cluster is logged.
        Pass::Recreate if !s.conn.config.access_logs.is_empty() => {
            let cluster = outcome
                .custom
                .as_ref()
                .and_then(|c| c.recreate.as_ref())
                .and_then(|req| new_route_cluster(s, req));
            outcome.upstream_cluster = cluster;
        }
        Pass::Untouched | Pass::Redirected | Pass::Recreate => {}
    }
}

/// The cluster (one this worker has) of the route that takes a request a custom
/// response redirect made, when it has a single one.
fn new_route_cluster(s: &Stream<'_>, req: &Request<ProxyBody>) -> Option<String> {
    let host = req.headers().get(header::HOST)?.to_str().ok()?;
    let path = req.uri().path_and_query()?.as_str();
    let pseudo = Pseudo::request(&Method::GET, path, host, s.scheme);
    let route =
        s.table
            .find_vhost(host)?
            .find_route(path, req.headers(), &pseudo, fastrand::u64(..))?;
    match &route.action {
        Action::Route(a) => match &a.cluster {
            ClusterSpec::Single(c) => {
                ThreadLocalClusterManager::with(|t| t.get(c)).map(|c| c.name.clone())
            }
            _ => None,
        },
        _ => None,
    }
}

/// Keeps the request for a custom response redirect policy that may make it again
/// (not for a request a policy made: it is not redirected twice). The router replaces
/// it with what it sends upstream.
#[cold]
#[inline(never)]
fn keep_for_redirect(
    s: &Stream<'_>,
    f: &CustomResponseFilter,
    req: &Request<ProxyBody>,
    outcome: &mut Outcome,
) {
    if outcome
        .custom
        .as_ref()
        .is_some_and(|c| c.redirected.is_some())
        || !f.may_redirect(s.levels)
    {
        return;
    }
    let state = outcome.custom.get_or_insert_default();
    state.head = Some(RequestHead {
        version: req.version(),
        headers: req.headers().clone(),
        authority: s.authority.to_string(),
        path: s.path.to_string(),
        scheme: s.scheme,
    });
}

/// Notes whether the request had all arrived, for a custom response redirect.
#[inline(always)]
fn request_complete(outcome: &mut Outcome, idle: &StreamIdle) {
    if let Some(c) = outcome.custom.as_mut() {
        c.complete = idle.request_complete();
    }
}

/// Whether a filter made the request anew (its answer then goes nowhere).
#[inline(always)]
fn recreating(outcome: &Outcome) -> bool {
    outcome
        .custom
        .as_ref()
        .is_some_and(|c| c.recreate.is_some())
}

/// The request's header count and size (`max_headers_count`, `max_request_headers_kb`:
/// `431`) and names with underscores (`headers_with_underscores_action`: `400`, or
/// dropped). A refused request closes its connection.
#[inline(always)]
fn check_header_fields(
    conn: &ConnInfo,
    req: &mut Request<ProxyBody>,
) -> ControlFlow<Response<ProxyBody>> {
    let cfg = &conn.config;
    // Envoy counts an HTTP/2 request's pseudo-headers (:method, and :path, :scheme and
    // :authority when present) as fields; an HTTP/1 request's `host` is a field already.
    let pseudo = if req.version() == Version::HTTP_2 {
        let uri = req.uri();
        1 + usize::from(uri.path_and_query().is_some())
            + usize::from(uri.scheme().is_some())
            + usize::from(uri.authority().is_some())
    } else {
        0
    };
    if req.headers().len() + pseudo > cfg.max_headers_count
        || headers_size(req) > cfg.max_request_headers_kb as usize * 1024
    {
        cfg.stats.downstream_rq_too_large.inc(conn.worker);
        conn.closing.set(true);
        return ControlFlow::Break(local_reply(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, ""));
    }
    match cfg.underscores {
        UnderscoreAction::Allow => {}
        UnderscoreAction::Reject => {
            if req.headers().keys().any(|k| k.as_str().contains('_')) {
                conn.closing.set(true);
                return ControlFlow::Break(local_reply(StatusCode::BAD_REQUEST, ""));
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
    ControlFlow::Continue(())
}

/// The host the request is routed by: its URI's authority, else its `host` (an HTTP/1.0
/// request without one gets `default_host_for_http_10`; any other is refused, `400`),
/// then `strip_trailing_host_dot` and the port stripped, as Envoy's connection manager.
#[inline(always)]
fn routed_authority<'r>(
    conn: &ConnInfo,
    version: Version,
    uri_authority: Option<&'r http::uri::Authority>,
    host_header: Option<&'r HeaderValue>,
) -> ControlFlow<Response<ProxyBody>, Cow<'r, str>> {
    let cfg = &conn.config;
    let found = match (uri_authority, host_header) {
        (Some(a), _) => Some(a.as_str()),
        (None, Some(h)) => h.to_str().ok(),
        (None, None) => None,
    };
    let mut authority: Cow<'_, str> = match found {
        Some(a) => Cow::Borrowed(a),
        None if version == Version::HTTP_10 => {
            Cow::Owned(cfg.default_host_for_http_10.clone().unwrap_or_default())
        }
        None => {
            conn.closing.set(true);
            // Envoy's reply has no body.
            return ControlFlow::Break(local_reply(StatusCode::BAD_REQUEST, ""));
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
    ControlFlow::Continue(authority)
}

/// The path the request is routed by: it must be absolute (or `*` for `OPTIONS`), then
/// escaped slashes are handled (`path_with_escaped_slashes_action`) and the path
/// normalised (`normalize_path`, `merge_slashes`), as Envoy's connection manager: a path
/// refused is a `400` that closes the connection, an unescaped one may be a `307` to it.
#[inline(always)]
fn routed_path<'r>(
    conn: &ConnInfo,
    method: &Method,
    path_and_query: Option<&'r http::uri::PathAndQuery>,
) -> ControlFlow<Response<ProxyBody>, Cow<'r, str>> {
    let cfg = &conn.config;
    let mut path: Cow<'_, str> =
        path_and_query.map_or(Cow::Borrowed("/"), |p| Cow::Borrowed(p.as_str()));
    let asterisk = method == Method::OPTIONS && path == "*";
    if !path.starts_with('/') && !asterisk {
        conn.closing.set(true);
        return ControlFlow::Break(local_reply(StatusCode::BAD_REQUEST, ""));
    }
    // Escaped slashes first, then normalisation, as Envoy's connection manager.
    let mut redirect_unescaped = false;
    if cfg.escaped_slashes != EscapedSlashes::Keep {
        if let Some(p) = unescape_slashes(&path) {
            match cfg.escaped_slashes {
                EscapedSlashes::Reject => {
                    conn.closing.set(true);
                    return ControlFlow::Break(local_reply(StatusCode::BAD_REQUEST, ""));
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
                return ControlFlow::Break(local_reply(StatusCode::BAD_REQUEST, ""));
            }
        }
    }
    if redirect_unescaped {
        let mut r = local_reply(StatusCode::TEMPORARY_REDIRECT, "");
        if let Ok(v) = HeaderValue::from_str(&path) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        return ControlFlow::Break(r);
    }
    ControlFlow::Continue(path)
}

/// The forwarding headers: whether the request is internal, the control headers an
/// external one may not set, `x-forwarded-for`, `x-envoy-external-address`,
/// `x-forwarded-proto` and `x-envoy-internal`. An internal request keeps its controls and
/// request id; without `internal_address_config` every request is external (Envoy 1.40's
/// default). With `original_ip_detection_extensions` they settle the client's address
/// (kept in the outcome) and its trust, or refuse the request. Returns whether the
/// request is internal.
#[inline(always)]
fn forwarding_headers(
    conn: &ConnInfo,
    headers: &mut http::HeaderMap,
    outcome: &mut Outcome,
) -> ControlFlow<Response<ProxyBody>, bool> {
    let cfg = &conn.config;
    let remote_ip = conn.remote.ip();
    // Constants: `from_static` checks its bytes when called at run time.
    const HTTPS: HeaderValue = HeaderValue::from_static("https");
    const HTTP: HeaderValue = HeaderValue::from_static("http");
    const TRUE: HeaderValue = HeaderValue::from_static("true");
    let scheme = if conn.secure { HTTPS } else { HTTP };
    let internal = match &cfg.original_ip {
        None => cfg.internal_addresses.is_internal(
            remote_ip,
            headers,
            cfg.use_remote_address,
            cfg.xff_num_trusted_hops,
        ),
        Some(detection) => match detection.detect(remote_ip, cfg.local_address, headers) {
            Ok(found) => {
                outcome.detected_remote = found.address;
                found.trusted
                    && found
                        .address
                        .is_some_and(|ip| cfg.internal_addresses.contains(ip))
            }
            Err(status) => {
                outcome.ended("-", "rejecting_because_detection_failed");
                return ControlFlow::Break(local_reply(status, ""));
            }
        },
    };
    cfg.client_cert.apply(conn.tls.get().map(|t| &**t), headers);
    if !internal {
        crate::http::conn_manager::headers::strip_external_control_headers(
            headers,
            cfg.use_remote_address,
        );
    }
    if cfg.use_remote_address {
        if !cfg.skip_xff_append {
            crate::http::conn_manager::xff::append_peer(headers, remote_ip, cfg.local_address);
        }
        if !internal {
            if let Ok(v) = HeaderValue::from_str(&remote_ip.to_string()) {
                headers.insert(X_ENVOY_EXTERNAL_ADDRESS.clone(), v);
            }
        }
        headers.insert(X_FORWARDED_PROTO.clone(), scheme);
    } else if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), scheme);
    }
    if internal {
        headers.insert(X_ENVOY_INTERNAL.clone(), TRUE);
    }
    ControlFlow::Continue(internal)
}

/// The client's address and the peer's for the access log: with an address the original
/// IP detection extensions found, that one (port 0, as Envoy logs it) and the peer;
/// otherwise the connection's.
fn logged_remote(
    conn: &ConnInfo,
    detected: Option<std::net::IpAddr>,
) -> (std::net::SocketAddr, Option<std::net::SocketAddr>) {
    match detected {
        Some(ip) => (
            std::net::SocketAddr::new(ip, 0),
            Some(conn.direct_remote.unwrap_or(conn.remote)),
        ),
        None => (conn.remote, conn.direct_remote),
    }
}

/// Tracing (the connection manager's `tracing`): the decision, marked in the request id;
/// the span, joined to the request's trace context and sending the upstream its own; the
/// span's name — an `x-envoy-decorator-operation` the request brings, else the route's
/// decorator, else the tracer's default (the authority for Zipkin) — as an Envoy ingress
/// does.
#[allow(clippy::too_many_arguments)]
fn trace_request(
    tracing: &crate::tracers::HttpTracing,
    conn: &ConnInfo,
    req: &mut Request<ProxyBody>,
    route: Option<&crate::http::route::Route>,
    path: &str,
    authority: &str,
    scheme: &str,
    outcome: &mut Outcome,
) {
    let reason = tracing.decide(req.headers_mut(), conn.worker);
    if let Some(l) = outcome.log.as_mut() {
        l.service_forced = reason == crate::tracers::Reason::ServiceForced;
    }
    let method = req.method().clone();
    let start = crate::tracers::SpanStart {
        scheme,
        authority,
        path,
        method: method.as_str(),
        protocol: protocol_name(req.version()),
        peer: conn.remote.ip(),
    };
    let span = tracing.start_span(reason, req.headers_mut(), &start);
    let decorator = route
        .and_then(|r| r.decorator.as_deref())
        .filter(|(op, _)| !op.is_empty());
    if tracing.egress() {
        // Egress: the decorator's operation goes upstream, for the next proxy's server
        // span; the span is named by it, else by the authority.
        if let Some((op, true)) = decorator {
            if let Ok(v) = HeaderValue::from_str(op) {
                req.headers_mut().insert("x-envoy-decorator-operation", v);
            }
        }
        let name = decorator.map_or_else(
            || tracing.default_span_name(authority),
            |(op, _)| op.clone(),
        );
        outcome.span = Some(Box::new((span, name)));
        return;
    }
    let requested = req
        .headers_mut()
        .remove("x-envoy-decorator-operation")
        .and_then(|v| v.to_str().ok().map(str::to_string))
        .filter(|v| !v.is_empty());
    let name = match (&requested, decorator) {
        (Some(op), _) => op.clone(),
        (None, Some((op, _))) => op.clone(),
        (None, None) => tracing.default_span_name(authority),
    };
    if requested.is_none() {
        outcome.decorator_operation = decorator
            .filter(|(_, propagate)| *propagate)
            .map(|(op, _)| op.as_str().into());
    }
    outcome.span = Some(Box::new((span, name)));
}

/// `x-request-id` (generated, or regenerated for an external request unless
/// `preserve_external_request_id`), kept for the response when it echoes it
/// (`always_set_request_id_in_response`, an internal request's `x-envoy-force-trace`);
/// then `via`.
#[inline(always)]
fn request_id(
    cfg: &HcmConfig,
    internal: bool,
    headers: &mut http::HeaderMap,
    outcome: &mut Outcome,
) {
    if cfg.generate_request_id {
        let regenerate = cfg.use_remote_address && !internal && !cfg.preserve_external_request_id;
        if regenerate || !headers.contains_key(&X_REQUEST_ID) {
            headers.insert(
                X_REQUEST_ID.clone(),
                crate::http::conn_manager::headers::uuid4_value(),
            );
        }
    }
    if !cfg.access_logs.is_empty() {
        if let Some(l) = outcome.log.as_mut() {
            l.request_id = headers.get(&X_REQUEST_ID).cloned();
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
}

/// The route table the request is routed by (inline, or the RDS one, `404` while none has
/// arrived); a CONNECT request is refused (`404`). An internal request is marked for the
/// router, which obeys its controls; an external one loses the `internal_only_headers`
/// (before routing, as Envoy).
#[inline(always)]
fn route_table(
    conn: &ConnInfo,
    method: &Method,
    req: &mut Request<ProxyBody>,
    internal: bool,
    outcome: &mut Outcome,
) -> ControlFlow<Response<ProxyBody>, Arc<RouteTable>> {
    let cfg = &conn.config;
    let table: Option<Arc<RouteTable>> = match &cfg.routes {
        RouteSource::Static(t) => Some(t.clone()),
        RouteSource::Rds(rds) => crate::http::route::rds::table(&rds.route_config_name),
    };
    let Some(table) = table else {
        cfg.stats.no_route.inc(conn.worker);
        outcome.ended("NR", "route_not_found");
        return ControlFlow::Break(local_reply(StatusCode::NOT_FOUND, ""));
    };
    if method == Method::CONNECT {
        // Only routes with a `connect_matcher` take CONNECT, and Courier has none: Envoy's
        // 404, and the connection (a would-be tunnel) closes.
        cfg.stats.no_route.inc(conn.worker);
        outcome.ended("NR", "route_not_found");
        conn.closing.set(true);
        return ControlFlow::Break(local_reply(StatusCode::NOT_FOUND, ""));
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
    ControlFlow::Continue(table)
}

/// A request's upgrade (websocket), as its route takes it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum UpgradeRequest {
    /// Not an upgrade (or an `h2c` one, served as plain HTTP/1.1).
    None,
    /// An upgrade the route (or the connection manager) enables.
    Allowed,
    /// An upgrade nothing enables: `403`, unless a filter answers first.
    Refused,
}

/// Whether the request asks for an upgrade and whether its route allows it (its own
/// `upgrade_configs`, else the connection manager's; only a route to a cluster does).
/// Envoy does not upgrade to `h2c`: such a request is served as plain HTTP/1.1, without
/// its upgrade headers.
#[inline(always)]
fn upgrade_request(s: &Stream<'_>, req: &mut Request<ProxyBody>) -> UpgradeRequest {
    let cfg = &s.conn.config;
    let mut upgrade = crate::http::codec::handoff::is_upgrade(req.headers())
        .then(|| req.headers().get(header::UPGRADE))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    if upgrade.as_deref() == Some("h2c") {
        crate::http::conn_manager::headers::drop_h2c_upgrade(req.headers_mut());
        upgrade = None;
    }
    let Some(up) = upgrade else {
        return UpgradeRequest::None;
    };
    let allowed = match s.routed.map(|(_, route)| &route.action) {
        Some(Action::Route(a)) => a
            .upgrades
            .iter()
            .find(|(t, _)| *t == up)
            .map_or_else(|| cfg.upgrades.contains(&up), |(_, en)| *en),
        _ => false,
    };
    if allowed {
        UpgradeRequest::Allowed
    } else {
        UpgradeRequest::Refused
    }
}

/// The filters before the router, in the chain's order, each where its route's settings
/// let it run: what they leave on the answer goes in `marks`, and the first filter to
/// answer the request stops the chain (`Continue(Some(answer))`). CORS acts on requests
/// routed to a cluster only (Envoy's sees no route entry for direct responses and
/// redirects): a preflight is answered at once (`Break`), without the route's response
/// headers (Envoy's answer gets none), and its headers go on whatever answers a later
/// filter or the router gives.
async fn run_filters<'a>(
    s: &Stream<'a>,
    req: &mut Request<ProxyBody>,
    marks: &mut FilterMarks<'a>,
    outcome: &mut Outcome,
) -> ControlFlow<Response<ProxyBody>, Option<Box<Response<ProxyBody>>>> {
    let cfg: &'a HcmConfig = &s.conn.config;
    let worker = s.conn.worker;
    for chained in &cfg.filters {
        if !per_filter::runs(s.levels, chained.filter.name(), chained.off_by_default) {
            continue;
        }
        // A match delegate or composite stands for the filters its matcher picks.
        let picked: &'a [HttpFilter] = match &chained.filter {
            HttpFilter::Composite(c) => {
                c.pick(&request_view(s, req.headers()).matching_data(), worker)
            }
            f => std::slice::from_ref(f),
        };
        for filter in picked {
            match filter {
                // Never picked: one inside another is refused.
                HttpFilter::Composite(_) => {}
                HttpFilter::Cors(f) if s.to_cluster => {
                    match f.on_request(s.levels, s.method, req.headers(), worker) {
                        CorsRequest::Preflight(r) => {
                            return ControlFlow::Break(preflight(s, marks, r))
                        }
                        CorsRequest::Allowed(h) => marks.cors = Some(h),
                        CorsRequest::Pass => {}
                    }
                }
                HttpFilter::Cors(_) => {}
                HttpFilter::HealthCheck(f) => {
                    let failed = crate::worker::health_failed();
                    match f.on_request(req.headers(), &s.pseudo(), failed, worker) {
                        HealthCheckRequest::Answer(r) => {
                            outcome.health_check = true;
                            outcome.set_details(if r.status().is_success() {
                                "health_check_ok"
                            } else {
                                "health_check_failed"
                            });
                            return ControlFlow::Continue(Some(r));
                        }
                        HealthCheckRequest::PassThrough => {
                            outcome.health_check = true;
                            marks.health_mark = Some((f, true, failed))
                        }
                        HealthCheckRequest::Pass if failed => {
                            marks.health_mark = Some((f, false, true))
                        }
                        HealthCheckRequest::Pass => {}
                    }
                }
                HttpFilter::LocalRateLimit(f) => match local_rate_limit(s, f, req.headers_mut()) {
                    RateLimited::Refuse(r) => {
                        outcome.ended("RL", "local_rate_limited");
                        return ControlFlow::Continue(Some(r));
                    }
                    RateLimited::Pass(None) => {}
                    RateLimited::Pass(Some(r)) => {
                        marks.rate_limit = Some(r.after(marks.rate_limit.take()))
                    }
                },
                HttpFilter::Rbac(f) => {
                    if let Some((r, details)) = rbac(s, f, req.headers()) {
                        outcome.set_details_owned(|| details);
                        return ControlFlow::Continue(Some(r));
                    }
                }
                HttpFilter::Compressor(f) => {
                    let earlier = marks.compress.take();
                    marks.compress = Some(f.on_request(s.levels, req, worker, earlier));
                }
                HttpFilter::CustomResponse(f) => marks.custom = Some(f),
                HttpFilter::BandwidthLimit(f) => {
                    let paced = f.on_request(s.levels, req, s.conn.buffer_limit, worker);
                    marks.paced.push(Paced::Bandwidth(paced));
                }
                HttpFilter::Decompressor(f) => {
                    f.on_request(req, worker);
                    marks.decompress.push(f);
                }
                HttpFilter::GrpcWeb(f) => {
                    if is_grpc_web(req.headers()) {
                        let cluster = route_cluster(s, req.headers());
                        let cluster = cluster.as_deref().map(|c| c.name.as_str());
                        marks.grpc_web = f.on_request(req, s.path, cluster);
                    }
                }
                HttpFilter::GrpcStats(f) => {
                    if is_grpc(req.headers()) {
                        let cluster = route_cluster(s, req.headers());
                        let cluster = cluster.as_deref().map(|c| c.name.as_str());
                        marks.grpc_stats = f.on_request(req, s.path, cluster, worker);
                    }
                }
                HttpFilter::GrpcHttp1Bridge(f) => {
                    if f.applies(req.version(), req.headers()) {
                        let bridged = f.on_request(req);
                        if bridged.path_changed {
                            marks.services.get_or_insert_with(Box::default).path_changed = true;
                        }
                        marks.bridge = bridged.response;
                    }
                }
                HttpFilter::GrpcJsonTranscoder(f) => {
                    let path = request_path(s, req, marks).into_owned();
                    // Boxed: its wait would otherwise take room in every request's future.
                    let transcoded =
                        Box::pin(f.on_request(s.levels, req, &path, s.conn.buffer_limit)).await;
                    match transcoded {
                        Transcoded::Pass => {}
                        Transcoded::Reply(r) => {
                            outcome.set_details("grpc_json_transcode_failure");
                            return ControlFlow::Continue(Some(r));
                        }
                        Transcoded::Call { reroute, response } => {
                            let services = marks.services.get_or_insert_with(Box::default);
                            services.path_changed = true;
                            // Envoy's filter clears the route cache: routed again by the
                            // gRPC path.
                            if let Some(p) = reroute {
                                services.lua_reroute = Some(Box::new((s.authority.to_string(), p)));
                            }
                            marks.transcode = Some(response);
                        }
                    }
                }
                HttpFilter::BasicAuth(f) => {
                    let route = per_filter::policy::<RouteUsers>(s.levels, &f.name);
                    if let BasicAuth::Refuse(r, details) =
                        f.on_request(route, req.headers_mut(), s.authority, s.path, worker)
                    {
                        outcome.set_details(details);
                        return ControlFlow::Continue(Some(r));
                    }
                }
                HttpFilter::ApiKeyAuth(f) => {
                    let route = per_filter::policy::<ApiKeySettings>(s.levels, &f.name);
                    let path = request_path(s, req, marks);
                    match f.on_request(route, req.headers_mut(), &path, worker) {
                        ApiKeyAuth::Refuse(r, details) => {
                            outcome.set_details(details);
                            return ControlFlow::Continue(Some(r));
                        }
                        ApiKeyAuth::Pass(Some(p)) => set_request_path(req, marks, &p),
                        ApiKeyAuth::Pass(None) => {}
                    }
                }
                HttpFilter::Buffer(f) => {
                    let route = per_filter::policy::<RouteBuffer>(s.levels, &f.name);
                    if let Some(limit) = f.limit(route) {
                        // Boxed: its wait would otherwise take room in every request's future.
                        if let Some(r) = Box::pin(buffer_body(s, req, limit)).await {
                            outcome.set_details("request_payload_too_large");
                            return ControlFlow::Continue(Some(r));
                        }
                    }
                }
                HttpFilter::StatefulSession(f) => {
                    let route = per_filter::policy::<StatefulSessionPerRoute>(s.levels, &f.name);
                    if let Some(session) = f.on_request(route, req, s.path) {
                        let services = marks.services.get_or_insert_with(Box::default);
                        services.sessions.push(session);
                    }
                }
                HttpFilter::CredentialInjector(f) => {
                    if let Some(r) = f.on_request(req.headers_mut(), worker) {
                        outcome.set_details("failed_to_inject_credential");
                        return ControlFlow::Continue(Some(r));
                    }
                }
                HttpFilter::OnDemand(f) => {
                    let cluster = routed_cluster(s, req.headers());
                    // Boxed: its wait would otherwise take room in every request's future.
                    Box::pin(f.on_request(cluster)).await;
                }
                HttpFilter::ExtAuthz(f) => {
                    let checked =
                        crate::http::conn_manager::service_calls::ext_authz::CheckedRequest {
                            conn: s.conn,
                            path: s.path,
                            authority: s.authority,
                            scheme: s.scheme,
                            protocol: s.protocol,
                            levels: s.levels,
                            routed: s.routed.is_some(),
                            cluster: routed_cluster(s, req.headers()).map(str::to_owned),
                        };
                    // Boxed: its call would otherwise take room in every request's future.
                    let checked =
                        Box::pin(crate::http::conn_manager::service_calls::ext_authz::check(
                            checked, f, req, outcome,
                        ))
                        .await;
                    match checked {
                        Ok(passed) if passed.response.is_some() || passed.path_changed => {
                            let services = marks.services.get_or_insert_with(Box::default);
                            services.authz.extend(passed.response);
                            services.path_changed |= passed.path_changed;
                        }
                        Ok(_) => {}
                        Err(reply) => return ControlFlow::Continue(Some(reply)),
                    }
                }
                HttpFilter::ExtProc(f) => {
                    let mode = f.mode_for(s.levels);
                    if mode == ExtProcMode::OFF {
                        continue;
                    }
                    let path = request_path(s, req, marks);
                    let r = crate::http::conn_manager::service_calls::ext_proc::ProcessedRequest {
                        method: s.method.as_str(),
                        path: &path,
                        authority: s.authority,
                        scheme: s.scheme,
                        store: &cfg.store,
                        worker,
                        buffer_limit: s.conn.buffer_limit,
                    };
                    // Boxed: its stream would otherwise take room in every request's future.
                    let processed = Box::pin(
                        crate::http::conn_manager::service_calls::ext_proc::on_request(
                            f, mode, r, req, outcome,
                        ),
                    )
                    .await;
                    match processed {
                        ExtProcessed::Skip => {}
                        ExtProcessed::Continue(session, path_changed) => {
                            if path_changed {
                                marks.services.get_or_insert_with(Box::default).path_changed = true;
                            }
                            if session.wants_response() {
                                marks.responses.push(ResponseStage::ExtProc(*session));
                            }
                        }
                        ExtProcessed::Reply(r) => return ControlFlow::Continue(Some(r)),
                    }
                }
                HttpFilter::RateLimit(f) => {
                    let view = rate_limit_view(s);
                    let cx = s.format_context(None, None);
                    let cluster = routed_cluster(s, req.headers()).map(str::to_owned);
                    // Boxed: its call would otherwise take room in every request's future.
                    let checked =
                        Box::pin(crate::http::conn_manager::service_calls::ratelimit::check(
                            f,
                            s.conn,
                            s.levels,
                            &view,
                            cluster.as_deref(),
                            &cx,
                            req,
                            outcome,
                        ))
                        .await;
                    match checked {
                        Ok(Some(fields)) => marks
                            .services
                            .get_or_insert_with(Box::default)
                            .ratelimit_fields
                            .extend(fields),
                        Ok(None) => {}
                        Err(reply) => return ControlFlow::Continue(Some(reply)),
                    }
                }
                HttpFilter::JwtAuthn(f) => {
                    let route = per_filter::policy::<JwtPerRoute>(s.levels, &f.name);
                    let path = req
                        .uri()
                        .path_and_query()
                        .map_or(s.path, |p| p.as_str())
                        .to_owned();
                    let decided = if f.has_remote_jwks() {
                        // Boxed: its fetch would otherwise take room in every request's future.
                        Box::pin(crate::http::conn_manager::service_calls::jwks::check(
                            f,
                            route,
                            req.headers_mut(),
                            &path,
                            &s.pseudo(),
                            &s.conn.config.store,
                            worker,
                        ))
                        .await
                    } else {
                        f.on_request(
                            route,
                            req.headers_mut(),
                            &path,
                            &s.pseudo(),
                            worker,
                            &|_| Fetched::NotYet,
                        )
                    };
                    match decided {
                        // Only the remote key sets' glue sees this.
                        JwtRequest::Fetch(_) => {}
                        JwtRequest::Pass(None) => {}
                        JwtRequest::Pass(Some(new)) => {
                            let mut parts = req.uri().clone().into_parts();
                            if let Ok(pq) = new.parse() {
                                parts.path_and_query = Some(pq);
                                if let Ok(uri) = http::Uri::from_parts(parts) {
                                    *req.uri_mut() = uri;
                                    marks.services.get_or_insert_with(Box::default).path_changed =
                                        true;
                                }
                            }
                        }
                        JwtRequest::Refuse(r, details) => {
                            outcome.set_details_owned(|| details);
                            return ControlFlow::Continue(Some(r));
                        }
                    }
                }
                HttpFilter::OAuth2(f) => {
                    // Boxed: its call would otherwise take room in every request's future.
                    if let Some(r) = Box::pin(oauth2(s, f, req, marks, outcome)).await {
                        return ControlFlow::Continue(Some(r));
                    }
                }
                HttpFilter::Lua(f) => {
                    let route = per_filter::policy::<LuaPerRoute>(s.levels, &f.name);
                    if let Some(reply) = lua_request(s, f, route, req, marks, outcome).await {
                        return ControlFlow::Continue(Some(reply));
                    }
                }
                HttpFilter::Fault(f) => {
                    // Boxed: its delay would otherwise take room in every request's future.
                    let reply = Box::pin(inject_fault(
                        f,
                        s.levels,
                        s.routed.map(|(_, route)| &route.action),
                        req.headers(),
                        &s.pseudo(),
                        &mut marks.paced,
                        outcome,
                        worker,
                    ))
                    .await;
                    if reply.is_some() {
                        return ControlFlow::Continue(reply);
                    }
                }
            }
        }
    }
    ControlFlow::Continue(None)
}

/// An OAuth2 filter's decision on a request, after its token endpoint's answer when it
/// asks one: the filter's answer, if it answers; what a refresh puts on the request's
/// answer goes into the marks.
async fn oauth2(
    s: &Stream<'_>,
    f: &crate::filters::http::oauth2::OAuth2Filter,
    req: &mut Request<ProxyBody>,
    marks: &mut FilterMarks<'_>,
    outcome: &mut Outcome,
) -> Option<Box<Response<ProxyBody>>> {
    use crate::filters::http::oauth2::{Finished, OAuth2Step, RequestView};
    let path = req
        .uri()
        .path_and_query()
        .map_or(s.path, |p| p.as_str())
        .to_owned();
    let rq = RequestView {
        authority: s.authority,
        path: &path,
        scheme: s.scheme,
        method: s.method,
    };
    let pseudo = s.pseudo();
    let call = match f.on_request(req.headers_mut(), &rq, &pseudo, s.conn.worker) {
        OAuth2Step::Pass => return None,
        OAuth2Step::Reply(r, details) => {
            outcome.set_details(details);
            return Some(r);
        }
        OAuth2Step::Call(call) => call,
    };
    let finished = crate::http::conn_manager::service_calls::oauth2::call(
        f,
        *call,
        req.headers_mut(),
        &rq,
        &pseudo,
        &s.conn.config.store,
        s.conn.worker,
    )
    .await;
    match finished {
        Finished::Pass(changes) => {
            if let Some(changes) = changes {
                marks
                    .services
                    .get_or_insert_with(Box::default)
                    .authz
                    .push(changes);
            }
            None
        }
        Finished::Reply(r, details) => {
            outcome.set_details(details);
            Some(r)
        }
    }
}

/// A Lua filter's request pass (its script's `envoy_on_request`, when the route runs
/// one): the script's answer, if it answered; its response pass goes into the marks.
async fn lua_request(
    s: &Stream<'_>,
    f: &LuaFilter,
    route: Option<&LuaPerRoute>,
    req: &mut Request<ProxyBody>,
    marks: &mut FilterMarks<'_>,
    outcome: &mut Outcome,
) -> Option<Box<Response<ProxyBody>>> {
    let script = f.script(route)?;
    let conn = s.conn;
    let facts = Rc::new(StreamFacts {
        protocol: s.protocol,
        local: conn.local,
        direct_remote: conn.direct_remote.unwrap_or(conn.remote),
        remote: s
            .detected_remote
            .map_or(conn.remote, |ip| std::net::SocketAddr::new(ip, 0)),
        requested_server_name: conn.requested_server_name.clone(),
        tls: conn.tls.get().map(|t| TlsFacts {
            version: t.version,
            peer_presented: t.peer.is_some(),
        }),
        route: match s.routed {
            Some((vh, r)) => RouteFacts {
                name: r.name.clone(),
                metadata: r.metadata.clone(),
                vhost_metadata: vh.metadata.clone(),
            },
            None => RouteFacts::default(),
        },
        dynamic: marks
            .lua_dynamic
            .get_or_insert_with(Default::default)
            .clone(),
        filter_name: f.config_name.clone(),
        filter_context: f.filter_context(route),
        virtual_cluster: match s.routed {
            Some((vh, r)) if s.to_cluster && matches!(r.action, Action::Route(_)) => {
                vh.virtual_cluster_name(req.headers(), &s.pseudo()).cloned()
            }
            _ => None,
        },
        upstream_answered: std::cell::Cell::new(false),
    });
    // Boxed: its run would otherwise take room in every request's future.
    let (pass, response) = Box::pin(crate::filters::http::lua::stream::on_request(
        script,
        &f.stats,
        req,
        s.scheme,
        facts,
        &RunContext {
            worker: conn.worker,
            limit: conn.buffer_limit,
            caller: &LuaCaller {
                store: &conn.config.store,
                worker: conn.worker,
            },
        },
    ))
    .await;
    marks.responses.extend(response.map(ResponseStage::Lua));
    match pass {
        RequestPass::Pass(changes) => {
            if changes.headers {
                let authority = changes.authority.unwrap_or_else(|| s.authority.to_string());
                let path = req
                    .uri()
                    .path_and_query()
                    .map_or_else(|| s.path.to_string(), |p| p.as_str().to_string());
                let services = marks.services.get_or_insert_with(Box::default);
                services.path_changed |= changes.path;
                services.lua_reroute = Some(Box::new((authority, path)));
            }
            None
        }
        RequestPass::Respond(r) => {
            outcome.set_details("lua_response");
            Some(r)
        }
        RequestPass::TooLarge => {
            // What is left of the body is not read: an HTTP/1.1 connection ends after the
            // answer.
            if req.version() != http::Version::HTTP_2 {
                s.conn.close_after_response();
            }
            outcome.set_details("request_payload_too_large");
            Some(Box::new(local_reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Payload Too Large",
            )))
        }
    }
}

/// A filter's response pass that may wait: a Lua script's run, an external processor's
/// answer.
enum ResponseStage {
    Lua(ResponsePass),
    ExtProc(ExtProcSession),
}

/// The response passes that may wait, from the last filter in the chain to the first.
async fn response_passes(
    s: &Stream<'_>,
    stages: Vec<ResponseStage>,
    resp: &mut Response<ProxyBody>,
    outcome: &mut Outcome,
) {
    let (worker, limit) = (s.conn.worker, s.conn.buffer_limit);
    for stage in stages.into_iter().rev() {
        // Boxed: their runs would otherwise take room in every request's future.
        match stage {
            ResponseStage::Lua(pass) => {
                let caller = LuaCaller {
                    store: &s.conn.config.store,
                    worker,
                };
                let cx = RunContext {
                    worker,
                    limit,
                    caller: &caller,
                };
                Box::pin(pass.on_response(resp, &cx)).await
            }
            ResponseStage::ExtProc(session) => {
                Box::pin(
                    crate::http::conn_manager::service_calls::ext_proc::on_response(
                        session, resp, outcome,
                    ),
                )
                .await
            }
        }
    }
}

/// The request's path and query as the filters see it now: the routed one, or the one an
/// earlier filter gave it.
fn request_path<'a>(
    s: &Stream<'a>,
    req: &Request<ProxyBody>,
    marks: &FilterMarks<'_>,
) -> Cow<'a, str> {
    match marks.services.as_ref().is_some_and(|m| m.path_changed) {
        true => Cow::Owned(
            req.uri()
                .path_and_query()
                .map_or_else(|| s.path.to_owned(), |p| p.as_str().to_owned()),
        ),
        false => Cow::Borrowed(s.path),
    }
}

/// Gives the request the path `path` (a filter's change, the route staying the one
/// chosen, as Envoy's filters do not clear the route cache for it): what goes upstream.
fn set_request_path(req: &mut Request<ProxyBody>, marks: &mut FilterMarks<'_>, path: &str) {
    let mut parts = req.uri().clone().into_parts();
    let Ok(pq) = path.parse() else {
        return;
    };
    parts.path_and_query = Some(pq);
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *req.uri_mut() = uri;
        marks.services.get_or_insert_with(Box::default).path_changed = true;
    }
}

/// The cluster the request's route sends it to, when its route names one (directly or by
/// a header): where a filter counts in the cluster's scope.
fn routed_cluster<'h>(s: &Stream<'h>, headers: &'h http::HeaderMap) -> Option<&'h str> {
    match &s.routed?.1.action {
        Action::Route(action) => match &action.cluster {
            ClusterSpec::Single(name) => Some(name.as_str()),
            ClusterSpec::Header(h) => headers.get(h).and_then(|v| v.to_str().ok()),
            _ => None,
        },
        _ => None,
    }
}

/// The buffer filter on a request: its whole body received (up to `limit`) before it goes
/// on, with a `content-length` if it had none; `413` past the limit.
async fn buffer_body(
    s: &Stream<'_>,
    req: &mut Request<ProxyBody>,
    limit: usize,
) -> Option<Box<Response<ProxyBody>>> {
    if req.body().is_end_stream() {
        return None;
    }
    let cfg = &s.conn.config;
    let body = std::mem::replace(req.body_mut(), ProxyBody::empty());
    let held = RetryBuffer::new(
        body,
        limit,
        cfg.stats.downstream_rq_too_large.clone(),
        s.conn.worker,
    );
    match held.fill().await {
        Filled::TooLarge => {
            // What is left of the body is not read: an HTTP/1.1 connection ends after the
            // answer, as Envoy's (`connection: close`).
            if req.version() != http::Version::HTTP_2 {
                s.conn.close_after_response();
            }
            return Some(Box::new(local_reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Payload Too Large",
            )));
        }
        Filled::Whole(len) if !req.headers().contains_key(header::CONTENT_LENGTH) => {
            req.headers_mut().remove(header::TRANSFER_ENCODING);
            req.headers_mut()
                .insert(header::CONTENT_LENGTH, http::HeaderValue::from(len));
        }
        Filled::Whole(_) | Filled::Broken => {}
    }
    *req.body_mut() = match held.prefill() {
        Some(bytes) => ProxyBody::full(bytes),
        None => ProxyBody::filtered(Replay::new(held)),
    };
    None
}

/// A CORS preflight's answer, which goes out at once: it gets the compressor's pass (not
/// the other filters' marks), which Envoy's compressor gives it before its codec gives it
/// a length.
fn preflight(
    s: &Stream<'_>,
    marks: &FilterMarks<'_>,
    r: Box<Response<ProxyBody>>,
) -> Response<ProxyBody> {
    let mut r = *r;
    let length = r.headers_mut().remove(header::CONTENT_LENGTH);
    marks.compress(s, &mut r);
    if let Some(l) = length {
        r.headers_mut().insert(header::CONTENT_LENGTH, l);
    }
    r
}

/// What rate limit actions read of a request besides its headers.
fn rate_limit_view<'a>(s: &Stream<'a>) -> RateLimitView<'a> {
    RateLimitView {
        route: s.routed.and_then(|(vh, route)| match &route.action {
            Action::Route(action) => Some((vh, action)),
            _ => None,
        }),
        pseudo: s.pseudo(),
        remote: Some(s.detected_remote.unwrap_or(s.conn.remote.ip())),
        local_cluster: crate::server::local_info::service_cluster(),
    }
}

/// The local rate limit filter on a request, with the route's policy if it has one.
fn local_rate_limit(
    s: &Stream<'_>,
    f: &LocalRateLimitFilter,
    headers: &mut http::HeaderMap,
) -> RateLimited {
    let route_policy = per_filter::policy_arc::<RateLimitPolicy>(s.levels, &f.name);
    let cx = s.format_context(None, None);
    let view = rate_limit_view(s);
    f.on_request(
        route_policy.as_ref(),
        &s.conn.rate_limit_buckets,
        headers,
        &view,
        &cx,
        s.conn.worker,
    )
}

/// The RBAC filter on a request, with the route's rules if it has them: its refusal, if
/// it refuses the request.
fn rbac(
    s: &Stream<'_>,
    f: &RbacFilter,
    headers: &http::HeaderMap,
) -> Option<(Box<Response<ProxyBody>>, String)> {
    let route_rules = per_filter::policy::<RbacRules>(s.levels, &f.name);
    f.on_request(route_rules, &request_view(s, headers), s.conn.worker)
}

/// What RBAC and the xDS matcher read of a request and its connection.
fn request_view<'s>(s: &'s Stream<'_>, headers: &'s http::HeaderMap) -> RequestView<'s> {
    let cfg = &s.conn.config;
    RequestView {
        headers,
        pseudo: s.pseudo(),
        local: s.conn.local,
        peer: s.conn.remote.ip(),
        peer_port: s.conn.remote.port(),
        tls: s.conn.tls.get().map(|t| &**t),
        requested_server_name: s.conn.requested_server_name.as_deref(),
        xff: XffTrust {
            use_remote_address: cfg.use_remote_address,
            trusted_hops: cfg.xff_num_trusted_hops,
            appended: cfg.use_remote_address && !cfg.skip_xff_append,
            detected: cfg
                .original_ip
                .as_ref()
                .map(|_| s.detected_remote.unwrap_or(s.conn.remote.ip())),
        },
    }
}

/// `flush_access_log_on_new_request`: the request's `DownstreamStart` entry, once routed
/// and before its filters run (nothing is known of its answer yet).
fn log_request_start(conn: &ConnInfo, req: &Request<ProxyBody>, outcome: &Outcome) {
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path(), |p| p.as_str());
    let authority = authority_of(req).unwrap_or_default();
    let entry = LogEntry {
        start: std::time::SystemTime::now(),
        method: req.method().as_str(),
        path,
        original_path: None,
        authority: &authority,
        protocol: protocol_name(req.version()),
        request: req.headers(),
        response: None,
        status: 0,
        flags: "-",
        bytes_received: 0,
        bytes_sent: 0,
        duration: std::time::Duration::ZERO,
        upstream_host: None,
        upstream_cluster: outcome.upstream_cluster.as_deref(),
        remote: logged_remote(conn, outcome.detected_remote).0,
        route_name: &outcome.route_name,
        tls: conn.tls.get().map(|t| &**t),
        requested_server_name: conn.requested_server_name.as_deref(),
        health_check: false,
        log_type: AccessLogType::DownstreamStart,
        local: Some(conn.local),
        direct_remote: logged_remote(conn, outcome.detected_remote).1,
        upstream_local: None,
        details: "",
        transport_failure: None,
        trace: None,
        request_id: req
            .headers()
            .get(&X_REQUEST_ID)
            .and_then(|v| v.to_str().ok()),
        connection_id: Some(conn.id),
        virtual_cluster: outcome
            .log
            .as_ref()
            .and_then(|l| l.virtual_cluster.as_deref()),
        ..LogEntry::connection(req.headers())
    };
    for l in &conn.config.access_logs {
        l.log(&entry, conn.worker);
    }
}

/// The answer to a request no route takes: a filter's, else `404` (`no_route`, `NR`),
/// with the filters' marks.
fn no_route_answer(
    s: &Stream<'_>,
    filter_reply: Option<Box<Response<ProxyBody>>>,
    outcome: &mut Outcome,
) -> Response<ProxyBody> {
    match filter_reply {
        Some(reply) => *reply,
        None => {
            s.conn.config.stats.no_route.inc(s.conn.worker);
            outcome.ended("NR", "route_not_found");
            local_reply(StatusCode::NOT_FOUND, "")
        }
    }
}

/// An upgrade its route does not enable: `403` (`downstream_rq_ws_on_non_ws_route`); as
/// Envoy, an HTTP/1.1 connection whose upgrade was refused is closed.
fn refuse_upgrade(conn: &ConnInfo, req: &Request<ProxyBody>) -> Response<ProxyBody> {
    conn.config
        .stats
        .downstream_rq_ws_on_non_ws_route
        .inc(conn.worker);
    if req.version() != Version::HTTP_2 {
        conn.closing.set(true);
    }
    local_reply(StatusCode::FORBIDDEN, "")
}

/// A route's `direct_response` (`rq_direct_response`): its status and body (as
/// `text/plain`), and, as Envoy, a `location` to the request's own URL on a `201` or a
/// redirect status.
fn direct_response(
    s: &Stream<'_>,
    status: StatusCode,
    body: Option<&bytes::Bytes>,
) -> Response<ProxyBody> {
    s.conn.config.stats.rq_direct_response.inc(s.conn.worker);
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
    *r.status_mut() = status;
    r.extensions_mut().insert(LocalReply(None));
    // Envoy sets Location on 201 and redirect direct responses.
    let code = status.as_u16();
    if code == 201 || matches!(code, 301 | 302 | 303 | 307 | 308) {
        if let Ok(v) = HeaderValue::from_str(&format!("http://{}{}", s.authority, s.path)) {
            r.headers_mut().insert(header::LOCATION, v);
        }
    }
    r
}

/// A route's `redirect` (`rq_redirect`). As Envoy: without a scheme of its own, the
/// redirect keeps the request's, as `x-forwarded-proto` (set by [`forwarding_headers`])
/// tells it.
fn route_redirect(
    s: &Stream<'_>,
    req: &Request<ProxyBody>,
    rd: &Redirect,
    route: &Route,
) -> Response<ProxyBody> {
    s.conn.config.stats.rq_redirect.inc(s.conn.worker);
    let scheme = req
        .headers()
        .get(&X_FORWARDED_PROTO)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_scheme(v))
        .unwrap_or("http");
    redirect(rd, route, s.authority, s.path, scheme)
}

/// The compressor filters' response passes, from the last in the chain to the first, for
/// those that run for the request: `seen` is what the last one the request reached made
/// of it (it holds the earlier ones). Envoy runs them on the answers of filters before
/// them too, without the request's `accept-encoding`. They share one choice of encoding.
pub(crate) fn compress_response(
    cfg: &HcmConfig,
    levels: [&FilterConfigs; 3],
    seen: Option<&crate::filters::http::compressor::CompressorRequest<'_>>,
    grpc: bool,
    resp: &mut Response<ProxyBody>,
    worker: usize,
) {
    if cfg.compressors.is_empty() {
        return;
    }
    // A local reply to a gRPC request goes out in gRPC's form, headers only, which is
    // what Envoy's compressor sees of it: it is given that form first.
    if grpc {
        if let Some(LocalReply(status)) = resp.extensions_mut().remove::<LocalReply>() {
            grpc_local_reply(resp, status);
        }
    }
    let running = |i: usize| match cfg.filters.get(i) {
        Some(crate::http::conn_manager::config::ChainFilter {
            filter: HttpFilter::Compressor(f),
            off_by_default,
        }) if per_filter::runs(levels, &f.name, *off_by_default) => Some(&**f),
        _ => None,
    };
    let registry = |visit: &mut dyn FnMut(&CompressorFilter)| {
        cfg.compressors
            .iter()
            .filter_map(|&i| running(i))
            .for_each(&mut *visit);
    };
    let mut negotiation = Negotiation::new(&registry);
    let mut seen = seen;
    for f in cfg.compressors.iter().rev().filter_map(|&i| running(i)) {
        match seen.filter(|r| r.is_of(f)) {
            Some(r) => {
                r.on_response(resp, &mut negotiation, worker);
                seen = r.earlier();
            }
            None => f.unseen(levels).on_response(resp, &mut negotiation, worker),
        }
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

/// Runs the fault filter on a request: delays it, answers it when the fault aborts it,
/// and leaves its response rate limit in `paced`.
#[allow(clippy::too_many_arguments)]
async fn inject_fault(
    filter: &FaultFilter,
    levels: [&FilterConfigs; 3],
    action: Option<&Action>,
    headers: &http::HeaderMap,
    pseudo: &Pseudo<'_>,
    paced: &mut Vec<Paced>,
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
    if let Some(kbps) = injection.response_kbps {
        paced.push(Paced::Fault(FaultResponseLimit::new(kbps)));
    }
    if let Some(d) = injection.delay {
        outcome.flags = "DI";
        rt::Sleep::until(Instant::now() + d).await;
    }
    let abort = injection.abort(headers, filter, worker);
    outcome.active_fault = Some(injection.active);
    let (with, body) = abort?;
    outcome.flags = if outcome.flags == "DI" { "DI,FI" } else { "FI" };
    outcome.set_details("fault_filter_abort");
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
        started: Instant,
    ) -> ServeFuture {
        serve_boxed(self, req, upgrade, started)
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
        }
    }

    /// Envoy's stream for a head that never finished: answered `408`, counted and logged
    /// by [`ConnInfo::head_timed_out`].
    fn head_timeout(&self, which: HeadTimeout, started: Instant) -> Response<ProxyBody> {
        let mut resp = local_reply(StatusCode::REQUEST_TIMEOUT, which.reply_body());
        finish_response(&self.config, &mut resp);
        let sent = resp.body().size_hint().exact().unwrap_or(0);
        self.head_timed_out(which, started, Some(&resp), sent);
        resp
    }

    fn abort_dispatch(&self) -> Option<Response<ProxyBody>> {
        self.shed_dispatch()
    }
}

impl ConnInfo {
    /// Counts and logs a stream whose head never finished, as Envoy's: a request (total, by
    /// protocol, completed) and its timer's counter; with `resp` (HTTP/1.1's `408`) a 4xx,
    /// without one (an HTTP/2 connection closed instead) status 0. The access log has no
    /// request fields (`-`) and the flag `SI` for the idle timeout.
    pub(crate) fn head_timed_out(
        &self,
        which: HeadTimeout,
        started: Instant,
        resp: Option<&Response<ProxyBody>>,
        bytes_sent: u64,
    ) {
        let stats = &self.config.stats;
        let (counter, flags, details) = match which {
            HeadTimeout::StreamIdle => (
                &stats.downstream_rq_idle_timeout,
                "SI",
                "stream_idle_timeout",
            ),
            HeadTimeout::Request => (&stats.downstream_rq_timeout, "-", "request_overall_timeout"),
            HeadTimeout::RequestHeaders => (
                &stats.downstream_rq_header_timeout,
                "-",
                "request_header_timeout",
            ),
        };
        counter.inc(self.worker);
        self.codec_stream(flags, details, started, resp, bytes_sent);
    }

    /// The `http1_server_abort_dispatch` load shed point, as Envoy's: what arrives is
    /// answered `500` (a stream with no request fields, flag `DPE`, details `overload`,
    /// counted in `downstream_rq_overload_close`) and the connection closes.
    fn shed_dispatch(&self) -> Option<Response<ProxyBody>> {
        // Envoy's connection manager checks the go-away point as data arrives whatever
        // the protocol: on HTTP/1 the response says `connection: close`.
        if !self.closing.get()
            && load_shed::should_shed(Point::H2ServerGoAwayOnDispatch, self.worker)
        {
            self.close_after_response();
        }
        if !load_shed::should_shed(Point::H1ServerAbortDispatch, self.worker) {
            return None;
        }
        let started = Instant::now();
        self.config
            .stats
            .downstream_rq_overload_close
            .inc(self.worker);
        let mut resp = local_reply(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
        finish_response(&self.config, &mut resp);
        let sent = resp.body().size_hint().exact().unwrap_or(0);
        self.codec_stream("DPE", "overload", started, Some(&resp), sent);
        Some(resp)
    }

    /// Counts and logs a stream the codec ended before its head was whole: a request
    /// (total, by protocol, completed, by the reply's class) with no request fields.
    fn codec_stream(
        &self,
        flags: &str,
        details: &str,
        started: Instant,
        resp: Option<&Response<ProxyBody>>,
        bytes_sent: u64,
    ) {
        let cfg = &self.config;
        let (stats, w) = (&cfg.stats, self.worker);
        self.requests.set(self.requests.get() + 1);
        stats.downstream_rq_total.inc(w);
        let version = if self.http2.get() == Some(true) {
            stats.downstream_rq_http2_total.inc(w);
            Version::HTTP_2
        } else {
            stats.downstream_rq_http1_total.inc(w);
            Version::HTTP_11
        };
        let status = resp.map_or(0, |r| r.status().as_u16());
        if let Some(class) = (status / 100).checked_sub(1).filter(|c| *c < 5) {
            stats.downstream_rq_xx[class as usize].inc(w);
        }
        stats.downstream_rq_completed.inc(w);
        if cfg.access_logs.is_empty() {
            return;
        }
        let no_headers = http::HeaderMap::new();
        let entry = LogEntry {
            start: wall_clock_at(started),
            method: "",
            path: "",
            original_path: None,
            authority: "",
            protocol: protocol_name(version),
            request: &no_headers,
            response: resp.map(|r| r.headers()),
            status,
            flags,
            bytes_received: 0,
            bytes_sent,
            duration: started.elapsed(),
            upstream_host: None,
            upstream_cluster: None,
            remote: self.remote,
            route_name: "",
            tls: self.tls.get().map(|t| &**t),
            requested_server_name: self.requested_server_name.as_deref(),
            health_check: false,
            log_type: AccessLogType::DownstreamEnd,
            local: Some(self.local),
            direct_remote: self.direct_remote,
            upstream_local: None,
            details,
            transport_failure: None,
            trace: None,
            request_id: None,
            connection_id: Some(self.id),
            ..LogEntry::connection(&no_headers)
        };
        for l in &cfg.access_logs {
            l.log(&entry, w);
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
