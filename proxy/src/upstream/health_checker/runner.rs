//! The main thread's health checking: a session per checked host, kept in step with the
//! cluster manager, each probing its host on its own timer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;

use super::event_log::HostEvent;
use super::{FailureKind, HealthCheck, HealthCheckStats, Outcome, Probe, Session, Transition};
use crate::stats::MAIN_THREAD;
use crate::transport_socket::tls::ClientTls;
use crate::upstream::{ClusterStats, Host, UpstreamContext};

/// A byte stream to a host: plain TCP or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connection kept between checks (`reuse_connection`).
enum Conn {
    Http1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
    Tcp(Box<dyn Io>),
}

/// What a session needs to know of its cluster.
struct Target {
    cluster: String,
    check: Arc<HealthCheck>,
    stats: Arc<HealthCheckStats>,
    cluster_stats: Arc<ClusterStats>,
    host: Arc<Host>,
    tls: Option<ClientTls>,
    bind: Option<crate::upstream::bind_config::BindConfig>,
    /// `upstream_proxy_protocol`: checks start with a header naming no connection.
    proxy_protocol: Option<crate::transport_socket::upstream_proxy_protocol::ProxyProtocolVersion>,
}

/// A running session.
struct Running {
    check: Arc<HealthCheck>,
    host: Arc<crate::upstream::HostStats>,
    task: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Keeps a session for every host of every health-checked cluster until the server ends.
pub async fn run(ctx: Rc<impl UpstreamContext + 'static>) {
    let mut changes = ctx.cluster_manager().borrow().subscribe();
    let mut sessions: HashMap<(String, SocketAddr), Running> = HashMap::new();
    loop {
        reconcile(&ctx, &mut sessions);
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// Starts sessions for new hosts (or changed checks) and stops those of hosts gone.
fn reconcile<C: UpstreamContext + 'static>(
    ctx: &Rc<C>,
    sessions: &mut HashMap<(String, SocketAddr), Running>,
) {
    let mut wanted: Vec<Target> = Vec::new();
    {
        let cm = ctx.cluster_manager().borrow();
        // A cluster's warming version is the one to check: it is waiting for its hosts'
        // first results, and it is what will serve.
        let warming = cm.warming().values().filter(|e| e.hosts_known);
        let active = cm
            .active()
            .values()
            .filter(|e| !cm.warming().contains_key(&e.info.name));
        for entry in warming.chain(active) {
            let info = &entry.info;
            let Some((check, stats)) = &info.health_check else {
                continue;
            };
            for host in &info.hosts.hosts {
                wanted.push(Target {
                    cluster: info.name.clone(),
                    check: check.clone(),
                    stats: stats.clone(),
                    cluster_stats: info.stats.clone(),
                    host: host.clone(),
                    tls: info.host_tls(host).cloned(),
                    bind: info.bind,
                    proxy_protocol: info.proxy_protocol,
                });
            }
        }
    }
    let keys: std::collections::HashSet<(String, SocketAddr)> = wanted
        .iter()
        .map(|t| (t.cluster.clone(), t.host.address))
        .collect();
    sessions.retain(|k, _| keys.contains(k));
    for target in wanted {
        let key = (target.cluster.clone(), target.host.address);
        if let Some(r) = sessions.get(&key) {
            if Arc::ptr_eq(&r.check, &target.check) && Arc::ptr_eq(&r.host, &target.host.stats) {
                continue;
            }
        }
        let running = Running {
            check: target.check.clone(),
            host: target.host.stats.clone(),
            task: tokio::task::spawn_local(session(ctx.clone(), target)),
        };
        sessions.insert(key, running);
    }
}

/// One host's checks, until its session is dropped.
async fn session<C: UpstreamContext + 'static>(ctx: Rc<C>, t: Target) {
    let check = &t.check;
    tokio::time::sleep(check.first_delay()).await;
    let mut state = Session::default();
    let mut conn: Option<Conn> = None;
    loop {
        t.stats.attempt.inc(MAIN_THREAD);
        let first = state.first_check;
        let failing_before = is_failing(&t.host);
        let outcome = match tokio::time::timeout(check.timeout, probe(check, &t, &mut conn)).await {
            Ok(o) => o,
            Err(_) => {
                conn = None;
                Outcome::Failure {
                    kind: FailureKind::Timeout,
                    retriable: false,
                    status: 0,
                }
            }
        };
        let (health, transition) = state.apply(outcome, &t.host.stats, check);
        count_and_log(&t, outcome, first, failing_before);
        let mut transition = transition;
        if health == super::State::Healthy && unejected_by_check(&ctx, &t) {
            transition = Transition::Changed;
        }
        if transition == Transition::Changed {
            tracing::debug!(cluster = %t.cluster, host = %t.host.address, flags = %t.host.stats.flags(), "health check changed a host");
            crate::upstream::health_refresh::refresh(&ctx, &t.cluster);
            set_gauges(&ctx.cluster_manager().borrow(), &t);
        }
        let had_traffic = t.cluster_stats.upstream_cx_total.value() > 0
            || t.cluster_stats.upstream_cx_tx_bytes_total.value() > 0
            || t.cluster_stats.upstream_cx_rx_bytes_total.value() > 0;
        tokio::time::sleep(check.next_interval(health, transition, had_traffic)).await;
    }
}

/// A passing check brings an outlier-ejected host back
/// (`successful_active_health_check_uneject_host`); whether it did.
fn unejected_by_check<C: UpstreamContext + 'static>(ctx: &Rc<C>, t: &Target) -> bool {
    let info = ctx
        .cluster_manager()
        .borrow()
        .get(&t.cluster)
        .map(|e| e.info.clone());
    info.is_some_and(|info| {
        crate::upstream::outlier_detection::on_health_check_passed(&info, &t.host)
    })
}

