//! A scripted REST-JSON xDS server (HTTP/1.1): per type, the test says what every poll gets
//! (a `DiscoveryResponse`, any body, any status, a `304`, an endless body, no answer at
//! all) and reads every `DiscoveryRequest` polled.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use courier_control_plane::{Resource, ResourceType};
use courier_proto::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;

/// What a poll of one type gets.
#[derive(Debug, Clone)]
pub enum Reply {
    /// `200` with this body.
    Body(String),
    /// This status, these headers, an empty body.
    Status(u16, Vec<(String, String)>),
    /// `304 Not Modified`.
    NotModified,
    /// `200` with an endless body, 64 KiB every 10 ms (no `content-length`).
    Endless,
    /// No answer, ever.
    Hang,
}

impl Reply {
    /// `200` with a `DiscoveryResponse` of `kind` at `version` holding `resources`.
    pub fn response(kind: ResourceType, version: &str, resources: &[Arc<Resource>]) -> Reply {
        Reply::typed(kind.type_url(), version, resources)
    }

    /// `200` with a `DiscoveryResponse` whose `type_url` is `type_url`.
    pub fn typed(type_url: &str, version: &str, resources: &[Arc<Resource>]) -> Reply {
        let resp = DiscoveryResponse {
            version_info: version.to_string(),
            resources: resources.iter().map(|r| r.any().clone()).collect(),
            type_url: type_url.to_string(),
            ..Default::default()
        };
        Reply::Body(courier_proto::to_json(&resp).to_string())
    }
}

#[derive(Default)]
struct State {
    script: HashMap<ResourceType, Reply>,
    requests: HashMap<ResourceType, Vec<DiscoveryRequest>>,
}

/// The server; stops when dropped.
pub struct ScriptedRest {
    /// Where it listens (127.0.0.1).
    pub port: u16,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ScriptedRest {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: u16, body: String) -> http::Response<Body> {
    let mut resp = http::Response::new(Full::new(Bytes::from(body)).boxed());
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    resp
}

impl ScriptedRest {
    /// Listens on an ephemeral port; every type answers `503` until scripted.
    pub async fn start() -> ScriptedRest {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the scripted REST server");
        let port = listener.local_addr().expect("local addr").port();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(answer(&st, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        ScriptedRest { port, state, task }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What every poll of `kind` gets from now on.
    pub fn set(&self, kind: ResourceType, reply: Reply) {
        self.lock().script.insert(kind, reply);
    }

    /// How many polls of `kind` arrived.
    pub fn polls(&self, kind: ResourceType) -> usize {
        self.lock().requests.get(&kind).map_or(0, Vec::len)
    }

    /// The last poll of `kind`.
    pub fn last(&self, kind: ResourceType) -> Option<DiscoveryRequest> {
        self.lock().requests.get(&kind)?.last().cloned()
    }
}

async fn answer(
    st: &Mutex<State>,
    req: http::Request<hyper::body::Incoming>,
) -> http::Response<Body> {
    let kind = req
        .uri()
        .path()
        .strip_prefix("/v3/discovery:")
        .and_then(ResourceType::from_plural);
    let Some(kind) = kind else {
        return full(404, "no endpoint".into());
    };
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return full(400, e.to_string()),
    };
    let parsed = std::str::from_utf8(&body)
        .map_err(|e| e.to_string())
        .and_then(|t| courier_proto::from_json::<DiscoveryRequest>(t).map_err(|e| e.to_string()));
    let request = match parsed {
        Ok(r) => r,
        Err(e) => return full(400, e),
    };
    let reply = {
        let mut st = st.lock().unwrap_or_else(|p| p.into_inner());
        st.requests.entry(kind).or_default().push(request);
        st.script.get(&kind).cloned()
    };
    match reply {
        None => full(503, "not scripted".into()),
        Some(Reply::Body(b)) => {
            let mut resp = full(200, b);
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            resp
        }
        Some(Reply::NotModified) => full(304, String::new()),
        Some(Reply::Status(status, headers)) => {
            let mut resp = full(status, String::new());
            for (k, v) in headers {
                if let (Ok(k), Ok(v)) = (
                    http::HeaderName::from_bytes(k.as_bytes()),
                    http::HeaderValue::from_str(&v),
                ) {
                    resp.headers_mut().insert(k, v);
                }
            }
            resp
        }
        Some(Reply::Endless) => {
            let chunks = futures::stream::unfold((), |()| async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let chunk = Bytes::from(vec![b' '; 64 * 1024]);
                Some((Ok::<_, Infallible>(Frame::data(chunk)), ()))
            });
            http::Response::new(StreamBody::new(chunks).boxed())
        }
        Some(Reply::Hang) => std::future::pending().await,
    }
}
