//! A script's run on one request or response: its coroutine, the stream handle it is given
//! and what the handle's methods read and change.
//!
//! The handle's state is shared (`Rc<RefCell<…>>`) between the runner and the Lua objects
//! the script holds (headers, body, stream info): the runner moves the stream's head into
//! it before the script runs and takes the result back after. The methods that wait note
//! why and the prelude yields ([`super::vm`]); the runner does the waiting (reading the
//! whole body) and resumes the script. A yield the handle did not ask for is Envoy's
//! `script performed an unexpected yield` error.
//!
//! `httpCall()` notes the call and yields; the runner hands it to the connection
//! manager's [`Caller`] (filters never reach the router), and resumes the script with the
//! answer's headers table and body (`asynchronous`: at once, with nothing).
//!
//! `bodyChunks()` lets the head go on as the script left it, and the body passes through
//! the script's loop (`ChunkBody`): each chunk resumes it, as it changed it; the head can
//! no longer be changed, nor the request answered.
//!
//! The methods that take arguments or give objects (`metadata()`, `streamInfo()`,
//! `route()`, `base64Decode()`, `verifySignature()`, …) are "checked": their Rust side
//! answers an error as a value, which the prelude raises as a plain message at the
//! script's line, as Envoy's `luaL_error` does ([`super::vm`]).
//!
//! Not built (a script calling them gets a Lua error, counted in `errors` as any other):
//! `setHttp1ReasonPhrase()`, `clearRouteCache()`, `setUpstreamOverrideHost()`,
//! `stats()`, `connectionStreamInfo()`, stream info's `dynamicTypedMetadata()` and
//! `filterState()`.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Body as _;
use mlua::{Lua, MetaMethod, MultiValue, ThreadStatus, UserData, UserDataMethods, Value};

use super::metadata::{self, type_name, DynamicMetadata, FilterMetadata};
use super::vm::{self, WorkerScript};
use super::{crypto, LuaStats, Script};
use crate::http::codec::body::ProxyBody;
use courier_proto::google::protobuf::{Struct, Value as ProtoValue};

/// What a stream's script sees of its connection.
pub struct StreamFacts {
    /// `HTTP/1.0`, `HTTP/1.1`, `HTTP/2`.
    pub protocol: &'static str,
    /// The listener's address the connection came to.
    pub local: SocketAddr,
    /// The peer.
    pub direct_remote: SocketAddr,
    /// The client (the peer, or the address a proxy protocol header or original IP
    /// detection gave).
    pub remote: SocketAddr,
    /// The TLS server name the client asked for.
    pub requested_server_name: Option<Box<str>>,
    /// The connection's TLS facts, when it is TLS.
    pub tls: Option<TlsFacts>,
    /// The route the request took.
    pub route: RouteFacts,
    /// The stream's dynamic metadata.
    pub dynamic: DynamicMetadata,
    /// The filter's name in the chain: the namespace its metadata is read from.
    pub filter_name: Arc<str>,
    /// `filter_context`: the route's `LuaPerRoute`'s, else the filter's.
    pub filter_context: Option<Arc<Struct>>,
    /// The virtual cluster the request matched, which Envoy's router names when it sends
    /// the request: scripts see it on an answer from upstream.
    pub virtual_cluster: Option<Arc<str>>,
    /// The response pass runs on an answer from upstream.
    pub(crate) upstream_answered: Cell<bool>,
}

/// What a script sees of the route the request took (empty without one).
#[derive(Default)]
pub struct RouteFacts {
    /// Its `name`.
    pub name: String,
    /// Its `metadata`'s `filter_metadata`.
    pub metadata: Option<Arc<FilterMetadata>>,
    /// Its virtual host's.
    pub vhost_metadata: Option<Arc<FilterMetadata>>,
}

impl RouteFacts {
    /// The route's metadata under `ns`.
    fn route_ns(&self, ns: &str) -> Option<Arc<Struct>> {
        self.metadata.as_ref()?.get(ns).cloned()
    }

    /// The virtual host's metadata under `ns`.
    fn vhost_ns(&self, ns: &str) -> Option<Arc<Struct>> {
        self.vhost_metadata.as_ref()?.get(ns).cloned()
    }
}

/// What `connection():ssl()` tells of a TLS connection.
pub struct TlsFacts {
    /// `TLSv1.3`, …
    pub version: &'static str,
    /// Whether the client presented a certificate.
    pub peer_presented: bool,
}

/// Why the script yielded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Wait {
    /// For the whole body (`body()`).
    Body,
    /// For the body and the trailers (`trailers()`).
    Trailers,
    /// It answered the request (`respond()`).
    Respond,
    /// For its `httpCall()` (noted in the state's `call`).
    Call,
    /// For the body's next chunk (`bodyChunks()`).
    Chunk,
}

/// A script's `httpCall()`, as the connection manager sends it.
pub struct HttpCall {
    /// The cluster named.
    pub cluster: String,
    /// The request's fields as the script gave them (pseudo-headers among them).
    pub fields: Vec<(String, Vec<u8>)>,
    /// The body, when the script gave one (sent with its `content-length`).
    pub body: Option<Vec<u8>>,
    /// The call's timeout (none: `0`, or not given in the options table).
    pub timeout: Option<Duration>,
    /// `send_xff` (default true): the machine's address appended to `x-forwarded-for`.
    pub send_xff: bool,
}

/// What a call's answer gives the script: the `:status` and header fields, and the body.
pub struct CallAnswer {
    /// `:status` first, then the answer's fields.
    pub fields: Vec<(String, Vec<u8>)>,
    /// The answer's body.
    pub body: Vec<u8>,
}

/// Sends scripts' calls: the connection manager's side of `httpCall()`.
pub trait Caller {
    /// Whether this worker knows the cluster named `cluster`.
    fn has_cluster(&self, cluster: &str) -> bool;
    /// Sends `call` and gives its answer (a failure is answered as Envoy's async client
    /// answers it: its router's local reply).
    fn send(&self, call: HttpCall) -> Pin<Box<dyn Future<Output = CallAnswer> + '_>>;
    /// Sends `call` without waiting for it (`asynchronous`); its answer is dropped.
    fn send_and_forget(&self, call: HttpCall);
}

/// What a script's run needs of its stream.
pub struct RunContext<'a> {
    /// The worker it runs on.
    pub worker: usize,
    /// The most of a body it may wait for whole.
    pub limit: usize,
    /// Where its calls go.
    pub caller: &'a dyn Caller,
}

/// A call the script made and waits for.
struct PendingCall {
    call: HttpCall,
    asynchronous: bool,
    /// `return_duplicate_headers`: a field given more than once is a list in the table.
    duplicates: bool,
}

/// A head's fields as scripts see them: pseudo-headers first, then the fields in order.
type Fields = Vec<(String, Vec<u8>)>;

/// A run's state, shared by the runner and the script's objects.
struct State {
    response: bool,
    fields: Fields,
    fields_changed: bool,
    /// The stream ended with its head: there is no body to wait for.
    end_stream: bool,
    /// The whole body, once read.
    body: Option<Vec<u8>>,
    body_changed: bool,
    trailers: Option<Fields>,
    wait: Option<Wait>,
    /// Bumped each time the script is resumed after a wait: the objects it got before
    /// (headers, stream info, …) are then dead, as Envoy's.
    generation: u32,
    reply: Option<(Fields, Option<Vec<u8>>)>,
    call: Option<PendingCall>,
    /// The head went on and the body streams through the script (`bodyChunks()`).
    streaming: bool,
    /// The body chunk the script was resumed with.
    chunk: Option<Vec<u8>>,
    /// Bumped with each chunk: a chunk object is alive while it is the current one.
    chunk_seq: u32,
    facts: Rc<StreamFacts>,
    /// The key the script imported (`importPublicKey()`), if it did.
    public_key: Option<ImportedKey>,
}

type Shared = Rc<RefCell<State>>;