/// `health_check.healthy` and `degraded`: the cluster's hosts passing, and passing
/// degraded.
fn set_gauges(cm: &crate::upstream::ClusterManager, t: &Target) {
    use crate::upstream::HealthFlags as F;
    let Some(entry) = cm.warming().get(&t.cluster).or_else(|| cm.get(&t.cluster)) else {
        return;
    };
    let hosts = &entry.info.hosts.hosts;
    let count = |f: &dyn Fn(F) -> bool| hosts.iter().filter(|h| f(h.stats.flags())).count() as i64;
    t.stats
        .healthy
        .set(count(&|f| !f.intersects(F::FAILED_ACTIVE_HC)));
    t.stats
        .degraded
        .set(count(&|f| f.intersects(F::DEGRADED_ACTIVE_HC)));
}

fn is_failing(host: &Host) -> bool {
    host.stats
        .flags()
        .intersects(crate::upstream::HealthFlags::FAILED_ACTIVE_HC)
}

/// Counts a result in `health_check.*` and writes the events Envoy writes for it.
fn count_and_log(t: &Target, outcome: Outcome, first: bool, failing_before: bool) {
    let s = &t.stats;
    let failing_now = is_failing(&t.host);
    let log = |e: HostEvent| {
        if let Some(l) = &t.check.event_log {
            l.log(t.check.probe.type_name(), &t.cluster, t.host.address, e);
        }
    };
    match outcome {
        Outcome::Success { .. } => {
            s.success.inc(MAIN_THREAD);
            if failing_before && !failing_now {
                log(HostEvent::AddHealthy(first));
            } else if t.check.always_log_success {
                log(HostEvent::Success);
            }
        }
        Outcome::Failure { kind, status, .. } => {
            s.failure.inc(MAIN_THREAD);
            if kind != FailureKind::Active {
                s.network_failure.inc(MAIN_THREAD);
            }
            if !failing_before && failing_now {
                log(HostEvent::EjectUnhealthy(kind, status));
            }
            if first || t.check.always_log_failures {
                log(HostEvent::Failure(kind, first, status));
            }
        }
    }
}

