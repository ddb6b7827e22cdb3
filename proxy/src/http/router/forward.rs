//! One request forwarded by the router filter (Envoy's `Router::Filter`): the cluster
//! picked and its `max_requests` checked, the upstream head built once (rewrites, header
//! mutations, an internal request's controls), the timeouts, mirrors and retry body
//! settled, then attempts, each on a host of its own, until a response is passed on or
//! the attempts end in a local reply.
//!
//! The steps are plain functions over [`Forward`], which holds what the attempts share:
//! only the attempt loop ([`Forward::run`]) awaits, so the request's future holds one
//! copy of that state and the one send, read or back-off in flight.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderValue};
use http::{request, Request, Response, StatusCode, Uri, Version};
use hyper::body::Body as _;

use crate::http::codec::body::ProxyBody;
use crate::http::codec::handoff::DownstreamUpgrade;
use crate::http::conn_manager::conn_info::ConnInfo;
use crate::http::conn_manager::headers::{decimal_value, strip_hop_by_hop};
use crate::http::conn_manager::local_reply::{
    local_reply, LocalReply, DURATION_TIMEOUT, GRPC_TIMEOUT, NO_HEALTHY_UPSTREAM,
    UPSTREAM_CONNECT_ERROR, UPSTREAM_OVERFLOW, UPSTREAM_PROTOCOL_ERROR, UPSTREAM_REFUSED,
    UPSTREAM_REMOTE_RESET, UPSTREAM_RESET, UPSTREAM_TIMEOUT,
};
use crate::http::conn_manager::request_controls::RequestControls;
use crate::http::conn_manager::stream_idle::StreamIdle;
use crate::http::request_stats::StatSinks;
use crate::http::route::{
    ClusterSpec, HostRewrite, Pseudo, RetryPolicy, RouteAction, WeightedCluster,
};
use crate::http::router::pool::{self, ClusterPool};
use crate::http::router::retry::{backoff, retries_failure, settle, RequestBody, RetrySlot};
use crate::http::router::shadow::{self, Mirror};
use crate::http::router::timeouts::{grpc_timeout_value, Deadlines, TimeoutOverrides};
use crate::http::router::upstream_request::{send_once, AttemptError};
use crate::http::router::{
    append_forwarded_host, rewrite_prefix, rewrite_regex, send_upgrade, Internal, Outcome, Routed,
    TunnelLimits, X_ENVOY_ATTEMPT_COUNT, X_ENVOY_EXPECTED_RQ_TIMEOUT_MS, X_ENVOY_IS_TIMEOUT_RETRY,
    X_ENVOY_ORIGINAL_HOST, X_ENVOY_ORIGINAL_PATH, X_ENVOY_OVERLOADED,
    X_ENVOY_UPSTREAM_SERVICE_TIME,
};
use crate::protocol::stream_limits::{StreamEnds, UPSTREAM_DURATION_REACHED};
use crate::upstream::{ClusterInfo, Host, ThreadLocalClusterManager};
use courier_runtime::event::rt;

/// Forwards a request the connection manager routed (`routed`): the upstream's response,
/// or the local reply that stands for it. An upgrade's tunnel joins `on_upgrade`;
/// `outcome` learns the response flags and upstream for the access log, and `idle` when a
/// response's body must end.
pub(crate) async fn forward(
    conn: &Rc<ConnInfo>,
    req: Request<ProxyBody>,
    routed: Routed<'_>,
    on_upgrade: Option<DownstreamUpgrade>,
    outcome: &mut Outcome,
    idle: &StreamIdle,
) -> Response<ProxyBody> {
    let cfg = &conn.config;
    let worker = conn.worker;
    let start = Instant::now();
    let Some((cluster, weighted)) = pick_cluster(req.headers(), routed.action) else {
        cfg.stats.no_cluster.inc(worker);
        outcome.flags = "NC";
        return local_reply(routed.action.cluster_not_found, "");
    };
    if !cfg.access_logs.is_empty() {
        outcome.upstream_cluster = Some(cluster.name.clone());
    }
    let pool = pool::cluster_pool(&cluster, &cfg.store, worker);
    // max_requests.
    if pool.breakers.requests.get() >= cluster.thresholds.max_requests {
        pool.stats.rq_pending_overflow.inc(worker);
        outcome.flags = "UO";
        return overflow_reply();
    }
    let target = Target {
        cluster: &cluster,
        pool: &pool,
        weighted,
    };
    let mut fwd = match Forward::new(conn, req, routed, target, on_upgrade, start) {
        Ok(fwd) => fwd,
        Err(refused_controls) => {
            conn.closing.set(true);
            return local_reply(StatusCode::BAD_REQUEST, &refused_controls);
        }
    };
    let _request = pool.request_slot();
    fwd.run(outcome, idle).await
}