fn runtime(msg: impl Into<String>) -> mlua::Error {
    mlua::Error::RuntimeError(msg.into())
}

/// An object a script got from its handle, alive until the script waits.
#[derive(Clone)]
struct Scoped {
    state: Shared,
    generation: u32,
}

impl Scoped {
    fn new(state: &Shared) -> Scoped {
        Scoped {
            state: state.clone(),
            generation: state.borrow().generation,
        }
    }

    /// Envoy's error for an object used after the script waited.
    fn live(&self) -> mlua::Result<()> {
        match self.state.borrow().generation == self.generation {
            true => Ok(()),
            false => Err(runtime("object used outside of proper scope")),
        }
    }
}

/// A value as header text (strings and numbers, as Lua coerces them).
fn text(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::String(s) => Some(s.as_bytes().to_vec()),
        Value::Integer(i) => Some(i.to_string().into_bytes()),
        Value::Number(n) => Some(mlua_number(*n).into_bytes()),
        _ => None,
    }
}

/// A number as Lua writes it (`%.14g`).
fn mlua_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

fn lower(key: &[u8]) -> String {
    String::from_utf8_lossy(key).to_ascii_lowercase()
}

/// The stream's headers (or trailers).
struct Headers {
    scope: Scoped,
    trailers: bool,
}

impl Headers {
    fn with<R>(&self, f: impl FnOnce(&mut Fields) -> R) -> mlua::Result<R> {
        self.scope.live()?;
        let mut st = self.scope.state.borrow_mut();
        if self.trailers {
            Ok(f(st.trailers.get_or_insert_with(Vec::new)))
        } else if st.streaming {
            // The head went on when the body began to stream.
            Err(runtime("header map can no longer be modified"))
        } else {
            st.fields_changed |= true;
            Ok(f(&mut st.fields))
        }
    }

    fn read<R>(&self, f: impl FnOnce(&Fields) -> R) -> mlua::Result<R> {
        self.scope.live()?;
        let st = self.scope.state.borrow();
        if self.trailers {
            Ok(f(st.trailers.as_ref().unwrap_or(&Vec::new())))
        } else {
            Ok(f(&st.fields))
        }
    }
}

impl UserData for Headers {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("get", |lua, this, key: mlua::String| {
            let key = lower(&key.as_bytes());
            // No value at all (not even `nil`) when absent, as Envoy's.
            let joined = this.read(|f| {
                let mut values = f.iter().filter(|(k, _)| *k == key).map(|(_, v)| v);
                let first = values.next()?;
                let mut joined = first.clone();
                for v in values {
                    joined.push(b',');
                    joined.extend_from_slice(v);
                }
                Some(joined)
            })?;
            match joined {
                Some(j) => Ok(MultiValue::from_iter([Value::String(
                    lua.create_string(&j)?,
                )])),
                None => Ok(MultiValue::new()),
            }
        });
        methods.add_method(
            "getAtIndex",
            |lua, this, (key, index): (mlua::String, i64)| {
                let key = lower(&key.as_bytes());
                let found = this.read(|f| {
                    usize::try_from(index)
                        .ok()
                        .and_then(|i| f.iter().filter(|(k, _)| *k == key).nth(i))
                        .map(|(_, v)| v.clone())
                })?;
                match found {
                    Some(v) => Ok(MultiValue::from_iter([Value::String(
                        lua.create_string(&v)?,
                    )])),
                    None => Ok(MultiValue::new()),
                }
            },
        );
        methods.add_method("getNumValues", |_, this, key: mlua::String| {
            let key = lower(&key.as_bytes());
            this.read(|f| f.iter().filter(|(k, _)| *k == key).count())
        });
        methods.add_method("add", |_, this, (key, value): (mlua::String, Value)| {
            let value = text(&value).ok_or_else(|| runtime("header value must be a string"))?;
            let key = lower(&key.as_bytes());
            this.with(|f| f.push((key, value)))
        });
        methods.add_method("replace", |_, this, (key, value): (mlua::String, Value)| {
            let value = text(&value).ok_or_else(|| runtime("header value must be a string"))?;
            let key = lower(&key.as_bytes());
            this.with(|f| match f.iter().position(|(k, _)| *k == key) {
                Some(i) => {
                    f[i].1 = value;
                    let mut n = 0;
                    f.retain(|(k, _)| {
                        n += 1;
                        n - 1 <= i || *k != key
                    });
                }
                None => f.push((key, value)),
            })
        });
        methods.add_method("remove", |_, this, key: mlua::String| {
            let key = lower(&key.as_bytes());
            this.with(|f| f.retain(|(k, _)| *k != key))
        });
        methods.add_meta_method(MetaMethod::Pairs, |lua, this, ()| {
            let snapshot: Fields = this.read(|f| f.clone())?;
            let next = Cell::new(0usize);
            let iter = lua.create_function(move |lua, _: MultiValue| {
                let i = next.get();
                next.set(i + 1);
                match snapshot.get(i) {
                    Some((k, v)) => Ok((
                        Value::String(lua.create_string(k)?),
                        Value::String(lua.create_string(v)?),
                    )),
                    None => Ok((Value::Nil, Value::Nil)),
                }
            })?;
            Ok((iter, Value::Nil, Value::Nil))
        });
    }
}

/// The stream's whole body.
struct Body(Scoped);

/// A body chunk the script iterates over (`bodyChunks()`), alive until the next one.
struct Chunk(Shared, u32);

impl Chunk {
    fn with<R>(&self, f: impl FnOnce(&mut Vec<u8>) -> R) -> mlua::Result<R> {
        let mut st = self.0.borrow_mut();
        if st.chunk_seq != self.1 {
            return Err(runtime("object used outside of proper scope"));
        }
        Ok(f(st.chunk.get_or_insert_with(Vec::new)))
    }
}

impl UserData for Chunk {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("length", |_, this, ()| this.with(|c| c.len()));
        methods.add_method("getBytes", |lua, this, (index, length): (i64, i64)| {
            let bytes = this.with(|c| {
                let in_range =
                    index >= 0 && length >= 0 && (index as u64 + length as u64) <= c.len() as u64;
                in_range.then(|| c[index as usize..(index + length) as usize].to_vec())
            })?;
            match bytes {
                Some(b) => lua.create_string(&b),
                None => Err(runtime(
                    "index/length must be >= 0 and (index + length) must be <= buffer size",
                )),
            }
        });
        methods.add_method("setBytes", |_, this, bytes: mlua::String| {
            let bytes = bytes.as_bytes().to_vec();
            this.with(|c| {
                *c = bytes;
                c.len()
            })
        });
    }
}

impl UserData for Body {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("length", |_, this, ()| {
            this.0.live()?;
            Ok(this.0.state.borrow().body.as_ref().map_or(0, Vec::len))
        });
        methods.add_method("getBytes", |lua, this, (index, length): (i64, i64)| {
            this.0.live()?;
            let st = this.0.state.borrow();
            let body = st.body.as_deref().unwrap_or(&[]);
            let in_range =
                index >= 0 && length >= 0 && (index as u64 + length as u64) <= body.len() as u64;
            if !in_range {
                return Err(runtime(
                    "index/length must be >= 0 and (index + length) must be <= buffer size",
                ));
            }
            lua.create_string(&body[index as usize..(index + length) as usize])
        });
        methods.add_method("setBytes", |_, this, bytes: mlua::String| {
            this.0.live()?;
            let mut st = this.0.state.borrow_mut();
            let bytes = bytes.as_bytes().to_vec();
            let len = bytes.len();
            st.body = Some(bytes);
            st.body_changed = true;
            // As Envoy's: the head's `content-length` follows the new body.
            st.fields.retain(|(k, _)| k != "content-length");
            st.fields
                .push(("content-length".into(), len.to_string().into_bytes()));
            st.fields_changed = true;
            Ok(len)
        });
    }
}

/// `streamInfo()`.
struct StreamInfo(Scoped, Rc<StreamFacts>);

