//! The Lua filter (`envoy.filters.http.lua`): a script's `envoy_on_request` and
//! `envoy_on_response` run on each request and its response, through Envoy's stream handle
//! API.
//!
//! As Envoy 1.40 (measured, `tests/http_lua.rs`):
//!
//! - The script comes from `default_source_code` (an inline string or bytes, or a file
//!   read when the config is loaded) or the deprecated `inline_code` (not both); named
//!   scripts from `source_codes`. Each is run once at load (its top level defines the
//!   functions): a script that does not compile or fails there refuses the config with
//!   Lua's message.
//! - A route's `LuaPerRoute` (the most specific) turns the filter off there (`disabled`),
//!   picks a named script (`name`; an unknown name runs nothing), or gives its own
//!   (`source_code`).
//! - A run counts `http.<stat_prefix>.lua.[<filter stat_prefix>.]executions`; a runtime
//!   error counts `errors`, is logged `script log: <message>` at error level, and the
//!   stream goes on as the script left it (Envoy does not answer it): the request is
//!   forwarded, the response sent.
//! - `respond()` answers the request (details `lua_response`); the response pass still
//!   runs on that answer, as on every answer (a direct response, a router's reply).
//! - `httpCall(cluster, headers, body, timeout_ms[, asynchronous])` and its options-table
//!   form (`timeout_ms`, `asynchronous`, `return_duplicate_headers`, `send_xff`;
//!   `trace_sampled` taken, Courier's calls carry no span) send the worker's own request to the cluster (the connection
//!   manager sends it, `service_calls::lua`); the script waits and gets the answer's
//!   headers table (`:status` among them) and body (`nil` when empty), a call that got no
//!   answer the async client's router's local reply (`504 upstream request timeout`,
//!   `503`). An unknown cluster, missing `:method`/`:path`/`:authority`, a negative
//!   timeout, a bad flag or option key are Envoy's script errors; what the script got
//!   before a call it waited for is dead after.
//! - `bodyChunks()` lets the head go on as the script left it; the body then streams
//!   through the script's loop, each chunk as the script changed it (`setBytes`). After,
//!   the head can no longer be changed (`header map can no longer be modified`), `body()`
//!   and `respond()` are errors, as is `bodyChunks()` after `body()`. An `httpCall()` while
//!   the body streams is a Courier error (not built).
//!
//! - `filterContext()` reads the most specific `LuaPerRoute`'s `filter_context` when it
//!   sets one, else the filter's; `metadata()`, `route()`, `virtualHost()` the route's and
//!   virtual host's `filter_metadata`; `streamInfo():dynamicMetadata()` the stream's
//!   dynamic metadata, shared by its Lua filters ([`metadata`]). Encoding and signature
//!   helpers are in [`crypto`].
//!
//! Each worker has a VM of its own for every script (a script's globals are per worker,
//! as Envoy's), made the first time the worker runs it ([`vm`]); the stream handle's API
//! is in [`stream`]. Refused by path: `package_paths`, `package_cpaths`,
//! `clear_route_cache: false` (Envoy's default, true, is what Courier does: a request
//! whose headers the script changed is routed again).

pub mod crypto;
pub mod metadata;
pub mod stream;
pub mod vm;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use courier_proto::envoy::config::core::v3::DataSource;
use courier_proto::envoy::extensions::filters::http::lua::v3 as pb;
use courier_proto::google::protobuf::Struct;

use crate::config::ConfigError;
use crate::stats::{Counter, Store};

/// The filter's config type.
pub const FILTER_TYPE: &str = "envoy.extensions.filters.http.lua.v3.Lua";
/// The filter's well-known name.
pub const FILTER_NAME: &str = "envoy.filters.http.lua";
/// The per-route config's type.
pub const PER_ROUTE_TYPE: &str = "envoy.extensions.filters.http.lua.v3.LuaPerRoute";

/// One script's source, checked at load; each worker compiles it into a VM of its own.
pub struct Script {
    /// Unique among the scripts of the process: the key of its VM on each worker.
    pub(crate) id: u64,
    /// The source, as given.
    pub(crate) source: Arc<str>,
    /// Whether it defines `envoy_on_request`.
    pub(crate) on_request: bool,
    /// Whether it defines `envoy_on_response`.
    pub(crate) on_response: bool,
}

static NEXT_SCRIPT: AtomicU64 = AtomicU64::new(1);