/// The cluster `action` sends a request with `headers` to (its `cluster`, the one a
/// request header names, or a weighted pick, returned too: its header mutations apply);
/// `None` when there is no such cluster (Envoy's `NC`).
#[inline(always)]
fn pick_cluster<'a>(
    headers: &HeaderMap,
    action: &'a RouteAction,
) -> Option<(Arc<ClusterInfo>, Option<&'a WeightedCluster>)> {
    let (name, weighted) = match &action.cluster {
        ClusterSpec::Single(c) => (c.as_str(), None),
        ClusterSpec::Header(h) => match headers.get(h).and_then(|v| v.to_str().ok()) {
            Some(c) if !c.is_empty() => (c, None),
            _ => return None,
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
            (pick.name.as_str(), Some(pick))
        }
    };
    let cluster = ThreadLocalClusterManager::with(|tlcm| tlcm.get(name))?;
    Some((cluster, weighted))
}

/// Envoy's `503` for a full circuit breaker (`max_requests`, or the pool's connections and
/// pending requests), marked `x-envoy-overloaded`.
fn overflow_reply() -> Response<ProxyBody> {
    let mut r = local_reply(StatusCode::SERVICE_UNAVAILABLE, UPSTREAM_OVERFLOW);
    r.headers_mut()
        .insert(X_ENVOY_OVERLOADED.clone(), HeaderValue::from_static("true"));
    r
}

/// Where a request goes: its cluster, the cluster's pool on this worker, and the weighted
/// cluster picked, if any.
#[derive(Clone, Copy)]
struct Target<'a> {
    cluster: &'a Arc<ClusterInfo>,
    pool: &'a Rc<ClusterPool>,
    weighted: Option<&'a WeightedCluster>,
}

/// The request head as every attempt sends it, before what differs by attempt.
struct UpstreamHead<'a> {
    /// Method, URI, headers (rewritten and mutated) and extensions; the last possible
    /// attempt takes the headers instead of copying them.
    parts: request::Parts,
    /// The path after the route's `prefix_rewrite` or `regex_rewrite`.
    path: Cow<'a, str>,
    /// The authority upstream: the request's, the route's `host_rewrite_literal`, or a
    /// host's name (`auto_host_rewrite`, set by each attempt).
    authority: Cow<'a, str>,
    /// The request's `host`, reused upstream when the authority is unchanged (no copy).
    downstream_host: Option<HeaderValue>,
    /// An upgrade (websocket): built in the HTTP/1.1 form, with no mirrors, no retry body
    /// and no cut-off response body.
    upgrade: bool,
}

/// A request on its way upstream: what its attempts share, settled before the first, and
/// what they have come to so far (Envoy's router filter between `decodeHeaders` and the
/// end of its upstream requests).
struct Forward<'a> {
    conn: &'a Rc<ConnInfo>,
    routed: Routed<'a>,
    target: Target<'a>,
    sinks: StatSinks<'a>,
    /// The retry policy, when it applies to the request.
    retry: Option<Arc<RetryPolicy>>,
    /// The load balancer's hash (a route's `hash_policy`).
    lb_hash: Option<u64>,
    /// A cookie the hash policy made, for the response (boxed: rare).
    set_cookie: Option<Box<HeaderValue>>,
    deadlines: Deadlines,
    head: UpstreamHead<'a>,
    body: RequestBody,
    /// The request's mirrors, sent with the first attempt.
    mirrors: Vec<Mirror<'a>>,
    /// The downstream side of an upgrade's tunnel, taken by the first attempt.
    on_upgrade: Option<DownstreamUpgrade>,
    /// The attempts made so far.
    attempt: u32,
    /// The hosts tried so far, for a `previous_hosts` retry predicate.
    tried: Vec<SocketAddr>,
    /// How the last attempt failed, when it did.
    last_error: Option<AttemptError>,
    /// The last attempt's retriable response, read off its connection, in case no retry
    /// can follow.
    last_response: Option<Response<ProxyBody>>,
}