impl UserData for StreamInfo {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        type Get = fn(&Lua, &StreamFacts) -> mlua::Result<Value>;
        let getters: [(&str, Get); 7] = [
            ("protocol", |lua, f| text_value(lua, f.protocol)),
            ("downstreamLocalAddress", |lua, f| {
                text_value(lua, &f.local.to_string())
            }),
            // Courier's listeners do not redirect connections: the direct local address is
            // the local one.
            ("downstreamDirectLocalAddress", |lua, f| {
                text_value(lua, &f.local.to_string())
            }),
            ("downstreamDirectRemoteAddress", |lua, f| {
                text_value(lua, &f.direct_remote.to_string())
            }),
            ("downstreamRemoteAddress", |lua, f| {
                text_value(lua, &f.remote.to_string())
            }),
            ("requestedServerName", |lua, f| {
                text_value(lua, f.requested_server_name.as_deref().unwrap_or(""))
            }),
            ("routeName", |lua, f| text_value(lua, &f.route.name)),
        ];
        for (name, get) in getters {
            methods.add_method(name, move |lua, this, ()| {
                if let Err(e) = this.0.live() {
                    return fail(lua, &vm::message(&e));
                }
                ret1(get(lua, &this.1)?)
            });
        }
        // Envoy's router names the virtual cluster when it sends the request: before, and
        // on a local answer, the name is empty.
        methods.add_method("virtualClusterName", |lua, this, ()| {
            if let Err(e) = this.0.live() {
                return fail(lua, &vm::message(&e));
            }
            let name = match this.1.upstream_answered.get() {
                true => this.1.virtual_cluster.as_deref().unwrap_or(""),
                false => "",
            };
            ret1(text_value(lua, name)?)
        });
        methods.add_method("dynamicMetadata", |lua, this, ()| {
            if let Err(e) = this.0.live() {
                return fail(lua, &vm::message(&e));
            }
            object(
                lua,
                "DynamicMetadata",
                DynamicMetadataMap(this.0.clone(), this.1.dynamic.clone()),
            )
        });
        methods.add_method("downstreamSslConnection", |lua, this, ()| {
            if let Err(e) = this.0.live() {
                return fail(lua, &vm::message(&e));
            }
            match &this.1.tls {
                None => ret1(Value::Nil),
                Some(_) => ret1(Value::UserData(
                    lua.create_userdata(Ssl(this.0.clone(), this.1.clone()))?,
                )),
            }
        });
    }
}

fn text_value(lua: &Lua, s: &str) -> mlua::Result<Value> {
    Ok(Value::String(lua.create_string(s)?))
}

/// A checked method's answer: no value.
fn ret0() -> mlua::Result<MultiValue> {
    Ok(MultiValue::from_iter([Value::Integer(0)]))
}

/// A checked method's answer: one value.
fn ret1(v: Value) -> mlua::Result<MultiValue> {
    Ok(MultiValue::from_iter([Value::Integer(1), v]))
}

/// A checked method's answer: two values.
fn ret2(a: Value, b: Value) -> mlua::Result<MultiValue> {
    Ok(MultiValue::from_iter([Value::Integer(2), a, b]))
}

/// A checked method's answer: an object the prelude wraps in its `class`.
fn object(lua: &Lua, class: &str, u: impl UserData + 'static) -> mlua::Result<MultiValue> {
    Ok(MultiValue::from_iter([
        Value::String(lua.create_string(class)?),
        Value::UserData(lua.create_userdata(u)?),
    ]))
}

/// A checked method's error, for the prelude to raise (as a plain message, as Envoy's).
fn fail(lua: &Lua, msg: &str) -> mlua::Result<MultiValue> {
    Ok(MultiValue::from_iter([
        Value::Boolean(false),
        Value::String(lua.create_string(msg)?),
    ]))
}

/// A checked method's result: its error raised by the prelude.
fn checked(lua: &Lua, r: Result<mlua::Result<MultiValue>, String>) -> mlua::Result<MultiValue> {
    match r {
        Ok(values) => values,
        Err(msg) => fail(lua, &msg),
    }
}

/// Lua's argument error, as Envoy's read where a script's `pcall` calls the method
/// (arguments counted from the object, the function unnamed).
fn arg_error(narg: usize, expected: &str, got: Option<&Value>) -> String {
    format!(
        "bad argument #{narg} to '?' ({expected} expected, got {})",
        got.map_or("no value", type_name)
    )
}

/// `luaL_checkstring` on the method's argument `i` (from 0, after the object): a string,
/// or a number as Lua writes it.
fn check_string(args: &[Value], i: usize) -> Result<Vec<u8>, String> {
    text(args.get(i).unwrap_or(&Value::Nil)).ok_or_else(|| arg_error(i + 2, "string", args.get(i)))
}

/// `luaL_optstring`: `None` for `nil` or no value.
fn opt_string(args: &[Value], i: usize) -> Result<Option<Vec<u8>>, String> {
    match args.get(i) {
        None | Some(Value::Nil) => Ok(None),
        Some(_) => check_string(args, i).map(Some),
    }
}

/// `luaL_checknumber`: a number, or a string holding one.
fn check_number(args: &[Value], i: usize) -> Result<f64, String> {
    let n = match args.get(i) {
        Some(Value::Integer(n)) => Some(*n as f64),
        Some(Value::Number(n)) => Some(*n),
        Some(Value::String(s)) => s.to_str().ok().and_then(|s| s.trim().parse::<f64>().ok()),
        _ => None,
    };
    n.ok_or_else(|| arg_error(i + 2, "number", args.get(i)))
}

/// Bytes read as a C string: up to the first NUL.
fn c_string(bytes: &[u8]) -> &[u8] {
    &bytes[..bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len())]
}

/// The first `n` bytes of `bytes` (a length a script gave; Envoy reads past the string's
/// end where it is longer, Courier stops at the end).
fn prefix(bytes: &[u8], n: f64) -> &[u8] {
    let n = if n.is_nan() || n < 0.0 { 0 } else { n as usize };
    &bytes[..n.min(bytes.len())]
}

/// A read-only metadata map (`metadata()`, `route():metadata()`, `filterContext()`, …).
struct MetadataMap(Scoped, Option<Arc<Struct>>);

impl UserData for MetadataMap {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("get", |lua, this, args: MultiValue| {
            let args: Vec<Value> = args.into_iter().collect();
            let r = (|| {
                this.0.live().map_err(|e| vm::message(&e))?;
                let key = check_string(&args, 0)?;
                let key = String::from_utf8_lossy(c_string(&key)).into_owned();
                Ok(match this.1.as_ref().and_then(|s| s.fields.get(&key)) {
                    None => ret0(),
                    Some(v) => metadata::to_lua(lua, v).and_then(ret1),
                })
            })();
            checked(lua, r)
        });
        methods.add_method("pairs", |lua, this, ()| {
            if let Err(e) = this.0.live() {
                return fail(lua, &vm::message(&e));
            }
            let fields: Vec<(String, ProtoValue)> = this
                .1
                .as_ref()
                .map(|s| {
                    s.fields
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default();
            let next = Cell::new(0usize);
            let iter = lua.create_function(move |lua, _: MultiValue| {
                let i = next.get();
                next.set(i + 1);
                match fields.get(i) {
                    Some((k, v)) => Ok((
                        Value::String(lua.create_string(k)?),
                        metadata::to_lua(lua, v)?,
                    )),
                    None => Ok((Value::Nil, Value::Nil)),
                }
            })?;
            ret1(Value::Function(iter))
        });
    }
}

/// `streamInfo():dynamicMetadata()`.
struct DynamicMetadataMap(Scoped, DynamicMetadata);

impl UserData for DynamicMetadataMap {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("get", |lua, this, args: MultiValue| {
            let args: Vec<Value> = args.into_iter().collect();
            let r = (|| {
                this.0.live().map_err(|e| vm::message(&e))?;
                let ns = check_string(&args, 0)?;
                let ns = String::from_utf8_lossy(c_string(&ns)).into_owned();
                Ok(match this.1.borrow().get(&ns) {
                    None => ret0(),
                    Some(s) => metadata::struct_table(lua, s).and_then(|t| ret1(Value::Table(t))),
                })
            })();
            checked(lua, r)
        });
        methods.add_method("set", |lua, this, args: MultiValue| {
            let args: Vec<Value> = args.into_iter().collect();
            let r = (|| {
                this.0.live().map_err(|e| vm::message(&e))?;
                let ns = check_string(&args, 0)?;
                let key = check_string(&args, 1)?;
                let value = metadata::from_lua(args.get(2).unwrap_or(&Value::Nil))?;
                let ns = String::from_utf8_lossy(c_string(&ns)).into_owned();
                let key = String::from_utf8_lossy(c_string(&key)).into_owned();
                this.1
                    .borrow_mut()
                    .entry(ns)
                    .or_default()
                    .fields
                    .insert(key, value);
                Ok(ret0())
            })();
            checked(lua, r)
        });
        methods.add_method("pairs", |lua, this, ()| {
            if let Err(e) = this.0.live() {
                return fail(lua, &vm::message(&e));
            }
            let all: Vec<(String, Struct)> = this
                .1
                .borrow()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let next = Cell::new(0usize);
            let iter = lua.create_function(move |lua, _: MultiValue| {
                let i = next.get();
                next.set(i + 1);
                match all.get(i) {
                    Some((k, v)) => Ok((
                        Value::String(lua.create_string(k)?),
                        Value::Table(metadata::struct_table(lua, v)?),
                    )),
                    None => Ok((Value::Nil, Value::Nil)),
                }
            })?;
            ret1(Value::Function(iter))
        });
    }
}

