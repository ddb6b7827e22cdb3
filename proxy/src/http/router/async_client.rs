//! A worker's own requests to a cluster (Envoy's `Http::AsyncClient`): what filters ask
//! of a service before the request goes on (an authorization check), and the router's
//! request mirrors. The request goes out as one of the cluster's (its pool, circuit
//! breakers and `upstream_rq_*` stats), in the form the cluster speaks (HTTP/1.1 or
//! HTTP/2), bounded by a deadline; the answer is read whole, up to a limit.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Version};
use http_body_util::BodyExt;
use hyper::body::Body as _;

use crate::http::codec::body::ProxyBody;
use crate::http::request_stats::StatSinks;
use crate::http::route::RetryPolicy;
use crate::http::router::pool;
use crate::protocol::message::{RequestMessage, ResponseMessage};
use crate::stats::Store;
use crate::upstream::{ClusterInfo, ThreadLocalClusterManager};
use courier_runtime::event::rt;

/// The most of an answer's body a worker's own request reads: past it, the exchange
/// fails (a service answering more is broken, and a worker must not hold it).
pub const MAX_ANSWER_BYTES: usize = 4 << 20;

/// Why a worker's request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum AsyncFailure {
    /// The cluster is not (or no longer) known.
    #[error("cluster '{0}' does not exist")]
    NoCluster(String),
    /// No host to send to.
    #[error("no healthy upstream")]
    NoHealthyHost,
    /// The cluster's circuit breaker is open.
    #[error("upstream overflow")]
    Overflow,
    /// The request went out but the exchange broke.
    #[error("upstream reset: {0}")]
    Reset(String),
    /// The deadline passed first.
    #[error("timeout")]
    Timeout,
}

static X_ENVOY_INTERNAL: HeaderName = HeaderName::from_static("x-envoy-internal");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// What Envoy's async client adds to a worker's own request (its request options'
/// `send_internal` and `send_xff`, both on by default; each caller turns them off where
/// Envoy's does).
#[derive(Debug, Clone, Copy)]
pub struct EnvoyHeaders {
    /// `x-envoy-internal: true`.
    pub internal: bool,
    /// The machine's own address appended to `x-forwarded-for`.
    pub xff: bool,
}

impl EnvoyHeaders {
    /// Both (Envoy's default: Lua's `httpCall()`, OAuth2's token calls, gRPC services
    /// without `skip_envoy_headers`, request mirrors).
    pub const ALL: EnvoyHeaders = EnvoyHeaders {
        internal: true,
        xff: true,
    };
    /// No `x-forwarded-for` (the HTTP authorization service, JWKS fetches).
    pub const NO_XFF: EnvoyHeaders = EnvoyHeaders {
        internal: true,
        xff: false,
    };
    /// Neither (`skip_envoy_headers`).
    pub const NONE: EnvoyHeaders = EnvoyHeaders {
        internal: false,
        xff: false,
    };

    /// A gRPC service's: both, unless its `skip_envoy_headers`.
    pub fn grpc(client: &crate::upstream::async_client::grpc::GrpcClient) -> EnvoyHeaders {
        match client.sends_envoy_headers() {
            true => EnvoyHeaders::ALL,
            false => EnvoyHeaders::NONE,
        }
    }

    /// Adds them to `headers`, and, as Envoy's router does for a call with a timeout,
    /// `x-envoy-expected-rq-timeout-ms`.
    pub(crate) fn apply(self, headers: &mut HeaderMap, timeout: Option<Duration>) {
        if self.internal {
            headers.insert(X_ENVOY_INTERNAL.clone(), HeaderValue::from_static("true"));
        }
        if self.xff {
            let local = crate::server::local_info::local_address().to_string();
            let v = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
                Some(prev) if !prev.is_empty() => format!("{prev},{local}"),
                _ => local,
            };
            if let Ok(v) = HeaderValue::from_str(&v) {
                headers.insert(X_FORWARDED_FOR.clone(), v);
            }
        }
        if let Some(t) = timeout.filter(|t| !t.is_zero()) {
            headers.insert(
                super::X_ENVOY_EXPECTED_RQ_TIMEOUT_MS.clone(),
                HeaderValue::from(t.as_millis() as u64),
            );
        }
    }
}

/// Sends `req` to the cluster named `cluster` on this worker, bounded by `timeout`, with
/// the `envoy` headers, and reads the answer whole.
pub async fn send(
    cluster: &str,
    req: RequestMessage<Bytes>,
    store: &Store,
    worker: usize,
    timeout: Option<Duration>,
    envoy: EnvoyHeaders,
) -> Result<ResponseMessage, AsyncFailure> {
    send_retried(
        cluster,
        req,
        store,
        worker,
        timeout,
        envoy,
        &RetryPolicy::none(),
    )
    .await
}