impl<'a> Forward<'a> {
    /// Settles what the attempts share, in Envoy's order: the request head stripped for
    /// upstream, an internal request's controls taken off it (`Err`: the `400` body for
    /// controls that do not parse), the retry policy, virtual cluster and load balancer's
    /// hash from the request as it came, then the route's rewrites and header mutations,
    /// the timeouts, the mirrors and the retry body.
    #[inline(always)]
    fn new(
        conn: &'a Rc<ConnInfo>,
        req: Request<ProxyBody>,
        routed: Routed<'a>,
        target: Target<'a>,
        on_upgrade: Option<DownstreamUpgrade>,
        start: Instant,
    ) -> Result<Forward<'a>, String> {
        let cfg = &conn.config;
        let (mut parts, body) = req.into_parts();
        strip_for_upstream(&mut parts.headers);
        let (retry, controls) = take_controls(conn, &mut parts, routed.action)?;
        // As Envoy, `retriable_request_headers` and virtual clusters look at the request
        // before the route's header mutations.
        let scheme = Pseudo::scheme_of(&parts.uri);
        let pseudo = Pseudo::request(&parts.method, routed.path, routed.authority, scheme);
        let retry = retry.filter(|r| r.applies_to(&parts.headers, &pseudo));
        let vcluster = routed.vh.virtual_cluster(&parts.headers, &pseudo);
        // The load balancer's hash (a route's `hash_policy`), also from the request as it
        // came; a cookie it makes goes on the response (boxed: rare).
        let (lb_hash, set_cookie) = match &routed.action.hash_policy {
            Some(policies) => {
                let h = policies.hash(&parts.headers, routed.path, conn.remote, conn.local);
                (h.hash, h.set_cookie.map(Box::new))
            }
            None => (None, None),
        };
        let sinks = StatSinks {
            cluster: &target.pool.stats.rq,
            route: routed.route.stats.as_deref(),
            vcluster,
            internal: controls.is_some(),
        };
        let mut head = UpstreamHead::new(parts, routed, target.weighted, on_upgrade.is_some());
        let overrides = timeout_overrides(controls.as_ref(), retry.as_deref());
        let deadlines = Deadlines::new(
            start,
            &mut head.parts.headers,
            routed.action,
            overrides,
            cfg.max_stream_duration,
            head.upgrade,
        );
        let (mirrors, body) = plan_mirrors(conn, routed, &head, target.pool, body);
        let retries_allowed = retry.as_ref().is_some_and(|r| r.num_retries > 0);
        let body = RequestBody::new(
            body,
            retries_allowed && !head.upgrade,
            routed.route.buffer_limit.unwrap_or(conn.buffer_limit),
            &target.pool.stats.retry_or_shadow_abandoned,
            conn.worker,
        );
        Ok(Forward {
            conn,
            routed,
            target,
            sinks,
            retry,
            lb_hash,
            set_cookie,
            deadlines,
            head,
            body,
            mirrors,
            on_upgrade,
            attempt: 0,
            tried: Vec::new(),
            last_error: None,
            last_response: None,
        })
    }
}

/// Strips what does not go upstream: hop-by-hop headers, and an `expect: 100-continue`,
/// answered here (or by the codec); other expectations go on, as Envoy forwards them.
#[inline(always)]
fn strip_for_upstream(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    if headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
    {
        headers.remove(header::EXPECT);
    }
}

/// The request's retry policy (the route's, or what an internal request's controls make of
/// it) and, for an internal request ([`Internal`]), its `x-envoy-*` controls, taken off
/// its headers (an external one lost them to the connection manager). `Err`: the `400`
/// body for controls that do not parse.
#[inline(always)]
fn take_controls(
    conn: &ConnInfo,
    parts: &mut request::Parts,
    action: &RouteAction,
) -> Result<(Option<Arc<RetryPolicy>>, Option<RequestControls>), String> {
    let cfg = &conn.config;
    match parts.extensions.remove::<Internal>() {
        Some(Internal) => {
            cfg.controls.check(&parts.headers)?;
            let c = RequestControls::take(&mut parts.headers, &cfg.controls);
            Ok((c.retry_policy(action.retry_policy.as_ref()), Some(c)))
        }
        None => Ok((action.retry_policy.clone(), None)),
    }
}

/// The timeouts besides the route's: the retry policy's per-try timeout, unless an
/// internal request's controls set their own. Only these of the controls are kept: the
/// controls themselves would take room in every request's future.
#[inline(always)]
fn timeout_overrides(
    controls: Option<&RequestControls>,
    retry: Option<&RetryPolicy>,
) -> TimeoutOverrides {
    let per_try = retry.and_then(|r| r.per_try_timeout);
    match controls {
        Some(c) => TimeoutOverrides {
            route: c.timeout,
            per_try: c.per_try_timeout.unwrap_or(per_try),
            alt_response: c.alt_response,
        },
        None => TimeoutOverrides {
            route: None,
            per_try,
            alt_response: false,
        },
    }
}