/// `route()` and `virtualHost()`: their `metadata()` under the filter's name.
struct MetadataHolder(Scoped, Option<Arc<Struct>>);

impl UserData for MetadataHolder {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("metadata", |lua, this, ()| {
            if let Err(e) = this.0.live() {
                return fail(lua, &vm::message(&e));
            }
            object(
                lua,
                "MetadataMap",
                MetadataMap(this.0.clone(), this.1.clone()),
            )
        });
    }
}

/// `importPublicKey()`'s answer: `get()` gives the key's text, or `nil`.
struct PublicKeyHandle(Option<Vec<u8>>);

impl UserData for PublicKeyHandle {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("get", |lua, this, ()| match &this.0 {
            None => ret1(Value::Nil),
            Some(k) => ret1(Value::String(lua.create_string(k)?)),
        });
    }
}

/// The key a handle imported (its first): what `get()` gives, and the key by the text
/// `verifySignature()` names it with.
struct ImportedKey {
    text: Option<Vec<u8>>,
    key: Option<(Vec<u8>, crypto::PublicKey)>,
}

/// `connection()`.
struct Connection(Scoped, Rc<StreamFacts>);

impl UserData for Connection {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("ssl", |lua, this, ()| {
            this.0.live()?;
            match &this.1.tls {
                None => Ok(Value::Nil),
                Some(_) => Ok(Value::UserData(
                    lua.create_userdata(Ssl(this.0.clone(), this.1.clone()))?,
                )),
            }
        });
    }
}

/// `connection():ssl()` on a TLS connection.
struct Ssl(Scoped, Rc<StreamFacts>);

impl UserData for Ssl {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("peerCertificatePresented", |_, this, ()| {
            this.0.live()?;
            Ok(this.1.tls.as_ref().is_some_and(|t| t.peer_presented))
        });
        methods.add_method("tlsVersion", |_, this, ()| {
            this.0.live()?;
            Ok(this.1.tls.as_ref().map_or("", |t| t.version))
        });
    }
}

/// `timestamp()`'s resolutions (`EnvoyTimestampResolution`).
enum Resolution {
    Milli,
    Micro,
}

/// The resolution a script named (none: milliseconds), read as abseil's `SimpleAtoi`.
fn resolution(unit: Option<&[u8]>) -> Option<Resolution> {
    let unit = unit.unwrap_or(b"");
    if unit.is_empty() {
        return Some(Resolution::Milli);
    }
    let s = std::str::from_utf8(unit).ok()?.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    match s.parse::<u128>().ok()? {
        0 => Some(Resolution::Milli),
        1 => Some(Resolution::Micro),
        _ => None,
    }
}

fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// The Rust side of the stream handle (`request_handle`, `response_handle`).
struct Handle(Shared);

fn script_log(level: tracing::Level, msg: &str) {
    match level {
        tracing::Level::TRACE => tracing::trace!("script log: {msg}"),
        tracing::Level::DEBUG => tracing::debug!("script log: {msg}"),
        tracing::Level::INFO => tracing::info!("script log: {msg}"),
        tracing::Level::WARN => tracing::warn!("script log: {msg}"),
        _ => tracing::error!("script log: {msg}"),
    }
}

/// A table of header fields (a value may be a list of values), as `respond()` takes it.
fn fields_of(table: &mlua::Table) -> mlua::Result<Fields> {
    let mut out = Vec::new();
    for pair in table.pairs::<Value, Value>() {
        let (k, v) = pair?;
        let Value::String(k) = k else {
            return Err(runtime("header key must be a string"));
        };
        let key = lower(&k.as_bytes());
        match &v {
            Value::Table(list) => {
                for item in list.sequence_values::<Value>() {
                    let item = item?;
                    let value =
                        text(&item).ok_or_else(|| runtime("header value must be a string"))?;
                    out.push((key.clone(), value));
                }
            }
            other => {
                let value = text(other).ok_or_else(|| runtime("header value must be a string"))?;
                out.push((key, value));
            }
        }
    }
    Ok(out)
}

/// `luaL_checkint`: a number, or a string holding one (truncated). Argument errors read
/// as Envoy's do where a script's `pcall` calls `httpCall` (arguments counted from the
/// handle, the function unnamed).
fn check_int(v: Option<&Value>, arg: usize) -> mlua::Result<i64> {
    let n = match v {
        Some(Value::Integer(i)) => Some(*i),
        Some(Value::Number(n)) => Some(*n as i64),
        Some(Value::String(s)) => s
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
            .map(|n| n as i64),
        _ => None,
    };
    n.ok_or_else(|| {
        runtime(format!(
            "bad argument #{arg} to '?' (number expected, got {})",
            v.map_or("no value", type_name)
        ))
    })
}

/// Lua's truth (`lua_toboolean`).
fn truthy(v: &Value) -> bool {
    !matches!(v, Value::Nil | Value::Boolean(false))
}

