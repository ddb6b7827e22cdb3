//! A request's check by a global rate limit filter ([`crate::filters::http::ratelimit`]):
//! the call the filter builds from the request's descriptors, sent from the worker, and
//! the filter's decision on the answer, counted in the routed cluster's scope.

use http::{HeaderName, HeaderValue, Request, Response};

use super::PoolCounters;
use crate::filters::http::ratelimit::{Limited, Outcome as Checked, RateLimitFilter};
use crate::filters::http::ClusterCounters;
use crate::http::codec::body::ProxyBody;
use crate::http::conn_manager::conn_info::ConnInfo;
use crate::http::route::per_filter::FilterConfigs;
use crate::http::route::rate_limits::RateLimitView;
use crate::http::router::async_client::EnvoyHeaders;
use crate::http::router::{async_client, Outcome};
use crate::protocol::header_mutations::FormatContext;

/// Runs `f` on `req`: `Ok` with the fields its answer is to take when it goes on, `Err`
/// with the reply that ends it.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn check(
    f: &RateLimitFilter,
    conn: &ConnInfo,
    levels: [&FilterConfigs; 3],
    view: &RateLimitView<'_>,
    cluster: Option<&str>,
    cx: &FormatContext<'_>,
    req: &mut Request<ProxyBody>,
    outcome: &mut Outcome,
) -> Result<Option<Vec<(HeaderName, HeaderValue)>>, Box<Response<ProxyBody>>> {
    // As Envoy, only a request whose route's cluster is known is checked.
    let Some(counters) = cluster.and_then(|name| PoolCounters::of(conn, name)) else {
        return Ok(None);
    };
    let Some(call) = f.call(levels, req.headers(), view) else {
        return Ok(None);
    };
    let answer = async_client::send(
        f.service.cluster(),
        call,
        &conn.config.store,
        conn.worker,
        Some(f.timeout),
        EnvoyHeaders::grpc(&f.service),
    )
    .await;
    if let Err(e) = &answer {
        tracing::debug!(cluster = f.service.cluster(), error = %e, "rate limit call failed");
    }
    let limited = f.decide(answer.as_ref().ok(), req.headers_mut(), cx);
    let leaves = f.leaves();
    let counted = match &limited {
        Limited::Pass(_, c) | Limited::Refuse(_, c) => *c,
    };
    match counted {
        Checked::Ok => counters.inc(&leaves.ok),
        Checked::OverLimit => {
            counters.inc(&leaves.over_limit);
            counters.charge(f.rate_limited_status());
        }
        Checked::Error => counters.inc(&leaves.error),
        Checked::FailureModeAllowed => {
            counters.inc(&leaves.error);
            counters.inc(&leaves.failure_mode_allowed);
        }
    }
    match limited {
        Limited::Pass(fields, _) => Ok(fields),
        Limited::Refuse(reply, Checked::OverLimit) => {
            outcome.ended("RL", crate::filters::http::ratelimit::RATE_LIMITED);
            Err(reply)
        }
        Limited::Refuse(reply, _) => {
            outcome.ended("RLSE", crate::filters::http::ratelimit::RATE_LIMITER_ERROR);
            Err(reply)
        }
    }
}