/// `req` in the form `cluster` speaks: HTTP/2's authority in the URI, HTTP/1.1's `host`.
pub(crate) fn request_for(
    cluster: &ClusterInfo,
    req: RequestMessage<ProxyBody>,
) -> Result<Request<ProxyBody>, http::Error> {
    let http2 = cluster.http2;
    let mut uri = http::Uri::builder();
    if http2 {
        uri = uri.scheme("http").authority(req.authority.as_str());
    }
    let uri = uri.path_and_query(req.path.as_str()).build()?;
    let mut out = Request::builder()
        .method(req.method)
        .version(if http2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        })
        .uri(uri)
        .body(req.body)?;
    *out.headers_mut() = req.headers;
    if http2 {
        out.headers_mut().remove(http::header::HOST);
    } else {
        out.headers_mut().insert(
            http::header::HOST,
            http::HeaderValue::from_str(&req.authority)?,
        );
    }
    Ok(out)
}

/// Admits a worker's own request to `cluster` as one of its requests: refused when the
/// cluster's request breaker is open (`upstream_rq_pending_overflow`) or no host is
/// healthy (`upstream_cx_none_healthy`); else the host it goes to.
pub(crate) fn admit(
    cluster: &ClusterInfo,
    pool: &pool::ClusterPool,
    worker: usize,
) -> Result<Arc<crate::upstream::Host>, AsyncFailure> {
    if pool.breakers.requests.get() >= cluster.thresholds.max_requests {
        pool.stats.rq_pending_overflow.inc(worker);
        return Err(AsyncFailure::Overflow);
    }
    pool::choose_host(cluster, None).ok_or_else(|| {
        cluster.stats.upstream_cx_none_healthy.inc(worker);
        AsyncFailure::NoHealthyHost
    })
}

/// Sends `req` to `cluster` as a request of that cluster's (its circuit breakers and
/// stats), bounded by `deadline`; the answer is read whole when `read` (else dropped as
/// it comes, and an empty body returned).
pub(crate) async fn exchange(
    cluster: &Arc<ClusterInfo>,
    req: Request<ProxyBody>,
    store: &Store,
    worker: usize,
    deadline: Option<Instant>,
    read: bool,
) -> Result<ResponseMessage, AsyncFailure> {
    let pool = pool::cluster_pool(cluster, store, worker);
    let internal = is_internal(&req);
    let answer = attempt(cluster, &pool, req, worker, deadline, read, internal).await;
    if let Ok(resp) = &answer {
        pool.stats
            .rq
            .charge(worker, resp.head.status.as_u16(), internal);
    }
    answer
}

/// Sends `req` (its body whole) to the cluster named `cluster` with the `envoy` headers,
/// retried as Envoy's async
/// client retries under a route retry `policy`: an answer or failure the policy retries
/// is followed by the policy's jittered back-off and another attempt, up to
/// `num_retries`, each attempt bounded by `per_try_timeout` and all of them by `timeout`;
/// counted as the router counts retries (`upstream_rq_retry`, `_retry_success`,
/// `_retry_limit_exceeded`, `_retry_overflow`, a retried answer's code under `retry.`).
pub async fn send_retried(
    cluster: &str,
    req: RequestMessage<Bytes>,
    store: &Store,
    worker: usize,
    timeout: Option<Duration>,
    envoy: EnvoyHeaders,
    policy: &RetryPolicy,
) -> Result<ResponseMessage, AsyncFailure> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let Some(info) = ThreadLocalClusterManager::with(|tlcm| tlcm.snapshot().get(cluster).cloned())
    else {
        return Err(AsyncFailure::NoCluster(cluster.to_owned()));
    };
    let pool = pool::cluster_pool(&info, store, worker);
    let stats = &pool.stats.rq;
    let mut headers = req.headers;
    let per_try = policy.per_try_timeout;
    envoy.apply(
        &mut headers,
        match (per_try, timeout) {
            (Some(p), Some(t)) => Some(p.min(t)),
            (p, t) => p.or(t),
        },
    );
    let internal = headers
        .get(&X_ENVOY_INTERNAL)
        .is_some_and(|v| v.as_bytes() == b"true");
    let mut whole = Some(RequestMessage { headers, ..req });
    let retries_anything = policy.retries_anything();
    let mut retries = 0;
    loop {
        // The request is kept while another attempt may follow, else sent as it is.
        let another = retries_anything && retries < policy.num_retries;
        let message = match (another, whole.as_ref()) {
            (true, Some(r)) => RequestMessage {
                method: r.method.clone(),
                path: r.path.clone(),
                authority: r.authority.clone(),
                headers: r.headers.clone(),
                body: r.body.clone(),
            },
            _ => match whole.take() {
                Some(r) => r,
                None => return Err(AsyncFailure::Reset("no request left to send".into())),
            },
        };
        let message = RequestMessage {
            method: message.method,
            path: message.path,
            authority: message.authority,
            headers: message.headers,
            body: ProxyBody::full(message.body),
        };
        let one = request_for(&info, message).map_err(|e| AsyncFailure::Reset(e.to_string()))?;
        let try_deadline = match (per_try.map(|p| Instant::now() + p), deadline) {
            (Some(p), Some(d)) => Some(p.min(d)),
            (p, d) => p.or(d),
        };
        let answer = attempt(&info, &pool, one, worker, try_deadline, true, internal).await;
        let global_passed = deadline.is_some_and(|d| Instant::now() >= d);
        let retriable = match &answer {
            Ok(r) => policy.retry_response(r.head.status.as_u16(), &r.head.headers),
            Err(AsyncFailure::Reset(_)) => policy.retry_reset() || policy.retry_connect_failure(),
            Err(AsyncFailure::Timeout) => !global_passed && policy.retry_timeout(),
            Err(_) => false,
        };
        let status = answer.as_ref().ok().map(|r| r.head.status.as_u16());
        if retriable && retries < policy.num_retries && !global_passed {
            if let Some(slot) = retry_slot(&info, &pool, worker) {
                if let Some(code) = status {
                    stats.charge_retried(worker, code);
                }
                stats.retry.inc(worker);
                retries += 1;
                if !super::backoff(Some(policy), retries, deadline).await {
                    // The call's timeout passes during the back-off.
                    stats.timeout.inc(worker);
                    drop(slot);
                    return Err(AsyncFailure::Timeout);
                }
                drop(slot);
                continue;
            }
        } else if retriable && retries >= policy.num_retries {
            stats.retry_limit_exceeded.inc(worker);
        }
        if let Some(code) = status {
            stats.charge(worker, code, internal);
            if retries > 0 && !retriable {
                stats.retry_success.inc(worker);
            }
        }
        return answer;
    }
}