/// `httpCall(cluster, headers, body, timeout_ms[, asynchronous])` or `httpCall(cluster,
/// headers, body, {options})`, checked as Envoy checks them (the cluster and the
/// pseudo-headers are checked by the runner, which knows the clusters).
fn http_call(args: MultiValue) -> mlua::Result<PendingCall> {
    let args: Vec<Value> = args.into_iter().collect();
    let mut pending = PendingCall {
        call: HttpCall {
            cluster: String::new(),
            fields: Vec::new(),
            body: None,
            timeout: None,
            send_xff: true,
        },
        asynchronous: false,
        duplicates: false,
    };
    match args.get(3) {
        Some(Value::Table(options)) => {
            for pair in options.pairs::<Value, Value>() {
                let (k, v) = pair?;
                let key = match &k {
                    Value::String(s) => s.to_string_lossy(),
                    other => {
                        return Err(runtime(format!(
                            "httpCall() options key must be a string, got {}",
                            type_name(other)
                        )))
                    }
                };
                match key.as_str() {
                    "asynchronous" => pending.asynchronous = truthy(&v),
                    "timeout_ms" => {
                        let ms = match &v {
                            Value::Integer(i) => *i,
                            Value::Number(n) if n.fract() == 0.0 => *n as i64,
                            other => {
                                return Err(runtime(format!(
                                    "'timeout_ms' option must be an integer, got {}",
                                    type_name(other)
                                )))
                            }
                        };
                        if ms < 0 {
                            return Err(runtime("http call timeout must be >= 0"));
                        }
                        pending.call.timeout = (ms > 0).then(|| Duration::from_millis(ms as u64));
                    }
                    "return_duplicate_headers" => pending.duplicates = truthy(&v),
                    "send_xff" => pending.call.send_xff = truthy(&v),
                    // Courier's worker calls carry no trace span: nothing to sample
                    // (DIFFERENCES.md).
                    "trace_sampled" => {}
                    other => {
                        return Err(runtime(format!(
                            "\"{other}\" is not valid key for httpCall() options"
                        )))
                    }
                }
            }
        }
        fifth => {
            if let Some(flag) = args.get(4) {
                if !matches!(flag, Value::Boolean(_)) {
                    return Err(runtime(
                        "http call asynchronous flag must be 'true', 'false', or empty",
                    ));
                }
                pending.asynchronous = truthy(flag);
            }
            let ms = check_int(fifth, 5)?;
            if ms < 0 {
                return Err(runtime("http call timeout must be >= 0"));
            }
            pending.call.timeout = (ms > 0).then(|| Duration::from_millis(ms as u64));
        }
    }
    pending.call.cluster = match args.first() {
        Some(Value::String(s)) => s.to_string_lossy(),
        Some(Value::Integer(i)) => i.to_string(),
        Some(Value::Number(n)) => mlua_number(*n),
        other => {
            return Err(runtime(format!(
                "bad argument #2 to '?' (string expected, got {})",
                other.map_or("no value", type_name)
            )))
        }
    };
    let Some(Value::Table(headers)) = args.get(1) else {
        return Err(runtime(format!(
            "bad argument #3 to '?' (table expected, got {})",
            args.get(1).map_or("no value", type_name)
        )));
    };
    pending.call.fields = fields_of(headers)?;
    pending.call.body = match args.get(2) {
        None | Some(Value::Nil) => None,
        Some(v) => Some(text(v).ok_or_else(|| {
            runtime(format!(
                "bad argument #4 to '?' (string expected, got {})",
                type_name(v)
            ))
        })?),
    };
    Ok(pending)
}

/// The table a call's answer gives the script: a field's last value (Envoy's table
/// assignment), or all of them in a list when the script asked for duplicates.
fn answer_table(lua: &Lua, answer: &CallAnswer, duplicates: bool) -> mlua::Result<mlua::Table> {
    let table = lua.create_table()?;
    for (k, v) in &answer.fields {
        let value = lua.create_string(v)?;
        if duplicates {
            match table.raw_get::<Value>(k.as_str())? {
                Value::Nil => table.raw_set(k.as_str(), value)?,
                Value::Table(list) => list.raw_push(value)?,
                first => {
                    let list = lua.create_sequence_from([first, Value::String(value)])?;
                    table.raw_set(k.as_str(), list)?;
                }
            }
        } else {
            table.raw_set(k.as_str(), value)?;
        }
    }
    Ok(table)
}

fn not_supported(name: &'static str) -> impl Fn(&Lua, &Handle, MultiValue) -> mlua::Result<()> {
    move |_, _, _| Err(runtime(format!("{name}() is not supported by Courier")))
}