/// Opens a connection to the target's host (TLS when its cluster has it, offering
/// `alpn`).
async fn connect(t: &Target, alpn: &[u8]) -> std::io::Result<Box<dyn Io>> {
    let mut tcp = crate::upstream::bind_config::open_tokio(t.host.address, t.bind.as_ref()).await?;
    if let Some(version) = t.proxy_protocol {
        use tokio::io::AsyncWriteExt;
        let header = crate::transport_socket::upstream_proxy_protocol::local_header(version);
        tcp.write_all(&header).await?;
    }
    let _ = tcp.set_nodelay(true);
    let Some(tls) = &t.tls else {
        return Ok(Box::new(tcp));
    };
    let (config, name) = tls
        .context
        .for_main_thread(t.host.address.ip(), t.host.hostname.as_deref(), alpn)
        .ok_or_else(|| std::io::Error::other("the cluster's TLS secrets have not arrived"))?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    Ok(Box::new(stream))
}

/// One probe, reusing `conn` when it is there and may be reused.
async fn probe(check: &HealthCheck, t: &Target, conn: &mut Option<Conn>) -> Outcome {
    let network = Outcome::Failure {
        kind: FailureKind::Network,
        retriable: false,
        status: 0,
    };
    let https = t.tls.is_some();
    match &check.probe {
        Probe::Tcp(tcp) => {
            let mut io = match conn.take() {
                Some(Conn::Tcp(io)) => io,
                _ => match connect(t, b"").await {
                    Ok(io) => io,
                    Err(_) => return network,
                },
            };
            let (outcome, keep) = tcp.check(&mut io).await;
            if keep && check.reuse_connection {
                *conn = Some(Conn::Tcp(io));
            }
            outcome
        }
        Probe::Http(h) => {
            let req = h.request(t.host.address, https);
            let resp = send(t, conn, req, h.http2).await;
            let Some(resp) = resp else { return network };
            let (outcome, close) = h.judge(resp).await;
            if close
                || !check.reuse_connection
                || matches!(
                    outcome,
                    Outcome::Failure {
                        kind: FailureKind::Network,
                        ..
                    }
                )
            {
                *conn = None;
            }
            outcome
        }
        Probe::Grpc(g) => {
            let req = g.request(https, t.host.address);
            let Some(resp) = send(t, conn, req, true).await else {
                return network;
            };
            let outcome = g.judge(resp).await;
            if !check.reuse_connection {
                *conn = None;
            }
            outcome
        }
    }
}

/// Sends `req` over HTTP/2 (`http2`) or HTTP/1.1, on the kept connection when it is
/// still open and speaks it, else on a new one.
async fn send(
    t: &Target,
    conn: &mut Option<Conn>,
    req: http::Request<Full<Bytes>>,
    http2: bool,
) -> Option<http::Response<hyper::body::Incoming>> {
    let kept = match conn.take() {
        Some(Conn::Http1(s)) if !http2 && !s.is_closed() => Some(Conn::Http1(s)),
        Some(Conn::Http2(s)) if http2 && !s.is_closed() => Some(Conn::Http2(s)),
        _ => None,
    };
    let mut sender = match kept {
        Some(c) => c,
        None => {
            let io = TokioIo::new(
                connect(t, if http2 { b"h2" } else { b"http/1.1" })
                    .await
                    .ok()?,
            );
            // The connection runs as a task of its own until either side closes it.
            if http2 {
                let (s, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .ok()?;
                tokio::task::spawn_local(c);
                Conn::Http2(s)
            } else {
                let (s, c) = hyper::client::conn::http1::handshake(io).await.ok()?;
                tokio::task::spawn_local(c);
                Conn::Http1(s)
            }
        }
    };
    let resp = match &mut sender {
        Conn::Http1(s) => {
            s.ready().await.ok()?;
            s.send_request(req).await.ok()?
        }
        Conn::Http2(s) => {
            s.ready().await.ok()?;
            s.send_request(req).await.ok()?
        }
        Conn::Tcp(_) => return None,
    };
    *conn = Some(sender);
    Some(resp)
}