impl Script {
    /// Checks `source` as Envoy does at load (compiled and its top level run, in a VM of
    /// its own); the error names `path`.
    fn load(source: &str, path: &str) -> Result<Arc<Script>, ConfigError> {
        let (on_request, on_response) = vm::check(source)
            .map_err(|e| ConfigError::new(path, format!("script load error: {e}")))?;
        Ok(Arc::new(Script {
            id: NEXT_SCRIPT.fetch_add(1, Ordering::Relaxed),
            source: Arc::from(source),
            on_request,
            on_response,
        }))
    }

    /// Reads and checks the script of the data source at `path`.
    fn read(ds: &DataSource, path: &str) -> Result<Arc<Script>, ConfigError> {
        if ds.specifier.is_none() {
            return Err(ConfigError::new(
                path,
                "Unexpected DataSource::specifier_case(): 0",
            ));
        }
        let bytes = crate::http::route::data_source(ds, path)?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| ConfigError::new(path, "the Lua source is not UTF-8"))?;
        Script::load(text, path)
    }
}

/// The filter's counters: `http.<hcm>.lua.[<prefix>.]errors` and `executions`.
pub struct LuaStats {
    /// Runs that ended in a Lua error.
    pub(crate) errors: Arc<Counter>,
    /// Runs of `envoy_on_request` and `envoy_on_response`.
    pub(crate) executions: Arc<Counter>,
}

/// A compiled `LuaPerRoute`.
pub struct LuaPerRoute {
    /// The script it runs.
    pub choice: LuaChoice,
    /// `filter_context`: replaces the filter's (an empty one too).
    pub filter_context: Option<Arc<Struct>>,
}

/// What script a `LuaPerRoute` runs.
pub enum LuaChoice {
    /// `disabled`: the filter does nothing here.
    Disabled,
    /// `name`: a script of the filter's `source_codes`.
    Named(String),
    /// `source_code`: the route's own script.
    Inline(Arc<Script>),
}

impl LuaPerRoute {
    /// Compiles a `LuaPerRoute` at `path`.
    pub fn compile(p: &pb::LuaPerRoute, path: &str) -> Result<LuaPerRoute, ConfigError> {
        let choice = LuaPerRoute::choice(p, path)?;
        Ok(LuaPerRoute {
            choice,
            filter_context: p.filter_context.clone().map(Arc::new),
        })
    }

    fn choice(p: &pb::LuaPerRoute, path: &str) -> Result<LuaChoice, ConfigError> {
        use pb::lua_per_route::Override;
        if !p.package_paths.is_empty() {
            return Err(ConfigError::unsupported(format!("{path}.package_paths")));
        }
        if !p.package_cpaths.is_empty() {
            return Err(ConfigError::unsupported(format!("{path}.package_cpaths")));
        }
        match &p.r#override {
            None => Err(ConfigError::new(
                format!("{path}.override"),
                "value is required",
            )),
            Some(Override::Disabled(false)) => Err(ConfigError::new(
                format!("{path}.disabled"),
                "value must equal true",
            )),
            Some(Override::Disabled(true)) => Ok(LuaChoice::Disabled),
            Some(Override::Name(n)) if n.is_empty() => Err(ConfigError::new(
                format!("{path}.name"),
                "value length must be at least 1 characters",
            )),
            Some(Override::Name(n)) => Ok(LuaChoice::Named(n.clone())),
            Some(Override::SourceCode(ds)) => Ok(LuaChoice::Inline(Script::read(
                ds,
                &format!("{path}.source_code"),
            )?)),
        }
    }
}

/// A connection manager's Lua filter.
pub struct LuaFilter {
    /// The filter's name in `http_filters`: its key in `typed_per_filter_config`.
    pub name: String,
    /// The same, for its scripts' runs (the namespace of their route metadata).
    pub(crate) config_name: Arc<str>,
    /// `filter_context`.
    pub(crate) filter_context: Option<Arc<Struct>>,
    default: Option<Arc<Script>>,
    sources: HashMap<String, Arc<Script>>,
    pub(crate) stats: Arc<LuaStats>,
}