impl UserData for Handle {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("headers", |lua, this, ()| {
            lua.create_userdata(Headers {
                scope: Scoped::new(&this.0),
                trailers: false,
            })
        });
        methods.add_method("waitBody", |_, this, ()| {
            let mut st = this.0.borrow_mut();
            if st.streaming {
                return Err(runtime(match st.end_stream {
                    true => "cannot call body() after body has been streamed",
                    false => "cannot call body() after body streaming has started",
                }));
            }
            let wait = !st.end_stream && st.body.is_none();
            if wait {
                st.wait = Some(Wait::Body);
            }
            Ok(wait)
        });
        methods.add_method("body", |lua, this, always: Option<bool>| {
            let has_body = this.0.borrow().body.as_ref().is_some_and(|b| !b.is_empty());
            if !has_body && !always.unwrap_or(false) {
                return Ok(MultiValue::new());
            }
            this.0.borrow_mut().body.get_or_insert_with(Vec::new);
            Ok(MultiValue::from_iter([Value::UserData(
                lua.create_userdata(Body(Scoped::new(&this.0)))?,
            )]))
        });
        methods.add_method("waitTrailers", |_, this, ()| {
            let mut st = this.0.borrow_mut();
            let wait = !st.end_stream && (st.body.is_none() || st.streaming);
            if wait {
                st.wait = Some(Wait::Trailers);
            }
            Ok(wait)
        });
        methods.add_method("trailers", |lua, this, ()| {
            if this.0.borrow().trailers.is_none() {
                return Ok(MultiValue::new());
            }
            Ok(MultiValue::from_iter([Value::UserData(
                lua.create_userdata(Headers {
                    scope: Scoped::new(&this.0),
                    trailers: true,
                })?,
            )]))
        });
        methods.add_method(
            "respond",
            |_, this, (headers, body): (mlua::Table, Option<mlua::String>)| {
                let mut st = this.0.borrow_mut();
                if st.streaming {
                    return Err(runtime(
                        "respond() cannot be called if headers have been continued",
                    ));
                }
                if st.response {
                    return Err(runtime(
                        "respond not currently supported in the response path",
                    ));
                }
                let fields = fields_of(&headers)?;
                let status = fields
                    .iter()
                    .find(|(k, _)| k == ":status")
                    .and_then(|(_, v)| std::str::from_utf8(v).ok())
                    .and_then(|v| v.parse::<u16>().ok());
                if !status.is_some_and(|s| (200..600).contains(&s)) {
                    return Err(runtime(":status must be between 200-599"));
                }
                st.reply = Some((fields, body.map(|b| b.as_bytes().to_vec())));
                st.wait = Some(Wait::Respond);
                Ok(())
            },
        );
        methods.add_method("streamInfo", |lua, this, ()| {
            let facts = this.0.borrow().facts.clone();
            object(lua, "StreamInfo", StreamInfo(Scoped::new(&this.0), facts))
        });
        // Under the filter's name, else `envoy.filters.http.lua`.
        methods.add_method("metadata", |lua, this, ()| {
            let facts = this.0.borrow().facts.clone();
            let md = facts
                .route
                .route_ns(&facts.filter_name)
                .or_else(|| facts.route.route_ns(super::FILTER_NAME));
            object(lua, "MetadataMap", MetadataMap(Scoped::new(&this.0), md))
        });
        methods.add_method("route", |lua, this, ()| {
            let facts = this.0.borrow().facts.clone();
            let md = facts.route.route_ns(&facts.filter_name);
            object(lua, "Route", MetadataHolder(Scoped::new(&this.0), md))
        });
        methods.add_method("virtualHost", |lua, this, ()| {
            let facts = this.0.borrow().facts.clone();
            let md = facts.route.vhost_ns(&facts.filter_name);
            object(lua, "VirtualHost", MetadataHolder(Scoped::new(&this.0), md))
        });
        methods.add_method("filterContext", |lua, this, ()| {
            let fc = this.0.borrow().facts.filter_context.clone();
            object(lua, "MetadataMap", MetadataMap(Scoped::new(&this.0), fc))
        });
        methods.add_method("base64Escape", |lua, _, args: MultiValue| {
            let args: Vec<Value> = args.into_iter().collect();
            let r = check_string(&args, 0).map(|input| {
                ret1(Value::String(
                    lua.create_string(crypto::base64_escape(&input))?,
                ))
            });
            checked(lua, r)
        });
        methods.add_method("base64Decode", |lua, _, args: MultiValue| {
            let args: Vec<Value> = args.into_iter().collect();
            let r = check_string(&args, 0).map(|input| match crypto::base64_decode(&input) {
                Some(out) => ret1(Value::String(lua.create_string(&out)?)),
                None => ret1(Value::Nil),
            });
            checked(lua, r)
        });
        methods.add_method("importPublicKey", |lua, this, args: MultiValue| {
            let args: Vec<Value> = args.into_iter().collect();
            let r = (|| {
                let der = check_string(&args, 0)?;
                let n = check_number(&args, 1)?;
                let mut st = this.0.borrow_mut();
                let imported =
                    st.public_key.get_or_insert_with(|| {
                        match crypto::PublicKey::import(prefix(&der, n)) {
                            Some(key) => ImportedKey {
                                text: Some(c_string(&der).to_vec()),
                                key: Some((prefix(c_string(&der), n).to_vec(), key)),
                            },
                            None => ImportedKey {
                                text: None,
                                key: None,
                            },
                        }
                    });
                let text = imported.text.clone();
                drop(st);
                Ok(object(lua, "PublicKey", PublicKeyHandle(text)))
            })();
            checked(lua, r)
        });
        methods.add_method("verifySignature", |lua, this, args: MultiValue| {
            let args: Vec<Value> = args.into_iter().collect();
            let r = (|| {
                let hash = check_string(&args, 0)?;
                let name = check_string(&args, 1)?;
                let st = this.0.borrow();
                let Some((_, key)) = st
                    .public_key
                    .as_ref()
                    .and_then(|k| k.key.as_ref())
                    .filter(|(text, _)| text.as_slice() == c_string(&name))
                else {
                    return Err("invalid public key".to_string());
                };
                let sig = check_string(&args, 2)?;
                let sig_len = check_number(&args, 3)?;
                let text = check_string(&args, 4)?;
                let text_len = check_number(&args, 5)?;
                let hash = String::from_utf8_lossy(c_string(&hash)).into_owned();
                Ok(
                    match key.verify(&hash, prefix(&sig, sig_len), prefix(&text, text_len)) {
                        Ok(()) => ret2(Value::Boolean(true), Value::Nil),
                        Err(msg) => lua
                            .create_string(&msg)
                            .and_then(|m| ret2(Value::Boolean(false), Value::String(m))),
                    },
                )
            })();
            checked(lua, r)
        });
        methods.add_method("connection", |lua, this, ()| {
            let facts = this.0.borrow().facts.clone();
            lua.create_userdata(Connection(Scoped::new(&this.0), facts))
        });
        for (name, level) in [
            ("logTrace", tracing::Level::TRACE),
            ("logDebug", tracing::Level::DEBUG),
            ("logInfo", tracing::Level::INFO),
            ("logWarn", tracing::Level::WARN),
            ("logErr", tracing::Level::ERROR),
            ("logCritical", tracing::Level::ERROR),
        ] {
            methods.add_method(name, move |_, _, msg: mlua::String| {
                script_log(level, &String::from_utf8_lossy(&msg.as_bytes()));
                Ok(())
            });
        }
        methods.add_method("timestamp", |lua, _, args: MultiValue| {
            let args: Vec<Value> = args.into_iter().collect();
            let r = opt_string(&args, 0).map(|unit| match resolution(unit.as_deref()) {
                Some(Resolution::Milli) => ret1(Value::Number(now().as_millis() as f64)),
                _ => fail(lua, "timestamp format must be MILLISECOND."),
            });
            checked(lua, r)
        });
        methods.add_method("timestampString", |lua, _, args: MultiValue| {
            let args: Vec<Value> = args.into_iter().collect();
            let r = opt_string(&args, 0).map(|unit| {
                let n = match resolution(unit.as_deref()) {
                    Some(Resolution::Milli) => now().as_millis(),
                    Some(Resolution::Micro) => now().as_micros(),
                    None => {
                        return fail(lua, "timestamp format must be MILLISECOND or MICROSECOND.")
                    }
                };
                ret1(Value::String(lua.create_string(n.to_string())?))
            });
            checked(lua, r)
        });
        // An error is handed to the prelude to raise (a Rust error would reach a script's
        // `pcall` wrapped, where Envoy's is the message alone).
        methods.add_method("httpCall", |_, this, args: MultiValue| {
            match http_call(args) {
                Ok(pending) => {
                    let mut st = this.0.borrow_mut();
                    st.call = Some(pending);
                    st.wait = Some(Wait::Call);
                    Ok((true, None))
                }
                Err(e) => Ok((false, Some(vm::message(&e)))),
            }
        });
        methods.add_method("bodyChunks", |_, this, ()| {
            let st = this.0.borrow();
            if st.body.is_some() || st.streaming {
                return Err(runtime(
                    "cannot call bodyChunks after body processing has begun",
                ));
            }
            Ok(())
        });
        methods.add_method("waitChunk", |_, this, ()| {
            let mut st = this.0.borrow_mut();
            let wait = !st.end_stream;
            if wait {
                st.wait = Some(Wait::Chunk);
            }
            Ok(wait)
        });
        for name in [
            "connectionStreamInfo",
            "clearRouteCache",
            "setUpstreamOverrideHost",
            "stats",
        ] {
            methods.add_method(name, not_supported(name));
        }
    }
}

/// What a run left: the script's answer (`respond()`), else the head and body as it left
/// them.
struct Ran {
    state: State,
    /// The script iterates over the body's chunks: it goes on as they pass.
    chunks: Option<Chunks>,
}

/// Runs `function` (a script's `envoy_on_request` or `envoy_on_response`) on `state`,
/// reading the body from `body` when the script waits for it. A runtime error is counted
/// and logged, and what the script did until then stands (as Envoy's).
async fn run(
    ws: &Rc<WorkerScript>,
    function: &mlua::Function,
    stats: &Arc<LuaStats>,
    state: State,
    body: &mut ProxyBody,
    cx: &RunContext<'_>,
) -> Result<Ran, TooLarge> {
    let (worker, limit, caller) = (cx.worker, cx.limit, cx.caller);
    let shared: Shared = Rc::new(RefCell::new(state));
    stats.executions.inc(worker);
    let failed = |e: String| {
        stats.errors.inc(worker);
        tracing::error!("script log: {e}");
    };
    let mut chunks = None;
    let started = ws
        .lua
        .create_userdata(Handle(shared.clone()))
        .and_then(|u| ws.make_handle.call::<mlua::Table>(u))
        .and_then(|h| Ok((ws.lua.create_thread(function.clone())?, h)));
    match started {
        Err(e) => failed(vm::message(&e)),
        Ok((thread, handle)) => {
            let mut args = MultiValue::from_iter([Value::Table(handle)]);
            loop {
                if let Err(e) = thread.resume::<MultiValue>(args) {
                    failed(vm::message(&e));
                    break;
                }
                if thread.status() != ThreadStatus::Resumable {
                    break;
                }
                let wait = shared.borrow_mut().wait.take();
                args = MultiValue::new();
                match wait {
                    None => {
                        failed("script performed an unexpected yield".into());
                        break;
                    }
                    Some(Wait::Respond) => break,
                    Some(Wait::Chunk) => {
                        chunks = Some(Chunks {
                            ws: ws.clone(),
                            thread,
                            shared: shared.clone(),
                            stats: stats.clone(),
                            worker,
                            trailers: false,
                        });
                        break;
                    }
                    Some(Wait::Body | Wait::Trailers) => {
                        let (data, trailers) = read_whole(body, limit).await?;
                        let mut st = shared.borrow_mut();
                        st.body = Some(data);
                        st.trailers = trailers;
                        st.end_stream = true;
                        st.generation += 1;
                    }
                    Some(Wait::Call) => {
                        let pending = shared.borrow_mut().call.take();
                        let Some(pending) = pending else { break };
                        match call(&ws.lua, caller, &shared, pending).await {
                            Ok(values) => args = values,
                            Err(e) => {
                                failed(vm::message(&e));
                                break;
                            }
                        }
                    }
                }
            }
        }
    }
    // The script's objects may outlive the run (a global holding one): they keep an empty
    // state.
    let facts = shared.borrow().facts.clone();
    let state = shared.replace(State {
        response: false,
        fields: Vec::new(),
        fields_changed: false,
        end_stream: true,
        body: None,
        body_changed: false,
        trailers: None,
        wait: None,
        generation: u32::MAX,
        reply: None,
        call: None,
        streaming: false,
        chunk: None,
        chunk_seq: 0,
        facts,
        public_key: None,
    });
    if chunks.is_some() {
        // The script goes on with the body: its head went on as it stands.
        let mut st = shared.borrow_mut();
        st.response = state.response;
        st.fields = state.fields.clone();
        st.end_stream = false;
        st.generation = state.generation + 1;
        st.streaming = true;
    }
    Ok(Ran { state, chunks })
}