/// A place under the cluster's retry breaker (`max_retries`), or `None`, counted in
/// `upstream_rq_retry_overflow`.
fn retry_slot(
    cluster: &ClusterInfo,
    pool: &Rc<pool::ClusterPool>,
    worker: usize,
) -> Option<super::RetrySlot> {
    super::RetrySlot::take(
        pool,
        cluster,
        worker,
        StatSinks {
            cluster: &pool.stats.rq,
            route: None,
            vcluster: None,
            internal: false,
        },
    )
}

fn is_internal(req: &Request<ProxyBody>) -> bool {
    req.headers()
        .get("x-envoy-internal")
        .is_some_and(|v| v.as_bytes() == b"true")
}

/// One attempt of a request of the cluster's, uncharged: admitted by its breakers, sent,
/// its answer read (when `read`) before `deadline`.
async fn attempt(
    cluster: &Arc<ClusterInfo>,
    pool: &Rc<pool::ClusterPool>,
    req: Request<ProxyBody>,
    worker: usize,
    deadline: Option<Instant>,
    read: bool,
    internal: bool,
) -> Result<ResponseMessage, AsyncFailure> {
    let host = admit(cluster, pool, worker)?;
    let _request = pool.request_slot();
    let _active = pool.stats.rq_active.raise(worker);
    let exchange = async {
        let sinks = StatSinks {
            cluster: &pool.stats.rq,
            route: None,
            vcluster: None,
            internal,
        };
        let resp = crate::http::router::send_once(
            pool,
            cluster,
            &host,
            worker,
            &sinks,
            req,
            Default::default(),
        )
        .await
        .map_err(|e| AsyncFailure::Reset(format!("{e:?}")))?;
        let (head, body) = resp.into_parts();
        if !read {
            // Read off so that the connection goes back to the pool.
            let _ = body.collect().await;
            return Ok(ResponseMessage {
                head,
                body: Bytes::new(),
                trailers: None,
            });
        }
        let (body, trailers) = read_whole(body).await?;
        Ok(ResponseMessage {
            head,
            body,
            trailers,
        })
    };
    match rt::timeout(deadline, exchange).await {
        Some(Ok(resp)) => Ok(resp),
        Some(Err(e)) => {
            tracing::debug!(cluster = %cluster.name, error = %e, "async request failed");
            Err(e)
        }
        None => {
            pool.stats.rq.timeout.inc(worker);
            Err(AsyncFailure::Timeout)
        }
    }
}

/// A body's data and trailers, up to [`MAX_ANSWER_BYTES`].
async fn read_whole(mut body: ProxyBody) -> Result<(Bytes, Option<HeaderMap>), AsyncFailure> {
    let mut data = bytes::BytesMut::new();
    let mut trailers = None;
    while let Some(frame) =
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
    {
        let frame = frame.map_err(|e| AsyncFailure::Reset(e.to_string()))?;
        match frame.into_data() {
            Ok(d) if data.len() + d.len() > MAX_ANSWER_BYTES => {
                return Err(AsyncFailure::Reset(format!(
                    "answer larger than {MAX_ANSWER_BYTES} bytes"
                )));
            }
            Ok(d) => data.extend_from_slice(&d),
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    Ok((data.freeze(), trailers))
}
