//! The management HTTP API of `courier-cp`.
//!
//! | request | answer |
//! |---|---|
//! | `GET /status` | per-node status (streams, versions sent/ACKed, last NACK, counters), `last_error` |
//! | `GET /snapshot` | the default snapshot and per-node ones, resources in JSON |
//! | `GET /resources/{type}/{name}[?node=K]` | one resource of the snapshot served to key K (default snapshot without) |
//! | `PUT /resources/{type}/{name}[?node=K]` | add/replace one resource (body: YAML or JSON, proto3 JSON mapping) for all nodes, or in K's override |
//! | `DELETE /resources/{type}/{name}[?node=K]` | remove one resource |
//! | `GET /metrics` | Prometheus text |
//! | `GET /version` | `courier-cp <version> (<git rev>)` |
//!
//! `{type}` is `clusters`, `endpoints`, `listeners`, `routes`, `secrets` or `runtimes`. Errors answer
//! `{"error": "...", "path": "<field path>"}` with 400 (invalid body), 404 (unknown) or 409
//! (the change would make a snapshot inconsistent).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::App;
use crate::resource::ResourceType;
use crate::status::StatusRegistry;

/// Largest accepted request body.
const MAX_BODY: usize = 16 * 1024 * 1024;

type Body = Full<Bytes>;

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_else(|_| "{}".to_string());
    text.push('\n');
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

fn text_response(status: StatusCode, text: String, content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp
}

fn error(status: StatusCode, path: &str, message: impl Into<String>) -> Response<Body> {
    json_response(status, &json!({ "error": message.into(), "path": path }))
}

/// Decodes `%XX` escapes of a path segment or query value.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| percent_decode(v))
    })
}

/// The admin API over `app` and `status`.
#[derive(Clone)]
pub struct Admin {
    app: Arc<App>,
    status: StatusRegistry,
}

impl Admin {
    /// The API for `app`.
    pub fn new(app: Arc<App>, status: StatusRegistry) -> Admin {
        Admin { app, status }
    }

    /// Answers one request.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = req.uri().query().map(str::to_string);
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (&method, segments.as_slice()) {
            (&Method::GET, ["status"]) => json_response(StatusCode::OK, &self.app.status_json()),
            (&Method::GET, ["snapshot"]) => {
                json_response(StatusCode::OK, &self.app.snapshot_json())
            }
            (&Method::GET, ["metrics"]) => {
                text_response(StatusCode::OK, self.metrics(), "text/plain; version=0.0.4")
            }
            (&Method::GET, ["version"]) => text_response(
                StatusCode::OK,
                format!("{}\n", crate::version_string()),
                "text/plain",
            ),
            (_, ["resources", kind, name]) => {
                let Some(kind) = ResourceType::from_plural(kind) else {
                    return error(
                        StatusCode::NOT_FOUND,
                        "",
                        format!("unknown resource type {kind:?} (clusters, endpoints, listeners, routes, secrets, runtimes)"),
                    );
                };
                let name = percent_decode(name);
                let node = query_param(query.as_deref(), "node");
                self.resource(method, kind, &name, node.as_deref(), req)
                    .await
            }
            _ => error(
                StatusCode::NOT_FOUND,
                "",
                format!("no route for {method} {path}"),
            ),
        }
    }

    async fn resource(
        &self,
        method: Method,
        kind: ResourceType,
        name: &str,
        node: Option<&str>,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let result = match method {
            Method::GET => {
                let snap = match node {
                    Some(n) => self.status_snapshot(n),
                    None => self.app_default(),
                };
                return match snap.and_then(|s| s.get(kind, name).map(|r| r.to_json())) {
                    Some(v) => json_response(StatusCode::OK, &v),
                    None => error(
                        StatusCode::NOT_FOUND,
                        "",
                        format!("no {kind} named {name:?}"),
                    ),
                };
            }
            Method::PUT => {
                let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => {
                        return error(StatusCode::BAD_REQUEST, "", format!("reading body: {e}"))
                    }
                };
                let Ok(text) = std::str::from_utf8(&body) else {
                    return error(StatusCode::BAD_REQUEST, "", "body is not UTF-8");
                };
                self.app.put_resource(kind, name, text, node)
            }
            Method::DELETE => self.app.delete_resource(kind, name, node),
            _ => {
                return error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "",
                    format!("{method} not allowed"),
                )
            }
        };
        match result {
            Ok(v) => json_response(StatusCode::OK, &v),
            Err(e) => json_response(
                StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
                &e.to_json(),
            ),
        }
    }

    fn status_snapshot(&self, key: &str) -> Option<Arc<crate::Snapshot>> {
        self.app.cache().snapshot(key)
    }

    fn app_default(&self) -> Option<Arc<crate::Snapshot>> {
        self.app.cache().default_snapshot()
    }

    fn metrics(&self) -> String {
        let mut out = self.status.render_prometheus();
        let last_error = self.app.last_error().is_some();
        out.push_str(
            "# HELP courier_cp_last_load_failed 1 if the last reload or API change failed.\n",
        );
        out.push_str("# TYPE courier_cp_last_load_failed gauge\n");
        out.push_str(&format!(
            "courier_cp_last_load_failed {}\n",
            u8::from(last_error)
        ));
        out
    }

    /// Serves the API on `listener` until `shutdown` turns true.
    pub async fn serve(self, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        continue;
                    }
                },
                _ = crate::server::shutdown_requested(&mut shutdown) => return,
            };
            let admin = self.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.handle(req).await) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
                {
                    tracing::debug!(%peer, error = %e, "admin connection error");
                }
            });
        }
    }

    /// Binds `addr` and serves in a background task; returns the bound address.
    pub async fn start(
        self,
        addr: SocketAddr,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        tokio::spawn(self.serve(listener, shutdown));
        tracing::info!(%local, "admin API listening");
        Ok(local)
    }
}