/// A script that iterates over the body's chunks, resumed as each passes.
struct Chunks {
    ws: Rc<WorkerScript>,
    thread: mlua::Thread,
    shared: Shared,
    stats: Arc<LuaStats>,
    worker: usize,
    /// It waits for the trailers: the chunks pass untouched until then.
    trailers: bool,
}

impl Chunks {
    fn failed(&self, e: &str) {
        self.stats.errors.inc(self.worker);
        tracing::error!("script log: {e}");
    }

    /// Resumes the script with `args`; whether it still waits for more of the body.
    fn resume(&mut self, args: MultiValue) -> bool {
        if let Err(e) = self.thread.resume::<MultiValue>(args) {
            self.failed(&vm::message(&e));
            return false;
        }
        if self.thread.status() != ThreadStatus::Resumable {
            return false;
        }
        let wait = self.shared.borrow_mut().wait.take();
        match wait {
            Some(Wait::Chunk) => true,
            Some(Wait::Trailers) => {
                self.trailers = true;
                true
            }
            None => {
                self.failed("script performed an unexpected yield");
                false
            }
            Some(_) => {
                self.failed("httpCall() while the body streams is not supported by Courier");
                false
            }
        }
    }

    /// `data` passes (ending the body when `end`): the script sees it, and may change it.
    fn chunk(&mut self, data: Bytes, end: bool) -> (Bytes, bool) {
        if end {
            self.shared.borrow_mut().end_stream = true;
        }
        if self.trailers {
            // A body that ends without trailers: `trailers()` gives none.
            let more = !end || self.resume(MultiValue::new());
            return (data, more);
        }
        let seq = {
            let mut st = self.shared.borrow_mut();
            st.chunk_seq += 1;
            st.chunk = Some(data.to_vec());
            st.chunk_seq
        };
        let args = match self.ws.lua.create_userdata(Chunk(self.shared.clone(), seq)) {
            Ok(u) => MultiValue::from_iter([Value::UserData(u)]),
            Err(e) => {
                self.failed(&vm::message(&e));
                return (data, false);
            }
        };
        let more = self.resume(args);
        let mut st = self.shared.borrow_mut();
        st.chunk_seq += 1;
        let out = st.chunk.take().map_or(data, Bytes::from);
        (out, more)
    }

    /// The body ended (with `trailers`, if it has them): the script sees no more chunks.
    fn end(&mut self, trailers: Option<&http::HeaderMap>) {
        {
            let mut st = self.shared.borrow_mut();
            st.end_stream = true;
            st.trailers = trailers.map(|t| fields_from(Vec::new(), t, false));
        }
        if self.resume(MultiValue::new()) {
            self.failed("script performed an unexpected yield");
        }
    }
}

/// A body passing through a script's `bodyChunks()` loop.
struct ChunkBody {
    inner: ProxyBody,
    script: Option<Chunks>,
}

type Polled =
    std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, crate::http::codec::body::BoxError>>>;

impl crate::http::codec::body::BodyTransform for ChunkBody {
    fn poll_frame(&mut self, cx: &mut std::task::Context<'_>) -> Polled {
        use std::task::Poll;
        let frame = match std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(f) => f,
        };
        let Some(script) = self.script.as_mut() else {
            return Poll::Ready(frame);
        };
        match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    let end = self.inner.is_end_stream();
                    let (out, more) = script.chunk(data, end);
                    if !more || end {
                        self.script = None;
                    }
                    Poll::Ready(Some(Ok(hyper::body::Frame::data(out))))
                }
                Err(frame) => {
                    script.end(frame.trailers_ref());
                    self.script = None;
                    Poll::Ready(Some(Ok(frame)))
                }
            },
            None => {
                script.end(None);
                self.script = None;
                Poll::Ready(None)
            }
            Some(Err(e)) => {
                self.script = None;
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

/// `body` passed through the script's `bodyChunks()` loop, when it runs one.
fn through_chunks(body: &mut ProxyBody, chunks: Option<Chunks>) {
    if let Some(script) = chunks {
        let inner = std::mem::replace(body, ProxyBody::empty());
        *body = ProxyBody::filtered(ChunkBody {
            inner,
            script: Some(script),
        });
    }
}

/// Makes a script's call, as Envoy checks and sends it: what the prelude resumes with
/// (`"err", message` for the script to raise, `"none"` for a call not waited for, `"ok",
/// headers, body` for an answer).
async fn call(
    lua: &Lua,
    caller: &dyn Caller,
    shared: &Shared,
    pending: PendingCall,
) -> mlua::Result<MultiValue> {
    let raise = |msg: &str| -> mlua::Result<MultiValue> {
        Ok(MultiValue::from_iter([
            Value::String(lua.create_string("err")?),
            Value::String(lua.create_string(msg)?),
        ]))
    };
    if !caller.has_cluster(&pending.call.cluster) {
        return raise("http call cluster invalid. Must be configured");
    }
    let has = |name: &str| pending.call.fields.iter().any(|(k, _)| k == name);
    if !(has(":path") && has(":method") && has(":authority")) {
        return raise("http call headers must include ':path', ':method', and ':authority'");
    }
    if pending.asynchronous {
        caller.send_and_forget(pending.call);
        return Ok(MultiValue::from_iter([Value::String(
            lua.create_string("none")?,
        )]));
    }
    let answer = caller.send(pending.call).await;
    // As Envoy's: what the script got before it waited is dead after.
    shared.borrow_mut().generation += 1;
    let table = answer_table(lua, &answer, pending.duplicates)?;
    let body = match answer.body.is_empty() {
        true => Value::Nil,
        false => Value::String(lua.create_string(&answer.body)?),
    };
    Ok(MultiValue::from_iter([
        Value::String(lua.create_string("ok")?),
        Value::Table(table),
        body,
    ]))
}

/// A body past the stream's buffer limit, while a script waited for it whole.
pub struct TooLarge;

/// Reads `body` whole (up to `limit` bytes) and its trailers.
async fn read_whole(
    body: &mut ProxyBody,
    limit: usize,
) -> Result<(Vec<u8>, Option<Fields>), TooLarge> {
    use http_body_util::BodyExt as _;
    let mut data = Vec::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        match frame.into_data() {
            Ok(d) => {
                if data.len() + d.len() > limit {
                    return Err(TooLarge);
                }
                data.extend_from_slice(&d);
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(
                        t.iter()
                            .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
                            .collect(),
                    );
                }
            }
        }
    }
    Ok((data, trailers))
}

/// The fields of a header map, after `pseudo`.
fn fields_from(pseudo: Fields, headers: &http::HeaderMap, skip_host: bool) -> Fields {
    let mut fields = pseudo;
    fields.reserve(headers.len());
    for (k, v) in headers {
        if skip_host && k == http::header::HOST {
            continue;
        }
        fields.push((k.as_str().to_string(), v.as_bytes().to_vec()));
    }
    fields
}

/// A header map of `fields` (pseudo-headers and fields the codec cannot carry left out).
fn header_map(fields: &Fields) -> http::HeaderMap {
    let mut map = http::HeaderMap::with_capacity(fields.len());
    for (k, v) in fields {
        if k.starts_with(':') {
            continue;
        }
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_bytes(v),
        ) else {
            tracing::debug!(
                "lua: dropping a header field the script set that HTTP cannot carry: {k}"
            );
            continue;
        };
        map.append(name, value);
    }
    map
}

