//! Real upstreams that identify themselves, as tokio tasks stopped on drop.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A server task with its port and counters; aborted (and its port closed) on drop.
pub struct Upstream {
    /// Its name (what it answers).
    pub name: String,
    /// Where it listens.
    pub port: u16,
    /// Connections accepted.
    pub accepted: Arc<AtomicU64>,
    /// Requests (HTTP) or greetings (TCP) served.
    pub served: Arc<AtomicU64>,
    /// Connections open now (accepted and not yet closed).
    pub open: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Counts a connection open until its task ends (however it ends: closed or aborted).
struct OpenGuard(Arc<AtomicU64>);

impl OpenGuard {
    fn new(open: &Arc<AtomicU64>) -> OpenGuard {
        open.fetch_add(1, Ordering::SeqCst);
        OpenGuard(open.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Upstream {
    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections open now: accepted, and not yet closed by either side.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::SeqCst)
    }

    /// A TCP server that writes `upstream <name>\n` on accept, then echoes until EOF.
    pub async fn tcp_echo(name: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let accepted = Arc::new(AtomicU64::new(0));
        let served = Arc::new(AtomicU64::new(0));
        let open = Arc::new(AtomicU64::new(0));
        let greeting = format!("upstream {name}\n");
        let task = {
            let (accepted, served, open) = (accepted.clone(), served.clone(), open.clone());
            tokio::spawn(async move {
                let mut conns = tokio::task::JoinSet::new();
                loop {
                    let Ok((mut sock, _)) = listener.accept().await else {
                        return;
                    };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let greeting = greeting.clone();
                    let served = served.clone();
                    let open = OpenGuard::new(&open);
                    conns.spawn(async move {
                        let _open = open;
                        if sock.write_all(greeting.as_bytes()).await.is_err() {
                            return;
                        }
                        served.fetch_add(1, Ordering::SeqCst);
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            match sock.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if sock.write_all(&buf[..n]).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                        let _ = sock.shutdown().await;
                    });
                    while conns.try_join_next().is_some() {}
                }
            })
        };
        Upstream {
            name: name.to_string(),
            port,
            accepted,
            served,
            open,
            task,
        }
    }

    /// An HTTP/1.1 + HTTP/2 (prior knowledge) server answering `upstream <name>` with
    /// header `x-upstream: <name>`; gRPC requests (`content-type: application/grpc`) get one
    /// length-prefixed message holding the name and `grpc-status: 0`; HTTP/1.1 upgrade
    /// requests (websocket) get a `101` and their bytes echoed.
    pub async fn http(name: &str) -> Upstream {
        Upstream::http_with(name, Behaviour::Ok).await
    }

    /// An HTTP server with a failure behaviour.
    pub async fn http_with(name: &str, behaviour: Behaviour) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let accepted = Arc::new(AtomicU64::new(0));
        let served = Arc::new(AtomicU64::new(0));
        let open = Arc::new(AtomicU64::new(0));
        let name_s: Arc<str> = name.into();
        let task = {
            let (accepted, served, open) = (accepted.clone(), served.clone(), open.clone());
            tokio::spawn(async move {
                let mut conns = tokio::task::JoinSet::new();
                loop {
                    let Ok((sock, _)) = listener.accept().await else {
                        return;
                    };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    if behaviour == Behaviour::Reset {
                        // A zero linger never blocks: the close sends a RST.
                        #[allow(deprecated)]
                        let _ = sock.set_linger(Some(Duration::ZERO));
                        drop(sock);
                        continue;
                    }
                    let (name, served) = (name_s.clone(), served.clone());
                    let open = OpenGuard::new(&open);
                    conns.spawn(async move {
                        let _open = open;
                        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                            let (name, served) = (name.clone(), served.clone());
                            async move {
                                let n = served.fetch_add(1, Ordering::SeqCst) + 1;
                                Ok::<_, Infallible>(respond(&name, behaviour, n, req).await)
                            }
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        )
                        .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(sock), svc)
                        .await;
                    });
                    while conns.try_join_next().is_some() {}
                }
            })
        };
        Upstream {
            name: name.to_string(),
            port,
            accepted,
            served,
            open,
            task,
        }
    }
}

/// How an HTTP upstream misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Answers at once.
    Ok,
    /// Answers after the delay.
    Slow(Duration),
    /// Resets every connection at accept.
    Reset,
    /// Answers 503 to every Nth request.
    FailEvery(u64),
}

async fn respond(
    name: &str,
    behaviour: Behaviour,
    n: u64,
    mut req: Request<Incoming>,
) -> Response<http_body_util::combinators::BoxBody<Bytes, Infallible>> {
    if let Some(protocol) = req.headers().get(hyper::header::UPGRADE).cloned() {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let (mut r, mut w) = tokio::io::split(hyper_util::rt::TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        return Response::builder()
            .status(101)
            .header(hyper::header::UPGRADE, protocol)
            .header(hyper::header::CONNECTION, "upgrade")
            .header("x-upstream", name)
            .body(http_body_util::Empty::new().boxed())
            .expect("response");
    }
    let grpc = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    let _ = req.into_body().collect().await;
    if let Behaviour::Slow(d) = behaviour {
        tokio::time::sleep(d).await;
    }
    if let Behaviour::FailEvery(k) = behaviour {
        if n.is_multiple_of(k) {
            return Response::builder()
                .status(503)
                .header("x-upstream", name)
                .body(Full::new(Bytes::from("failing\n")).boxed())
                .expect("response");
        }
    }
    if grpc {
        let msg = format!("upstream {name}");
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        frame.extend_from_slice(msg.as_bytes());
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let body = http_body_util::StreamBody::new(futures::stream::iter(vec![
            Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from(frame))),
            Ok(hyper::body::Frame::trailers(trailers)),
        ]));
        return Response::builder()
            .status(200)
            .header("content-type", "application/grpc")
            .header("x-upstream", name)
            .body(body.boxed())
            .expect("response");
    }
    Response::builder()
        .status(200)
        .header("x-upstream", name)
        .body(Full::new(Bytes::from(format!("upstream {name}\n"))).boxed())
        .expect("response")
}

/// A port where connections are refused for the rest of the process: a socket is bound to
/// it and never listens. (A merely free port can meanwhile be taken by a listener of a test
/// running in parallel, which then answers.)
pub fn refused_port() -> u16 {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    let port = s
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("bound address")
        .port();
    // Held (bound, not listening) until the test process ends.
    std::mem::forget(s);
    port
}
