//! One HTTP/1.1 request to a collector cluster (Zipkin, OTLP/HTTP), over an idle
//! keep-alive connection to the same host when there is one.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The cluster is unknown or has no host.
    #[error("cluster '{0}' has no host")]
    NoHost(String),
    /// Connecting failed or took too long.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The host.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// The request failed or took longer than its timeout.
    #[error("request to {addr} failed: {reason}")]
    Request {
        /// The host.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
}

/// A request to a collector.
pub struct Post<'a> {
    /// The cluster whose host receives it.
    pub cluster: &'a str,
    /// The request path.
    pub path: &'a str,
    /// The `host` header.
    pub host: &'a str,
    /// The `content-type` header.
    pub content_type: &'a str,
    /// More headers (`request_headers_to_add`).
    pub headers: &'a [(http::HeaderName, http::HeaderValue)],
    /// The body.
    pub body: Bytes,
    /// How long connecting plus the exchange may take.
    pub timeout: Duration,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

thread_local! {
    /// Idle keep-alive connections to collectors, by address (main thread only): a report
    /// reuses one instead of opening a connection each time.
    static IDLE: RefCell<HashMap<SocketAddr, Vec<Sender>>> = RefCell::new(HashMap::new());
}

async fn connect(addr: SocketAddr) -> Result<Sender, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

fn take_idle(addr: SocketAddr) -> Option<Sender> {
    IDLE.with(|m| {
        let mut m = m.borrow_mut();
        let list = m.get_mut(&addr)?;
        while let Some(s) = list.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    })
}

/// Sends `req` to a host of its cluster (main thread only) and returns the status and body.
pub async fn post(req: Post<'_>) -> Result<(u16, Bytes), HttpError> {
    let addr = super::host_of(req.cluster).ok_or_else(|| HttpError::NoHost(req.cluster.into()))?;
    tokio::time::timeout(req.timeout, exchange(addr, &req))
        .await
        .unwrap_or_else(|_| {
            Err(HttpError::Request {
                addr,
                reason: format!("no response within {:?}", req.timeout),
            })
        })
}

async fn exchange(addr: SocketAddr, req: &Post<'_>) -> Result<(u16, Bytes), HttpError> {
    let mut sender = match take_idle(addr) {
        Some(s) => s,
        None => connect(addr)
            .await
            .map_err(|reason| HttpError::Connect { addr, reason })?,
    };
    let failed = |reason: String| HttpError::Request { addr, reason };
    let mut request = http::Request::post(req.path)
        .header(http::header::HOST, req.host)
        .header(http::header::CONTENT_TYPE, req.content_type)
        .body(Full::new(req.body.clone()))
        .map_err(|e| failed(e.to_string()))?;
    for (name, value) in req.headers {
        request.headers_mut().append(name.clone(), value.clone());
    }
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let status = response.status().as_u16();
    // The body is read to its end before the connection takes another request.
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| failed(e.to_string()))?
        .to_bytes();
    IDLE.with(|m| m.borrow_mut().entry(addr).or_default().push(sender));
    Ok((status, body))
}