fn pseudo<'f>(fields: &'f Fields, name: &str) -> Option<&'f [u8]> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
}

/// What the request pass did.
pub enum RequestPass {
    /// The request goes on (changed as the script changed it).
    Pass(Changes),
    /// The script answered it.
    Respond(Box<Response<ProxyBody>>),
    /// Its body was past the buffer limit while the script waited for it whole.
    TooLarge,
}

/// What a script changed of a request that goes on.
#[derive(Default)]
pub struct Changes {
    /// Its headers (`:authority`, `:path`, …, or fields): it is routed again.
    pub headers: bool,
    /// Its `:authority`, when the script changed it.
    pub authority: Option<String>,
    /// Whether its `:path` changed.
    pub path: bool,
}

/// A response pass to run: the script of the request's run, on its response.
pub struct ResponsePass {
    ws: Rc<WorkerScript>,
    stats: Arc<LuaStats>,
    facts: Rc<StreamFacts>,
}

/// The request pass of `script` on `req` (its routed `scheme` and `authority`); the
/// response pass to run later, if the script has one.
pub async fn on_request(
    script: &Arc<Script>,
    stats: &Arc<LuaStats>,
    req: &mut Request<ProxyBody>,
    scheme: &str,
    facts: Rc<StreamFacts>,
    cx: &RunContext<'_>,
) -> (RequestPass, Option<ResponsePass>) {
    let worker = cx.worker;
    let ws = match vm::worker_script(script) {
        Ok(ws) => ws,
        Err(e) => {
            // Its top level ran at load; a worker's run of it may still fail.
            stats.errors.inc(worker);
            tracing::error!("script log: {e}");
            return (RequestPass::Pass(Changes::default()), None);
        }
    };
    let response = ws.on_response.is_some().then(|| ResponsePass {
        ws: ws.clone(),
        stats: stats.clone(),
        facts: facts.clone(),
    });
    let Some(function) = ws.on_request.clone() else {
        return (RequestPass::Pass(Changes::default()), response);
    };
    let uri_authority = req.uri().authority().map(|a| a.as_str().to_string());
    let authority = uri_authority.clone().or_else(|| {
        req.headers()
            .get(http::header::HOST)
            .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
    });
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let mut head: Fields = Vec::with_capacity(4);
    if let Some(a) = &authority {
        head.push((":authority".into(), a.clone().into_bytes()));
    }
    head.push((":path".into(), path.clone().into_bytes()));
    head.push((":method".into(), req.method().as_str().as_bytes().to_vec()));
    head.push((":scheme".into(), scheme.as_bytes().to_vec()));
    let state = State {
        response: false,
        fields: fields_from(head, req.headers(), uri_authority.is_none()),
        fields_changed: false,
        end_stream: req.body().is_end_stream(),
        body: None,
        body_changed: false,
        trailers: None,
        wait: None,
        generation: 0,
        reply: None,
        call: None,
        streaming: false,
        chunk: None,
        chunk_seq: 0,
        facts,
        public_key: None,
    };
    let ran = match run(&ws, &function, stats, state, req.body_mut(), cx).await {
        Ok(ran) => ran,
        Err(TooLarge) => return (RequestPass::TooLarge, response),
    };
    let st = ran.state;
    through_chunks(req.body_mut(), ran.chunks);
    if let Some((fields, body)) = st.reply {
        return (
            RequestPass::Respond(Box::new(reply(fields, body))),
            response,
        );
    }
    let mut changes = Changes::default();
    if let Some(body) = st.body {
        if st.body_changed {
            req.headers_mut().remove(http::header::TRANSFER_ENCODING);
        }
        *req.body_mut() = ProxyBody::full(Bytes::from(body));
    }
    if st.fields_changed {
        changes.headers = true;
        let mut map = header_map(&st.fields);
        let new_authority =
            pseudo(&st.fields, ":authority").map(|a| String::from_utf8_lossy(a).into_owned());
        if new_authority != authority {
            changes.authority = new_authority.clone();
        }
        if uri_authority.is_none() {
            if let Some(v) = new_authority
                .as_deref()
                .and_then(|a| HeaderValue::from_str(a).ok())
            {
                map.insert(http::header::HOST, v);
            }
        }
        if let Some(m) =
            pseudo(&st.fields, ":method").and_then(|m| http::Method::from_bytes(m).ok())
        {
            *req.method_mut() = m;
        }
        let new_path = pseudo(&st.fields, ":path").map(|p| String::from_utf8_lossy(p).into_owned());
        let mut parts = req.uri().clone().into_parts();
        let mut uri_changed = false;
        if let Some(p) = new_path.filter(|p| *p != path) {
            if let Ok(pq) = p.parse() {
                parts.path_and_query = Some(pq);
                uri_changed = true;
                changes.path = true;
            }
        }
        if uri_authority.is_some() {
            if let Some(a) = changes.authority.as_deref().and_then(|a| a.parse().ok()) {
                parts.authority = Some(a);
                uri_changed = true;
            }
        }
        if uri_changed {
            if let Ok(uri) = http::Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
        *req.headers_mut() = map;
    }
    (RequestPass::Pass(changes), response)
}

/// The answer of a script's `respond()`: its fields in order, and its body with its
/// length.
fn reply(fields: Fields, body: Option<Vec<u8>>) -> Response<ProxyBody> {
    let status = pseudo(&fields, ":status")
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let mut map = header_map(&fields);
    let len = body.as_ref().map_or(0, Vec::len);
    map.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
    let mut r = Response::new(match body {
        Some(b) => ProxyBody::full(Bytes::from(b)),
        None => ProxyBody::empty(),
    });
    *r.status_mut() = status;
    *r.headers_mut() = map;
    r.extensions_mut()
        .insert(crate::http::conn_manager::local_reply::LocalReply(None));
    r
}

impl ResponsePass {
    /// Runs the script's `envoy_on_response` on `resp`. A body past `limit`, when the
    /// script waits for it whole, is a `500`.
    pub async fn on_response(self, resp: &mut Response<ProxyBody>, cx: &RunContext<'_>) {
        let Some(function) = self.ws.on_response.clone() else {
            return;
        };
        self.facts.upstream_answered.set(
            resp.extensions()
                .get::<crate::http::conn_manager::local_reply::LocalReply>()
                .is_none(),
        );
        let head = vec![(
            ":status".to_string(),
            resp.status().as_str().as_bytes().to_vec(),
        )];
        let state = State {
            response: true,
            fields: fields_from(head, resp.headers(), false),
            fields_changed: false,
            end_stream: resp.body().is_end_stream(),
            body: None,
            body_changed: false,
            trailers: None,
            wait: None,
            generation: 0,
            reply: None,
            call: None,
            streaming: false,
            chunk: None,
            chunk_seq: 0,
            facts: self.facts,
            public_key: None,
        };
        let ran = run(&self.ws, &function, &self.stats, state, resp.body_mut(), cx).await;
        let st = match ran {
            Ok(ran) => {
                through_chunks(resp.body_mut(), ran.chunks);
                ran.state
            }
            Err(TooLarge) => {
                *resp = crate::http::conn_manager::local_reply::local_reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal Server Error",
                );
                return;
            }
        };
        if let Some(body) = st.body {
            if st.body_changed {
                resp.headers_mut().remove(http::header::TRANSFER_ENCODING);
            }
            *resp.body_mut() = ProxyBody::full(Bytes::from(body));
        }
        if st.fields_changed {
            if let Some(s) = pseudo(&st.fields, ":status")
                .and_then(|s| std::str::from_utf8(s).ok())
                .and_then(|s| s.parse::<u16>().ok())
                .and_then(|s| StatusCode::from_u16(s).ok())
            {
                *resp.status_mut() = s;
            }
            *resp.headers_mut() = header_map(&st.fields);
        }
    }
}
