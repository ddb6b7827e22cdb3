//! The admin server (Envoy's `/ready`, `/stats`, `/config_dump`, …), served by hyper on the
//! main thread. It reads the managers directly (it runs on their thread) and the workers'
//! stat cells, so it answers however busy the workers are.

mod config_dump;
mod handlers;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::listener::accept_backoff::{is_transient, AcceptBackoff};
use crate::server::Server;
use crate::stats::MAIN_THREAD;

pub use config_dump::{config_dump, timestamp};

/// Binds the admin address; the caller reports a bind error as a start-up failure.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

/// Serves admin requests until the process exits. The bound address is first written to
/// `--admin-address-path`, if given (as Envoy does, a failure is logged, not fatal).
pub async fn serve(listener: TcpListener, server: Rc<Server>) {
    if let Some(path) = &server.options.admin_address_path {
        match listener.local_addr() {
            Ok(address) => {
                // Written aside and renamed, so a reader never sees a partial address.
                let mut partial = path.clone().into_os_string();
                partial.push(".tmp");
                let written = std::fs::write(&partial, address.to_string())
                    .and_then(|()| std::fs::rename(&partial, path));
                if let Err(e) = written {
                    tracing::error!(path = %path.display(), error = %e, "cannot write the admin address");
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read the admin address"),
        }
    }
    let accept_errors = server
        .store
        .counter("listener.admin.downstream_cx_accept_error");
    let mut backoff = AcceptBackoff::new();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => {
                backoff.accepted("admin");
                s
            }
            Err(e) if is_transient(&e) => continue,
            Err(e) => {
                // Typically EMFILE: the connection stays queued and the socket readable, so
                // an immediate retry would spin the main thread. One pause at a time.
                accept_errors.inc(MAIN_THREAD);
                let pause = backoff.failed("admin", &e);
                tokio::time::sleep(pause).await;
                backoff.resume();
                continue;
            }
        };
        let server = server.clone();
        tokio::task::spawn_local(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(handlers::handle(&server, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

/// A response with a body and content type.
pub(crate) fn response(
    status: u16,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}