impl LuaFilter {
    /// Compiles the filter named `name` (its `Lua` at `path`) in the connection manager
    /// whose stats are under `http.<prefix>.`.
    pub fn compile(
        name: &str,
        p: &pb::Lua,
        path: &str,
        prefix: &str,
        store: &Store,
    ) -> Result<LuaFilter, ConfigError> {
        if !p.package_paths.is_empty() {
            return Err(ConfigError::unsupported(format!("{path}.package_paths")));
        }
        if !p.package_cpaths.is_empty() {
            return Err(ConfigError::unsupported(format!("{path}.package_cpaths")));
        }
        if p.clear_route_cache.is_some_and(|v| !v.value) {
            return Err(ConfigError::unsupported(format!(
                "{path}.clear_route_cache"
            )));
        }
        #[allow(deprecated)]
        let inline_code = &p.inline_code;
        let default = match (&p.default_source_code, inline_code.is_empty()) {
            (Some(_), false) => {
                return Err(ConfigError::new(
                    path,
                    "Error: Only one of `inline_code` or `default_source_code` can be set for the Lua filter.",
                ))
            }
            (Some(ds), true) => Some(Script::read(ds, &format!("{path}.default_source_code"))?),
            (None, false) => Some(Script::load(inline_code, &format!("{path}.inline_code"))?),
            (None, true) => None,
        };
        let mut sources = HashMap::new();
        // In name order, so that the first refusal is the same from one load to the next.
        let mut names: Vec<&String> = p.source_codes.keys().collect();
        names.sort();
        for n in names {
            let script = Script::read(&p.source_codes[n], &format!("{path}.source_codes[{n}]"))?;
            sources.insert(n.clone(), script);
        }
        let scope = match p.stat_prefix.as_str() {
            "" => format!("http.{prefix}.lua."),
            s => format!("http.{prefix}.lua.{s}."),
        };
        Ok(LuaFilter {
            name: name.to_string(),
            config_name: Arc::from(name),
            filter_context: p.filter_context.clone().map(Arc::new),
            default,
            sources,
            stats: Arc::new(LuaStats {
                errors: store.counter(&format!("{scope}errors")),
                executions: store.counter(&format!("{scope}executions")),
            }),
        })
    }

    /// The script that runs for a request whose most specific per-route config is
    /// `route`; `None` when none does.
    pub fn script<'a>(&'a self, route: Option<&'a LuaPerRoute>) -> Option<&'a Arc<Script>> {
        let script = match route.map(|r| &r.choice) {
            None => self.default.as_ref(),
            Some(LuaChoice::Disabled) => None,
            Some(LuaChoice::Named(n)) => {
                let found = self.sources.get(n);
                if found.is_none() {
                    tracing::debug!("lua: no script named {n}");
                }
                found
            }
            Some(LuaChoice::Inline(s)) => Some(s),
        };
        // A script with neither function has nothing to run.
        script.filter(|s| s.on_request || s.on_response)
    }

    /// The `filter_context` a request whose most specific per-route config is `route`
    /// sees: the route's, when it sets one, else the filter's.
    pub fn filter_context(&self, route: Option<&LuaPerRoute>) -> Option<Arc<Struct>> {
        route
            .and_then(|r| r.filter_context.clone())
            .or_else(|| self.filter_context.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(yaml: &str) -> Result<LuaFilter, ConfigError> {
        let p: pb::Lua = courier_proto::from_yaml(yaml).expect("Lua");
        LuaFilter::compile("lua", &p, "f", "ingress", &Store::new(1))
    }

    #[test]
    fn scripts_load_or_refuse() {
        let f = filter(
            "{ default_source_code: { inline_string: 'function envoy_on_request(h) end' } }",
        )
        .expect("valid");
        let s = f.script(None).expect("default");
        assert!(s.on_request && !s.on_response);
        let err = filter("{ inline_code: 'function (' }")
            .err()
            .expect("refused");
        assert_eq!(err.path, "f.inline_code");
        assert!(err.message.contains("script load error"), "{}", err.message);
        let err = filter("{ inline_code: 'error(\"at load\")' }")
            .err()
            .expect("refused");
        assert!(err.message.contains("at load"), "{}", err.message);
        let err = filter("{ clear_route_cache: false }")
            .err()
            .expect("refused");
        assert_eq!(err.path, "f.clear_route_cache");
        assert!(filter("{ clear_route_cache: true }").is_ok());
        let f = filter(
            "{ source_codes: { a: { inline_string: 'function envoy_on_response(h) end' } } }",
        )
        .expect("valid");
        assert!(f.script(None).is_none());
        let per_route = |choice| LuaPerRoute {
            choice,
            filter_context: None,
        };
        assert!(f
            .script(Some(&per_route(LuaChoice::Named("a".into()))))
            .is_some());
        assert!(f
            .script(Some(&per_route(LuaChoice::Named("b".into()))))
            .is_none());
        assert!(f.script(Some(&per_route(LuaChoice::Disabled))).is_none());
    }
}