impl<'a> UpstreamHead<'a> {
    /// The head of `parts` as it goes upstream: the route's path and host rewrites
    /// (`x-envoy-original-path` when the path changes), an upgrade's `upgrade` and
    /// `connection` as the client sent them, and the request header mutations of the
    /// weighted cluster, the route, the virtual host and the route table, in that order.
    #[inline(always)]
    fn new(
        mut parts: request::Parts,
        routed: Routed<'a>,
        weighted: Option<&WeightedCluster>,
        upgrade: bool,
    ) -> UpstreamHead<'a> {
        let (action, fcx) = (routed.action, routed.fcx);
        // Kept to be reused upstream when the authority is unchanged (no copy). The field
        // stays where it is: removing it would move the map's last field into its place,
        // and Envoy sends `host` where the client did (first, as a rule).
        let downstream_host = parts.headers.get(header::HOST).cloned();
        let path: Cow<'a, str> = if let Some(p) = &action.prefix_rewrite {
            Cow::Owned(rewrite_prefix(routed.route, routed.path, p))
        } else if let Some((re, sub)) = &action.regex_rewrite {
            Cow::Owned(rewrite_regex(re, sub, routed.path))
        } else {
            Cow::Borrowed(routed.path)
        };
        if path != routed.path {
            if let Ok(v) = HeaderValue::from_str(routed.path) {
                parts.headers.insert(X_ENVOY_ORIGINAL_PATH.clone(), v);
            }
        }
        let authority: Cow<'a, str> = match &action.host_rewrite {
            HostRewrite::Literal(h) => Cow::Borrowed(h),
            _ => Cow::Borrowed(routed.authority),
        };
        if upgrade {
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
        routed.route.request_headers.apply(&mut parts.headers, fcx);
        routed.vh.request_headers.apply(&mut parts.headers, fcx);
        routed.table.request_headers.apply(&mut parts.headers, fcx);
        UpstreamHead {
            parts,
            path,
            authority,
            downstream_host,
            upgrade,
        }
    }
}

/// The request's mirrors (its route's `request_mirror_policies`; none for an upgrade),
/// sent with the first attempt, and its `body`, teed to feed the mirrors as the client's
/// body passes when it has one to stream.
fn plan_mirrors<'a>(
    conn: &ConnInfo,
    routed: Routed<'a>,
    head: &UpstreamHead<'_>,
    pool: &ClusterPool,
    body: ProxyBody,
) -> (Vec<Mirror<'a>>, ProxyBody) {
    let action = routed.action;
    if action.shadows.is_empty() || head.upgrade {
        return (Vec::new(), body);
    }
    // A mirror may fall this far behind: the listener's buffer limit, or the route's when
    // that is larger (Envoy mirrors bodies past the route's).
    let limit = routed
        .route
        .buffer_limit
        .map_or(conn.buffer_limit, |l| l.max(conn.buffer_limit));
    let (mirrors, feeds) = shadow::plan(
        &action.shadows,
        &head.parts.headers,
        !body.is_end_stream(),
        limit,
        &pool.stats.retry_or_shadow_abandoned,
        conn.worker,
    );
    let body = match feeds.is_empty() {
        true => body,
        false => shadow::tee(body, feeds),
    };
    (mirrors, body)
}

