//! The Lua VMs: one per script on each worker (a worker is single-threaded, so its VMs
//! are never shared), made the first time the worker runs the script and kept in a
//! thread-local table keyed by the script's id. A VM whose script the config no longer
//! holds is dropped the next time the worker makes one.
//!
//! Each VM runs a small prelude before the script: the stream handle's methods that wait
//! (`body()`, `trailers()`, `httpCall()`) or end the script (`respond()`) yield the script's coroutine
//! from Lua, after the handle's Rust side noted why ([`super::stream`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Weak};

use mlua::{Function, Lua, Value};

use super::Script;

/// The prelude: `make_handle(u)` wraps a stream's Rust handle `u` in the table scripts see,
/// whose methods forward to it; the waiting ones yield first when it says so.
const PRELUDE: &str = r#"
local yield = coroutine.yield
-- A checked method's Rust side answers `false, message` (raised here, at the caller's line
-- as Envoy's are, none when a C function such as `pcall` called it), a count of values
-- (0, 1, 2) and the values, or the name of a class and an object to wrap in it.
local classes = {}
local function class(names, C)
  C = C or {}
  C.__index = C
  for i = 1, #names do
    local n = names[i]
    C[n] = function(self, ...)
      local u = rawget(self, 1)
      local k, a, b = u[n](u, ...)
      if k == 1 then return a end
      if k == false then error(a, 2) end
      if k == 0 then return end
      if k == 2 then return a, b end
      return setmetatable({ a }, classes[k])
    end
  end
  C.__pairs = function(self)
    local u = rawget(self, 1)
    local k, a = u:pairs()
    if k == false then error(a, 2) end
    return a
  end
  return C
end
classes.MetadataMap = class({ "get" })
classes.DynamicMetadata = class({ "get", "set" })
classes.PublicKey = class({ "get" })
classes.Route = class({ "metadata" })
classes.VirtualHost = class({ "metadata" })
classes.StreamInfo = class({ "protocol", "downstreamLocalAddress",
  "downstreamDirectLocalAddress", "downstreamDirectRemoteAddress", "downstreamRemoteAddress",
  "requestedServerName", "routeName", "virtualClusterName", "dynamicMetadata",
  "downstreamSslConnection" })
local H = class({ "metadata", "streamInfo", "route", "virtualHost", "filterContext",
  "base64Escape", "base64Decode", "importPublicKey", "verifySignature", "timestamp",
  "timestampString" })
local plain = { "headers", "connection", "logTrace", "logDebug",
  "logInfo", "logWarn", "logErr", "logCritical",
  "connectionStreamInfo", "clearRouteCache", "setUpstreamOverrideHost", "stats" }
for i = 1, #plain do
  local n = plain[i]
  H[n] = function(self, ...)
    local u = rawget(self, 1)
    return u[n](u, ...)
  end
end
EnvoyTimestampResolution = { MILLISECOND = 0, MICROSECOND = 1 }
function H:body(...)
  local u = rawget(self, 1)
  if u:waitBody() then yield() end
  return u:body(...)
end
function H:trailers()
  local u = rawget(self, 1)
  if u:waitTrailers() then yield() end
  return u:trailers()
end
-- Its errors are raised here, at the script's line (none when a C function such as
-- `pcall` called it), as Envoy raises them.
function H:httpCall(...)
  local ok, e = rawget(self, 1):httpCall(...)
  if not ok then error(e, 2) end
  local how, a, b = yield()
  if how == "err" then error(a, 2) end
  if how == "ok" then return a, b end
end
function H:bodyChunks()
  local u = rawget(self, 1)
  u:bodyChunks()
  return function()
    if u:waitChunk() then return yield() end
  end
end
function H:respond(...)
  rawget(self, 1):respond(...)
  yield()
end
return function(u) return setmetatable({ u }, H) end
"#;

/// A script compiled in this worker's VM for it.
pub(crate) struct WorkerScript {
    /// The VM (the functions below hold it too).
    pub(crate) lua: Lua,
    /// `envoy_on_request`, if the script defines it.
    pub(crate) on_request: Option<Function>,
    /// `envoy_on_response`, if the script defines it.
    pub(crate) on_response: Option<Function>,
    /// The prelude's `make_handle`.
    pub(crate) make_handle: Function,
    /// The config's script, to know when it is gone.
    script: Weak<Script>,
}

thread_local! {
    static VMS: RefCell<HashMap<u64, Rc<WorkerScript>>> = RefCell::new(HashMap::new());
}

/// What a VM's failure says: Lua's own message, without `mlua`'s wrapping (as Envoy logs
/// it).
pub(crate) fn message(e: &mlua::Error) -> String {
    match e {
        // Without the traceback mlua adds: Envoy logs the message alone.
        mlua::Error::RuntimeError(m) => m
            .split_once("\nstack traceback:")
            .map_or(m.as_str(), |(m, _)| m)
            .to_string(),
        mlua::Error::SyntaxError { message: m, .. } => m.clone(),
        mlua::Error::CallbackError { cause, .. } => message(cause),
        mlua::Error::WithContext { cause, .. } => message(cause),
        other => other.to_string(),
    }
}

/// A VM with the prelude and `source` run in it.
fn build(source: &str) -> Result<(Lua, Function), String> {
    let lua = Lua::new();
    let make_handle: Function = lua
        .load(PRELUDE)
        .set_name("=prelude")
        .eval()
        .map_err(|e| message(&e))?;
    // Named by its source, as `luaL_dostring` names a chunk: errors then read
    // `[string "<first line>..."]:<line>: …`, as Envoy's do.
    lua.load(source)
        .set_name(source)
        .exec()
        .map_err(|e| message(&e))?;
    Ok((lua, make_handle))
}

/// A global function of the VM, if it has one.
fn global_function(lua: &Lua, name: &str) -> Option<Function> {
    match lua.globals().get::<Value>(name) {
        Ok(Value::Function(f)) => Some(f),
        _ => None,
    }
}

/// Checks a script at load, in a VM of its own: whether it defines `envoy_on_request` and
/// `envoy_on_response`, or Lua's error.
pub(crate) fn check(source: &str) -> Result<(bool, bool), String> {
    let (lua, _) = build(source)?;
    Ok((
        global_function(&lua, "envoy_on_request").is_some(),
        global_function(&lua, "envoy_on_response").is_some(),
    ))
}

/// This worker's VM for `script`, made on first use.
pub(crate) fn worker_script(script: &Arc<Script>) -> Result<Rc<WorkerScript>, String> {
    if let Some(ws) = VMS.with(|v| v.borrow().get(&script.id).cloned()) {
        return Ok(ws);
    }
    let (lua, make_handle) = build(&script.source)?;
    let ws = Rc::new(WorkerScript {
        on_request: global_function(&lua, "envoy_on_request"),
        on_response: global_function(&lua, "envoy_on_response"),
        lua,
        make_handle,
        script: Arc::downgrade(script),
    });
    VMS.with(|v| {
        let mut vms = v.borrow_mut();
        vms.retain(|_, ws| ws.script.strong_count() > 0);
        vms.insert(script.id, ws.clone());
    });
    Ok(ws)
}