impl Forward<'_> {
    /// Makes attempts until one's response is passed on or none can follow (Envoy's retry
    /// loop): the response, or the local reply for how the attempts ended. Each attempt
    /// gets a host and its request, is sent within its per-try timeout, and ends in a
    /// response passed on, a retry after the back-off, or the end.
    async fn run(&mut self, outcome: &mut Outcome, idle: &StreamIdle) -> Response<ProxyBody> {
        let worker = self.conn.worker;
        let Target { cluster, pool, .. } = self.target;
        let upstream_start = Instant::now();
        loop {
            self.attempt += 1;
            if self.deadlines.overall_passed() {
                // Not made: `attempt` counts the attempts sent.
                self.attempt -= 1;
                break;
            }
            let Some(host) = self.pick_host(outcome) else {
                cluster.stats.upstream_cx_none_healthy.inc(worker);
                outcome.flags = "UH";
                return local_reply(StatusCode::SERVICE_UNAVAILABLE, NO_HEALTHY_UPSTREAM);
            };
            let Some(up_req) = self.build_request() else {
                return local_reply(StatusCode::BAD_REQUEST, "");
            };
            self.send_mirrors(&up_req);
            host.stats.rq_total.inc(worker);
            let active = (
                pool.stats.rq_active.raise(worker),
                host.stats.rq_active.raise(worker),
            );
            let try_deadline = self.deadlines.for_attempt();
            let result = match self.on_upgrade.take() {
                Some(downstream) => {
                    // Boxed: rare, and the request future would otherwise carry its size.
                    let upgraded = Box::pin(send_upgrade(
                        cluster,
                        &host,
                        worker,
                        up_req,
                        downstream,
                        self.conn,
                        TunnelLimits {
                            idle_timeout: self.routed.action.idle_timeout,
                            ends_at: self.deadlines.duration,
                            duration_reached: pool.stats.rq_max_duration_reached.clone(),
                        },
                        &self.sinks,
                    ));
                    rt::timeout(try_deadline, upgraded).await
                }
                None => {
                    // Built in place: a future held in a local would take room of its own
                    // in the request future, next to the copy the timeout holds.
                    rt::timeout(
                        try_deadline,
                        send_once(pool, cluster, &host, worker, &self.sinks, up_req),
                    )
                    .await
                }
            };
            drop(active);
            let slot = match result {
                Some(Ok(resp)) => {
                    let Some(slot) = self.retry_for_response(&resp) else {
                        return self.finish(resp, upstream_start, idle);
                    };
                    // Kept in case no retry can follow, read off its connection first: an
                    // open body would hold the attempt's connection (an HTTP/2 stream
                    // slot) while the retry looks for one.
                    self.last_response = Some(settle(resp, self.deadlines.overall).await);
                    self.last_error = None;
                    slot
                }
                Some(Err(e)) => match self.retry_for_failure(e) {
                    Some(slot) => slot,
                    None => break,
                },
                None if self.deadlines.overall_passed() => break,
                None => {
                    pool.stats.rq_per_try_timeout.inc(worker);
                    match self.retry_for_failure(AttemptError::PerTryTimeout) {
                        Some(slot) => slot,
                        None => break,
                    }
                }
            };
            if !backoff(self.retry.as_deref(), self.attempt, self.deadlines.overall).await {
                break;
            }
            drop(slot);
            self.sinks.retry(worker);
        }
        self.reply_without_response(outcome, idle)
    }

    /// The host of this attempt (with a `previous_hosts` predicate, one not tried yet if
    /// the load balancer finds one), recorded as the request's upstream, whose name an
    /// `auto_host_rewrite` sends; `None` when the cluster has no healthy host.
    #[inline(always)]
    fn pick_host(&mut self, outcome: &mut Outcome) -> Option<Arc<Host>> {
        let cluster = self.target.cluster;
        let avoiding = self
            .retry
            .as_ref()
            .filter(|r| r.avoid_previous_hosts && self.attempt > 1);
        let host = match avoiding {
            Some(r) => {
                pool::choose_host_avoiding(cluster, self.lb_hash, &self.tried, r.host_reselections)
            }
            None => pool::choose_host(cluster, self.lb_hash),
        }?;
        if cluster.hosts.panic {
            cluster.stats.lb_healthy_panic.inc(self.conn.worker);
        }
        outcome.upstream_host = Some(host.address);
        if self.retry.as_ref().is_some_and(|r| r.avoid_previous_hosts) {
            self.tried.push(host.address);
        }
        // As Envoy: the endpoint's hostname (a DNS cluster's name, an endpoint's
        // `hostname`); an endpoint without one leaves the authority as it is.
        if let (HostRewrite::Auto, Some(name)) = (&self.routed.action.host_rewrite, &host.hostname)
        {
            self.head.authority = Cow::Owned(name.to_string());
        }
        Some(host)
    }

    /// Whether the retry policy has retries left after this attempt, and whether one can
    /// follow: retries left and the body there to send again.
    #[inline(always)]
    fn retries_left(&self) -> (bool, bool) {
        let left = self
            .retry
            .as_ref()
            .is_some_and(|r| self.attempt <= r.num_retries);
        (left, left && self.body.replayable())
    }

    /// This attempt's request: the shared head (taken by the last possible attempt, else
    /// copied) with its path and authority, this attempt's body, and the headers that
    /// differ by attempt; `None` when the rewritten path or authority makes no URI.
    #[inline(always)]
    fn build_request(&mut self) -> Option<Request<ProxyBody>> {
        let body = self.body.for_attempt();
        // Upgrades are built in the HTTP/1.1 form whatever the cluster's protocol; for an
        // HTTP/2 cluster, `send_upgrade` makes an extended CONNECT of it.
        let h2_upstream = self.target.cluster.http2 && !self.head.upgrade;
        let head = http::request::Builder::new()
            .method(self.head.parts.method.clone())
            .version(if h2_upstream {
                Version::HTTP_2
            } else {
                Version::HTTP_11
            });
        // Unchanged (the common case), the request's own path is reused without parsing.
        let path_and_query = match self.head.parts.uri.path_and_query() {
            Some(pq) if pq.as_str() == self.head.path => pq.clone(),
            _ => http::uri::PathAndQuery::try_from(self.head.path.as_ref()).ok()?,
        };
        let uri = if h2_upstream {
            Uri::builder()
                .scheme("http")
                .authority(self.head.authority.as_ref())
                .path_and_query(path_and_query)
                .build()
        } else {
            Uri::builder().path_and_query(path_and_query).build()
        };
        let mut up_req = head.uri(uri.ok()?).body(body).ok()?;
        // The last possible attempt takes the headers instead of copying them.
        let last_attempt = !self.retries_left().1;
        *up_req.headers_mut() = if last_attempt {
            std::mem::take(&mut self.head.parts.headers)
        } else {
            self.head.parts.headers.clone()
        };
        self.set_authority(up_req.headers_mut(), h2_upstream);
        self.set_attempt_headers(up_req.headers_mut());
        Some(up_req)
    }

    /// The authority upstream: HTTP/2's `:authority` (in the URI) alone, else `host`, the
    /// client's own value when unchanged. A rewritten one sends the original along
    /// (`x-envoy-original-host`, and `x-forwarded-host` with `append_x_forwarded_host`),
    /// as Envoy.
    #[inline(always)]
    fn set_authority(&self, headers: &mut HeaderMap, h2_upstream: bool) {
        let (authority, upstream) = (self.routed.authority, &self.head.authority);
        if upstream != authority {
            if let Ok(v) = HeaderValue::from_str(authority) {
                headers.insert(X_ENVOY_ORIGINAL_HOST.clone(), v);
            }
            if self.routed.action.append_x_forwarded_host {
                append_forwarded_host(headers, authority);
            }
        }
        if h2_upstream {
            headers.remove(header::HOST);
        } else {
            let value = match &self.head.downstream_host {
                Some(v) if v.as_bytes() == upstream.as_bytes() => Some(v.clone()),
                _ => HeaderValue::from_str(upstream).ok(),
            };
            if let Some(v) = value {
                headers.insert(header::HOST, v);
            }
        }
    }

    /// The headers that differ by attempt: the time it is held to
    /// (`x-envoy-expected-rq-timeout-ms`, or a gRPC server's `grpc-timeout` when each
    /// attempt tells its own), whether a retry follows a per-try timeout
    /// (`x-envoy-is-timeout-retry`), and the attempt count (`x-envoy-attempt-count`).
    #[inline(always)]
    fn set_attempt_headers(&self, headers: &mut HeaderMap) {
        let suppress = self.conn.config.suppress_envoy_headers;
        let grpc_per_attempt = self.deadlines.grpc_per_attempt;
        let expected = match !suppress || grpc_per_attempt {
            true => self.deadlines.expected_ms(self.attempt),
            false => None,
        };
        if let Some(ms) = expected {
            if !suppress {
                headers.insert(X_ENVOY_EXPECTED_RQ_TIMEOUT_MS.clone(), decimal_value(ms));
            }
            if grpc_per_attempt {
                // As Envoy: the server learns the timeout this attempt is held to, an
                // internal request's timeout controls and the per-try one included.
                let ms = Duration::from_millis(ms);
                headers.insert(GRPC_TIMEOUT, grpc_timeout_value(ms));
            }
        }
        let vh = self.routed.vh;
        if self.attempt > 1 && vh.timeout_retry_header {
            let timeout = matches!(self.last_error, Some(AttemptError::PerTryTimeout));
            headers.insert(
                X_ENVOY_IS_TIMEOUT_RETRY.clone(),
                HeaderValue::from_static(if timeout { "true" } else { "false" }),
            );
        }
        if vh.attempt_count_upstream {
            headers.insert(
                X_ENVOY_ATTEMPT_COUNT.clone(),
                decimal_value(self.attempt.into()),
            );
        }
    }

    /// Sends the mirrors, which get the first attempt's head.
    fn send_mirrors(&mut self, up_req: &Request<ProxyBody>) {
        let conn = self.conn;
        for mirror in self.mirrors.drain(..) {
            mirror.send(
                up_req,
                &self.head.authority,
                &conn.config.store,
                conn.worker,
                self.deadlines.overall,
            );
        }
    }

    /// Whether `resp` is retried (Envoy's `shouldRetryHeaders`): the retry's slot, its
    /// status charged as retried; `None` when it is passed on, counted as the retry
    /// policy's success or its limit reached.
    #[inline(always)]
    fn retry_for_response(&self, resp: &Response<ProxyBody>) -> Option<RetrySlot> {
        let worker = self.conn.worker;
        let status = resp.status().as_u16();
        let retriable = self
            .retry
            .as_ref()
            .is_some_and(|r| r.retry_response(status, resp.headers()));
        let (left, more) = self.retries_left();
        let slot = match retriable && more {
            true => RetrySlot::take(self.target.pool, self.target.cluster, worker, self.sinks),
            false => None,
        };
        if slot.is_some() {
            self.sinks.cluster.charge_retried(worker, status);
        } else if retriable && !left {
            self.sinks.retry_limit_exceeded(worker);
        } else if self.attempt > 1 && !retriable {
            self.sinks.retry_success(worker);
        }
        slot
    }

    /// Records a failed attempt (Envoy's `shouldRetryReset`): the retry's slot, or `None`
    /// when no retry follows, counted as the retry policy's success (a failure it does not
    /// retry, after a retry) or its limit reached.
    fn retry_for_failure(&mut self, err: AttemptError) -> Option<RetrySlot> {
        let worker = self.conn.worker;
        let retriable = retries_failure(self.retry.as_deref(), &err);
        let (left, more) = self.retries_left();
        if self.attempt > 1 && !retriable {
            self.sinks.retry_success(worker);
        }
        self.last_error = Some(err);
        self.last_response = None;
        let slot = match retriable && more {
            true => RetrySlot::take(self.target.pool, self.target.cluster, worker, self.sinks),
            false => None,
        };
        if slot.is_none() && retriable && !left {
            self.sinks.retry_limit_exceeded(worker);
        }
        slot
    }

    /// The response passed on: charged to the stats, with Envoy's response headers
    /// (`x-envoy-upstream-service-time`, the attempt count), the weighted cluster's
    /// mutations and the hash policy's cookie; a body still arriving is cut off where the
    /// route timeout or a stream duration ends (`idle`), an upgrade's tunnel excepted.
    #[inline(always)]
    fn finish(
        &mut self,
        mut resp: Response<ProxyBody>,
        upstream_start: Instant,
        idle: &StreamIdle,
    ) -> Response<ProxyBody> {
        let (cfg, worker) = (&self.conn.config, self.conn.worker);
        let elapsed = upstream_start.elapsed();
        let status = resp.status().as_u16();
        self.sinks
            .charge(worker, status, Some(elapsed.as_millis() as u64));
        if !cfg.suppress_envoy_headers {
            resp.headers_mut().insert(
                X_ENVOY_UPSTREAM_SERVICE_TIME.clone(),
                decimal_value(self.deadlines.start.elapsed().as_millis() as u64),
            );
        }
        if self.routed.vh.attempt_count_response {
            resp.headers_mut().insert(
                X_ENVOY_ATTEMPT_COUNT.clone(),
                decimal_value(self.attempt.into()),
            );
        }
        if let Some(w) = self.target.weighted {
            w.response_headers
                .apply(resp.headers_mut(), self.routed.fcx);
        }
        if let Some(cookie) = self.set_cookie.take() {
            resp.headers_mut().append(header::SET_COOKIE, *cookie);
        }
        if !self.head.upgrade && !resp.body().is_end_stream() {
            let stats = &self.target.pool.stats;
            let cut = self.deadlines.body_cut(
                resp.extensions().get::<StreamEnds>(),
                &stats.rq.timeout,
                &cfg.stats.downstream_rq_max_duration_reached,
                &stats.rq_max_duration_reached,
            );
            if let Some((deadline, counter, expiry)) = cut {
                idle.set_response_deadline(deadline, counter.clone(), expiry);
            }
        }
        resp
    }

    /// The reply when the attempts end with no response passed on: Envoy's `504` for the
    /// stream's duration (not charged), else the last retriable response kept, else the
    /// local reply for how the last attempt failed, charged and with the attempt count.
    fn reply_without_response(
        &mut self,
        outcome: &mut Outcome,
        idle: &StreamIdle,
    ) -> Response<ProxyBody> {
        let (cfg, worker) = (&self.conn.config, self.conn.worker);
        if self.deadlines.duration_passed() {
            cfg.stats.downstream_rq_max_duration_reached.inc(worker);
            outcome.flags = "-";
            // gRPC's DEADLINE_EXCEEDED rather than the 504's UNAVAILABLE, as Envoy.
            let mut r = local_reply(StatusCode::GATEWAY_TIMEOUT, DURATION_TIMEOUT);
            r.extensions_mut().insert(LocalReply(Some(4)));
            return r;
        }
        let attempt_count = self.routed.vh.attempt_count_response;
        if let Some(mut resp) = self.last_response.take() {
            self.sinks.charge(worker, resp.status().as_u16(), None);
            if !cfg.suppress_envoy_headers {
                resp.headers_mut().insert(
                    X_ENVOY_UPSTREAM_SERVICE_TIME.clone(),
                    decimal_value(self.deadlines.start.elapsed().as_millis() as u64),
                );
            }
            if attempt_count {
                resp.headers_mut().insert(
                    X_ENVOY_ATTEMPT_COUNT.clone(),
                    decimal_value(self.attempt.into()),
                );
            }
            return resp;
        }
        let mut reply = self.failure_reply(outcome, idle);
        // As Envoy's router, the reply to an upstream failure or timeout is the code the
        // request ends with; a stream's duration running out is not charged.
        if !matches!(self.last_error, Some(AttemptError::MaxDuration)) {
            self.sinks.charge(worker, reply.status().as_u16(), None);
        }
        // Envoy's router counts its attempts on its own replies too.
        if attempt_count && self.attempt > 0 {
            reply.headers_mut().insert(
                X_ENVOY_ATTEMPT_COUNT.clone(),
                decimal_value(self.attempt.into()),
            );
        }
        reply
    }

    /// Envoy's local reply for how the last attempt failed, or for the route timeout, and
    /// its response flag.
    fn failure_reply(&self, outcome: &mut Outcome, idle: &StreamIdle) -> Response<ProxyBody> {
        match self.last_error {
            None | Some(AttemptError::PerTryTimeout)
                if self.deadlines.route_passed() || self.last_error.is_none() =>
            {
                self.sinks.timeout(self.conn.worker);
                outcome.flags = "UT";
                self.deadlines.reply.response()
            }
            Some(AttemptError::PerTryTimeout) => {
                outcome.flags = "UT";
                self.deadlines.reply.response()
            }
            Some(AttemptError::Overflow) => {
                outcome.flags = "UO";
                overflow_reply()
            }
            Some(AttemptError::ConnectFailure) => {
                outcome.flags = "UF";
                local_reply(StatusCode::SERVICE_UNAVAILABLE, UPSTREAM_CONNECT_ERROR)
            }
            Some(AttemptError::Protocol) => {
                outcome.flags = "UPE";
                local_reply(StatusCode::BAD_GATEWAY, UPSTREAM_PROTOCOL_ERROR)
            }
            Some(AttemptError::Reset) => {
                outcome.flags = "UC";
                local_reply(StatusCode::SERVICE_UNAVAILABLE, UPSTREAM_RESET)
            }
            Some(AttemptError::Refused) => {
                outcome.flags = "UR";
                local_reply(StatusCode::SERVICE_UNAVAILABLE, UPSTREAM_REFUSED)
            }
            Some(AttemptError::HeadOverflow) => {
                outcome.flags = "UR";
                local_reply(StatusCode::SERVICE_UNAVAILABLE, UPSTREAM_REMOTE_RESET)
            }
            Some(AttemptError::MaxDuration) => {
                outcome.flags = "UMSDR";
                // Envoy's `408` while the client's request is still arriving.
                let status = if idle.request_complete() {
                    StatusCode::GATEWAY_TIMEOUT
                } else {
                    StatusCode::REQUEST_TIMEOUT
                };
                local_reply(status, UPSTREAM_DURATION_REACHED)
            }
            None => local_reply(StatusCode::GATEWAY_TIMEOUT, UPSTREAM_TIMEOUT),
        }
    }
}
